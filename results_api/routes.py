"""HTTP routes of the results API."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from imagepipe.core.errors import ApiError
from imagepipe.core.ids import image_id_for_object, is_image_id
from imagepipe.core.records import BATCH_GET_MAX, STATUSES, InvalidCursor
from imagepipe.core.services import current_services

bp = Blueprint("results_api", __name__)

_MAX_KEY_BYTES = 1024
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_LABEL = 100
MAX_CURSOR = 2048


@bp.get("/api/results/<image_id>")
def get_result(image_id: str) -> Any:
    """The result of one image, pending, done or failed."""
    if not is_image_id(image_id):
        raise ApiError(400, "invalid_image_id", "an image ID is 22 URL-safe base64 characters")
    return _found(image_id)


@bp.get("/api/results")
def list_results() -> Any:
    """?key= finds one object's result; otherwise a page of results, filtered and paged."""
    args = request.args
    if "key" in args:
        return _by_key(args["key"])
    limit = _int_arg("limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    min_score = _float_arg("min_score", low=0.0, high=1.0)
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
            label=label, status=status, min_score=min_score, limit=limit, cursor=cursor
        )
    except InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return jsonify({
        "results": [record.to_json() for record in page.records],
        "next_cursor": page.next_cursor,
    })


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
        if record is None:
            results.append({"image_id": image_id, "status": "not_found",
                            "error": {"code": "not_found", "message": f"no image {image_id}"}})
        else:
            results.append(dict(record.to_json()))
    return jsonify({"results": results})


def _by_key(key: str) -> Any:
    if not key or len(key.encode()) > _MAX_KEY_BYTES:
        raise ApiError(400, "invalid_key", f"an object key is 1 to {_MAX_KEY_BYTES} bytes")
    return _found(image_id_for_object(current_services().settings.bucket, key))


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be between {low} and {high}")
    return value


def _float_arg(name: str, low: float, high: float) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be a number") from None
    if not low <= value <= high:  # also refuses NaN
        raise ApiError(400, "invalid_parameter", f"{name} must be between {low} and {high}")
    return value


def _found(image_id: str) -> Any:
    record = current_services().store.get(image_id)
    if record is None:
        raise ApiError(404, "not_found", f"no image {image_id}")
    return jsonify(record.to_json())


@bp.get("/healthz")
def healthz() -> Any:
    """Answers while the front is up; it does not call AWS."""
    return jsonify({"status": "ok"})
