"""HTTP routes of the upload front: parse and validate, then call uploader.uploads."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from flask import Blueprint, current_app, jsonify, request, url_for

from imagepipe.core.auth import auth_config, current_caller, new_owner, public
from imagepipe.core.egress import check_url
from imagepipe.core.errors import ApiError, too_many_requests
from imagepipe.core.formats import CONTENT_TYPES, sniff_content_type
from imagepipe.core.quota import DAILY_QUOTA, QuotaExceeded, Reservation
from imagepipe.core.services import current_services
from imagepipe.core.webhooks import SIGNATURE_HEADER, WebhookStore
from uploader.fetch import fetch_image
from uploader.ratelimit import rate_limited
from uploader.uploads import (
    give_back_quietly,
    reserve_image,
    start_upload,
    store_image,
    wait_for_result,
)

bp = Blueprint("uploader", __name__)

_BAD_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\]")
_MAX_FILENAME = 255
MAX_JSON_BYTES = 16 * 1024
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def _json_object() -> dict[str, Any]:
    # These bodies are a few fields; the app-wide cap is sized for images.
    request.max_content_length = MAX_JSON_BYTES
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return body


def _count_image() -> Reservation | None:
    """One more image on the caller's daily quota; 429 quota_exceeded when it is spent.

    None when there is nobody to count: admins are exempt, and with sign-in off there are no
    users, so no quota (the rate limit per address still holds).
    """
    caller = current_caller()
    if caller is None or caller.is_admin:
        return None
    try:
        return reserve_image(current_services(), current_app.extensions[DAILY_QUOTA],
                             caller.sub)
    except QuotaExceeded as exc:
        raise too_many_requests(
            "quota_exceeded", f"you have added your {exc.limit} images for today; the count "
            "starts again at midnight UTC", exc.retry_after, quota=exc.limit) from None


def _webhooks() -> WebhookStore:
    services = current_services()
    return WebhookStore(services.clients.dynamodb, services.settings.table)


def _checked_callback(url: Any) -> str:
    """A callback URL the deliverer may reach (the import guard's rules); a 4xx if not."""
    if not isinstance(url, str) or not url.strip():
        raise ApiError(400, "invalid_callback_url", "callback_url must be a non-empty URL")
    return check_url(url, current_services().settings.callback_allow_list())


def _callback_url(body: dict[str, Any]) -> str | None:
    """The request's callback URL, checked, or None; refused until the caller has a secret."""
    if body.get("callback_url") is None:
        return None
    url = _checked_callback(body["callback_url"])
    if not _webhooks().user(new_owner()).secret:
        raise ApiError(409, "no_webhook_secret",
                       "create your signing secret first: POST /api/webhook/secret")
    return url


def _result_url(image_id: str) -> str:
    return url_for("results_api.get_result", image_id=image_id, _external=True)


@bp.post("/api/uploads")
@rate_limited
def create_upload() -> Any:
    """Presign a direct-to-S3 upload of one image."""
    settings = current_services().settings
    body = _json_object()
    filename = body.get("filename")
    content_type = body.get("content_type")
    size = body.get("size")
    missing = [name for name in ("filename", "content_type", "size") if body.get(name) is None]
    if missing:
        raise ApiError(400, "missing_field", f"missing field(s): {', '.join(missing)}")
    if not isinstance(filename, str) or not filename.strip() or len(filename) > _MAX_FILENAME:
        raise ApiError(400, "invalid_filename",
                       f"filename must be a non-empty string of at most {_MAX_FILENAME} characters")
    if _BAD_FILENAME.search(filename):
        raise ApiError(400, "invalid_filename",
                       "filename must not contain path separators or control characters")
    if not isinstance(content_type, str) or content_type.lower() not in CONTENT_TYPES:
        raise ApiError(400, "unsupported_content_type",
                       f"content_type must be one of {', '.join(CONTENT_TYPES)}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ApiError(400, "invalid_size", "size must be a positive integer number of bytes")
    if size > settings.max_upload_bytes:
        raise ApiError(400, "too_large",
                       f"size {size} is more than the {settings.max_upload_bytes} byte limit",
                       max_bytes=settings.max_upload_bytes)
    callback = _callback_url(body)
    counted = _count_image()
    upload = start_upload(current_services(), content_type.lower(), new_owner(), counted,
                          callback)
    return jsonify({
        "image_id": upload.image_id,
        "upload": {"url": upload.upload.url, "fields": upload.upload.fields},
        "result_url": _result_url(upload.image_id),
        "expires_at": upload.upload.expires_at,
    }), 201


@bp.get("/api/config")
@public
def config() -> Any:
    """What clients check before uploading, and where they sign in (public facts)."""
    settings = current_services().settings
    return jsonify({
        "max_upload_bytes": settings.max_upload_bytes,
        "max_pixels": settings.max_pixels,
        "content_types": list(CONTENT_TYPES),
        "unsure_below": settings.unsure_below,
        "auth": auth_config(settings),
        # The page's live results (server-sent events); it polls when this does not answer.
        "events_url": settings.events_url,
    })


@bp.post("/api/imports")
@rate_limited
def create_import() -> Any:
    """Fetch an image from a public URL into the bucket; answered like POST /api/uploads."""
    services = current_services()
    settings = services.settings
    body = _json_object()
    url = body.get("url")
    if url is None:
        raise ApiError(400, "missing_field", "missing field(s): url")
    if not isinstance(url, str):
        raise ApiError(400, "invalid_url", "url must be a string")
    callback = _callback_url(body)
    counted = _count_image()
    try:
        fetched = fetch_image(
            url,
            max_bytes=settings.max_upload_bytes,
            timeout=settings.import_timeout_seconds,
            allow=settings.import_allow_list(),
        )
    except Exception:
        # Nothing was added: a URL that cannot be fetched costs no image of the day.
        if counted is not None:
            give_back_quietly(counted)
        raise
    image_id = store_image(services, fetched.data, fetched.content_type, new_owner(), counted,
                           callback)
    return jsonify({
        "image_id": image_id,
        "status": "pending",
        "result_url": _result_url(image_id),
    }), 201


@bp.get("/api/webhook")
def get_webhook() -> Any:
    """The caller's default callback URL, and whether they have a signing secret (never it)."""
    webhook = _webhooks().user(new_owner())
    return jsonify({"url": webhook.url or None, "has_secret": bool(webhook.secret)})


@bp.put("/api/webhook")
def put_webhook() -> Any:
    """Register the caller's default callback URL (null removes it)."""
    url = _json_object().get("url")
    checked = "" if url is None else _checked_callback(url)
    webhook = _webhooks().set_default_url(new_owner(), checked)
    return jsonify({"url": webhook.url or None, "has_secret": bool(webhook.secret)})


@bp.post("/api/webhook/secret")
@rate_limited
def rotate_webhook_secret() -> Any:
    """A new signing secret for the caller's deliveries, shown this once; the old one ends."""
    return jsonify({"secret": _webhooks().rotate_secret(new_owner()),
                    "header": SIGNATURE_HEADER}), 201


@bp.post("/api/image_recognition")
@rate_limited
def image_recognition() -> Any:
    """The seed's synchronous API: store the image, wait a little for its result."""
    services = current_services()
    data = _posted_image()
    if len(data) > services.settings.max_upload_bytes:
        raise ApiError(413, "too_large",
                       f"the image is more than the {services.settings.max_upload_bytes} "
                       "byte limit", max_bytes=services.settings.max_upload_bytes)
    content_type = sniff_content_type(data)
    if content_type is None:
        raise ApiError(400, "not_an_image",
                       f"the data is not a supported image ({', '.join(CONTENT_TYPES)})")
    counted = _count_image()
    image_id = store_image(services, data, content_type, new_owner(), counted)
    record = wait_for_result(services.store, image_id, services.settings.sync_wait_seconds)
    if record is None or record.status == "pending":
        return jsonify({"image_id": image_id, "status": "pending",
                        "result_url": _result_url(image_id)}), 202
    body = dict(record.to_json())
    body["result_url"] = _result_url(image_id)
    return jsonify(body), 200


def _posted_image() -> bytes:
    """The image bytes of a multipart `file` field or a base64 `img` form field."""
    upload = request.files.get("file")
    if upload is not None:
        data = upload.read()
    elif "img" in request.form:
        data = _decode_base64(request.form["img"])
    else:
        raise ApiError(400, "missing_field",
                       "send the image as multipart field 'file' or base64 form field 'img'")
    if not data:
        raise ApiError(400, "empty_image", "the image is empty")
    return data


def _decode_base64(text: str) -> bytes:
    text = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", "field 'img' is not valid base64") from None
