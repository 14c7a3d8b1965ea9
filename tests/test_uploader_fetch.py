"""The URL import guard: which addresses it refuses, redirects, size, type and time bounds.

Nothing here connects anywhere but loopback: refused addresses are refused before any
connection, and a connector that fails the test stands in wherever none may happen.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from imagepipe.core.settings import Settings
from tests.conftest import LocalWebServer, Reply
from uploader.fetch import MAX_REDIRECTS, FetchError, fetch_image, refusal_reason

MAX_BYTES = 64 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 200


def no_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
    raise AssertionError(f"the guard connected to {address}")


def allow(server: LocalWebServer) -> Any:
    return Settings(import_allow_hosts=f"127.0.0.1:{server.port}").import_allow_list()


def fetch(url: str, **options: Any) -> Any:
    options.setdefault("max_bytes", MAX_BYTES)
    options.setdefault("timeout", 5)
    return fetch_image(url, **options)


def refused(url: str, code: str = "forbidden_address", **options: Any) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetch(url, **options)
    assert caught.value.code == code, caught.value.message
    return caught.value


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.3.4.5",                           # loopback
    "10.0.0.1", "10.255.255.254",                       # 10/8
    "172.16.0.1", "172.31.255.254",                     # 172.16/12
    "192.168.0.1", "192.168.255.254",                   # 192.168/16
    "100.64.0.1", "100.127.255.254",                    # shared, carrier-grade NAT
    "169.254.169.254", "169.254.170.2", "169.254.1.1",  # metadata, link-local
    "0.0.0.0", "0.1.2.3",                               # unspecified, "this network"
    "224.0.0.1", "239.255.255.250",                     # multicast
    "240.0.0.1", "255.255.255.255",                     # reserved, broadcast
    "192.0.2.1", "198.18.0.1",                          # documentation, benchmarking
    "::1", "::",                                        # IPv6 loopback, unspecified
    "fe80::1", "fc00::1", "fd12:3456::1", "fd00:ec2::254",  # link-local, unique local, IMDS
    "ff02::1",                                          # multicast
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:192.168.1.1", "::ffff:0.0.0.0",
    "2002:7f00:1::1", "2002:a9fe:a9fe::1",              # 6to4 of loopback and metadata
    "64:ff9b::a00:1", "64:ff9b::7f00:1",                # NAT64 of 10.0.0.1, 127.0.0.1
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111", "::ffff:8.8.8.8",
    "2002:808:808::1",
])
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_a_local_image_is_fetched_when_allow_listed(web_server: LocalWebServer) -> None:
    web_server.routes["/cat.png"] = Reply(body=PNG, headers={"Content-Type": "text/plain"})

    fetched = fetch(web_server.url("/cat.png?size=large"), allow=allow(web_server))

    assert fetched.data == PNG
    # The bytes decide the type, not the server's header.
    assert fetched.content_type == "image/png"
    method, path, headers = web_server.requests[0]
    assert (method, path) == ("GET", "/cat.png?size=large")
    assert headers["Host"] == f"127.0.0.1:{web_server.port}"
    assert headers["Accept-Encoding"] == "identity"


def test_loopback_is_refused_before_any_request(web_server: LocalWebServer) -> None:
    web_server.routes["/cat.png"] = Reply(body=PNG)

    error = refused(web_server.url("/cat.png"))

    assert error.status_code == 400
    assert "loopback" in error.message
    assert web_server.requests == []


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/a.jpg",
    "http://172.16.5.4/a.jpg",
    "http://192.168.1.10:8080/a.jpg",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[::1]/a.jpg",
    "http://[::ffff:127.0.0.1]/a.jpg",
    "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
    "http://[fe80::1]/a.jpg",
    "http://0.0.0.0/a.jpg",
    "https://100.100.100.200/latest/meta-data/",
])
def test_literal_private_addresses_are_refused_without_connecting(url: str) -> None:
    refused(url, connector=no_connection)


@pytest.mark.parametrize("answers", [
    ["10.0.0.7"],
    ["192.168.0.10"],
    ["169.254.169.254"],
    ["::1"],
    ["::ffff:172.16.0.1"],
    # One private answer among public ones is enough: the connection could go to it.
    ["8.8.8.8", "192.168.1.1"],
])
def test_a_name_that_resolves_to_a_private_address_is_refused(answers: list[str]) -> None:
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answers

    refused("http://images.example.com/cat.jpg", resolver=resolver, connector=no_connection)

    assert asked == [("images.example.com", 80)]


def test_the_address_actually_connected_to_is_checked(web_server: LocalWebServer) -> None:
    # Given a name that resolves to a public address, and a network that delivers the
    # connection to loopback instead (as DNS rebinding or a hijacked route would)
    web_server.routes["/cat.png"] = Reply(body=PNG)
    dialled: list[Any] = []

    def misrouting(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        dialled.append(address)
        return socket.create_connection(("127.0.0.1", web_server.port), timeout=5)

    # When the import is fetched
    error = refused("http://images.example.com/cat.png", resolver=lambda h, p: ["8.8.8.8"],
                    connector=misrouting)

    # Then the peer address is refused before any request goes out
    assert dialled == [("8.8.8.8", 80)]
    assert "127.0.0.1" in error.message
    assert web_server.requests == []


def test_a_redirect_to_a_private_address_is_refused(web_server: LocalWebServer) -> None:
    web_server.routes["/cat.png"] = Reply(302, headers={"Location": "http://10.1.2.3/cat.png"})

    refused(web_server.url("/cat.png"), allow=allow(web_server))

    assert [path for _, path, _ in web_server.requests] == ["/cat.png"]


def test_a_redirect_to_another_loopback_port_is_refused(web_server: LocalWebServer) -> None:
    with LocalWebServer() as other:
        other.routes["/admin"] = Reply(body=PNG)
        web_server.routes["/cat.png"] = Reply(301, headers={"Location": other.url("/admin")})

        refused(web_server.url("/cat.png"), allow=allow(web_server))

        assert other.requests == []


def test_a_redirect_to_a_name_for_a_private_address_is_refused(web_server: LocalWebServer
                                                               ) -> None:
    web_server.routes["/cat.png"] = Reply(307, headers={"Location": "http://intranet.example/"})

    refused(web_server.url("/cat.png"), allow=allow(web_server),
            resolver=lambda host, port: {"intranet.example": ["10.0.0.5"]}[host])

    assert len(web_server.requests) == 1


def test_relative_redirects_are_followed_up_to_the_limit(web_server: LocalWebServer) -> None:
    for hop in range(MAX_REDIRECTS):
        web_server.routes[f"/hop{hop}"] = Reply(302, headers={"Location": f"/hop{hop + 1}"})
    web_server.routes[f"/hop{MAX_REDIRECTS}"] = Reply(body=PNG)

    fetched = fetch(web_server.url("/hop0"), allow=allow(web_server))

    assert fetched.data == PNG
    assert fetched.url == web_server.url(f"/hop{MAX_REDIRECTS}")


def test_one_redirect_too_many_is_refused(web_server: LocalWebServer) -> None:
    for hop in range(MAX_REDIRECTS + 1):
        web_server.routes[f"/hop{hop}"] = Reply(302, headers={"Location": f"/hop{hop + 1}"})
    web_server.routes[f"/hop{MAX_REDIRECTS + 1}"] = Reply(body=PNG)

    refused(web_server.url("/hop0"), "too_many_redirects", allow=allow(web_server))

    assert len(web_server.requests) == MAX_REDIRECTS + 1


def test_an_oversized_body_is_refused_by_its_length(web_server: LocalWebServer) -> None:
    web_server.routes["/big.png"] = Reply(body=PNG + b"\0" * MAX_BYTES)

    error = refused(web_server.url("/big.png"), "too_large", allow=allow(web_server))

    assert error.status_code == 413


def test_an_oversized_streamed_body_is_cut_off(web_server: LocalWebServer) -> None:
    # No Content-Length: the guard counts while it reads and stops past the limit.
    web_server.routes["/big.png"] = Reply(body=PNG + b"\0" * (4 * MAX_BYTES), chunked=True)

    error = refused(web_server.url("/big.png"), "too_large", allow=allow(web_server))

    assert error.status_code == 413


def test_a_body_of_exactly_the_limit_is_taken(web_server: LocalWebServer) -> None:
    body = PNG + b"\0" * (MAX_BYTES - len(PNG))
    web_server.routes["/edge.png"] = Reply(body=body, chunked=True)

    assert fetch(web_server.url("/edge.png"), allow=allow(web_server)).data == body


@pytest.mark.parametrize("body", [
    b"<!doctype html><html><body>a page, not a photo</body></html>",
    b"%PDF-1.7\n" + b"x" * 100,
    b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    b"tiny",
])
def test_a_non_image_body_is_refused(web_server: LocalWebServer, body: bytes) -> None:
    web_server.routes["/photo.jpg"] = Reply(body=body, headers={"Content-Type": "image/jpeg"})

    error = refused(web_server.url("/photo.jpg"), "not_an_image", allow=allow(web_server))

    assert error.status_code == 400


def test_an_empty_body_is_refused(web_server: LocalWebServer) -> None:
    web_server.routes["/empty.jpg"] = Reply(body=b"")

    refused(web_server.url("/empty.jpg"), "empty_image", allow=allow(web_server))


def test_an_error_status_is_a_fetch_failure(web_server: LocalWebServer) -> None:
    web_server.routes["/gone.jpg"] = Reply(404, body=b"not here")

    error = refused(web_server.url("/gone.jpg"), "fetch_failed", allow=allow(web_server))

    assert error.status_code == 502
    assert error.details["upstream_status"] == 404


def test_a_slow_server_times_out(web_server: LocalWebServer) -> None:
    web_server.routes["/slow.png"] = Reply(body=PNG, delay=3)

    error = refused(web_server.url("/slow.png"), "fetch_timeout", allow=allow(web_server),
                    timeout=0.5)

    assert error.status_code == 504


def test_a_slow_resolver_times_out() -> None:
    def slow(host: str, port: int) -> list[str]:
        import time

        time.sleep(2)
        return ["8.8.8.8"]

    refused("http://slow.example/cat.png", "fetch_timeout", resolver=slow, timeout=0.3,
            connector=no_connection)


def test_an_unknown_name_is_reported() -> None:
    def unknown(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    refused("http://no-such-host.example/cat.png", "unknown_host", resolver=unknown)


def test_a_closed_port_is_a_fetch_failure() -> None:
    from imagepipe.local.stack import free_port

    port = free_port()
    error = refused(f"http://127.0.0.1:{port}/cat.png", "fetch_failed",
                    allow=Settings(import_allow_hosts=f"127.0.0.1:{port}").import_allow_list())

    assert error.status_code == 502


@pytest.mark.parametrize("url", [
    "ftp://example.com/cat.jpg",
    "file:///etc/passwd",
    "gopher://example.com/",
    "javascript:alert(1)",
    "data:image/png;base64,iVBORw0KGgo=",
    "http://user:secret@example.com/cat.jpg",
    "http:///cat.jpg",
    "http://example.com:99999/cat.jpg",
    "",
    "http://example.com/" + "a" * 3000,
])
def test_urls_that_are_not_plain_http_are_refused(url: str) -> None:
    refused(url, "invalid_url", connector=no_connection, resolver=no_connection)


def test_an_allow_list_cidr_admits_any_port(web_server: LocalWebServer) -> None:
    web_server.routes["/cat.png"] = Reply(body=PNG)

    allowed = Settings(import_allow_hosts="127.0.0.0/8").import_allow_list()

    assert fetch(web_server.url("/cat.png"), allow=allowed).data == PNG


def test_an_allow_list_entry_for_another_port_does_not_admit(web_server: LocalWebServer
                                                             ) -> None:
    web_server.routes["/cat.png"] = Reply(body=PNG)
    other_port = web_server.port + 1 if web_server.port < 65535 else web_server.port - 1

    refused(web_server.url("/cat.png"),
            allow=Settings(import_allow_hosts=f"127.0.0.1:{other_port}").import_allow_list())
