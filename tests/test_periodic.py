"""Periodic work runs inside the executor, beside its jobs, and a failing task does not stop it."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.engine import periodic
from orchestrator.engine.executor import Executor


@pytest.fixture
def isolated_tasks(monkeypatch):
    monkeypatch.setattr(periodic, "_tasks", {})


def test_due_moves_each_task_on_to_its_next_time(isolated_tasks):
    calls = []
    periodic.every(10, name="ten")(lambda owner: calls.append(owner))
    assert [task.name for task in periodic.due(now=100.0)] == ["ten"]
    assert periodic.due(now=105.0) == []
    assert [task.name for task in periodic.due(now=110.0)] == ["ten"]


@pytest.mark.django_db(transaction=True)
def test_the_executor_runs_registered_tasks_with_its_owner_and_survives_a_failing_one(isolated_tasks):
    seen: list[str] = []

    @periodic.every(0.01, name="broken")
    def broken(owner: str) -> None:
        raise RuntimeError("boom")

    @periodic.every(0.01, name="counting")
    def counting(owner: str) -> None:
        seen.append(owner)

    async def main() -> str:
        executor = Executor(owner="periodic-test", concurrency=1)
        runner = asyncio.get_running_loop().create_task(executor.run())
        for _ in range(400):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.05)
        await executor.stop()
        await runner
        return executor.owner

    owner = asyncio.run(main())
    assert len(seen) >= 2, "the task ran again after the failing one"
    assert set(seen) == {owner}
