"""Django's ASGI handler, with each request's synchronous work on a thread kept from request to
request instead of one started for it and joined after it.

Django gives every request a context of its own in which all its synchronous code (middleware,
the view, the database) runs on one thread, and asgiref makes that thread for the request and
joins it, from yet another thread, once the request is done. Under load that was two thread
starts and a join per request, each waiting for the GIL, and a new database connection every
time, since a connection belongs to its thread. Here a request takes an idle thread from a pool
(or a new one when all are busy) for the whole of the request, as before, and hands it back after.

At most `CORTEX_REQUEST_THREADS` requests run on threads at once; the others wait their turn on the
event loop, where waiting costs nothing. Fifty requests each on a thread of its own made the
process's threads, its event loop's among them, queue for the one interpreter lock: a request's
write held SQLite's lock longer while it waited for the interpreter, and the loop was late to read
the next requests from their sockets.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler


class Threads:
    """Single-thread executors, each used by one request at a time."""

    def __init__(self) -> None:
        self.idle: list[ThreadPoolExecutor] = []
        self.lock = threading.Lock()
        self.made = 0

    def take(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.idle:
                return self.idle.pop()
            self.made += 1
            number = self.made
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cortex-request-{number}")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        with self.lock:
            self.idle.append(executor)


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self.threads = Threads()
        self.running: asyncio.Semaphore | None = None  # made on the event loop, with the first request

    def load_middleware(self, is_async: bool = False) -> None:
        # The middleware, the view and all between them as one synchronous chain (as WSGI runs it),
        # which `get_response_async` runs in one go on the request's thread. Built for an async
        # handler instead, the chain went from the event loop to the thread (the middleware, all
        # sync), back to the loop for Django's async core, to the thread again for the view, and
        # back twice more on the way out: 3.4 ms of hand-offs for a submission whose work took 1.3.
        super().load_middleware(is_async=False)

    async def get_response_async(self, request: Any) -> Any:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        if self.running is None:
            self.running = asyncio.Semaphore(settings.CORTEX_REQUEST_THREADS)
        async with self.running:
            executor = self.threads.take()
            try:
                async with ThreadSensitiveContext(executor=executor):
                    await self.handle(scope, receive, send)
            finally:
                # Whatever the request left on its thread runs before the next request's work.
                self.threads.give_back(executor)


def get_asgi_application() -> PooledThreadsASGIHandler:
    django.setup(set_prefix=False)
    return PooledThreadsASGIHandler()
