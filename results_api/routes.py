"""HTTP routes of the results API."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from imagepipe.core.errors import ApiError
from imagepipe.core.ids import image_id_for_object, is_image_id
from imagepipe.core.services import current_services

bp = Blueprint("results_api", __name__)

_MAX_KEY_BYTES = 1024


@bp.get("/api/results/<image_id>")
def get_result(image_id: str) -> Any:
    """The result of one image, pending, done or failed."""
    if not is_image_id(image_id):
        raise ApiError(400, "invalid_image_id", "an image ID is 22 URL-safe base64 characters")
    return _found(image_id)


@bp.get("/api/results")
def find_result() -> Any:
    """The result of the object at ?key= in the pipeline's bucket."""
    key = request.args.get("key")
    if key is None:
        raise ApiError(400, "missing_parameter", "give the object key as ?key=")
    if not key or len(key.encode()) > _MAX_KEY_BYTES:
        raise ApiError(400, "invalid_key", f"an object key is 1 to {_MAX_KEY_BYTES} bytes")
    return _found(image_id_for_object(current_services().settings.bucket, key))


def _found(image_id: str) -> Any:
    record = current_services().store.get(image_id)
    if record is None:
        raise ApiError(404, "not_found", f"no image {image_id}")
    return jsonify(record.to_json())


@bp.get("/healthz")
def healthz() -> Any:
    """Answers while the front is up; it does not call AWS."""
    return jsonify({"status": "ok"})
