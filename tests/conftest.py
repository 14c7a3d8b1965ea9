"""Shared fixtures: fake credentials, moto, provisioned resources, the app, photos, events,
a local web server to import from, and the real local stack (one per test session)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws
from PIL import Image

from imagepipe.core.aws import Clients, make_clients
from imagepipe.core.provision import Resources, provision
from imagepipe.core.records import ResultRecord, ResultStore
from imagepipe.core.s3events import S3Object, event_record, notification_body
from imagepipe.core.settings import Settings

EVENTS = Path(__file__).parent / "events"
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"

_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE")


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, so nothing can reach a real account."""
    for name in _AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session", autouse=True)
def dynamodb_takes_turns() -> Iterator[None]:
    """moto's in-process DynamoDB is not thread-safe: a query walks a table's dict of items
    while another thread's put grows it ("dictionary changed size during iteration"), which
    the processor's lanes and fetch threads can do at once. Here its calls take turns; real
    DynamoDB, and the local stack's moto server behind its key maps, take them side by side."""
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.call_action
    turns = threading.RLock()

    def call_action(self: Any) -> Any:
        with turns:
            return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DynamoHandler, "call_action", call_action)
        yield


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """One converted-weights cache for the whole run, outside the user's home.

    The test processes of `pytest -n` share it: the model writes each file whole and renames
    it into place, so two processes converting at once both leave a complete file.
    """
    if worker_id == "master":
        return tmp_path_factory.mktemp("model-cache")
    shared = tmp_path_factory.getbasetemp().parent / "model-cache"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture
def settings(model_cache: Path) -> Settings:
    return Settings(
        bucket="test-images",
        queue="test-events",
        dead_letter_queue="test-events-dlq",
        table="test-results",
        poll_seconds=0,
        sync_wait_seconds=2,
        max_upload_bytes=2 * 1024 * 1024,
        max_pixels=40_000_000,
        cache_dir=model_cache,
    )


@pytest.fixture
def aws() -> Iterator[None]:
    """moto's in-process mock, active before any client is made."""
    with mock_aws():
        yield


@pytest.fixture
def clients(aws: None, settings: Settings) -> Clients:
    return make_clients(settings)


@pytest.fixture
def resources(settings: Settings, clients: Clients) -> Resources:
    made = provision(settings, clients)
    if made.interactive_queue_url:
        # The interactive queue starts empty, as a bucket with uploads only would leave it:
        # the tests that count a worker's batches send the bulk queue what they mean.
        for message in clients.sqs.receive_message(
                QueueUrl=made.interactive_queue_url, MaxNumberOfMessages=10).get("Messages", []):
            clients.sqs.delete_message(QueueUrl=made.interactive_queue_url,
                                       ReceiptHandle=message["ReceiptHandle"])
    return made


@pytest.fixture
def store(resources: Resources, clients: Clients, settings: Settings) -> ResultStore:
    return ResultStore(clients.dynamodb, settings.table)


# A way of writing a result: the tests of the never-backwards rule run on both.
Write = Callable[[ResultRecord], bool]


@pytest.fixture(params=["update", "put"])
def write(request: pytest.FixtureRequest, store: ResultStore) -> Write:
    """save_result both ways: an update on its own, or a put after reading creation times."""
    if request.param == "update":
        return store.save_result

    def put(record: ResultRecord) -> bool:
        created = store.creation_times([record.image_id]).get(record.image_id)
        return store.save_result(record, existing_created_at=created)
    return put


# ---------------------------------------------------------------- people and the front
PASSWORD = "Test-password-1234"
ADMIN = "tester"


@dataclass
class Users:
    """People in the test user pool, who sign in for real (moto's Cognito) and get tokens."""

    cognito: Any
    pool_id: str
    client_id: str
    subs: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, admin: bool = False) -> str:
        """A user with the test password; their `sub`."""
        from imagepipe.core.users import add_user

        user, _ = add_user(self.cognito, self.pool_id, name, admin=admin, password=PASSWORD)
        self.subs[name] = user.sub
        return user.sub

    def tokens(self, name: str) -> dict[str, str]:
        """A fresh sign-in: AccessToken, IdToken, RefreshToken."""
        return self.cognito.initiate_auth(
            ClientId=self.client_id, AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": name, "PASSWORD": PASSWORD},
        )["AuthenticationResult"]

    def token(self, name: str) -> str:
        return self.tokens(name)["AccessToken"]


@pytest.fixture
def users(resources: Resources, clients: Clients) -> Users:
    """The pool with an admin (`tester`) and two people, alice and bob."""
    people = Users(clients.cognito, resources.user_pool_id, resources.user_pool_client_id)
    people.add(ADMIN, admin=True)
    people.add("alice")
    people.add("bob")
    return people


def signed_in(app: Any, token: str | None) -> Any:
    """A test client of the app that sends this access token (None: anonymous)."""
    client = app.test_client()
    if token is not None:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


@pytest.fixture
def app(settings: Settings, clients: Clients, store: ResultStore, resources: Resources) -> Any:
    from imagepipe.app import create_app

    app = create_app(settings, clients, store)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Any, users: Users) -> Any:
    """The front as an admin, who may see everything: the API tests that are not about who."""
    return signed_in(app, users.token(ADMIN))


@pytest.fixture
def client_for(clients: Clients, store: ResultStore, users: Users) -> Callable[..., Any]:
    """A signed-in test client of an app built with these settings."""
    from imagepipe.app import create_app

    def make(settings: Settings, user: str | None = ADMIN) -> Any:
        app = create_app(settings, clients, store)
        app.config["TESTING"] = True
        return signed_in(app, users.token(user) if user else None)
    return make


@pytest.fixture(scope="session")
def classifier(model_cache: Path) -> Any:
    """The real EfficientNet-Lite0, built once per run."""
    from processor.model import load_classifier

    return load_classifier("efficientnet_lite0", cache_dir=model_cache / "models")


@pytest.fixture
def make_worker() -> Iterator[Callable[..., Any]]:
    """Builds processor workers as Worker(...) does, and closes each one after the test."""
    from processor.worker import Worker

    made: list[Worker] = []

    def make(*args: Any, **kwargs: Any) -> Worker:
        made.append(Worker(*args, **kwargs))
        return made[-1]

    yield make
    for worker in made:
        worker.close()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10.0,
             every: float = 0.02) -> Any:
    """Poll `condition` until it is true and return it; fail the test if `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(every)
    return result


def _encode(array: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


@dataclass(frozen=True)
class Photos:
    """Real photos from scikit-image, as files a person would upload."""

    cat_jpeg: bytes
    coffee_jpeg: bytes
    rocket_jpeg: bytes
    cat_png: bytes


@pytest.fixture(scope="session")
def photos() -> Photos:
    from skimage import data

    return Photos(
        cat_jpeg=_encode(data.chelsea(), "JPEG", quality=92),
        coffee_jpeg=_encode(data.coffee(), "JPEG", quality=92),
        rocket_jpeg=_encode(data.rocket(), "JPEG", quality=92),
        cat_png=_encode(data.chelsea(), "PNG"),
    )


def count_results(dynamodb: Any, table: str) -> int:
    """Result records in the table, every page, leaving out the processors' heartbeat items."""
    from imagepipe.core.records import FEED_ALL

    count, start = 0, None
    while True:
        request: dict[str, Any] = {
            "TableName": table, "Select": "COUNT", "FilterExpression": "begins_with(feed, :all)",
            "ExpressionAttributeValues": {":all": {"S": f"{FEED_ALL}#"}},
        }
        if start:
            request["ExclusiveStartKey"] = start
        page = dynamodb.scan(**request)
        count += page["Count"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return count


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def s3_event(bucket: str, *keys: str, event_name: str = "ObjectCreated:Put",
             event_time: str | None = None) -> str:
    """An S3 notification body for these keys, encoded the way S3 encodes them.

    A new event, as S3 would send now (unless `event_time` says when): outcomes of one image
    are ordered by event time.
    """
    return notification_body(event_record(S3Object(bucket, key, 1024), event_name=event_name,
                                          event_time=event_time)
                             for key in keys)


@pytest.fixture
def make_event() -> Any:
    return s3_event


def env_with(**values: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(values)
    return env


@dataclass
class Reply:
    """What the local web server answers on one path."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before answering; bounded, so a test's server always stops.
    delay: float = 0.0
    # Send the body without Content-Length, in chunks, as a streaming server would.
    chunked: bool = False


class LocalWebServer:
    """An HTTP server on a free loopback port that answers what a test puts in `routes`."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply | Callable[[], Reply]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        # The bodies of POSTs, in order (a webhook receiver's deliveries).
        self.bodies: list[bytes] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests.append((self.command, self.path, dict(self.headers)))
                route = server.routes.get(self.path.split("?", 1)[0], Reply(404, b"not found"))
                reply = route() if callable(route) else route
                if reply.delay:
                    time.sleep(min(reply.delay, 10))
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        for start in range(0, len(reply.body), 65536):
                            chunk = reply.body[start:start + 65536]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.write(b"0\r\n\r\n")
                    else:
                        self.send_header("Content-Length", str(len(reply.body)))
                        self.end_headers()
                        self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as an import refusing a body does

            def do_POST(self) -> None:
                server.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> LocalWebServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def web_server() -> Iterator[LocalWebServer]:
    with LocalWebServer() as server:
        yield server


@pytest.fixture(scope="session")
def image_server(photos: Photos) -> Iterator[LocalWebServer]:
    """The site the real stack's URL imports may reach (it is on its allow-list)."""
    with LocalWebServer() as server:
        server.routes["/photos/chelsea.jpg"] = Reply(
            body=photos.cat_jpeg, headers={"Content-Type": "image/jpeg"})
        server.routes["/go/cat"] = Reply(302, headers={"Location": "/photos/chelsea.jpg"})
        yield server


@contextmanager
def running_stack(settings: Settings) -> Iterator[Any]:
    """The local stack on free ports; on the way out, a clean first-SIGTERM exit is required."""
    from imagepipe.local.stack import free_port, start_local_stack

    # Each test process (pytest -n) runs stacks of its own: none may wait for a default port.
    settings = dataclasses.replace(settings, events_port=free_port())
    stack = start_local_stack(settings, endpoint_port=free_port())
    try:
        yield stack
    finally:
        processor = stack.processor
        assert processor is not None
        processor.send_signal(signal.SIGTERM)
        code = processor.wait(60)
        stack.stop()
        # First SIGTERM: the batch in hand is finished and the daemon exits cleanly.
        assert code == 0


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """The CLI reads the same resources the fixtures made."""
    monkeypatch.setenv("IMAGEPIPE_BUCKET", settings.bucket)
    monkeypatch.setenv("IMAGEPIPE_QUEUE", settings.queue)
    monkeypatch.setenv("IMAGEPIPE_DEAD_LETTER_QUEUE", settings.dead_letter_queue)
    monkeypatch.setenv("IMAGEPIPE_TABLE", settings.table)
    monkeypatch.setenv("IMAGEPIPE_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def stack(model_cache: Path, image_server: LocalWebServer) -> Iterator[Any]:
    """moto's server, the processor and the front as real processes, like `make run`."""
    from imagepipe.local.stack import free_port

    settings = Settings(
        bucket="e2e-images",
        queue="e2e-events",
        dead_letter_queue="e2e-events-dlq",
        table="e2e-results",
        port=free_port(),
        poll_seconds=1,
        sync_wait_seconds=60,
        cache_dir=model_cache,
        import_allow_hosts=f"127.0.0.1:{image_server.port}",
        # As `make run` serves them, on ports of their own (free ones here).
        metrics_front_port=free_port(),
        metrics_processor_port=free_port(),
    )
    with running_stack(settings) as stack:
        yield stack


@pytest.fixture(scope="session")
def front(stack: Any) -> str:
    return f"http://{stack.settings.host}:{stack.settings.port}"


# ---------------------------------------------------------------- the CloudFormation template
TEMPLATE = Path(__file__).resolve().parents[1] / "infra" / "cloudformation" / "imagepipe.yaml"
DLAMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
)
# moto's parameter store holds the Amazon Linux parameters but not the Deep Learning AMI's, and
# refuses names under /aws/: the tests point that default at a parameter of their own.
TEST_GPU_AMI_PARAMETER = "/imagepipe-test/gpu-ami"


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template parsed with cfn-lint's loader, which understands !Ref, !Sub, !GetAtt..."""
    return copy.deepcopy(_parsed_template(path, path.stat().st_mtime))


@functools.lru_cache(maxsize=4)
def _parsed_template(path: Path, mtime: float) -> dict[str, Any]:
    from cfnlint.decode import decode_str

    template, problems = decode_str(path.read_text())
    assert not problems, problems
    return template


# The stack's output naming the URL of each queue the bucket notifies.
QUEUE_OUTPUTS = {"Queue": "QueueUrl", "InteractiveQueue": "InteractiveQueueUrl"}


def declared_notification(sqs: Any, outputs: dict[str, str]) -> dict[str, Any]:
    """The bucket notification the template declares, for the deployed queues: moto's
    CloudFormation drops it, so the tests put it by hand."""
    declared = load_template()["Resources"]["Bucket"]["Properties"]["NotificationConfiguration"]
    configurations = []
    for config in declared["QueueConfigurations"]:
        (queue, _), = [config["Queue"]["Fn::GetAtt"]]
        arn = sqs.get_queue_attributes(QueueUrl=outputs[QUEUE_OUTPUTS[queue]],
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        entry: dict[str, Any] = {"QueueArn": arn, "Events": [config["Event"]]}
        if "Filter" in config:
            entry["Filter"] = {"Key": {"FilterRules": config["Filter"]["S3Key"]["Rules"]}}
        configurations.append(entry)
    return {"QueueConfigurations": configurations}


# moto's CloudFormation skips resource types it lacks (Cognito, WAFv2), and an output that
# refers to one by Ref is left out; but an output's Fn::GetAtt of one fails the whole stack.
MOTO_UNSUPPORTED_OUTPUT = ("Value: !GetAtt WebAcl.Arn", "Value: !Ref WebAcl")


def moto_template_body(path: Path = TEMPLATE) -> str:
    """The template as moto can deploy it: the GPU AMI's parameter name and the WAF output."""
    body = path.read_text()
    assert DLAMI_PARAMETER in body
    getatt, ref = MOTO_UNSUPPORTED_OUTPUT
    assert body.count(getatt) == 1
    return body.replace(DLAMI_PARAMETER, TEST_GPU_AMI_PARAMETER).replace(getatt, ref)


def put_test_gpu_ami(session: Any = None) -> str:
    """Register an AMI moto knows under TEST_GPU_AMI_PARAMETER; return its ID."""
    import boto3

    ssm = (session or boto3.session.Session(region_name="us-east-1")).client("ssm")
    # Amazon Linux's parameter is built into moto and quick to read (listing images is not).
    image_id = ssm.get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    )["Parameter"]["Value"]
    ssm.put_parameter(Name=TEST_GPU_AMI_PARAMETER, Value=image_id, Type="String",
                      DataType="aws:ec2:image")
    return image_id


# ---------------------------------------------------------------- IAM enforced by moto
# Where moto's enforcement differs from AWS's, the test follows AWS: moto checks a DynamoDB
# call against the resource "*" (so a policy scoped to a table ARN allows nothing), names a
# transaction's action TransactWriteItems and SQS batches DeleteMessageBatch..., none of which
# IAM has: AWS checks each transaction item's own action on its table, and a batch by the
# action of one message.
_TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
_SQS_BATCH_ACTIONS = {"DeleteMessageBatch": "DeleteMessage", "SendMessageBatch": "SendMessage",
                      "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}


def dynamodb_grants_needed(action: str, body: dict[str, Any], region: str,
                           account: str) -> list[tuple[str, str]]:
    """The (action, resource ARN) pairs AWS authorises a DynamoDB request by."""
    def arn(table: str, index: str | None = None) -> str:
        base = f"arn:aws:dynamodb:{region}:{account}:table/{table}"
        return f"{base}/index/{index}" if index else base

    if action in ("BatchGetItem", "BatchWriteItem"):
        return [(action, arn(table)) for table in body.get("RequestItems", {})]
    if action in ("TransactWriteItems", "TransactGetItems"):
        return [(_TRANSACT_ACTIONS[kind], arn(item[kind]["TableName"]))
                for item in body.get("TransactItems", []) for kind in item]
    if "TableName" in body:
        return [(action, arn(body["TableName"], body.get("IndexName")))]
    return [(action, "*")]


def _authorize_as(handler: Any, original: Callable[..., None], action: str, resource: str
                  ) -> None:
    """moto's check of one action on one resource."""
    # moto names the action it checks by _get_action(); the handler calls it again to
    # dispatch, so the override lasts only for the check.
    handler._get_action = lambda: action
    try:
        original(handler, resource)
    finally:
        handler.__dict__.pop("_get_action", None)


@contextmanager
def moto_authorizes_as_aws() -> Iterator[None]:
    """Make moto authorise DynamoDB, SQS and SNS calls by the actions and resources AWS uses,
    and let form POSTs to S3 through (moto cannot authorise them)."""
    from moto.dynamodb.responses import DynamoHandler
    from moto.s3.responses import S3Response
    from moto.sns.responses import SNSResponse
    from moto.sqs.responses import SQSResponse

    dynamodb_check = DynamoHandler._authenticate_and_authorize_normal_action
    sqs_check = SQSResponse._authenticate_and_authorize_normal_action
    sns_check = SNSResponse._authenticate_and_authorize_normal_action

    def dynamodb(self: Any, resource: str = "*") -> None:
        # moto's DynamoDB handler holds the request parsed already (a dict), or its text.
        body = self.body if isinstance(self.body, dict) else json.loads(self.body or "{}")
        for action, arn in dynamodb_grants_needed(self._get_action(), body, self.region,
                                                  self.current_account):
            _authorize_as(self, dynamodb_check, action, arn)

    def sqs(self: Any, resource: str = "*") -> None:
        action = self._get_action()
        if action == "CreateQueue":
            # The queue to be: AWS authorises its creation on its ARN, moto on "*".
            resource = (f"arn:aws:sqs:{self.region}:{self.current_account}:"
                        f"{self._get_param('QueueName')}")
        _authorize_as(self, sqs_check, _SQS_BATCH_ACTIONS.get(action, action), resource)

    def s3(self: Any, *args: Any, **kwargs: Any) -> None:
        # A form POST (the front stores its own images so) carries no Authorization header:
        # AWS authorises it by the signer of its policy, which moto can neither check nor
        # enforce; every other S3 call is checked as before.
        if self.method == "POST" and "Authorization" not in self.headers:
            return
        s3_check(self, *args, **kwargs)

    def sns(self: Any, resource: str = "*") -> None:
        # moto checks every SNS call on "*"; AWS on the topic, or the subscription.
        resource = (self._get_param("SubscriptionArn") or self._get_param("TopicArn")
                    or resource)
        sns_check(self, resource)

    s3_check = S3Response._authenticate_and_authorize_s3_action
    DynamoHandler._authenticate_and_authorize_normal_action = dynamodb
    SQSResponse._authenticate_and_authorize_normal_action = sqs
    SNSResponse._authenticate_and_authorize_normal_action = sns
    S3Response._authenticate_and_authorize_s3_action = s3
    try:
        yield
    finally:
        DynamoHandler._authenticate_and_authorize_normal_action = dynamodb_check
        SQSResponse._authenticate_and_authorize_normal_action = sqs_check
        S3Response._authenticate_and_authorize_s3_action = s3_check
        SNSResponse._authenticate_and_authorize_normal_action = sns_check


@contextmanager
def iam_enforced() -> Iterator[None]:
    """From here on moto checks every signed call against the caller's IAM policies."""
    from moto.core.authorization import enable_iam_authentication

    with enable_iam_authentication(), moto_authorizes_as_aws():
        yield


def assume_role_session(session: Any, role_name: str, region: str = "us-east-1") -> Any:
    """A boto3 session with credentials of this role, assumed through STS (before enforcement).

    moto's CloudFormation stores a role's inline policies as Python reprs, which its IAM
    enforcement cannot read: they are put back, unchanged, as JSON first.
    """
    import ast

    import boto3

    iam = session.client("iam")
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
        if isinstance(document, str):
            document = ast.literal_eval(document)
        iam.put_role_policy(RoleName=role_name, PolicyName=name,
                            PolicyDocument=json.dumps(document))
    role_arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
    credentials = session.client("sts").assume_role(
        RoleArn=role_arn, RoleSessionName=f"test-{role_name}"[:64])["Credentials"]
    return boto3.session.Session(
        region_name=region, aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"])
