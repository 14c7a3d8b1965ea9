"""Who is calling: Cognito access tokens, verified against the user pool's published keys.

PyJWT does the cryptography. What is ours is the policy: the algorithm comes from the key the
token names, never from the token (so `none` and HS256-with-the-public-key are refused); the
issuer must be the pool's, the token an access token of our app client, and not expired.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import requests

logger = logging.getLogger(__name__)

ADMINS_GROUP = "admins"
# Keys are refetched on an unknown `kid` (a rotation), but at most this often, so that tokens
# with made-up key IDs cannot make the front hammer the pool.
_REFETCH_SECONDS = 60
_JWKS_MAX_BYTES = 256 * 1024
# Clocks drift; Cognito's own libraries allow a little.
_LEEWAY_SECONDS = 30


@dataclass(frozen=True)
class Caller:
    """A signed-in user, as their access token says."""

    sub: str
    username: str
    groups: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return ADMINS_GROUP in self.groups


class InvalidToken(Exception):
    """A token that does not prove who is calling; the message says why, for the logs."""


def fetch_jwks(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The key set the user pool publishes."""
    with requests.get(url, timeout=timeout, stream=True) as response:
        response.raise_for_status()
        return json.loads(response.raw.read(_JWKS_MAX_BYTES, decode_content=True))


class TokenVerifier:
    """Verifies the pool's access tokens; keys are fetched once, cached, refetched on rotation."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        jwks: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._jwks = jwks
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def verify(self, token: str) -> Caller:
        """The caller an access token names; InvalidToken when it proves nothing."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"not a JWT: {exc}") from None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("the token names no key")
        key = self._key(kid)
        # The key fixes the algorithm: a token cannot choose a weaker one for itself.
        algorithm = key.algorithm_name
        if algorithm != "RS256":
            raise InvalidToken(f"the pool's key {kid} is not an RS256 key")
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[algorithm], issuer=self.issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "sub", "token_use"],
                         "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        if claims.get("token_use") != "access":
            raise InvalidToken(f"a {claims.get('token_use')!r} token where an access token "
                               "is wanted")
        if claims.get("client_id") != self.client_id:
            raise InvalidToken("the token is of another app client")
        groups = claims.get("cognito:groups") or []
        if not isinstance(groups, list):
            raise InvalidToken("cognito:groups is not a list")
        return Caller(sub=str(claims["sub"]), username=str(claims.get("username", "")),
                      groups=frozenset(str(g) for g in groups))

    def _key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < _REFETCH_SECONDS:
                raise InvalidToken(f"unknown key {kid}")
            self._fetched_at = now
            try:
                keys = jwt.PyJWKSet.from_dict(self._jwks()).keys
            except (OSError, ValueError, requests.RequestException, jwt.PyJWTError) as exc:
                # Not the token's fault; the next request may fetch again.
                self._fetched_at = None
                raise KeysUnavailable(f"the user pool's keys could not be read: {exc}") from exc
            self._keys = {k.key_id: k for k in keys if k.key_id}
            key = self._keys.get(kid)
            if key is None:
                raise InvalidToken(f"unknown key {kid}")
            return key


class KeysUnavailable(Exception):
    """The pool's key set could not be read: a 503, not the caller's fault."""
