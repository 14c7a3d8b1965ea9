"""The token verifier's key handling: fetched once, refetched on rotation, not on every miss."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from imagepipe.core.identity import InvalidToken, KeysUnavailable, TokenVerifier

ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_test"
CLIENT = "app-client"


@functools.cache
def _key(name: str) -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_key(kid).public_key()))
    return {**public, "kid": kid, "alg": "RS256", "use": "sig"}


def _token(kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "user-1", "client_id": CLIENT, "token_use": "access",
            "iat": now, "exp": now + 600, "username": "alice", "cognito:groups": ["admins"],
            **claims}
    return jwt.encode(body, _key(kid), algorithm="RS256", headers={"kid": kid})


class KeySet:
    """The pool's published keys, as a test changes them; counts the fetches."""

    def __init__(self, *kids: str) -> None:
        self.kids = list(kids)
        self.fetches = 0
        self.down = False

    def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise OSError("connection refused")
        return {"keys": [_jwk(kid) for kid in self.kids]}


def test_a_valid_token_names_the_caller_and_keys_are_fetched_once() -> None:
    keys = KeySet("k1")
    verifier = TokenVerifier(ISSUER, CLIENT, keys)

    caller = verifier.verify(_token("k1"))
    verifier.verify(_token("k1"))

    assert (caller.sub, caller.username, caller.is_admin) == ("user-1", "alice", True)
    assert keys.fetches == 1


def test_a_rotated_key_is_fetched_but_unknown_keys_do_not_hammer_the_pool() -> None:
    keys = KeySet("k1")
    now = [1000.0]
    verifier = TokenVerifier(ISSUER, CLIENT, keys, clock=lambda: now[0])
    verifier.verify(_token("k1"))

    # The pool rotates: a token under the new key makes one refetch.
    keys.kids.append("k2")
    now[0] += 61
    assert verifier.verify(_token("k2")).sub == "user-1"
    assert keys.fetches == 2

    # Made-up key IDs within the minute cost nothing.
    for _ in range(5):
        with pytest.raises(InvalidToken, match="unknown key"):
            verifier.verify(_token("k3"))
    assert keys.fetches == 2


@pytest.mark.parametrize("claims,why", [
    ({"iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_other"}, "issuer"),
    ({"client_id": "another-app"}, "another app client"),
    ({"token_use": "id"}, "access token is wanted"),
    ({"exp": int(time.time()) - 3600}, "expired"),
    ({"cognito:groups": "admins"}, "not a list"),
])
def test_tokens_that_prove_nothing_are_refused(claims: dict[str, Any], why: str) -> None:
    verifier = TokenVerifier(ISSUER, CLIENT, KeySet("k1"))
    with pytest.raises(InvalidToken, match=why):
        verifier.verify(_token("k1", **claims))


def test_keys_that_cannot_be_read_are_not_the_callers_fault() -> None:
    keys = KeySet("k1")
    keys.down = True
    verifier = TokenVerifier(ISSUER, CLIENT, keys)

    with pytest.raises(KeysUnavailable):
        verifier.verify(_token("k1"))
    # The next request tries again at once, and works once the pool answers.
    keys.down = False
    assert verifier.verify(_token("k1")).sub == "user-1"
