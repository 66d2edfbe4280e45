"""The streams outlive a failing channel layer, never miss an event committed while they join, and
end with the session that opened them.

The channel layer here is the in-memory one with two handles for the tests: it can be broken (every
call raises, as Redis does when it is down or a read times out) and it can run a hook in the middle
of `group_add`, before the socket is in the group."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse

from cortex_site.asgi import application
from orchestrator import consumers, consumers_html, events, services, streams

pytestmark = pytest.mark.django_db(transaction=True)

HOST = (b"host", b"127.0.0.1:8000")
ORIGIN = (b"origin", b"http://127.0.0.1:8000")


class FlakyLayer(InMemoryChannelLayer):
    """The in-memory layer, breakable on demand, with a hook inside `group_add`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.broken = False
        self.before_group_add = None

    def _fail_if_broken(self) -> None:
        if self.broken:
            raise ConnectionError("the channel layer is down")

    async def receive(self, channel):
        # Wakes up now and then, so a receive already waiting fails once the layer breaks.
        while True:
            self._fail_if_broken()
            try:
                return await asyncio.wait_for(super().receive(channel), 0.05)
            except TimeoutError:
                continue

    async def group_add(self, group, channel):
        self._fail_if_broken()
        hook, self.before_group_add = self.before_group_add, None
        if hook is not None:
            await hook()
        await super().group_add(group, channel)

    async def group_send(self, group, message):
        self._fail_if_broken()
        await super().group_send(group, message)

    async def group_discard(self, group, channel):
        self._fail_if_broken()
        await super().group_discard(group, channel)


@pytest.fixture
def layer(settings) -> FlakyLayer:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "tests.test_stream_resilience.FlakyLayer"}}
    flaky = get_channel_layer()
    assert isinstance(flaky, FlakyLayer)
    return flaky


@pytest.fixture
def awaiting_job(owner, engine, default_persona):
    async def make():
        job = await sync_to_async(services.job_submit)(user=owner, task="Write a note: call mum")
        return await engine.run_until(job.pk, "awaiting_confirmation")
    return make


class Browser:
    def __init__(self, user) -> None:
        self.client = Client()
        self.client.force_login(user)
        self.client.get(reverse("jobs"))

    def headers(self) -> list[tuple[bytes, bytes]]:
        cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in self.client.cookies.items())
        return [(b"cookie", cookie.encode()), HOST, ORIGIN]

    @property
    def session_key(self) -> str:
        return self.client.cookies["sessionid"].value


async def open_socket(path: str, headers) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    assert connected, code
    return communicator


async def bearer_for(user) -> list[tuple[bytes, bytes]]:
    raw = (await sync_to_async(services.token_create)(user=user))[1]
    return [(b"authorization", f"Bearer {raw}".encode())]


async def received_seqs(communicator: WebsocketCommunicator, kind: str, quiet: float = 0.5) -> list[int]:
    """The seqs of the JSON stream's events, or the cursors the job page's stream moved to."""
    seqs = []
    while not await communicator.receive_nothing(timeout=quiet):
        output = await communicator.receive_output()
        assert output["type"] == "websocket.send", output  # never a close, 1011 or any other
        if kind == "json":
            seqs.append(json.loads(output["text"])["seq"])
        else:
            seqs += [int(seq) for seq in re.findall(r'id="job-cursor" data-after="(\d+)"', output["text"])]
    return seqs


STREAMS = {"json": "/ws/jobs/{id}/?after={after}", "html": "/ws/jobs/{id}/html/?after={after}"}


async def socket_for(kind: str, owner, job, after: int) -> WebsocketCommunicator:
    headers = await bearer_for(owner) if kind == "json" else (await sync_to_async(Browser)(owner)).headers()
    return await open_socket(STREAMS[kind].format(id=job.pk, after=after), headers)


# --- A channel layer that fails -------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(STREAMS))
async def test_a_stream_polls_the_log_while_the_layer_is_down_and_rings_again_once_it_is_back(
        kind, owner, awaiting_job, layer, monkeypatch):
    monkeypatch.setattr(streams.LogStream, "poll_seconds", 0.05)
    monkeypatch.setattr(streams.LogStream, "catch_up_seconds", 60.0)  # only polling or a doorbell can deliver
    job = await awaiting_job()
    socket = await socket_for(kind, owner, job, job.last_seq)
    assert await received_seqs(socket, kind) == []

    layer.broken = True
    await asyncio.sleep(0.2)  # the waiting receive fails
    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk, reason="not now")
    during = await received_seqs(socket, kind)
    assert during and during[-1] == job.last_seq + 2  # delivered from the log, with no doorbell

    layer.broken = False
    await asyncio.sleep(0.3)  # it rejoins its groups
    monkeypatch.setattr(streams.LogStream, "poll_seconds", 60.0)
    await sync_to_async(services.job_cancel)(user=owner, job_id=job.pk)
    after = await received_seqs(socket, kind)
    assert after and after[-1] > job.last_seq + 2  # a doorbell rang: the layer is in use again
    if kind == "json":
        assert during + after == list(range(job.last_seq + 1, after[-1] + 1))
    await socket.disconnect()


async def test_a_stream_opened_while_the_layer_is_down_still_streams(owner, awaiting_job, layer, monkeypatch):
    monkeypatch.setattr(streams.LogStream, "poll_seconds", 0.05)
    job = await awaiting_job()
    layer.broken = True
    socket = await socket_for("json", owner, job, 0)
    assert await received_seqs(socket, "json") == list(range(1, job.last_seq + 1))
    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk)
    assert await received_seqs(socket, "json") == [job.last_seq + 1, job.last_seq + 2]
    layer.broken = False
    await socket.disconnect()


async def test_the_json_stream_catches_up_when_a_doorbell_is_lost(owner, awaiting_job, monkeypatch):
    monkeypatch.setattr(consumers.JobEventsConsumer, "catch_up_seconds", 0.2)
    job = await awaiting_job()
    socket = await socket_for("json", owner, job, job.last_seq)
    monkeypatch.setattr(events, "ring", lambda *groups, message=None: None)  # every doorbell is lost
    await sync_to_async(services.job_cancel)(user=owner, job_id=job.pk)
    assert (await received_seqs(socket, "json", quiet=1.0))[-1] == job.last_seq + 2
    await socket.disconnect()


# --- Join, then read ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(STREAMS))
async def test_an_event_committed_while_the_stream_joins_still_arrives(kind, owner, awaiting_job, layer):
    """The stream must join its group before its first read of the log. The hook commits events
    (and rings, to nobody) inside `group_add`, before the socket is in the group: had the stream
    read the log first, it would have missed them and never heard a doorbell for them."""
    job = await awaiting_job()

    async def commit_while_joining() -> None:
        await sync_to_async(services.job_deny)(user=owner, job_id=job.pk)

    layer.before_group_add = commit_while_joining
    socket = await socket_for(kind, owner, job, job.last_seq)
    seqs = await received_seqs(socket, kind)
    assert seqs and seqs[-1] == job.last_seq + 2
    await socket.disconnect()


# --- The session's streams end with it ------------------------------------------------------------

@pytest.mark.parametrize("path", ["/ws/jobs/{id}/html/?after=0", "/ws/jobs/{id}/?after=0", "/ws/me/?pending=0"])
async def test_signing_out_closes_that_sessions_sockets(path, owner, awaiting_job):
    job = await awaiting_job()
    leaving, staying = await sync_to_async(Browser)(owner), await sync_to_async(Browser)(owner)
    mine = await open_socket(path.format(id=job.pk), leaving.headers())
    other_tab_elsewhere = await open_socket(path.format(id=job.pk), staying.headers())
    while not await mine.receive_nothing(timeout=0.3):
        await mine.receive_output()

    response = await sync_to_async(leaving.client.post)(reverse("logout"))
    assert response.status_code == 302
    closed = await mine.receive_output(timeout=2)
    assert closed == {"type": "websocket.close", "code": streams.SESSION_ENDED}
    # Another session of the same person is not touched.
    while not await other_tab_elsewhere.receive_nothing(timeout=0.3):
        assert (await other_tab_elsewhere.receive_output())["type"] == "websocket.send"
    await other_tab_elsewhere.disconnect()


async def test_a_session_that_ends_on_its_own_closes_its_sockets(owner, awaiting_job, monkeypatch):
    monkeypatch.setattr(streams.LogStream, "catch_up_seconds", 0.1)
    job = await awaiting_job()
    browser = await sync_to_async(Browser)(owner)
    socket = await open_socket(f"/ws/jobs/{job.pk}/html/?after={job.last_seq}", browser.headers())
    await asyncio.sleep(0.3)
    assert await socket.receive_nothing(timeout=0.1)  # alive while the session is
    await sync_to_async(Session.objects.filter(session_key=browser.session_key).delete)()  # expired, cleared
    closed = await socket.receive_output(timeout=2)
    assert closed == {"type": "websocket.close", "code": streams.SESSION_ENDED}


async def test_a_token_socket_has_no_session_to_end(owner, awaiting_job, monkeypatch):
    monkeypatch.setattr(streams.LogStream, "catch_up_seconds", 0.1)
    job = await awaiting_job()
    socket = await socket_for("json", owner, job, job.last_seq)
    assert await socket.receive_nothing(timeout=0.5)
    await socket.disconnect()


def test_the_session_group_does_not_show_the_session_key():
    key = "abcdefghijklmnopqrstuvwxyz012345"
    assert key not in streams.session_group(key) and len(streams.session_group(key)) < 100


def test_the_html_stream_shares_the_catch_up(owner):
    assert issubclass(consumers_html.HtmlStream, streams.LogStream)
    assert issubclass(consumers.JobEventsConsumer, streams.LogStream)
