"""Admission control: a web process with as many requests in hand as it serves promptly answers
the next one at once with 503 and Retry-After, and takes requests again as soon as one finishes."""

import asyncio
import contextlib
import json

from orchestrator.admission import Admission


class HeldApp:
    """An HTTP app that answers 200 once released, so requests can be kept in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def request(app, path: str = "/orchestrate", kind: str = "http") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": kind, "path": path, "method": "POST"}, receive, send)
    return sent


def status_of(sent: list[dict]) -> int:
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def headers_of(sent: list[dict]) -> dict[bytes, bytes]:
    return dict(next(m["headers"] for m in sent if m["type"] == "http.response.start"))


def body_of(sent: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_past_the_limit_a_request_is_refused_at_once_with_retry_after_and_the_app_never_sees_it():
    async def scenario():
        inner = HeldApp()
        app = Admission(inner, limit=2)
        held = [asyncio.create_task(request(app)) for _ in range(2)]
        await asyncio.sleep(0.01)
        refused = await request(app)  # returns without waiting for the held ones
        assert status_of(refused) == 503
        assert headers_of(refused)[b"retry-after"] == b"1"
        assert json.loads(body_of(refused)) == {"detail": "the server is busy; try again shortly"}
        assert inner.entered == 2
        inner.release.set()
        assert [status_of(sent) for sent in await asyncio.gather(*held)] == [200, 200]
        # Room again: the next request is served.
        assert status_of(await request(app)) == 200
        assert inner.entered == 3

    asyncio.run(scenario())


def test_a_page_refused_when_busy_gets_plain_text():
    async def scenario():
        inner = HeldApp()
        app = Admission(inner, limit=1)
        held = asyncio.create_task(request(app, "/jobs/"))
        await asyncio.sleep(0.01)
        refused = await request(app, "/jobs/")
        assert status_of(refused) == 503 and headers_of(refused)[b"content-type"].startswith(b"text/plain")
        inner.release.set()
        await held

    asyncio.run(scenario())


def test_a_request_that_fails_gives_its_place_back():
    async def failing(scope, receive, send):
        raise RuntimeError("broken view")

    async def scenario():
        app = Admission(failing, limit=1)
        for _ in range(3):
            with contextlib.suppress(RuntimeError):
                await request(app)
        assert app.in_flight == 0

    asyncio.run(scenario())


def test_websockets_are_not_counted():
    async def scenario():
        inner = HeldApp()
        app = Admission(inner, limit=1)
        sockets = [asyncio.create_task(request(app, "/ws/jobs/x/", kind="websocket")) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert inner.entered == 3 and app.in_flight == 0
        inner.release.set()
        await asyncio.gather(*sockets)

    asyncio.run(scenario())


def test_a_request_answered_gives_its_place_back_before_its_handler_returns():
    async def scenario():
        tidied = asyncio.Event()

        async def slow_to_tidy(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            await tidied.wait()  # e.g. closing the response on a busy worker thread

        app = Admission(slow_to_tidy, limit=1)
        first = asyncio.create_task(request(app))
        await asyncio.sleep(0.01)
        assert app.in_flight == 0
        second = asyncio.create_task(request(app))
        await asyncio.sleep(0.01)
        tidied.set()
        assert [status_of(sent) for sent in await asyncio.gather(first, second)] == [200, 200]
        assert app.in_flight == 0

    asyncio.run(scenario())
