"""Outbound HTTP from the pipeline that never reaches into our own network.

URL imports (uploader.fetch) and webhook deliveries (processor.webhooks) both go through this
guard. It resolves the name once, refuses it unless every address it resolves to is public (or
allow-listed), connects to one of those checked addresses itself, and checks the peer address
of the socket again once connected, so a name that changes its answer between the check and
the connection (DNS rebinding) cannot reach a private service. A redirect is a new URL, to be
checked the same way by whoever follows it.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from imagepipe.core.errors import ApiError
from imagepipe.core.settings import AllowedAddress

logger = logging.getLogger(__name__)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
Connector = Callable[..., socket.socket]

MAX_URL_LENGTH = 2048

_CLOUD_METADATA = frozenset({
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"),  # ECS task metadata
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
})
_SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchError(ApiError):
    """An import the guard refused or that could not be fetched, answered as an API error."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    host_header: str
    path: str


def refusal_reason(address: IpAddress) -> str | None:
    """Why an import may not connect to this address, or None when it is a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # A socket to ::ffff:a.b.c.d is a socket to a.b.c.d, nothing else.
            reason = refusal_reason(address.ipv4_mapped)
            return f"{reason} (inside the IPv6 address {address})" if reason else None
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = refusal_reason(embedded)
            if reason:
                return f"{reason} (inside the IPv6 address {address})"
    if address in _CLOUD_METADATA:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.version == 4 and address in _SHARED_SPACE:
        return "a shared (carrier-grade NAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a public address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries to a relay (6to4, Teredo client, NAT64), if any."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class AddressGuard:
    """Decides which addresses an import may connect to: public ones and the allow-list."""

    def __init__(self, allow: Sequence[AllowedAddress] = ()) -> None:
        self.allow = tuple(allow)

    def check(self, raw: str, port: int) -> IpAddress:
        """The address parsed, or FetchError(forbidden_address) if it may not be reached."""
        # getpeername() adds a zone to link-local IPv6 addresses ("fe80::1%eth0").
        address = ipaddress.ip_address(raw.split("%", 1)[0])
        if any(entry.admits(address, port) for entry in self.allow):
            return address
        reason = refusal_reason(address)
        if reason:
            raise FetchError(400, "forbidden_address",
                             f"the URL leads to {address}, {reason}; requests go only to "
                             "public addresses")
        return address


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_url(url: str) -> Target:
    if not isinstance(url, str) or not url.strip():
        raise FetchError(400, "invalid_url", "url must be a non-empty string")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise FetchError(400, "invalid_url", f"the URL is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(400, "invalid_url", "only http and https URLs can be imported")
    if parts.username is not None or parts.password is not None:
        raise FetchError(400, "invalid_url", "URLs with a user name or password are refused")
    if not parts.hostname:
        raise FetchError(400, "invalid_url", "the URL has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise FetchError(400, "invalid_url", "the URL's host or port is malformed") from None
    literal = f"[{host}]" if ":" in host else host
    default_port = 443 if scheme == "https" else 80
    host_header = literal if port == default_port else f"{literal}:{port}"
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return Target(scheme, host, port, host_header, path)


def remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(504, "fetch_timeout", "the image took too long to fetch")
    return left


def resolve(target: Target, guard: AddressGuard, resolver: Resolver,
             deadline: float) -> list[IpAddress]:
    """Resolve once and check every address; one refused address refuses the name."""
    try:
        addresses = [ipaddress.ip_address(target.host)]
    except ValueError:
        addresses = [ipaddress.ip_address(a.split("%", 1)[0])
                     for a in _resolve_within(resolver, target, deadline)]
    if not addresses:
        raise FetchError(400, "unknown_host", f"{target.host} does not resolve")
    return [guard.check(str(address), target.port) for address in addresses]


def _resolve_within(resolver: Resolver, target: Target, deadline: float) -> Sequence[str]:
    # getaddrinfo has no timeout of its own.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egress-resolve")
    try:
        return pool.submit(resolver, target.host, target.port).result(remaining(deadline))
    except FutureTimeout:
        raise FetchError(504, "fetch_timeout", f"resolving {target.host} took too long") from None
    except (socket.gaierror, UnicodeError):
        raise FetchError(400, "unknown_host", f"{target.host} does not resolve") from None
    finally:
        pool.shutdown(wait=False)


class GuardedConnection(http.client.HTTPConnection):
    """A connection to one checked address that checks the peer it actually reached."""

    def __init__(self, address: IpAddress, target: Target, guard: AddressGuard,
                 connector: Connector, timeout: float) -> None:
        super().__init__(str(address), target.port, timeout=timeout)
        self._guard = guard
        self._create_connection = connector

    def connect(self) -> None:
        super().connect()
        try:
            self._guard.check(self.sock.getpeername()[0], self.port)
        except FetchError:
            self.close()
            raise


class GuardedTlsConnection(GuardedConnection):
    """The same over TLS, with SNI and certificate check for the URL's name, not the IP."""

    def __init__(self, address: IpAddress, target: Target, guard: AddressGuard,
                 connector: Connector, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(address, target, guard, connector, timeout)
        self._server_hostname = target.host
        self._context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_hostname)


def open_guarded(
    target: Target,
    addresses: list[IpAddress],
    guard: AddressGuard,
    connector: Connector,
    ssl_context: ssl.SSLContext | None,
    deadline: float,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[GuardedConnection, http.client.HTTPResponse]:
    """Send the request to the first checked address that answers; its connection and answer.

    Nothing here follows a redirect: the caller checks its Location as a new URL, or stops.
    """
    last_error: OSError | None = None
    for address in addresses:
        timeout = remaining(deadline)
        if target.scheme == "https":
            connection: GuardedConnection = GuardedTlsConnection(
                address, target, guard, connector, timeout,
                ssl_context or ssl.create_default_context())
        else:
            connection = GuardedConnection(address, target, guard, connector, timeout)
        try:
            connection.request(method, target.path, body=body, headers={
                "Host": target.host_header, "Connection": "close", **(headers or {})})
            return connection, connection.getresponse()
        except FetchError:
            connection.close()
            raise
        except TimeoutError:
            connection.close()
            raise FetchError(504, "fetch_timeout",
                             f"{target.host} did not answer in time") from None
        except ssl.SSLError as exc:
            connection.close()
            raise FetchError(502, "fetch_failed",
                             f"no trusted TLS connection to {target.host}: {exc.reason}"
                             ) from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            last_error = exc if isinstance(exc, OSError) else OSError(str(exc))
            logger.info("request to %s via %s failed: %s", target.host, address, exc)
    raise FetchError(502, "fetch_failed", f"could not fetch from {target.host}: {last_error}")




def check_url(url: str, allow: Sequence[AllowedAddress] = (), timeout: float = 5.0,
              resolver: Resolver = system_resolver) -> str:
    """The URL, stripped, if the guard lets a request reach it now; FetchError if not.

    What is checked now is checked again at every connection: a name may change its answer.
    """
    target = parse_url(url)
    resolve(target, AddressGuard(allow), resolver, time.monotonic() + timeout)
    return url.strip()
