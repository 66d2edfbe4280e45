"""The JSON event stream. The event log is the stream; the channel layer rings a doorbell, which
may carry the events that rang it (see events.py, and streams.py for what every stream shares)."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404

from . import events, selectors
from .streams import EVENTS_PER_READ, LogStream, events_after


class JobEventsConsumer(LogStream, AsyncJsonWebsocketConsumer):
    """`/ws/jobs/<id>/?after=<seq>`: every event after `seq`, then live ones, none skipped or repeated."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        try:
            self.job_id = await database_sync_to_async(selectors.job_id_for_user)(
                user, self.scope["url_route"]["kwargs"]["job_id"])
        except Http404:
            await self.close(code=4404)
            return
        self.last_seq = _after(self.scope)
        self.lock = asyncio.Lock()
        # Join before reading the log, so an event committed in between still rings.
        await self.join(events.job_group(self.job_id))
        await self.accept()
        await self.read_log()
        self.start_catching_up()

    async def disconnect(self, code: int) -> None:
        await self.leave()

    async def receive_json(self, content, **kwargs) -> None:
        # Clients may ask to catch up explicitly (e.g. after a doorbell was dropped).
        if isinstance(content, dict) and content.get("type") == "catch_up":
            await self.read_log()

    async def doorbell(self, message: dict[str, Any]) -> None:
        if not await self._send_carried(message.get("events")):
            await self.read_log()

    async def _send_carried(self, carried: Any) -> bool:
        """Send the events a doorbell carries if they follow on from what was sent; False if they
        leave a gap (one rang while this socket was away, say, or a doorbell lost) or there are
        none, for the log to be read instead."""
        if not isinstance(carried, str):
            return False
        async with self.lock:
            for event in json.loads(carried):
                if event["seq"] <= self.last_seq:
                    continue  # already sent, by a read of the log
                if event["seq"] != self.last_seq + 1:
                    return False
                await self.send_json(event)
                self.last_seq = event["seq"]
        return True

    async def read_log(self) -> None:
        async with self.lock:
            while True:
                batch = await events_after(self.job_id, self.last_seq)
                for event in batch:
                    await self.send_json(event)
                    self.last_seq = event["seq"]
                if len(batch) < EVENTS_PER_READ:
                    return


def _after(scope: dict) -> int:
    values = parse_qs(scope.get("query_string", b"").decode()).get("after", ["0"])
    try:
        return max(0, int(values[-1]))
    except ValueError:
        return 0
