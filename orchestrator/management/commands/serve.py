"""Serve the web app and run the job executor in one process, on one event loop."""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

logger = logging.getLogger(__name__)
BACKLOG = 2048  # connections the kernel queues before the server accepts them


class Command(BaseCommand):
    help = "Serve Cortex (HTTP and WebSockets) and, unless CORTEX_RUN_JOBS_IN_WEB is off, run jobs too."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=None, help="jobs the in-process executor runs at once")
        parser.add_argument("--no-jobs", action="store_true", help="serve only; leave jobs to `runjobs`")

    def handle(self, *args, host: str, port: int, concurrency: int | None, no_jobs: bool, **options):
        # Daphne installs Twisted's asyncio reactor when imported: do it before anything else
        # imports a reactor.
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server
        from twisted.internet import defer, reactor

        from cortex_site.asgi import application
        from orchestrator import events
        from orchestrator.engine.executor import Executor

        if not 0 < port < 65536:
            raise CommandError(f"port must be between 1 and 65535, not {port}")
        run_jobs = settings.CORTEX_RUN_JOBS_IN_WEB and not no_jobs
        executor = Executor(concurrency=concurrency) if run_jobs else None

        def start() -> None:
            loop = asyncio.get_event_loop()
            events.bind_loop(loop)
            if executor is not None:
                loop.create_task(executor.run())
            self.stdout.write(f"Cortex is serving on http://{host}:{port}/"
                              + (" (and running jobs)" if executor else " (jobs run elsewhere)"))

        def stop():
            if executor is None:
                return None
            return defer.Deferred.fromFuture(asyncio.ensure_future(executor.stop()))

        reactor.callWhenRunning(start)
        reactor.addSystemEventTrigger("before", "shutdown", stop)
        # A deep accept queue: a crowd of clients connecting at once waits to be answered (or
        # refused with 503 by admission control) rather than having its connections dropped.
        endpoints = [f"{endpoint}:backlog={BACKLOG}" for endpoint in build_endpoint_description_strings(host=host, port=port)]
        Server(
            application=application,
            endpoints=endpoints,
            signal_handlers=True,
            http_timeout=None,
            websocket_handshake_timeout=10,
        ).run()
