"""HTTP routes of the results API."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from imagepipe.core.catalog import LITE_MODELS, ModelError, describe_model
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
def healthz() -> Any:
    """Answers while the front is up; it does not call AWS."""
    return jsonify({"status": "ok"})
