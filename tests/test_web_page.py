"""The page and its files, the security headers on every response, gallery thumbnails."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest

from imagepipe.app import content_security_policy
from imagepipe.core.formats import CONTENT_TYPES, FORMATS, SNIFF_BYTES, sniff_content_type
from imagepipe.core.ids import new_image_id, upload_key
from imagepipe.core.records import ImageFacts, Label, ResultRecord
from imagepipe.core.settings import Settings
from web.routes import STATIC


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def test_the_page_loads_its_module_and_styles(client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert '<script type="module" src="/static/main.js"></script>' in html
    assert 'href="/static/app.css"' in html
    # No inline script or style, which the CSP forbids.
    assert "<script>" not in html and "<style" not in html and "style=" not in html


@pytest.mark.parametrize("name,mimetype", [
    ("main.js", "text/javascript"), ("api.js", "text/javascript"),
    ("cards.js", "text/javascript"), ("checks.js", "text/javascript"),
    ("gallery.js", "text/javascript"), ("messages.js", "text/javascript"),
    ("session.js", "text/javascript"), ("csrf.js", "text/javascript"),
    ("app.css", "text/css"),
])
def test_static_files_have_their_types(client, name: str, mimetype: str) -> None:
    response = client.get(f"/static/{name}")

    assert response.status_code == 200
    assert response.mimetype == mimetype


def test_static_files_cannot_escape_their_folder(client) -> None:
    assert client.get("/static/../routes.py").status_code == 404
    assert client.get("/static/%2e%2e/routes.py").status_code == 404


@pytest.mark.parametrize("path", ["/", "/static/main.js", "/api/config", "/healthz",
                                  "/api/results/nope", "/no/such/page"])
def test_every_response_has_the_security_headers(client, path: str) -> None:
    headers = client.get(path).headers

    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "camera=()" in headers["Permissions-Policy"]
    assert "Content-Security-Policy" in headers


def test_the_csp_allows_only_our_files_and_the_bucket(client, clients,
                                                      settings: Settings) -> None:
    policy = csp_directives(client.get("/").headers["Content-Security-Policy"])

    post_url = clients.s3.generate_presigned_post(Bucket=settings.bucket, Key="k")["url"]
    s3 = "{0.scheme}://{0.netloc}".format(urlsplit(post_url))
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", s3]
    assert policy["img-src"] == ["'self'", "blob:", "data:", s3]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert not any("unsafe" in value for values in policy.values() for value in values)


def test_the_csp_names_a_local_endpoint() -> None:
    policy = csp_directives(content_security_policy(("http://127.0.0.1:4566",)))

    assert policy["connect-src"] == ["'self'", "http://127.0.0.1:4566"]


def _done(store, settings: Settings, fmt: str = "JPEG") -> str:
    image_id = new_image_id()
    record = ResultRecord(image_id=image_id, bucket=settings.bucket,
                          key=upload_key(image_id, "jpg"), source="upload")
    store.create_pending(record)
    store.save_result(record.done([Label("tabby", 0.6, 281)], "efficientnet_lite0", "1",
                                  image=ImageFacts(format=fmt, width=4, height=3, bytes=9)))
    return image_id


def test_a_done_image_redirects_to_a_short_lived_link(client, store, clients,
                                                      settings: Settings) -> None:
    image_id = _done(store, settings, fmt="MPO")
    clients.s3.put_object(Bucket=settings.bucket, Key=upload_key(image_id, "jpg"),
                          Body=b"\xff\xd8\xffjpeg", ContentType="text/html")

    response = client.get(f"/api/results/{image_id}/image")

    assert response.status_code == 302
    assert response.headers["Cache-Control"].startswith("private")
    location = urlsplit(response.headers["Location"])
    assert location.path.endswith(f"/uploads/{image_id}.jpg")
    query = parse_qs(location.query)
    # S3 answers with the type the processor found, not the one the object was stored with.
    assert query["response-content-type"] == ["image/jpeg"]
    assert "Expires" in query or "X-Amz-Expires" in query


def test_images_that_are_not_done_have_no_link(client, store, settings: Settings) -> None:
    image_id = new_image_id()
    store.create_pending(ResultRecord(image_id=image_id, bucket=settings.bucket,
                                      key=upload_key(image_id, "jpg")))

    response = client.get(f"/api/results/{image_id}/image")

    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "no_image"
    assert client.get(f"/api/results/{new_image_id()}/image").status_code == 404
    assert client.get("/api/results/short/image").status_code == 400


def _served_formats(client) -> list[dict]:
    response = client.get("/static/formats.js")
    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    match = re.search(r"^export const FORMATS = (.*);$", response.get_data(as_text=True), re.M)
    assert match is not None
    return json.loads(match.group(1))


def test_the_page_reads_the_formats_from_the_python_table(client) -> None:
    served = _served_formats(client)

    assert [f["contentType"] for f in served] == list(CONTENT_TYPES)
    assert [f["name"] for f in served] == [f.name for f in FORMATS]
    assert [[[(offset, bytes(run)) for offset, run in signature] for signature in f["signatures"]]
            for f in served] == [[list(signature) for signature in f.signatures] for f in FORMATS]
    assert f"export const SNIFF_BYTES = {SNIFF_BYTES};" in client.get(
        "/static/formats.js").get_data(as_text=True)


def test_no_page_file_keeps_its_own_list_of_formats() -> None:
    for path in sorted(STATIC.iterdir()):
        text = path.read_text()
        # A content type like image/png, or a JPEG or PNG signature written out.
        assert not re.search(r"image/[a-z]|0xff, ?0xd8|0x89, ?0x50", text), path.name
        assert "HEIC" not in text and "WebP" not in text, path.name


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_the_page_sniffs_as_the_server_does(client, tmp_path) -> None:
    # Given the page's modules next to the formats module the server serves
    for name in ("checks.js", "messages.js"):
        shutil.copy(STATIC / name, tmp_path / name)
    (tmp_path / "formats.js").write_text(client.get("/static/formats.js").get_data(as_text=True))
    heads = [bytes(head) for f in FORMATS for head in _signature_heads(f)]
    heads += [b"", b"\x00" * 16, b"<svg xmlns='http", b"%PDF-1.7", b"RIFF\0\0\0\0WAVEfmt "]
    script = tmp_path / "sniff.mjs"
    script.write_text(
        'import { sniffType } from "./checks.js";\n'
        'import { ACCEPTED } from "./messages.js";\n'
        f"const heads = {json.dumps([list(head) for head in heads])};\n"
        "console.log(JSON.stringify({types: heads.map((h) => sniffType(new Uint8Array(h))),"
        " accepted: ACCEPTED}));\n")

    # When node runs the page's sniffing over every signature and a few non-images
    out = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=30,
                         check=True).stdout

    # Then it names the type the server's sniffing names, and the page lists every format
    answer = json.loads(out)
    assert answer["types"] == [sniff_content_type(head) for head in heads]
    assert answer["accepted"] == ", ".join(f.name for f in FORMATS[:-1]) + f" or {FORMATS[-1].name}"


def _signature_heads(image_format) -> list[bytearray]:
    heads = []
    for signature in image_format.signatures:
        head = bytearray(SNIFF_BYTES)
        for offset, run in signature:
            head[offset:offset + len(run)] = run
        heads.append(head)
    return heads


# The page's session logic run by Node with a fake browser: cookies, fetch and timers.
SESSION_HARNESS = r"""
import { createUpload, listResults } from "./api.js";
import { Session } from "./session.js";

const now = Date.now();
const calls = [];
const timers = [];
let accessGood = true;
globalThis.document = { cookie: "other=1; imagepipe_csrf=tok%2Ben; x=y" };
globalThis.window = { location: { reload: () => calls.push("reload") } };
globalThis.setTimeout = (fn, ms) => timers.push({ fn, ms });
globalThis.clearTimeout = () => {};
const reply = (status, body) => ({ status, ok: status < 400, statusText: "",
                                   json: async () => body });
globalThis.fetch = async (url, options = {}) => {
  const method = options.method || "GET";
  calls.push([method, url, options.headers["X-CSRF-Token"] || null]);
  if (url === "/api/session/refresh") {
    accessGood = true;
    return reply(200, { username: "ann", admin: false,
                        expires_at: new Date(now + 3600e3).toISOString() });
  }
  if (url === "/api/session") {
    return reply(200, { username: "ann", admin: false,
                        expires_at: new Date(now + 1800e3).toISOString() });
  }
  if (url === "/api/uploads") return reply(201, { image_id: "x" });
  return accessGood ? reply(200, { results: [] }) : reply(401, { error: { code: "unauthorized" } });
};

const seen = [];
const session = new Session({ onSignedIn: (s) => seen.push(s.user),
                              onSignedOut: (m) => seen.push(`out:${m}`) });
await session.start();
const firstDelay = timers.at(-1).ms;
// The timer fires: the session is renewed before the token expires.
await timers.at(-1).fn();
const secondDelay = timers.at(-1).ms;
await createUpload({ name: "a.jpg", size: 3 }, "image/jpeg");
// Two reads meet a 401 together: one renewal, and each is sent again once.
accessGood = false;
await Promise.all([listResults(), listResults()]);
console.log(JSON.stringify({ calls, seen, firstDelay, secondDelay, now }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_the_page_renews_its_session_before_it_expires(client, tmp_path) -> None:
    # Given the page's session and API modules, with the served CSRF module, in a fake browser
    for name in ("api.js", "session.js"):
        shutil.copy(STATIC / name, tmp_path / name)
    (tmp_path / "csrf.js").write_text(client.get("/static/csrf.js").get_data(as_text=True))
    script = tmp_path / "session.mjs"
    script.write_text(SESSION_HARNESS)

    # When it starts signed in, its renewal timer fires, it writes, and two reads meet a 401
    out = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    answer = json.loads(out)

    # Then it renewed a minute before each expiry, sent the CSRF cookie on every write, and
    # renewed once for the two refused reads
    assert 1800e3 - 62e3 < answer["firstDelay"] <= 1800e3 - 60e3
    assert 3600e3 - 62e3 < answer["secondDelay"] <= 3600e3 - 60e3
    token = "tok+en"
    assert answer["calls"] == [
        ["GET", "/api/session", None],
        ["POST", "/api/session/refresh", token],
        ["POST", "/api/uploads", token],
        ["GET", "/api/results?limit=12", None],
        ["GET", "/api/results?limit=12", None],
        ["POST", "/api/session/refresh", token],
        ["GET", "/api/results?limit=12", None],
        ["GET", "/api/results?limit=12", None],
    ]
    assert answer["seen"] == ["ann", "ann", "ann"]
