"""Shared fixtures: named users (an owner, a teammate, an outsider), API clients with real bearer
tokens, a running Cortex server process, and the engine driven in-process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from orchestrator import services
from tests import tools_for_tests  # noqa: F401  (registers the test-only tools in this process)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_workspaces(settings, tmp_path):
    settings.CORTEX_WORKSPACE_ROOT = tmp_path / "workspaces"
    settings.CORTEX_RETRY_BASE_SECONDS = 0.01
    settings.CORTEX_POLL_SECONDS = 0.05
    settings.PASSWORD_HASHERS = ["tests.hashers.FastPBKDF2"]


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def teammate(django_user_model):
    return django_user_model.objects.create_user("carol", password="carol-password-1")


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-1")


class ApiClient:
    """A JSON client that authenticates like a cron job: with a bearer token."""

    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _call(self, method: str, path: str, body=None, raw: str | None = None):
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        return getattr(self.client, method)(path, data=data, content_type="application/json", headers=self.headers)

    def get(self, path: str, **params):
        return self.client.get(path, params, headers=self.headers)

    def post(self, path: str, body=None, raw: str | None = None):
        return self._call("post", path, body, raw)

    def put(self, path: str, body=None):
        return self._call("put", path, body)

    def delete(self, path: str):
        return self._call("delete", path)


def signed_in(user) -> Client:
    """A browser session of `user`, as if they had logged in."""
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice(owner) -> Client:
    return signed_in(owner)


@pytest.fixture
def bob(outsider) -> Client:
    return signed_in(outsider)


@pytest.fixture
def api(owner) -> ApiClient:
    return ApiClient(services.token_create(user=owner, name="tests")[1])


@pytest.fixture
def outsider_api(outsider) -> ApiClient:
    return ApiClient(services.token_create(user=outsider, name="tests")[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout} s")


def process_env(**extra: str) -> dict[str, str]:
    """The environment for a Cortex process sharing this test run's database."""
    database = settings.DATABASES["default"]
    env = dict(os.environ)
    if database["ENGINE"].endswith("sqlite3"):
        env["CORTEX_DATABASE_URL"] = f"sqlite:///{database['NAME']}"
    else:
        env["CORTEX_DATABASE_URL"] = (f"postgres://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:"
                                      f"{database['PORT'] or 5432}/{database['NAME']}")
    env["CORTEX_WORKSPACE_ROOT"] = str(settings.CORTEX_WORKSPACE_ROOT)
    env["CORTEX_SECRET_KEY"] = settings.SECRET_KEY
    env["PYTHONUNBUFFERED"] = "1"
    env["CORTEX_TOOL_MODULES"] = "tests.tools_for_tests"
    env.update(extra)
    return env


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT,
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def cortex_server(transactional_db, tmp_path) -> Iterator[str]:
    """A real `manage.py serve` (web + executor) on a free port, sharing the test database."""
    port = free_port()
    process = start_process(["serve", "--port", str(port)], process_env(CORTEX_POLL_SECONDS="0.2"),
                            tmp_path / "serve.log")
    try:
        wait_for_port(port, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


class Engine:
    """Runs a real executor on the test's event loop until a job reaches a status."""

    def __init__(self) -> None:
        self.executor = None

    async def run_until(self, job_id, *statuses: str, timeout: float = 15.0):
        import asyncio

        from asgiref.sync import sync_to_async

        from orchestrator.engine.executor import Executor
        from orchestrator.models import Job

        wanted = set(statuses) or {"complete", "error", "cancelled", "awaiting_confirmation"}
        executor = self.executor = Executor(concurrency=50)
        runner = asyncio.create_task(executor.run())
        try:
            async with asyncio.timeout(timeout):
                while True:
                    job = await sync_to_async(Job.objects.get)(pk=job_id)
                    if job.status in wanted and job.lease_owner == "" and not executor.tasks:
                        return job
                    await asyncio.sleep(0.02)
        finally:
            await executor.stop()
            await runner


@pytest.fixture
def engine() -> Engine:
    return Engine()


@pytest.fixture
def default_persona(transactional_db):
    """The site-wide persona the data migration creates (transactional tests flush it away)."""
    from orchestrator.models import Persona

    return Persona.objects.get_or_create(owner=None, name="assistant",
                                         defaults={"prompt": "You are Cortex.", "is_default": True})[0]


def pytest_xdist_make_scheduler(config, log):
    """Under `pytest -n` with `--dist loadfile` (pytest.ini), a module runs whole on one worker, and
    the browser modules all on the same one: one Chromium and one app server at a time, beside the
    other tests, rather than one on every core."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class BrowserModulesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/browser" if nodeid.startswith("tests/browser/") else super()._split_scope(nodeid)

    return BrowserModulesTogether(config, log)


_test_databases: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def _test_database_name(django_db_setup):
    """Remember the test database's file, for `pytest_sessionfinish` to clear what lies beside it."""
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        _test_databases.add(str(database["NAME"]))
    yield


def pytest_sessionfinish(session, exitstatus):
    """A SQLite test database's doorbell directory (orchestrator/local_layer.py), its writers' lock
    file (orchestrator/backends/sqlite3) and, where a connection was still open as it was destroyed,
    its -wal and -shm files."""
    for name in _test_databases:
        shutil.rmtree(f"{name}.doorbells", ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{name}.writers")
        if not os.path.exists(name):
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name + suffix)
