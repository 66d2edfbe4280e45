"""Who is on the other end of a WebSocket, and whether the page that opened it may ask.

Browsers send cookies with every WebSocket handshake, even one opened by another site, so a
cookie-authenticated socket must come from one of our own origins. A client that authenticates
with a bearer token holds its credential itself and needs no origin check.
"""

from __future__ import annotations

from urllib.parse import urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host

from . import services


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


DEFAULT_PORTS = {"http": 80, "https": 443}


def _forwarded_https(scope: dict) -> bool:
    """The proxy in front said the browser's connection is HTTPS (SECURE_PROXY_SSL_HEADER)."""
    if not settings.SECURE_PROXY_SSL_HEADER:
        return False
    name, value = settings.SECURE_PROXY_SSL_HEADER
    return _header(scope, name.removeprefix("HTTP_").replace("_", "-").lower().encode()) == value


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, the port spelled out even where the URL leaves it implied."""
    parsed = urlparse(url)
    if parsed.scheme not in DEFAULT_PORTS or not parsed.hostname:
        return None
    try:
        port = parsed.port
    except ValueError:
        return None
    return parsed.scheme, parsed.hostname.lower(), port or DEFAULT_PORTS[parsed.scheme]


def origin_allowed(origin: str, scope: dict) -> bool:
    """The page that opened the socket is ours: an entry of CSRF_TRUSTED_ORIGINS exactly, or the very
    scheme, host and port the socket was opened on (its Host header, on an allowed host). Another
    port on the same host is another site, and may not read a signed-in person's streams."""
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    host = _header(scope, b"host")
    if not host:
        return False
    domain, port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    scheme = "https" if scope.get("scheme") in ("wss", "https") or _forwarded_https(scope) else "http"
    ours = (scheme, domain.removeprefix("[").removesuffix("]"), int(port) if port else DEFAULT_PORTS[scheme])
    return _origin(origin) == ours


class TokenOrSessionAuth:
    """Bearer token in the handshake, else the session cookie (origin-checked)."""

    def __init__(self, inner) -> None:
        self.inner = AuthMiddlewareStack(inner)
        self.plain = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.inner(scope, receive, send)
        authorization = _header(scope, b"authorization")
        if authorization and authorization.lower().startswith("bearer "):
            user = await database_sync_to_async(services.token_authenticate)(raw=authorization[7:].strip())
            scope = dict(scope, user=user or AnonymousUser(), auth_method="token")
            return await self.plain(scope, receive, send)
        origin = _header(scope, b"origin")
        if origin is None or not origin_allowed(origin, scope):
            return await self._refuse(send)
        return await self.inner(dict(scope, auth_method="session"), receive, send)

    async def _refuse(self, send) -> None:
        await send({"type": "websocket.close", "code": 4403})
