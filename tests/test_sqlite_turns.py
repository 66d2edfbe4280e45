"""SQLite writers take turns (orchestrator/backends/sqlite3): a process that writes back to back
cannot keep another waiting, threads of a process are served in the order they came, every way a
transaction ends gives its turn back, and a wait gives up after the busy timeout as SQLite's does."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from django.db import OperationalError, connection, transaction

from orchestrator.backends.sqlite3 import base
from orchestrator.backends.sqlite3.base import KEPT_TURNS, Queue, Turns, turns_for
from tests.conftest import ROOT, process_env

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="turns are for SQLite's one write lock"),
]

# A writer that never lets go for long: each transaction records when it began and committed, holds
# the lock a while, and the next one begins as soon as the last has committed.
BUSY_WRITER = """
import sys, time
import django
django.setup()
from django.db import connection, transaction
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # until the test stops this process
    with transaction.atomic():
        began = time.monotonic()
        time.sleep(float(sys.argv[1]))
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO turn_probe (began, committed) VALUES (%s, %s)", [began, time.monotonic()])
"""

# Holds the turn of the database named in argv[1] until killed.
TURN_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + ".writers", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX, 1, 1)
print("held", flush=True)
time.sleep(60)
"""

# Exits 0 if it could take the turn of the database named in argv[1] at once, 1 if not.
TURN_FREE = """
import fcntl, os, sys
fd = os.open(sys.argv[1] + ".writers", os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1)
except BlockingIOError:
    sys.exit(1)
"""


def database() -> str:
    return str(connection.settings_dict["NAME"])


def turn_is_free() -> bool:
    """Whether another process could take the write turn right now."""
    return subprocess.run([sys.executable, "-c", TURN_FREE, database()], timeout=30).returncode == 0


def probe_rows() -> list[tuple[float, float]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT began, committed FROM turn_probe ORDER BY id")
        return cursor.fetchall()


@pytest.fixture
def probe_table():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE turn_probe (id INTEGER PRIMARY KEY, began REAL, committed REAL)")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE turn_probe")


def test_a_writer_waits_for_the_transaction_in_progress_not_for_a_busy_process(probe_table, tmp_path):
    busy = subprocess.Popen([sys.executable, "-c", BUSY_WRITER, "0.4"], env=process_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "busy.log", "w"))
    try:
        deadline = time.monotonic() + 60
        while len(probe_rows()) < 2:  # the busy process is writing back to back
            assert busy.poll() is None, (tmp_path / "busy.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for _ in range(3):
            asked = time.monotonic()
            with transaction.atomic():
                granted = time.monotonic()
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
            overtaken = [row for row in probe_rows() if asked < row[0] < granted]
            # The busy process's transaction in progress may finish, and (when the request came just
            # as it began its next) one more; never a third that began while this one waited.
            assert len(overtaken) <= 1, f"{len(overtaken)} transactions began while a writer waited its turn"
    finally:
        busy.kill()
        busy.wait()


def test_every_end_of_a_transaction_gives_its_turn_back():
    turns = turns_for(database(), in_memory=False)
    with transaction.atomic():
        assert turns.queue._held and not turn_is_free()
    assert not turns.queue._held and turn_is_free()

    with pytest.raises(ZeroDivisionError), transaction.atomic():
        assert not turn_is_free()
        1 / 0
    assert not turns.queue._held and turn_is_free()

    with transaction.atomic():
        assert not turn_is_free()
        connection.close()  # SQLite rolls the transaction back with the connection
        connection.needs_rollback = False  # nothing left to roll back on exit
    assert not turns.queue._held and turn_is_free()
    connection.ensure_connection()


def test_a_turn_held_past_the_busy_timeout_fails_as_sqlite_does(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", TURN_HOLDER, database()], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        turns = turns_for(database(), in_memory=False)
        with pytest.raises(OperationalError, match="database is locked"):
            turns.take(0.3)
        assert not turns.queue._held  # a failed wait leaves nothing held
    finally:
        holder.kill()
        holder.wait()
    turns.take(5)  # and once the other process is gone, its turn is free
    turns.give_back()


def test_threads_of_a_process_take_their_turns_in_the_order_they_came():
    queue = Queue()
    assert queue.acquire(1)
    served: list[int] = []

    def wait(number: int) -> None:
        assert queue.acquire(30)
        served.append(number)
        queue.release()

    threads = []
    for number in range(8):
        thread = threading.Thread(target=wait, args=(number,))
        thread.start()
        threads.append(thread)
        while len(queue._waiting) < number + 1:  # in the queue before the next one comes
            time.sleep(0.001)
    queue.release()
    for thread in threads:
        thread.join(30)
    assert served == list(range(8))
    assert not queue._held


def test_threads_already_waiting_keep_their_process_turn_a_few_times_then_let_it_go(tmp_path, monkeypatch):
    taken: list[str] = []  # who took the file's turn (every other transaction had it handed over)
    real_lock = base._lock

    def lock(fd: int, byte: int, deadline: float) -> None:
        if byte == base.TURN:
            taken.append(threading.current_thread().name)
        real_lock(fd, byte, deadline)

    monkeypatch.setattr(base, "_lock", lock)
    turns = Turns(tmp_path / "db.writers")
    turns.take(5)
    served: list[str] = []

    def write() -> None:
        turns.take(30)
        served.append(threading.current_thread().name)
        turns.give_back()

    waiting = [threading.Thread(target=write, name=f"writer-{number}") for number in range(KEPT_TURNS + 2)]
    for number, thread in enumerate(waiting):
        thread.start()
        while len(turns.queue._waiting) < number + 1:
            time.sleep(0.001)
    turns.give_back()
    for thread in waiting:
        thread.join(30)
    assert served == [thread.name for thread in waiting]
    # The first KEPT_TURNS waiters had it handed over; the next took it again, after the others'
    # chance; and the last let it go, with nobody left waiting.
    assert taken == ["MainThread", f"writer-{KEPT_TURNS}"]
    assert not turns.queue._held
    free = subprocess.run([sys.executable, "-c", TURN_FREE, str(tmp_path / "db")], timeout=30)
    assert free.returncode == 0


def test_a_thread_that_gives_up_waiting_leaves_the_queue_as_it_was():
    queue = Queue()
    assert queue.acquire(1)
    assert queue.acquire(0.05) is False
    assert not queue._waiting
    queue.release()
    assert not queue._held
    assert queue.acquire(0.05)
    queue.release()


def test_an_in_memory_database_takes_turns_within_the_process_alone():
    turns = Turns(None)
    turns.take(1)
    assert turns.queue._held
    turns.give_back()
    assert not turns.queue._held
    assert turns_for(":memory:", in_memory=True).path is None


def test_the_lock_file_is_for_its_owner_alone():
    with transaction.atomic(), connection.cursor() as cursor:  # a transaction makes the file
        cursor.execute("SELECT 1")
    assert os.stat(database() + ".writers").st_mode & 0o777 == 0o600
