"""Create the bucket, queues, table and notification the pipeline needs, idempotently.

The local stack and the tests use this; on AWS the CloudFormation template does the same.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from imagepipe.core.aws import Clients, error_code, queue_url, topic_arn
from imagepipe.core.records import INDEXES
from imagepipe.core.records.codec import TTL_ATTRIBUTE
from imagepipe.core.settings import Settings
from imagepipe.core.users import ensure_user_pool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    bucket: str
    queue_url: str
    queue_arn: str
    dead_letter_queue_url: str
    table: str
    user_pool_id: str
    user_pool_client_id: str
    # The results topic and the webhook deliverer's queue on it; "" when the settings have none.
    topic_arn: str = ""
    webhook_queue_url: str = ""


def provision(settings: Settings, clients: Clients) -> Resources:
    """Make sure every resource exists and is wired up; safe to run again."""
    dlq_url = _ensure_queue(clients, settings.dead_letter_queue, {})
    dlq_arn = _queue_arn(clients, dlq_url)
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receives})
    main_url = _ensure_queue(
        clients,
        settings.queue,
        {"RedrivePolicy": redrive, "VisibilityTimeout": str(settings.visibility_timeout)},
    )
    main_arn = _queue_arn(clients, main_url)
    _ensure_bucket(clients, settings)
    _ensure_cors(clients, settings)
    _ensure_notification(clients, settings.bucket, main_arn)
    _ensure_table(clients, settings.table)
    pool = ensure_user_pool(clients.cognito, settings)
    topic = topic_arn(clients.sns, settings.results_topic) if settings.results_topic else ""
    webhook_url = ""
    if topic and settings.webhook_queue:
        webhook_url = _ensure_queue(clients, settings.webhook_queue, {})
        subscribe_queue(clients, topic, webhook_url)
    logger.info("resources ready: bucket %s, queue %s, table %s, user pool %s, topic %s",
                settings.bucket, main_url, settings.table, pool.pool_id, topic or "none")
    return Resources(settings.bucket, main_url, main_arn, dlq_url, settings.table,
                     pool.pool_id, pool.client_id, topic, webhook_url)


def subscribe_queue(clients: Clients, topic: str, url: str,
                    filter_policy: dict[str, Any] | None = None) -> str:
    """Subscribe an SQS queue to the topic with raw delivery (the event as the body); its ARN.

    SNS answers the existing subscription when the same one is made again.
    """
    arn = _queue_arn(clients, url)
    # The topic may send to the queue: what the queue policy says on AWS.
    clients.sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"},
                       "Action": "sqs:SendMessage", "Resource": arn,
                       "Condition": {"ArnEquals": {"aws:SourceArn": topic}}}]})})
    attributes = {"RawMessageDelivery": "true"}
    if filter_policy:
        attributes["FilterPolicy"] = json.dumps(filter_policy)
    return clients.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn,
                                 Attributes=attributes, ReturnSubscriptionArn=True
                                 )["SubscriptionArn"]


def _ensure_queue(clients: Clients, name_or_url: str, attributes: dict[str, str]) -> str:
    try:
        url = queue_url(clients.sqs, name_or_url)
    except ClientError as exc:
        if error_code(exc) not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise
        url = clients.sqs.create_queue(QueueName=name_or_url, Attributes=attributes)["QueueUrl"]
        logger.info("created queue %s", url)
        return url
    if attributes:
        clients.sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def _queue_arn(clients: Clients, url: str) -> str:
    attrs = clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return attrs["Attributes"]["QueueArn"]


def _ensure_bucket(clients: Clients, settings: Settings) -> None:
    try:
        clients.s3.head_bucket(Bucket=settings.bucket)
        return
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    params: dict[str, object] = {"Bucket": settings.bucket}
    if settings.region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
    clients.s3.create_bucket(**params)
    clients.s3.put_public_access_block(
        Bucket=settings.bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    logger.info("created bucket %s", settings.bucket)


def cors_rules(settings: Settings) -> list[dict[str, Any]]:
    """The bucket's CORS: the page's origins may POST uploads, nothing else.

    Thumbnails are <img> loads of presigned GETs, which browsers make without CORS, so GET
    is not allowed cross-origin. The upload POST is preflighted because the page listens to
    its progress; it sends no headers beyond the form's own.
    """
    return [{
        "ID": "imagepipe-web-uploads",
        "AllowedOrigins": list(settings.web_origin_list()),
        "AllowedMethods": ["POST"],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 600,
    }]


def _ensure_cors(clients: Clients, settings: Settings) -> None:
    # Replaced on every run, so a change of IMAGEPIPE_WEB_ORIGINS takes effect.
    clients.s3.put_bucket_cors(
        Bucket=settings.bucket, CORSConfiguration={"CORSRules": cors_rules(settings)}
    )


def _ensure_notification(clients: Clients, bucket: str, queue_arn: str) -> None:
    config = {
        "QueueConfigurations": [
            {"Id": "imagepipe-object-created", "QueueArn": queue_arn,
             "Events": ["s3:ObjectCreated:*"]}
        ]
    }
    clients.s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration=config
    )


def table_definition(table: str) -> dict[str, Any]:
    """The results table: keyed by image ID, with the indexes the results API queries."""
    attributes = {"image_id": "S"}
    for index in INDEXES:
        attributes[index.partition] = "S"
        attributes[index.sort] = index.sort_type
    return {
        "TableName": table,
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": kind} for name, kind in attributes.items()
        ],
        "KeySchema": [{"AttributeName": "image_id", "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index.name,
                "KeySchema": [
                    {"AttributeName": index.partition, "KeyType": "HASH"},
                    {"AttributeName": index.sort, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index in INDEXES
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def _ensure_table(clients: Clients, table: str) -> None:
    try:
        description = clients.dynamodb.describe_table(TableName=table)["Table"]
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    else:
        _add_missing_indexes(clients, table, description)
        return
    try:
        clients.dynamodb.create_table(**table_definition(table))
    except ClientError as exc:
        # Another process created it between our describe and create.
        if error_code(exc) != "ResourceInUseException":
            raise
    clients.dynamodb.get_waiter("table_exists").wait(TableName=table)
    # The daily quota counters go the day after their day; results, if they expire by setting.
    clients.dynamodb.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"AttributeName": TTL_ATTRIBUTE, "Enabled": True})
    logger.info("created table %s", table)


def _add_missing_indexes(clients: Clients, table: str, description: dict[str, Any]) -> None:
    """Add the indexes that a table made by an older version lacks."""
    # DynamoDB fills a new index in the background; queries may use it once it is ACTIVE.
    existing = {gsi["IndexName"] for gsi in description.get("GlobalSecondaryIndexes", [])}
    definition = table_definition(table)
    for gsi in definition["GlobalSecondaryIndexes"]:
        if gsi["IndexName"] in existing:
            continue
        try:
            clients.dynamodb.update_table(
                TableName=table,
                AttributeDefinitions=definition["AttributeDefinitions"],
                GlobalSecondaryIndexUpdates=[{"Create": gsi}],
            )
        except ClientError as exc:
            # DynamoDB builds one new index at a time; the next provision adds the rest.
            if error_code(exc) not in ("LimitExceededException", "ResourceInUseException"):
                raise
            logger.warning("index %s of table %s not added yet (%s); run provision again later",
                           gsi["IndexName"], table, error_code(exc))
            continue
        logger.info("adding index %s to table %s", gsi["IndexName"], table)
