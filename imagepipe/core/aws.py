"""boto3 client construction, the same for every service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from imagepipe.core.settings import Settings


@dataclass(frozen=True)
class Clients:
    """The low-level clients a service uses; boto3 clients are thread-safe, resources are not."""

    s3: Any
    sqs: Any
    dynamodb: Any
    # The user pool: the front signs people in through it, provisioning and `users` manage it.
    cognito: Any = None
    # The results topic: the processor publishes an event per result to it.
    sns: Any = None


def client_config(settings: Settings, **overrides: Any) -> Config:
    """Retries with backoff and jitter, bounded timeouts, and path-style S3 on a local endpoint."""
    options: dict[str, Any] = {
        "region_name": settings.region,
        "retries": {"mode": "standard", "max_attempts": 5},
        "connect_timeout": 5,
        # Long polls hold a connection for up to 20 s; leave room above that.
        "read_timeout": 30,
        "max_pool_connections": 32,
    }
    if settings.endpoint_url:
        # A local endpoint has no per-bucket DNS names.
        options["s3"] = {"addressing_style": "path"}
    options.update(overrides)
    return Config(**options)


def make_clients(
    settings: Settings,
    session: boto3.session.Session | None = None,
    *,
    max_attempts: int = 5,
    read_timeout: int = 30,
) -> Clients:
    """Create the S3, SQS and DynamoDB clients for these settings."""
    session = session or boto3.session.Session()
    config = client_config(
        settings,
        retries={"mode": "standard", "max_attempts": max_attempts},
        read_timeout=read_timeout,
    )

    def client(service: str, extra: Config | None = None) -> Any:
        merged = config.merge(extra) if extra else config
        return session.client(service, endpoint_url=settings.endpoint_url, config=merged)

    # Presigned URLs signed with SigV4, which every region accepts (SigV2 is refused by many).
    s3 = client("s3", Config(signature_version="s3v4"))
    return Clients(s3=s3, sqs=client("sqs"), dynamodb=client("dynamodb"),
                   cognito=client("cognito-idp"), sns=client("sns"))


def queue_url(sqs: Any, name_or_url: str) -> str:
    """Accept a queue URL as it is, or look a queue name up."""
    if name_or_url.startswith(("https://", "http://")):
        return name_or_url
    return sqs.get_queue_url(QueueName=name_or_url)["QueueUrl"]


def topic_arn(sns: Any, name_or_arn: str) -> str:
    """Accept a topic ARN as it is, or find (creating it if need be) the topic of that name."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    # CreateTopic of an existing name answers its ARN; only provisioning roles may call it.
    return sns.create_topic(Name=name_or_arn)["TopicArn"]


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, or "" for anything else."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def presigned_get(s3: Any, bucket: str, key: str, expires_seconds: int,
                  content_type: str | None = None) -> str:
    """A URL that reads one object for a while without credentials, as `content_type`."""
    params: dict[str, str] = {"Bucket": bucket, "Key": key}
    if content_type:
        params["ResponseContentType"] = content_type
    return s3.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds)


def bucket_origins(s3: Any, bucket: str) -> tuple[str, ...]:
    """The origins a browser reaches the bucket at, for presigned POSTs and GETs.

    Signing is local, so this makes no request; it needs credentials only to sign.
    """
    urls = (
        s3.generate_presigned_post(Bucket=bucket, Key="origin-probe", ExpiresIn=60)["url"],
        presigned_get(s3, bucket, "origin-probe", 60),
    )
    origins = []
    for url in urls:
        parts = urlsplit(url)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return tuple(dict.fromkeys(origins))
