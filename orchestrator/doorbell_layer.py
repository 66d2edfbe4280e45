"""A channel layer that carries doorbells between processes over Redis pub/sub.

channels_redis's layer keeps every message in Redis until its channel fetches it, and a process
fetches its messages one at a time, each after about four round trips to Redis; under a busy
executor's doorbells a queue built up in front of the sockets. Doorbells need none of what those
trips buy: a doorbell nobody hears is not needed (a stream joins its groups before it reads the
log), and one that is lost only delays an event until the log is read again.

- Each process (each event loop) keeps one connection subscribed to the groups that its channels
  are in, each group a Redis channel `<prefix>:<group>`, and fans every message out in the process
  to those channels. `group_send` is one PUBLISH. Channels are the process's own: there is no
  `send` to a channel of another process, and nothing in Cortex sends one.
- `ring` publishes from any thread without waiting for an event loop: a thread of the layer's own
  sends whatever was rung meanwhile in one round trip, each doorbell once.
- `group_add` returns once Redis has confirmed the subscription, so whatever is published after it
  returns reaches the channel.
- A message already waiting for a channel is not queued again: its listener reads the log anyway.
- Redis going away is noticed even when the connection stays silent (a server that stops
  answering, a network that drops packets): after `ping_seconds` without a word the subscription
  sends a PING, and without an answer within `answer_seconds` it gives up. Then every channel's
  next `receive` fails, as channels_redis's does when Redis is down, so the streams poll the log.
  While Redis is lost a `group_add` fails at once and a new connection is tried in the background;
  the first `group_add` after it has opened subscribes again.

Pub/sub channels are shared by every database of a Redis server: processes of different sites on
one server need prefixes of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import redis
from redis import asyncio as aioredis

from .layer_parts import Inbox, PerLoopLayer

logger = logging.getLogger(__name__)


class Hub:
    """One event loop's channels and its subscription connection.

    `subscribed` maps each Redis channel subscribed for a member to the confirmation of its
    SUBSCRIBE; `confirming` holds the confirmations still awaited, in the order Redis answers them."""

    def __init__(self, layer: DoorbellLayer) -> None:
        self.layer = layer
        self.inboxes: dict[str, Inbox] = {}
        self.members: dict[str, set[str]] = {}
        self.subscribed: dict[str, asyncio.Future] = {}
        self.confirming: dict[str, deque[asyncio.Future]] = {}
        self.connection: aioredis.Connection | None = None
        self.connecting: asyncio.Task | None = None
        self.lost = False
        self.reader: asyncio.Task | None = None
        self.client = aioredis.Redis(connection_pool=layer.new_pool())  # for group_send

    async def subscribe(self, name: str, channel: str) -> None:
        connection = await self.connect()
        self.members.setdefault(name, set()).add(channel)
        confirmed = self.subscribed.get(name)
        if confirmed is None:
            confirmed = self.subscribed[name] = asyncio.get_running_loop().create_future()
            self.confirming.setdefault(name, deque()).append(confirmed)
            await self.send(connection, "SUBSCRIBE", name)
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), self.layer.answer_seconds)
        except TimeoutError as error:
            await self.fail(error)
            raise ConnectionError("Redis did not confirm a subscription") from error

    async def unsubscribe(self, name: str, channel: str) -> None:
        members = self.members.get(name, set())
        members.discard(channel)
        if members or name not in self.subscribed:
            return
        del self.members[name], self.subscribed[name]
        if self.connection is not None:
            await self.send(self.connection, "UNSUBSCRIBE", name)

    async def connect(self) -> aioredis.Connection:
        """The subscription connection; the channels joining meanwhile share one attempt to open it.

        Once Redis has been lost, an attempt runs in the background and the caller hears at once
        that there is no connection yet: a Redis that stopped answering would otherwise hold up
        every stream's polling for as long as an attempt takes to give up."""
        if self.connection is not None:
            return self.connection
        if self.connecting is None:
            self.connecting = asyncio.ensure_future(self._open())
            self.connecting.add_done_callback(self._opened)
        if self.lost:
            raise ConnectionError("Redis is unreachable; connecting again")
        return await asyncio.shield(self.connecting)

    async def _open(self) -> aioredis.Connection:
        connection = self.layer.new_connection()
        await connection.connect()
        # Connecting needs no answer from Redis; a connection is open once Redis has answered on it.
        await connection.send_command("PING", check_health=False)
        if await connection.read_response(timeout=self.layer.answer_seconds) is None:
            await connection.disconnect(nowait=True)
            raise ConnectionError(f"Redis did not answer a PING within {self.layer.answer_seconds} s")
        self.connection, self.lost = connection, False
        self.reader = asyncio.ensure_future(self._read(connection))
        logger.info("Redis subscription open")
        return connection

    def _opened(self, attempt: asyncio.Task) -> None:
        self.connecting = None
        if attempt.cancelled() or attempt.exception() is not None:
            self.lost = True

    async def send(self, connection: aioredis.Connection, *command: str) -> None:
        try:
            await connection.send_command(*command, check_health=False)
        except Exception as error:
            await self.fail(error)
            raise

    async def _read(self, connection: aioredis.Connection) -> None:
        loop = asyncio.get_running_loop()
        pinged: float | None = None
        try:
            while True:
                reply = await connection.read_response(timeout=self.layer.ping_seconds)
                if reply is not None:
                    pinged = None
                    self.dispatch(reply)
                elif pinged is None:
                    pinged = loop.time()
                    await connection.send_command("PING", check_health=False)
                elif loop.time() - pinged >= self.layer.answer_seconds:
                    raise ConnectionError(f"Redis did not answer a PING within {self.layer.answer_seconds} s")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self.fail(error)

    def dispatch(self, reply: list) -> None:
        kind, name = reply[0], reply[1].decode()
        if kind == b"message":
            message = json.loads(reply[2])
            for channel in self.members.get(name, ()):
                inbox = self.inboxes.get(channel)
                if inbox is not None:
                    inbox.put(dict(message))
        elif kind == b"subscribe":
            confirmed = self.confirming[name].popleft()
            if not self.confirming[name]:
                del self.confirming[name]
            if not confirmed.done():
                confirmed.set_result(None)

    async def fail(self, error: Exception) -> None:
        """Forget the connection and every subscription, and tell every channel."""
        connection, self.connection = self.connection, None
        if connection is None:
            return
        self.lost = True
        logger.warning("Redis subscription lost; streams poll the event log until it is back: %s", error)
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
        self.reader = None
        for waiting in self.confirming.values():
            for confirmed in waiting:
                if not confirmed.done():
                    confirmed.set_exception(ConnectionError("the Redis subscription was lost"))
                    confirmed.exception()  # retrieved here; a joining channel sees its own error
        self.members, self.subscribed, self.confirming = {}, {}, {}
        for inbox in self.inboxes.values():
            inbox.fail(ConnectionError("the Redis subscription was lost"))
        await connection.disconnect(nowait=True)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.connection is not None:
            await self.connection.disconnect(nowait=True)
        await self.client.aclose(close_connection_pool=True)


class Publisher:
    """The thread that publishes what `DoorbellLayer.ring` is given.

    A doorbell rung as the executor's step commits (on its database thread) used to wait for the
    executor's busy event loop before it left: 7 ms at the median, 40 ms at p99 in the benchmark.
    Here it leaves at once, or with the others rung while the last round trip was under way."""

    def __init__(self, layer: DoorbellLayer) -> None:
        self.layer = layer
        self.waiting: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.starting = threading.Lock()

    def put(self, names: Iterable[str], payload: str) -> None:
        with self.starting:
            if self.thread is None:
                self.thread = threading.Thread(target=self._serve, name="cortex-doorbells", daemon=True)
                self.thread.start()
        for name in names:
            self.waiting.put((name, payload))

    def _serve(self) -> None:
        client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(
            self.layer.url, socket_timeout=self.layer.answer_seconds,
            socket_connect_timeout=self.layer.answer_seconds))
        while True:
            batch = [self.waiting.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self.waiting.get_nowait())
            pipeline = client.pipeline(transaction=False)
            for name, payload in dict.fromkeys(batch):
                pipeline.publish(name, payload)
            try:
                pipeline.execute()
            except redis.RedisError:  # a doorbell is best effort: listeners also poll the log
                logger.warning("could not ring %d doorbells", len(batch), exc_info=True)


class DoorbellLayer(PerLoopLayer):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "cortex", capacity: int = 100,
                 ping_seconds: float = 1.0, answer_seconds: float = 2.0) -> None:
        super().__init__(capacity=capacity)
        self.url = url
        self.prefix = prefix
        self.ping_seconds = ping_seconds
        self.answer_seconds = answer_seconds
        self.publisher = Publisher(self)

    def new_pool(self) -> aioredis.ConnectionPool:
        # RESP2: subscribed connections then answer with plain arrays, messages and PINGs alike.
        return aioredis.ConnectionPool.from_url(self.url, protocol=2, socket_timeout=self.answer_seconds,
                                                socket_connect_timeout=self.answer_seconds)

    def new_connection(self) -> aioredis.Connection:
        pool = self.new_pool()
        return pool.connection_class(**pool.connection_kwargs)

    def make_hub(self) -> Hub:
        return Hub(self)

    def _name(self, group: str) -> str:
        return f"{self.prefix}:{group}"

    async def group_add(self, group: str, channel: str) -> None:
        hub = self.hub()
        await hub.subscribe(self._name(group), channel)
        hub.inboxes[channel].error = None  # joined on the live connection: an older loss is over

    async def group_discard(self, group: str, channel: str) -> None:
        await self.hub().unsubscribe(self._name(group), channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self.hub().client.publish(self._name(group), json.dumps(message))

    def ring(self, groups: Iterable[str], message: dict[str, Any]) -> None:
        """`message` to each of `groups`, from any thread, soon; never waits for Redis."""
        self.publisher.put((self._name(group) for group in groups), json.dumps(message))
