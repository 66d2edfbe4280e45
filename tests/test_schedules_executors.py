"""A schedule due every minute, fired by two real executor processes (`manage.py runjobs`) on one
database: exactly one job per minute; after the executors were stopped for three minutes, one late
job, not three. The schedules' clock (CORTEX_CLOCK_FILE) is moved on by the test, so minutes pass
without waiting for them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.models import FINISHED_STATUSES, Job
from orchestrator.triggers import services
from orchestrator.triggers.models import ScheduleRun
from tests.conftest import process_env, start_process, stop_process

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

NINE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def wait_until(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def clock_file(settings, tmp_path):
    path = tmp_path / "now"
    settings.CORTEX_CLOCK_FILE = str(path)
    return path


@pytest.fixture
def executors(tmp_path, clock_file):
    """Starts pairs of `runjobs` processes that tick often and read the test's clock."""
    running: list = []
    logs = []

    def start_two() -> None:
        for _ in range(2):
            log = tmp_path / f"runjobs-{len(logs)}.log"
            logs.append(log)
            running.append(start_process(["runjobs"], process_env(
                CORTEX_CLOCK_FILE=str(clock_file), CORTEX_SCHEDULE_TICK_SECONDS="0.05", CORTEX_POLL_SECONDS="0.1",
                CORTEX_LEASE_SECONDS="2"), log))
        for log in logs[-2:]:
            wait_until(lambda: "running up to" in log.read_text(), what="an executor to start")

    def stop_all() -> None:
        while running:
            stop_process(running.pop())

    yield start_two, stop_all
    stop_all()


def fired(minute: int) -> ScheduleRun | None:
    return ScheduleRun.objects.select_related("job").filter(due_at=NINE + timedelta(minutes=minute)).first()


def settled(run: ScheduleRun) -> bool:
    """Its job finished: both executors have ticked many times since it fired."""
    return Job.objects.filter(pk=run.job_id, status__in=FINISHED_STATUSES).exists()


def test_two_executors_fire_one_job_per_minute_and_one_late_job_after_downtime(owner, default_persona, clock_file,
                                                                             executors):
    start_two, stop_all = executors
    clock_file.write_text((NINE + timedelta(seconds=30)).isoformat())
    schedule = services.schedule_save(user=owner, name="Minutely", cron_expression="* * * * *", time_zone="UTC",
                                      task="What time is it? ({time})")
    start_two()
    for minute in (1, 2, 3):
        clock_file.write_text((NINE + timedelta(minutes=minute, seconds=2)).isoformat())
        run = wait_until(lambda: fired(minute), what=f"the 9:0{minute} run")
        wait_until(lambda: settled(run), what=f"the 9:0{minute} job to finish")

    runs = list(ScheduleRun.objects.filter(schedule=schedule).order_by("due_at"))
    assert [run.due_at.minute for run in runs] == [1, 2, 3]
    assert all(run.job_id and not run.late for run in runs)
    assert Job.objects.filter(origin="schedule").count() == 3
    assert [job.task for job in Job.objects.order_by("created_at")] == [
        "What time is it? (09:01)", "What time is it? (09:02)", "What time is it? (09:03)"]

    stop_all()
    # Three minutes pass with no executor running: 9:04, 9:05 and 9:06 go by unfired.
    clock_file.write_text((NINE + timedelta(minutes=6, seconds=20)).isoformat())
    start_two()
    late = wait_until(lambda: fired(6), what="the late run")
    wait_until(lambda: settled(late), what="the late job to finish")

    runs = list(ScheduleRun.objects.filter(schedule=schedule).order_by("due_at"))
    assert [run.due_at.minute for run in runs] == [1, 2, 3, 6]
    assert (late.late, late.missed) == (True, 3)
    assert late.job.origin_detail["late"] is True and late.job.origin_detail["missed"] == 3
    assert Job.objects.filter(origin="schedule").count() == 4
