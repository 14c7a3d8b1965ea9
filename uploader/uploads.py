"""Plain functions behind the upload routes: new uploads, stored images, waiting for results."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.formats import key_suffix
from imagepipe.core.ids import new_image_id, upload_key
from imagepipe.core.polling import poll
from imagepipe.core.records import ResultRecord, ResultStore, StoreError
from imagepipe.core.services import Services
from uploader.presign import PresignedUpload, presign_upload

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewUpload:
    image_id: str
    key: str
    upload: PresignedUpload


def _new_image(services: Services, content_type: str, owner: str | None) -> tuple[str, str]:
    """A new image ID and its key, with its pending record written: the ID answers at once."""
    settings = services.settings
    image_id = new_image_id()
    key = upload_key(image_id, key_suffix(content_type), owner)
    services.store.create_pending(ResultRecord(image_id=image_id, bucket=settings.bucket,
                                               key=key, source="upload", owner=owner))
    return image_id, key


def start_upload(services: Services, content_type: str, owner: str | None) -> NewUpload:
    """Choose the key, presign the POST and write the pending record."""
    settings = services.settings
    image_id, key = _new_image(services, content_type, owner)
    upload = presign_upload(
        services.clients.s3,
        settings.bucket,
        key,
        content_type,
        settings.max_upload_bytes,
        settings.presign_expires_seconds,
    )
    logger.info("presigned upload %s (%s)", image_id, content_type)
    return NewUpload(image_id=image_id, key=key, upload=upload)


def store_image(services: Services, data: bytes, content_type: str, owner: str | None) -> str:
    """Put the image in the bucket like any upload; the S3 event starts its processing."""
    settings = services.settings
    image_id, key = _new_image(services, content_type, owner)
    try:
        services.clients.s3.put_object(
            Bucket=settings.bucket, Key=key, Body=data, ContentType=content_type
        )
    except (ClientError, BotoCoreError) as exc:
        raise StoreError(f"storing {key}: {exc}", error_code(exc)) from exc
    logger.info("stored image %s (%d bytes, %s)", image_id, len(data), content_type)
    return image_id


def wait_for_result(store: ResultStore, image_id: str, timeout: float) -> ResultRecord | None:
    """Poll until the image is done or failed, backing off; the last record read, or None."""
    return poll(lambda: store.get(image_id),
                lambda record: record is None or record.status != "pending", timeout)
