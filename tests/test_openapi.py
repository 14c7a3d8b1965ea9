"""GET /api/openapi.json: a valid OpenAPI 3.1 document of exactly the app's routes, whose
examples hold against their schemas and against what the app really answers."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from imagepipe.app import OPENAPI_PATH, openapi_document
from imagepipe.core.aws import make_clients
from imagepipe.core.records import ImageFacts, Label, ResultRecord
from imagepipe.local.stack import free_port
from tests.conftest import PASSWORD, LocalWebServer

DOCUMENT = openapi_document()
METHODS = ("get", "post", "put", "patch", "delete")


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A response or schema with its $ref followed (components only)."""
    while "$ref" in node:
        kind, name = node["$ref"].removeprefix("#/components/").split("/")
        node = DOCUMENT["components"][kind][name]
    return node


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator of `schema`, whose $refs point into the document."""
    return Draft202012Validator({**schema, "components": DOCUMENT["components"]})


def examples() -> Iterator[tuple[str, str, str, dict[str, Any], Any]]:
    """(path, method, status, schema, example) of every response example."""
    for path, method, operation in operations():
        for status, response in operation["responses"].items():
            for media in resolve(response).get("content", {}).values():
                if "example" in media:
                    yield path, method, status, media["schema"], media["example"]


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    validate(DOCUMENT)


def test_it_is_served_to_anyone(client_for, settings) -> None:
    response = client_for(settings, user=None).get(OPENAPI_PATH)

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == DOCUMENT


def test_every_route_is_documented_and_every_documented_route_exists(app: Any) -> None:
    served = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, method, _ in operations()}
    assert documented == served


def test_errors_are_described_once_and_referenced() -> None:
    for path, method, operation in operations():
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert "$ref" in response, f"{method} {path} {status}: refer to a component"
    for name, response in DOCUMENT["components"]["responses"].items():
        example = response["content"]["application/json"]["example"]
        validator(response["content"]["application/json"]["schema"]).validate(example)
        assert validator({"$ref": "#/components/schemas/Error"}).is_valid(example), name


def test_public_operations_are_those_open_to_anyone() -> None:
    open_paths = {(path, method) for path, method, op in operations() if op["security"] == []}
    assert {("/healthz", "get"), ("/readyz", "get"), (OPENAPI_PATH, "get"),
            ("/api/config", "get")} <= open_paths
    assert ("/api/results/{image_id}", "get") not in open_paths


@pytest.mark.parametrize("path,method,status,schema,example",
                         list(examples()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_example_validates_against_its_schema(path: str, method: str, status: str,
                                                    schema: dict[str, Any], example: Any
                                                    ) -> None:
    validator(schema).validate(example)


# The real responses: a request for every example, from a signed-in admin unless it is public.

@dataclasses.dataclass
class Calls:
    client: Any
    image: ResultRecord
    import_url: str
    png: str
    # Builds another app of these settings with some changed.
    app_with: Callable[..., Any]
    # Builds an app whose AWS endpoint nobody listens on.
    app_down: Callable[[], Any]


@pytest.fixture
def calls(settings, clients, client_for: Callable[..., Any], store,
          image_server: LocalWebServer, photos: Any) -> Calls:
    from imagepipe.app import create_app

    key = "photos/cat.jpg"
    from imagepipe.core.ids import image_id_for_object

    image = ResultRecord(image_id=image_id_for_object(settings.bucket, key),
                         bucket=settings.bucket, key=key).done(
        [Label("tabby", 0.9, 281)], "efficientnet_lite0", "1")
    image = dataclasses.replace(image, image=ImageFacts("JPEG", 10, 10, 100), timings={
        "queue_ms": 310.2, "download_ms": 4.1, "decode_ms": 2.9, "inference_ms": 18.5,
        "total_ms": 41.0})
    store.save_result(image)
    down = dataclasses.replace(settings, auth=False,
                               endpoint_url=f"http://127.0.0.1:{free_port()}")
    allowed = dataclasses.replace(settings, import_allow_hosts=f"127.0.0.1:{image_server.port}",
                                  sync_wait_seconds=0, rate_limit_per_minute=0)
    return Calls(client_for(allowed), image, image_server.url("/photos/chelsea.jpg"),
                 base64.b64encode(photos.cat_png).decode(),
                 lambda **changes: create_app(dataclasses.replace(settings, **changes),
                                              clients, store),
                 lambda: create_app(down, make_clients(down, max_attempts=1)))


def _signed_in_page(calls: Calls) -> Any:
    page = calls.client.application.test_client()
    assert page.post("/api/session", json={"username": "alice",
                                           "password": PASSWORD}).status_code == 200
    return page


REQUESTS: dict[tuple[str, str, str], Callable[[Calls], Any]] = {
    ("/api/uploads", "post", "201"): lambda c: c.client.post("/api/uploads", json={
        "filename": "cat.jpg", "content_type": "image/jpeg", "size": 31022}),
    ("/api/imports", "post", "201"): lambda c: c.client.post("/api/imports",
                                                             json={"url": c.import_url}),
    ("/api/image_recognition", "post", "202"): lambda c: c.client.post(
        "/api/image_recognition", data={"img": c.png}),
    ("/api/config", "get", "200"): lambda c: c.client.get("/api/config"),
    ("/api/results/{image_id}", "get", "200"): lambda c: c.client.get(
        f"/api/results/{c.image.image_id}"),
    ("/api/results", "get", "200"): lambda c: c.client.get("/api/results"),
    ("/api/results/batch", "post", "200"): lambda c: c.client.post(
        "/api/results/batch", json={"ids": [c.image.image_id]}),
    ("/api/models", "get", "200"): lambda c: c.client.get("/api/models"),
    ("/api/session", "post", "200"): lambda c: c.client.application.test_client().post(
        "/api/session", json={"username": "alice", "password": PASSWORD}),
    ("/api/session", "get", "200"): lambda c: c.client.get("/api/session"),
    ("/api/session/refresh", "post", "200"): lambda c: (lambda page: page.post(
        "/api/session/refresh", headers={"X-CSRF-Token": page.get_cookie(
            "imagepipe_csrf").value}))(_signed_in_page(c)),
    ("/healthz", "get", "200"): lambda c: c.client.get("/healthz"),
    ("/readyz", "get", "200"): lambda c: c.client.get("/readyz"),
}
# Error examples: the same component response for every route; one real answer each.
ERROR_REQUESTS: dict[str, Callable[[Calls], Any]] = {
    "BadRequest": lambda c: c.client.get("/api/results?limit=1000"),
    "Unauthorized": lambda c: c.client.application.test_client().get("/api/results"),
    "Forbidden": lambda c: (lambda page: page.delete("/api/session"))(_signed_in_page(c)),
    "NotFound": lambda c: c.client.get("/api/results/b3JqZ2c4dnVmYWJxY2d0dA"),
    "TooLarge": lambda c: c.client.post("/api/image_recognition", data={
        "img": base64.b64encode(b"\0" * (2 * 1024 * 1024 + 1)).decode()}),
    "UnsupportedMediaType": lambda c: c.client.application.test_client().post(
        "/api/session", data="username=alice"),
    "NotReady": lambda c: c.app_with(queue="no-such-queue").test_client().get("/readyz"),
    "TooManyRequests": lambda c: (lambda front: [front.post("/api/uploads", json={
        "filename": "a.jpg", "content_type": "image/jpeg", "size": 1}) for _ in range(2)][-1])(
        c.app_with(rate_limit_per_minute=1, rate_limit_burst=1, auth=False).test_client()),
    # An endpoint nobody listens on: the AWS calls fail as when the endpoint is down.
    "Unavailable": lambda c: c.app_down().test_client().get("/api/results"),
    "BadGateway": lambda c: c.client.post("/api/imports", json={
        "url": c.import_url.replace("/photos/chelsea.jpg", "/no/such/photo.jpg")}),
}
# Not produced here: a slow server (tests/test_uploader_fetch.py answers it).
UNREQUESTED = {"GatewayTimeout"}


def test_every_error_response_has_a_real_request_or_a_reason() -> None:
    assert set(ERROR_REQUESTS) | UNREQUESTED == set(DOCUMENT["components"]["responses"])



def _same_shape(example: Any, real: Any, where: str = "") -> None:
    """The example has the fields the real answer has, at every level of objects."""
    if isinstance(example, dict) and isinstance(real, dict):
        assert set(example) == set(real), where
        for name in example:
            _same_shape(example[name], real[name], f"{where}.{name}")
    elif isinstance(example, list) and isinstance(real, list) and example and real:
        _same_shape(example[0], real[0], f"{where}[0]")


def test_every_success_example_has_a_real_request() -> None:
    found = {(path, method, status) for path, method, status, _, _ in examples()
             if int(status) < 400}
    assert found == set(REQUESTS)


@pytest.mark.parametrize("key", list(REQUESTS), ids=lambda k: " ".join(k))
def test_the_app_answers_as_the_examples_say(calls: Calls, key: tuple[str, str, str]) -> None:
    path, method, status = key
    (schema, example), = [(s, e) for p, m, st, s, e in examples() if (p, m, st) == key]

    response = REQUESTS[key](calls)

    assert str(response.status_code) == status, response.get_data(as_text=True)[:300]
    real = response.get_json()
    validator(schema).validate(real)
    _same_shape(example, real, f"{method} {path}")


@pytest.mark.parametrize("name", list(ERROR_REQUESTS))
def test_the_error_examples_are_real_errors(calls: Calls, name: str) -> None:
    response = DOCUMENT["components"]["responses"][name]["content"]["application/json"]

    answer = ERROR_REQUESTS[name](calls)

    real = answer.get_json()
    validator(response["schema"]).validate(real)
    assert real["error"]["code"] == response["example"]["error"]["code"], real
