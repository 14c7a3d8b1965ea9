"""HTTP routes of the results API."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from flask import Blueprint, current_app, jsonify, redirect, request

from imagepipe.core.auth import may_see, owner_scope, public
from imagepipe.core.aws import error_code, presigned_get, queue_url
from imagepipe.core.catalog import LITE_MODELS, ModelError, describe_model
from imagepipe.core.errors import ApiError
from imagepipe.core.formats import by_pillow_name
from imagepipe.core.hierarchy import imagenet_hierarchy
from imagepipe.core.ids import image_id_for_object, is_image_id
from imagepipe.core.quota import DAILY_QUOTA, never_arrived
from imagepipe.core.records import (
    BATCH_GET_MAX,
    STATUSES,
    InvalidCursor,
    ResultRecord,
    StoreError,
)
from imagepipe.core.services import current_services
from imagepipe.core.webhooks import WebhookStore

logger = logging.getLogger(__name__)

bp = Blueprint("results_api", __name__)

_MAX_KEY_BYTES = 1024
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_LABEL = 100
DEFAULT_WORDS = 10
MAX_WORDS = 50
MAX_CURSOR = 2048
# Long enough to load a page of thumbnails, short enough that a leaked link soon dies.
IMAGE_LINK_SECONDS = 300



@bp.get("/api/results/<image_id>")
def get_result(image_id: str) -> Any:
    """The result of one image, pending, done or failed."""
    if not is_image_id(image_id):
        raise ApiError(400, "invalid_image_id", "an image ID is 22 URL-safe base64 characters")
    return _found(image_id)


@bp.delete("/api/results/<image_id>")
def delete_result(image_id: str) -> Any:
    """Remove an image: its object, then its record with every index entry of it.

    204 whenever the caller can no longer see the image afterwards: deleting again, deleting
    what never was, and deleting someone else's (which is left alone) all answer alike, so
    the answer tells nobody whether an image they may not see exists.
    """
    if not is_image_id(image_id):
        raise ApiError(400, "invalid_image_id", "an image ID is 22 URL-safe base64 characters")
    services = current_services()
    record = services.store.get(image_id)
    if record is not None and may_see(record):
        # A cancelled upload (pending, never sent) gives its unit of the day's quota back.
        unsent = (record.status == "pending" and record.source == "upload"
                  and record.owner is not None and DAILY_QUOTA in current_app.extensions
                  and never_arrived(services.clients.s3, record))
        # The object first: if that fails the record is still there to find and delete again.
        try:
            # The bucket keeps no versions: this leaves nothing of the image in it.
            services.clients.s3.delete_object(Bucket=record.bucket, Key=record.key)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"deleting {record.key}: {exc}", error_code(exc)) from exc
        if not (unsent and current_app.extensions[DAILY_QUOTA].refund_cancelled(record)):
            services.store.delete(record)
        WebhookStore(services.clients.dynamodb, services.store.table).forget_callback(image_id)
        logger.info("deleted image %s", image_id)
    return "", 204


@bp.get("/api/results/<image_id>/image")
def result_image(image_id: str) -> Any:
    """Redirect to a short-lived presigned GET of a classified image (gallery thumbnails)."""
    if not is_image_id(image_id):
        raise ApiError(400, "invalid_image_id", "an image ID is 22 URL-safe base64 characters")
    services = current_services()
    record = _visible(image_id)
    # The processor records Pillow's name of the format; S3 is told to answer with its type.
    image_format = by_pillow_name(record.image.format or "")
    # Only images the processor decoded: S3 then serves bytes known to be that image type,
    # whatever content type the object was stored with.
    if record.status != "done" or image_format is None:
        raise ApiError(404, "no_image", f"image {image_id} is {record.status}, not viewable")
    url = presigned_get(services.clients.s3, record.bucket, record.key, IMAGE_LINK_SECONDS,
                        image_format.mime_type)
    response = redirect(url, 302)
    response.headers["Cache-Control"] = f"private, max-age={IMAGE_LINK_SECONDS // 2}"
    return response


@bp.get("/api/results")
def list_results() -> Any:
    """?key= finds one object's result; otherwise a page of results, filtered and paged."""
    args = request.args
    if "key" in args:
        return _by_key(args["key"])
    limit = int(_number_arg("limit", int, 1, MAX_LIMIT) or DEFAULT_LIMIT)
    min_score = _number_arg("min_score", float, 0.0, 1.0)
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "invalid_parameter", f"status must be one of {', '.join(STATUSES)}")
    label = args.get("label")
    if label is not None and not 1 <= len(label.strip()) <= MAX_LABEL:
        raise ApiError(400, "invalid_parameter", f"label must be 1 to {MAX_LABEL} characters")
    cursor = args.get("cursor") or None
    if cursor is not None and len(cursor) > MAX_CURSOR:
        raise ApiError(400, "invalid_cursor", "the cursor is too long")
    try:
        page = current_services().store.list_results(
            label=label, status=status, min_score=min_score, limit=limit, cursor=cursor,
            owner=owner_scope(),
        )
    except InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return jsonify({
        # A record past its expiry is gone for the API, though DynamoDB's TTL may lag days.
        "results": [record.to_json() for record in page.records if not record.expired()],
        "next_cursor": page.next_cursor,
    })


@bp.get("/api/words")
def words() -> Any:
    """Search words that start with ?prefix=, for the filter's suggestions.

    From the ImageNet hierarchy's words (class and category names and their synonyms), by a
    bisection of its sorted list: no result is read.
    """
    prefix = request.args.get("prefix", "")
    if len(prefix) > MAX_LABEL:
        raise ApiError(400, "invalid_parameter", f"prefix must be at most {MAX_LABEL} characters")
    limit = int(_number_arg("limit", int, 1, MAX_WORDS) or DEFAULT_WORDS)
    return jsonify({"words": imagenet_hierarchy().suggest(prefix, limit)})


@bp.post("/api/results/batch")
def batch_results() -> Any:
    """The results of up to 100 images in the order asked; unknown IDs as not_found entries."""
    body = request.get_json(silent=True)
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not 1 <= len(ids) <= BATCH_GET_MAX:
        raise ApiError(400, "invalid_ids",
                       f'send {{"ids": [...]}} with 1 to {BATCH_GET_MAX} image IDs')
    invalid = [i for i in ids if not isinstance(i, str) or not is_image_id(i)]
    if invalid:
        raise ApiError(400, "invalid_image_id",
                       "an image ID is 22 URL-safe base64 characters", invalid=invalid[:10])
    found = current_services().store.get_many(ids)
    results: list[dict[str, Any]] = []
    for image_id in ids:
        record = found.get(image_id)
        if record is None or not may_see(record) or record.expired():
            results.append({"image_id": image_id, "status": "not_found",
                            "error": {"code": "not_found", "message": f"no image {image_id}"}})
        else:
            results.append(dict(record.to_json()))
    return jsonify({"results": results})


def _by_key(key: str) -> Any:
    if not key or len(key.encode()) > _MAX_KEY_BYTES:
        raise ApiError(400, "invalid_key", f"an object key is 1 to {_MAX_KEY_BYTES} bytes")
    return _found(image_id_for_object(current_services().settings.bucket, key))


def _number_arg(name: str, kind: type[int] | type[float], low: float, high: float
                ) -> float | None:
    """A numeric query parameter within bounds, or None when absent."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be a number") from None
    if not low <= value <= high:  # also refuses NaN
        raise ApiError(400, "invalid_parameter", f"{name} must be between {low} and {high}")
    return value


def _visible(image_id: str) -> ResultRecord:
    """The caller's own record of an image; anyone else's answers exactly as a missing one."""
    record = current_services().store.get(image_id)
    if record is None or not may_see(record) or record.expired():
        raise ApiError(404, "not_found", f"no image {image_id}")
    return record


def _found(image_id: str) -> Any:
    return jsonify(_visible(image_id).to_json())


@bp.get("/api/models")
def list_models() -> Any:
    """The model the processor is configured to serve, and the shipped ones it could switch to."""
    settings = current_services().settings
    names = [settings.model] + [name for name in LITE_MODELS if name != settings.model]
    models = []
    for name in names:
        in_use = name == settings.model
        try:
            info = describe_model(name, settings.model_weights, settings.model_labels)
        except ModelError as exc:
            if in_use:
                raise ApiError(503, "model_unavailable", str(exc)) from None
            continue  # a Lite variant whose package is not installed
        models.append({**info.to_json(), "in_use": in_use})
    return jsonify({"models": models, "top_k": settings.top_k, "min_score": settings.min_score})


@bp.get("/healthz")
@public
def healthz() -> Any:
    """Answers while the front is up; it does not call AWS. Says so when sign-in is off."""
    if not current_services().settings.auth:
        return jsonify({"status": "ok", "auth": "off: sign-in is off, anyone who reaches the "
                        "front may see and add every image"})
    return jsonify({"status": "ok", "auth": "on"})


@bp.get("/readyz")
@public
def readyz() -> Any:
    """200 when the table, the bucket and the queue all answer; 503 naming those that do not."""
    services = current_services()
    settings, clients = services.settings, services.clients
    probes = {
        # A read of an ID no image has: the front's own permission, and a real table round trip.
        "table": lambda: services.store.get("readiness-probe"),
        # A listing, not a HEAD: the same s3:ListBucket on AWS, and the action moto checks.
        "bucket": lambda: clients.s3.list_objects_v2(Bucket=settings.bucket, MaxKeys=1),
        "queue": lambda: clients.sqs.get_queue_attributes(
            QueueUrl=queue_url(clients.sqs, settings.queue), AttributeNames=["QueueArn"]),
    }
    checks: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            probe()
        except (ClientError, BotoCoreError, StoreError) as exc:
            logger.warning("not ready: the %s does not answer: %s", name, exc)
            checks[name] = error_code(exc.__cause__ or exc) or type(exc).__name__
        else:
            checks[name] = "ok"
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        raise ApiError(503, "not_ready", f"no answer from the {', '.join(failing)}",
                       checks=checks)
    return jsonify({"status": "ready", "checks": checks})
