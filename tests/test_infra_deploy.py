"""`imagepipe deploy` and `destroy` on moto: wheel, artifact bucket, create, update, delete.

moto's CloudFormation creates the full template (tested here through deploy) but cannot update
it: it fails to replace the Auto Scaling groups, and its UsePreviousValue breaks for parameters
that were left at their default. The update and delete paths therefore run on a small template
with the same contract (ArtifactBucket and WheelKey in, BucketName out).
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from imagepipe.cli import main as cli
from imagepipe.cli.deploy import (
    DeployClients,
    DeployError,
    artifact_bucket_name,
    build_wheel,
    check_stack_name,
    deploy,
    destroy,
    ensure_artifact_bucket,
    make_deploy_clients,
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
                                                   small_template: Path) -> None:
    printed: list[str] = []

    def run(**parameters: str) -> Any:
        return deploy("pipe", deploy_clients, parameters=parameters, wheel=wheel,
                      template=small_template, out=printed.append, poll_seconds=0)

    # Created, with the wheel uploaded under a content-addressed key
    created = run(Mode="spot")
    assert created.action == "created"
    wheel_key = f"pipe/{wheel_digest(wheel)}/{wheel.name}"
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
                                                           wheel: Path,
                                                           small_template: Path) -> None:
    printed: list[str] = []
    created = deploy("pipe", deploy_clients, wheel=wheel, template=small_template,
                     out=printed.append, poll_seconds=0)
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
        deploy_clients: DeployClients, wheel: Path, small_template: Path) -> None:
    with pytest.raises(DeployError, match="unknown parameters Spot"):
        deploy("pipe", deploy_clients, parameters={"Spot": "true"}, wheel=wheel,
               template=small_template, out=lambda line: None, poll_seconds=0)


def test_the_full_template_deploys_through_the_command(deploy_clients: DeployClients,
                                                       wheel: Path, tmp_path: Path) -> None:
    template = tmp_path / "imagepipe.yaml"
    template.write_text(moto_template_body())
    put_test_gpu_ami()

    result = deploy("pipe", deploy_clients, wheel=wheel, template=template,
                    out=lambda line: None, poll_seconds=0)

    assert result.action == "created"
    assert {"WebUrl", "BucketName", "QueueUrl", "TableName"} <= set(result.outputs)
    stack = deploy_clients.cloudformation.describe_stacks(StackName="pipe")["Stacks"][0]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert parameters["ArtifactBucket"] == ARTIFACTS
    assert parameters["WheelKey"] == f"pipe/{wheel_digest(wheel)}/{wheel.name}"


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
