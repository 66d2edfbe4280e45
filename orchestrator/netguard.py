"""Which network addresses a server-side request may reach, so Cortex never becomes an SSRF proxy.

Used wherever the server connects to an address someone typed: the `http_get` tool (which checks
every connection it opens, see tools/builtin/web.py) and model endpoints in people's own profiles
(checked when the profile is saved and again before every connection test and model call).
Private, loopback and link-local addresses are refused unless CORTEX_HTTP_ALLOW_PRIVATE is set.

`checked_transport` closes the gap between a check and the connection it vouches for: it resolves
the host once, refuses the whole request if any resolved address is not public, and connects to
the checked address itself. Nothing resolves the name a second time, so a DNS answer that
changes between check and connect (rebinding) cannot slip a private address in. TLS still runs
against the URL's hostname, so SNI and certificate verification are unchanged. The model
endpoints' transport (`endpoint_transport`, over `http1`) connects the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpcore2
import httpx
import httpx2
from django.conf import settings

from . import http1

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges that carry an IPv4 address in their low 32 bits; judged by that IPv4 address.
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated, still routed by some stacks
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class Unreachable(Exception):
    """A destination a server-side request may not (or cannot) connect to."""


class AddressRefused(Unreachable):
    """The destination is not a public address and private access is off."""


class HostUnknown(Unreachable):
    """The destination's name resolves to no address."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _IPV4_TRANSLATED or any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _why_not_public(ip: IPAddress) -> tuple[str, bool] | None:
    """None for a public unicast address; else (what it is, whether it is refused even when
    private access is allowed)."""
    if ip.is_unspecified:
        return "an unspecified address", True
    if ip.is_multicast:
        return "a multicast address", True
    if ip.is_loopback:
        return "a loopback address", False
    if ip.is_link_local:
        return "a link-local address", False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            verdict = _why_not_public(embedded)
            if verdict is None:
                return None
            return f"an IPv6 form of {embedded}, {verdict[0]}", verdict[1]
        if ip.is_site_local:
            return "a site-local address", False
    if ip.is_private:
        return "a private address", False
    if ip.is_reserved:
        return "a reserved address", False
    if not ip.is_global:
        return "a non-public address", False
    return None


def check_address(ip: IPAddress | str, allow_private: bool) -> IPAddress:
    """Return `ip` if a request may connect to it, else raise AddressRefused.

    Public unicast addresses are always allowed. With `allow_private`, private, loopback,
    link-local and reserved addresses are allowed too; unspecified and multicast never are,
    because no HTTP server can be reached at them on purpose.
    """
    try:
        address = ip if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(ip)
    except ValueError:
        raise AddressRefused(f"{ip!r} is not an IP address") from None
    verdict = _why_not_public(address)
    if verdict is None:
        return address
    what, always_refused = verdict
    if allow_private and not always_refused:
        return address
    raise AddressRefused(f"refused to connect to {address}: it is {what}; only public addresses may be reached")


def _literal(host: str) -> IPAddress | None:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    return None


def _addresses(host: str, infos: list[tuple[Any, ...]]) -> list[IPAddress]:
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise HostUnknown(f"host {host!r} has no addresses")
    return addresses


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself), without duplicates."""
    if (literal := _literal(host)) is not None:
        return [literal]
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise HostUnknown(f"cannot resolve host {host!r}: {exc}") from None
    return _addresses(host, infos)


def resolve_host_blocking(host: str, port: int) -> list[IPAddress]:
    """`resolve_host` for synchronous code (saving a form), where no event loop may be started."""
    if (literal := _literal(host)) is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise HostUnknown(f"cannot resolve host {host!r}: {exc}") from None
    return _addresses(host, infos)


async def checked_addresses(host: str, port: int, allow_private: bool) -> list[IPAddress]:
    """Resolve `host` and check every answer; one refused answer refuses the host."""
    return [check_address(address, allow_private) for address in await resolve_host(host, port)]


def _host_and_port(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise Unreachable(f"not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unreachable(f"not an http(s) URL: {url[:100]!r}")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, *, allow_private: bool) -> list[IPAddress]:
    """The addresses `url`'s host resolves to, if every one of them may be reached; else raise."""
    host, port = _host_and_port(url)
    return await checked_addresses(host, port, allow_private)


def check_endpoint_blocking(url: str) -> None:
    """`check_endpoint` for synchronous code."""
    host, port = _host_and_port(url)
    for address in resolve_host_blocking(host, port):
        check_address(address, settings.CORTEX_HTTP_ALLOW_PRIVATE)


async def check_endpoint(url: str) -> None:
    """A model endpoint someone typed, checked under the site's setting. Run right before every
    connection to it: a name that resolved to a public address yesterday may not today."""
    await check_url(url, allow_private=settings.CORTEX_HTTP_ALLOW_PRIVATE)


@functools.cache
def _stream_class(core: ModuleType) -> type:
    """A connection of `core`'s (httpcore or httpcore2) that answers "has the server closed you?"
    from its socket directly. The pool asks that of every idle connection each time it hands one
    out or takes one back; anyio, asked the same, builds a table of the socket's attributes and
    asks the kernel for the peer's address every time, which with a few hundred model calls in
    flight cost more than the calls' own HTTP."""

    class PolledStream(core.AsyncNetworkStream):
        def __init__(self, inner: Any) -> None:
            self._inner = inner
            self._socket = inner.get_extra_info("socket")

        async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return await self._inner.read(max_bytes, timeout)

        async def write(self, buffer: bytes, timeout: float | None = None) -> None:
            await self._inner.write(buffer, timeout)

        async def aclose(self) -> None:
            await self._inner.aclose()

        async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                            timeout: float | None = None) -> Any:
            return PolledStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

        def get_extra_info(self, info: str) -> Any:
            return http1.readable(self._socket) if info == "is_readable" else self._inner.get_extra_info(info)

    return PolledStream


@functools.cache
def _plain_backend_class(core: ModuleType) -> type:
    """`core`'s own network backend, with connections that are cheap to ask whether they are still
    open (`_stream_class`)."""

    class PlainNetworkBackend(core.AnyIOBackend):
        async def connect_tcp(self, *args: Any, **kwargs: Any) -> Any:
            return _stream_class(core)(await super().connect_tcp(*args, **kwargs))

        async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
            return _stream_class(core)(await super().connect_unix_socket(*args, **kwargs))

    return PlainNetworkBackend


@functools.cache
def _backend_class(core: ModuleType) -> type:
    """A network backend for `core` (httpcore, or httpcore2 under the provider SDKs' httpx2: the
    same API under two names) that opens TCP connections only to addresses that passed
    `check_address`."""

    class CheckedNetworkBackend(core.AsyncNetworkBackend):
        def __init__(self, allow_private: bool | Callable[[], bool]) -> None:
            self._allow_private = allow_private
            self._inner = _plain_backend_class(core)()

        async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                              local_address: str | None = None, socket_options: Iterable[Any] | None = None):
            allow = self._allow_private() if callable(self._allow_private) else self._allow_private
            addresses = await checked_addresses(host, port, allow)
            failure: Exception | None = None
            for address in addresses:
                try:
                    # An IP literal: the inner backend connects to exactly this address.
                    return await self._inner.connect_tcp(str(address), port, timeout=timeout,
                                                         local_address=local_address, socket_options=socket_options)
                except (core.ConnectError, core.ConnectTimeout) as exc:
                    failure = exc
            assert failure is not None
            raise failure

        async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                      socket_options: Iterable[Any] | None = None):
            raise AddressRefused("unix sockets are not allowed")

        async def sleep(self, seconds: float) -> None:
            await self._inner.sleep(seconds)

    return CheckedNetworkBackend


def checked_transport(allow_private: bool | Callable[[], bool], *, http: ModuleType = httpx, core: ModuleType = httpcore,
                      ssl_context: ssl.SSLContext | None = None, max_connections: int = 4,
                      keepalive_expiry: float = 5.0) -> Any:
    """An `http.AsyncHTTPTransport` whose every connection goes through the checked backend. A
    refused address raises `Unreachable` out of the request (an SDK may wrap it as a connection
    error). `allow_private` may be a function, asked at every connection."""
    context = ssl_context or http.create_ssl_context()
    transport = http.AsyncHTTPTransport(verify=context, trust_env=False, retries=0)
    # httpx offers no public hook for the network backend, so the pool it built is replaced.
    # Fail loudly if that attribute ever moves: silently keeping httpx's pool would bypass the
    # address check of `checked_transport`.
    if not isinstance(getattr(transport, "_pool", None), core.AsyncConnectionPool):
        raise RuntimeError("this httpx version does not keep its pool in _pool; the network backend cannot be installed")
    transport._pool = core.AsyncConnectionPool(ssl_context=context, http1=True, http2=False, retries=0,
                                               network_backend=_backend_class(core)(allow_private),
                                               max_connections=max_connections, keepalive_expiry=keepalive_expiry)
    return transport


def tls_context() -> ssl.SSLContext:
    """The TLS context the provider SDKs' transports would make for themselves (httpx2's), made
    once, for a provider's clients to share."""
    return httpx2.create_ssl_context()


def _checked_connect(allow_private: Callable[[], bool]) -> http1.Connect:
    """Connects only to addresses that passed `check_address` (each in turn, as the checked
    backend does); TLS still verifies the certificate against the name that was asked for."""

    async def connect(factory: Callable[[], asyncio.Protocol], host: str, port: int,
                      context: ssl.SSLContext | None) -> Any:
        loop = asyncio.get_running_loop()
        failure: OSError | None = None
        for address in await checked_addresses(host, port, allow_private()):
            try:
                _, protocol = await loop.create_connection(factory, str(address), port, ssl=context,
                                                           server_hostname=host if context else None)
                return protocol
            except OSError as error:
                failure = error
        assert failure is not None
        raise failure

    return connect


def site_endpoint_transport(*, ssl_context: ssl.SSLContext | None = None) -> http1.Http1Transport:
    """The transport for the provider SDKs (httpx2) to the site's own model endpoints, which whoever
    runs the server set, so not checked. Every connection may be kept alive (until it has been idle
    for 5 s): with the SDKs' 100, an executor with more calls than that in flight closed the
    surplus as each answer came back and opened them again for the next round."""
    return http1.Http1Transport(connect=http1.connect_anywhere, ssl_context=ssl_context or tls_context(),
                                max_connections=1000, keepalive_expiry=5.0)


def endpoint_transport(*, ssl_context: ssl.SSLContext | None = None) -> http1.Http1Transport:
    """The transport for the provider SDKs (httpx2) to a model endpoint someone typed: every
    connection checked under the site's setting, with a pool the size a busy executor needs."""
    return http1.Http1Transport(connect=_checked_connect(lambda: settings.CORTEX_HTTP_ALLOW_PRIVATE),
                                ssl_context=ssl_context or tls_context(), max_connections=100,
                                keepalive_expiry=30.0)
