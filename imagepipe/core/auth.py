"""Sign-in on every request: who the caller is, and what they may see.

The app factory runs `authenticate` before each request. A view marked `public` is open to
anyone; every other one needs an access token, from an `Authorization: Bearer` header (the
CLI, scripts) or from the session cookie the front sets at sign-in (the page). A write made
with the cookie must also carry the CSRF token, which only the page's own script can read.
With IMAGEPIPE_AUTH=off nobody signs in and everybody sees everything.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request

from imagepipe.core.errors import ApiError
from imagepipe.core.identity import Caller, InvalidToken, KeysUnavailable
from imagepipe.core.records import ResultRecord
from imagepipe.core.services import current_services
from imagepipe.core.settings import Settings

logger = logging.getLogger(__name__)

# The page's session: the access token (HttpOnly), the refresh token (HttpOnly, sent only to
# the session endpoints) and the CSRF token (readable by the page's script, echoed in a header).
ACCESS_COOKIE = "imagepipe_access"
REFRESH_COOKIE = "imagepipe_refresh"
CSRF_COOKIE = "imagepipe_csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

View = TypeVar("View", bound=Callable[..., Any])


def public(view: View) -> View:
    """Mark a view as open to anyone, signed in or not."""
    view.imagepipe_public = True  # type: ignore[attr-defined]
    return view


def auth_config(settings: Settings) -> dict[str, Any]:
    """Where clients sign in: public facts, as Amplify's configuration holds them."""
    if not settings.auth:
        return {"required": False}
    return {
        "required": True,
        "region": settings.region,
        "user_pool_id": settings.user_pool_id,
        "client_id": settings.user_pool_client_id,
        # The local stack's Cognito answers at the AWS endpoint; AWS's at its own address.
        "endpoint": settings.endpoint_url,
    }


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def authenticate() -> None:
    """Find the caller of this request, or refuse it (401, 403) unless its view is public."""
    g.imagepipe_caller = None
    services = current_services()
    if not services.settings.auth or request.endpoint is None:
        return  # no sign-in at all; or no such route, which answers 404 for everyone
    view = current_app.view_functions.get(request.endpoint)
    if getattr(view, "imagepipe_public", False):
        return
    token, from_cookie = _token()
    if token is None:
        raise unauthorized("sign in first: send an access token as Authorization: Bearer")
    assert services.verifier is not None
    try:
        caller = services.verifier.verify(token)
    except InvalidToken as exc:
        logger.info("refused a token for %s %s: %s", request.method, request.path, exc)
        raise unauthorized("the access token is not valid; sign in again") from None
    except KeysUnavailable as exc:
        logger.warning("%s", exc)
        raise ApiError(503, "identity_unavailable",
                       "sign-in cannot be checked right now; try again shortly") from None
    if from_cookie and request.method not in _SAFE_METHODS:
        check_csrf()
    g.imagepipe_caller = caller


def check_csrf() -> None:
    """A write made with the session cookie must echo the CSRF cookie in a header, which only
    the page's own script can read; a cross-site form cannot."""
    sent = request.headers.get(CSRF_HEADER, "")
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent, expected):
        raise ApiError(403, "csrf_failed",
                       f"a write signed in by cookie needs the {CSRF_HEADER} header")


def _token() -> tuple[str | None, bool]:
    """The access token of the request, and whether it came from the session cookie."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthorized("the Authorization header must be: Bearer <access token>")
        return value.strip(), False
    cookie = request.cookies.get(ACCESS_COOKIE)
    return (cookie, True) if cookie else (None, False)


def current_caller() -> Caller | None:
    """The signed-in caller; None when sign-in is off."""
    caller = g.get("imagepipe_caller")
    if caller is None and current_services().settings.auth:
        # Only a public view runs without a caller, and it must not ask whose data to show.
        raise unauthorized("sign in first")
    return caller


def owner_scope() -> str | None:
    """Whose results the caller may list: their own; everyone's (None) for admins."""
    caller = current_caller()
    return None if caller is None or caller.is_admin else caller.sub


def new_owner() -> str | None:
    """Who an image the caller adds belongs to."""
    caller = current_caller()
    return caller.sub if caller is not None else None


def may_see(record: ResultRecord) -> bool:
    """Whether the caller may see this result: their own, or any for admins."""
    scope = owner_scope()
    return scope is None or record.owner == scope
