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
from django.http.request import validate_host

from . import services


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def origin_allowed(origin: str) -> bool:
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    parsed = urlparse(origin)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return False
    hostname = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return validate_host(hostname, settings.ALLOWED_HOSTS)


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
        if origin is None or not origin_allowed(origin):
            return await self._refuse(send)
        return await self.inner(dict(scope, auth_method="session"), receive, send)

    async def _refuse(self, send) -> None:
        await send({"type": "websocket.close", "code": 4403})
