"""`imagepipe deploy` / `imagepipe destroy`: the CloudFormation stack on AWS, with plain boto3.

deploy builds the project's wheel and a wheelhouse of its dependencies at the versions uv.lock
pins (what make setup installs and the tests pass with), with a hashed requirements file for
the processors (GPU extra) and one for the web front (front extra, no TensorFlow), uploads
them and the template to an artifact bucket (created private if missing), pins the processor
AMI, creates or updates the stack, waits while printing its events, and returns the outputs.
destroy deletes the stack and the stack's artifacts; the images, the results and the access
logs, which the stack retains, go too only when asked (--delete-data).

Layout in the artifact bucket: <stack>/wheelhouse/<wheel file> (shared by the releases, each
uploaded once), <stack>/<release>/<project wheel>, requirements.txt, wheels.txt (the
wheelhouse files the processors install), requirements-front.txt, wheels-front.txt (the web
front's) and python-version, <stack>/templates/<digest>.yaml.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import tomllib
from botocore.exceptions import ClientError
from packaging.markers import Marker
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from imagepipe.core.aws import client_config, error_code
from imagepipe.core.settings import Settings

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = PROJECT_ROOT / "infra" / "cloudformation" / "imagepipe.yaml"

# The stack name also names the bucket and the load balancer: lowercase, and short enough for
# "<stack>-images-<account>-<region>" to stay within S3's 63 characters.
STACK_NAME = re.compile(r"[a-z][a-z0-9-]{0,24}")
CAPABILITIES = ["CAPABILITY_IAM"]
NO_UPDATES = "No updates are to be performed"
POLL_SECONDS = 10.0
TIMEOUT_SECONDS = 3600.0

# Copied into the clean build tree: everything but environments, caches and earlier builds.
_BUILD_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", ".imagepipe", "tests",
)

# The processors run Amazon Linux 2023 on x86_64 (glibc 2.34), with the Python the tests ran
# on, so that each binary wheel they install is the one tested: one of those it packages.
INSTANCE_PYTHONS = ("3.11", "3.12")
INSTANCE_PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                      "manylinux2014_x86_64")
# What each kind of instance installs of the project: the processors its GPU extra, the web
# front only the front's (no TensorFlow).
INSTANCE_EXTRAS = {"processor": ("gpu",), "front": ("front",)}
LOCK = PROJECT_ROOT / "uv.lock"
# Environment markers are evaluated for the instances, not for the machine that deploys.
INSTANCE_MARKERS = {
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
    "os_name": "posix", "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
# Locked packages PyPI publishes as source only that build to a pure-Python wheel: pyvips (its
# ABI mode loads the libvips that pyvips-binary's wheel bundles). The instances install wheels
# only, so deploy builds each at its pin and the downloads find it there.
SOURCE_ONLY_PURE = frozenset({"pyvips"})
# Wheel timestamps for those builds (1980-01-01, the earliest a zip holds): a rebuild gives the
# same bytes, so the same file name keeps the hash the releases already in the bucket pinned.
WHEEL_EPOCH = "315532800"
IMAGE_PIN = "ProcessorImagePin"
IMAGE_PARAMETER = "ProcessorImageId"

Printer = Callable[[str], None]
Runner = Callable[..., subprocess.CompletedProcess[str]]


class DeployError(RuntimeError):
    """The stack could not be deployed or destroyed; the message says why."""


@dataclass(frozen=True)
class DeployClients:
    """The clients deploy and destroy use."""

    cloudformation: Any
    s3: Any
    sts: Any
    region: str
    dynamodb: Any = None
    ssm: Any = None


@dataclass(frozen=True)
class Deployment:
    """What a deploy came to: "created", "updated" or "unchanged", and the stack's outputs."""

    stack: str
    action: str
    outputs: dict[str, str]


def make_deploy_clients(settings: Settings, session: boto3.session.Session | None = None
                        ) -> DeployClients:
    """CloudFormation, S3, STS and DynamoDB clients for the settings' region and endpoint."""
    session = session or boto3.session.Session()
    config = client_config(settings)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=settings.endpoint_url, config=config)

    return DeployClients(client("cloudformation"), client("s3"), client("sts"), settings.region,
                         client("dynamodb"), client("ssm"))


def check_stack_name(name: str) -> str:
    """Return the name, or explain why CloudFormation, S3 or the load balancer would refuse it."""
    if not STACK_NAME.fullmatch(name):
        raise DeployError(
            f"stack name {name!r}: use 1-25 lowercase letters, digits and hyphens, starting with "
            "a letter (it names the bucket and the load balancer)"
        )
    return name


def build_wheel(out_dir: Path, project: Path = PROJECT_ROOT) -> Path:
    """Build the project's wheel from a clean copy of the source tree; return its path."""
    with tempfile.TemporaryDirectory(prefix="imagepipe-build-") as tmp:
        # A copy, so that a stale build/ directory cannot leak removed modules into the wheel.
        source = Path(tmp) / "src"
        shutil.copytree(project, source, ignore=_BUILD_IGNORE)
        out_dir.mkdir(parents=True, exist_ok=True)
        before = set(out_dir.glob("*.whl"))
        run = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out_dir),
             str(source)],
            capture_output=True, text=True, check=False,
        )
        if run.returncode != 0:
            raise DeployError(f"building the wheel failed:\n{run.stdout}{run.stderr}")
    built = sorted(set(out_dir.glob("imagepipe-*.whl")) - before) or sorted(
        out_dir.glob("imagepipe-*.whl"))
    if not built:
        raise DeployError(f"pip wheel left no imagepipe wheel in {out_dir}")
    return built[-1]


def wheel_digest(wheel: Path) -> str:
    """A digest of the wheel's files, not of the zip: rebuilding unchanged code gives the same."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            digest.update(info.filename.encode() + b"\0")
            digest.update(archive.read(info) + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Wheelhouse:
    """A folder of dependency wheels and the hashed requirements file that installs them."""

    directory: Path
    requirements: str
    wheels: tuple[str, ...]
    python: str
    # What the web front installs: a part of the same wheelhouse.
    front_requirements: str = ""
    front_wheels: tuple[str, ...] = ()


def instance_python(version: tuple[int, ...] = tuple(sys.version_info)) -> str:
    """The Python running this (and the tests), as the instances' python3.X package names it."""
    name = f"{version[0]}.{version[1]}"
    if name not in INSTANCE_PYTHONS:
        raise DeployError(f"deploy from Python {' or '.join(INSTANCE_PYTHONS)} (what Amazon "
                          f"Linux 2023 packages), where the tests passed; this is {name}")
    return name


def locked_pins(lock: Path = LOCK, python: str | None = None) -> dict[str, str]:
    """The version uv.lock pins for each package, as the instances' Python resolves it.

    The lock holds what `make setup` installs and the tests pass with. A package the lock
    pins twice (one version per Python range) is taken at the version whose range holds the
    instances' Python.
    """
    python = python or instance_python()
    markers = {**INSTANCE_MARKERS, "python_version": python, "python_full_version": f"{python}.0"}
    try:
        packages = tomllib.loads(lock.read_text())["package"]
    except (OSError, ValueError, KeyError) as exc:
        raise DeployError(f"reading {lock}: {exc}") from exc
    pins: dict[str, str] = {}
    for package in packages:
        if "editable" in package.get("source", {}) or "virtual" in package.get("source", {}):
            continue
        ranges = package.get("resolution-markers")
        if ranges and not any(Marker(r).evaluate(markers) for r in ranges):
            continue
        pins[canonicalize_name(package["name"])] = package["version"]
    return dict(sorted(pins.items()))


def file_sha256(path: Path) -> str:
    """The file's SHA-256, as pip's --require-hashes checks it."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def hash_wheelhouse(directory: Path, exclude: tuple[str, ...] = ("imagepipe",),
                    python: str | None = None) -> Wheelhouse:
    """The --require-hashes requirements of every wheel in the folder but `exclude`."""
    skip = {canonicalize_name(n) for n in exclude}
    versions: dict[str, set[str]] = {}
    hashes: dict[str, list[str]] = {}
    wheels = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".whl":
            raise DeployError(f"{path.name} in the wheelhouse is not a wheel: instances install "
                              "only wheels (--only-binary :all:)")
        name, version, _, _ = parse_wheel_filename(path.name)
        if name in skip:
            continue
        versions.setdefault(name, set()).add(str(version))
        hashes.setdefault(name, []).append(file_sha256(path))
        wheels.append(path.name)
    lines = []
    for name in sorted(versions):
        if len(versions[name]) > 1:
            raise DeployError(f"the wheelhouse holds {name} at {', '.join(sorted(versions[name]))}")
        (version,) = versions[name]
        lines.append(f"{name}=={version} " + " ".join(
            f"--hash=sha256:{digest}" for digest in sorted(hashes[name])))
    return Wheelhouse(directory, "".join(line + "\n" for line in lines), tuple(wheels),
                      python or instance_python())


def build_source_wheels(pins: Mapping[str, str], dest: Path, *,
                        runner: Runner = subprocess.run) -> tuple[Path, ...]:
    """Build the wheel of each locked package in SOURCE_ONLY_PURE at its pin, into dest.

    pyvips' setup.py compiles its cffi module against libvips' headers when pkg-config finds
    them: a wheel for the deployer's own libvips, which the instances lack. PKG_CONFIG=false
    makes the `pkgconfig` package's lookup fail, so setup falls back to the pure ABI mode; a
    wheel that is not pure all the same is refused. The build uses the setuptools the lock
    installed here (no build isolation) and no wheel cache (one built earlier, perhaps
    against libvips, would be taken as it is), so that the same lock builds the same bytes.
    """
    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PKG_CONFIG": "false", "SOURCE_DATE_EPOCH": WHEEL_EPOCH}
    built = []
    for name in sorted(SOURCE_ONLY_PURE & pins.keys()):
        run = runner(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
             "--no-build-isolation", "--no-binary", name, f"{name}=={pins[name]}",
             "--wheel-dir", str(dest)],
            capture_output=True, text=True, check=False, env=env,
        )
        if run.returncode != 0:
            raise DeployError(f"building the wheel of {name}=={pins[name]} failed:\n"
                              f"{run.stdout}{run.stderr}")
        wheels = [path for path in sorted(dest.glob("*.whl"))
                  if parse_wheel_filename(path.name)[:2] == (name, Version(pins[name]))]
        if not wheels:
            raise DeployError(f"pip wheel left no wheel of {name}=={pins[name]} in {dest}")
        for path in wheels:
            tags = parse_wheel_filename(path.name)[3]
            if not all(t.interpreter.startswith("py") and t.abi == "none"
                       and t.platform == "any" for t in tags):
                raise DeployError(
                    f"{path.name} was built for this machine, not as pure Python: the "
                    f"instances could not load it. Its setup found a library to compile "
                    f"against; build {name} in its ABI mode")
        built.extend(wheels)
    return tuple(built)


def build_wheelhouse(wheel: Path, out_dir: Path, *, python: str | None = None,
                     runner: Runner = subprocess.run, lock: Path = LOCK) -> Wheelhouse:
    """Download the wheels the instances need, at the versions uv.lock pins, hashed.

    One wheelhouse for both kinds of instance, with one hashed requirements file each: the
    processors' (GPU extra) and the web front's (front extra, no TensorFlow).
    """
    python = python or instance_python()
    out_dir.mkdir(parents=True, exist_ok=True)
    constraints = out_dir.parent / f"{out_dir.name}-constraints.txt"
    pins = locked_pins(lock, python)
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
    # Built once, beside the parts' folders: pip download copies a wheel it takes from
    # --find-links into --dest, so each part's folder, and hashes, get it only if it needs it.
    built = out_dir.parent / f"{out_dir.name}-built"
    build_source_wheels(pins, built, runner=runner)
    platforms = [arg for platform in INSTANCE_PLATFORMS for arg in ("--platform", platform)]
    project = parse_wheel_filename(wheel.name)[0]
    parts: dict[str, Wheelhouse] = {}
    for part, extras in INSTANCE_EXTRAS.items():
        dest = out_dir if part == "processor" else out_dir.parent / f"{out_dir.name}-{part}"
        dest.mkdir(parents=True, exist_ok=True)
        run = runner(
            [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest),
             "--only-binary", ":all:", "--implementation", "cp", "--python-version",
             python, *platforms, "--constraint", str(constraints),
             "--find-links", str(built), f"{wheel}[{','.join(extras)}]"],
            capture_output=True, text=True, check=False,
        )
        if run.returncode != 0:
            raise DeployError(f"downloading the {part}'s dependencies failed:\n"
                              f"{run.stdout}{run.stderr}")
        parts[part] = hash_wheelhouse(dest, exclude=(project,), python=python)
    processor, front = parts["processor"], parts["front"]
    for name in front.wheels:
        if not (out_dir / name).exists():
            shutil.copyfile(front.directory / name, out_dir / name)
    return Wheelhouse(out_dir, processor.requirements,
                      tuple(sorted(set(processor.wheels) | set(front.wheels))), python,
                      front.requirements, front.wheels)


def release_digest(wheel: Path, wheelhouse: Wheelhouse) -> str:
    """Names a release: the wheel's content, its Python and dependencies' hashes."""
    digest = hashlib.sha256(
        f"{wheel_digest(wheel)}\n{wheelhouse.python}\n{wheelhouse.requirements}"
        f"{wheelhouse.front_requirements}".encode())
    return digest.hexdigest()[:16]


def upload_release(s3: Any, bucket: str, stack: str, wheel: Path, wheelhouse: Wheelhouse
                   ) -> str:
    """Upload the new wheelhouse files, the wheel and its manifests; return the wheel's key."""
    for name in wheelhouse.wheels:
        key = f"{stack}/wheelhouse/{name}"
        path = wheelhouse.directory / name
        digest = file_sha256(path)
        stored = _stored_wheel(s3, bucket, key)
        # A wheel built here (SOURCE_ONLY_PURE) can differ from the one of its name an earlier
        # deploy uploaded, at the same size (another setuptools in the lock): its digest tells.
        # Wheels stored without one came from PyPI, whose files never change under one name.
        size = path.stat().st_size
        if stored in ((size, None), (size, digest)):
            continue
        if stored is not None and stored[1] is not None:
            logger.warning("replacing %s: the releases that pinned its earlier build will not "
                           "install", key)
        s3.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}})
    prefix = f"{stack}/{release_digest(wheel, wheelhouse)}"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/requirements.txt",
                  Body=wheelhouse.requirements.encode())
    s3.put_object(Bucket=bucket, Key=f"{prefix}/wheels.txt",
                  Body="".join(f"{name}\n" for name in wheelhouse.wheels).encode())
    s3.put_object(Bucket=bucket, Key=f"{prefix}/requirements-front.txt",
                  Body=wheelhouse.front_requirements.encode())
    s3.put_object(Bucket=bucket, Key=f"{prefix}/wheels-front.txt",
                  Body="".join(f"{name}\n" for name in wheelhouse.front_wheels).encode())
    s3.put_object(Bucket=bucket, Key=f"{prefix}/python-version",
                  Body=f"{wheelhouse.python}\n".encode())
    s3.upload_file(str(wheel), bucket, f"{prefix}/{wheel.name}")
    return f"{prefix}/{wheel.name}"


def _stored_wheel(s3: Any, bucket: str, key: str) -> tuple[int, str | None] | None:
    """The stored object's size and the sha256 recorded at its upload; None if missing."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head["ContentLength"], head.get("Metadata", {}).get("sha256")


def pinned_image(clients: DeployClients, known: Mapping[str, str], given: Mapping[str, str],
                 existing: Mapping[str, Any] | None, refresh: bool) -> str | None:
    """The processor AMI to pin: the one pinned or running already, or the newest if asked.

    Asking is `refresh`, or giving ProcessorImageId. `known` maps the template's parameters to
    their defaults. None when the template has no pin or the pin is given.
    """
    if IMAGE_PIN not in known or IMAGE_PIN in given:
        return None
    current = {p["ParameterKey"]: p for p in (existing or {}).get("Parameters", [])}
    if not refresh and IMAGE_PARAMETER not in given:
        if current.get(IMAGE_PIN, {}).get("ParameterValue"):
            return current[IMAGE_PIN]["ParameterValue"]
        # Stacks from before the pin: keep the AMI their processors run now.
        if current.get(IMAGE_PARAMETER, {}).get("ResolvedValue"):
            return current[IMAGE_PARAMETER]["ResolvedValue"]
    name = (given.get(IMAGE_PARAMETER) or current.get(IMAGE_PARAMETER, {}).get("ParameterValue")
            or known[IMAGE_PARAMETER])
    return clients.ssm.get_parameter(Name=name)["Parameter"]["Value"]


def artifact_bucket_name(account: str, region: str) -> str:
    """The default artifact bucket: one per account and region, shared by its stacks."""
    return f"imagepipe-artifacts-{account}-{region}"


def ensure_artifact_bucket(s3: Any, bucket: str, region: str) -> None:
    """Create the artifact bucket if it is missing: private, encrypted, TLS only."""
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        code = error_code(exc)
        if code in ("403", "AccessDenied", "Forbidden"):
            raise DeployError(f"artifact bucket {bucket} exists but this account may not use it; "
                              "pass --artifact-bucket") from exc
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
    params: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**params)
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_bucket_policy(Bucket=bucket, Policy=_tls_only_policy(bucket))
    logger.info("created artifact bucket %s", bucket)


def _tls_only_policy(bucket: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "TlsOnly",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    })


def template_url(bucket: str, region: str, key: str) -> str:
    """The virtual-hosted S3 URL CloudFormation reads a template from."""
    return f"https://{bucket}.s3.{region}.amazonaws.com/{key}"


def deploy(
    stack: str,
    clients: DeployClients,
    *,
    parameters: Mapping[str, str] | None = None,
    wheel: Path | None = None,
    wheelhouse: Wheelhouse | None = None,
    refresh_image: bool = False,
    artifact_bucket: str | None = None,
    template: Path = TEMPLATE,
    out: Printer = print,
    poll_seconds: float = POLL_SECONDS,
    timeout_seconds: float = TIMEOUT_SECONDS,
) -> Deployment:
    """Build and upload the release, create or update the stack, wait, return its outputs.

    Parameters not given keep their current value on an update (or the template's default on
    creation); ArtifactBucket and WheelKey are set here, and ProcessorImagePin unless given:
    kept as it is, or resolved from ProcessorImageId on the first deploy or with refresh_image.
    """
    check_stack_name(stack)
    cfn = clients.cloudformation
    bucket = artifact_bucket or artifact_bucket_name(
        clients.sts.get_caller_identity()["Account"], clients.region)
    ensure_artifact_bucket(clients.s3, bucket, clients.region)

    with tempfile.TemporaryDirectory(prefix="imagepipe-dist-") as tmp:
        if wheel is None:
            out("building the wheel")
            wheel = build_wheel(Path(tmp) / "dist")
        if wheelhouse is None:
            out("downloading and hashing its dependencies")
            wheelhouse = build_wheelhouse(wheel, Path(tmp) / "wheelhouse")
        wheel_key = upload_release(clients.s3, bucket, stack, wheel, wheelhouse)
    template_body = template.read_bytes()
    template_key = f"{stack}/templates/{hashlib.sha256(template_body).hexdigest()[:16]}.yaml"
    clients.s3.put_object(Bucket=bucket, Key=template_key, Body=template_body)
    url = template_url(bucket, clients.region, template_key)
    out(f"uploaded s3://{bucket}/{wheel_key}")

    given = {**(parameters or {}), "ArtifactBucket": bucket, "WheelKey": wheel_key}
    existing = _describe(cfn, stack)
    if existing is not None and existing["StackStatus"] == "ROLLBACK_COMPLETE":
        # A first creation that failed and rolled back holds no resources and cannot be updated.
        out(f"stack {stack} is ROLLBACK_COMPLETE from a failed creation; deleting it first")
        status = _delete_and_wait(cfn, existing["StackId"], out, poll_seconds, timeout_seconds)
        if status != "DELETE_COMPLETE":
            raise DeployError(f"could not delete the failed stack {stack}: {status}")
        existing = None
    if existing is not None and existing["StackStatus"].endswith("_IN_PROGRESS"):
        raise DeployError(f"stack {stack} is {existing['StackStatus']}; try again when it ends")

    known = {p["ParameterKey"]: p.get("DefaultValue", "")
             for p in cfn.get_template_summary(TemplateURL=url)["Parameters"]}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise DeployError(f"unknown parameters {', '.join(unknown)}; "
                          f"the template takes {', '.join(sorted(known))}")
    image = pinned_image(clients, known, given, existing, refresh_image)
    if image is not None:
        given[IMAGE_PIN] = image
        out(f"processor AMI {image}")
    last_event = _newest_event_id(cfn, stack) if existing is not None else None

    if existing is None:
        out(f"creating stack {stack}")
        stack_id = cfn.create_stack(
            StackName=stack, TemplateURL=url, Capabilities=CAPABILITIES,
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in given.items()],
            OnFailure="ROLLBACK", Tags=[{"Key": "imagepipe:stack", "Value": stack}],
        )["StackId"]
        action, goal = "created", "CREATE_COMPLETE"
    else:
        previous = {p["ParameterKey"] for p in existing.get("Parameters", [])}
        request = [{"ParameterKey": k, "ParameterValue": v} for k, v in given.items()]
        # The rest keep their values (the processor AMI is pinned above; an SSM-typed parameter
        # would follow the latest). A parameter new in the template takes its default.
        request += [{"ParameterKey": k, "UsePreviousValue": True}
                    for k in sorted((previous & set(known)) - set(given))]
        stack_id = existing["StackId"]
        try:
            cfn.update_stack(StackName=stack_id, TemplateURL=url, Capabilities=CAPABILITIES,
                             Parameters=request)
        except ClientError as exc:
            if error_code(exc) == "ValidationError" and NO_UPDATES in str(exc):
                out(f"stack {stack} is up to date")
                return Deployment(stack, "unchanged", _outputs(existing))
            raise
        out(f"updating stack {stack}")
        action, goal = "updated", "UPDATE_COMPLETE"

    final = _wait(cfn, stack_id, last_event, out, poll_seconds, timeout_seconds)
    if final["StackStatus"] != goal:
        raise DeployError(f"stack {stack} ended {final['StackStatus']}"
                          f"{_failure_reasons(cfn, stack_id, last_event)}")
    return Deployment(stack, action, _outputs(final))


def destroy(
    stack: str,
    clients: DeployClients,
    *,
    delete_data: bool = False,
    out: Printer = print,
    poll_seconds: float = POLL_SECONDS,
    timeout_seconds: float = TIMEOUT_SECONDS,
) -> bool:
    """Delete the stack and its artifacts; False if there was no stack.

    The stack retains its image bucket, results table and access-log bucket; they are kept
    unless `delete_data`, which empties and deletes them once the stack is gone.
    """
    check_stack_name(stack)
    cfn = clients.cloudformation
    existing = _describe(cfn, stack)
    if existing is None:
        out(f"no stack {stack}")
        return False
    outputs = _outputs(existing)
    buckets = [outputs[name] for name in DATA_BUCKET_OUTPUTS if outputs.get(name)]
    table = outputs.get("TableName")
    params = {p["ParameterKey"]: p.get("ParameterValue", "")
              for p in existing.get("Parameters", [])}
    stack_id = existing["StackId"]
    # A stack deployed before its bucket was retained deletes it, which S3 refuses while it
    # holds objects; uploads can still arrive while the front is being deleted, hence a
    # second round.
    for attempt in (1, 2):
        if delete_data and buckets:
            removed = empty_bucket(clients.s3, buckets[0])
            out(f"emptied s3://{buckets[0]} ({removed} objects)")
        final = _delete_and_wait(cfn, stack_id, out, poll_seconds, timeout_seconds)
        if final == "DELETE_COMPLETE":
            break
        if attempt == 2 or not delete_data:
            raise DeployError(f"stack {stack} ended {final}"
                              f"{_failure_reasons(cfn, stack_id, None)}")
    artifacts = params.get("ArtifactBucket")
    if artifacts:
        removed = empty_bucket(clients.s3, artifacts, prefix=f"{stack}/")
        out(f"removed {removed} artifacts of {stack} from s3://{artifacts}")
    if delete_data:
        for bucket in buckets:
            _delete_bucket(clients.s3, bucket, out)
        if table:
            _delete_table(clients.dynamodb, table, out)
    else:
        kept = [f"s3://{bucket}" for bucket in buckets] + ([f"table {table}"] if table else [])
        if kept:
            out(f"kept {', '.join(kept)}: imagepipe destroy --delete-data deletes them with "
                "the stack; docs/production.md says how to delete them afterwards")
    out(f"stack {stack} deleted")
    return True


# The stack's outputs that name buckets it retains: the images first (uploads land there).
DATA_BUCKET_OUTPUTS = ("BucketName", "AccessLogsBucketName")


def _delete_bucket(s3: Any, bucket: str, out: Printer) -> None:
    """Empty and delete a bucket the stack retained; nothing if it is gone already."""
    removed = empty_bucket(s3, bucket)
    try:
        s3.delete_bucket(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc) != "NoSuchBucket":
            raise
        return
    out(f"deleted s3://{bucket} ({removed} objects)")


def _delete_table(dynamodb: Any, table: str, out: Printer) -> None:
    """Lift a retained table's deletion protection and delete it; nothing if it is gone."""
    try:
        dynamodb.update_table(TableName=table, DeletionProtectionEnabled=False)
        dynamodb.delete_table(TableName=table)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        return
    out(f"deleted table {table}")


def empty_bucket(s3: Any, bucket: str, prefix: str = "") -> int:
    """Delete every object version (and abort every upload) under the prefix; return the count."""
    removed = 0
    try:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            for start in range(0, len(keys), 1000):
                chunk = keys[start:start + 1000]
                s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
                removed += len(chunk)
        uploads = s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
        for page in uploads:
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
    except ClientError as exc:
        if error_code(exc) != "NoSuchBucket":
            raise
    return removed


def _describe(cfn: Any, stack: str) -> dict[str, Any] | None:
    try:
        return cfn.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
            return None
        raise


def _outputs(stack: Mapping[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def _newest_event_id(cfn: Any, stack: str) -> str | None:
    events = cfn.describe_stack_events(StackName=stack).get("StackEvents", [])
    return events[0]["EventId"] if events else None


def _events_after(cfn: Any, stack_id: str, last_event: str | None) -> list[dict[str, Any]]:
    """The stack's events newer than `last_event`, oldest first."""
    newer: list[dict[str, Any]] = []
    try:
        for page in cfn.get_paginator("describe_stack_events").paginate(StackName=stack_id):
            for event in page.get("StackEvents", []):
                if event["EventId"] == last_event:
                    return newer[::-1]
                newer.append(event)
    except ClientError as exc:
        if not (error_code(exc) == "ValidationError" and "does not exist" in str(exc)):
            raise
    return newer[::-1]


def _wait(cfn: Any, stack_id: str, last_event: str | None, out: Printer,
          poll_seconds: float, timeout_seconds: float) -> dict[str, Any]:
    """Print the stack's new events until it leaves *_IN_PROGRESS; return its description."""
    deadline = time.monotonic() + timeout_seconds
    seen: set[str] = set()
    while True:
        stack = _describe(cfn, stack_id)
        if stack is None:
            # Some endpoints forget a deleted stack at once instead of showing DELETE_COMPLETE.
            return {"StackId": stack_id, "StackStatus": "DELETE_COMPLETE"}
        for event in _events_after(cfn, stack_id, last_event):
            if event["EventId"] not in seen:
                seen.add(event["EventId"])
                reason = event.get("ResourceStatusReason")
                out(f"  {event['LogicalResourceId']:<28} {event['ResourceStatus']}"
                    + (f": {reason}" if reason else ""))
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        if time.monotonic() > deadline:
            raise DeployError(f"stack still {stack['StackStatus']} after {timeout_seconds:.0f} s")
        time.sleep(poll_seconds)


def _delete_and_wait(cfn: Any, stack_id: str, out: Printer, poll_seconds: float,
                     timeout_seconds: float) -> str:
    last_event = _newest_event_id(cfn, stack_id)
    cfn.delete_stack(StackName=stack_id)
    out("deleting stack (instances, load balancer, queues; the bucket and table it retains stay)")
    return _wait(cfn, stack_id, last_event, out, poll_seconds, timeout_seconds)["StackStatus"]


def _failure_reasons(cfn: Any, stack_id: str, last_event: str | None) -> str:
    failed = [e for e in _events_after(cfn, stack_id, last_event)
              if e["ResourceStatus"].endswith("_FAILED") and e.get("ResourceStatusReason")]
    return "".join(f"\n  {e['LogicalResourceId']}: {e['ResourceStatusReason']}" for e in failed)
