"""The web's ASGI handler keeps each request's thread, and with it its database connection, for
the requests after it (orchestrator/handler.py)."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from asgiref.sync import AsyncToSync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.db.backends.signals import connection_created

from orchestrator import services
from orchestrator.handler import PooledThreadsASGIHandler

pytestmark = pytest.mark.django_db(transaction=True)


async def get(app, path: str, token: str) -> tuple[int, dict]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(10)
    body = await communicator.receive_output(10)
    await communicator.wait(10)
    return start["status"], json.loads(body["body"])


async def test_requests_one_after_another_share_a_thread_and_its_database_connection(owner, default_persona):
    job = await asyncio.to_thread(services.job_submit, user=owner, task="hello")
    token = (await asyncio.to_thread(services.token_create, user=owner))[1]
    app = PooledThreadsASGIHandler()
    opened = []

    def count(sender, connection, **kwargs):
        opened.append(threading.current_thread().name)

    connection_created.connect(count)
    try:
        for _ in range(5):
            status, body = await get(app, f"/orchestrate/{job.pk}", token)
            assert status == 200 and body["job_id"] == str(job.pk)
    finally:
        connection_created.disconnect(count)
    assert app.threads.made == 1
    assert {name for name in opened} == {"cortex-request-1_0"}
    # On SQLite the connection lives on with its thread; a server database's closes with each request.
    assert len(opened) == (1 if settings.DATABASES["default"]["CONN_MAX_AGE"] else 5)


async def test_requests_at_the_same_time_each_have_a_thread_of_their_own(owner, default_persona, monkeypatch):
    job = await asyncio.to_thread(services.job_submit, user=owner, task="hello")
    token = (await asyncio.to_thread(services.token_create, user=owner))[1]
    app = PooledThreadsASGIHandler()
    both_in, names = threading.Barrier(2, timeout=10), []
    authenticate = services.token_authenticate

    def meet_the_other_request(*, raw):
        names.append(threading.current_thread().name)
        both_in.wait()  # only returns if the other request runs at the same time, on another thread
        return authenticate(raw=raw)

    monkeypatch.setattr(services, "token_authenticate", meet_the_other_request)
    answers = await asyncio.gather(get(app, f"/orchestrate/{job.pk}", token), get(app, f"/orchestrate/{job.pk}", token))
    assert [status for status, _ in answers] == [200, 200]
    assert len(set(names)) == 2 and app.threads.made == 2


async def test_no_more_requests_run_on_threads_at_once_than_the_setting_allows(owner, default_persona, monkeypatch,
                                                                                settings):
    settings.CORTEX_REQUEST_THREADS = 2
    job = await asyncio.to_thread(services.job_submit, user=owner, task="hello")
    token = (await asyncio.to_thread(services.token_create, user=owner))[1]
    app = PooledThreadsASGIHandler()
    inside, most, go = [], [0], threading.Event()
    guard = threading.Lock()
    authenticate = services.token_authenticate

    def hold(*, raw):
        with guard:
            inside.append(threading.current_thread().name)
            most[0] = max(most[0], len(inside))
        go.wait(10)
        with guard:
            inside.remove(threading.current_thread().name)
        return authenticate(raw=raw)

    monkeypatch.setattr(services, "token_authenticate", hold)
    answers = asyncio.gather(*(get(app, f"/orchestrate/{job.pk}", token) for _ in range(3)))
    for _ in range(1000):  # until two requests are inside and the third waits for a thread
        await asyncio.sleep(0.01)
        if len(inside) == 2 and app.running is not None and app.running.locked():
            break
    await asyncio.sleep(0.2)  # time enough for a third to come in, were it let
    assert len(inside) == 2
    go.set()
    assert [status for status, _ in await answers] == [200, 200, 200]
    assert most[0] == 2 and app.threads.made == 2


async def test_the_middleware_and_the_view_run_in_one_go_on_the_requests_thread(owner, default_persona,
                                                                                monkeypatch):
    """No hand-off back to the event loop between the middleware and the view: each costs a wait
    for the loop, and for the thread again after it."""
    job = await asyncio.to_thread(services.job_submit, user=owner, task="hello")
    token = (await asyncio.to_thread(services.token_create, user=owner))[1]
    app = PooledThreadsASGIHandler()
    back_to_the_loop = []
    call = AsyncToSync.__call__

    def counted(self, *args, **kwargs):
        back_to_the_loop.append(getattr(self.awaitable, "__qualname__", repr(self.awaitable)))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(AsyncToSync, "__call__", counted)
    status, body = await get(app, f"/orchestrate/{job.pk}", token)
    assert status == 200 and body["job_id"] == str(job.pk)
    assert back_to_the_loop == []
