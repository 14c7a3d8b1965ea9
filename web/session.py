"""The page's session: sign in with a password, tokens kept in cookies the page cannot read.

The front signs in with Cognito for the page (InitiateAuth, USER_PASSWORD_AUTH, the pool's
public app client) and keeps the tokens in HttpOnly cookies, so that a script injected into
the page could not read them; `imagepipe.core.auth` accepts the access cookie on every request
and wants the CSRF token, which only the page's own script can read, echoed on every write.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, TypedDict

import jwt
from botocore.exceptions import ClientError
from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from imagepipe.core.auth import (
    ACCESS_COOKIE,
    CSRF_COOKIE,
    REFRESH_COOKIE,
    check_csrf,
    current_caller,
    public,
)
from imagepipe.core.aws import error_code
from imagepipe.core.errors import ApiError, too_many_requests
from imagepipe.core.identity import Caller, InvalidToken, KeysUnavailable
from imagepipe.core.services import current_services
from imagepipe.core.timestamps import format_utc
from web.attempts import FailedSignIns

logger = logging.getLogger(__name__)

bp = Blueprint("session", __name__)

SIGN_IN_LIMITER = "imagepipe.sign_in_limiter"
SESSION_PATH = "/api/session"
# The app client's RefreshTokenValidity (30 days, the template's and Cognito's default): the
# refresh and CSRF cookies live as long as the refresh token can.
REFRESH_MAX_AGE = 30 * 24 * 3600
# Cognito's own limits on the fields; longer is refused before it is sent.
_MAX_USERNAME = 128
_MAX_PASSWORD = 256
# A wrong password and an unknown user must read the same (no user enumeration); Cognito
# says NotAuthorized for both when the client prevents user existence errors, moto does not.
_WRONG_CREDENTIALS = frozenset({"NotAuthorizedException", "UserNotFoundException"})
_SIGN_IN_FAILED = "the username or password is not right"


class SessionJson(TypedDict):
    username: str
    admin: bool
    expires_at: str | None


@bp.record_once
def _install_limiter(state: BlueprintSetupState) -> None:
    state.app.extensions.setdefault(SIGN_IN_LIMITER, FailedSignIns())


@bp.post(SESSION_PATH)
@public
def sign_in() -> Any:
    """Sign in with a username and password; the session goes into cookies."""
    _sign_in_is_on()
    # A cross-site form can send only form encodings; JSON from another site needs a CORS
    # preflight, which the front never grants. SameSite=Strict does the rest.
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       'send {"username", "password"} as application/json')
    username, password = _credentials()
    address = request.remote_addr or "unknown"
    attempts: FailedSignIns = current_app.extensions[SIGN_IN_LIMITER]
    wait = attempts.wait(address)
    if wait > 0:
        raise too_many_requests("too_many_attempts", "too many failed sign-ins from this address",
                                wait)
    services = current_services()
    try:
        answer = services.clients.cognito.initiate_auth(
            ClientId=services.settings.user_pool_client_id, AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": username, "PASSWORD": password})
    except ClientError as exc:
        if error_code(exc) in _WRONG_CREDENTIALS:
            attempts.failed(address)
            logger.info("failed sign-in from %s", address)
            raise ApiError(401, "sign_in_failed", _SIGN_IN_FAILED) from None
        if error_code(exc) == "PasswordResetRequiredException":
            raise _new_password_required() from None
        raise  # the app answers 503 for the rest: Cognito is unavailable or throttling
    tokens = answer.get("AuthenticationResult")
    if tokens is None:
        # A challenge, e.g. NEW_PASSWORD_REQUIRED for a user made with a temporary password.
        raise _new_password_required()
    caller = _verified(tokens["AccessToken"])
    logger.info("%s signed in from %s", caller.username, address)
    response = jsonify(_session_json(caller, tokens["ExpiresIn"]))
    _set_access(response, tokens["AccessToken"], tokens["ExpiresIn"])
    response.set_cookie(REFRESH_COOKIE, tokens["RefreshToken"], max_age=REFRESH_MAX_AGE,
                        path=SESSION_PATH, secure=True, httponly=True, samesite="Strict")
    # Readable by the page's script, which echoes it in CSRF_HEADER; another site cannot.
    response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(32), max_age=REFRESH_MAX_AGE,
                        path="/", secure=True, httponly=False, samesite="Strict")
    return response


@bp.get(SESSION_PATH)
def who_am_i() -> Any:
    """Who the access token names, and until when it holds; 401 without one."""
    _sign_in_is_on()
    caller = current_caller()
    assert caller is not None
    # The token authenticate() took: the header's when there is one, else the cookie's.
    token = _bearer() or request.cookies.get(ACCESS_COOKIE)
    expires_at = None
    if token:
        # Already verified before this view ran; only its expiry is read here.
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        expires_at = format_utc(float(exp), "seconds") if isinstance(exp, (int, float)) else None
    return jsonify(SessionJson(username=caller.username, admin=caller.is_admin,
                               expires_at=expires_at))


@bp.post(f"{SESSION_PATH}/refresh")
@public
def refresh() -> Any:
    """A new access cookie from the refresh cookie, before the old one expires."""
    _sign_in_is_on()
    refresh_token = request.cookies.get(REFRESH_COOKIE)
    if not refresh_token:
        raise ApiError(401, "no_session", "sign in first")
    check_csrf()
    services = current_services()
    try:
        answer = services.clients.cognito.initiate_auth(
            ClientId=services.settings.user_pool_client_id, AuthFlow="REFRESH_TOKEN_AUTH",
            AuthParameters={"REFRESH_TOKEN": refresh_token})
    except ClientError as exc:
        if error_code(exc) not in _WRONG_CREDENTIALS:
            raise
        # Revoked, expired, or the user was disabled: the session is over.
        response = jsonify(ApiError(401, "session_expired", "sign in again").to_json())
        _clear_cookies(response)
        return response, 401
    tokens = answer["AuthenticationResult"]
    caller = _verified(tokens["AccessToken"])
    response = jsonify(_session_json(caller, tokens["ExpiresIn"]))
    _set_access(response, tokens["AccessToken"], tokens["ExpiresIn"])
    return response


@bp.delete(SESSION_PATH)
@public
def sign_out() -> Any:
    """Forget the session: revoke the refresh token, clear the cookies."""
    _sign_in_is_on()
    refresh_token = request.cookies.get(REFRESH_COOKIE)
    access_token = request.cookies.get(ACCESS_COOKIE)
    if refresh_token or access_token:
        check_csrf()
        _revoke(refresh_token, access_token)
    response = Response(status=204)
    _clear_cookies(response)
    return response


def _revoke(refresh_token: str | None, access_token: str | None) -> None:
    """Revoke the refresh token, or else sign the user out everywhere; never fail sign-out.

    Access tokens are checked against the pool's keys, not asked of Cognito, so one that was
    copied stays good until it expires (at most an hour): revoking stops new ones.
    """
    services = current_services()
    cognito = services.clients.cognito
    if refresh_token:
        try:
            cognito.revoke_token(Token=refresh_token,
                                 ClientId=services.settings.user_pool_client_id)
            return
        # moto has no RevokeToken: in process it raises NotImplementedError, as a server an
        # error; Cognito may also be briefly unavailable. Signing out still has to work.
        except Exception as exc:
            logger.info("could not revoke the refresh token (%s); signing out instead", exc)
    if access_token:
        try:
            # Ends every session of this user (all their devices), which is more than asked
            # for but the only other way to stop the refresh token.
            cognito.global_sign_out(AccessToken=access_token)
        except Exception as exc:
            logger.warning("could not sign the session out at Cognito: %s", exc)


def _sign_in_is_on() -> None:
    if not current_services().settings.auth:
        raise ApiError(404, "sign_in_off",
                       "sign-in is off on this front (IMAGEPIPE_AUTH=off): nothing to sign into")


def _credentials() -> tuple[str, str]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not username.strip() or len(username) > _MAX_USERNAME:
        raise ApiError(400, "invalid_username",
                       f"username must be a non-empty string of at most {_MAX_USERNAME} "
                       "characters")
    if not isinstance(password, str) or not password or len(password) > _MAX_PASSWORD:
        raise ApiError(400, "invalid_password",
                       f"password must be a non-empty string of at most {_MAX_PASSWORD} "
                       "characters")
    return username.strip(), password


def _bearer() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _verified(access_token: str) -> Caller:
    """Who a token fresh from Cognito names, checked as every request will check it."""
    verifier = current_services().verifier
    assert verifier is not None
    try:
        return verifier.verify(access_token)
    except (InvalidToken, KeysUnavailable) as exc:
        # Another pool or client than the front checks, or the keys cannot be read.
        logger.error("Cognito's own token does not verify: %s", exc)
        raise ApiError(503, "identity_unavailable",
                       "sign-in cannot be checked right now; try again shortly") from None


def _session_json(caller: Caller, expires_in: int) -> SessionJson:
    return SessionJson(username=caller.username, admin=caller.is_admin,
                       expires_at=format_utc(time.time() + expires_in, "seconds"))


def _set_access(response: Response, access_token: str, expires_in: int) -> None:
    response.set_cookie(ACCESS_COOKIE, access_token, max_age=expires_in, path="/", secure=True,
                        httponly=True, samesite="Strict")


def _clear_cookies(response: Response) -> None:
    for name, path, httponly in ((ACCESS_COOKIE, "/", True),
                                 (REFRESH_COOKIE, SESSION_PATH, True),
                                 (CSRF_COOKIE, "/", False)):
        response.delete_cookie(name, path=path, secure=True, httponly=httponly,
                               samesite="Strict")


def _new_password_required() -> ApiError:
    return ApiError(403, "new_password_required",
                    "this account needs a new password: ask an operator to set one "
                    "(imagepipe users add NAME sets a new one)")
