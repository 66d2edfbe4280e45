"""A WebSocket that loses Redis keeps every event: against a real redis-server of the test's own,
paused for five seconds, and stopped and started again, while events are appended. The socket
must receive every seq exactly once, in order, and never be closed."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import transaction

from cortex_site.asgi import application
from orchestrator import events, services, streams
from orchestrator.models import Job
from tests.conftest import free_port, wait_for_port

pytestmark = [pytest.mark.scaleout, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


class RedisServer:
    """A redis-server of this test's own on a free port, so pausing or stopping it disturbs nobody."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def pause(self, milliseconds: int) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "CLIENT", "PAUSE", str(milliseconds), "ALL"],
                       check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server(settings) -> Iterator[RedisServer]:
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        # .ci/run installs and starts Redis; a machine without it must not pass this test silently.
        pytest.fail("redis-server and redis-cli are needed for the scale-out tests (Debian's redis-server)")
    server = RedisServer()
    server.start()
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "orchestrator.doorbell_layer.DoorbellLayer",
                                           "CONFIG": {"url": server.url, "prefix": "cortex-outage"}}}
    try:
        yield server
    finally:
        server.stop()


def append_delta(job_id, n: int) -> None:
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        events.append(job, ("answer.delta", {"text": f"piece {n} "}))
        job.save(update_fields=["last_seq"])


async def open_stream(owner, job) -> WebsocketCommunicator:
    raw = (await sync_to_async(services.token_create)(user=owner))[1]
    communicator = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/?after={job.last_seq}",
                                         headers=[(b"authorization", f"Bearer {raw}".encode())])
    connected, code = await communicator.connect(timeout=5)
    assert connected, code
    return communicator


async def collect(communicator: WebsocketCommunicator, until_seq: int, timeout: float) -> list[int]:
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    while (not seqs or seqs[-1] < until_seq) and time.monotonic() < deadline:
        if await communicator.receive_nothing(timeout=0.2):
            continue
        output = await communicator.receive_output()
        assert output["type"] == "websocket.send", output  # never closed, with 1011 or otherwise
        seqs.append(json.loads(output["text"])["seq"])
    return seqs


async def append_for(job, seconds: float, count: int) -> None:
    for n in range(count):
        await sync_to_async(append_delta)(job.pk, n)
        await asyncio.sleep(seconds / count)


async def test_a_socket_receives_every_event_once_after_redis_was_paused_for_five_seconds(owner, redis_server):
    events.bind_loop(asyncio.get_running_loop())
    try:
        job = await sync_to_async(services.job_submit)(user=owner, task="Tell me a story")
        socket = await open_stream(owner, job)
        first = job.last_seq + 1
        await sync_to_async(redis_server.pause)(5000)
        await append_for(job, 4.0, 20)
        seqs = await collect(socket, first + 19, timeout=20)
        assert seqs == list(range(first, first + 20))
        await sync_to_async(append_delta)(job.pk, 20)  # and the doorbells work again
        assert await collect(socket, first + 20, timeout=5) == [first + 20]
        await socket.disconnect()
    finally:
        events.bind_loop(None)


async def test_a_socket_streams_through_redis_stopping_and_starting_again(owner, redis_server, monkeypatch):
    monkeypatch.setattr(streams.LogStream, "poll_seconds", 0.2)
    events.bind_loop(asyncio.get_running_loop())
    try:
        job = await sync_to_async(services.job_submit)(user=owner, task="Tell me a story")
        socket = await open_stream(owner, job)
        first = job.last_seq + 1
        await sync_to_async(append_delta)(job.pk, 0)
        assert await collect(socket, first, timeout=5) == [first]

        await sync_to_async(redis_server.stop)()
        await append_for(job, 3.0, 10)  # their doorbells fail: the socket polls the log
        during = await collect(socket, first + 10, timeout=10)
        assert during == list(range(first + 1, first + 11))

        await sync_to_async(redis_server.start)()
        await asyncio.sleep(1.0)  # a poll or two: the socket rejoins its group
        monkeypatch.setattr(streams.LogStream, "poll_seconds", 60.0)
        await append_for(job, 1.0, 5)  # delivered by doorbells again
        after = await collect(socket, first + 15, timeout=10)
        assert after == list(range(first + 11, first + 16))
        await socket.disconnect()
    finally:
        events.bind_loop(None)
