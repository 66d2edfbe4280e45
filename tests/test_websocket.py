"""The event stream: every event after `seq`, then live ones, none skipped or repeated; only for the
job's owner; cookie sessions only from our own origin."""

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from cortex_site.asgi import application
from orchestrator import events, services, streams
from orchestrator.auth import origin_allowed
from orchestrator.models import JobEvent

pytestmark = pytest.mark.django_db(transaction=True)


def bearer(raw: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {raw}".encode())]


async def connect(path: str, headers) -> tuple[WebsocketCommunicator, bool, int | None]:
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def receive_all(communicator: WebsocketCommunicator, quiet: float = 0.3) -> list[dict]:
    received = []
    # receive_nothing() waits without cancelling the application, unlike a timed-out receive.
    while not await communicator.receive_nothing(timeout=quiet):
        received.append(await communicator.receive_json_from())
    return received


@pytest.fixture
def token(owner):
    return services.token_create(user=owner)[1]


@pytest.fixture
def awaiting_job(owner, engine, default_persona):
    async def make():
        job = await sync_to_async(services.job_submit)(user=owner, task="Write a note: call mum")
        return await engine.run_until(job.pk, "awaiting_confirmation")

    return make


async def test_it_sends_the_whole_log_then_live_events(owner, token, awaiting_job):
    job = await awaiting_job()
    communicator, connected, _ = await connect(f"/ws/jobs/{job.pk}/", bearer(token))
    assert connected
    backlog = await receive_all(communicator)
    assert [event["seq"] for event in backlog] == list(range(1, job.last_seq + 1))
    assert backlog[-1]["type"] == "job.status" and backlog[-1]["data"]["status"] == "awaiting_confirmation"
    assert set(backlog[0]) == {"seq", "type", "at", "data"}

    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk, reason="no")
    live = await receive_all(communicator)
    assert [event["type"] for event in live] == ["tool.decided", "job.status"]
    assert [event["seq"] for event in live] == [job.last_seq + 1, job.last_seq + 2]
    await communicator.disconnect()


async def test_after_skips_what_the_client_already_has(token, awaiting_job):
    job = await awaiting_job()
    communicator, connected, _ = await connect(f"/ws/jobs/{job.pk}/?after=3", bearer(token))
    assert connected
    assert [event["seq"] for event in await receive_all(communicator)] == list(range(4, job.last_seq + 1))
    await communicator.disconnect()


async def test_a_burst_of_events_arrives_complete_and_in_order(owner, token, engine, default_persona):
    job = await sync_to_async(services.job_submit)(user=owner, task="Calculate 1+1")
    communicator, connected, _ = await connect(f"/ws/jobs/{job.pk}/?after=0", bearer(token))
    assert connected
    # The engine writes while we listen: the stream must still be gap-free and duplicate-free.
    finished = await engine.run_until(job.pk, "complete")
    events = await receive_all(communicator, quiet=0.5)
    assert [event["seq"] for event in events] == list(range(1, finished.last_seq + 1))
    assert events[-1]["data"]["status"] == "complete"
    await communicator.disconnect()


async def test_a_slow_read_for_one_socket_holds_back_no_other(owner, token, default_persona, monkeypatch):
    first = await sync_to_async(services.job_submit)(user=owner, task="Write a note: call mum")
    second = await sync_to_async(services.job_submit)(user=owner, task="Write a note: call dad")
    slow, _, _ = await connect(f"/ws/jobs/{first.pk}/?after={first.last_seq}", bearer(token))
    quick, _, _ = await connect(f"/ws/jobs/{second.pk}/?after={second.last_seq}", bearer(token))
    held, released = threading.Event(), threading.Event()
    read = streams._read_events
    monkeypatch.setattr(events, "CARRIED_BYTES", 0)  # doorbells carry no events: the sockets read the log

    def held_back_with_the_first_job(reads):
        if any(job_id == first.pk for job_id, _ in reads):
            held.set()
            released.wait(10)
        return read(reads)

    monkeypatch.setattr(streams, "_read_events", held_back_with_the_first_job)
    try:
        await sync_to_async(services.job_cancel)(user=owner, job_id=first.pk)
        assert await asyncio.to_thread(held.wait, 10)  # the first socket's read is under way, and stuck
        await sync_to_async(services.job_cancel)(user=owner, job_id=second.pk)
        assert "cancelled" in statuses(await receive_all(quick))
    finally:
        released.set()
    assert "cancelled" in statuses(await receive_all(slow))
    await slow.disconnect()
    await quick.disconnect()


def statuses(events: list[dict]) -> list[str]:
    return [event["data"]["status"] for event in events if event["type"] == "job.status"]


async def test_it_refuses_another_users_job(outsider, awaiting_job):
    job = await awaiting_job()
    raw = await sync_to_async(services.token_create)(user=outsider)
    communicator, connected, code = await connect(f"/ws/jobs/{job.pk}/", bearer(raw[1]))
    assert not connected and code == 4404


@pytest.mark.parametrize("headers", [[], bearer("ctx_wrong")])
async def test_it_refuses_anonymous_clients(headers, awaiting_job):
    job = await awaiting_job()
    communicator, connected, code = await connect(f"/ws/jobs/{job.pk}/", headers)
    assert not connected and code in (4401, 4403)


async def test_a_session_cookie_needs_our_own_origin(owner, awaiting_job):
    job = await awaiting_job()
    browser = Client()
    await sync_to_async(browser.force_login)(owner)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    path = f"/ws/jobs/{job.pk}/"

    evil, connected, code = await connect(path, [(b"cookie", cookie), (b"origin", b"https://evil.example")])
    assert not connected and code == 4403
    missing, connected, code = await connect(path, [(b"cookie", cookie)])
    assert not connected and code == 4403

    ours, connected, _ = await connect(path, [(b"cookie", cookie), (b"host", b"127.0.0.1:8000"),
                                              (b"origin", b"http://127.0.0.1:8000")])
    assert connected
    assert len(await receive_all(ours)) == job.last_seq
    await ours.disconnect()


HOST = "127.0.0.1:8000"


@pytest.mark.parametrize(("scheme", "host", "origin", "allowed"), [
    ("ws", HOST, "http://127.0.0.1:8000", True),
    ("ws", HOST, "http://127.0.0.1:8001", False),  # another web app on the same host
    ("ws", HOST, "http://127.0.0.1", False),
    ("ws", HOST, "https://127.0.0.1:8000", False),
    ("ws", "localhost", "http://localhost:80", True),
    ("ws", "localhost:80", "http://localhost", True),
    ("ws", "localhost", "http://localhost:8080", False),
    ("wss", "localhost", "https://localhost", True),
    ("wss", "localhost:443", "https://localhost", True),
    ("wss", "localhost", "http://localhost", False),
    ("wss", "localhost", "https://localhost:8443", False),
    ("ws", "[::1]:8000", "http://[::1]:8000", True),
    ("ws", "[::1]:8000", "http://[::1]:9000", False),
    ("ws", "evil.example", "http://evil.example", False),  # not an allowed host
    ("ws", HOST, "null", False),
    ("ws", HOST, "http://127.0.0.1:notaport", False),
])
def test_an_origin_must_match_the_scheme_host_and_port_of_the_socket(scheme, host, origin, allowed):
    scope = {"type": "websocket", "scheme": scheme, "headers": [(b"host", host.encode())]}
    assert origin_allowed(origin, scope) is allowed


def test_trusted_origins_match_exactly(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://cortex.example.org"]
    scope = {"type": "websocket", "scheme": "ws", "headers": [(b"host", b"127.0.0.1:8000")]}
    assert origin_allowed("https://cortex.example.org", scope)
    assert not origin_allowed("https://cortex.example.org:8443", scope)
    assert not origin_allowed("http://cortex.example.org", scope)


def test_behind_a_tls_proxy_the_forwarded_scheme_counts(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.ALLOWED_HOSTS = ["cortex.example.org"]
    forwarded = {"type": "websocket", "scheme": "ws",
                 "headers": [(b"host", b"cortex.example.org"), (b"x-forwarded-proto", b"https")]}
    assert origin_allowed("https://cortex.example.org", forwarded)
    assert not origin_allowed("http://cortex.example.org", forwarded)
    plain = {"type": "websocket", "scheme": "ws", "headers": [(b"host", b"cortex.example.org")]}
    assert not origin_allowed("https://cortex.example.org", plain)


async def test_a_session_cookie_from_another_port_is_refused(owner, awaiting_job):
    job = await awaiting_job()
    browser = Client()
    await sync_to_async(browser.force_login)(owner)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    other, connected, code = await connect(f"/ws/jobs/{job.pk}/", [
        (b"cookie", cookie), (b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8001")])
    assert not connected and code == 4403


async def test_events_are_appended_with_the_change_they_describe(owner, awaiting_job):
    job = await awaiting_job()
    await sync_to_async(services.job_cancel)(user=owner, job_id=job.pk)
    types = await sync_to_async(lambda: list(JobEvent.objects.filter(job=job).values_list("type", flat=True)))()
    assert types[-2:] == ["tool.finished", "job.status"]


async def test_reads_of_sockets_waiting_together_are_one_query_and_each_gets_its_own_events(owner, outsider,
                                                                                           default_persona):
    """The sockets' event reads waiting for a reader at the same moment are made in one query
    (`streams._read_events`); every socket gets its own job's events after its own position, and
    nothing of another's, whoever owns the jobs."""
    jobs = []
    for user, task in ((owner, "Write a note: one"), (outsider, "Write a note: two"), (owner, "Write a note: three")):
        job = await sync_to_async(services.job_submit)(user=user, task=task)
        await sync_to_async(services.job_cancel)(user=user, job_id=job.pk)  # a second event, and a third
        jobs.append(job)
    logs = {job.pk: await sync_to_async(lambda job=job: [e.as_dict() for e in job.events.order_by("seq")])()
            for job in jobs}
    assert all(len(log) >= 2 for log in logs.values())

    readers = streams.LogReaders(1)
    batches = []
    read = streams._read_events

    def recorded(reads):
        batches.append(list(reads))
        return read(reads)

    busy, release = threading.Event(), threading.Event()

    def hold_the_only_reader():
        busy.set()
        release.wait(10)
        return "held"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(streams, "_read_events", recorded)
        holding = asyncio.ensure_future(readers.run(hold_the_only_reader))
        assert await asyncio.to_thread(busy.wait, 10)
        asked = [(jobs[0].pk, 0), (jobs[1].pk, 1), (jobs[2].pk, 0), (jobs[0].pk, 1)]
        waiting = [asyncio.ensure_future(readers.events_after(job_id, after)) for job_id, after in asked]
        other = asyncio.ensure_future(readers.run(lambda: "other work"))
        await asyncio.sleep(0.1)
        release.set()
        answers = await asyncio.gather(*waiting)
        assert await holding == "held" and await other == "other work"
    assert [len(batch) for batch in batches] == [4]
    for (job_id, after), answer in zip(asked, answers, strict=True):
        assert answer == [event for event in logs[job_id] if event["seq"] > after]
