"""End to end: moto's server, the processor and the front as real processes, like `make run`.

Everyone signs in, as the issue asks: `demo` (the user the stack creates, with the password it
printed) uploads; an admin looks at objects dropped into the bucket, which belong to nobody.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from imagepipe.core.ids import USERS_PREFIX, is_image_id
from imagepipe.core.settings import Settings
from imagepipe.core.users import add_user, get_user
from imagepipe.local.stack import LocalStack, free_port, stop_processes

pytestmark = pytest.mark.slow

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
RESULT_TIMEOUT = 180  # the first result waits for TensorFlow and the model to load
README = Path(__file__).resolve().parents[1] / "README.md"
PYPROJECT = README.with_name("pyproject.toml")


@pytest.fixture(scope="module")
def s3(stack: LocalStack) -> Any:
    return boto3.client("s3", endpoint_url=stack.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def cognito(stack: LocalStack) -> Any:
    return boto3.client("cognito-idp", endpoint_url=stack.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _signed_in(stack: LocalStack, cognito: Any, username: str, password: str
               ) -> requests.Session:
    """HTTP as this user: their access token on every request."""
    tokens = cognito.initiate_auth(
        ClientId=stack.env["IMAGEPIPE_USER_POOL_CLIENT_ID"], AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": username, "PASSWORD": password})["AuthenticationResult"]
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {tokens['AccessToken']}"
    return http


@pytest.fixture(scope="module")
def demo(stack: LocalStack, cognito: Any) -> requests.Session:
    """The user the stack created, signed in with the password it printed."""
    assert stack.password
    return _signed_in(stack, cognito, stack.user, stack.password)


@pytest.fixture(scope="module")
def demo_sub(stack: LocalStack, cognito: Any) -> str:
    return get_user(cognito, stack.env["IMAGEPIPE_USER_POOL_ID"], stack.user).sub


@pytest.fixture(scope="module")
def admin(stack: LocalStack, cognito: Any) -> requests.Session:
    _, password = add_user(cognito, stack.env["IMAGEPIPE_USER_POOL_ID"], "e2e-admin",
                           admin=True)
    return _signed_in(stack, cognito, "e2e-admin", password)


def _wait_done(http: requests.Session, url: str, **params: Any) -> dict[str, Any]:
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        response = http.get(url, params=params, timeout=10)
        body = response.json()
        if response.status_code == 200 and body["status"] != "pending":
            return body
        assert response.status_code in (200, 404), body
        assert time.monotonic() < deadline, f"still {body} after {RESULT_TIMEOUT} s"
        time.sleep(0.3)


def test_browser_style_upload_gets_a_cat(front: str, demo: requests.Session, demo_sub: str,
                                         photos) -> None:
    # Given a presigned POST from the front
    response = demo.post(f"{front}/api/uploads", json={
        "filename": "chelsea.jpg", "content_type": "image/jpeg", "size": len(photos.cat_jpeg),
    }, timeout=10)
    assert response.status_code == 201
    body = response.json()
    assert is_image_id(body["image_id"])
    assert demo.get(body["result_url"], timeout=10).json()["status"] == "pending"

    # When the bytes go straight to S3 as a browser form would send them (no token: the
    # form's policy is the authorization)
    upload = requests.post(body["upload"]["url"], data=body["upload"]["fields"],
                           files={"file": ("chelsea.jpg", photos.cat_jpeg, "image/jpeg")},
                           timeout=30)
    assert upload.status_code in (200, 201, 204), upload.text

    # Then the result URL gives a cat with the full result shape
    result = _wait_done(demo, body["result_url"])
    assert result["status"] == "done", result
    assert result["labels"][0]["label"] in CAT_CLASSES
    assert len(result["labels"]) == 5
    assert result["model"]["name"] == "efficientnet_lite0"
    assert result["image"]["key"] == f"uploads/{demo_sub}/{body['image_id']}.jpg"
    assert result["owner"] == demo_sub
    assert (result["image"]["width"], result["image"]["height"]) == (451, 300)
    assert result["error"] is None
    assert result["created_at"] <= result["processed_at"]


def test_direct_drop_is_found_by_key(front: str, s3: Any, stack: LocalStack, photos,
                                     admin: requests.Session, demo: requests.Session,
                                     demo_sub: str) -> None:
    key = "camera roll/2026 11/coffee + cake é.jpg"
    s3.put_object(Bucket=stack.settings.bucket, Key=key, Body=photos.coffee_jpeg)

    # An object outside users/<sub>/ belongs to nobody: admins see it
    result = _wait_done(admin, f"{front}/api/results", key=key)

    assert result["status"] == "done"
    assert result["labels"][0]["label"] == "espresso"
    assert result["image"]["key"] == key
    assert result["source"] == "bucket"
    again = admin.get(f"{front}/api/results/{result['image_id']}", timeout=10).json()
    assert again["image_id"] == result["image_id"]
    assert demo.get(f"{front}/api/results/{result['image_id']}", timeout=10).status_code == 404

    # Under users/<demo's sub>/ the same bytes are demo's
    mine = f"{USERS_PREFIX}{demo_sub}/{key}"
    s3.put_object(Bucket=stack.settings.bucket, Key=mine, Body=photos.coffee_jpeg)
    result = _wait_done(demo, f"{front}/api/results", key=mine)
    assert result["owner"] == demo_sub
    assert result["labels"][0]["label"] == "espresso"


def test_broken_drop_fails_with_a_reason(front: str, s3: Any, stack: LocalStack,
                                         admin: requests.Session) -> None:
    key = "broken/readme.jpg"
    s3.put_object(Bucket=stack.settings.bucket, Key=key, Body=b"<html>not an image</html>")

    result = _wait_done(admin, f"{front}/api/results", key=key)

    assert result["status"] == "failed"
    assert result["error"]["code"] == "not_an_image"


def test_synchronous_api_multipart_and_base64(front: str, demo: requests.Session,
                                              photos) -> None:
    # The seed's API works as before, with a token; without one it is refused
    anonymous = requests.post(f"{front}/api/image_recognition", data={"img": "x"}, timeout=10)
    assert anonymous.status_code == 401
    response = demo.post(f"{front}/api/image_recognition",
                             files={"file": ("rocket.jpg", photos.rocket_jpeg, "image/jpeg")},
                             timeout=90)
    assert response.status_code == 200, response.text
    assert response.json()["labels"][0]["label"] in {"missile", "projectile"}

    encoded = base64.b64encode(photos.cat_png).decode()
    response = demo.post(f"{front}/api/image_recognition", data={"img": encoded}, timeout=90)
    assert response.status_code == 200, response.text
    assert response.json()["labels"][0]["label"] in CAT_CLASSES
    assert response.json()["image"]["format"] == "PNG"


def _person(tmp_path: Path) -> dict[str, str]:
    """A shell with nothing set: an empty home, no AWS or imagepipe variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "IMAGEPIPE_", "XDG_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), AWS_EC2_METADATA_DISABLED="true")
    return env


def test_classify_command_prints_a_cat(front: str, stack: LocalStack, photos,
                                       tmp_path: Path) -> None:
    photo = tmp_path / "my cat.jpg"
    photo.write_bytes(photos.cat_jpeg)
    env = _person(tmp_path)
    login = subprocess.run(
        [sys.executable, "-m", "imagepipe", "login", stack.user, "--url", front],
        input=f"{stack.password}\n", env=env, capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr

    run = subprocess.run(
        [sys.executable, "-m", "imagepipe", "classify", str(photo), "--url", front],
        env=env, capture_output=True, text=True, timeout=300,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "my cat.jpg" in run.stdout
    assert any(name in run.stdout for name in CAT_CLASSES), run.stdout
    assert "done" in run.stdout


def _readme_try_it() -> str:
    """The shell block of the README's "Try it" section."""
    text = README.read_text()
    section = text[text.index("## Try it"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def _console_script(path: Path) -> None:
    """The `imagepipe` script `pip install` makes from pyproject.toml, for this interpreter.

    Made here rather than taken from the virtualenv running the tests, whose script may date
    from an older install: the test is of this checkout's entry point.
    """
    # [project.scripts]; read with a pattern, as tomllib is not in Python 3.10.
    entry = re.search(r'^imagepipe = "([\w.]+):(\w+)"$', PYPROJECT.read_text(), re.M)
    assert entry is not None
    module, function = entry.groups()
    path.parent.mkdir(parents=True)
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                    f"sys.exit({function}())\n")
    path.chmod(0o755)


def _wait_for_line(log: Path, pattern: str, timeout: float) -> re.Match:
    """The first match of `pattern` in the log, waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match:
            return match
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} within {timeout} s in:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def test_make_run_then_the_readme_example_works_as_shown(model_cache: Path, photos,
                                                         tmp_path: Path) -> None:
    # Given `make run` (`imagepipe run`), started from a shell with nothing set
    env = _person(tmp_path)
    port = free_port()
    settings = Settings(bucket="readme-images", queue="readme-events",
                        dead_letter_queue="readme-events-dlq", table="readme-results",
                        port=port, poll_seconds=1, cache_dir=model_cache,
                        metrics_front_port=free_port(), metrics_processor_port=free_port(),
                        events_port=free_port())
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        run = subprocess.Popen(
            [sys.executable, "-m", "imagepipe", "run", "--endpoint-port", str(free_port())],
            env={**env, **settings.environ()}, stdout=sink, stderr=subprocess.STDOUT)
    try:
        # Then its banner names the user and a password
        _wait_for_line(log, "Ctrl-C stops everything", 120)
        banner = _wait_for_line(log, r"sign in as\s+(\S+)\s+password (\S+)", 1)
        user, password = banner.group(1), banner.group(2)
        # The processor is up (a person would wait for the first result a little longer)
        _wait_for_line(log, r"processing .* with ", 300)

        # When the README's commands run, in a folder with the files they name
        block = _readme_try_it()
        assert f"imagepipe login {user}" in block
        work = tmp_path / "work"
        (work / "photos").mkdir(parents=True)
        _console_script(work / ".venv" / "bin" / "imagepipe")
        (work / "photo.jpg").write_bytes(photos.cat_jpeg)
        (work / "another.png").write_bytes(photos.cat_png)
        (work / "photos" / "coffee.jpg").write_bytes(photos.coffee_jpeg)
        (work / "photos" / "rocket.jpg").write_bytes(photos.rocket_jpeg)
        front = f"http://127.0.0.1:{port}"
        # The README's front is make run's default port; this one runs on a free one.
        script = block.replace("http://127.0.0.1:8000", front)
        shell = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=work, input=f"{password}\n",
            env={**env, "IMAGEPIPE_PORT": str(port)}, capture_output=True, text=True,
            timeout=600)

        # Then each does what the README says
        out = shell.stdout
        assert shell.returncode == 0, out + shell.stderr
        assert f"signed in to {front} as {user}" in out
        rows = {line.split()[0]: line for line in out.splitlines()
                if line.startswith(("photo.jpg", "another.png"))}
        assert set(rows) == {"photo.jpg", "another.png"}, out
        assert all("done" in row and any(c in row for c in CAT_CLASSES)
                   for row in rows.values()), out
        assert re.search(r"^done\s+2\b", out, re.M), out
        answer = json.loads(out.strip().splitlines()[-1])
        assert answer["status"] == "done"
        assert answer["labels"][0]["label"] in CAT_CLASSES
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(60)
        finally:
            stop_processes(run)


def test_bucket_cors_answers_only_the_page_origin(front: str, stack: LocalStack,
                                                   demo: requests.Session) -> None:
    # moto's own permissive CORS is off: what the browser sees comes from the bucket's rule.
    bucket_url = f"{stack.endpoint_url}/{stack.settings.bucket}"
    upload = demo.post(f"{front}/api/uploads", json={
        "filename": "x.png", "content_type": "image/png", "size": 10}, timeout=10).json()

    for origin, allowed in ((front, True), ("http://localhost:1", False),
                            ("https://evil.example", False)):
        preflight = requests.options(bucket_url, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"}, timeout=10)
        post = requests.post(upload["upload"]["url"], data=upload["upload"]["fields"],
                             files={"file": ("x.png", b"\x89PNG\r\n\x1a\n00", "image/png")},
                             headers={"Origin": origin}, timeout=10)
        if allowed:
            assert preflight.status_code == 200
            assert preflight.headers["Access-Control-Allow-Origin"] == origin
            assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
            assert post.headers["Access-Control-Allow-Origin"] == origin
        else:
            assert preflight.status_code == 403
            assert "Access-Control-Allow-Origin" not in preflight.headers
            assert "Access-Control-Allow-Origin" not in post.headers


def test_url_import_gets_a_cat(front: str, image_server, demo: requests.Session,
                               demo_sub: str) -> None:
    response = demo.post(f"{front}/api/imports", json={"url": image_server.url("/go/cat")},
                         timeout=30)
    assert response.status_code == 201, response.text

    result = _wait_done(demo, response.json()["result_url"])

    assert result["status"] == "done"
    assert result["labels"][0]["label"] in CAT_CLASSES
    assert result["image"]["key"] == f"uploads/{demo_sub}/{result['image_id']}.jpg"
    assert result["owner"] == demo_sub
