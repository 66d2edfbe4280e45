"""Admission control for the web process: when it already has as many HTTP requests in hand as
it can serve promptly, it answers the next one at once with 503 and `Retry-After`, instead of
queueing it behind the others until the client gives up or the connection is reset.

An ASGI wrapper around the HTTP application, so a refused request costs no thread, no database
connection and no middleware; WebSockets pass through untouched (they are long-lived by design).
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

RETRY_AFTER_SECONDS = 1


class Admission:
    def __init__(self, app: Any, *, limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit or settings.CORTEX_MAX_REQUESTS_IN_FLIGHT
        if self.in_flight >= limit:
            await refuse(scope, send)
            return
        # A request is in hand until its answer has been sent, not until its handler has tidied up
        # after it (closing the response on a worker thread can lag behind the answer).
        self.in_flight += 1
        answered = False

        def release() -> None:
            nonlocal answered
            if not answered:
                answered = True
                self.in_flight -= 1

        async def sending(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()

        try:
            await self.app(scope, receive, sending)
        finally:
            release()


async def refuse(scope: dict[str, Any], send: Any) -> None:
    """503 with Retry-After; JSON under the API (as every API error is), plain text elsewhere."""
    if scope.get("path", "").startswith("/orchestrate"):
        body, kind = json.dumps({"detail": "the server is busy; try again shortly"}).encode(), b"application/json"
    else:
        body, kind = b"The server is busy; try again shortly.\n", b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_SECONDS).encode())]})
    await send({"type": "http.response.body", "body": body})
