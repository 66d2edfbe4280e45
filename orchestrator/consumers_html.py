"""WebSocket streams for the browser: HTML fragments that htmx's ws extension swaps out of band.

Like the JSON stream, the event log is the stream and the channel layer rings a doorbell; on
every doorbell a consumer re-reads what changed, from the log, whatever events the doorbell
carries. See streams.py for what every stream shares: joining before reading, periodic catch-up,
surviving a failing channel layer, ending with the session.

- `/ws/jobs/<id>/html/?after=<seq>`: the job page. Timeline entries are appended exactly once:
  the page renders every event up to a cursor and the socket starts after it; each message
  carries the new cursor, and the browser reconnects from the cursor it holds (see cortex.js).
  The parts that show current state (status, confirmations, answer) are replaced whole, which
  is harmless to repeat.
- `/ws/me/`: what the person's other pages show live, each part only when asked for and only
  when it differs from what the page said it shows: `pending=<n>` (the navigation counter),
  `inbox=<pk,pk>` (the confirmation inbox, where a decided card keeps its place for a few seconds:
  `<pk>d`, and the stream reads again when it is due to leave), `list=<filter>&page=<n>&listed=<signature>`
  (the job list: its filter counts and its rows, with their badges; see `job_page.job_list_context`).
  For a person who chose browser notifications, it also sends what happened to their jobs since
  the page opened (see `delivery.browser`).
"""

from __future__ import annotations

import abc
import asyncio
from datetime import datetime
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.models import AbstractBaseUser
from django.http import Http404, HttpRequest, QueryDict
from django.middleware.csrf import get_token
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from . import events, job_page, selectors, timeline
from .delivery import browser
from .models import Job, JobEvent
from .streams import LogStream, log_reader

BATCH = 500


def _query(scope: dict) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)
    return {key: values[-1] for key, values in parsed.items()}


def _csrf_token(scope: dict) -> str:
    """A masked CSRF token for the forms in streamed fragments, as a page render would give."""
    secret = scope.get("cookies", {}).get("csrftoken", "")
    if not secret:
        return ""
    request = HttpRequest()
    request.META["CSRF_COOKIE"] = secret
    return get_token(request)


class HtmlStream(LogStream, AsyncWebsocketConsumer):
    """Checks who is asking before accepting, then sends what `render` returns on every doorbell,
    and every `catch_up_seconds` in case a doorbell was lost (see streams.py). A page whose decided
    cards keep their places for a while sets `changes_at` when the first is due to leave, and the
    stream reads again then."""

    group: str
    changes_at: datetime | None = None
    refresh: asyncio.Task | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        try:
            await database_sync_to_async(self.open)(user)
        except Http404:
            await self.close(code=4404)
            return
        self.lock = asyncio.Lock()
        # Join before the first read, so an event committed in between still rings.
        await self.join(self.group)
        await self.accept()
        await self.read_log()
        self.start_catching_up()

    async def disconnect(self, code: int) -> None:
        if self.refresh is not None:
            self.refresh.cancel()
        await self.leave()

    async def read_log(self) -> None:
        # One reader at a time: the cursor and what was last sent belong to this connection.
        async with self.lock:
            try:
                messages = await log_reader(self.render)()
            except Http404:  # the job is gone
                await self.close(code=4404)
                return
            for message in messages:
                await self.send(text_data=message)
        if self.changes_at is not None and self.refresh in (None, asyncio.current_task()):
            delay = max(0.0, (self.changes_at - timezone.now()).total_seconds()) + 0.1
            self.refresh = asyncio.create_task(self.read_again_after(delay))

    async def read_again_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.refresh = None
        await self.read_log()

    @abc.abstractmethod
    def open(self, user: AbstractBaseUser) -> None:
        """Check the person may watch, and note what their page shows (runs before accept)."""

    @abc.abstractmethod
    def render(self) -> list[str]:
        """The messages to send now: what changed since the last call."""


class JobPageStream(HtmlStream):
    def open(self, user: AbstractBaseUser) -> None:
        self.user = user
        self.job = selectors.job_for_user(user, self.scope["url_route"]["kwargs"]["job_id"])
        self.group = events.job_group(self.job.id)
        try:
            self.after = max(0, int(_query(self.scope).get("after", "0")))
        except ValueError:
            self.after = 0
        self.csrf_token = _csrf_token(self.scope)
        self.sent: dict[str, str] = {}
        self.changes_at = job_page.cards_change_at(self.job)  # the page may show a card decided just now

    def render(self) -> list[str]:
        messages = []
        while True:
            batch = selectors.job_events_after(self.job, self.after, limit=BATCH)
            if not batch:
                break
            message, caught_up = self.render_batch(batch)
            messages.append(message)
            if caught_up:
                break
        if self.changes_at is not None and timezone.now() >= self.changes_at:
            # A decided card is due to leave, with no event to say so.
            job = selectors.job_for_user(self.user, self.job.id)
            html = self.render_state(job, ["job-confirmations"])
            if html:
                messages.append(html)
        return messages

    def render_state(self, job: Job, names: list[str]) -> str:
        """The parts `names` of the job's current state that differ from what was last sent."""
        context = {"oob": True, "csrf_token": self.csrf_token, "next": reverse("job-detail", args=[job.id]),
                   **job_page.state_context(job)}
        self.changes_at = context["cards_change_at"]
        parts = []
        for name in names:
            html = render_to_string(f"jobs/detail.html#{name}", context)
            if self.sent.get(name) != html:
                parts.append(html)
                self.sent[name] = html
        return "".join(parts)

    def render_batch(self, batch: list[JobEvent]) -> tuple[str, bool]:
        """The fragments for `batch`, and whether they reach the job's last event.

        The job is read after the events, so its state is never older than the timeline; it may be
        newer (events committed in between), and then the stream must not close before it has
        sent those events too."""
        job = selectors.job_for_user(self.user, self.job.id)
        caught_up = batch[-1].seq >= job.last_seq
        parts = []
        entries = timeline.entries(batch)
        if entries:
            parts.append(f'<ol hx-swap-oob="beforeend:#timeline">{entries}</ol>')
        types = {event.type for event in batch}
        changed = ["job-answer"] if types & job_page.ANSWER_EVENTS else []
        if types - timeline.NOT_IN_TIMELINE:
            changed += ["job-status", "job-meta", "job-actions", "job-confirmations"]
        if job.is_finished and caught_up:
            changed.append("job-stream")
        if changed:
            parts.append(self.render_state(job, changed))
        self.after = batch[-1].seq
        parts.append(render_to_string("jobs/detail.html#job-cursor", {"oob": True, "cursor": self.after}))
        return "".join(parts), caught_up


class UserStream(HtmlStream):
    def open(self, user: AbstractBaseUser) -> None:
        self.user = user
        self.group = events.user_group(user.pk)
        query = _query(self.scope)
        self.csrf_token = _csrf_token(self.scope)
        self.shown_pending = query.get("pending")
        self.shown_inbox = query.get("inbox")
        self.job_list = None
        if "list" in query:
            # As the page asked for it, so links and pages render as they would there.
            self.job_list = _request_for(user, reverse("jobs"), {"status": query["list"],
                                                                 "page": query.get("page", "")})
            self.shown_list = query.get("listed", "")
        self.notify = browser.chosen_events(user)
        self.notify_after = browser.latest_event_id(user) if self.notify else 0

    def render(self) -> list[str]:
        parts = []
        if self.notify:
            found, self.notify_after = browser.notifications_after(self.user, self.notify_after, self.notify)
            if found:
                parts.append(render_to_string("delivery/browser.html#browser-notifications",
                                              {"oob": True, "notifications": found}))
        if self.shown_pending is not None:
            count = selectors.pending_calls_for_user(self.user).count()
            if str(count) != self.shown_pending:
                parts.append(render_to_string("base.html#nav-confirmations",
                                              {"oob": True, "pending_confirmations": count}))
                self.shown_pending = str(count)
        if self.shown_inbox is not None:
            inbox = job_page.inbox_for(self.user)
            self.changes_at = inbox.until
            if inbox.signature != self.shown_inbox:
                parts.append(render_to_string("confirmations/inbox.html#inbox-list", {
                    "oob": True, "csrf_token": self.csrf_token, "next": reverse("confirmations"),
                    "cards": inbox.cards}))
                self.shown_inbox = inbox.signature
        if self.job_list is not None:
            context = job_page.job_list_context(self.user, status=self.job_list.GET.get("status", ""),
                                                page_number=self.job_list.GET.get("page"))
            if context["list_signature"] != self.shown_list:
                context["oob"] = True
                parts.append(render_to_string("jobs/list.html#job-filters", context, self.job_list))
                parts.append(render_to_string("jobs/list.html#job-rows", context, self.job_list))
                self.shown_list = context["list_signature"]
        return ["".join(parts)] if parts else []


def _request_for(user: AbstractBaseUser, path: str, query: dict[str, str]) -> HttpRequest:
    """A stand-in for the request of the page a fragment belongs to."""
    request = HttpRequest()
    request.path = request.path_info = path
    request.method = "GET"
    request.GET = QueryDict(mutable=True)
    request.GET.update({key: value for key, value in query.items() if value})
    request.user = user
    return request
