"""The CloudFormation template read as a file: linters, and what moto's CloudFormation drops.

moto silently ignores bucket notifications, CORS, public access blocks, lifecycle rules,
bucket and queue policies, scaling policies, alarms and metric filters, so these are checked
here on the parsed template; tests/test_infra_stack.py deploys it.
"""

from __future__ import annotations

import ast
import fnmatch
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.scaling import MESSAGES_PER_PROCESS, WAKE_STEPS, Fleet
from imagepipe.core.logs import configure_logging
from imagepipe.core.provision import cors_rules, notification_configuration, table_definition
from imagepipe.core.quota import EXPIRES
from imagepipe.core.records.codec import TTL_ATTRIBUTE
from imagepipe.core.settings import Settings, documented_variables
from tests.conftest import DLAMI_PARAMETER, TEMPLATE, load_template

ROOT = TEMPLATE.parents[2]
CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def props(resources: dict[str, Any], name: str) -> dict[str, Any]:
    return resources[name]["Properties"]


def render(value: Any) -> Any:
    """Intrinsic functions as the strings they stand for: {"Ref": "X"} -> "${X}", and so on."""
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            return f"${{{arg}}}"
        if fn == "Fn::GetAtt":
            return "${" + ".".join(arg) + "}"
        if fn == "Fn::Sub" and isinstance(arg, str):
            return arg
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v) for v in value]
    return value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def permissions(resources: dict[str, Any], role: str) -> dict[str, set[str]]:
    """A role's allowed actions per resource, from all its inline policies."""
    allowed: dict[str, set[str]] = {}
    for policy in props(resources, role)["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            for resource in as_list(render(statement["Resource"])):
                allowed.setdefault(resource, set()).update(as_list(statement["Action"]))
    return allowed


def role_statements(resources: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [render(s) for p in props(resources, role)["Policies"]
            for s in p["PolicyDocument"]["Statement"]]


# ---------------------------------------------------------------- linters

def test_cfn_lint_passes_on_every_template() -> None:
    templates = sorted((ROOT / "infra" / "cloudformation").glob("*.yaml"))
    assert TEMPLATE in templates
    cfn_lint = str(Path(sys.executable).parent / "cfn-lint")
    run = subprocess.run([cfn_lint, "--", *map(str, templates)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_checkov_passes_offline_and_every_skip_is_justified(template, tmp_path: Path) -> None:
    checkov = str(CHECKOV) if CHECKOV.exists() else shutil.which("checkov")
    if checkov is None:
        pytest.skip("checkov is not installed (make setup installs it in .venv/checkov)")
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CKV_SKIP_PACKAGE_UPDATE_CHECK="TRUE",
               HOME=str(tmp_path))
    run = subprocess.run(
        [checkov, "--directory", str(TEMPLATE.parent), "--framework", "cloudformation",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads(run.stdout)
    summary = report["summary"]
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 20, summary
    # What checkov skipped is exactly what the template declares, each with a reason.
    declared = {}
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            declared[(skip["id"], f"{resource['Type']}.{name}")] = skip["comment"]
    skipped = {(c["check_id"], c["resource"]) for c in report["results"]["skipped_checks"]}
    assert skipped == set(declared)
    for key, comment in declared.items():
        assert len(comment.split()) >= 8, (key, comment)


# ---------------------------------------------------------------- bucket and queue

def test_bucket_is_private_encrypted_and_tls_only(resources) -> None:
    bucket = props(resources, "Bucket")
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "IgnorePublicAcls": True,
        "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
    }
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    policy = render(props(resources, "BucketPolicy"))
    assert policy["Bucket"] == "${Bucket}"
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert set(deny["Resource"]) == {"${Bucket.Arn}", "${Bucket.Arn}/*"}
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_bucket_cors_admits_only_the_web_front_and_only_post(resources) -> None:
    (rule,) = props(resources, "Bucket")["CorsConfiguration"]["CorsRules"]
    # The same rule as provisioning gives the local bucket, in CloudFormation's names.
    (local,) = cors_rules(Settings(web_origins="https://images.example.com"))
    names = {"Id": "ID", "ExposedHeaders": "ExposeHeaders", "MaxAge": "MaxAgeSeconds"}
    assert {names.get(k, k): v for k, v in rule.items() if k != "AllowedOrigins"} == {
        k: v for k, v in local.items() if k != "AllowedOrigins"}
    assert rule["AllowedMethods"] == ["POST"]
    (origin,) = rule["AllowedOrigins"]
    assert origin == {"Fn::If": ["HasWebOrigin", {"Ref": "WebOrigin"},
                                 {"Fn::Sub": "http://${LoadBalancer.DNSName}"}]}
    # A browser sends the origin's host in lowercase: the load balancer's name must be lowercase.
    assert render(props(resources, "LoadBalancer")["Name"]) == "${AWS::StackName}-web"


def test_bucket_aborts_incomplete_multipart_uploads(resources) -> None:
    rules = props(resources, "Bucket")["LifecycleConfiguration"]["Rules"]
    aborts = [r for r in rules if "AbortIncompleteMultipartUpload" in r]
    assert len(aborts) == 1 and aborts[0]["Status"] == "Enabled"
    assert aborts[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1


def test_each_lane_is_told_of_its_objects_as_provisioning_says(resources) -> None:
    notification = props(resources, "Bucket")["NotificationConfiguration"]
    assert set(notification) == {"QueueConfigurations"}
    # The same split as imagepipe provision's (one place decides it; this keeps the copy).
    lanes = {"InteractiveQueue": "interactive", "Queue": "bulk"}
    provisioned = notification_configuration(
        {lane: f"${{{queue}.Arn}}" for queue, lane in lanes.items()})["QueueConfigurations"]
    declared = {}
    for config in render(notification["QueueConfigurations"]):
        events, prefix = declared.setdefault(config["Queue"], (set(), set()))
        events.add(config["Event"])
        prefix.update(r["Value"] for r in config.get("Filter", {}).get("S3Key", {}).get(
            "Rules", []) if r["Name"] == "prefix")
    assert declared == {
        c["QueueArn"]: (set(c["Events"]), {r["Value"] for r in c.get("Filter", {}).get(
            "Key", {}).get("FilterRules", [])}) for c in provisioned}
    assert declared["${InteractiveQueue.Arn}"] == ({"s3:ObjectCreated:Post"}, {"uploads/"})


def test_queue_policy_admits_only_this_bucket_and_exists_before_it(resources) -> None:
    # S3 checks that it may publish when the notification is set: the policy must come first,
    # and it names the bucket by its known name rather than by reference (no cycle).
    assert resources["Bucket"]["DependsOn"] == "QueuePolicy"
    policy = render(props(resources, "QueuePolicy"))
    assert policy["Queues"] == ["${Queue}", "${InteractiveQueue}"]
    allow, deny = policy["PolicyDocument"]["Statement"]
    assert allow["Effect"] == "Allow"
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    assert allow["Resource"] == ["${Queue.Arn}", "${InteractiveQueue.Arn}"]
    bucket_name = render(props(resources, "Bucket")["BucketName"])
    assert allow["Condition"] == {
        "ArnEquals": {"aws:SourceArn": f"arn:${{AWS::Partition}}:s3:::{bucket_name}"},
        "StringEquals": {"aws:SourceAccount": "${AWS::AccountId}"},
    }
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_queue_redrives_after_five_receives_and_hides_messages_for_a_batch(template, resources
                                                                           ) -> None:
    for prefix in ("", "Interactive"):
        queue = props(resources, f"{prefix}Queue")
        assert render(queue["RedrivePolicy"]) == {
            "deadLetterTargetArn": f"${{{prefix}DeadLetterQueue.Arn}}", "maxReceiveCount": 5}
        assert queue["VisibilityTimeout"] == {"Ref": "VisibilityTimeout"}
    timeout = template["Parameters"]["VisibilityTimeout"]
    # Far above a batch of 10 on a GPU, short enough that a lost instance's messages come back
    # within minutes; the processors get the same value.
    assert 60 <= timeout["Default"] <= 600
    assert "IMAGEPIPE_VISIBILITY_TIMEOUT=${VisibilityTimeout}" in user_data(resources,
                                                                            "ProcessorLaunchTemplate")
    assert queue["SqsManagedSseEnabled"] is True
    assert props(resources, "DeadLetterQueue")["MessageRetentionPeriod"] == 14 * 24 * 3600


# ---------------------------------------------------------------- table

def test_table_mirrors_provisioning_with_pitr(resources) -> None:
    table = props(resources, "ResultsTable")
    expected = table_definition("ignored")

    def index_set(indexes: list[dict[str, Any]]) -> dict[str, Any]:
        return {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in indexes}

    assert table["BillingMode"] == expected["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == expected["KeySchema"]
    assert sorted(map(json.dumps, table["AttributeDefinitions"])) == sorted(
        map(json.dumps, expected["AttributeDefinitions"]))
    assert index_set(table["GlobalSecondaryIndexes"]) == index_set(
        expected["GlobalSecondaryIndexes"])
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    # The quota counters expire by the attribute the code writes, as provisioning sets it.
    assert table["TimeToLiveSpecification"] == {"AttributeName": EXPIRES, "Enabled": True}
    # A replacement (a key change) keeps the old table and its results.
    assert resources["ResultsTable"]["UpdateReplacePolicy"] == "Retain"


def test_table_has_the_owner_indexes(resources) -> None:
    # Listing is a query by owner, never a scan: one index per listing the API offers.
    table = props(resources, "ResultsTable")
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    for name, partition, sort, sort_type in (("by_owner", "owner", "created_at", "S"),
                                             ("by_owner_status", "owner_status", "created_at", "S"),
                                             ("by_owner_label", "owner_label", "top_score", "N")):
        assert indexes[name]["KeySchema"] == [{"AttributeName": partition, "KeyType": "HASH"},
                                              {"AttributeName": sort, "KeyType": "RANGE"}]
        assert indexes[name]["Projection"] == {"ProjectionType": "ALL"}
        assert {"AttributeName": partition, "AttributeType": "S"} in table["AttributeDefinitions"]
        assert {"AttributeName": sort, "AttributeType": sort_type} in table["AttributeDefinitions"]


# ---------------------------------------------------------------- sign-in

def test_user_pool_takes_only_users_an_operator_adds_with_strong_passwords(resources) -> None:
    pool = props(resources, "UserPool")
    # Nobody signs themselves up: imagepipe users add (AdminCreateUser) is the only way in.
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    assert pool["UsernameConfiguration"] == {"CaseSensitive": False}
    assert "UsernameAttributes" not in pool and "AliasAttributes" not in pool
    password = pool["Policies"]["PasswordPolicy"]
    assert password["MinimumLength"] >= 12
    assert all(password[k] is True for k in ("RequireUppercase", "RequireLowercase",
                                             "RequireNumbers", "RequireSymbols"))
    assert pool["AccountRecoverySetting"] == {
        "RecoveryMechanisms": [{"Name": "verified_email", "Priority": 1}]}
    assert pool["UserAttributeUpdateSettings"] == {
        "AttributesRequireVerificationBeforeUpdate": ["email"]}
    assert (pool["MfaConfiguration"], pool["EnabledMfas"]) == ("OPTIONAL",
                                                               ["SOFTWARE_TOKEN_MFA"])
    assert pool["DeletionProtection"] == {"Ref": "UserPoolDeletionProtection"}
    # Records name their owners by the pool's subs: a replaced pool is kept, not deleted.
    assert resources["UserPool"]["UpdateReplacePolicy"] == "Retain"


def test_app_client_is_public_with_exactly_the_password_srp_and_refresh_flows(resources
                                                                              ) -> None:
    client = props(resources, "UserPoolClient")
    assert client["UserPoolId"] == {"Ref": "UserPool"}
    assert client["GenerateSecret"] is False
    assert sorted(client["ExplicitAuthFlows"]) == [
        "ALLOW_REFRESH_TOKEN_AUTH", "ALLOW_USER_PASSWORD_AUTH", "ALLOW_USER_SRP_AUTH"]
    assert client["PreventUserExistenceErrors"] == "ENABLED"
    assert client["EnableTokenRevocation"] is True
    units = client["TokenValidityUnits"]
    assert (client["AccessTokenValidity"], units["AccessToken"]) == (60, "minutes")
    assert (client["IdTokenValidity"], units["IdToken"]) == (60, "minutes")
    assert (client["RefreshTokenValidity"], units["RefreshToken"]) == (30, "days")
    # No hosted UI or OAuth flows: the page and the CLI sign in through the API only.
    assert not {"AllowedOAuthFlows", "CallbackURLs"} & set(client)


def test_admins_group_belongs_to_the_pool(resources) -> None:
    group = props(resources, "AdminsGroup")
    assert resources["AdminsGroup"]["Type"] == "AWS::Cognito::UserPoolGroup"
    assert (group["GroupName"], group["UserPoolId"]) == ("admins", {"Ref": "UserPool"})
    assert "RoleArn" not in group


# ---------------------------------------------------------------- WAF

def test_waf_limits_each_address_and_runs_the_managed_rule_sets(template, resources) -> None:
    acl = props(resources, "WebAcl")
    assert acl["Scope"] == "REGIONAL" and acl["DefaultAction"] == {"Allow": {}}
    rules = {r["Name"]: r for r in acl["Rules"]}
    assert sorted(r["Priority"] for r in acl["Rules"]) == list(range(len(rules)))
    rate = rules["rate-per-address"]
    assert rate["Action"] == {"Block": {}}
    # The load balancer is the edge: the source address is the client's, a header is not.
    assert rate["Statement"]["RateBasedStatement"] == {
        "Limit": {"Ref": "WafRateLimit"}, "EvaluationWindowSec": 300, "AggregateKeyType": "IP"}
    assert rate["Priority"] == 0
    assert template["Parameters"]["WafRateLimit"]["Default"] >= 100
    managed = {r["Statement"]["ManagedRuleGroupStatement"]["Name"]: r for r in acl["Rules"]
               if "ManagedRuleGroupStatement" in r["Statement"]}
    assert set(managed) == {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet",
                            "AWSManagedRulesAmazonIpReputationList"}
    for rule in managed.values():
        statement = rule["Statement"]["ManagedRuleGroupStatement"]
        assert statement["VendorName"] == "AWS" and rule["OverrideAction"] == {"None": {}}
        assert "ExcludedRules" not in statement
    # Images sent to the synchronous API exceed the common set's 8 KB body limit: that rule
    # alone only counts.
    common = managed["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    assert common["RuleActionOverrides"] == [
        {"Name": "SizeRestrictions_BODY", "ActionToUse": {"Count": {}}}]
    for visibility in [acl["VisibilityConfig"], *(r["VisibilityConfig"] for r in acl["Rules"])]:
        assert visibility["CloudWatchMetricsEnabled"] is True
        assert visibility["SampledRequestsEnabled"] is True
    names = [render(v["MetricName"]) for v in [acl["VisibilityConfig"],
                                               *(r["VisibilityConfig"] for r in acl["Rules"])]]
    assert len(set(names)) == len(names)


def test_waf_guards_the_load_balancer(resources) -> None:
    association = render(props(resources, "WebAclAssociation"))
    assert association == {"ResourceArn": "${LoadBalancer}", "WebACLArn": "${WebAcl.Arn}"}
    # Ref of an Application Load Balancer is its ARN, which the association wants.
    assert resources["LoadBalancer"]["Type"] == "AWS::ElasticLoadBalancingV2::LoadBalancer"


# ---------------------------------------------------------------- roles

GROUP_ARN = ("arn:${AWS::Partition}:autoscaling:${AWS::Region}:${AWS::AccountId}:"
             "autoScalingGroup:*:autoScalingGroupName/*")
# The tags CloudFormation puts on the processor group, which no one else can set.
GROUP_TAGS = {"autoscaling:ResourceTag/aws:cloudformation:stack-name": "${AWS::StackName}",
              "autoscaling:ResourceTag/aws:cloudformation:logical-id": "ProcessorGroup"}

def test_no_role_allows_a_wildcard_action_or_an_unscoped_resource(resources) -> None:
    for role in ("ProcessorRole", "WebRole"):
        for statement in role_statements(resources, role):
            assert statement["Effect"] == "Allow"
            for action in as_list(statement["Action"]):
                assert "*" not in action, (role, action)
            for resource in as_list(statement["Resource"]):
                if resource == "*" and statement["Action"] == (
                        "autoscaling:DescribeAutoScalingInstances"):
                    # Read-only, and it has no resource-level permissions: how the bootstrap
                    # learns its group's name.
                    assert role == "ProcessorRole"
                elif resource == "*":
                    # Only PutMetricData, which has no resource-level permissions, pinned to
                    # this stack's namespace.
                    assert statement["Action"] == "cloudwatch:PutMetricData"
                    assert statement["Condition"] == {"StringEquals": {
                        "cloudwatch:namespace": "imagepipe/${AWS::StackName}"}}
                elif resource.endswith(":autoScalingGroup:*:autoScalingGroupName/*"):
                    # Pinned to the processor group by the tags CloudFormation gives it.
                    assert statement["Condition"] == {"StringEquals": GROUP_TAGS}
                else:
                    assert re.search(r"\$\{(Bucket|Queue|InteractiveQueue|WebhookQueue|ResultsTable"
                                     r"|\w+LogGroup)\.Arn\}"
                                     r"|^\$\{ResultsTopic\}(:\*)?$"
                                     r"|:\$\{AWS::StackName\}-results-live-\*$"
                                     r"|\$\{ArtifactBucket\}/\$\{AWS::StackName\}/\*$",
                                     resource), resource


def test_processor_may_only_read_images_use_the_queue_and_write_results(resources) -> None:
    assert permissions(resources, "ProcessorRole") == {
        "${Bucket.Arn}/*": {"s3:GetObject"},
        # The release (its wheel, hashed requirements) and the wheelhouse (deploy's layout).
        "arn:${AWS::Partition}:s3:::${ArtifactBucket}/${AWS::StackName}/*": {"s3:GetObject"},
        "${Queue.Arn}": {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"},
        "${InteractiveQueue.Arn}": {"sqs:ReceiveMessage", "sqs:DeleteMessage",
                                    "sqs:ChangeMessageVisibility"},
        # The webhook deliverer: its queue, and GetItem of the webhook items only (below).
        "${WebhookQueue.Arn}": {"sqs:ReceiveMessage", "sqs:DeleteMessage",
                                "sqs:ChangeMessageVisibility"},
        "${ResultsTable.Arn}": {"dynamodb:BatchGetItem", "dynamodb:BatchWriteItem",
                                "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"},
        "${ResultsTopic}": {"sns:Publish"},
        "${ResultsTable.Arn}/index/by_content": {"dynamodb:Query"},
        "${ProcessorLogGroup.Arn}": {"logs:CreateLogStream", "logs:PutLogEvents",
                                     "logs:DescribeLogStreams"},
        "*": {"cloudwatch:PutMetricData", "autoscaling:DescribeAutoScalingInstances"},
        GROUP_ARN: {"autoscaling:CompleteLifecycleAction",
                    "autoscaling:RecordLifecycleActionHeartbeat"},
    }


def test_web_front_may_only_presign_uploads_and_read_create_and_delete_results(resources
                                                                              ) -> None:
    assert permissions(resources, "WebRole") == {
        # A presigned POST is signed by this role: it bounds what a browser can upload.
        "${Bucket.Arn}/uploads/*": {"s3:PutObject"},
        # Thumbnails are presigned GETs of any classified image; DELETE /api/results/<id>
        # removes one.
        "${Bucket.Arn}/*": {"s3:GetObject", "s3:DeleteObject"},
        # A HEAD of an upload that never arrived must answer 404 for its unit to come back.
        "${Bucket.Arn}": {"s3:ListBucket"},
        # The release (its wheel, the front's hashed requirements) and the wheelhouse.
        "arn:${AWS::Partition}:s3:::${ArtifactBucket}/${AWS::StackName}/*": {"s3:GetObject"},
        # UpdateItem only on quota counters (the condition below).
        "${ResultsTable.Arn}": {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem",
                                "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                                "dynamodb:BatchWriteItem"},
        "${ResultsTable.Arn}/index/*": {"dynamodb:Query"},
        # GET /readyz asks whether the queue answers; nothing more of it.
        "${Queue.Arn}": {"sqs:GetQueueAttributes"},
        "${WebLogGroup.Arn}": {"logs:CreateLogStream", "logs:PutLogEvents",
                               "logs:DescribeLogStreams"},
        # The events server's own queue on the results topic, made at start, removed at stop.
        "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${AWS::StackName}"
        "-results-live-*": {"sqs:CreateQueue", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes",
                            "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:DeleteQueue"},
        "${ResultsTopic}": {"sns:Subscribe"},
        "${ResultsTopic}:*": {"sns:Unsubscribe"},
    }


def test_web_front_updates_only_quota_counters(resources) -> None:
    updates = [s for s in role_statements(resources, "WebRole")
               if "dynamodb:UpdateItem" in as_list(s["Action"])]
    assert updates == [{
        "Sid": "CountDailyQuotas", "Effect": "Allow", "Action": "dynamodb:UpdateItem",
        "Resource": "${ResultsTable.Arn}",
        "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["quota#*"]}},
    }]
    # Nothing else the front may do is conditional: the condition cannot widen or narrow them.
    others = [s for s in role_statements(resources, "WebRole") if s not in updates]
    assert not any("Condition" in s for s in others)


def test_web_front_queries_every_index_of_the_table(resources) -> None:
    indexes = {i["IndexName"] for i in props(resources, "ResultsTable")["GlobalSecondaryIndexes"]}
    assert {"by_owner", "by_owner_status", "by_owner_label"} <= indexes
    queryable = {r for r, actions in permissions(resources, "WebRole").items()
                 if "dynamodb:Query" in actions}
    for index in indexes:
        assert any(fnmatch.fnmatchcase(f"${{ResultsTable.Arn}}/index/{index}", r)
                   for r in queryable), index


def test_web_front_needs_no_cognito_permissions(resources) -> None:
    # Tokens are checked against the pool's public keys and people sign in with InitiateAuth,
    # an unauthenticated call; membership of admins comes in the token.
    for role in ("WebRole", "ProcessorRole"):
        actions = {a for s in role_statements(resources, role) for a in as_list(s["Action"])}
        assert not {a for a in actions if a.startswith("cognito")}, role


# The DynamoDB calls each role's services make, read from the code: a call the role does not
# allow works on moto and fails on AWS.
SERVICES = {"ProcessorRole": ["processor"],
            "WebRole": ["uploader", "results_api", "web", "imagepipe/app.py"]}


def store_operations() -> dict[str, set[str]]:
    """For each ResultStore method, the DynamoDB operations it makes, directly or not."""
    from imagepipe.core.records import store

    tree = ast.parse(Path(store.__file__).read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ResultStore"]
    direct: dict[str, set[str]] = {}
    calls: dict[str, set[str]] = {}
    for method in cls.body:
        if not isinstance(method, ast.FunctionDef):
            continue
        direct[method.name], calls[method.name] = set(), set()
        for node in ast.walk(method):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = node.func.value
                if isinstance(target, ast.Attribute) and target.attr == "_db":
                    direct[method.name].add(node.func.attr)
                elif isinstance(target, ast.Name) and target.id == "self":
                    calls[method.name].add(node.func.attr)

    def reach(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        found = set(direct.get(name, ()))
        for callee in calls.get(name, set()) - seen:
            found |= reach(callee, seen | {name})
        return found

    return {name: reach(name) for name in direct}


def store_calls(paths: list[str]) -> set[str]:
    """The ResultStore methods called (on anything named *store) in these packages or files."""
    called = set()
    for path in paths:
        root = ROOT / path
        for source in [root] if root.is_file() else sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    target = node.func.value
                    name = (target.attr if isinstance(target, ast.Attribute)
                            else getattr(target, "id", ""))
                    if name.endswith("store"):
                        called.add(node.func.attr)
    return called


@pytest.mark.parametrize("role", sorted(SERVICES))
def test_each_role_allows_the_table_calls_its_services_make(resources, role: str) -> None:
    operations = store_operations()
    called = store_calls(SERVICES[role]) & set(operations)
    assert called, role
    needed = {op for method in called for op in operations[method]}
    allowed = permissions(resources, role)
    for op in sorted(needed):
        action = "dynamodb:" + "".join(part.capitalize() for part in op.split("_"))
        # Queries go to indexes; everything else to the table.
        on = ("${ResultsTable.Arn}/index/" if op == "query" else "${ResultsTable.Arn}")
        assert any(action in actions and (r == on or r.startswith(on))
                   for r, actions in allowed.items()), (role, action)


def test_the_operation_reader_sees_the_calls_it_must(resources) -> None:
    operations = store_operations()
    assert operations["get_many"] == {"batch_get_item"}
    assert operations["creation_times"] == {"batch_get_item"}
    assert operations["save_result"] == {"put_item", "update_item", "batch_write_item"}
    assert "save_result" in store_calls(SERVICES["ProcessorRole"])
    assert "get_many" in store_calls(SERVICES["WebRole"])


def test_instances_run_with_their_own_profiles_and_imdsv2(resources) -> None:
    for template_name, profile, role in (("ProcessorLaunchTemplate", "ProcessorInstanceProfile",
                                          "ProcessorRole"),
                                         ("WebLaunchTemplate", "WebInstanceProfile", "WebRole")):
        data = props(resources, template_name)["LaunchTemplateData"]
        assert render(data["IamInstanceProfile"]) == {"Arn": f"${{{profile}.Arn}}"}
        assert render(props(resources, profile)["Roles"]) == [f"${{{role}}}"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert all(m["Ebs"]["Encrypted"] for m in data["BlockDeviceMappings"])


def test_only_the_load_balancer_reaches_the_front_and_nothing_reaches_processors(resources
                                                                                 ) -> None:
    assert "SecurityGroupIngress" not in props(resources, "ProcessorSecurityGroup")
    assert "SecurityGroupIngress" not in props(resources, "WebSecurityGroup")
    ingress = render(props(resources, "WebIngressFromLoadBalancer"))
    assert ingress == {"GroupId": "${WebSecurityGroup}", "IpProtocol": "tcp", "FromPort": 8000,
                       "ToPort": 8000, "SourceSecurityGroupId": "${LoadBalancerSecurityGroup}",
                       "Description": ingress["Description"]}
    # Processors reach AWS over HTTPS, and deliver webhooks over HTTPS and HTTP.
    ports = {(e["FromPort"], e["ToPort"])
             for e in props(resources, "ProcessorSecurityGroup")["SecurityGroupEgress"]}
    assert ports == {(443, 443), (80, 80)}
    # The front also fetches URL imports over plain HTTP.
    ports = {(e["FromPort"], e["ToPort"])
             for e in props(resources, "WebSecurityGroup")["SecurityGroupEgress"]}
    assert ports == {(443, 443), (80, 80)}


# ---------------------------------------------------------------- processors and scaling

def test_processors_run_on_the_deep_learning_ami_on_g4dn_g5_or_g6(template, resources) -> None:
    parameters = template["Parameters"]
    ami = parameters["ProcessorImageId"]
    assert ami["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert ami["Default"] == DLAMI_PARAMETER
    kind = parameters["ProcessorInstanceType"]
    assert kind["Default"] == "g4dn.xlarge"
    assert {t.split(".")[0] for t in kind["AllowedValues"]} == {"g4dn", "g5", "g6"}
    data = props(resources, "ProcessorLaunchTemplate")["LaunchTemplateData"]
    # The AMI deploy pinned for the release, or the DLAMI's parameter while none is pinned.
    assert data["ImageId"] == {"Fn::If": ["PinnedProcessorImage", {"Ref": "ProcessorImagePin"},
                                          {"Ref": "ProcessorImageId"}]}
    (volume,) = data["BlockDeviceMappings"]
    # The AMI's snapshot is 75 GiB; a smaller root volume would fail every launch.
    assert parameters["ProcessorVolumeSize"]["MinValue"] >= 75
    assert volume["Ebs"]["VolumeSize"] == {"Ref": "ProcessorVolumeSize"}


def test_spot_is_a_parameter_of_the_group(template, resources) -> None:
    assert template["Conditions"]["SpotCapacity"] == {"Fn::Equals": [{"Ref": "UseSpot"}, "true"]}
    policy = props(resources, "ProcessorGroup")["MixedInstancesPolicy"]
    distribution = policy["InstancesDistribution"]
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == {
        "Fn::If": ["SpotCapacity", 0, 100]}
    assert distribution["OnDemandBaseCapacity"] == 0
    assert render(policy["LaunchTemplate"]["Overrides"]) == [
        {"InstanceType": "${ProcessorInstanceType}"}, {"InstanceType": "${ProcessorInstanceType2}"},
        {"InstanceType": "${ProcessorInstanceType3}"}]


def test_group_scales_on_backlog_per_instance_by_metric_math(template, resources) -> None:
    group = props(resources, "ProcessorGroup")
    assert group["MinSize"] == {"Ref": "ProcessorMinSize"}
    assert template["Parameters"]["ProcessorMinSize"]["Default"] == 0
    assert group["MaxSize"] == {"Ref": "ProcessorMaxSize"}
    # Without group metrics there is no GroupInServiceInstances to divide by.
    (collection,) = group["MetricsCollection"]
    assert "GroupInServiceInstances" in collection["Metrics"]

    policy = render(props(resources, "BacklogPerInstancePolicy"))
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["AutoScalingGroupName"] == "${ProcessorGroup}"
    tracking = policy["TargetTrackingConfiguration"]
    assert tracking["TargetValue"] == "${MessagesPerProcess}"
    metrics = {m["Id"]: m for m in tracking["CustomizedMetricSpecification"]["Metrics"]}
    assert metrics["m1"]["MetricStat"]["Metric"] == {
        "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
        "Dimensions": [{"Name": "QueueName", "Value": "${Queue.QueueName}"}]}
    assert metrics["m2"]["MetricStat"]["Metric"] == {
        "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesNotVisible",
        "Dimensions": [{"Name": "QueueName", "Value": "${Queue.QueueName}"}]}
    assert metrics["m3"]["MetricStat"]["Metric"] == {
        "Namespace": "AWS/AutoScaling", "MetricName": "GroupInServiceInstances",
        "Dimensions": [{"Name": "AutoScalingGroupName", "Value": "${ProcessorGroup}"}]}
    # ...and the same two of the interactive lane: a daemon busy with either lane is busy.
    for i, name in (("m4", "ApproximateNumberOfMessagesVisible"),
                    ("m5", "ApproximateNumberOfMessagesNotVisible")):
        assert metrics[i]["MetricStat"]["Metric"] == {
            "Namespace": "AWS/SQS", "MetricName": name,
            "Dimensions": [{"Name": "QueueName", "Value": "${InteractiveQueue.QueueName}"}]}
    # Visible plus in flight per daemon of the in-service instances; none in service: no datapoint.
    assert metrics["e1"]["Expression"] == (
        "IF(m3 > 0, (m1 + m2 + m4 + m5) / (m3 * ${ProcessesPerInstance}))")
    assert [m["Id"] for m in metrics.values() if m["ReturnData"]] == ["e1"]


def test_a_step_policy_wakes_the_group_from_zero(resources) -> None:
    alarm = render(props(resources, "WakeFromZeroAlarm"))
    assert alarm["AlarmActions"] == ["${WakeFromZeroPolicy}"]
    metrics = {m["Id"]: m for m in alarm["Metrics"]}
    assert metrics["m1"]["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "QueueName", "Value": "${Queue.QueueName}"}]
    assert metrics["m2"]["MetricStat"]["Metric"]["MetricName"] == "GroupInServiceInstances"
    # The visible messages while nothing is in service (no data from the group counts as 0).
    assert metrics["m3"]["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "QueueName", "Value": "${InteractiveQueue.QueueName}"}]
    assert metrics["e1"]["Expression"] == "IF(FILL(m2, 0) == 0, FILL(m1, 0) + FILL(m3, 0), 0)"
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (
        1, "GreaterThanOrEqualToThreshold")

    policy = render(props(resources, "WakeFromZeroPolicy"))
    assert policy["AutoScalingGroupName"] == "${ProcessorGroup}"
    assert (policy["PolicyType"], policy["AdjustmentType"]) == ("StepScaling", "ChangeInCapacity")
    steps = policy["StepAdjustments"]
    assert steps[0] == {"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": 1999,
                        "ScalingAdjustment": 1}
    assert all(s["ScalingAdjustment"] >= 1 for s in steps)
    # The warmup keeps the alarm from adding an instance a minute while the first one boots.
    assert policy["EstimatedInstanceWarmup"] >= 600


# ---------------------------------------------------------------- alarms

def test_alarms_watch_the_dead_letters_the_oldest_message_and_processor_errors(resources
                                                                               ) -> None:
    for lane in ("", "Interactive"):  # both lanes
        dlq = render(props(resources, f"{lane}DeadLetterQueueNotEmptyAlarm"))
        assert (dlq["Namespace"], dlq["MetricName"]) == ("AWS/SQS",
                                                          "ApproximateNumberOfMessagesVisible")
        assert dlq["Dimensions"] == [
            {"Name": "QueueName", "Value": f"${{{lane}DeadLetterQueue.QueueName}}"}]
        assert (dlq["Threshold"], dlq["ComparisonOperator"]) == (0, "GreaterThanThreshold")

        oldest = render(props(resources, f"{lane}OldestMessageAlarm"))
        assert oldest["MetricName"] == "ApproximateAgeOfOldestMessage"
        assert oldest["Dimensions"] == [
            {"Name": "QueueName", "Value": f"${{{lane}Queue.QueueName}}"}]
        assert oldest["Threshold"] == "${OldestMessageAgeThreshold}"

    errors = render(props(resources, "ProcessorErrorsAlarm"))
    (metric,) = render(props(resources, "ProcessorErrorsMetricFilter"))["MetricTransformations"]
    assert (errors["Namespace"], errors["MetricName"]) == (metric["MetricNamespace"],
                                                           metric["MetricName"])
    assert render(props(resources, "ProcessorErrorsMetricFilter"))["LogGroupName"] == (
        "${ProcessorLogGroup}")
    for alarm in (dlq, oldest, errors):
        assert alarm["AlarmActions"] == ["${AlarmTopic}"]


def test_error_filter_matches_the_processors_error_lines_only(resources) -> None:
    pattern = props(resources, "ProcessorErrorsMetricFilter")["FilterPattern"]
    assert pattern.startswith('"') and pattern.endswith('"')
    phrase = pattern[1:-1]
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "processor")  # the processor's own format
        formatter = root.handlers[0].formatter
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert formatter is not None
    lines = {}
    for level in (logging.INFO, logging.WARNING, logging.ERROR):
        record = logging.LogRecord("processor.worker", level, __file__, 1,
                                   "image %s (key %r): ERROR in the name", ("abc", "ERROR.jpg"),
                                   None)
        lines[level] = formatter.format(record)
    assert phrase in lines[logging.ERROR]
    assert phrase not in lines[logging.WARNING] and phrase not in lines[logging.INFO]


# ---------------------------------------------------------------- user data

PLACEHOLDERS = {
    "AWS::Region": "us-east-1", "AWS::StackName": "pipe", "ArtifactBucket": "artifacts",
    "WheelKey": "pipe/0123/imagepipe-0.1.0-py3-none-any.whl", "ProcessesPerInstance": "2",
    "VisibilityTimeout": "120",
}


def user_data(resources: dict[str, Any], launch_template: str) -> str:
    data = props(resources, launch_template)["LaunchTemplateData"]["UserData"]
    return data["Fn::Base64"]["Fn::Sub"]


def substitute(script: str) -> str:
    """What CloudFormation's Fn::Sub makes of the script, with made-up values."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        return PLACEHOLDERS.get(name, f"value-of-{name.replace('.', '-').replace('::', '-')}")
    return re.sub(r"\$\{([^}]+)\}", value, script)


@pytest.mark.parametrize("launch_template", ["ProcessorLaunchTemplate", "WebLaunchTemplate"])
def test_user_data_is_valid_bash(resources, launch_template: str, tmp_path: Path) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text(substitute(user_data(resources, launch_template)))
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make setup installs it where apt-get works)")
    run = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout


def test_processor_user_data_installs_the_wheel_and_runs_a_service(resources) -> None:
    script = substitute(user_data(resources, "ProcessorLaunchTemplate"))
    wheel = "s3://artifacts/pipe/0123/imagepipe-0.1.0-py3-none-any.whl"
    assert f'aws s3 cp --only-show-errors "{wheel}"' in script
    # The GPU extra's dependencies come from the hashed requirements, the project's wheel alone.
    assert 'pip install --quiet --no-index --no-deps "$wheel"' in script
    unit = heredoc(script, "UNIT")
    assert "ExecStart=/opt/imagepipe/venv/bin/imagepipe processor\n" in unit
    assert "Restart=always\n" in unit
    assert "EnvironmentFile=/etc/imagepipe/env\n" in unit
    assert "StandardOutput=append:/var/log/imagepipe/processor.log" in unit
    assert "systemctl enable --now \"imagepipe-processor@$i.service\"" in script
    env = environment(script)
    assert {"IMAGEPIPE_BUCKET", "IMAGEPIPE_QUEUE", "IMAGEPIPE_TABLE",
            "AWS_DEFAULT_REGION"} <= set(env)
    raw = user_data(resources, "ProcessorLaunchTemplate")
    assert "IMAGEPIPE_BUCKET=${Bucket}\n" in raw and "IMAGEPIPE_QUEUE=${Queue}\n" in raw
    assert "IMAGEPIPE_TABLE=${ResultsTable}\n" in raw


def test_web_instances_signal_cloudformation_once_healthy(resources) -> None:
    group = resources["WebGroup"]
    assert group["CreationPolicy"]["ResourceSignal"]["Count"] == {"Ref": "WebInstances"}
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["WaitOnResourceSignals"] is True and rolling["MaxBatchSize"] == 1
    script = substitute(user_data(resources, "WebLaunchTemplate"))
    assert '--resource WebGroup --region "us-east-1"' in script
    healthy = script.index("curl -fsS -o /dev/null http://127.0.0.1:8000/healthz")
    assert script.index("signal 0", healthy) > healthy
    assert "trap 'echo \"imagepipe bootstrap failed at line $LINENO\"; signal 1' ERR" in script


def test_web_user_data_runs_gunicorn_on_the_target_groups_port(resources) -> None:
    script = substitute(user_data(resources, "WebLaunchTemplate"))
    unit = heredoc(script, "UNIT")
    assert "ExecStart=/opt/imagepipe/venv/bin/imagepipe web --bind 0.0.0.0:8000" in unit
    assert "Restart=always\n" in unit
    assert props(resources, "WebTargetGroup")["Port"] == 8000
    assert props(resources, "WebTargetGroup")["HealthCheckPath"] == "/healthz"
    # The front's part of the wheelhouse, by hash: no TensorFlow, no GPU extra, no index.
    assert '"$release/requirements-front.txt" "$dist/requirements.txt"' in script
    assert '"$release/wheels-front.txt" "$dist/wheels.txt"' in script
    assert 'pip install --quiet --no-index --no-deps "$wheel"' in script and "[gpu]" not in script
    env = environment(script)
    assert env["IMAGEPIPE_HOST"] == "0.0.0.0" and env["IMAGEPIPE_PORT"] == "8000"
    # Behind the load balancer: rate limits must see the client's address, not the balancer's.
    assert env["IMAGEPIPE_TRUSTED_PROXIES"] == "1"
    assert env["FORWARDED_ALLOW_IPS"] == "*"


def test_web_front_signs_in_against_the_stacks_pool_and_counts_quotas(template, resources
                                                                      ) -> None:
    raw = environment(user_data(resources, "WebLaunchTemplate"))
    assert raw["IMAGEPIPE_USER_POOL_ID"] == "${UserPool}"
    assert raw["IMAGEPIPE_USER_POOL_CLIENT_ID"] == "${UserPoolClient}"
    assert raw["IMAGEPIPE_AUTH"] == "on"
    assert raw["IMAGEPIPE_DAILY_QUOTA"] == "${DailyQuota}"
    # The pool is in the stack's region, the one the front's clients use.
    assert raw["AWS_DEFAULT_REGION"] == "${AWS::Region}"
    quota = template["Parameters"]["DailyQuota"]
    assert (quota["Type"], quota["Default"], quota["MinValue"]) == ("Number", 1000, 1)
    # The processors need none of it.
    processor = environment(user_data(resources, "ProcessorLaunchTemplate"))
    assert not {"IMAGEPIPE_USER_POOL_ID", "IMAGEPIPE_AUTH", "IMAGEPIPE_DAILY_QUOTA"} & set(
        processor)


def test_the_stack_never_turns_sign_in_off() -> None:
    text = TEMPLATE.read_text()
    assert "IMAGEPIPE_AUTH=off" not in text
    assert re.findall(r"IMAGEPIPE_AUTH\s*[=:]\s*\S*", text) == ["IMAGEPIPE_AUTH=on"]


@pytest.mark.parametrize("launch_template", ["ProcessorLaunchTemplate", "WebLaunchTemplate"])
def test_services_get_only_variables_the_settings_know(resources, launch_template: str) -> None:
    known = {v.name for v in documented_variables()}
    env = environment(substitute(user_data(resources, launch_template)))
    ours = {name for name in env if name.startswith(("IMAGEPIPE_", "AWS_"))}
    assert ours <= known, ours - known


def test_cloudwatch_agent_ships_the_logs_and_publishes_in_the_allowed_namespace(resources
                                                                                ) -> None:
    raw = user_data(resources, "ProcessorLaunchTemplate")
    config = json.loads(heredoc(raw, "AGENT"))
    files = config["logs"]["logs_collected"]["files"]["collect_list"]
    assert {f["log_group_name"] for f in files} == {"${ProcessorLogGroup}"}
    assert "/var/log/imagepipe/processor.log" in {f["file_path"] for f in files}
    assert config["metrics"]["namespace"] == "imagepipe/${AWS::StackName}"
    web = json.loads(heredoc(user_data(resources, "WebLaunchTemplate"), "AGENT"))
    assert {f["log_group_name"] for f in web["logs"]["logs_collected"]["files"]["collect_list"]
            } == {"${WebLogGroup}"}


def heredoc(script: str, marker: str) -> str:
    match = re.search(rf"<<'{marker}'\n(.*?)\n{marker}\n", script, re.S)
    assert match, marker
    return match.group(1)


def environment(script: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in heredoc(script, "ENV").splitlines())


# ---------------------------------------------------------------- outputs

def test_outputs_name_the_web_url_bucket_queue_and_table(template) -> None:
    outputs = render(template["Outputs"])
    assert outputs["BucketName"]["Value"] == "${Bucket}"
    assert outputs["QueueUrl"]["Value"] == "${Queue}"
    assert outputs["TableName"]["Value"] == "${ResultsTable}"
    # With a certificate the page is at WebOrigin, its name, which a rule makes required.
    assert outputs["WebUrl"]["Value"] == {"Fn::If": [
        "HasWebOrigin", "${WebOrigin}", "http://${LoadBalancer.DNSName}"]}


def test_outputs_name_the_pool_its_client_and_region_and_the_web_acl(template) -> None:
    # What imagepipe users add and the CLI's sign-in need, and the ACL to look at in the console.
    outputs = render(template["Outputs"])
    assert outputs["UserPoolId"]["Value"] == "${UserPool}"
    assert outputs["UserPoolClientId"]["Value"] == "${UserPoolClient}"
    assert outputs["UserPoolRegion"]["Value"] == "${AWS::Region}"
    assert outputs["WebAclArn"]["Value"] == "${WebAcl.Arn}"


# ---------------------------------------------------------------- draining (processor.lifecycle)

def test_processor_group_has_a_launching_and_a_terminating_hook(resources) -> None:
    hooks = {h["LifecycleHookName"]: h
             for h in props(resources, "ProcessorGroup")["LifecycleHookSpecificationList"]}
    assert hooks == {
        # In service only once the model is warm; a boot that never gets there is terminated.
        "imagepipe-launching": {
            "LifecycleHookName": "imagepipe-launching",
            "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
            "HeartbeatTimeout": 1200, "DefaultResult": "ABANDON"},
        # Drained first; a processor that goes silent is let go after the timeout anyway.
        "imagepipe-terminating": {
            "LifecycleHookName": "imagepipe-terminating",
            "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
            "HeartbeatTimeout": 300, "DefaultResult": "CONTINUE"},
    }
    from processor.lifecycle import HOOK_HEARTBEAT_SECONDS
    # Heartbeats come often enough to keep a long drain's hook open.
    assert hooks["imagepipe-terminating"]["HeartbeatTimeout"] >= HOOK_HEARTBEAT_SECONDS * 2
    # A healthy boot is given longer than the health check's grace period.
    assert hooks["imagepipe-launching"]["HeartbeatTimeout"] >= props(
        resources, "ProcessorGroup")["HealthCheckGracePeriod"]


def test_processors_are_told_their_group_hooks_and_ready_marker(resources) -> None:
    script = substitute(user_data(resources, "ProcessorLaunchTemplate"))
    lifecycle = dict(line.split("=", 1) for line in re.search(
        r"<<LIFECYCLE\n(.*?)\nLIFECYCLE\n", script, re.S).group(1).splitlines())
    hooks = {h["LifecycleTransition"]: h["LifecycleHookName"]
             for h in props(resources, "ProcessorGroup")["LifecycleHookSpecificationList"]}
    assert lifecycle == {
        "IMAGEPIPE_LIFECYCLE_GROUP": "$group",
        "IMAGEPIPE_LAUNCH_HOOK": hooks["autoscaling:EC2_INSTANCE_LAUNCHING"],
        "IMAGEPIPE_TERMINATE_HOOK": hooks["autoscaling:EC2_INSTANCE_TERMINATING"],
        "IMAGEPIPE_READY_FILE": "/run/imagepipe/ready",
    }
    assert set(lifecycle) <= {v.name for v in documented_variables()}
    assert "cat >> /etc/imagepipe/env <<LIFECYCLE" in script
    # The group's name comes from Auto Scaling itself, for this instance (IMDSv2 token first).
    assert '--instance-ids "$instance_id"' in script
    assert "X-aws-ec2-metadata-token-ttl-seconds" in script
    # Written before any processor starts.
    assert script.index("<<LIFECYCLE") < script.index("systemctl enable --now")


def test_a_drained_processor_stays_stopped_and_the_marker_directory_is_shared(resources
                                                                              ) -> None:
    from processor.__main__ import EXIT_DRAINED

    unit = heredoc(substitute(user_data(resources, "ProcessorLaunchTemplate")), "UNIT")
    assert f"RestartPreventExitStatus={EXIT_DRAINED}\n" in unit
    # /run/imagepipe, the marker's directory: one per instance, not removed as one of the
    # processes stops (the last one out removes the marker itself).
    assert "RuntimeDirectory=imagepipe\n" in unit
    assert "RuntimeDirectoryPreserve=yes\n" in unit


def test_a_failed_bootstrap_terminates_the_instance(resources) -> None:
    data = props(resources, "ProcessorLaunchTemplate")["LaunchTemplateData"]
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    script = user_data(resources, "ProcessorLaunchTemplate")
    assert "trap 'on_error $LINENO' ERR" in script and "shutdown -h now" in script


def test_processors_may_complete_only_their_own_groups_hooks(resources) -> None:
    statements = {s.get("Sid"): s for s in role_statements(resources, "ProcessorRole")}
    hooks = statements["CompleteLifecycleHooks"]
    assert set(hooks["Action"]) == {"autoscaling:CompleteLifecycleAction",
                                    "autoscaling:RecordLifecycleActionHeartbeat"}
    assert hooks["Resource"] == GROUP_ARN
    assert hooks["Condition"] == {"StringEquals": GROUP_TAGS}
    assert statements["FindTheGroup"]["Action"] == "autoscaling:DescribeAutoScalingInstances"
    # The web role has no part in it.
    assert not any("autoscaling:" in str(s["Action"])
                   for s in role_statements(resources, "WebRole"))


def test_an_alarm_catches_processors_up_but_processing_nothing(resources) -> None:
    alarm = render(props(resources, "ProcessorsUpButIdleAlarm"))
    metrics = {m["Id"]: m for m in alarm["Metrics"]}
    stat = {i: (m["MetricStat"]["Metric"]["Namespace"], m["MetricStat"]["Metric"]["MetricName"],
                m["MetricStat"]["Metric"]["Dimensions"], m["MetricStat"]["Stat"])
            for i, m in metrics.items() if "MetricStat" in m}
    queue = [{"Name": "QueueName", "Value": "${Queue.QueueName}"}]
    interactive = [{"Name": "QueueName", "Value": "${InteractiveQueue.QueueName}"}]
    assert stat == {
        "visible": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", queue, "Minimum"),
        "deleted": ("AWS/SQS", "NumberOfMessagesDeleted", queue, "Sum"),
        "ivisible": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", interactive, "Minimum"),
        "ideleted": ("AWS/SQS", "NumberOfMessagesDeleted", interactive, "Sum"),
        "inservice": ("AWS/AutoScaling", "GroupInServiceInstances",
                      [{"Name": "AutoScalingGroupName", "Value": "${ProcessorGroup}"}],
                      "Minimum"),
    }
    # The group publishes GroupInServiceInstances.
    collected = props(resources, "ProcessorGroup")["MetricsCollection"][0]["Metrics"]
    assert "GroupInServiceInstances" in collected
    (returned,) = [m for m in metrics.values() if m.get("ReturnData", True)]
    assert returned["Expression"] == (
        "IF(FILL(inservice, 0) > 0 AND FILL(visible, 0) + FILL(ivisible, 0) > 0 AND "
        "FILL(deleted, 0) + FILL(ideleted, 0) == 0, 1, 0)")
    # 15 minutes of it, every datapoint: a slow batch or a quiet period is not an alarm.
    periods = {m["MetricStat"]["Period"] for m in metrics.values() if "MetricStat" in m}
    assert periods == {300}
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 3
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (
        1, "GreaterThanOrEqualToThreshold")
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["AlarmActions"] == alarm["OKActions"] == ["${AlarmTopic}"]

# ---------------------------------------------------------------- front door and data

CERTIFICATE = "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789"


def _evaluate(value: Any, parameters: dict[str, str]) -> Any:
    """A rule's condition or assertion, with these parameter values (the functions rules use)."""
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            return parameters[arg]
        if fn == "Fn::Equals":
            left, right = (_evaluate(a, parameters) for a in arg)
            return str(left) == str(right)
        if fn == "Fn::Not":
            return not _evaluate(arg[0], parameters)
        if fn == "Fn::And":
            return all(_evaluate(a, parameters) for a in arg)
        if fn == "Fn::Or":
            return any(_evaluate(a, parameters) for a in arg)
        raise AssertionError(f"a rule function this test does not evaluate: {fn}")
    return value


def rule_failures(template: dict[str, Any], **given: str) -> list[str]:
    """The rules a stack with these parameters (the rest at their defaults) would fail."""
    parameters = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    parameters.update(given)
    for name, value in given.items():
        pattern = template["Parameters"][name].get("AllowedPattern")
        assert pattern is None or re.fullmatch(pattern, value), (name, value)
    failed = []
    for name, rule in template["Rules"].items():
        if not _evaluate(rule.get("RuleCondition", True), parameters):
            continue
        if not all(_evaluate(a["Assert"], parameters) for a in rule["Assertions"]):
            failed.append(name)
    return failed


def test_https_is_required_outside_a_dev_stage(template) -> None:
    # The default stage is production, where a stack without a certificate is refused.
    assert template["Parameters"]["Stage"]["Default"] == "prod"
    assert rule_failures(template) == ["HttpsOutsideDev"]
    assert rule_failures(template, Stage="prod", CertificateArn=CERTIFICATE,
                         WebOrigin="https://images.example.com") == []
    # A certificate without the origin it names, or an origin without a certificate.
    assert rule_failures(template, CertificateArn=CERTIFICATE) == ["OriginOfTheCertificate"]
    assert rule_failures(template, Stage="dev",
                         WebOrigin="https://images.example.com") == [
        "NoOriginWithoutCertificate"]
    # A dev stage may serve plain HTTP on the load balancer's own name.
    assert rule_failures(template, Stage="dev") == []


@pytest.mark.parametrize("origin", ["http://images.example.com", "https://Images.example.com",
                                    "https://images.example.com/", "images.example.com"])
def test_the_origin_is_https_and_lowercase_as_browsers_send_it(template, origin: str) -> None:
    pattern = template["Parameters"]["WebOrigin"]["AllowedPattern"]
    assert re.fullmatch(pattern, "https://images.example.com")
    assert re.fullmatch(pattern, "https://images.example.com:8443")
    assert not re.fullmatch(pattern, origin)


def test_http_redirects_to_https_with_a_certificate(resources) -> None:
    (action,) = props(resources, "HttpListener")["DefaultActions"]
    redirect, forward = action["Fn::If"][1:]
    assert action["Fn::If"][0] == "HasCertificate"
    assert redirect == {"Type": "redirect", "RedirectConfig": {
        "Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"}}
    assert forward["Type"] == "forward"
    https = resources["HttpsListener"]
    assert https["Condition"] == "HasCertificate"
    assert https["Properties"]["Protocol"] == "HTTPS"
    assert https["Properties"]["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    assert render(https["Properties"]["Certificates"]) == [{"CertificateArn": "${CertificateArn}"}]


def test_the_load_balancer_logs_every_request_to_its_own_bucket(template, resources) -> None:
    attributes = {a["Key"]: render(a["Value"])
                  for a in props(resources, "LoadBalancer")["LoadBalancerAttributes"]}
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["access_logs.s3.bucket"] == "${AccessLogsBucket}"
    prefix = attributes["access_logs.s3.prefix"]
    # The load balancer checks it may write when logging is turned on: the policy comes first.
    assert resources["LoadBalancer"]["DependsOn"] == "AccessLogsBucketPolicy"
    bucket = props(resources, "AccessLogsBucket")
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    # Load balancers write logs encrypted with S3's keys only.
    (encryption,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    (expiry,) = bucket["LifecycleConfiguration"]["Rules"]
    assert render(expiry["ExpirationInDays"]) == "${LogRetentionDays}"
    statements = props(resources, "AccessLogsBucketPolicy")["PolicyDocument"]["Statement"]
    delivery, tls = statements
    condition, by_account, by_service = delivery["Fn::If"]
    assert condition == "ElbLogsByAccount"
    writes = f"${{AccessLogsBucket.Arn}}/{prefix}/AWSLogs/${{AWS::AccountId}}/*"
    for statement in (by_account, by_service):
        assert statement["Effect"] == "Allow" and statement["Action"] == "s3:PutObject"
        assert render(statement["Resource"]) == writes
    assert by_service["Principal"] == {
        "Service": "logdelivery.elasticloadbalancing.amazonaws.com"}
    assert tls["Effect"] == "Deny" and tls["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}}
    # Every region the account mapping knows is one that the condition sends to it.
    regions = {e["Fn::Equals"][1] for part in "ABC"
               for e in template["Conditions"][f"ElbLogsByAccount{part}"]["Fn::Or"]}
    assert regions == set(template["Mappings"]["ElbLogAccounts"])
    assert all(re.fullmatch(r"[0-9]{12}", a["Account"])
               for a in template["Mappings"]["ElbLogAccounts"].values())


@pytest.mark.parametrize("name", ["Bucket", "ResultsTable", "AccessLogsBucket"])
def test_data_outlives_the_stack(resources, name: str) -> None:
    # Deleting the stack, or replacing the resource, keeps it (imagepipe destroy --delete-data
    # is the way out); the table also refuses any DeleteTable while protected.
    assert resources[name]["DeletionPolicy"] == "Retain"
    assert resources[name]["UpdateReplacePolicy"] == "Retain"


def test_the_table_is_protected_from_deletion(resources) -> None:
    assert props(resources, "ResultsTable")["DeletionProtectionEnabled"] is True


def test_images_expire_by_setting(template, resources) -> None:
    parameter = template["Parameters"]["ImageExpiryDays"]
    assert parameter["Default"] == 0 and parameter["MinValue"] == 0
    assert template["Conditions"]["HasImageExpiry"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ImageExpiryDays"}, 0]}]}
    rules = props(resources, "Bucket")["LifecycleConfiguration"]["Rules"]
    (conditional,) = [r for r in rules if "Fn::If" in r]
    condition, rule, otherwise = conditional["Fn::If"]
    assert condition == "HasImageExpiry" and otherwise == {"Ref": "AWS::NoValue"}
    assert rule["Status"] == "Enabled" and "Prefix" not in rule and "Filter" not in rule
    assert rule["ExpirationInDays"] == {"Ref": "ImageExpiryDays"}


def test_results_expire_by_setting_on_every_instance(template, resources) -> None:
    parameter = template["Parameters"]["ResultExpiryDays"]
    assert parameter["Default"] == 0 and parameter["MinValue"] == 0
    for launch_template in ("ProcessorLaunchTemplate", "WebLaunchTemplate"):
        assert "IMAGEPIPE_RESULT_EXPIRY_DAYS=${ResultExpiryDays}\n" in user_data(
            resources, launch_template)
    # The records' expiry and the quota counters share the table's one TTL attribute.
    assert props(resources, "ResultsTable")["TimeToLiveSpecification"]["AttributeName"] == (
        TTL_ATTRIBUTE)

# ---------------------------------------------------------------- scaling, boots and deploys

def test_the_simulated_policy_is_the_templates(template, resources) -> None:
    parameters = template["Parameters"]
    assert parameters["MessagesPerProcess"]["Default"] == MESSAGES_PER_PROCESS
    assert parameters["ProcessesPerInstance"]["Default"] == Fleet().processes
    # The wake-up steps, relative to the alarm's threshold of one visible message.
    alarm = props(resources, "WakeFromZeroAlarm")
    steps = props(resources, "WakeFromZeroPolicy")["StepAdjustments"]
    assert [(alarm["Threshold"] + s["MetricIntervalLowerBound"], s["ScalingAdjustment"])
            for s in steps] == list(WAKE_STEPS)
    for lower, upper in itertools.pairwise(steps):
        assert lower["MetricIntervalUpperBound"] == upper["MetricIntervalLowerBound"]
    assert "MetricIntervalUpperBound" not in steps[-1]
    # The warmups cover the simulated boot, and stay under the old 15 minutes.
    for policy in ("BacklogPerInstancePolicy", "WakeFromZeroPolicy"):
        assert Fleet().boot_s <= props(resources, policy)["EstimatedInstanceWarmup"] <= 900


def test_spot_draws_on_three_gpu_types_in_every_subnet_of_the_stack(template, resources
                                                                    ) -> None:
    parameters = template["Parameters"]
    names = ["ProcessorInstanceType", "ProcessorInstanceType2", "ProcessorInstanceType3"]
    defaults = [parameters[n]["Default"] for n in names]
    assert len({d.split(".")[0] for d in defaults}) == 3  # T4, A10G, L4: separate Spot pools
    for name in names:
        assert parameters[name]["AllowedValues"] == parameters[names[0]]["AllowedValues"]
    group = props(resources, "ProcessorGroup")
    policy = group["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == [
        {"Ref": n} for n in names]
    distribution = policy["InstancesDistribution"]
    assert distribution["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert distribution["OnDemandAllocationStrategy"] == "prioritized"
    subnets = {name for name, r in resources.items() if r["Type"] == "AWS::EC2::Subnet"}
    assert {ref["Ref"] for ref in group["VPCZoneIdentifier"]} == subnets
    assert group["CapacityRebalance"] == {"Fn::If": ["SpotCapacity", True, False]}


def test_deploys_replace_processors_one_by_one_once_each_new_one_is_ready(template, resources
                                                                           ) -> None:
    group = resources["ProcessorGroup"]
    creation = group["CreationPolicy"]["ResourceSignal"]
    assert creation["Count"] == {"Ref": "ProcessorMinSize"}
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["WaitOnResourceSignals"] is True
    assert rolling["MaxBatchSize"] == 1 and rolling["MinSuccessfulInstancesPercent"] == 100
    # One stays in service; CloudFormation requires fewer than MaxSize.
    assert rolling["MinInstancesInService"] == 1
    assert template["Parameters"]["ProcessorMaxSize"]["MinValue"] > 1
    # Scaling and health replacements would fight the update (and AZRebalance would terminate
    # the instances it launches); launching and terminating must stay.
    assert set(rolling["SuspendProcesses"]) == {
        "HealthCheck", "ReplaceUnhealthy", "AZRebalance", "AlarmNotification", "ScheduledActions"}
    # The signal waits up to 10 minutes for the model; CloudFormation waits longer than that.
    script = substitute(user_data(resources, "ProcessorLaunchTemplate"))
    tries, pause = re.search(r"for _ in \$\(seq 1 (\d+)\); do\n  if \[ -e /run/imagepipe/ready",
                             script).groups()[0], 5
    wait_s = int(tries) * pause
    for timeout in (creation["Timeout"], rolling["PauseTime"]):
        minutes = int(re.fullmatch(r"PT(\d+)M", timeout).group(1))
        assert minutes * 60 > wait_s + 300  # plus the boot and the install before it


def test_processor_signals_cloudformation_once_its_model_is_ready(resources) -> None:
    script = substitute(user_data(resources, "ProcessorLaunchTemplate"))
    assert "aws-cfn-bootstrap" in script
    assert '--resource ProcessorGroup --region "us-east-1"' in script
    started = script.index('systemctl enable --now "imagepipe-processor@$i.service"')
    ready = script.index("if [ -e /run/imagepipe/ready ]; then", started)
    assert script.index("signal 0", ready) > ready
    assert "signal 0" not in script[:ready]
    # A failed bootstrap, or a processor that never becomes ready, signals failure.
    on_error = script[script.index("on_error() {"):script.index("}", script.index("on_error"))]
    assert "signal 1" in on_error
    assert script.rstrip().endswith('on_error "$LINENO (the processor never became ready)"')


@pytest.mark.parametrize("launch_template", ["ProcessorLaunchTemplate", "WebLaunchTemplate"])
def test_instances_install_only_the_hashed_wheelhouse(resources, launch_template: str) -> None:
    script = substitute(user_data(resources, launch_template))
    assert "--upgrade" not in script
    installs = [line for line in script.replace("\\\n", " ").splitlines()
                if "pip install" in line]
    assert len(installs) == 2
    assert all("--no-index" in line for line in installs)
    (deps,) = [line for line in installs if "-r " in line]
    for flag in ("--require-hashes", "--only-binary :all:", '--find-links "$dist/wheelhouse"'):
        assert flag in deps
    assert '-r "$dist/requirements.txt"' in deps
    assert "/opt/imagepipe/venv/bin/pip check" in script
    # On the Python the tests ran on (deploy writes it beside the requirements).
    assert 'python="python$(cat "$dist/python-version")"' in script
    assert '"$python" -m venv /opt/imagepipe/venv' in script
    assert "python3.12" not in script
    # Where the script looks is where imagepipe deploy puts them (WheelKey
    # <stack>/<release>/<wheel>; the release's manifests beside it; <stack>/wheelhouse/).
    lines = [line for line in script.splitlines()
             if line.startswith(("release=", "wheelhouse="))]
    run = subprocess.run(["bash", "-c", "\n".join(lines) + '\necho "$release $wheelhouse"'],
                         capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["s3://artifacts/pipe/0123", "s3://artifacts/pipe/wheelhouse"]
    front = "-front" if launch_template == "WebLaunchTemplate" else ""
    for manifest in (f"requirements{front}.txt", f"wheels{front}.txt", "python-version"):
        assert f'"$release/{manifest}"' in script


def test_the_processor_ami_is_pinned_per_release(template, resources) -> None:
    pin = template["Parameters"]["ProcessorImagePin"]
    assert pin["Default"] == ""
    assert re.fullmatch(pin["AllowedPattern"], "ami-0123456789abcdef0")
    assert re.fullmatch(pin["AllowedPattern"], "")
    assert not re.fullmatch(pin["AllowedPattern"], "/aws/service/x")
    assert template["Conditions"]["PinnedProcessorImage"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ProcessorImagePin"}, ""]}]}


def test_result_events_go_to_a_topic_the_webhook_queue_and_the_events_servers(template,
                                                                            resources) -> None:
    topic = props(resources, "ResultsTopic")
    assert topic["KmsMasterKeyId"] == "alias/aws/sns"
    subscription = render(props(resources, "WebhookSubscription"))
    assert subscription == {"TopicArn": "${ResultsTopic}", "Protocol": "sqs",
                            "Endpoint": "${WebhookQueue.Arn}", "RawMessageDelivery": True}
    # Deliveries are retried for a day: the queue keeps them longer.
    assert props(resources, "WebhookQueue")["MessageRetentionPeriod"] > 86400
    policy = render(props(resources, "WebhookQueuePolicy"))["PolicyDocument"]["Statement"][0]
    assert policy["Condition"] == {"ArnEquals": {"aws:SourceArn": "${ResultsTopic}"}}
    # /api/events goes to the events server on 8001, on whichever listener serves
    for rule, listener in (("EventsRuleHttps", "HttpsListener"),
                           ("EventsRuleHttp", "HttpListener")):
        rendered = render(props(resources, rule))
        assert rendered["ListenerArn"] == f"${{{listener}}}"
        assert rendered["Actions"] == [{"Type": "forward",
                                        "TargetGroupArn": "${EventsTargetGroup}"}]
    assert props(resources, "EventsTargetGroup")["Port"] == 8001
    assert "${EventsTargetGroup}" in render(props(resources, "WebGroup")["TargetGroupARNs"])
    assert "ResultsTopicArn" in template["Outputs"]


def test_processors_and_fronts_are_told_the_topic(resources) -> None:
    processor = user_data(resources, "ProcessorLaunchTemplate")
    web = user_data(resources, "WebLaunchTemplate")
    assert "IMAGEPIPE_RESULTS_TOPIC=${ResultsTopic}" in processor
    assert "IMAGEPIPE_WEBHOOK_QUEUE=${WebhookQueue}" in processor
    assert "IMAGEPIPE_RESULTS_TOPIC=${ResultsTopic}" in web
    assert "ExecStart=/opt/imagepipe/venv/bin/imagepipe events" in web
