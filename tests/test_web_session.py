"""The page's session: sign in, cookies and their flags, CSRF, refresh, sign out, attempts."""

from __future__ import annotations

import re
from dataclasses import replace
from http.cookies import Morsel, SimpleCookie
from typing import Any

import jwt
import pytest

from imagepipe.core.auth import ACCESS_COOKIE, CSRF_COOKIE, CSRF_HEADER, REFRESH_COOKIE
from imagepipe.core.timestamps import format_utc, parse_utc
from tests.conftest import PASSWORD, Users, load_template, signed_in
from web.attempts import FailedSignIns
from web.routes import csrf_javascript
from web.session import REFRESH_MAX_AGE, SESSION_PATH, SIGN_IN_LIMITER


def set_cookies(response: Any) -> dict[str, Morsel]:
    """The cookies a response sets, with their attributes, parsed from Set-Cookie."""
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getlist("Set-Cookie"):
        jar.load(header)
    return dict(jar)


def sign_in(client: Any, username: str, password: str = PASSWORD) -> Any:
    return client.post(SESSION_PATH, json={"username": username, "password": password})


def csrf(client: Any) -> dict[str, str]:
    """The header the page sends on writes: the CSRF cookie's value, read as its script does."""
    cookie = client.get_cookie(CSRF_COOKIE)
    assert cookie is not None
    return {CSRF_HEADER: cookie.value}


@pytest.fixture
def page(app: Any, users: Users) -> Any:
    """A browser-like test client of the front that keeps cookies; nobody signed in yet."""
    return app.test_client()


def test_sign_in_sets_the_three_cookies_with_their_flags(page: Any, users: Users) -> None:
    response = sign_in(page, "alice")

    assert response.status_code == 200
    body = response.get_json()
    assert body["username"] == "alice"
    assert body["admin"] is False
    cookies = set_cookies(response)
    assert set(cookies) == {ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE}
    access, refresh, token = cookies[ACCESS_COOKIE], cookies[REFRESH_COOKIE], cookies[CSRF_COOKIE]
    # The tokens: out of reach of the page's script, sent only to this site over HTTPS.
    for cookie in (access, refresh):
        assert cookie["httponly"] is True
    for cookie in (access, refresh, token):
        assert cookie["secure"] is True
        assert cookie["samesite"] == "Strict"
    assert access["path"] == "/"
    assert refresh["path"] == "/api/session"
    assert token["path"] == "/"
    # The CSRF token is for the page's script to read and echo.
    assert not token["httponly"]
    assert len(token.value) >= 32
    # The access cookie lives as long as the token, and expires_at says when that is.
    claims = jwt.decode(access.value, options={"verify_signature": False})
    assert int(access["max-age"]) == claims["exp"] - claims["iat"]
    assert abs(parse_utc(body["expires_at"]).timestamp() - claims["exp"]) <= 2
    assert claims["username"] == "alice" and claims["token_use"] == "access"
    assert int(refresh["max-age"]) == REFRESH_MAX_AGE == int(token["max-age"])


def test_an_admin_is_told_so(page: Any, users: Users) -> None:
    assert sign_in(page, "tester").get_json()["admin"] is True
    assert page.get(SESSION_PATH).get_json()["admin"] is True


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(page: Any,
                                                                  users: Users) -> None:
    wrong = sign_in(page, "alice", "Not-the-password-1")
    unknown = sign_in(page, "nobody-at-all", PASSWORD)

    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert wrong.get_json()["error"]["code"] == "sign_in_failed"
    assert "Set-Cookie" not in wrong.headers and "Set-Cookie" not in unknown.headers
    assert page.get("/api/results").status_code == 401


@pytest.mark.parametrize("body,code", [
    ({"username": "alice"}, "invalid_password"),
    ({"password": PASSWORD}, "invalid_username"),
    ({"username": "  ", "password": PASSWORD}, "invalid_username"),
    ({"username": "alice", "password": ["x"]}, "invalid_password"),
    ({"username": "a" * 129, "password": PASSWORD}, "invalid_username"),
    (["alice", PASSWORD], "invalid_json"),
])
def test_malformed_sign_ins_are_refused(page: Any, users: Users, body: Any, code: str) -> None:
    response = page.post(SESSION_PATH, json=body)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code


def test_sign_in_takes_json_only(page: Any, users: Users) -> None:
    # A cross-site form can post form fields, never JSON without a preflight.
    response = page.post(SESSION_PATH, data={"username": "alice", "password": PASSWORD})

    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert "Set-Cookie" not in response.headers


def test_the_access_cookie_signs_in_every_read(page: Any, users: Users) -> None:
    assert page.get("/api/results").status_code == 401
    assert page.get(SESSION_PATH).status_code == 401

    sign_in(page, "bob")

    assert page.get("/api/results").status_code == 200
    me = page.get(SESSION_PATH)
    assert me.status_code == 200
    assert me.get_json()["username"] == "bob"
    assert parse_utc(me.get_json()["expires_at"])


def test_a_bearer_token_says_who_too(app: Any, users: Users) -> None:
    token = users.token("bob")

    me = signed_in(app, token).get(SESSION_PATH)

    assert me.status_code == 200
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert me.get_json() == {"username": "bob", "admin": False,
                             "expires_at": format_utc(exp, "seconds")}


def test_a_write_with_the_cookie_needs_the_csrf_header(page: Any, users: Users) -> None:
    sign_in(page, "alice")
    upload = {"filename": "cat.jpg", "content_type": "image/jpeg", "size": 1000}

    without = page.post("/api/uploads", json=upload)
    wrong = page.post("/api/uploads", json=upload, headers={CSRF_HEADER: "guessed"})
    right = page.post("/api/uploads", json=upload, headers=csrf(page))

    assert without.status_code == 403
    assert without.get_json()["error"]["code"] == "csrf_failed"
    assert wrong.status_code == 403
    assert right.status_code == 201
    # The upload is alice's: it is under her ID, and bob does not see it.
    image_id = right.get_json()["image_id"]
    assert page.get(f"/api/results/{image_id}").status_code == 200
    assert signed_in(page.application, users.token("bob")).get(
        f"/api/results/{image_id}").status_code == 404


def test_refresh_gives_a_new_access_cookie(page: Any, users: Users) -> None:
    first = set_cookies(sign_in(page, "alice"))[ACCESS_COOKIE].value

    response = page.post(f"{SESSION_PATH}/refresh", headers=csrf(page))

    assert response.status_code == 200
    assert response.get_json()["username"] == "alice"
    cookies = set_cookies(response)
    assert set(cookies) == {ACCESS_COOKIE}
    renewed = cookies[ACCESS_COOKIE]
    assert renewed.value != first
    assert renewed["httponly"] is True and renewed["secure"] is True
    assert renewed["samesite"] == "Strict" and renewed["path"] == "/"
    assert page.get_cookie(ACCESS_COOKIE).value == renewed.value
    assert page.get("/api/results").status_code == 200


def test_refresh_needs_the_session_and_the_csrf_header(page: Any, users: Users) -> None:
    assert page.post(f"{SESSION_PATH}/refresh").get_json()["error"]["code"] == "no_session"

    sign_in(page, "alice")
    refused = page.post(f"{SESSION_PATH}/refresh")

    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "csrf_failed"


def test_sign_out_clears_the_cookies_and_ends_the_refresh_token(page: Any,
                                                                users: Users) -> None:
    # Given alice signed in, and what her cookies held
    signed = set_cookies(sign_in(page, "alice"))
    old_refresh = signed[REFRESH_COOKIE].value
    headers = csrf(page)

    # When she signs out
    response = page.delete(SESSION_PATH, headers=headers)

    # Then every cookie is cleared, at the path it was set for
    assert response.status_code == 204
    cleared = set_cookies(response)
    assert set(cleared) == {ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE}
    for name, cookie in cleared.items():
        assert cookie.value == "" and cookie["max-age"] == "0", name
        assert cookie["path"] == signed[name]["path"]
    assert page.get_cookie(ACCESS_COOKIE) is None
    assert page.get("/api/results").status_code == 401
    # And the refresh token, put back by hand, no longer makes access tokens
    page.set_cookie(REFRESH_COOKIE, old_refresh, path=SESSION_PATH)
    page.set_cookie(CSRF_COOKIE, headers[CSRF_HEADER])
    refreshed = page.post(f"{SESSION_PATH}/refresh", headers=headers)
    assert refreshed.status_code == 401
    assert refreshed.get_json()["error"]["code"] == "session_expired"
    assert page.get_cookie(REFRESH_COOKIE, path=SESSION_PATH) is None


def test_a_copied_access_token_holds_until_it_expires(page: Any, users: Users) -> None:
    """What sign-out cannot do: access tokens are checked against the pool's keys, not asked
    of Cognito, so a copy taken before sign-out works until its `exp` (docs/api.md says so)."""
    access = set_cookies(sign_in(page, "alice"))[ACCESS_COOKIE].value
    page.delete(SESSION_PATH, headers=csrf(page))

    assert signed_in(page.application, access).get("/api/results").status_code == 200


def test_sign_out_needs_the_csrf_header_while_signed_in(page: Any, users: Users) -> None:
    sign_in(page, "alice")

    refused = page.delete(SESSION_PATH)

    assert refused.status_code == 403
    assert page.get("/api/results").status_code == 200
    # Signed out already: there is nothing to protect, and the answer is the same.
    page.delete(SESSION_PATH, headers=csrf(page))
    assert page.delete(SESSION_PATH).status_code == 204


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_sign_ins_are_limited_per_address(app: Any, users: Users) -> None:
    # Given a front that allows 3 failures in 60 s from one address
    clock = Clock()
    app.extensions[SIGN_IN_LIMITER] = FailedSignIns(limit=3, window=60, clock=clock)
    guesser, neighbour = app.test_client(), app.test_client()
    guesser.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    neighbour.environ_base["REMOTE_ADDR"] = "203.0.113.10"

    # When one address fails three times
    for n in range(3):
        clock.now += 1
        assert sign_in(guesser, "alice", f"Guess-number-{n}x").status_code == 401

    # Then even the right password is refused from it until the first failure ages out
    refused = sign_in(guesser, "alice")
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_attempts"
    assert refused.headers["Retry-After"] == "58"
    assert "Set-Cookie" not in refused.headers
    # While another address signs in as usual
    assert sign_in(neighbour, "alice").status_code == 200
    clock.now += 58
    assert sign_in(guesser, "alice").status_code == 200


def test_a_success_does_not_wipe_the_failures() -> None:
    clock = Clock()
    attempts = FailedSignIns(limit=2, window=60, clock=clock)

    attempts.failed("a")
    assert attempts.wait("a") == 0
    attempts.failed("a")

    assert attempts.wait("a") == 60
    clock.now += 61
    assert attempts.wait("a") == 0


def test_the_limiter_forgets_the_least_recent_addresses() -> None:
    attempts = FailedSignIns(limit=1, window=60, max_addresses=2, clock=Clock())

    for address in ("a", "b", "c"):
        attempts.failed(address)

    assert attempts.wait("a") == 0
    assert attempts.wait("b") > 0 and attempts.wait("c") > 0


def test_a_user_with_a_temporary_password_is_told_to_get_a_new_one(page: Any, users: Users,
                                                                  clients: Any,
                                                                  resources: Any) -> None:
    clients.cognito.admin_create_user(UserPoolId=resources.user_pool_id, Username="newbie",
                                      TemporaryPassword=PASSWORD, MessageAction="SUPPRESS")

    response = sign_in(page, "newbie")

    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "new_password_required"
    assert "Set-Cookie" not in response.headers


def test_with_sign_in_off_there_is_no_session(settings: Any, clients: Any, store: Any,
                                              resources: Any) -> None:
    from imagepipe.app import create_app

    app = create_app(replace(settings, auth=False), clients, store)
    page = app.test_client()

    for method in ("get", "post", "delete"):
        response = getattr(page, method)(SESSION_PATH, json={"username": "a", "password": "b"})
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "sign_in_off"
    assert page.get("/").status_code == 200
    assert page.get("/api/config").get_json()["auth"] == {"required": False}


def test_the_page_reads_the_csrf_names_from_the_python_constants(page: Any) -> None:
    response = page.get("/static/csrf.js")

    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert response.get_data(as_text=True) == csrf_javascript()
    names = dict(re.findall(r'^export const (\w+) = "([^"]+)";$', csrf_javascript(), re.M))
    assert names == {"CSRF_COOKIE": CSRF_COOKIE, "CSRF_HEADER": CSRF_HEADER}


def test_the_refresh_cookie_lives_as_long_as_the_refresh_token() -> None:
    client = load_template()["Resources"]["UserPoolClient"]["Properties"]

    assert client["TokenValidityUnits"]["RefreshToken"] == "days"
    assert client["RefreshTokenValidity"] * 24 * 3600 == REFRESH_MAX_AGE
