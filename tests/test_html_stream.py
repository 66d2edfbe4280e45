"""The browser's streams: HTML fragments that htmx swaps out of band.

A job page renders its events up to a cursor and its socket continues after it; each message
carries the new cursor, and a reconnect resumes from the cursor the page holds. Together they
show every event exactly once, whatever the page reloads or the connection drops."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import reverse

from cortex_site.asgi import application
from orchestrator import consumers_html, events, job_page, services, timeline
from orchestrator.engine import state

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
HOST = (b"host", b"127.0.0.1:8000")


class Browser:
    """A signed-in browser: its cookies open the page's sockets, its client loads the pages."""

    def __init__(self, user) -> None:
        self.client = Client()
        self.client.force_login(user)
        self.client.get(reverse("jobs"))  # sets the CSRF cookie, as any page does

    def headers(self) -> list[tuple[bytes, bytes]]:
        cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in self.client.cookies.items())
        return [(b"cookie", cookie.encode()), HOST, ORIGIN]

    def page(self, url: str) -> str:
        return self.client.get(url).content.decode()


async def browser_for(user) -> Browser:
    return await sync_to_async(Browser)(user)


async def open_socket(path: str, headers) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    assert connected, code
    return communicator


async def received(communicator: WebsocketCommunicator, quiet: float = 0.3) -> list[str]:
    messages = []
    while not await communicator.receive_nothing(timeout=quiet):
        messages.append(await communicator.receive_from())
    return messages


def event_ids(html: str) -> list[int]:
    return [int(seq) for seq in re.findall(r'<li id="event-(\d+)"', html)]


def cursor_of(html: str) -> int:
    return int(re.findall(r'<span id="job-cursor" data-after="(\d+)"', html)[-1])


@pytest.fixture
def awaiting_job(owner, engine, default_persona):
    async def make(task: str = "Write a note: buy milk"):
        job = await sync_to_async(services.job_submit)(user=owner, task=task)
        return await engine.run_until(job.pk, "awaiting_confirmation")
    return make


# --- The job page's stream ----------------------------------------------------------------------

async def test_the_page_and_its_stream_show_every_event_once(owner, awaiting_job):
    job = await awaiting_job()
    browser = await browser_for(owner)
    page = await sync_to_async(browser.page)(reverse("job-detail", args=[job.pk]))
    cursor = cursor_of(page)
    assert event_ids(page) == list(range(1, cursor + 1)) and cursor == job.last_seq

    socket = await open_socket(f"/ws/jobs/{job.pk}/html/?after={cursor}", browser.headers())
    assert await received(socket) == []  # the page is up to date: nothing to repeat

    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk, reason="not now")
    messages = await received(socket)
    await socket.disconnect()
    streamed = "".join(messages)
    assert event_ids(page) + event_ids(streamed) == list(range(1, job.last_seq + 3))
    assert cursor_of(streamed) == job.last_seq + 2
    assert '<ol hx-swap-oob="beforeend:#timeline">' in streamed
    assert "denied</span> by alice: “not now”" in streamed
    assert f'<span id="job-{job.pk}-status" class="badge status status-running" hx-swap-oob="true">' in streamed
    assert re.search(r'<section id="job-confirmations"[^>]* hx-swap-oob="true">', streamed)


def entries_of(html: str) -> dict[int, str]:
    """Each timeline entry's HTML, by sequence number."""
    found = re.findall(r'(<li id="event-(\d+)".*?</li>)(?=<li id="event-|\s*</ol>)', html, flags=re.DOTALL)
    return {int(seq): entry for entry, seq in found}


async def test_the_page_and_its_stream_draw_every_event_alike(owner, engine, awaiting_job):
    """An entry reads the same whether the page was loaded after its event or watched as it
    happened: the page and the stream draw it with the same function."""
    job = await awaiting_job()
    browser = await browser_for(owner)
    socket = await open_socket(f"/ws/jobs/{job.pk}/html/?after=0", browser.headers())
    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk, reason='not <now> & "never"')
    finished = await engine.run_until(job.pk, "complete", "error")
    streamed = "".join(await received(socket))
    await socket.disconnect()
    page = await sync_to_async(browser.page)(reverse("job-detail", args=[job.pk]))

    drawn = entries_of(page)
    steps = await sync_to_async(lambda: [event.seq for event in finished.events.order_by("seq")
                                         if event.type not in timeline.NOT_IN_TIMELINE])()
    assert list(drawn) == steps and steps[-1] == finished.last_seq
    assert entries_of(streamed) == drawn
    types = {kind for kind in re.findall(r'class="event event-([a-z-]+)"', page)}
    assert {"job-status", "model-turn", "tool-call", "tool-decided"} <= types
    assert '<span class="decision decision-denied">denied</span> by alice: “not &lt;now&gt; &amp; "never"”' in page


async def test_a_decided_card_keeps_its_place_on_the_job_page_briefly(owner, awaiting_job, monkeypatch):
    monkeypatch.setattr(job_page, "DECIDED_CARD_SECONDS", 0.5)
    job = await awaiting_job()
    browser = await browser_for(owner)
    page = await sync_to_async(browser.page)(reverse("job-detail", args=[job.pk]))
    socket = await open_socket(f"/ws/jobs/{job.pk}/html/?after={cursor_of(page)}", browser.headers())

    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk, reason="not now")
    decided = "".join(await received(socket, quiet=0.2))
    assert "Denied ✓" in decided and "buy milk" in decided and " disabled>" in decided
    assert not re.search(r'<section id="job-confirmations"[^>]* hidden', decided)

    emptied = "".join(await received(socket, quiet=1.0))  # once its time is up, without another event
    await socket.disconnect()
    assert re.search(r'<section id="job-confirmations"[^>]* hidden hx-swap-oob="true">', emptied)
    assert "Denied ✓" not in emptied


async def test_a_reconnect_resumes_after_the_last_event_it_applied(owner, awaiting_job):
    job = await awaiting_job()
    browser = await browser_for(owner)
    first = await open_socket(f"/ws/jobs/{job.pk}/html/?after=0", browser.headers())
    backlog = "".join(await received(first))
    await first.disconnect()
    assert event_ids(backlog) == list(range(1, job.last_seq + 1))
    applied = cursor_of(backlog)

    # While the connection is down the job moves on.
    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk)
    await sync_to_async(services.job_cancel)(user=owner, job_id=job.pk)

    again = await open_socket(f"/ws/jobs/{job.pk}/html/?after={applied}", browser.headers())
    resumed = "".join(await received(again))
    await again.disconnect()
    total = await sync_to_async(lambda: type(job).objects.get(pk=job.pk).last_seq)()
    assert event_ids(backlog) + event_ids(resumed) == list(range(1, total + 1))
    assert cursor_of(resumed) == total
    assert "Cancelled by alice" in resumed and "Cancel job" not in resumed


async def test_a_reload_mid_job_loses_nothing(owner, awaiting_job):
    job = await awaiting_job()
    browser = await browser_for(owner)
    url = reverse("job-detail", args=[job.pk])
    before = await sync_to_async(browser.page)(url)
    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk)
    after = await sync_to_async(browser.page)(url)
    assert event_ids(after) == list(range(1, cursor_of(after) + 1))
    assert cursor_of(after) == cursor_of(before) + 2
    socket = await open_socket(f"/ws/jobs/{job.pk}/html/?after={cursor_of(after)}", browser.headers())
    assert await received(socket) == []
    await socket.disconnect()


async def test_the_answer_grows_as_it_streams_and_starts_over_on_a_retry(owner, default_persona):
    job = await sync_to_async(services.job_submit)(user=owner, task="Tell me something")
    browser = await browser_for(owner)
    socket = await open_socket(f"/ws/jobs/{job.pk}/html/?after={job.last_seq}", browser.headers())

    async def delta(text: str = "", reset: bool = False) -> str:
        # The executor's own write for a streamed piece; a queued job has no lease holder yet.
        await sync_to_async(state.record_delta)(owner="", job_id=str(job.pk), text=text, reset=reset)
        return "".join(await received(socket))

    first = await delta("Hello ")
    assert '<section id="job-answer"' in first and "Hello" in first and 'class="typing"' in first
    assert event_ids(first) == [] and cursor_of(first) == 2
    assert "job-confirmations" not in first and "job-status" not in first
    second = await delta("**world**")
    assert "<p>Hello <strong>world</strong></p>" in second
    reset = await delta(reset=True)
    assert "Hello" not in reset and "The answer appears here" in reset
    await socket.disconnect()

    page = await sync_to_async(browser.page)(reverse("job-detail", args=[job.pk]))
    assert cursor_of(page) == 4 and event_ids(page) == [1]


async def test_streamed_answers_are_sanitised(owner, default_persona):
    job = await sync_to_async(services.job_submit)(user=owner, task="Tell me something")
    browser = await browser_for(owner)
    socket = await open_socket(f"/ws/jobs/{job.pk}/html/?after={job.last_seq}", browser.headers())
    await sync_to_async(state.record_delta)(owner="", job_id=str(job.pk),
                                            text="<script>alert(1)</script>[x](javascript:alert(2)) <b onclick=x>b</b>")
    streamed = "".join(await received(socket))
    await socket.disconnect()
    assert "<script" not in streamed and "alert(1)" not in streamed
    assert 'href="javascript:' not in streamed and "onclick" not in streamed and "<b>b</b>" in streamed


async def test_streamed_forms_carry_a_working_csrf_token(owner, engine, default_persona):
    job = await sync_to_async(services.job_submit)(user=owner, task="Write a note: buy milk")
    browser = await browser_for(owner)
    socket = await open_socket(f"/ws/jobs/{job.pk}/html/?after={job.last_seq}", browser.headers())
    await engine.run_until(job.pk, "awaiting_confirmation")
    streamed = "".join(await received(socket))
    await socket.disconnect()
    token = re.search(r'name="csrfmiddlewaretoken" value="(\w+)"', streamed).group(1)
    call_pk = int(re.search(r'<article id="call-(\d+)"', streamed).group(1))

    def approve_with(token_value: str) -> int:
        strict = Client(enforce_csrf_checks=True)
        strict.cookies = browser.client.cookies
        return strict.post(reverse("call-approve", args=[job.pk, call_pk]),
                           {"csrfmiddlewaretoken": token_value}).status_code

    assert await sync_to_async(approve_with)("x" * 64) == 403
    assert await sync_to_async(approve_with)(token) == 302


async def test_the_job_stream_is_only_for_the_owner_from_our_origin(owner, outsider, awaiting_job):
    job = await awaiting_job()
    path = f"/ws/jobs/{job.pk}/html/"
    cases = [
        ((await browser_for(outsider)).headers(), 4404),
        ([], 4403),
        ([HOST, ORIGIN], 4401),
        ([(await browser_for(owner)).headers()[0], HOST, (b"origin", b"https://evil.example")], 4403),
        ([(await browser_for(owner)).headers()[0], HOST, (b"origin", b"http://127.0.0.1:8001")], 4403),
    ]
    for headers, expected in cases:
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await communicator.connect(timeout=5)
        assert not connected and code == expected


# --- The user's stream --------------------------------------------------------------------------

async def test_the_navigation_counter_follows_pending_calls(owner, awaiting_job):
    job = await awaiting_job()
    browser = await browser_for(owner)
    stale = await open_socket("/ws/me/?pending=0", browser.headers())
    [counter] = await received(stale)
    await stale.disconnect()
    assert counter.startswith('<span id="nav-confirmations" class="counter"') and ">1</span>" in counter

    current = await open_socket("/ws/me/?pending=1", browser.headers())
    assert await received(current) == []
    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk)
    [update] = await received(current)
    await current.disconnect()
    assert 'class="counter counter-zero"' in update and ">0</span>" in update


def list_stream_of(html: str) -> str:
    return re.search(r'ws-connect="(/ws/me/\?list=[^"]*)"', html).group(1).replace("&amp;", "&")


async def test_the_job_list_and_its_counts_follow_my_jobs_only(owner, outsider, engine, awaiting_job):
    job = await awaiting_job()
    alice, bob = await browser_for(owner), await browser_for(outsider)
    mine = await open_socket(list_stream_of(await sync_to_async(alice.page)("/jobs/")), alice.headers())
    theirs = await open_socket(list_stream_of(await sync_to_async(bob.page)("/jobs/")), bob.headers())
    assert await received(mine) == [] and await received(theirs) == []

    await sync_to_async(services.job_submit)(user=owner, task="A second task")
    [update] = await received(mine)
    assert '<nav id="job-filters" class="filters" aria-label="Filter by outcome" hx-swap-oob="true">' in update
    assert '<div id="job-rows" hx-swap-oob="true">' in update and "A second task" in update
    assert 'All <span class="filter-count">2<' in update and 'Queued <span class="filter-count">1<' in update
    assert await received(theirs) == []

    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk)
    await engine.run_until(job.pk, "complete")
    updated = "".join(await received(mine))
    assert (f'<span id="job-{job.pk}-status" class="badge status status-complete_with_problems">'
            "Complete · 1 call denied or failed</span>") in updated
    assert 'Calls denied or failed <span class="filter-count">1<' in updated
    assert await received(theirs) == []
    await mine.disconnect()
    await theirs.disconnect()


async def test_the_job_list_stream_keeps_to_its_filter_and_page(owner, awaiting_job):
    await awaiting_job()
    alice = await browser_for(owner)
    waiting = await open_socket(list_stream_of(await sync_to_async(alice.page)("/jobs/?status=awaiting_confirmation")),
                                alice.headers())
    assert await received(waiting) == []
    await sync_to_async(services.job_submit)(user=owner, task="Not waiting for anyone")
    [update] = await received(waiting)
    await waiting.disconnect()
    rows = update[update.index('<div id="job-rows"'):]
    assert "Not waiting for anyone" not in rows and "Write a note: buy milk" in rows
    assert 'href="?status=queued"' in update and 'Queued <span class="filter-count">1<' in update


async def test_the_inbox_fills_as_calls_wait_and_a_decided_card_keeps_its_place_briefly(
        owner, engine, default_persona, monkeypatch):
    monkeypatch.setattr(job_page, "DECIDED_CARD_SECONDS", 0.5)
    browser = await browser_for(owner)
    inbox = await open_socket("/ws/me/?inbox=", browser.headers())
    job = await sync_to_async(services.job_submit)(user=owner, task="Write a note: water the plants")
    await engine.run_until(job.pk, "awaiting_confirmation")
    streamed = "".join(await received(inbox))
    assert '<section id="inbox-list"' in streamed and "water the plants" in streamed
    assert 'name="csrfmiddlewaretoken"' in streamed and 'value="/confirmations/"' in streamed

    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk)
    decided = "".join(await received(inbox, quiet=0.2))
    assert "Denied ✓" in decided and "water the plants" in decided and " disabled>" in decided
    assert "Nothing waits for you" not in decided

    emptied = "".join(await received(inbox, quiet=1.0))  # once its time is up, without another event
    await inbox.disconnect()
    assert "Nothing waits for you" in emptied and "water the plants" not in emptied


async def test_the_user_stream_leaves_out_other_users_waiting_calls(owner, outsider, engine, default_persona):
    theirs = await sync_to_async(services.job_submit)(user=outsider, task="Write a note: bob's secret plans")
    await engine.run_until(theirs.pk, "awaiting_confirmation")
    stream = await open_socket("/ws/me/?pending=0&inbox=", (await browser_for(owner)).headers())
    assert await received(stream) == []  # the page said nothing waits, and for alice nothing does

    mine = await sync_to_async(services.job_submit)(user=owner, task="Write a note: water the plants")
    await engine.run_until(mine.pk, "awaiting_confirmation")
    streamed = "".join(await received(stream))
    await stream.disconnect()
    assert 'aria-label="1 waiting"' in streamed
    assert "water the plants" in streamed and "secret plans" not in streamed
    assert streamed.count('class="confirm-job"') == 1


async def test_the_user_stream_needs_a_signed_in_user():
    communicator = WebsocketCommunicator(application, "/ws/me/?pending=0", headers=[HOST, ORIGIN])
    connected, code = await communicator.connect(timeout=5)
    assert not connected and code == 4401


async def test_a_lost_doorbell_only_delays_an_event(owner, default_persona, monkeypatch):
    monkeypatch.setattr(consumers_html.JobPageStream, "catch_up_seconds", 0.2)
    job = await sync_to_async(services.job_submit)(user=owner, task="Hello")
    browser = await browser_for(owner)
    socket = await open_socket(f"/ws/jobs/{job.pk}/html/?after={job.last_seq}", browser.headers())
    monkeypatch.setattr(events, "ring", lambda *groups, message=None: None)  # every doorbell is lost
    await sync_to_async(services.job_cancel)(user=owner, job_id=job.pk)
    streamed = "".join(await received(socket, quiet=1.0))
    await socket.disconnect()
    assert event_ids(streamed) == [2] and "Cancelled by alice" in streamed


def test_a_job_that_finishes_between_two_reads_keeps_its_stream_open_until_every_event_is_sent(
        owner, engine, default_persona):
    """The stream reads a batch of events, then the job. If the job finished in between, the batch
    lacks its last events: closing the stream then would lose them."""
    from asgiref.sync import async_to_sync

    job = services.job_submit(user=owner, task="Calculate 2+2")
    finished = async_to_sync(engine.run_until)(job.pk, "complete")
    stream = consumers_html.JobPageStream()
    stream.scope = {"url_route": {"kwargs": {"job_id": job.pk}}, "query_string": b"after=0", "cookies": {}}
    stream.open(owner)

    early = list(finished.events.order_by("seq")[:3])  # as read just before the job completed
    html, caught_up = stream.render_batch(early)
    assert not caught_up
    assert 'id="job-stream"' not in html  # the stream stays open
    assert event_ids(html) == [event.seq for event in early]

    rest = stream.render()
    assert 'id="job-stream"' in rest[-1]  # closed only with the last event
    assert event_ids("".join(rest))[-1] == finished.last_seq
