"""Serve the web app, and run jobs: in `runjobs` processes of its own (`--workers N`), or in this
process, on the web's own event loop (`--workers 0`).

With executors in their own processes, web requests never wait behind the engine's work for a
core or for the event loop. They need a channel layer shared between processes for their doorbells
(new work for the executors, new events for the web's WebSockets): Redis, or on SQLite Unix sockets
beside the database (orchestrator/local_layer.py). So by default they are used wherever there is
one (everywhere but PostgreSQL without Redis) and the machine has a core to spare for them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

logger = logging.getLogger(__name__)
BACKLOG = 2048  # connections the kernel queues before the server accepts them
RESTART_SECONDS = 1.0  # wait before starting again a worker that ended on its own
MAX_AUTO_WORKERS = 4  # `auto` never starts more than this many workers, however many cores


def default_workers() -> int:
    """`CORTEX_WEB_WORKERS`, or where it is `auto`: one `runjobs` process per core beyond the
    first (at most MAX_AUTO_WORKERS) when a channel layer carries the doorbells between processes
    (Redis, or Unix sockets on SQLite), else none."""
    configured = settings.CORTEX_WEB_WORKERS
    if configured != "auto":
        return int(configured)
    shared = not settings.CHANNEL_LAYERS["default"]["BACKEND"].endswith("InMemoryChannelLayer")
    return min(MAX_AUTO_WORKERS, max(0, (os.cpu_count() or 1) - 1)) if shared else 0


class Workers:
    """`manage.py runjobs` children, started again if one ends on its own, stopped with the server."""

    def __init__(self, count: int, concurrency: int | None) -> None:
        self.count, self.concurrency = count, concurrency
        self.stopping = threading.Event()
        self.processes: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for number in range(self.count):
            thread = threading.Thread(target=self._keep, args=(number,), name=f"cortex-worker-{number}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _argv(self) -> list[str]:
        # The way this process was started (`manage.py serve` or `python -m django serve`), with
        # the settings it was given through the environment the children inherit.
        script = Path(sys.argv[0])
        command = [str(script.resolve())] if script.name == "manage.py" and script.is_file() else ["-m", "django"]
        argv = [sys.executable, *command, "runjobs", "--parent", str(os.getpid())]
        if self.concurrency is not None:
            argv += ["--concurrency", str(self.concurrency)]
        return argv

    def _keep(self, number: int) -> None:
        while not self.stopping.is_set():
            with self.lock:
                if self.stopping.is_set():
                    return
                process = subprocess.Popen(self._argv())
                self.processes.append(process)
            code = process.wait()
            with self.lock:
                self.processes.remove(process)
            if not self.stopping.is_set():
                logger.warning("job worker %d (pid %d) ended with status %s; starting it again", number,
                               process.pid, code)
                time.sleep(RESTART_SECONDS)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to each worker (each hands its jobs back), then wait for them to end."""
        with self.lock:
            self.stopping.set()
            processes = list(self.processes)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Command(BaseCommand):
    help = "Serve Cortex (HTTP and WebSockets) and, unless CORTEX_RUN_JOBS_IN_WEB is off, run jobs too."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=None, help="jobs the in-process executor runs at once")
        parser.add_argument("--no-jobs", action="store_true", help="serve only; leave jobs to `runjobs`")
        parser.add_argument("--workers", type=int, default=None,
                            help="`runjobs` processes to start beside the web (0: run jobs in this process; "
                                 "default: CORTEX_WEB_WORKERS)")

    def handle(self, *args, host: str, port: int, concurrency: int | None, no_jobs: bool, workers: int | None,
               **options):
        # Daphne installs Twisted's asyncio reactor when imported: do it before anything else
        # imports a reactor.
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server
        from twisted.internet import defer, reactor, threads

        from cortex_site.asgi import application
        from orchestrator import events
        from orchestrator.engine.executor import Executor

        if not 0 < port < 65536:
            raise CommandError(f"port must be between 1 and 65535, not {port}")
        if workers is not None and workers < 0:
            raise CommandError("--workers must be 0 or more")
        run_jobs = settings.CORTEX_RUN_JOBS_IN_WEB and not no_jobs
        count = (default_workers() if workers is None else workers) if run_jobs else 0
        children = Workers(count, concurrency) if count else None
        executor = Executor(concurrency=concurrency) if run_jobs and not children else None

        def start() -> None:
            loop = asyncio.get_event_loop()
            events.bind_loop(loop)
            if executor is not None:
                loop.create_task(executor.run())
            if children is not None:
                children.start()
            where = (f" (jobs run in {count} worker process{'es' if count > 1 else ''})" if children
                     else " (and running jobs)" if executor else " (jobs run elsewhere)")
            self.stdout.write(f"Cortex is serving on http://{host}:{port}/{where}")

        def stop():
            if children is not None:
                return threads.deferToThread(children.stop)
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
