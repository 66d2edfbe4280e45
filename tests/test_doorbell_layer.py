"""Doorbells over Redis pub/sub (orchestrator/doorbell_layer.py), against a redis-server of the test's
own: a doorbell reaches only the channels in its group, and one already waiting is not queued
again; a Redis that goes silent behind a proxy that stops forwarding (no reset, no FIN) is
noticed, the socket polls the log and receives every event exactly once, and doorbells ring
again once Redis answers."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from cortex_site.asgi import application
from orchestrator import events, services, streams
from orchestrator.doorbell_layer import DoorbellLayer
from tests.test_stream_redis import RedisServer, append_delta, append_for, collect, open_stream

pytestmark = [pytest.mark.scaleout, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PREFIX = "cortex-doorbells"


class SilentProxy:
    """A TCP proxy in front of Redis that can go silent: it keeps every connection open but
    forwards nothing either way, as a network that drops packets does."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.forwarding = True
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()

    async def _connect(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers += [client_writer, upstream_writer]
        await asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.forwarding:
                writer.write(data)
                await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.fail("redis-server and redis-cli are needed for the scale-out tests (Debian's redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def use_layer(settings, url: str) -> DoorbellLayer:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "orchestrator.doorbell_layer.DoorbellLayer",
                                           "CONFIG": {"url": url, "prefix": PREFIX}}}
    layer = get_channel_layer()
    assert isinstance(layer, DoorbellLayer)
    return layer


@pytest.fixture
def layer(settings, redis_server) -> DoorbellLayer:
    return use_layer(settings, redis_server.url)


@pytest.fixture
async def proxy(redis_server) -> AsyncIterator[SilentProxy]:
    silent = SilentProxy(redis_server.port)
    await silent.start()
    yield silent
    await silent.stop()


@pytest.fixture
async def bound_loop() -> AsyncIterator[None]:
    events.bind_loop(asyncio.get_running_loop())
    yield
    events.bind_loop(None)


async def nothing_for(layer: DoorbellLayer, channel: str, seconds: float) -> bool:
    try:
        await asyncio.wait_for(layer.receive(channel), seconds)
    except TimeoutError:
        return True
    return False


def subscribers(server: RedisServer, group: str) -> int:
    answer = subprocess.run(["redis-cli", "-p", str(server.port), "PUBSUB", "NUMSUB", f"{PREFIX}:{group}"],
                            check=True, capture_output=True, text=True).stdout.split()
    return int(answer[-1])


# --- The layer ------------------------------------------------------------------------------------

async def test_a_doorbell_reaches_only_the_channels_in_its_group(layer):
    alices, bobs, alices_other_tab = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("user.1", alices)
    await layer.group_add("user.1", alices_other_tab)
    await layer.group_add("user.2", bobs)

    await layer.group_send("user.1", {"type": "doorbell"})
    assert await asyncio.wait_for(layer.receive(alices), 5) == {"type": "doorbell"}
    assert await asyncio.wait_for(layer.receive(alices_other_tab), 5) == {"type": "doorbell"}
    assert await nothing_for(layer, bobs, 0.5)

    await layer.group_discard("user.1", alices)
    await layer.group_send("user.1", {"type": "doorbell"})
    assert await asyncio.wait_for(layer.receive(alices_other_tab), 5) == {"type": "doorbell"}
    assert await nothing_for(layer, alices, 0.5)


async def test_a_doorbell_already_waiting_for_its_channel_is_not_queued_again(layer):
    channel, watcher = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("job.1", channel)
    await layer.group_add("job.2", watcher)
    for _ in range(3):
        await layer.group_send("job.1", {"type": "doorbell"})
    await layer.group_send("job.1", {"type": "session.ended"})
    await layer.group_send("job.2", {"type": "doorbell"})
    # One subscription hears one publisher's messages in order: the others arrived before this one.
    assert await asyncio.wait_for(layer.receive(watcher), 5) == {"type": "doorbell"}
    assert await layer.receive(channel) == {"type": "doorbell"}
    assert await layer.receive(channel) == {"type": "session.ended"}
    assert await nothing_for(layer, channel, 0.5)


async def test_the_last_channel_to_leave_a_group_unsubscribes_the_process(layer, redis_server):
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("job.1", first)
    await layer.group_add("job.1", second)
    assert await sync_to_async(subscribers)(redis_server, "job.1") == 1  # one subscription for the process
    await layer.group_discard("job.1", first)
    assert await sync_to_async(subscribers)(redis_server, "job.1") == 1
    await layer.group_discard("job.1", second)
    for _ in range(50):
        if not await sync_to_async(subscribers)(redis_server, "job.1"):
            return
        await asyncio.sleep(0.1)
    pytest.fail("the process is still subscribed to a group none of its channels is in")


# --- Sockets --------------------------------------------------------------------------------------

async def test_a_doorbell_reaches_the_socket_following_that_job_and_no_other(
        owner, outsider, layer, bound_loop, monkeypatch):
    monkeypatch.setattr(streams.LogStream, "catch_up_seconds", 60.0)  # only a doorbell can deliver
    alices_job = await sync_to_async(services.job_submit)(user=owner, task="Tell me a story")
    bobs_job = await sync_to_async(services.job_submit)(user=outsider, task="Tell me another")
    alices, bobs = await open_stream(owner, alices_job), await open_stream(outsider, bobs_job)

    await sync_to_async(append_delta)(alices_job.pk, 0)
    assert await collect(alices, alices_job.last_seq + 1, timeout=5) == [alices_job.last_seq + 1]
    assert await bobs.receive_nothing(timeout=0.5)

    raw = (await sync_to_async(services.token_create)(user=outsider))[1]
    prying = WebsocketCommunicator(application, f"/ws/jobs/{alices_job.pk}/?after=0",
                                   headers=[(b"authorization", f"Bearer {raw}".encode())])
    assert await prying.connect(timeout=5) == (False, 4404)
    await alices.disconnect()
    await bobs.disconnect()


async def test_a_socket_notices_a_silent_redis_polls_the_log_and_rings_again_once_it_answers(
        owner, settings, redis_server, proxy, bound_loop, monkeypatch):
    use_layer(settings, proxy.url)
    monkeypatch.setattr(streams.LogStream, "poll_seconds", 0.2)
    monkeypatch.setattr(streams.LogStream, "catch_up_seconds", 60.0)  # only a doorbell or polling can deliver
    job = await sync_to_async(services.job_submit)(user=owner, task="Tell me a story")
    socket = await open_stream(owner, job)
    first = job.last_seq + 1
    await sync_to_async(append_delta)(job.pk, 0)
    assert await collect(socket, first, timeout=5) == [first]

    proxy.forwarding = False  # no doorbell gets through, and nothing says so
    await append_for(job, 3.0, 10)
    during = await collect(socket, first + 10, timeout=20)
    assert during == list(range(first + 1, first + 11))

    proxy.forwarding = True
    for _ in range(100):  # the socket subscribes again at one of its polls
        if await sync_to_async(subscribers)(redis_server, events.job_group(job.pk)):
            break
        await asyncio.sleep(0.1)
    monkeypatch.setattr(streams.LogStream, "poll_seconds", 60.0)
    await append_for(job, 1.0, 5)
    after = await collect(socket, first + 15, timeout=10)
    assert after == list(range(first + 11, first + 16))
    await socket.disconnect()
