"""Serves the page and its static files; the page's session endpoints come with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, send_from_directory

from imagepipe.core.auth import CSRF_COOKIE, CSRF_HEADER, public
from imagepipe.core.formats import FORMATS, SNIFF_BYTES
from web.session import bp as session_bp

STATIC = Path(__file__).parent / "static"

bp = Blueprint("web", __name__)
bp.register_blueprint(session_bp)


@bp.get("/")
@public
def index() -> Any:
    return send_from_directory(STATIC, "index.html")


@bp.get("/results/<image_id>")
@public
def result_page(image_id: str) -> Any:
    """A page per result, to bookmark; its script asks the API, which checks who may see it."""
    return send_from_directory(STATIC, "result.html")


@bp.get("/static/formats.js")
@public
def formats_module() -> Response:
    """The image-format table as a JavaScript module, so that the page keeps no copy of it."""
    return Response(formats_javascript(), mimetype="text/javascript")


def formats_javascript() -> str:
    """imagepipe.core.formats.FORMATS as the page's module: types, names and signatures."""
    table = [
        {
            "contentType": image_format.mime_type,
            "name": image_format.name,
            # Each signature: [offset, [byte, ...]] runs that must all be there.
            "signatures": [[[offset, list(run)] for offset, run in signature]
                           for signature in image_format.signatures],
        }
        for image_format in FORMATS
    ]
    return ("// Served from imagepipe/core/formats.py: the image formats the pipeline accepts.\n"
            f"export const FORMATS = {json.dumps(table)};\n"
            f"export const SNIFF_BYTES = {SNIFF_BYTES};\n")


@bp.get("/static/csrf.js")
@public
def csrf_module() -> Response:
    """The names of the CSRF cookie and header as a JavaScript module, kept in one place."""
    return Response(csrf_javascript(), mimetype="text/javascript")


def csrf_javascript() -> str:
    """imagepipe.core.auth's CSRF cookie and header, for the page's script."""
    return ("// Served from imagepipe/core/auth.py: echo this cookie in this header on writes.\n"
            f"export const CSRF_COOKIE = {json.dumps(CSRF_COOKIE)};\n"
            f"export const CSRF_HEADER = {json.dumps(CSRF_HEADER)};\n")


@bp.get("/static/<path:name>")
@public
def static_file(name: str) -> Any:
    return send_from_directory(STATIC, name)
