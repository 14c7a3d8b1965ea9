"""The command line signs in: the front says where, Cognito answers, the access token goes along.

`imagepipe login` asks the front's `GET /api/config` for the user pool, signs in with
`InitiateAuth` (USER_PASSWORD_AUTH) and keeps only the refresh token (imagepipe.cli.saved_login).
A command that calls the front turns that into a fresh access token once per run
(REFRESH_TOKEN_AUTH) and sends it as `Authorization: Bearer`. These Cognito calls are made by
a public app client and are not signed: no AWS credentials are needed or looked for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.cli.http import new_session
from imagepipe.cli.saved_login import SavedLogin, load_login
from imagepipe.core.aws import error_code

logger = logging.getLogger(__name__)

SIGN_IN_FIRST = "sign in first: imagepipe login"
# Both mean "no such user or not this password"; saying which would tell who has an account.
_WRONG_PASSWORD = frozenset({"NotAuthorizedException", "UserNotFoundException"})


class SignInError(Exception):
    """Signing in did not work; the message is one line for the person at the terminal."""


class NotSignedIn(SignInError):
    """The front wants a token and there is no usable sign-in."""


@dataclass(frozen=True)
class AuthConfig:
    """Where the front's users sign in, as its `GET /api/config` says."""

    required: bool
    region: str = ""
    user_pool_id: str = ""
    client_id: str = ""
    endpoint: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> AuthConfig:
        # A front from before sign-in existed says nothing about it: nothing to sign in to.
        auth = body.get("auth") or {}
        if not auth.get("required"):
            return cls(required=False)
        try:
            return cls(True, str(auth["region"]), str(auth["user_pool_id"]),
                       str(auth["client_id"]), auth.get("endpoint") or None)
        except KeyError as exc:
            raise SignInError(f"the front's /api/config lacks auth.{exc.args[0]}") from None


def front_auth_config(http: requests.Session, front: str) -> AuthConfig:
    """Ask the front where its users sign in."""
    url = f"{front.rstrip('/')}/api/config"
    try:
        response = http.get(url, timeout=15)
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise SignInError(f"cannot ask {url} where to sign in: {exc}") from None
    if not isinstance(body, dict):
        raise SignInError(f"{url} did not answer a JSON object")
    return AuthConfig.from_json(body)


def cognito_client(region: str, endpoint: str | None, max_attempts: int = 3) -> Any:
    """A Cognito client that signs nothing: the public client's calls need no AWS identity."""
    # UNSIGNED also keeps boto3 from looking for credentials, which on a laptop would ask
    # the instance metadata address and wait for it.
    config = Config(signature_version=UNSIGNED,
                    retries={"mode": "standard", "max_attempts": max_attempts},
                    connect_timeout=10, read_timeout=30)
    return boto3.session.Session().client("cognito-idp", region_name=region,
                                          endpoint_url=endpoint, config=config)


def sign_in(config: AuthConfig, username: str, password: str,
            cognito: Any = None) -> dict[str, Any]:
    """Cognito's tokens for this username and password (AccessToken, IdToken, RefreshToken)."""
    cognito = cognito or cognito_client(config.region, config.endpoint)
    try:
        answer = cognito.initiate_auth(
            ClientId=config.client_id, AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": username, "PASSWORD": password})
    except ClientError as exc:
        code = error_code(exc)
        if code in _WRONG_PASSWORD:
            raise SignInError("wrong username or password") from None
        if code == "PasswordResetRequiredException":
            raise SignInError("the password must be reset: an operator sets a new one with "
                              f"`imagepipe users add {username}`") from None
        raise SignInError(f"the user pool refused the sign-in: {exc}") from None
    except BotoCoreError as exc:
        raise SignInError(f"cannot reach the user pool: {exc}") from None
    if "AuthenticationResult" not in answer:
        # NEW_PASSWORD_REQUIRED, MFA...: the operator's `users add` sets a permanent password.
        raise SignInError(f"the user pool asks for {answer.get('ChallengeName')}, which the "
                          "command line does not answer; sign in on the page once, or have "
                          f"an operator run `imagepipe users add {username}`")
    return answer["AuthenticationResult"]


def fresh_access_token(login: SavedLogin, config: AuthConfig, cognito: Any = None) -> str:
    """A new access token from the kept refresh token."""
    cognito = cognito or cognito_client(config.region, config.endpoint)
    try:
        answer = cognito.initiate_auth(
            ClientId=login.client_id, AuthFlow="REFRESH_TOKEN_AUTH",
            AuthParameters={"REFRESH_TOKEN": login.refresh_token})
    except ClientError as exc:
        if error_code(exc) in _WRONG_PASSWORD:
            raise NotSignedIn(f"{SIGN_IN_FIRST} (the sign-in of {login.username} has expired "
                              "or was revoked)") from None
        raise SignInError(f"the user pool refused to refresh the sign-in: {exc}") from None
    except BotoCoreError as exc:
        raise SignInError(f"cannot reach the user pool: {exc}") from None
    return str(answer["AuthenticationResult"]["AccessToken"])


def revoke(login: SavedLogin, cognito: Any = None) -> str | None:
    """Revoke the kept refresh token; None when done, else why not (it then just expires)."""
    # Best effort: signing out must not hang on a pool that cannot revoke (moto's answers 500).
    cognito = cognito or cognito_client(login.region, login.endpoint, max_attempts=1)
    try:
        cognito.revoke_token(Token=login.refresh_token, ClientId=login.client_id)
    except (ClientError, BotoCoreError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def access_token(front: str, http: requests.Session | None = None,
                 environ: Mapping[str, str] | None = None) -> str | None:
    """A fresh access token for the front; None when the front asks nobody to sign in."""
    config = front_auth_config(http or new_session(), front)
    if not config.required:
        return None
    login = load_login(environ)
    if login is None:
        raise NotSignedIn(SIGN_IN_FIRST)
    if (login.user_pool_id, login.client_id) != (config.user_pool_id, config.client_id):
        # Each `make run` makes a new local pool; the kept sign-in is of an earlier one.
        raise NotSignedIn(f"{SIGN_IN_FIRST} (the kept sign-in is for another user pool)")
    return fresh_access_token(login, config)


def front_session(front: str, environ: Mapping[str, str] | None = None) -> requests.Session:
    """An HTTP session for the front that sends an access token when the front wants one."""
    http = new_session()
    token = access_token(front, http, environ)
    if token is not None:
        http.headers["Authorization"] = f"Bearer {token}"
    return http
