"""The template deployed in moto's CloudFormation: the resources it creates, then the pipeline.

moto creates the VPC, subnets, security groups, queues, bucket (with its encryption), table,
log groups, roles with their inline policies, launch templates, Auto Scaling groups and the load
balancer. It drops bucket notifications, CORS, public access blocks and policies, queue
policies, scaling policies, alarms and metric filters, the Cognito user pool, its client and
group, and the WAF web ACL and its association (moto's CloudFormation has no Cognito or WAFv2
resources), and it does not apply point-in-time recovery: tests/test_infra_template.py checks
those on the template itself.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto import mock_aws

from imagepipe.app import create_app
from imagepipe.core.aws import make_clients
from imagepipe.core.ids import is_image_id
from imagepipe.core.provision import table_definition
from imagepipe.core.settings import Settings
from imagepipe.core.users import add_user, ensure_user_pool
from processor.worker import Worker
from tests.conftest import (
    PASSWORD,
    declared_notification,
    load_template,
    moto_template_body,
    put_test_gpu_ami,
    signed_in,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Tried to parse .* not supported by moto's CloudFormation")

STACK = "pipe"
REGION = "us-east-1"
WHEEL_KEY = "pipe/0123abcd/imagepipe-0.1.0-py3-none-any.whl"
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


class DeployedStack:
    """A deployed stack: its outputs, physical resource IDs, and clients to look at them."""

    def __init__(self, session: boto3.session.Session, gpu_ami: str) -> None:
        self.session = session
        self.gpu_ami = gpu_ami
        cfn = session.client("cloudformation")
        description = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
        self.status = description["StackStatus"]
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in description["Outputs"]}
        self.physical = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
        }
        self.account = session.client("sts").get_caller_identity()["Account"]

    def client(self, service: str) -> Any:
        return self.session.client(service)


@pytest.fixture(scope="module")
def deployed() -> Iterator[DeployedStack]:
    """One stack for the module; the end-to-end test, which adds to it, comes last."""
    with mock_aws():
        session = boto3.session.Session(region_name=REGION, aws_access_key_id="testing",
                                        aws_secret_access_key="testing")
        gpu_ami = put_test_gpu_ami(session)
        session.client("cloudformation").create_stack(
            StackName=STACK,
            TemplateBody=moto_template_body(),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[
                {"ParameterKey": "ArtifactBucket", "ParameterValue": "imagepipe-artifacts-test"},
                {"ParameterKey": "WheelKey", "ParameterValue": WHEEL_KEY},
            ],
        )
        yield DeployedStack(session, gpu_ami)


def test_stack_creates_with_the_outputs(deployed: DeployedStack) -> None:
    assert deployed.status == "CREATE_COMPLETE"
    assert deployed.outputs["BucketName"] == f"{STACK}-images-{deployed.account}-{REGION}"
    assert deployed.outputs["WebUrl"].startswith(f"http://{STACK}-web-")
    assert deployed.outputs["QueueUrl"] == deployed.physical["Queue"]
    assert deployed.outputs["TableName"] == deployed.physical["ResultsTable"]


def test_bucket_is_encrypted_and_named_as_the_queue_policy_expects(deployed: DeployedStack) -> None:
    s3 = deployed.client("s3")
    bucket = deployed.outputs["BucketName"]
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # The queue policy names the bucket before it exists; resolve that name for this stack.
    template = load_template()
    condition = template["Resources"]["QueuePolicy"]["Properties"]["PolicyDocument"][
        "Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    resolved = (condition.replace("${AWS::Partition}", "aws").replace("${AWS::StackName}", STACK)
                .replace("${AWS::AccountId}", deployed.account).replace("${AWS::Region}", REGION))
    assert resolved == f"arn:aws:s3:::{bucket}"


def test_queues_have_redrive_visibility_and_encryption(deployed: DeployedStack) -> None:
    sqs = deployed.client("sqs")
    dlq_arn = sqs.get_queue_attributes(QueueUrl=deployed.physical["DeadLetterQueue"],
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attrs = sqs.get_queue_attributes(QueueUrl=deployed.outputs["QueueUrl"],
                                     AttributeNames=["All"])["Attributes"]
    assert json.loads(attrs["RedrivePolicy"]) == {"deadLetterTargetArn": dlq_arn,
                                                  "maxReceiveCount": 5}
    assert attrs["VisibilityTimeout"] == "120"
    assert attrs["ReceiveMessageWaitTimeSeconds"] == "20"
    assert attrs["SqsManagedSseEnabled"] == "true"


def test_table_has_the_indexes_the_api_queries(deployed: DeployedStack) -> None:
    table = deployed.client("dynamodb").describe_table(
        TableName=deployed.outputs["TableName"])["Table"]
    expected = table_definition(deployed.outputs["TableName"])
    assert table["KeySchema"] == expected["KeySchema"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert sorted(i["IndexName"] for i in table["GlobalSecondaryIndexes"]) == sorted(
        i["IndexName"] for i in expected["GlobalSecondaryIndexes"])
    for index in table["GlobalSecondaryIndexes"]:
        (want,) = [i for i in expected["GlobalSecondaryIndexes"]
                   if i["IndexName"] == index["IndexName"]]
        assert index["KeySchema"] == want["KeySchema"]


def test_roles_are_scoped_to_this_stacks_resources(deployed: DeployedStack) -> None:
    iam = deployed.client("iam")
    sqs = deployed.client("sqs")
    queue_arn = sqs.get_queue_attributes(QueueUrl=deployed.outputs["QueueUrl"],
                                         AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    interactive_arn = sqs.get_queue_attributes(
        QueueUrl=deployed.outputs["InteractiveQueueUrl"],
        AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    table_arn = deployed.client("dynamodb").describe_table(
        TableName=deployed.outputs["TableName"])["Table"]["TableArn"]
    bucket_arn = f"arn:aws:s3:::{deployed.outputs['BucketName']}"
    wheel_arn = f"arn:aws:s3:::imagepipe-artifacts-test/{WHEEL_KEY}"
    artifacts_arn = f"arn:aws:s3:::imagepipe-artifacts-test/{STACK}/*"  # the wheelhouse

    def allowed(role_logical_id: str) -> dict[str, set[str]]:
        role = deployed.physical[role_logical_id]
        grants: dict[str, set[str]] = {}
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            if isinstance(document, str):
                # moto hands back the document CloudFormation gave it as a Python repr.
                document = ast.literal_eval(document)
            for statement in document["Statement"]:
                actions = statement["Action"]
                for resource in [statement["Resource"]] if isinstance(
                        statement["Resource"], str) else statement["Resource"]:
                    grants.setdefault(resource, set()).update(
                        [actions] if isinstance(actions, str) else actions)
        return grants

    processor = allowed("ProcessorRole")
    assert processor[f"{bucket_arn}/*"] == {"s3:GetObject"}
    # The wheel is part of the release, under the stack's prefix with the wheelhouse.
    assert wheel_arn not in processor and WHEEL_KEY.startswith(f"{STACK}/")
    assert processor[artifacts_arn] == {"s3:GetObject"}
    # The web instances install the front's part of the same release and wheelhouse.
    assert allowed("WebRole")[artifacts_arn] == {"s3:GetObject"}
    assert wheel_arn not in allowed("WebRole")
    assert "sqs:ReceiveMessage" in processor[queue_arn]
    assert "sqs:ReceiveMessage" in processor[interactive_arn]  # both lanes
    # BatchWriteItem: a result's search-word items; GetItem: webhook items only (a condition
    # on the leading key, which test_infra_template checks).
    assert processor[table_arn] == {"dynamodb:BatchGetItem", "dynamodb:BatchWriteItem",
                                    "dynamodb:PutItem", "dynamodb:UpdateItem",
                                    "dynamodb:GetItem"}
    assert processor[f"{table_arn}/index/by_content"] == {"dynamodb:Query"}
    web = allowed("WebRole")
    assert web[f"{bucket_arn}/uploads/*"] == {"s3:PutObject"}
    # Reads the gallery's thumbnails; deletes a photo its owner deletes.
    assert web[f"{bucket_arn}/*"] == {"s3:GetObject", "s3:DeleteObject"}
    assert web[f"{table_arn}/index/*"] == {"dynamodb:Query"}
    assert "dynamodb:UpdateItem" in web[table_arn]
    # The front only asks the queue whether it answers (GET /readyz).
    assert {r: web[r] for r in web if r.startswith(queue_arn)} == {
        queue_arn: {"sqs:GetQueueAttributes"}}
    # The lifecycle hooks: any group's name, pinned to the processor group by its tags.
    account = queue_arn.split(":")[4]
    groups_arn = f"arn:aws:autoscaling:{REGION}:{account}:autoScalingGroup:*:autoScalingGroupName/*"
    assert processor.pop(groups_arn) == {"autoscaling:CompleteLifecycleAction",
                                         "autoscaling:RecordLifecycleActionHeartbeat"}
    # The results topic, and the stack's own queues: the webhook queue, the events server's.
    topic_arn = deployed.outputs["ResultsTopicArn"]
    stack_queues = f"arn:aws:sqs:{REGION}:{account}:{STACK}-"
    for grants in (processor, web):
        for resource in set(grants) - {"*"}:
            assert resource.startswith((bucket_arn, wheel_arn, queue_arn, interactive_arn,
                                        table_arn, artifacts_arn, topic_arn, stack_queues,
                                        "arn:aws:logs:")), resource
        for resource in grants:
            if ":log-group:" in resource:
                assert f":log-group:/imagepipe/{STACK}/" in resource


def test_processor_launch_template_runs_the_stacks_processor(deployed: DeployedStack) -> None:
    ec2 = deployed.client("ec2")
    version = ec2.describe_launch_template_versions(
        LaunchTemplateId=deployed.physical["ProcessorLaunchTemplate"])["LaunchTemplateVersions"][-1]
    data = version["LaunchTemplateData"]
    assert data["ImageId"] == deployed.gpu_ami
    assert data["InstanceType"] == "g4dn.xlarge"
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    script = base64.b64decode(data["UserData"]).decode()
    # Fn::Sub resolved by the stack: the processors get this stack's resources.
    env = dict(line.split("=", 1) for line in re.search(
        r"<<'ENV'\n(.*?)\nENV\n", script, re.S).group(1).splitlines())
    assert env["IMAGEPIPE_BUCKET"] == deployed.outputs["BucketName"]
    assert env["IMAGEPIPE_QUEUE"] == deployed.outputs["QueueUrl"]
    assert env["IMAGEPIPE_TABLE"] == deployed.outputs["TableName"]
    assert env["IMAGEPIPE_DEAD_LETTER_QUEUE"] == deployed.outputs["DeadLetterQueueUrl"]
    assert env["AWS_DEFAULT_REGION"] == REGION
    assert f"s3://imagepipe-artifacts-test/{WHEEL_KEY}" in script
    agent = json.loads(re.search(r"<<'AGENT'\n(.*?)\nAGENT\n", script, re.S).group(1))
    logs = agent["logs"]["logs_collected"]["files"]["collect_list"]
    assert {entry["log_group_name"] for entry in logs} == {f"/imagepipe/{STACK}/processor"}
    groups = deployed.client("logs").describe_log_groups(logGroupNamePrefix=f"/imagepipe/{STACK}/")
    assert {(g["logGroupName"], g.get("retentionInDays")) for g in groups["logGroups"]} == {
        (f"/imagepipe/{STACK}/processor", 30), (f"/imagepipe/{STACK}/web", 30)}


def test_web_launch_template_turns_sign_in_on_with_the_daily_quota(deployed: DeployedStack
                                                                   ) -> None:
    ec2 = deployed.client("ec2")
    version = ec2.describe_launch_template_versions(
        LaunchTemplateId=deployed.physical["WebLaunchTemplate"])["LaunchTemplateVersions"][-1]
    script = base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()
    env = dict(line.split("=", 1) for line in re.search(
        r"<<'ENV'\n(.*?)\nENV\n", script, re.S).group(1).splitlines())
    assert env["IMAGEPIPE_TABLE"] == deployed.outputs["TableName"]
    assert env["IMAGEPIPE_AUTH"] == "on"
    assert env["IMAGEPIPE_DAILY_QUOTA"] == "1000"
    assert env["AWS_DEFAULT_REGION"] == REGION == deployed.outputs["UserPoolRegion"]


def test_moto_still_lacks_the_pool_and_the_web_acl(deployed: DeployedStack) -> None:
    # When this fails, moto's CloudFormation has learnt Cognito or WAFv2: check here that the
    # stack's pool, client and admins group exist and the ACL guards the load balancer.
    for logical_id in ("UserPool", "UserPoolClient", "AdminsGroup", "WebAcl",
                       "WebAclAssociation"):
        assert logical_id not in deployed.physical, logical_id
    assert deployed.client("cognito-idp").list_user_pools(MaxResults=60)["UserPools"] == []
    assert not {"UserPoolId", "UserPoolClientId", "WebAclArn"} & set(deployed.outputs)


def test_processor_group_starts_empty_on_gpu_instances_in_two_zones(deployed: DeployedStack
                                                                     ) -> None:
    autoscaling = deployed.client("autoscaling")
    (group,) = autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[deployed.outputs["ProcessorGroupName"]])["AutoScalingGroups"]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 4, 0)
    policy = group["MixedInstancesPolicy"]
    assert policy["LaunchTemplate"]["Overrides"] == [
        {"InstanceType": "g4dn.xlarge"}, {"InstanceType": "g5.xlarge"},
        {"InstanceType": "g6.xlarge"}]
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
    subnets = deployed.client("ec2").describe_subnets(
        SubnetIds=group["VPCZoneIdentifier"].split(","))["Subnets"]
    # Every subnet of the stack, each in its own zone: Spot capacity is sought in all three.
    assert len({s["AvailabilityZone"] for s in subnets}) == 3


def test_web_front_sits_behind_the_load_balancer(deployed: DeployedStack) -> None:
    autoscaling = deployed.client("autoscaling")
    elbv2 = deployed.client("elbv2")
    (group,) = autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[deployed.physical["WebGroup"]])["AutoScalingGroups"]
    assert (group["MinSize"], group["DesiredCapacity"]) == (2, 2)
    # gunicorn, and the events server (GET /api/events) beside it.
    assert sorted(group["TargetGroupARNs"]) == sorted(
        [deployed.physical["WebTargetGroup"], deployed.physical["EventsTargetGroup"]])
    (target_group,) = elbv2.describe_target_groups(
        TargetGroupArns=[deployed.physical["WebTargetGroup"]])["TargetGroups"]
    assert (target_group["Port"], target_group["HealthCheckPath"]) == (8000, "/healthz")
    (balancer,) = elbv2.describe_load_balancers(
        LoadBalancerArns=[deployed.physical["LoadBalancer"]])["LoadBalancers"]
    assert balancer["Scheme"] == "internet-facing"
    assert balancer["LoadBalancerName"] == f"{STACK}-web"
    (listener,) = elbv2.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])[
        "Listeners"]
    assert listener["Port"] == 80
    assert listener["DefaultActions"][0]["TargetGroupArn"] == target_group["TargetGroupArn"]

    ec2 = deployed.client("ec2")
    web_group = ec2.describe_security_groups(
        GroupIds=[deployed.physical["WebSecurityGroup"]])["SecurityGroups"][0]
    rules = sorted(web_group["IpPermissions"], key=lambda r: r["FromPort"])
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(8000, 8000), (8001, 8001)]
    for rule in rules:
        assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [
            deployed.physical["LoadBalancerSecurityGroup"]]
        assert not rule["IpRanges"]
    processor_group = ec2.describe_security_groups(
        GroupIds=[deployed.physical["ProcessorSecurityGroup"]])["SecurityGroups"][0]
    assert processor_group["IpPermissions"] == []


@pytest.mark.slow
def test_pipeline_runs_end_to_end_on_the_stacks_resources(deployed: DeployedStack, classifier,
                                                         photos, model_cache: Path) -> None:
    # Given the stack's bucket, queue and table, and the bucket notification applied by hand:
    # moto's CloudFormation drops NotificationConfiguration, so the test puts exactly what the
    # template declares (its events, to the stack's queue).
    outputs = deployed.outputs
    settings = Settings(bucket=outputs["BucketName"], queue=outputs["QueueUrl"],
                        dead_letter_queue=outputs["DeadLetterQueueUrl"],
                        interactive_queue=outputs["InteractiveQueueUrl"],
                        interactive_dead_letter_queue=outputs["InteractiveDeadLetterQueueUrl"],
                        table=outputs["TableName"], region=REGION, poll_seconds=0,
                        cache_dir=model_cache)
    clients = make_clients(settings)
    clients.s3.put_bucket_notification_configuration(
        Bucket=settings.bucket,
        NotificationConfiguration=declared_notification(clients.sqs, outputs))
    # moto's CloudFormation has no Cognito: the pool the template declares is made here.
    pool = ensure_user_pool(clients.cognito, settings)
    settings = dataclasses.replace(settings, user_pool_id=pool.pool_id,
                                   user_pool_client_id=pool.client_id)
    add_user(clients.cognito, pool.pool_id, "alice", password=PASSWORD)
    token = clients.cognito.initiate_auth(
        ClientId=pool.client_id, AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": "alice", "PASSWORD": PASSWORD},
    )["AuthenticationResult"]["AccessToken"]
    front = signed_in(create_app(settings, clients), token)

    # When a browser-style upload goes through the front's presigned POST
    created = front.post("/api/uploads", json={
        "filename": "chelsea.jpg", "content_type": "image/jpeg", "size": len(photos.cat_jpeg)})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert is_image_id(body["image_id"])
    upload = requests.post(body["upload"]["url"], data=body["upload"]["fields"],
                           files={"file": ("chelsea.jpg", photos.cat_jpeg, "image/jpeg")},
                           timeout=30)
    assert upload.status_code in (200, 201, 204), upload.text

    # and the real worker with the real model processes the stack's queue
    with Worker(settings, clients, classifier) as worker:
        report = worker.run(max_batches=3)
    assert report.done == 1 and report.failed == 0, report

    # Then the front answers with a cat, by ID and through the label index
    result = front.get(f"/api/results/{body['image_id']}").get_json()
    assert result["status"] == "done", result
    assert result["labels"][0]["label"] in CAT_CLASSES
    assert result["image"]["bucket"] == outputs["BucketName"]
    listed = front.get("/api/results", query_string={"label": result["labels"][0]["label"]})
    assert [r["image_id"] for r in listed.get_json()["results"]] == [body["image_id"]]
    # and the gallery's thumbnail link, a presigned GET the front signs, serves the photo
    thumbnail = front.get(f"/api/results/{body['image_id']}/image")
    assert thumbnail.status_code == 302
    image = requests.get(thumbnail.headers["Location"], timeout=30)
    assert image.status_code == 200 and image.content == photos.cat_jpeg
    queue = clients.sqs.get_queue_attributes(
        QueueUrl=outputs["QueueUrl"], AttributeNames=["ApproximateNumberOfMessages",
                                                      "ApproximateNumberOfMessagesNotVisible"])
    assert queue["Attributes"] == {"ApproximateNumberOfMessages": "0",
                                   "ApproximateNumberOfMessagesNotVisible": "0"}
