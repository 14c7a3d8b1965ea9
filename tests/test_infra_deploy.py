"""`imagepipe deploy` and `destroy` on moto: wheel, artifact bucket, create, update, delete.

moto's CloudFormation creates the full template (tested here through deploy) but cannot update
it: it fails to replace the Auto Scaling groups, and its UsePreviousValue breaks for parameters
that were left at their default. The update and delete paths therefore run on a small template
with the same contract (ArtifactBucket and WheelKey in, BucketName out).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from imagepipe.cli import main as cli
from imagepipe.cli.deploy import (
    DeployClients,
    DeployError,
    Wheelhouse,
    artifact_bucket_name,
    build_source_wheels,
    build_wheel,
    build_wheelhouse,
    check_stack_name,
    deploy,
    destroy,
    ensure_artifact_bucket,
    hash_wheelhouse,
    instance_python,
    locked_pins,
    make_deploy_clients,
    pinned_image,
    release_digest,
    wheel_digest,
)
from imagepipe.core.settings import Settings
from tests.conftest import moto_template_body, put_test_gpu_ami

pytestmark = pytest.mark.filterwarnings(
    "ignore:Tried to parse .* not supported by moto's CloudFormation")

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "123456789012"  # moto's
ARTIFACTS = artifact_bucket_name(ACCOUNT, "us-east-1")

SMALL_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  ArtifactBucket: {Type: String}
  WheelKey: {Type: String}
  VisibilityTimeout: {Type: Number, Default: 120}
  Mode: {Type: String, Default: plain}
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: !Ref VisibilityTimeout
  Bucket:
    Type: AWS::S3::Bucket
    DeletionPolicy: Retain
    Properties:
      BucketName: !Sub "${AWS::StackName}-images-${AWS::AccountId}-${AWS::Region}"
  ResultsTable:
    Type: AWS::DynamoDB::Table
    DeletionPolicy: Retain
    Properties:
      BillingMode: PAY_PER_REQUEST
      DeletionProtectionEnabled: true
      AttributeDefinitions: [{AttributeName: image_id, AttributeType: S}]
      KeySchema: [{AttributeName: image_id, KeyType: HASH}]
Outputs:
  BucketName: {Value: !Ref Bucket}
  TableName: {Value: !Ref ResultsTable}
  QueueUrl: {Value: !Ref Queue}
  Mode: {Value: !Ref Mode}
  WheelKey: {Value: !Ref WheelKey}
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once, the way deploy builds it."""
    return build_wheel(tmp_path_factory.mktemp("dist"))


def tiny_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (),
               tag: str = "py3-none-any") -> Path:
    """A minimal installable wheel: metadata and one module, no record hashes needed by pip."""
    dist_info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-{tag}.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.py", "")
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                         f"Root-Is-Purelib: true\nTag: {tag}\n")
        archive.writestr(f"{dist_info}/RECORD", "")
    return path


@pytest.fixture
def fake_wheelhouse(tmp_path: Path) -> Wheelhouse:
    """Two tiny dependency wheels, hashed as deploy hashes the real ones."""
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    tiny_wheel(folder, "tinydep", "1.0", requires=("tinybase==2.0",))
    tiny_wheel(folder, "tinybase", "2.0")
    house = hash_wheelhouse(folder)
    # The front installs a part of it (here: the base alone).
    return replace(house, front_requirements=next(
        line + "\n" for line in house.requirements.splitlines() if line.startswith("tinybase")),
        front_wheels=tuple(name for name in house.wheels if name.startswith("tinybase")))


@pytest.fixture
def deploy_clients(aws: None) -> DeployClients:
    clients = make_deploy_clients(Settings(region="us-east-1"))
    # moto enforces bucket policies but ignores their conditions, so the artifact bucket's
    # TLS-only policy would deny moto every request: these tests start with the bucket made
    # (test_artifact_bucket_is_created_private checks what deploy does to a new one).
    clients.s3.create_bucket(Bucket=ARTIFACTS)
    return clients


@pytest.fixture
def small_template(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_TEMPLATE)
    return path


@pytest.mark.parametrize("name", ["pipe", "my-pipeline-2", "a" * 25])
def test_good_stack_names(name: str) -> None:
    assert check_stack_name(name) == name


@pytest.mark.parametrize("name", ["Pipe", "2pipe", "a" * 26, "pipe_x", "", "pipe.x"])
def test_stack_names_that_cannot_name_a_bucket_are_refused(name: str) -> None:
    with pytest.raises(DeployError, match="lowercase"):
        check_stack_name(name)


def test_wheel_holds_the_services_and_the_gpu_extra(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith("/METADATA"))
    for module in ("imagepipe/cli/deploy.py", "imagepipe/cli/main.py", "processor/devices.py",
                   "processor/worker.py", "uploader/routes.py", "results_api/routes.py",
                   "web/routes.py"):
        assert module in names
    assert not any(n.startswith("tests/") for n in names)
    # The benchmark and its helpers are for developers, not part of what ships.
    assert not any(n.startswith("benchmarks/") or n.endswith("/bench.py") for n in names)
    assert "Provides-Extra: gpu" in metadata
    assert any(line.startswith("Requires-Dist: tensorflow[and-cuda]") and 'extra == "gpu"' in line
               for line in metadata.splitlines())


def test_wheel_digest_follows_content_not_zip_timestamps(wheel: Path, tmp_path: Path) -> None:
    def rezip(target: Path, change: bytes = b"") -> Path:
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "imagepipe/cli/deploy.py":
                    data += change
                dst.writestr(zipfile.ZipInfo(info.filename, date_time=(2030, 1, 2, 3, 4, 5)),
                             data)
        return target

    assert wheel_digest(rezip(tmp_path / "same.whl")) == wheel_digest(wheel)
    assert wheel_digest(rezip(tmp_path / "changed.whl", b"# edit\n")) != wheel_digest(wheel)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_artifact_bucket_is_created_private(aws: None, region: str) -> None:
    s3 = boto3.client("s3", region_name=region)
    bucket = artifact_bucket_name(ACCOUNT, region)

    ensure_artifact_bucket(s3, bucket, region)
    ensure_artifact_bucket(s3, bucket, region)  # present: left as it is

    assert (s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] or "us-east-1") == region
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    (statement,) = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_deploy_creates_keeps_updates_and_destroys(deploy_clients: DeployClients, wheel: Path,
                                                   small_template: Path,
                                                   fake_wheelhouse: Wheelhouse) -> None:
    printed: list[str] = []

    def run(**parameters: str) -> Any:
        return deploy("pipe", deploy_clients, parameters=parameters, wheel=wheel,
                      wheelhouse=fake_wheelhouse, template=small_template, out=printed.append,
                      poll_seconds=0)

    # Created, with the wheel uploaded under a content-addressed key
    created = run(Mode="spot")
    assert created.action == "created"
    wheel_key = f"pipe/{release_digest(wheel, fake_wheelhouse)}/{wheel.name}"
    assert created.outputs["WheelKey"] == wheel_key
    assert created.outputs["BucketName"] == f"pipe-images-{ACCOUNT}-us-east-1"
    s3 = deploy_clients.s3
    head = s3.head_object(Bucket=ARTIFACTS, Key=wheel_key)
    assert head["ContentLength"] == wheel.stat().st_size
    assert "creating stack pipe" in printed
    assert any("CREATE_COMPLETE" in line for line in printed)

    # Deploying the same again changes nothing
    again = run()
    assert again.action == "unchanged"
    assert again.outputs == created.outputs

    # A changed parameter updates; the others keep their values
    updated = run(VisibilityTimeout="300")
    assert updated.action == "updated"
    assert updated.outputs["Mode"] == "spot"
    sqs = boto3.client("sqs", region_name="us-east-1")
    assert sqs.get_queue_attributes(QueueUrl=updated.outputs["QueueUrl"],
                                    AttributeNames=["VisibilityTimeout"])["Attributes"] == {
        "VisibilityTimeout": "300"}

    # Destroy with --delete-data deletes the stack, its artifacts and the data it retains
    bucket, table = created.outputs["BucketName"], created.outputs["TableName"]
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"uploads/{i}.jpg", Body=b"x")
    s3.put_object(Bucket=ARTIFACTS, Key="other-stack/keep.whl", Body=b"x")
    assert destroy("pipe", deploy_clients, delete_data=True, out=printed.append,
                   poll_seconds=0) is True
    with pytest.raises(ClientError, match="does not exist"):
        deploy_clients.cloudformation.describe_stacks(StackName="pipe")
    with pytest.raises(ClientError):
        s3.head_bucket(Bucket=bucket)
    with pytest.raises(ClientError, match="ResourceNotFound"):
        deploy_clients.dynamodb.describe_table(TableName=table)
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACTS).get("Contents", [])]
    assert left == ["other-stack/keep.whl"]
    assert destroy("pipe", deploy_clients, out=printed.append, poll_seconds=0) is False


def test_destroy_keeps_the_images_and_results_unless_asked(deploy_clients: DeployClients,
                                                           wheel: Path, small_template: Path,
                                                           fake_wheelhouse: Wheelhouse) -> None:
    printed: list[str] = []
    created = deploy("pipe", deploy_clients, wheel=wheel, wheelhouse=fake_wheelhouse,
                     template=small_template, out=printed.append, poll_seconds=0)
    bucket, table = created.outputs["BucketName"], created.outputs["TableName"]
    deploy_clients.s3.put_object(Bucket=bucket, Key="uploads/a.jpg", Body=b"x")

    assert destroy("pipe", deploy_clients, out=printed.append, poll_seconds=0) is True

    with pytest.raises(ClientError, match="does not exist"):
        deploy_clients.cloudformation.describe_stacks(StackName="pipe")
    assert deploy_clients.s3.get_object(Bucket=bucket, Key="uploads/a.jpg")["Body"].read() == b"x"
    description = deploy_clients.dynamodb.describe_table(TableName=table)["Table"]
    assert description["DeletionProtectionEnabled"] is True
    assert any(line.startswith(f"kept s3://{bucket}, table {table}") for line in printed)


def test_cli_destroy_takes_delete_data(aws: None, monkeypatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("imagepipe.cli.deploy.destroy",
                        lambda stack, clients, **kwargs: calls.append(kwargs) or True)
    assert cli.main(["destroy", "--stack", "pipe", "--delete-data"]) == 0
    assert cli.main(["destroy", "--stack", "pipe"]) == 0
    assert [c["delete_data"] for c in calls] == [True, False]


def test_deploy_refuses_parameters_the_template_does_not_take(
        deploy_clients: DeployClients, wheel: Path, small_template: Path,
        fake_wheelhouse: Wheelhouse) -> None:
    with pytest.raises(DeployError, match="unknown parameters Spot"):
        deploy("pipe", deploy_clients, parameters={"Spot": "true"}, wheel=wheel,
               wheelhouse=fake_wheelhouse, template=small_template, out=lambda line: None,
               poll_seconds=0)


def test_the_full_template_deploys_through_the_command(deploy_clients: DeployClients,
                                                       wheel: Path, tmp_path: Path,
                                                       fake_wheelhouse: Wheelhouse) -> None:
    template = tmp_path / "imagepipe.yaml"
    template.write_text(moto_template_body())
    image = put_test_gpu_ami()

    result = deploy("pipe", deploy_clients, wheel=wheel, wheelhouse=fake_wheelhouse,
                    template=template, out=lambda line: None, poll_seconds=0)

    assert result.action == "created"
    assert {"WebUrl", "BucketName", "QueueUrl", "TableName"} <= set(result.outputs)
    stack = deploy_clients.cloudformation.describe_stacks(StackName="pipe")["Stacks"][0]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert parameters["ArtifactBucket"] == ARTIFACTS
    assert parameters["WheelKey"] == (
        f"pipe/{release_digest(wheel, fake_wheelhouse)}/{wheel.name}")
    # The release's AMI is pinned, resolved once from the DLAMI's parameter.
    assert parameters["ProcessorImagePin"] == image


def test_cli_refuses_a_bad_stack_name_before_calling_aws(aws: None, capsys) -> None:
    assert cli.main(["deploy", "--stack", "My_Stack"]) == 1
    assert "lowercase" in capsys.readouterr().err


def test_cli_refuses_a_malformed_parameter(aws: None, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["deploy", "--stack", "pipe", "--parameter", "UseSpot"])
    assert exit_info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_cli_destroy_of_a_missing_stack_says_so(aws: None, capsys) -> None:
    assert cli.main(["destroy", "--stack", "pipe"]) == 0
    assert "no stack pipe" in capsys.readouterr().out


def test_make_targets_pass_the_stack_and_parameters() -> None:
    run = subprocess.run(["make", "-n", "deploy", "STACK=pipe", "PARAMS=-p UseSpot=true"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert '.venv/bin/imagepipe deploy --stack "pipe" -p UseSpot=true' in run.stdout
    run = subprocess.run(["make", "-n", "destroy", "STACK=pipe"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert '.venv/bin/imagepipe destroy --stack "pipe"' in run.stdout


# ---------------------------------------------------------------- wheelhouse and AMI pin

def test_wheelhouse_hashes_every_wheel_one_line_per_project(tmp_path: Path) -> None:
    for tag in ("cp312-cp312-manylinux_2_17_x86_64", "cp312-cp312-manylinux_2_28_x86_64"):
        tiny_wheel(tmp_path, "Fast_Lib", "1.2.3", tag=tag)
    tiny_wheel(tmp_path, "tinydep", "1.0")
    tiny_wheel(tmp_path, "imagepipe", "0.1.0")  # installed from its own key, not by hash

    house = hash_wheelhouse(tmp_path)

    def sha(name: str) -> str:
        return hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    fast = sorted(sha(f"Fast_Lib-1.2.3-{tag}.whl") for tag in (
        "cp312-cp312-manylinux_2_17_x86_64", "cp312-cp312-manylinux_2_28_x86_64"))
    assert house.requirements == (
        f"fast-lib==1.2.3 --hash=sha256:{fast[0]} --hash=sha256:{fast[1]}\n"
        f"tinydep==1.0 --hash=sha256:{sha('tinydep-1.0-py3-none-any.whl')}\n")
    assert "imagepipe-0.1.0-py3-none-any.whl" not in house.wheels
    assert len(house.wheels) == 3


def test_wheelhouse_refuses_sources_and_two_versions_of_one_project(tmp_path: Path) -> None:
    (tmp_path / "tinydep-1.0.tar.gz").write_bytes(b"sdist")
    with pytest.raises(DeployError, match="not a wheel"):
        hash_wheelhouse(tmp_path)
    (tmp_path / "tinydep-1.0.tar.gz").unlink()
    tiny_wheel(tmp_path, "tinydep", "1.0")
    tiny_wheel(tmp_path, "tinydep", "1.1")
    with pytest.raises(DeployError, match=r"tinydep at 1\.0, 1\.1"):
        hash_wheelhouse(tmp_path)


def test_pip_installs_the_wheelhouse_by_hash_and_refuses_a_changed_wheel(
        fake_wheelhouse: Wheelhouse, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(fake_wheelhouse.requirements)

    def install() -> subprocess.CompletedProcess[str]:
        # The instances' command, as a dry run into an empty target.
        return subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
             "--target", str(tmp_path / "target"), "--no-index", "--find-links",
             str(fake_wheelhouse.directory), "--only-binary", ":all:", "--require-hashes",
             "-r", str(requirements)],
            capture_output=True, text=True, timeout=120, check=False)

    run = install()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tinybase-2.0" in run.stdout and "tinydep-1.0" in run.stdout

    # A wheel swapped after the hashes were taken is refused.
    tiny_wheel(fake_wheelhouse.directory, "tinybase", "2.0", requires=("os-sys",))
    run = install()
    assert run.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in run.stderr


def test_locked_pins_are_the_lock_and_the_installed_versions() -> None:
    pins = locked_pins()
    # make setup installs the lock: where the tests run, the lock's versions are installed.
    for name in ("boto3", "botocore", "flask", "gunicorn", "pillow", "numpy", "tensorflow",
                 "keras"):
        assert pins[name] == importlib.metadata.version(name), name
    assert "imagepipe" not in pins  # the project is its own wheel


def test_locked_pins_take_the_version_for_the_instances_python(tmp_path: Path) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text('''version = 1
[[package]]
name = "proj"
version = "1.0"
source = { editable = "." }

[[package]]
name = "numpy"
version = "2.2.6"
source = { registry = "https://pypi.org/simple" }
resolution-markers = ["python_full_version < '3.12'"]

[[package]]
name = "numpy"
version = "2.4.6"
source = { registry = "https://pypi.org/simple" }
resolution-markers = ["python_full_version >= '3.12'"]

[[package]]
name = "Flask"
version = "3.1.3"
source = { registry = "https://pypi.org/simple" }
''')
    assert locked_pins(lock, python="3.12") == {"flask": "3.1.3", "numpy": "2.4.6"}
    assert locked_pins(lock, python="3.11") == {"flask": "3.1.3", "numpy": "2.2.6"}
    with pytest.raises(DeployError, match="reading"):
        locked_pins(tmp_path / "missing.lock")


def test_build_wheelhouse_downloads_wheels_for_each_kind_of_instance_pinned_by_the_lock(
        wheel: Path, tmp_path: Path) -> None:
    calls: list[list[str]] = []
    boto3_version = importlib.metadata.version("boto3")

    pyvips = locked_pins()["pyvips"]
    envs: list[Mapping[str, str]] = []

    def pip(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        if args[3] == "wheel":  # the source-only package, built pure
            envs.append(kwargs["env"])
            tiny_wheel(Path(args[args.index("--wheel-dir") + 1]), "pyvips", pyvips)
            return subprocess.CompletedProcess(args, 0, "", "")
        dest = Path(args[args.index("--dest") + 1])
        constraints = Path(args[args.index("--constraint") + 1]).read_text()
        calls.append(constraints.splitlines())
        tiny_wheel(dest, "boto3", boto3_version)
        if args[-1].endswith("[gpu]"):
            tiny_wheel(dest, "tensorflow", "2.21.0")
            # pip download copies what it takes from --find-links into --dest
            built = Path(args[args.index("--find-links") + 1]) / f"pyvips-{pyvips}-py3-none-any.whl"
            shutil.copyfile(built, dest / built.name)
        else:
            tiny_wheel(dest, "gunicorn", "27.0.1")
        tiny_wheel(dest, "imagepipe", "0.1.0")  # pip download saves the project too
        return subprocess.CompletedProcess(args, 0, "", "")

    house = build_wheelhouse(wheel, tmp_path / "wheelhouse", runner=pip)

    build, processor, constraints, front, _ = calls
    assert build[1:4] == ["-m", "pip", "wheel"]
    assert build[build.index("--no-binary") + 1] == "pyvips"
    assert f"pyvips=={pyvips}" in build
    # pkg-config finding no libvips makes pyvips' setup build its pure (ABI mode) wheel
    assert envs[0]["PKG_CONFIG"] == "false"
    built = build[build.index("--wheel-dir") + 1]
    assert processor[processor.index("--find-links") + 1] == built
    assert front[front.index("--find-links") + 1] == built
    assert processor[1:4] == ["-m", "pip", "download"]
    assert processor[-1] == f"{wheel}[gpu]" and front[-1] == f"{wheel}[front]"
    assert processor[processor.index("--python-version") + 1] == instance_python() == house.python
    assert processor[processor.index("--only-binary") + 1] == ":all:"
    assert "manylinux2014_x86_64" in processor
    assert f"boto3=={locked_pins()['boto3']}" in constraints
    assert f"tensorflow=={locked_pins()['tensorflow']}" in constraints
    # One wheelhouse; the processors' requirements and the front's, each of its own wheels
    assert house.requirements.startswith(f"boto3=={boto3_version} --hash=")
    assert "tensorflow==2.21.0 --hash=" in house.requirements
    assert "gunicorn" not in house.requirements
    assert "gunicorn==27.0.1 --hash=" in house.front_requirements
    assert "tensorflow" not in house.front_requirements
    assert f"pyvips=={pyvips} --hash=" in house.requirements
    assert "pyvips" not in house.front_requirements  # the front does without libvips
    assert set(house.wheels) == {f"boto3-{boto3_version}-py3-none-any.whl",
                                 "tensorflow-2.21.0-py3-none-any.whl",
                                 f"pyvips-{pyvips}-py3-none-any.whl",
                                 "gunicorn-27.0.1-py3-none-any.whl"}
    assert set(house.front_wheels) == {f"boto3-{boto3_version}-py3-none-any.whl",
                                       "gunicorn-27.0.1-py3-none-any.whl"}
    assert all((house.directory / name).exists() for name in house.wheels)


def test_a_source_only_package_built_for_this_machine_is_refused(tmp_path: Path) -> None:
    def pip(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        # What pyvips' setup builds when it compiles against the deployer's libvips
        tiny_wheel(Path(args[args.index("--wheel-dir") + 1]), "pyvips", "3.2.0",
                   tag="cp311-cp311-linux_x86_64")
        return subprocess.CompletedProcess(args, 0, "", "")

    with pytest.raises(DeployError, match=r"cp311-cp311-linux_x86_64\.whl was built"):
        build_source_wheels({"pyvips": "3.2.0", "boto3": "1.0"}, tmp_path, runner=pip)

    def failing(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 1, "", "no such version")

    with pytest.raises(DeployError, match=r"pyvips==9\.9\.9 failed:\nno such version"):
        build_source_wheels({"pyvips": "9.9.9"}, tmp_path / "other", runner=failing)
    # Only the packages PyPI has no wheel of are built.
    assert build_source_wheels({"boto3": "1.0"}, tmp_path / "none", runner=failing) == ()


@pytest.mark.slow
def test_pyvips_builds_from_its_locked_source_as_a_pure_python_wheel(tmp_path: Path) -> None:
    pin = locked_pins()["pyvips"]
    (built,) = build_source_wheels({"pyvips": pin}, tmp_path)
    assert built.name == f"pyvips-{pin}-py3-none-any.whl"
    with zipfile.ZipFile(built) as archive:
        names = archive.namelist()
        init = archive.read("pyvips/__init__.py").decode()
    # pyvips/__init__ imports the compiled _libvips when present (pyvips-binary brings it)
    # and otherwise opens libvips through cffi's ABI mode: no compiled module of its own.
    assert "import _libvips" in init
    assert not [name for name in names if name.endswith((".so", ".pyd"))]
    # The same lock builds the same bytes: the bucket keeps one file per wheel name.
    (again,) = build_source_wheels({"pyvips": pin}, tmp_path / "again")
    assert again.read_bytes() == built.read_bytes()


def test_release_name_changes_with_the_code_or_the_dependencies(
        wheel: Path, fake_wheelhouse: Wheelhouse) -> None:
    same = release_digest(wheel, fake_wheelhouse)
    assert release_digest(wheel, fake_wheelhouse) == same
    other = Wheelhouse(fake_wheelhouse.directory, fake_wheelhouse.requirements + "x==1\n", (),
                       fake_wheelhouse.python)
    assert release_digest(wheel, other) != same
    python = "3.12" if fake_wheelhouse.python != "3.12" else "3.11"
    newer = Wheelhouse(fake_wheelhouse.directory, fake_wheelhouse.requirements,
                       fake_wheelhouse.wheels, python)
    assert release_digest(wheel, newer) != same
    front = replace(fake_wheelhouse, front_requirements="y==2\n")
    assert release_digest(wheel, front) != same


def test_instances_run_the_python_the_tests_ran_on() -> None:
    assert instance_python() == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert instance_python((3, 12, 4)) == "3.12"
    for version in ((3, 10, 1), (3, 14, 0)):
        with pytest.raises(DeployError, match="Amazon Linux 2023 packages"):
            instance_python(version)


def test_deploy_uploads_the_wheelhouse_once_and_a_manifest_per_release(
        deploy_clients: DeployClients, wheel: Path, small_template: Path,
        fake_wheelhouse: Wheelhouse) -> None:
    # All parameters given: moto's update cannot keep one left at its default.
    given = {"Mode": "plain", "VisibilityTimeout": "120"}
    deploy("pipe", deploy_clients, parameters=given, wheel=wheel, wheelhouse=fake_wheelhouse,
           template=small_template, out=lambda line: None, poll_seconds=0)
    s3 = deploy_clients.s3
    prefix = f"pipe/{release_digest(wheel, fake_wheelhouse)}"
    body = s3.get_object(Bucket=ARTIFACTS, Key=f"{prefix}/requirements.txt")["Body"].read()
    assert body.decode() == fake_wheelhouse.requirements
    listed = s3.get_object(Bucket=ARTIFACTS, Key=f"{prefix}/wheels.txt")["Body"].read()
    assert listed.decode().split() == list(fake_wheelhouse.wheels)
    front = s3.get_object(Bucket=ARTIFACTS, Key=f"{prefix}/requirements-front.txt")["Body"]
    assert front.read().decode() == fake_wheelhouse.front_requirements
    listed = s3.get_object(Bucket=ARTIFACTS, Key=f"{prefix}/wheels-front.txt")["Body"].read()
    assert listed.decode().split() == list(fake_wheelhouse.front_wheels)
    python = s3.get_object(Bucket=ARTIFACTS, Key=f"{prefix}/python-version")["Body"].read()
    assert python.decode() == f"{instance_python()}\n"
    for name in fake_wheelhouse.wheels:
        s3.head_object(Bucket=ARTIFACTS, Key=f"pipe/wheelhouse/{name}")

    # A second release with one more wheel uploads that one only.
    extra = tiny_wheel(fake_wheelhouse.directory, "tinyextra", "3.0")
    grown = hash_wheelhouse(fake_wheelhouse.directory)
    uploaded: list[str] = []
    real_upload = s3.upload_file

    def upload_file(path: str, bucket: str, key: str, **kwargs: Any) -> None:
        uploaded.append(key)
        real_upload(path, bucket, key, **kwargs)

    s3.upload_file = upload_file
    deploy("pipe", deploy_clients, parameters=given, wheel=wheel, wheelhouse=grown,
           template=small_template, out=lambda line: None, poll_seconds=0)
    assert sorted(uploaded) == sorted([f"pipe/wheelhouse/{extra.name}",
                                       f"pipe/{release_digest(wheel, grown)}/{wheel.name}"])

    # A wheel built again with other bytes at the same size (as a rebuilt pyvips could be)
    # replaces the stored one, which its new hash would refuse.
    data = extra.read_bytes()
    extra.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    rebuilt = hash_wheelhouse(fake_wheelhouse.directory)
    uploaded.clear()
    deploy("pipe", deploy_clients, parameters=given, wheel=wheel, wheelhouse=rebuilt,
           template=small_template, out=lambda line: None, poll_seconds=0)
    assert f"pipe/wheelhouse/{extra.name}" in uploaded
    stored = s3.get_object(Bucket=ARTIFACTS, Key=f"pipe/wheelhouse/{extra.name}")["Body"].read()
    assert stored == extra.read_bytes()


class FakeSsm:
    """The DLAMI's public parameter, newest value first."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.asked: list[str] = []

    def get_parameter(self, Name: str) -> dict[str, Any]:
        self.asked.append(Name)
        return {"Parameter": {"Value": self.value}}


DLAMI = "/aws/service/deeplearning/ami/x86_64/dlami/latest/ami-id"
KNOWN = {"ProcessorImagePin": "", "ProcessorImageId": DLAMI}


def stack_with(**parameters: dict[str, str]) -> dict[str, Any]:
    return {"Parameters": [{"ParameterKey": k, **v} for k, v in parameters.items()]}


def test_the_ami_is_resolved_on_the_first_deploy_and_kept_after() -> None:
    ssm = FakeSsm("ami-0000000000000000b")
    clients = DeployClients(None, None, None, "us-east-1", ssm=ssm)

    assert pinned_image(clients, KNOWN, {}, None, refresh=False) == "ami-0000000000000000b"
    assert ssm.asked == [DLAMI]

    pinned = stack_with(ProcessorImagePin={"ParameterValue": "ami-000000000000000aa"},
                        ProcessorImageId={"ParameterValue": DLAMI,
                                          "ResolvedValue": "ami-0000000000000000b"})
    assert pinned_image(clients, KNOWN, {}, pinned, refresh=False) == "ami-000000000000000aa"
    # A stack from before the pin keeps what its processors run now.
    older = stack_with(ProcessorImageId={"ParameterValue": DLAMI,
                                         "ResolvedValue": "ami-00000000000000011"})
    assert pinned_image(clients, KNOWN, {}, older, refresh=False) == "ami-00000000000000011"
    assert ssm.asked == [DLAMI]

    # Asked for, the newest; given explicitly, left alone; a template without the pin, nothing.
    assert pinned_image(clients, KNOWN, {}, pinned, refresh=True) == "ami-0000000000000000b"
    other = "/aws/service/deeplearning/ami/x86_64/other/latest/ami-id"
    assert pinned_image(clients, KNOWN, {"ProcessorImageId": other}, pinned,
                        refresh=False) == "ami-0000000000000000b"
    assert ssm.asked[-1] == other
    assert pinned_image(clients, KNOWN, {"ProcessorImagePin": "ami-1"}, pinned, False) is None
    assert pinned_image(clients, {"ProcessorImageId": DLAMI}, {}, None, False) is None


def test_cli_asks_for_the_newest_ami_only_when_told(aws: None, monkeypatch, capsys) -> None:
    import imagepipe.cli.deploy as deploy_module

    asked: list[bool] = []

    def fake_deploy(stack: str, clients: DeployClients, **options: Any) -> Any:
        asked.append(options["refresh_image"])
        return deploy_module.Deployment(stack, "updated", {})

    monkeypatch.setattr(deploy_module, "deploy", fake_deploy)
    assert cli.main(["deploy", "--stack", "pipe"]) == 0
    assert cli.main(["deploy", "--stack", "pipe", "--refresh-ami"]) == 0
    assert asked == [False, True]
