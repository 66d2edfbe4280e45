"""What Cortex's two channel layers share: a channel's waiting messages, and closing a loop's
connections with the loop.

Both layers carry doorbells (see events.py): a message that tells a listener to read the log again,
or that carries what the log would say. So a message already waiting for a channel is not queued
twice, and a channel that falls behind loses nothing by dropping the rest: its listener reads the
log anyway, and a doorbell's carried events, dropped, leave a plain doorbell in their place.
"""

from __future__ import annotations

import abc
import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from channels.layers import BaseChannelLayer


class Inbox:
    """The messages waiting for one channel, and the failure its next `receive` must report."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.messages: deque[dict[str, Any]] = deque()
        self.error: Exception | None = None
        self.ready = asyncio.Event()

    def put(self, message: dict[str, Any]) -> None:
        if len(self.messages) >= self.capacity:
            if "events" not in message:
                return
            # A doorbell carrying events is kept without them, once, beyond the capacity: its
            # listener then reads them from the log instead of missing them.
            message = {"type": message["type"]}
        if message in self.messages:
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


class Hub(Protocol):
    inboxes: dict[str, Inbox]

    async def close(self) -> None: ...


class PerLoopLayer(BaseChannelLayer, metaclass=abc.ABCMeta):
    """A layer whose channels are the process's own: each event loop has a hub (`make_hub`) holding
    its channels' inboxes and whatever connection brings their messages, closed with the loop."""

    extensions = ["groups"]

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity=capacity)
        self.hubs: dict[asyncio.AbstractEventLoop, Any] = {}

    @abc.abstractmethod
    def make_hub(self) -> Any:
        """A new hub for the running loop."""

    def left(self, hub: Any, channel: str) -> None:
        """`channel` will not be read again: forget what the hub keeps for it beyond its inbox."""

    def hub(self) -> Any:
        loop = asyncio.get_running_loop()
        hub = self.hubs.get(loop)
        if hub is None:
            hub = self.hubs[loop] = self.make_hub()

            async def forget() -> None:
                self.hubs.pop(loop, None)
                await hub.close()

            close_with(loop, forget)
        return hub

    async def new_channel(self, prefix: str = "specific.") -> str:
        channel = f"{prefix}{uuid.uuid4().hex}"
        self.hub().inboxes[channel] = Inbox(self.capacity)
        return channel

    async def receive(self, channel: str) -> dict[str, Any]:
        hub = self.hub()
        try:
            return await hub.inboxes[channel].get()
        except asyncio.CancelledError:  # the consumer is leaving: nothing will read this channel again
            hub.inboxes.pop(channel, None)
            self.left(hub, channel)
            raise
