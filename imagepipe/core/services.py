"""What the HTTP blueprints get from the app: settings, clients and the result store."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from imagepipe.core.aws import Clients
from imagepipe.core.identity import TokenVerifier
from imagepipe.core.records import ResultStore
from imagepipe.core.settings import Settings

EXTENSION = "imagepipe"


@dataclass(frozen=True)
class Services:
    settings: Settings
    clients: Clients
    store: ResultStore
    # Verifies the callers' access tokens; None only when sign-in is off.
    verifier: TokenVerifier | None = None


def current_services() -> Services:
    """The services of the app handling the current request."""
    return current_app.extensions[EXTENSION]
