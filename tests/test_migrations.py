"""Migrations that move data keep it."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

RENAME = ("orchestrator", "0006_rename_gemini_summary")


@pytest.fixture
def migrate():
    """Migrates the test database to a state, and back to the latest one at the end."""
    def to(*targets: tuple[str, str]):
        executor = MigrationExecutor(connection)
        executor.migrate(list(targets))
        return MigrationExecutor(connection).loader.project_state(list(targets)).apps

    yield to
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_the_orchestrator_summary_keeps_what_gemini_summary_held(migrate):
    [before] = MigrationExecutor(connection).loader.graph.node_map[RENAME].parents
    old = migrate(before.key)
    user = old.get_model("auth", "User").objects.create(username="alice")
    job_id = old.get_model("orchestrator", "Job").objects.create(
        user=user, task="Calculate 6*7", orchestrator_model="demo:demo", gemini_summary="It is 42.").pk

    new = migrate(RENAME)
    assert new.get_model("orchestrator", "Job").objects.get(pk=job_id).orchestrator_summary == "It is 42."
