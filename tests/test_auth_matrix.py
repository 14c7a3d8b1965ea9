"""Every endpoint against every kind of caller, generated from one table.

The callers: nobody, the image's owner, another user, an admin, and eight kinds of token that
prove nothing (expired; signed by another key under the pool's key ID; `alg: none`; HS256 keyed
with the pool's public key; another app client's; an ID token where an access token is wanted;
garbage; a malformed header). Public endpoints answer everyone; every other one answers 401 to
all but the signed-in, and another user's image answers exactly as a missing one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto.utilities.utils import load_resource

from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import ImageFacts, Label, ResultRecord, ResultStore
from imagepipe.core.users import AUTH_FLOWS
from tests.conftest import LocalWebServer, Users

OWNER, OTHER, ADMIN = "alice", "bob", "tester"
SIGNED_IN = (OWNER, OTHER, ADMIN)
FORGED = ("expired", "other_key_same_kid", "alg_none", "hs256_public_key", "other_client",
          "id_token", "garbage", "not_bearer")
CALLERS = ("anonymous", *SIGNED_IN, *FORGED)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _pool_private_key() -> Any:
    """The signing key of moto's Cognito (public in moto's sources): forging a valid signature
    on an expired token needs it."""
    key = load_resource("cognitoidp/resources/jwks-private.json")
    return jwt.PyJWK.from_dict(key).key


@functools.cache
def _stranger_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class World:
    """The signed-in people, the headers each kind of caller sends, and an image of Alice's."""

    users: Users
    image: ResultRecord
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    import_url: str = ""
    png: str = ""
    store: ResultStore | None = None


@pytest.fixture
def world(users: Users, store: ResultStore, clients: Any) -> World:
    # Alice's, as a photo dropped under her prefix is: its ID follows from its key.
    key = f"users/{users.subs[OWNER]}/cat.jpg"
    image = ResultRecord(
        image_id=image_id_for_object("test-images", key), bucket="test-images", key=key,
        owner=users.subs[OWNER],
    ).done([Label("tabby", 0.9, 281)], "efficientnet_lite0", "1")
    image = ResultRecord(**{**vars(image), "image": ImageFacts("JPEG", 10, 10, 100)})
    store.save_result(image)

    access = users.token(OWNER)
    claims = _claims(access)
    now = int(time.time())
    expired = jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600},
                         _pool_private_key(), algorithm="RS256", headers={"kid": "dummy"})
    stranger = _stranger_key()
    other_key = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": "dummy"})
    alg_none = ".".join([_b64(json.dumps({"alg": "none", "kid": "dummy"}).encode()),
                         _b64(json.dumps(claims).encode()), ""])
    public_pem = _pool_private_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = ".".join([_b64(json.dumps({"alg": "HS256", "kid": "dummy",
                                               "typ": "JWT"}).encode()),
                              _b64(json.dumps(claims).encode())])
    hs256 = signing_input + "." + _b64(hmac.new(public_pem, signing_input.encode(),
                                                hashlib.sha256).digest())
    other_client = clients.cognito.create_user_pool_client(
        UserPoolId=users.pool_id, ClientName="another-app", ExplicitAuthFlows=list(AUTH_FLOWS),
    )["UserPoolClient"]["ClientId"]
    foreign = clients.cognito.initiate_auth(
        ClientId=other_client, AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": OWNER, "PASSWORD": "Test-password-1234"},
    )["AuthenticationResult"]["AccessToken"]

    bearer = {
        OWNER: access, OTHER: users.token(OTHER), ADMIN: users.token(ADMIN),
        "expired": expired, "other_key_same_kid": other_key, "alg_none": alg_none,
        "hs256_public_key": hs256, "other_client": foreign,
        "id_token": users.tokens(OWNER)["IdToken"], "garbage": "garbage.garbage.garbage",
    }
    world = World(users, image, store=store)
    world.headers = {name: {"Authorization": f"Bearer {token}"} for name, token in bearer.items()}
    world.headers["anonymous"] = {}
    # A token, but not in the Bearer scheme.
    world.headers["not_bearer"] = {"Authorization": f"Basic {access}"}
    return world


@dataclass(frozen=True)
class Endpoint:
    """A request, and what each signed-in caller gets (every other caller gets 401)."""

    name: str
    call: Callable[[Any, World], Any]
    # Status per signed-in caller; `check` then looks at the body.
    status: dict[str, int]
    check: Callable[[str, Any, World], None] = lambda caller, response, world: None
    public: bool = False


def _listing(caller: str, response: Any, world: World) -> None:
    ids = [r["image_id"] for r in response.get_json()["results"]]
    assert (world.image.image_id in ids) == (caller != OTHER)


def _batch(caller: str, response: Any, world: World) -> None:
    (entry,) = response.get_json()["results"]
    assert entry["status"] == ("not_found" if caller == OTHER else "done")


def _not_found_like_missing(caller: str, response: Any, world: World) -> None:
    if caller == OTHER:
        assert response.get_json() == {"error": {
            "code": "not_found", "message": f"no image {world.image.image_id}"}}


def _delete(client: Any, world: World) -> Any:
    """DELETE Alice's image, put back first if an earlier caller deleted it."""
    world.store.save_result(world.image)
    return client.delete(f"/api/results/{world.image.image_id}")


def _deleted_if_allowed(caller: str, response: Any, world: World) -> None:
    # 204 for all, so the answer tells Bob nothing; only what was done differs.
    assert (world.store.get(world.image.image_id) is None) == (caller != OTHER)


def _is_caller(caller: str, response: Any) -> None:
    assert response.get_json()["username"] == caller


UPLOAD = {"filename": "a.jpg", "content_type": "image/jpeg", "size": 10}
ALL_OK = dict.fromkeys(SIGNED_IN, 200)

ENDPOINTS = (
    Endpoint("POST /api/uploads", lambda c, w: c.post("/api/uploads", json=UPLOAD),
             dict.fromkeys(SIGNED_IN, 201)),
    Endpoint("POST /api/imports", lambda c, w: c.post("/api/imports",
                                                      json={"url": w.import_url}),
             dict.fromkeys(SIGNED_IN, 201)),
    Endpoint("POST /api/image_recognition",
             lambda c, w: c.post("/api/image_recognition", data={"img": w.png}),
             dict.fromkeys(SIGNED_IN, 202)),
    Endpoint("GET /api/results/<id>", lambda c, w: c.get(f"/api/results/{w.image.image_id}"),
             {OWNER: 200, OTHER: 404, ADMIN: 200}, _not_found_like_missing),
    Endpoint("GET /api/results/<id>/image",
             lambda c, w: c.get(f"/api/results/{w.image.image_id}/image"),
             {OWNER: 302, OTHER: 404, ADMIN: 302}, _not_found_like_missing),
    Endpoint("GET /api/results?key=", lambda c, w: c.get("/api/results",
                                                         query_string={"key": w.image.key}),
             {OWNER: 200, OTHER: 404, ADMIN: 200}, _not_found_like_missing),
    Endpoint("GET /api/results", lambda c, w: c.get("/api/results"), ALL_OK, _listing),
    Endpoint("GET /api/results?label=", lambda c, w: c.get("/api/results?label=tabby"),
             ALL_OK, _listing),
    Endpoint("GET /api/results?status=", lambda c, w: c.get("/api/results?status=done"),
             ALL_OK, _listing),
    Endpoint("POST /api/results/batch",
             lambda c, w: c.post("/api/results/batch", json={"ids": [w.image.image_id]}),
             ALL_OK, _batch),
    Endpoint("DELETE /api/results/<id>", _delete, dict.fromkeys(SIGNED_IN, 204),
             _deleted_if_allowed),
    Endpoint("GET /results/<id>", lambda c, w: c.get(f"/results/{w.image.image_id}"), ALL_OK,
             public=True),
    Endpoint("GET /api/models", lambda c, w: c.get("/api/models"), ALL_OK),
    Endpoint("GET /api/session", lambda c, w: c.get("/api/session"), ALL_OK,
             lambda caller, response, world: _is_caller(caller, response)),
    Endpoint("GET /healthz", lambda c, w: c.get("/healthz"), ALL_OK, public=True),
    Endpoint("GET /readyz", lambda c, w: c.get("/readyz"), ALL_OK, public=True),
    Endpoint("GET /api/openapi.json", lambda c, w: c.get("/api/openapi.json"), ALL_OK,
             public=True),
    Endpoint("GET /api/config", lambda c, w: c.get("/api/config"), ALL_OK, public=True),
    Endpoint("GET /", lambda c, w: c.get("/"), ALL_OK, public=True),
    Endpoint("GET /static/app.css", lambda c, w: c.get("/static/app.css"), ALL_OK,
             public=True),
)


@pytest.fixture
def front(settings: Any, client_for: Callable[..., Any], image_server: LocalWebServer,
          world: World, photos: Any) -> Any:
    import dataclasses

    allowed = dataclasses.replace(settings, import_allow_hosts=f"127.0.0.1:{image_server.port}",
                                  sync_wait_seconds=0, rate_limit_per_minute=0)
    world.import_url = image_server.url("/photos/chelsea.jpg")
    world.png = base64.b64encode(photos.cat_png).decode()
    return client_for(allowed, user=None)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_every_endpoint_answers_every_caller(front: Any, world: World,
                                             endpoint: Endpoint) -> None:
    for caller in CALLERS:
        front.environ_base.pop("HTTP_AUTHORIZATION", None)
        for name, value in world.headers[caller].items():
            front.environ_base[f"HTTP_{name.upper()}"] = value

        response = endpoint.call(front, world)

        body = (caller, response.get_data(as_text=True)[:300])
        if endpoint.public or caller in SIGNED_IN:
            expected = endpoint.status[caller] if caller in SIGNED_IN else 200
            assert response.status_code == expected, body
            if caller in SIGNED_IN:
                endpoint.check(caller, response, world)
            continue
        assert response.status_code == 401, body
        assert response.get_json()["error"]["code"] == "unauthorized", body
        assert response.headers["WWW-Authenticate"] == "Bearer", body


def test_what_a_user_adds_is_theirs_alone(front: Any, world: World) -> None:
    """Uploads, imports and the synchronous API record the caller as the owner."""
    def as_(caller: str) -> Any:
        front.environ_base["HTTP_AUTHORIZATION"] = world.headers[caller]["Authorization"]
        return front

    made = [
        as_(OWNER).post("/api/uploads", json=UPLOAD),
        as_(OWNER).post("/api/imports", json={"url": world.import_url}),
        as_(OWNER).post("/api/image_recognition", data={"img": world.png}),
    ]
    for response in made:
        assert response.status_code in (201, 202), response.get_json()
        image_id = response.get_json()["image_id"]
        mine = as_(OWNER).get(f"/api/results/{image_id}")
        assert mine.status_code == 200
        assert mine.get_json()["owner"] == world.users.subs[OWNER]
        assert as_(OTHER).get(f"/api/results/{image_id}").status_code == 404
        assert as_(ADMIN).get(f"/api/results/{image_id}").status_code == 200
    listed = as_(OTHER).get("/api/results").get_json()["results"]
    assert listed == []
    # A cursor of Alice's listing does not open Bob's query onto her results.
    page = as_(OWNER).get("/api/results?limit=1").get_json()
    assert page["next_cursor"]
    stolen = as_(OTHER).get("/api/results", query_string={"limit": 1,
                                                          "cursor": page["next_cursor"]})
    assert stolen.status_code == 400
    assert stolen.get_json()["error"]["code"] == "invalid_cursor"
