"""The stack's roles, proven by running the pipeline under them with moto enforcing IAM.

The template is deployed on moto's CloudFormation; the front and the processor then run end to
end with credentials of the deployed `WebRole` and `ProcessorRole` (assumed through STS), and
moto checks every call against those roles' policies. Every call must be allowed; with any one
action taken out of a role, the run meets AccessDenied.

What moto cannot check, and what stands in for it here:
- Condition keys: moto evaluates none outside trust policies (no request context reaches
  them), so `dynamodb:LeadingKeys` on the front's counters and `cloudwatch:namespace` are not
  enforced. The front's DynamoDB updates are recorded and checked against the condition here,
  and the CloudWatch agent's namespace (the only metrics publisher) against the other.
- Presigned URLs: moto's enforcement cannot read query-string signatures (it fails on the
  missing Authorization header). AWS authorises a presigned request as its signer's own, so the
  test checks the URL is signed with the role's key and makes the same call signed by the role.
- Actions and resources: moto checks DynamoDB calls against "*", a transaction as one
  TransactWriteItems and an SQS batch as DeleteMessageBatch..., none of which IAM has;
  tests.conftest.moto_authorizes_as_aws makes it check the table or index ARN, each item's own
  action and a batch's single action, as AWS does.
- Signing in: InitiateAuth is unsigned on AWS and one of moto's public operations, so the web
  role needs (and has) no Cognito permission; the run signs in with the role's client.
- moto's CloudFormation drops the SNS subscription of the webhook queue: it is made by hand, as
  the template declares it. moto checks SNS calls on "*"; conftest makes it check the topic.
- S3 answers a missing object's HEAD with 403 to a caller without s3:ListBucket; moto answers
  404 either way, so that grant is kept on the template's word (see NOT_CALLED_BY_THE_CODE).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core.authorization import disable_iam_authentication

from imagepipe.app import close_events_queue, create_app, open_events_queue
from imagepipe.core.aws import Clients, make_clients
from imagepipe.core.heartbeats import recent_beats
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.quota import DAILY_QUOTA, DailyQuota
from imagepipe.core.records import ResultStore
from imagepipe.core.settings import Settings
from imagepipe.core.timestamps import format_utc
from imagepipe.core.users import add_user, ensure_user_pool
from imagepipe.core.webhooks import WebhookStore
from processor.heartbeat import Heartbeat
from processor.webhooks import WebhookDeliverer
from processor.worker import Worker
from tests.conftest import (
    PASSWORD,
    assume_role_session,
    declared_notification,
    iam_enforced,
    load_template,
    moto_template_body,
    put_test_gpu_ami,
    signed_in,
)
from tests.fakes import CountingClassifier, png
from uploader.uploads import UNSENT_MARGIN
from web.events import QueueFeed

pytestmark = pytest.mark.filterwarnings(
    "ignore:Tried to parse .* not supported by moto's CloudFormation")

STACK = "pipe"
REGION = "us-east-1"
ARTIFACT_BUCKET = "imagepipe-artifacts-test"
WHEEL_KEY = "pipe/0123abcd/imagepipe-0.1.0-py3-none-any.whl"
# What an instance also reads at boot (imagepipe deploy's layout): the release's hashed
# requirements, and the wheels they name in the stack's wheelhouse.
RELEASE_FILES = ("pipe/0123abcd/requirements.txt", "pipe/wheelhouse/numpy-2.0-py3-none-any.whl")
ROLES = ("ProcessorRole", "WebRole")
# Nothing listens on the discard port here: every webhook attempt of the run fails.
CLOSED_RECEIVER = "http://127.0.0.1:9/hook"

# Granted for calls outside this run: the sweep cannot take them away, and a run with all of
# them taken away still passes (test_what_the_code_never_calls_is_not_needed_by_it).
NOT_CALLED_BY_THE_CODE = {
    ("ProcessorRole", "logs:CreateLogStream"): "the CloudWatch agent ships the logs",
    ("ProcessorRole", "logs:PutLogEvents"): "the CloudWatch agent ships the logs",
    ("ProcessorRole", "logs:DescribeLogStreams"): "the CloudWatch agent ships the logs",
    ("WebRole", "logs:CreateLogStream"): "the CloudWatch agent ships the logs",
    ("WebRole", "logs:PutLogEvents"): "the CloudWatch agent ships the logs",
    ("WebRole", "logs:DescribeLogStreams"): "the CloudWatch agent ships the logs",
    ("ProcessorRole", "cloudwatch:PutMetricData"): "the CloudWatch agent publishes GPU metrics",
    # The drain path: moto has no CompleteLifecycleAction, so tests/test_processor_lifecycle.py
    # checks these calls against botocore's model instead; the user data finds the group.
    ("ProcessorRole", "autoscaling:CompleteLifecycleAction"):
        "the drain completes lifecycle hooks, which moto cannot answer",
    ("ProcessorRole", "autoscaling:RecordLifecycleActionHeartbeat"):
        "a long drain heartbeats its hook, which moto cannot answer",
    ("ProcessorRole", "autoscaling:DescribeAutoScalingInstances"):
        "the boot script finds the instance's group with the AWS CLI",
    # This run's delete is of an upload never sent, which has no search items; the template
    # test checks the front's store calls against the grant (test_infra_template).
    ("WebRole", "dynamodb:BatchWriteItem"):
        "deleting a labelled result removes its search-word items",
}
# The operations an action authorises, where their names differ.
OPERATIONS = {
    "sqs:DeleteMessage": {"DeleteMessageBatch", "DeleteMessage"},
    "sqs:ChangeMessageVisibility": {"ChangeMessageVisibilityBatch", "ChangeMessageVisibility"},
    "s3:GetObject": {"GetObject", "HeadObject"},
    "s3:ListBucket": {"ListBucket", "ListObjectsV2"},
    "dynamodb:PutItem": {"PutItem", "TransactWriteItems"},
    "dynamodb:UpdateItem": {"UpdateItem", "TransactWriteItems"},
}


@dataclass
class Deployed:
    """The stack on moto, with an operator's session and a session of each role."""

    admin: boto3.session.Session
    outputs: dict[str, str]
    physical: dict[str, str]
    roles: dict[str, boto3.session.Session]
    pool_id: str
    pool_client_id: str

    def settings(self, cache_dir: Path, **overrides: Any) -> Settings:
        """The settings the launch templates give the instances."""
        return dataclasses.replace(Settings(
            bucket=self.outputs["BucketName"], queue=self.outputs["QueueUrl"],
            dead_letter_queue=self.outputs["DeadLetterQueueUrl"], table=self.outputs["TableName"],
            interactive_queue=self.outputs["InteractiveQueueUrl"],
            interactive_dead_letter_queue=self.outputs["InteractiveDeadLetterQueueUrl"],
            region=REGION, poll_seconds=0, sync_wait_seconds=0, cache_dir=cache_dir,
            results_topic=self.outputs["ResultsTopicArn"],
            webhook_queue=self.physical["WebhookQueue"],
            # The run's webhook receiver is a closed port of this machine.
            callback_allow_hosts="127.0.0.1",
        ), **overrides)

    def policy(self, role: str) -> dict[str, Any]:
        """The role's one inline policy document, as the stack created it."""
        iam = self.admin.client("iam")
        name = self.physical[role]
        (policy_name,) = iam.list_role_policies(RoleName=name)["PolicyNames"]
        return json.loads(_as_json(iam.get_role_policy(RoleName=name,
                                                        PolicyName=policy_name)["PolicyDocument"]))

    def actions(self, role: str) -> list[str]:
        """Every action the role's policy grants, in the template's order."""
        found: list[str] = []
        for statement in self.policy(role)["Statement"]:
            for action in _listed(statement["Action"]):
                if action not in found:
                    found.append(action)
        return found


def _as_json(document: Any) -> str:
    return document if isinstance(document, str) else json.dumps(document)


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    """The template deployed, its missing pieces added by hand, and each role assumed."""
    with mock_aws():
        admin = boto3.session.Session(region_name=REGION, aws_access_key_id="testing",
                                      aws_secret_access_key="testing")
        put_test_gpu_ami(admin)
        cfn = admin.client("cloudformation")
        cfn.create_stack(
            StackName=STACK, TemplateBody=moto_template_body(), Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": "ArtifactBucket", "ParameterValue": ARTIFACT_BUCKET},
                        {"ParameterKey": "WheelKey", "ParameterValue": WHEEL_KEY}])
        outputs = {o["OutputKey"]: o["OutputValue"]
                   for o in cfn.describe_stacks(StackName=STACK)["Stacks"][0]["Outputs"]}
        physical = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                    for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
        # moto's CloudFormation drops the bucket notification: put what the template declares.
        admin.client("s3").put_bucket_notification_configuration(
            Bucket=outputs["BucketName"],
            NotificationConfiguration=declared_notification(admin.client("sqs"), outputs))
        # It drops the webhook queue's subscription to the results topic too.
        subscription = load_template()["Resources"]["WebhookSubscription"]["Properties"]
        webhook_arn = admin.client("sqs").get_queue_attributes(
            QueueUrl=physical["WebhookQueue"], AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"]
        admin.client("sns").subscribe(
            TopicArn=outputs["ResultsTopicArn"], Protocol=subscription["Protocol"],
            Endpoint=webhook_arn, Attributes={
                "RawMessageDelivery": str(subscription["RawMessageDelivery"]).lower()})
        # The wheel the instances boot from, in the operator's artifact bucket.
        admin.client("s3").create_bucket(Bucket=ARTIFACT_BUCKET)
        admin.client("s3").put_object(Bucket=ARTIFACT_BUCKET, Key=WHEEL_KEY, Body=b"wheel")
        for key in RELEASE_FILES:
            admin.client("s3").put_object(Bucket=ARTIFACT_BUCKET, Key=key, Body=b"release")
        # ...and the user pool, which moto's CloudFormation lacks.
        pool = ensure_user_pool(admin.client("cognito-idp"), Settings(
            bucket="-", queue="-", table=outputs["TableName"], region=REGION))
        roles = {role: assume_role_session(admin, physical[role], REGION) for role in ROLES}
        yield Deployed(admin, outputs, physical, roles, pool.pool_id, pool.client_id)



@contextlib.contextmanager
def _policy_without(stack: Deployed, role: str, removed: set[tuple[str, str]]
                    ) -> Iterator[None]:
    """The role's policy with these (Sid, action) grants taken out, while the context lasts."""
    iam = stack.admin.client("iam")
    name = stack.physical[role]
    (policy_name,) = iam.list_role_policies(RoleName=name)["PolicyNames"]
    original = stack.policy(role)
    reduced = json.loads(json.dumps(original))
    statements = []
    for statement in reduced["Statement"]:
        kept = [a for a in _listed(statement["Action"]) if (statement["Sid"], a) not in removed]
        if kept:
            statements.append({**statement, "Action": kept})
    reduced["Statement"] = statements
    with disable_iam_authentication():
        iam.put_role_policy(RoleName=name, PolicyName=policy_name,
                            PolicyDocument=json.dumps(reduced))
    try:
        yield
    finally:
        with disable_iam_authentication():
            iam.put_role_policy(RoleName=name, PolicyName=policy_name,
                                PolicyDocument=json.dumps(original))


# ---------------------------------------------------------------- one run, watched
@dataclass
class Run:
    """What a run under a role met: calls refused, outcomes missed, DynamoDB writes sent."""

    denied: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    writes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.missed.append(what)
        return ok

    def watch(self, clients: Clients, role: str) -> Clients:
        """Record the clients' refused calls (some are only logged) and DynamoDB requests."""
        def after_call(http_response: Any, model: Any, **_: Any) -> None:
            if http_response.status_code == 403:
                self.denied.append(f"{model.service_model.endpoint_prefix}:{model.name}")

        def before_call(params: Any, model: Any, **_: Any) -> None:
            self.writes.append((role, model.name, params))

        for client in (clients.s3, clients.sqs, clients.dynamodb, clients.cognito, clients.sns):
            client.meta.events.register("after-call", after_call)
        clients.dynamodb.meta.events.register("provide-client-params.dynamodb", before_call)
        return clients

    @property
    def clean(self) -> bool:
        return not self.denied and not self.missed


class Stop(Exception):
    """A step of the run failed: the rest depends on it."""


def _unique_png(seed: int, width: int = 64) -> bytes:
    """A PNG no other run has sent: the processor's dedupe must not reuse another run's."""
    rng = random.Random(seed)
    return png((width, 48), colour=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))


def _role_clients(stack: Deployed, role: str, settings: Settings) -> Clients:
    return make_clients(settings, stack.roles[role], max_attempts=1)


def _signed_by(url_or_credential: str, stack: Deployed, role: str) -> bool:
    """Whether a presigned URL or POST credential carries the role's access key."""
    credential = url_or_credential
    if "?" in url_or_credential:
        credential = parse_qs(urlsplit(url_or_credential).query)["X-Amz-Credential"][0]
    return credential.split("/")[0] == stack.roles[role].get_credentials().access_key


@dataclass
class FrontRun:
    """The images the front took in, and the person who sent them."""

    owner: str
    token: str
    uploaded: dict[str, bytes]


def run_front_uploads(stack: Deployed, settings: Settings, run: Run, seed: int) -> FrontRun:
    """Sign in, presign and send uploads, one never sent then reclaimed, and a sync upload."""
    clients = run.watch(_role_clients(stack, "WebRole", settings), "WebRole")
    name = f"person-{seed}"
    with disable_iam_authentication():
        user, _ = add_user(stack.admin.client("cognito-idp"), stack.pool_id, name,
                           password=PASSWORD)
    # Signing in needs no IAM permission (InitiateAuth is unsigned): the role has none for
    # Cognito, and moto lets InitiateAuth through its enforcement as a public operation.
    token = clients.cognito.initiate_auth(
        ClientId=stack.pool_client_id, AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": name, "PASSWORD": PASSWORD})["AuthenticationResult"][
            "AccessToken"]
    app = create_app(settings, clients)
    app.config["TESTING"] = True
    front = signed_in(app, token)
    result = FrontRun(user.sub, token, {})

    def presign(data: bytes, filename: str) -> dict[str, Any]:
        answer = front.post("/api/uploads", json={
            "filename": filename, "content_type": "image/png", "size": len(data)})
        if not run.check(answer.status_code == 201, f"presign {filename}: {answer.get_json()}"):
            raise Stop
        return answer.get_json()

    def send(body: dict[str, Any], data: bytes) -> None:
        # The browser's POST is authorised as the role's own PutObject (see the module's note).
        fields = body["upload"]["fields"]
        run.check(_signed_by(fields["x-amz-credential"], stack, "WebRole"),
                  "POST signed by the role")
        clients.s3.put_object(Bucket=settings.bucket, Key=fields["key"], Body=data,
                              ContentType="image/png")
        result.uploaded[body["image_id"]] = data

    try:
        # Boot: the instance fetches its release and the wheels it installs (the user data's
        # `aws s3 cp`s).
        for key in (WHEEL_KEY, *RELEASE_FILES):
            clients.s3.get_object(Bucket=ARTIFACT_BUCKET, Key=key)
        # A webhook for every result of this person, to a receiver that never answers.
        run.check(front.post("/api/webhook/secret").status_code == 201, "webhook secret")
        run.check(front.put("/api/webhook", json={"url": CLOSED_RECEIVER}).status_code == 200,
                  "webhook URL")
        first = _unique_png(seed)
        send(presign(first, "first.png"), first)
        never = presign(first, "never sent.png")
        sync = _unique_png(seed, width=72)
        answer = front.post("/api/image_recognition",
                            data={"file": (io.BytesIO(sync), "sync.png")},
                            content_type="multipart/form-data")
        if not run.check(answer.status_code == 202, f"sync upload: {answer.get_json()}"):
            raise Stop
        result.uploaded[answer.get_json()["image_id"]] = sync
        # At the quota of 3, the upload that never came is failed and its unit given back.
        _expire(stack, settings, app, clients, never["image_id"])
        last = _unique_png(seed, width=80)
        send(presign(last, "last.png"), last)
        with disable_iam_authentication():
            refunded = ResultStore(stack.admin.client("dynamodb"), settings.table).get(
                never["image_id"])
        run.check(refunded is not None and refunded.status == "failed", "unsent reclaimed")
        # Its owner deletes it: the object (none here, which S3 does not mind) and the record.
        gone = front.delete(f"/api/results/{never['image_id']}")
        run.check(gone.status_code == 204, f"delete: {gone.status_code} {gone.get_data()!r}")
    except Stop:
        pass
    except ClientError as exc:
        run.check(False, f"front: {exc}")
    return result


def _expire(stack: Deployed, settings: Settings, app: Any, clients: Clients,
            image_id: str) -> None:
    """Make a presigned upload look expired: the front's quota clock moves on, or, when that
    would cross midnight, the record is dated back (a reclaim looks at today's uploads only)."""
    gap = timedelta(seconds=settings.presign_expires_seconds + 1) + UNSENT_MARGIN
    now = datetime.now(timezone.utc)
    if (now + gap).date() == now.date():
        app.extensions[DAILY_QUOTA] = DailyQuota(clients.dynamodb, settings.table,
                                                 settings.daily_quota,
                                                 clock=lambda: datetime.now(timezone.utc) + gap)
        return
    with disable_iam_authentication():
        stack.admin.client("dynamodb").update_item(
            TableName=settings.table, Key={"image_id": {"S": image_id}},
            UpdateExpression="SET created_at = :t",
            ExpressionAttributeValues={":t": {"S": format_utc(now - gap)}})


def run_processor(stack: Deployed, settings: Settings, run: Run, seed: int,
                  front: FrontRun) -> None:
    """Boot, then process bulk drops, copies (in one batch and later), uploads, a give-up."""
    clients = run.watch(_role_clients(stack, "ProcessorRole", settings), "ProcessorRole")
    admin_s3 = stack.admin.client("s3")
    # Boot: the instance fetches its release and the wheels it installs (the user data's
    # `aws s3 cp`s).
    for key in (WHEEL_KEY, *RELEASE_FILES):
        try:
            clients.s3.get_object(Bucket=ARTIFACT_BUCKET, Key=key)
        except Exception as exc:
            run.check(False, f"{key}: {exc}")

    # A bulk drop by the operator: two copies of one image and one other, for the owner.
    same, other = _unique_png(seed + 1, width=90), _unique_png(seed + 2, width=100)
    drop = {f"users/{front.owner}/bulk/{seed}/a.png": same,
            f"users/{front.owner}/bulk/{seed}/a copy.png": same,
            f"users/{front.owner}/bulk/{seed}/b.png": other}
    with disable_iam_authentication():
        for key, data in drop.items():
            admin_s3.put_object(Bucket=settings.bucket, Key=key, Body=data)
    classifier = CountingClassifier()
    heartbeat = Heartbeat(clients.dynamodb, settings.table, model="fake")
    # Told to stop with its first batch in hand, a processor hands the batch back at once.
    stopper = _StopOnBeat(clients.dynamodb, settings.table, model="fake")
    with Worker(settings, clients, classifier, heartbeat=stopper) as stopping:
        stopper.worker = stopping
        stopping.run(max_batches=1)
    run.check(classifier.images == 0, "a stopping processor classifies nothing")
    with Worker(settings, clients, classifier, heartbeat=heartbeat) as worker:
        _drain(worker)
    store = _admin_store(stack, settings)
    with disable_iam_authentication():
        records = {key: store.get(image_id_for_object(settings.bucket, key)) for key in drop}
        uploads = {image_id: store.get(image_id) for image_id in front.uploaded}
        beats = recent_beats(stack.admin.client("dynamodb"), settings.table, 600)
    run.check(all(r is not None and r.status == "done" for r in records.values()),
              f"bulk drop done: {records}")
    run.check(all(r is not None and r.status == "done" for r in uploads.values()),
              f"uploads done: {uploads}")
    run.check(sum(1 for r in records.values() if r and r.reused) == 1, "a copy in the batch")
    run.check(any(b.model == "fake" for b in beats), "heartbeat written")

    # Later, one more copy (found through the by_content index) and an image the model
    # fails on, received for the last time: the processor gives up and says why.
    later = {f"users/{front.owner}/bulk/{seed}/a again.png": same,
             f"users/{front.owner}/bulk/{seed}/cursed.png": _unique_png(seed + 3, 110)}
    with disable_iam_authentication():
        for key, data in later.items():
            admin_s3.put_object(Bucket=settings.bucket, Key=key, Body=data)
    last_try = dataclasses.replace(settings, max_receives=1)
    with Worker(last_try, clients, CountingClassifier(fail=True)) as worker:
        _drain(worker)
    with disable_iam_authentication():
        again, cursed = (store.get(image_id_for_object(settings.bucket, key)) for key in later)
    run.check(again is not None and again.status == "done" and again.reused,
              f"a later copy reused: {again}")
    run.check(cursed is not None and cursed.error_code == "retries_exhausted",
              f"given up: {cursed}")


def run_deliverer(stack: Deployed, settings: Settings, run: Run, front: FrontRun) -> None:
    """The webhook deliverer on the results' events: each attempt fails, and is put off."""
    clients = run.watch(_role_clients(stack, "ProcessorRole", settings), "ProcessorRole")
    deliverer = WebhookDeliverer(settings, clients.sqs,
                                 WebhookStore(clients.dynamodb, settings.table),
                                 settings.webhook_queue)
    # And an event of an image nobody owns, which has no webhook: it is dropped (deleted).
    with disable_iam_authentication():
        stack.admin.client("sqs").send_message(QueueUrl=settings.webhook_queue, MessageBody=(
            json.dumps({"event_id": "nobodys", "type": "result.done", "image_id": "A" * 22,
                        "owner": None})))
    # Earlier runs' events come back too, after their backoff: receive until all are seen.
    handled = deliverer.run(max_receives=10)
    store = _admin_store(stack, settings)
    with disable_iam_authentication():
        attempted = [store.get(image_id) for image_id in front.uploaded]
    run.check(handled > 0 and any(r is not None and r.webhook is not None
                                  and r.webhook.attempts >= 1 for r in attempted),
              f"webhooks attempted: {handled}, {attempted}")


def open_events(stack: Deployed, settings: Settings, run: Run) -> tuple[Clients, str, str]:
    """The events server's start: its own queue on the topic, under the web role."""
    clients = run.watch(_role_clients(stack, "WebRole", settings), "WebRole")
    try:
        url, subscription = open_events_queue(clients, settings)
    except ClientError as exc:
        run.check(False, f"events queue: {exc}")
        raise Stop from exc
    return clients, url, subscription


def run_events(stack: Deployed, settings: Settings, run: Run, opened: tuple[Clients, str, str]
               ) -> None:
    """The events server reads the results' events, then removes its queue at stop."""
    clients, url, subscription = opened
    events: list[dict[str, Any]] = []
    QueueFeed(clients.sqs, url, events.append, wait_seconds=0).poll_once()
    run.check(any(e.get("type") == "result.done" for e in events), f"live events: {events}")
    close_events_queue(clients, url, subscription)
    with disable_iam_authentication():
        left = stack.admin.client("sqs").list_queues(QueueNamePrefix=f"{STACK}-results-live-")
    run.check(url not in left.get("QueueUrls", []), "the events queue removed at stop")


class _StopOnBeat(Heartbeat):
    """A heartbeat that also stops its worker, as a SIGTERM arriving mid-batch would."""

    worker: Worker | None = None

    def beat(self, batches: int, images: int) -> bool:
        written = super().beat(batches, images)
        if self.worker is not None:
            self.worker.stop()
        return written


def _drain(worker: Worker) -> None:
    """Run batches until one finds nothing (a refused receive also ends it)."""
    for _ in range(6):
        report = worker.run(max_batches=1)
        if report.received == 0:
            return


def _admin_store(stack: Deployed, settings: Settings) -> ResultStore:
    return ResultStore(stack.admin.client("dynamodb"), settings.table)


def run_front_reads(stack: Deployed, settings: Settings, run: Run, front: FrontRun) -> None:
    """Results by ID, the owner's listing, a batch, and the image link."""
    clients = run.watch(_role_clients(stack, "WebRole", settings), "WebRole")
    app = create_app(settings, clients)
    app.config["TESTING"] = True
    front_client = signed_in(app, front.token)
    ready = front_client.get("/readyz")
    run.check(ready.status_code == 200, f"readiness: {ready.get_json()}")
    ids = list(front.uploaded)
    for image_id in ids:
        answer = front_client.get(f"/api/results/{image_id}")
        run.check(answer.status_code == 200 and answer.get_json()["status"] == "done",
                  f"result {image_id}: {answer.get_json()}")
    listed = front_client.get("/api/results", query_string={"limit": 50})
    run.check(listed.status_code == 200 and set(ids) <= {
        r["image_id"] for r in (listed.get_json() or {}).get("results", [])},
        f"listing: {listed.get_json()}")
    batch = front_client.post("/api/results/batch", json={"ids": ids})
    run.check(batch.status_code == 200 and [r.get("status") for r in batch.get_json()[
        "results"]] == ["done"] * len(ids), f"batch: {batch.get_json()}")
    link = front_client.get(f"/api/results/{ids[0]}/image")
    if run.check(link.status_code == 302, f"image link: {link.get_json()}"):
        url = link.headers["Location"]
        run.check(_signed_by(url, stack, "WebRole"), "GET signed by the role")
        # The presigned GET is authorised as the role's own GetObject of that object.
        parts = urlsplit(url)
        key = parts.path.split("/", 2)[2] if parts.netloc.startswith("s3.") else \
            parts.path.lstrip("/")
        try:
            body = clients.s3.get_object(Bucket=settings.bucket, Key=unquote(key))["Body"].read()
            run.check(body == front.uploaded[ids[0]], "the image served")
        except Exception as exc:
            run.check(False, f"image GET: {exc}")


_seeds = iter(range(1000, 100_000, 10))


def run_pipeline(stack: Deployed, cache_dir: Path) -> Run:
    """The front and the processor end to end, each under its role, with IAM enforced."""
    settings = stack.settings(cache_dir, auth=True, user_pool_id=stack.pool_id,
                              user_pool_client_id=stack.pool_client_id, daily_quota=3)
    run = Run()
    seed = next(_seeds)
    with iam_enforced():
        front = run_front_uploads(stack, settings, run, seed)
        try:
            opened = open_events(stack, settings, run)
        except Stop:
            opened = None
        if front.uploaded:
            run_processor(stack, settings, run, seed, front)
            run_deliverer(stack, settings, run, front)
            run_front_reads(stack, settings, run, front)
            if opened is not None:
                run_events(stack, settings, run, opened)
    return run


# ---------------------------------------------------------------- the tests
def _statements(role: str) -> list[tuple[str, str]]:
    """(Sid, action) for every action of the role's policy in the template."""
    (policy,) = load_template()["Resources"][role]["Properties"]["Policies"]
    return [(statement["Sid"], action) for statement in policy["PolicyDocument"]["Statement"]
            for action in _listed(statement["Action"])]


SWEEP = [pytest.param(role, sid, action, id=f"{role}-{sid}-{action}")
         for role in ROLES for sid, action in _statements(role)
         if (role, action) not in NOT_CALLED_BY_THE_CODE]


def test_the_pipeline_runs_under_the_stacks_roles(deployed: Deployed, model_cache: Path
                                                  ) -> None:
    run = run_pipeline(deployed, model_cache)

    assert run.denied == []
    assert run.missed == []


def test_the_fronts_updates_keep_to_the_quota_counters(deployed: Deployed, model_cache: Path
                                                       ) -> None:
    # moto does not evaluate dynamodb:LeadingKeys: check the keys the front sent against the
    # condition the stack puts on its UpdateItem, as AWS would.
    (conditioned,) = [s for s in deployed.policy("WebRole")["Statement"]
                      if "dynamodb:UpdateItem" in _listed(s["Action"])]
    patterns = _listed(conditioned["Condition"]["ForAllValues:StringLike"][
        "dynamodb:LeadingKeys"])
    run = run_pipeline(deployed, model_cache)
    assert run.clean, (run.denied, run.missed)

    updated = []
    for role, operation, params in run.writes:
        if role != "WebRole":
            continue
        if operation == "UpdateItem":
            updated.append(params["Key"]["image_id"]["S"])
        elif operation == "TransactWriteItems":
            updated += [item["Update"]["Key"]["image_id"]["S"]
                        for item in params["TransactItems"] if "Update" in item]
    assert len(updated) >= 5  # four counted uploads and one given back
    assert all(any(fnmatchcase(key, p) for p in patterns) for key in updated), updated



def test_the_agents_metrics_keep_to_the_namespace_the_role_allows(deployed: Deployed) -> None:
    # moto does not evaluate cloudwatch:namespace; the only publisher is the CloudWatch agent
    # (the Python code publishes no metrics), so its namespace must be the condition's.
    (publish,) = [s for s in deployed.policy("ProcessorRole")["Statement"]
                  if "cloudwatch:PutMetricData" in _listed(s["Action"])]
    allowed = publish["Condition"]["StringEquals"]["cloudwatch:namespace"]
    version = deployed.admin.client("ec2").describe_launch_template_versions(
        LaunchTemplateId=deployed.physical["ProcessorLaunchTemplate"])["LaunchTemplateVersions"][-1]
    script = base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()
    agent = json.loads(re.search(r"<<'AGENT'\n(.*?)\nAGENT\n", script, re.S).group(1))

    assert agent["metrics"]["namespace"] == allowed == f"imagepipe/{STACK}"

@pytest.mark.parametrize(("role", "sid", "action"), SWEEP)
def test_each_action_is_needed(deployed: Deployed, model_cache: Path, role: str, sid: str,
                               action: str) -> None:
    with _policy_without(deployed, role, {(sid, action)}):
        run = run_pipeline(deployed, model_cache)

    operations = OPERATIONS.get(action, {action.split(":", 1)[1]})
    assert any(denied.split(":", 1)[1] in operations for denied in run.denied), run


def test_what_the_code_never_calls_is_not_needed_by_it(deployed: Deployed, model_cache: Path
                                                       ) -> None:
    for role, action in NOT_CALLED_BY_THE_CODE:
        assert action in deployed.actions(role), (role, action)
    with contextlib.ExitStack() as reduced:
        for role in ROLES:
            reduced.enter_context(_policy_without(deployed, role, {
                (sid, action) for sid, action in _statements(role)
                if (role, action) in NOT_CALLED_BY_THE_CODE}))
        run = run_pipeline(deployed, model_cache)

    assert run.clean, (run.denied, run.missed)
