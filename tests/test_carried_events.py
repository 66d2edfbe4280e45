"""A job's doorbell carries the events its transaction committed: a socket that has sent everything
before them sends them without reading the log; one that finds a gap reads the log; nothing is
sent twice, and nothing a transaction rolled back is ever carried."""

import asyncio
import json
import threading

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connections, transaction

from orchestrator import events, services, streams
from orchestrator.layer_parts import Inbox
from orchestrator.local_layer import LocalDoorbellLayer
from orchestrator.models import Job, JobEvent

from .test_websocket import bearer, connect, receive_all

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token(owner):
    return services.token_create(user=owner)[1]


def append_events(job_id, *types: str) -> None:
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        events.append(job, *((kind, {"n": n}) for n, kind in enumerate(types)))
        job.save(update_fields=["last_seq"])


async def caught_up_socket(owner, token):
    job = await sync_to_async(services.job_submit)(user=owner, task="Write a note: call mum")
    communicator, connected, _ = await connect(f"/ws/jobs/{job.pk}/", bearer(token))
    assert connected
    backlog = await receive_all(communicator)
    assert [event["seq"] for event in backlog] == list(range(1, job.last_seq + 1))
    return job, communicator


async def test_a_caught_up_socket_sends_committed_events_without_reading_the_log(owner, token, default_persona,
                                                                              monkeypatch):
    job, communicator = await caught_up_socket(owner, token)
    made: list[tuple] = []
    read = streams._read_events
    monkeypatch.setattr(streams, "_read_events", lambda asked: made.extend(asked) or read(asked))

    await sync_to_async(services.job_cancel)(user=owner, job_id=job.pk)
    live = await receive_all(communicator)
    logged = await sync_to_async(lambda: [event.as_dict() for event in job.events.filter(seq__gt=job.last_seq)
                                          .order_by("seq")])()
    assert logged and json.loads(json.dumps(live)) == json.loads(json.dumps(logged))
    assert made == []  # sent from the doorbell: the log was not read for them
    await communicator.disconnect()


async def test_a_gap_is_filled_from_the_log_and_nothing_is_sent_twice(owner, token, default_persona, monkeypatch):
    job, communicator = await caught_up_socket(owner, token)
    with monkeypatch.context() as patch:  # these events ring nothing: their doorbells are lost
        patch.setattr(events.Doorbell, "__call__", lambda self: None)
        await sync_to_async(append_events)(job.pk, "note.one", "note.two", "note.three")
        assert await receive_all(communicator) == []
    rows = await sync_to_async(lambda: list(job.events.filter(seq__gt=job.last_seq).order_by("seq")))()
    assert len(rows) == 3
    layer = get_channel_layer()

    # A doorbell carrying only the last of them: the socket reads the others from the log first.
    await layer.group_send(events.job_group(job.pk), events.carrying(rows[-1:]))
    received = await receive_all(communicator)
    assert [event["seq"] for event in received] == [row.seq for row in rows]

    # One carrying all of them again, already sent: nothing is repeated.
    await layer.group_send(events.job_group(job.pk), events.carrying(rows))
    assert await receive_all(communicator) == []

    # One carrying a sent event and the next: the next is sent, straight from the doorbell.
    with monkeypatch.context() as patch:
        patch.setattr(events.Doorbell, "__call__", lambda self: None)
        await sync_to_async(append_events)(job.pk, "note.four")
    newest = await sync_to_async(lambda: job.events.get(seq=rows[-1].seq + 1))()
    made: list[tuple] = []
    read = streams._read_events
    monkeypatch.setattr(streams, "_read_events", lambda asked: made.extend(asked) or read(asked))
    await layer.group_send(events.job_group(job.pk), events.carrying([rows[-1], newest]))
    assert [event["seq"] for event in await receive_all(communicator)] == [newest.seq]
    assert made == []
    await communicator.disconnect()


async def test_a_doorbell_never_waits_for_the_thread_that_sync_code_shares(owner, token, default_persona):
    """Whatever holds the process's shared sync thread (an HTTP request's handler, say), a socket
    still sends the events a doorbell carries."""
    job, communicator = await caught_up_socket(owner, token)
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(10)

    def append_elsewhere() -> None:
        try:
            append_events(job.pk, "note.one")
        finally:
            connections.close_all()

    holding = asyncio.ensure_future(sync_to_async(hold)())
    try:
        assert await asyncio.to_thread(busy.wait, 10)
        await asyncio.to_thread(append_elsewhere)
        received = await receive_all(communicator)
    finally:
        release.set()
        await holding
    assert [event["type"] for event in received] == ["note.one"]
    await communicator.disconnect()


@pytest.fixture
def rung(monkeypatch) -> list[dict]:
    """The messages of every doorbell rung from now on, as if something listened to every group."""
    messages: list[dict] = []
    monkeypatch.setattr(get_channel_layer(), "heard", set, raising=False)
    monkeypatch.setattr(events, "ring", lambda *groups, message=None: messages.append(message or {}))
    return messages


def carried_by(messages: list[dict]) -> list[dict]:
    """The events the doorbells carried, in seq order."""
    return sorted((event for message in messages if "events" in message for event in json.loads(message["events"])),
                  key=lambda event: event["seq"])


def test_events_of_a_rolled_back_savepoint_are_never_carried(owner, default_persona, rung):
    job = services.job_submit(user=owner, task="Write a note: call mum")
    rung.clear()  # the submission's own doorbells
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        events.append(locked, ("kept.before", {}))
        with pytest.raises(RuntimeError), transaction.atomic():
            events.append(locked, ("rolled.back", {}))
            raise RuntimeError("undo")
        events.append(locked, ("kept.after", {}))
        locked.save(update_fields=["last_seq"])
    carried = carried_by(rung)
    assert [event["type"] for event in carried] == ["kept.before", "kept.after"]
    in_log = set(JobEvent.objects.filter(job=job).values_list("seq", flat=True))
    assert {event["seq"] for event in carried} <= in_log


def test_a_released_savepoint_carries_its_events_with_the_commit(owner, default_persona, rung):
    job = services.job_submit(user=owner, task="Write a note: call mum")
    rung.clear()  # the submission's own doorbells
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        with transaction.atomic():
            events.append(locked, ("inner", {}))
        events.append(locked, ("outer", {}))
        locked.save(update_fields=["last_seq"])
        assert rung == []  # nothing rings before the commit
    assert [event["type"] for event in carried_by(rung)] == ["inner", "outer"]


async def test_a_doorbell_nobody_could_hear_is_not_rung(owner, default_persona, tmp_path, monkeypatch):
    """Where no channel of this process is in a job's group and no other process listens, its
    commits ring nothing (nor encode their events); once a channel joins, they ring it."""
    layer = LocalDoorbellLayer(directory=str(tmp_path / "bells"))
    monkeypatch.setattr(events, "get_channel_layer", lambda: layer)
    rung: list[tuple] = []
    monkeypatch.setattr(events, "ring", lambda *groups, message=None: rung.append((groups, message)))
    job = await sync_to_async(services.job_submit)(user=owner, task="Write a note: call mum")
    group = events.job_group(job.pk)
    await sync_to_async(append_events)(job.pk, "note.one")
    assert [groups for groups, _ in rung] == [(events.EXECUTORS_GROUP,)]  # the submission's wake-up only

    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    await sync_to_async(append_events)(job.pk, "note.two")
    [(groups, message)] = rung[1:]  # the job's group, with its event; nobody listens to the owner's
    assert groups == (group,) and [event["type"] for event in json.loads(message["events"])] == ["note.two"]


def test_events_too_big_to_carry_ring_a_plain_doorbell(owner, default_persona):
    job = services.job_submit(user=owner, task="Write a note: call mum")
    small = JobEvent.objects.filter(job=job).order_by("seq")[0]
    assert "events" in events.carrying([small])
    big = JobEvent(job=job, seq=job.last_seq + 1, type="tool.finished", data={"result": "x" * events.CARRIED_BYTES})
    big.at = small.at
    assert events.carrying([small, big]) == {"type": "doorbell"}


def test_a_full_inbox_keeps_a_plain_doorbell_where_it_drops_carried_events():
    async def fill() -> list[dict]:
        inbox = Inbox(capacity=2)
        for seq in (1, 2, 3, 4):
            inbox.put({"type": "doorbell", "events": json.dumps([{"seq": seq}])})
        inbox.put({"type": "session.ended"})  # a message without events beyond capacity is dropped
        return list(inbox.messages)

    messages = async_to_sync(fill)()
    assert messages[:2] == [{"type": "doorbell", "events": '[{"seq": 1}]'},
                            {"type": "doorbell", "events": '[{"seq": 2}]'}]
    assert messages[2:] == [{"type": "doorbell"}]

