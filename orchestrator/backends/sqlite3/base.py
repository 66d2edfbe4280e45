"""Django's SQLite backend, with writers taking turns for the database's one write lock.

SQLite lets one connection write at a time. Every transaction here begins IMMEDIATE, taking the
write lock at BEGIN; a connection that finds it taken sleeps and tries again (after 1, 2, 5 …
up to 100 ms), and nothing orders the waiters. Under load that was unfair and slow: an executor
writing hundreds of short transactions a second took the lock again between another process's
tries, so a web request waited seconds for its one write while most waited milliseconds, and the
lock stood free while the next writer slept.

So a transaction takes its turn before its BEGIN and gives it back with its COMMIT or ROLLBACK:
within a process one thread at a time, in the order they came (a queue); between processes, two
locks on a file beside the database (`<database>.writers`), taken in order: the door, then the
turn, and the door is let go as soon as the turn is held. A process that has just committed and
wants to write again must pass the door, which the process already waiting for the turn holds,
so processes take turns instead of the busiest one keeping the lock. The kernel releases a dead
process's locks with it.

A process whose threads are already waiting when one of them commits hands the file's turn from
thread to thread without letting go of it, up to KEPT_TURNS transactions after the first; then
the other processes' turn comes. Each hand-over between processes costs a wake-up on either side
and a poll of the lock, longer than a web request's write itself: taking turns one transaction
each, a web process whose threads queued for their writes got one in every exchange with a busy
executor, and its requests waited tens of milliseconds for it.

The waits are bounded by the connection's busy timeout, after which the BEGIN fails as SQLite's
own wait does ("database is locked"). Writes outside a transaction (autocommit) do not take a turn;
they wait on SQLite's busy timeout as before. An in-memory database has no file: its connections
take turns within the process alone.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from django.db import OperationalError
from django.db.backends.sqlite3 import base

DOOR, TURN = 0, 1  # the bytes of the lock file locked for each
POLL_SECONDS = (0.0002, 0.0005, 0.001)  # waits between tries for a lock another process holds; then the last
KEPT_TURNS = 4  # transactions of a process's waiting threads that may follow one another in one turn


class Queue:
    """A lock handed to waiters in the order they asked for it (threading.Lock promises no order)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiting: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        with self._guard:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        if turn.acquire(timeout=timeout):  # released by the holder, which hands the lock over
            return True
        with self._guard:
            try:
                self._waiting.remove(turn)
            except ValueError:  # handed over just as the wait ran out: it is ours after all
                return True
        return False

    def release(self) -> None:
        with self._guard:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._held = False

    def hand_over(self) -> bool:
        """Hand the lock to the longest waiter if there is one, else keep it and say so."""
        with self._guard:
            if not self._waiting:
                return False
            self._waiting.popleft().release()
            return True


class Turns:
    """One database's turns in this process: the queue of its threads, then the lock file shared
    with other processes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.queue = Queue()
        self._fd: int | None = None
        self._pid = 0
        self._file_held = False  # the file's turn, held for whichever thread holds the queue
        self._kept = 0  # transactions that followed the first in this turn

    def _file(self) -> int | None:
        if self.path is None:
            return None
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def take(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not self.queue.acquire(timeout):
            raise OperationalError("database is locked")
        if self._file_held:  # handed over with the queue by the thread before
            return
        try:
            if (fd := self._file()) is not None:
                _lock(fd, DOOR, deadline)
                try:
                    _lock(fd, TURN, deadline)
                finally:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, DOOR)
                self._file_held = True
        except BaseException:
            self.queue.release()
            raise

    def give_back(self) -> None:
        if self._file_held and self._kept < KEPT_TURNS and self.queue.hand_over():
            self._kept += 1
            return
        self._kept = 0
        try:
            if self._file_held and self._pid == os.getpid():
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, TURN)
        finally:
            self._file_held = False
            self.queue.release()


def _lock(fd: int, byte: int, deadline: float) -> None:
    """Lock one byte of the file, trying again until the deadline (a blocking lock could not be
    given up on)."""
    tries = 0
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise OperationalError("database is locked") from None
            time.sleep(POLL_SECONDS[min(tries, len(POLL_SECONDS) - 1)])
            tries += 1


_turns: dict[str, Turns] = {}
_turns_guard = threading.Lock()


def turns_for(name: str | os.PathLike[str], in_memory: bool) -> Turns:
    """One `Turns` per database in a process, shared by all its connections to it."""
    key = ":memory:" if in_memory else os.path.abspath(name)
    with _turns_guard:
        if key not in _turns:
            _turns[key] = Turns(None if in_memory else Path(f"{key}.writers"))
        return _turns[key]


class DatabaseWrapper(base.DatabaseWrapper):
    _turns: Turns | None = None  # while this connection's transaction holds its turn
    _database: tuple[Any, Turns] | None = None  # (the NAME they were found for, its turns)

    def _start_transaction_under_autocommit(self) -> None:
        name = self.settings_dict["NAME"]
        if self._database is None or self._database[0] != name:  # a test run renames the database
            self._database = (name, turns_for(name, self.is_in_memory_db()))
        turns = self._database[1]
        turns.take(float(self.settings_dict["OPTIONS"].get("timeout", 5)))
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            turns.give_back()
            raise
        self._turns = turns

    def _give_back(self) -> None:
        turns, self._turns = self._turns, None
        if turns is not None:
            turns.give_back()

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            self._give_back()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._give_back()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._give_back()
