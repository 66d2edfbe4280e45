"""The activity dashboard at size: 100,000 jobs (a fifth of them with tool calls) over the last 90
days in a fresh SQLite database, and the time the page takes to render through Django's test
client, as the median of several renders. Before each view's renders the stored figures of past
days are cleared, so its first render counts every day's jobs and stores them, as on a fresh
install, and the renders after it read them back, as every later visit does; the first is
reported apart.

    python -m bench.dashboard [--jobs 100000] [--renders 7]

Runs apart from `make bench` (it times a page, not the engine). The database has no planner
statistics (no `ANALYZE`), as a fresh install. Prints the figures as JSON on stdout, and one
verdict line per view against the 300 ms target on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 300.0
VIEWS = [("own, 30 days", "/activity/?period=30"), ("own, 90 days", "/activity/?period=90"),
         ("everyone, 30 days", "/activity/?period=30&everyone=1"),
         ("everyone, 90 days", "/activity/?period=90&everyone=1"),
         ("everyone, 90 days, CSV", "/activity/?period=90&everyone=1&format=csv")]
TOOLS = ("write_note", "read_file", "list_files", "web_fetch", "shell", "remember")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def setup_django(var_dir: Path, database: Path) -> None:
    for name in [name for name in os.environ if name.startswith(("CORTEX_", "DJANGO_"))]:
        del os.environ[name]  # the caller's settings would change what is measured, or where
    os.environ["CORTEX_VAR_DIR"] = str(var_dir)
    os.environ["CORTEX_DATABASE_URL"] = f"sqlite:///{database}"
    os.environ["CORTEX_ALLOWED_HOSTS"] = "testserver"  # Django's test client
    os.environ["DJANGO_SETTINGS_MODULE"] = "cortex_site.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def populate(jobs: int, *, seed: int = 11) -> dict[str, int]:
    """`jobs` jobs spread over the last 90 days among 20 people (the first one, staff, has a fifth
    of them); one job in five with one to three tool calls, some asked about and decided. The
    views are timed as that first person."""
    import datetime as dt

    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from orchestrator.models import Job, JobStatus, ToolCall, ToolCallStatus

    rng = random.Random(seed)
    people = [get_user_model().objects.create_user(f"person{n}", is_staff=n == 0) for n in range(20)]
    now = timezone.now()
    statuses = [JobStatus.COMPLETE] * 80 + [JobStatus.ERROR] * 12 + [JobStatus.CANCELLED] * 6 + [JobStatus.RUNNING] * 2
    models = ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4", "gemini:gemini-2.5-flash", "demo:demo"]
    transcript = [{"role": "user", "content": "Summarise the notes of last week " * 8}]
    calls_made = 0
    # The rows carry their own times, spread over the period, instead of the moment of insertion.
    stamped = [Job._meta.get_field("created_at"), ToolCall._meta.get_field("created_at")]
    for stamp in stamped:
        stamp.auto_now_add = False
    with transaction.atomic():
        for start in range(0, jobs, 5000):
            batch, call_rows = [], []
            for _ in range(start, min(start + 5000, jobs)):
                created = now - dt.timedelta(seconds=rng.uniform(0, 89.9 * 86400))
                owner = people[0] if rng.random() < 0.2 else rng.choice(people[1:])
                batch.append(Job(user=owner, created_at=created, task="Summarise the notes of last week",
                                 status=rng.choice(statuses), orchestrator_model=rng.choice(models),
                                 transcript=transcript,
                                 usage={"input_tokens": rng.randint(200, 20000),
                                        "output_tokens": rng.randint(20, 2000), "model_calls": rng.randint(1, 6)},
                                 completed_at=created + dt.timedelta(seconds=30)))
            Job.objects.bulk_create(batch)
            for job in batch:
                if rng.random() < 0.2:
                    for position in range(rng.randint(1, 3)):
                        call_rows.append(_call(job, position, rng, ToolCall, ToolCallStatus))
            ToolCall.objects.bulk_create(call_rows)
            calls_made += len(call_rows)
    for stamp in stamped:
        stamp.auto_now_add = True
    return {"jobs": jobs, "tool_calls": calls_made, "people": len(people)}


def _call(job, position: int, rng: random.Random, ToolCall, ToolCallStatus):  # noqa: N803 (model classes)
    import datetime as dt

    recorded = job.created_at + dt.timedelta(seconds=5)
    kind = rng.random()
    fields = {"verdict": "run", "status": ToolCallStatus.SUCCEEDED, "decision": "", "decided_at": None}
    if kind < 0.4:
        decision = rng.choice(["approved", "approved", "edited", "denied"])
        fields = {"verdict": "ask", "decision": decision,
                  "decided_at": recorded + dt.timedelta(seconds=rng.expovariate(1 / 60)),
                  "status": ToolCallStatus.DENIED if decision == "denied" else ToolCallStatus.SUCCEEDED}
    elif kind < 0.45:
        fields = {"verdict": "refuse", "status": ToolCallStatus.REFUSED, "decision": "", "decided_at": None}
    return ToolCall(job=job, created_at=recorded, call_id=f"call_{position}", round=1, position=position,
                    name=rng.choice(TOOLS), is_error=fields["status"] != ToolCallStatus.SUCCEEDED, **fields)


def time_renders(path: str, renders: int) -> list[float]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from orchestrator.models import ActivityDay

    client = Client()
    client.force_login(get_user_model().objects.get(username="person0"))
    ActivityDay.objects.all().delete()  # the first render counts every day, as on a fresh install
    times = []
    for _ in range(renders + 1):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--renders", type=int, default=7, help="timed renders per view (median reported)")
    parser.add_argument("--database", type=Path, default=None,
                        help="keep the SQLite database here, and reuse it when it exists (default: a throwaway one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cortex-dashboard-bench-") as var_dir:
        database = args.database.resolve() if args.database else Path(var_dir) / "dashboard.sqlite3"
        reused = database.exists()
        setup_django(Path(var_dir), database)
        if reused:
            from orchestrator.models import Job, ToolCall

            sizes = {"jobs": Job.objects.count(), "tool_calls": ToolCall.objects.count(), "people": 20}
            log(f"reusing {database}: {sizes['jobs']:,} jobs, {sizes['tool_calls']:,} tool calls")
        else:
            log(f"creating {args.jobs:,} jobs …")
            started = time.perf_counter()
            sizes = populate(args.jobs)
            log(f"created {sizes['jobs']:,} jobs and {sizes['tool_calls']:,} tool calls "
                f"in {time.perf_counter() - started:.1f} s")
        results = {}
        for name, path in VIEWS:
            first, *times = time_renders(path, args.renders)
            median = statistics.median(times)
            results[name] = {"median_ms": round(median, 1), "min_ms": round(min(times), 1),
                             "max_ms": round(max(times), 1), "first_ms": round(first, 1)}
            verdict = "meets" if median <= TARGET_MS else "MISSES"
            log(f"{name:<24} median {median:7.1f} ms  (target ≤ {TARGET_MS:.0f} ms: {verdict}); "
                f"the first, counting every day: {first:.1f} ms")
    print(json.dumps({"sizes": sizes, "target_ms": TARGET_MS, "renders": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
