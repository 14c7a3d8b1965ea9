"""`imagepipe login`, `classify` with the kept sign-in, `logout`: the real CLI on the real stack."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
import requests

from imagepipe.cli.classify import upload_file
from imagepipe.cli.saved_login import SavedLogin, load_login, save_login
from imagepipe.cli.signin import SIGN_IN_FIRST, NotSignedIn, access_token
from imagepipe.core.users import get_user
from imagepipe.local.stack import LocalStack
from tests.conftest import LocalWebServer, Reply

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


@pytest.fixture
def shell(tmp_path: Path) -> dict[str, str]:
    """A shell of a person with an empty home: no sign-in kept, no password in the air."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "IMAGEPIPE_", "XDG_"))}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
               AWS_EC2_METADATA_DISABLED="true")
    return env


def _cli(env: dict[str, str], *args: str, stdin: str = "",
         timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagepipe", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def _kept(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "imagepipe" / "credentials.json"


def _cognito(stack: LocalStack) -> Any:
    return boto3.client("cognito-idp", endpoint_url=stack.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _owner(stack: LocalStack, front: str, image_id: str) -> str:
    """The owner of a result, as an admin reads it."""
    cognito = _cognito(stack)
    pool_id = stack.env["IMAGEPIPE_USER_POOL_ID"]
    from imagepipe.core.users import add_user

    _, password = add_user(cognito, pool_id, "login-test-admin", admin=True)
    token = cognito.initiate_auth(
        ClientId=stack.env["IMAGEPIPE_USER_POOL_CLIENT_ID"], AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": "login-test-admin", "PASSWORD": password},
    )["AuthenticationResult"]["AccessToken"]
    response = requests.get(f"{front}/api/results/{image_id}",
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["owner"]


@pytest.mark.slow
def test_login_keeps_only_a_refresh_token_and_classify_then_works(
        stack: LocalStack, front: str, shell: dict[str, str], photos, tmp_path: Path) -> None:
    assert stack.password
    photo = tmp_path / "my cat.jpg"
    photo.write_bytes(photos.cat_jpeg)

    # When demo signs in with the password piped on stdin
    login = _cli(shell, "login", stack.user, "--url", front, stdin=stack.password + "\n")

    # Then the sign-in is kept, readable by its owner only, without the password
    assert login.returncode == 0, login.stderr
    assert f"as {stack.user}" in login.stdout
    kept = _kept(shell)
    assert kept.stat().st_mode & 0o777 == 0o600
    assert kept.parent.stat().st_mode & 0o777 == 0o700
    text = kept.read_text()
    assert stack.password not in text
    body = json.loads(text)
    assert set(body) == {"front", "region", "user_pool_id", "client_id", "endpoint",
                         "username", "refresh_token"}
    assert (body["front"], body["username"]) == (front, stack.user)
    assert body["user_pool_id"] == stack.env["IMAGEPIPE_USER_POOL_ID"]

    # And classify, with no --url, goes to that front with demo's access token
    run = _cli(shell, "classify", str(photo))
    assert run.returncode == 0, run.stdout + run.stderr
    assert any(name in run.stdout for name in CAT_CLASSES), run.stdout
    image_id = re.search(r"my cat\.jpg\s+([A-Za-z0-9_-]{22})\s", run.stdout).group(1)
    demo = get_user(_cognito(stack), stack.env["IMAGEPIPE_USER_POOL_ID"], stack.user)
    assert _owner(stack, front, image_id) == demo.sub

    # And `imagepipe token` prints an access token the front accepts
    token = _cli(shell, "token")
    assert token.returncode == 0, token.stderr
    mine = requests.get(f"{front}/api/results/{image_id}", timeout=10,
                        headers={"Authorization": f"Bearer {token.stdout.strip()}"})
    assert mine.status_code == 200 and mine.json()["owner"] == demo.sub


@pytest.mark.slow
def test_logout_forgets_and_classify_then_says_to_sign_in(
        stack: LocalStack, front: str, shell: dict[str, str], photos, tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(photos.cat_jpeg)
    assert _cli(shell, "login", stack.user, "--url", front,
                stdin=stack.password + "\n").returncode == 0

    logout = _cli(shell, "logout")

    assert logout.returncode == 0, logout.stderr
    assert f"signed out {stack.user}" in logout.stdout
    assert not _kept(shell).exists()
    # Signed out, a command that calls the front says what to do, in one line
    for args in (("classify", str(photo), "--url", front), ("token", "--url", front)):
        run = _cli(shell, *args)
        assert run.returncode == 1, run.stdout
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and SIGN_IN_FIRST in lines[0], run.stderr
        assert "Traceback" not in run.stderr
    assert "not signed in" in _cli(shell, "logout").stdout


@pytest.mark.slow
def test_wrong_password_is_one_line_and_exit_1(stack: LocalStack, front: str,
                                               shell: dict[str, str]) -> None:
    for user in (stack.user, "nobody-here"):
        run = _cli(shell, "login", user, "--url", front, stdin="not-the-password\n")

        assert run.returncode == 1
        assert run.stderr.strip().splitlines() == [
            "imagepipe login: wrong username or password"]
        assert not _kept(shell).exists()


@pytest.mark.slow
def test_password_from_the_environment(stack: LocalStack, front: str,
                                       shell: dict[str, str]) -> None:
    run = _cli({**shell, "IMAGEPIPE_PASSWORD": stack.password or ""}, "login", stack.user,
               "--url", front)
    assert run.returncode == 0, run.stderr
    assert load_login({"XDG_CONFIG_HOME": shell["XDG_CONFIG_HOME"]}) is not None


# ------------------------------------------------- the front's answer decides, without a stack
def _front_saying(server: LocalWebServer, auth: dict[str, Any]) -> str:
    server.routes["/api/config"] = Reply(body=json.dumps({"auth": auth}).encode(),
                                         headers={"Content-Type": "application/json"})
    return server.url("")


def test_a_front_without_sign_in_gets_no_token(web_server: LocalWebServer,
                                               tmp_path: Path) -> None:
    front = _front_saying(web_server, {"required": False})
    assert access_token(front, environ={"XDG_CONFIG_HOME": str(tmp_path)}) is None


def test_a_sign_in_kept_for_another_pool_is_not_used(web_server: LocalWebServer,
                                                     tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    front = _front_saying(web_server, {"required": True, "region": "us-east-1",
                                       "user_pool_id": "us-east-1_new", "client_id": "abc",
                                       "endpoint": None})
    with pytest.raises(NotSignedIn, match=SIGN_IN_FIRST):
        access_token(front, environ=environ)
    save_login(SavedLogin(front, "us-east-1", "us-east-1_old", "abc", None, "demo", "r"),
               environ)
    with pytest.raises(NotSignedIn, match="another user pool"):
        access_token(front, environ=environ)


def test_the_kept_file_is_0600_in_a_0700_folder_even_where_the_folder_was_open(
        tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    (tmp_path / "imagepipe").mkdir(mode=0o755)
    login = SavedLogin("http://f", "us-east-1", "p", "c", None, "demo", "refresh")

    path = save_login(login, environ)

    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert load_login(environ) == login
    assert load_login({"HOME": str(tmp_path / "elsewhere")}) is None


class _FrontAndBucket(BaseHTTPRequestHandler):
    """A front that hands out an upload form, and a bucket that takes it; both note headers."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.path, self.headers.get("Authorization")))
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/uploads":
            body = json.dumps({"image_id": "A" * 22, "result_url": f"{host}/r",
                               "upload": {"url": f"{host}/bucket", "fields": {"key": "k"}}})
            self._answer(201, body.encode())
        else:
            self._answer(204, b"")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_token_goes_to_the_front_and_never_to_the_bucket(tmp_path: Path, photos) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(photos.cat_jpeg)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FrontAndBucket)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        http = requests.Session()
        http.headers["Authorization"] = "Bearer the-access-token"
        upload_file(http, f"http://127.0.0.1:{server.server_address[1]}", photo)
    finally:
        server.shutdown()
        server.server_close()
    assert _FrontAndBucket.seen == [("/api/uploads", "Bearer the-access-token"),
                                    ("/bucket", None)]
