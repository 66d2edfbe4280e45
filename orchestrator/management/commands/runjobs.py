"""Run job executors only (no web server): for extra worker processes or machines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the job executor without a web server."

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", type=int, default=None, help="jobs run at once (default: setting)")
        parser.add_argument("--parent", type=int, default=None,
                            help="stop (handing every job back) when the process with this id ends: set by `serve`")

    def handle(self, *args, concurrency: int | None, parent: int | None, **options):
        if concurrency is not None and concurrency < 1:
            raise CommandError("--concurrency must be at least 1")
        asyncio.run(self._run(concurrency, parent))

    async def _run(self, concurrency: int | None, parent: int | None) -> None:
        from orchestrator.engine.executor import Executor

        executor = Executor(concurrency=concurrency)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: loop.create_task(executor.stop()))
        watching = loop.create_task(_stop_when_orphaned(executor, parent)) if parent else None
        self.stdout.write(f"executor {executor.owner} running up to {executor.concurrency} jobs", ending="\n")
        self.stdout.flush()
        try:
            await executor.run()
        finally:
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching


async def _stop_when_orphaned(executor, parent: int) -> None:
    """A worker started by `serve` ends with it, even when the server is killed outright: once it
    has a new parent, it stops and hands its jobs back."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    await executor.stop()
