"""Run job executors only (no web server): for extra worker processes or machines."""

from __future__ import annotations

import asyncio
import signal

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the job executor without a web server."

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", type=int, default=None, help="jobs run at once (default: setting)")

    def handle(self, *args, concurrency: int | None, **options):
        if concurrency is not None and concurrency < 1:
            raise CommandError("--concurrency must be at least 1")
        asyncio.run(self._run(concurrency))

    async def _run(self, concurrency: int | None) -> None:
        from orchestrator.engine.executor import Executor

        executor = Executor(concurrency=concurrency)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: loop.create_task(executor.stop()))
        self.stdout.write(f"executor {executor.owner} running up to {executor.concurrency} jobs", ending="\n")
        self.stdout.flush()
        await executor.run()
