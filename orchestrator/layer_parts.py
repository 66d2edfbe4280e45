"""What Cortex's two channel layers share: a channel's waiting messages, and closing a loop's
connections with the loop.

Both layers carry doorbells (see events.py): a message without data beyond its type, which tells a
listener to read the log again. So a message already waiting for a channel is not queued twice, and
a channel that falls behind loses nothing by dropping the rest: its listener reads the log anyway.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any


class Inbox:
    """The messages waiting for one channel, and the failure its next `receive` must report."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.messages: deque[dict[str, Any]] = deque()
        self.error: Exception | None = None
        self.ready = asyncio.Event()

    def put(self, message: dict[str, Any]) -> None:
        if message in self.messages or len(self.messages) >= self.capacity:
            return
        self.messages.append(message)
        self.ready.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.ready.set()

    async def get(self) -> dict[str, Any]:
        while True:
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            if self.messages:
                return self.messages.popleft()
            self.ready.clear()
            await self.ready.wait()


def close_with(loop: asyncio.AbstractEventLoop, closing: Callable[[], Awaitable[None]]) -> None:
    """Run `closing()` on `loop` just before the loop closes, so that a loop that does not live as
    long as the process (each test's, or `async_to_sync`'s) leaves no connection or socket behind."""
    close = loop.close

    def close_after() -> None:
        loop.close = close
        try:
            loop.run_until_complete(closing())
        finally:
            close()

    loop.close = close_after
