"""Serves the page and its static files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, send_from_directory

STATIC = Path(__file__).parent / "static"

bp = Blueprint("web", __name__)


@bp.get("/")
def index() -> Any:
    return send_from_directory(STATIC, "index.html")


@bp.get("/static/<path:name>")
def static_file(name: str) -> Any:
    return send_from_directory(STATIC, name)
