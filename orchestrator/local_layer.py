"""A channel layer that carries doorbells between the processes of one machine over Unix datagram
sockets, for a site on SQLite, where every process that shares the database runs on this machine.

With it, `serve` runs jobs in `runjobs` processes of its own without Redis: a submission in the web
process wakes an executor at once, and an event an executor commits reaches the web's WebSockets at
once, as they do over Redis (doorbell_layer.py), instead of at the next poll.

- Every event loop that listens (the web's, an executor's) binds a socket of its own in a directory
  beside the database file (`<database>.doorbells/`, mode 0700), and keeps, as the Redis layer does,
  which of its channels are in which group. Doorbells go to every socket in the directory; each
  loop hands them to its channels in the groups named, and drops the rest. A site has a handful of
  such processes, so this costs little, and nothing needs to be subscribed before it is heard.
- `ring` and `group_send` never wait: a thread of the layer's own sends whatever was rung
  meanwhile, each doorbell once, in one datagram to each socket.
- A socket whose queue is full (the kernel queues only a few datagrams, `net.unix.max_dgram_qlen`)
  is waited for, up to `patience_seconds`; after that the doorbells for it are dropped. A socket
  left behind by a process that died is removed when a send to it is refused.
- A lost doorbell delays an event until the log is read again (a stream's catch-up, an executor's
  poll); it never loses one. Only processes of the user owning the directory can ring.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import queue
import select
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.db import connections

from .layer_parts import Inbox, PerLoopLayer

logger = logging.getLogger(__name__)

SUFFIX = ".sock"
MAX_PATH = 100  # bytes a socket's path may take (108 on Linux, fewer elsewhere)
RECEIVE_BUFFER = 1 << 20
BATCH_BYTES = 60_000  # a datagram's payload at most; a bigger batch is sent in several
RECENT_SECONDS = 0.1  # a directory changed this recently is listed again whatever its mtime says


@functools.lru_cache(maxsize=64)
def directory_for(database: str) -> Path:
    """Where the sockets of the processes sharing the SQLite file `database` live."""
    beside = Path(f"{database}.doorbells")
    if len(os.fsencode(str(beside))) + 32 <= MAX_PATH:  # "/<pid>-<12 hex>.sock"
        return beside
    digest = hashlib.sha256(os.fsencode(os.path.abspath(database))).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"cortex-doorbells-{os.getuid()}-{digest}"


def _make_directory(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user: doorbells are not carried through it")
    path.chmod(0o700)


def _clear_left_behind(path: Path) -> None:
    """Remove the sockets of processes that ended without removing theirs (killed, or a server
    whose loop never closed). A socket's name starts with its process's id."""
    with contextlib.suppress(OSError):
        for name in os.listdir(path):
            pid = name.partition("-")[0]
            if not (name.endswith(SUFFIX) and pid.isdigit()) or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    (path / name).unlink()
            except PermissionError:  # alive, another user's: not ours to judge
                continue


_bound: set[Path] = set()  # this process's sockets, removed at exit if their loop never closed


@atexit.register
def _remove_bound() -> None:
    for path in list(_bound):
        with contextlib.suppress(OSError):
            path.unlink()


class Hub:
    """One event loop's socket and channels."""

    def __init__(self, layer: LocalDoorbellLayer, directory: Path) -> None:
        self.layer = layer
        self.inboxes: dict[str, Inbox] = {}
        self.members: dict[str, set[str]] = {}
        _make_directory(directory)
        _clear_left_behind(directory)
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setblocking(False)
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            self.socket.bind(str(self.path))
        except FileNotFoundError:  # the last listener of another process removed the directory
            _make_directory(directory)
            self.socket.bind(str(self.path))
        _bound.add(self.path)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.socket.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.socket.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                logger.warning("reading doorbells failed", exc_info=True)
                return
            self.dispatch(data)

    def dispatch(self, data: bytes) -> None:
        try:
            batch = json.loads(data)
        except ValueError:
            return
        if not isinstance(batch, list):
            return
        for item in batch:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
                    and isinstance(item[1], dict)):
                continue
            groups, message = item
            for group in groups:
                for channel in self.members.get(group, ()) if isinstance(group, str) else ():
                    inbox = self.inboxes.get(channel)
                    if inbox is not None:
                        inbox.put(dict(message))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.socket.fileno())
        self.socket.close()
        _bound.discard(self.path)
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):  # the last socket of the directory: leave nothing behind
            self.path.parent.rmdir()


class Peers:
    """The sockets of one directory, as seen by the sending thread: one connected socket for each,
    so a full queue can be waited for socket by socket."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sockets: dict[str, socket.socket] = {}
        self.names: frozenset[str] = frozenset()

    def current(self) -> dict[str, socket.socket]:
        names = _listing.names(self.directory)
        if names != self.names:
            self.names = names
            self._connect(names)
        return self.sockets

    def _connect(self, names: frozenset[str]) -> None:
        """Connected sockets for `names`, and none for any other."""
        for name in set(self.sockets) - names:
            self.sockets.pop(name).close()
        for name in names - set(self.sockets):
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            peer.setblocking(False)
            try:
                peer.connect(str(self.directory / name))
            except (ConnectionRefusedError, FileNotFoundError):
                peer.close()
                self.gone(name)
                continue
            except OSError:
                peer.close()
                logger.warning("cannot reach doorbell socket %s", name, exc_info=True)
                continue
            self.sockets[name] = peer

    def gone(self, name: str) -> None:
        """Nobody listens on `name` any more (its process died without removing it): remove it."""
        peer = self.sockets.pop(name, None)
        if peer is not None:
            peer.close()
        with contextlib.suppress(OSError):
            (self.directory / name).unlink()

    def close(self) -> None:
        for peer in self.sockets.values():
            peer.close()
        self.sockets = {}


class Sender:
    """The process's thread that sends what the layer is given to ring."""

    def __init__(self) -> None:
        self.waiting: queue.SimpleQueue[tuple[Path, list[str], dict[str, Any], float]] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.starting = threading.Lock()
        self.peers: dict[Path, Peers] = {}

    def put(self, directory: Path, groups: list[str], message: dict[str, Any], patience: float) -> None:
        with self.starting:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._serve, name="cortex-doorbells", daemon=True)
                self.thread.start()
        self.waiting.put((directory, groups, message, patience))

    def _serve(self) -> None:
        while True:
            batch = [self.waiting.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self.waiting.get_nowait())
            by_directory: dict[Path, dict[Any, list[Any]]] = {}
            patience: dict[Path, float] = {}
            for directory, groups, message, wait in batch:
                by_directory.setdefault(directory, {})[_key(groups, message)] = [groups, message]
                patience[directory] = max(wait, patience.get(directory, 0.0))
            for directory, items in by_directory.items():
                try:
                    self._send(directory, list(items.values()), patience[directory])
                except Exception:  # a doorbell is best effort: listeners also read the log
                    logger.warning("could not ring %d doorbells", len(items), exc_info=True)

    def _send(self, directory: Path, items: list[Any], patience: float) -> None:
        peers = self.peers.get(directory)
        if peers is None:
            peers = self.peers[directory] = Peers(directory)
        sockets = peers.current()
        if not sockets:
            if not directory.exists():  # nobody listens there any more: forget it
                del self.peers[directory]
            return
        for payload in _datagrams(items):
            full = []
            for name, peer in list(sockets.items()):
                if not self._try(peers, name, peer, payload):
                    full.append(name)
            deadline = time.monotonic() + patience
            while full:
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.info("dropped doorbells for %d busy listeners", len(full))
                    break
                writable = {peers.sockets[name].fileno(): name for name in full if name in peers.sockets}
                if not writable:
                    break
                poller = select.poll()
                for fileno in writable:
                    poller.register(fileno, select.POLLOUT)
                ready = {writable[fileno] for fileno, _ in poller.poll(left * 1000)}
                full = [name for name in writable.values()
                        if name not in ready or not self._try(peers, name, peers.sockets[name], payload)]

    @staticmethod
    def _try(peers: Peers, name: str, peer: socket.socket, payload: bytes) -> bool:
        """Send `payload` to one socket; False if its queue is full (try again later)."""
        try:
            peer.send(payload)
        except (BlockingIOError, InterruptedError):
            return False
        except (ConnectionRefusedError, FileNotFoundError):
            peers.gone(name)
        except OSError as error:
            if error.errno in (errno.ECONNRESET, errno.ENOTCONN):
                peers.gone(name)
            else:
                logger.warning("could not ring doorbell socket %s", name, exc_info=True)
        return True


def _key(groups: list[str], message: dict[str, Any]) -> Any:
    """What tells one doorbell from another in a batch: its groups and message (a doorbell's
    values are text and numbers; anything else is told apart by its JSON)."""
    try:
        return tuple(groups), frozenset(message.items())
    except TypeError:
        return json.dumps([groups, message], sort_keys=True)


def _datagrams(items: list[Any]) -> Iterable[bytes]:
    """`items` as JSON lists of at most about BATCH_BYTES each."""
    chunk: list[bytes] = []
    size = 0
    for item in items:
        encoded = json.dumps(item).encode()
        if chunk and size + len(encoded) > BATCH_BYTES:
            yield b"[" + b",".join(chunk) + b"]"
            chunk, size = [], 0
        chunk.append(encoded)
        size += len(encoded) + 1
    if chunk:
        yield b"[" + b",".join(chunk) + b"]"


class Listing:
    """The socket names of each directory, for any thread: listed again when the directory changed,
    else a `stat` a call. Directory times are coarse (a clock tick): a socket bound in the same tick
    as the last listing leaves the time unchanged, so a directory changed lately is always listed
    again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[Path, tuple[int, frozenset[str]]] = {}

    def names(self, directory: Path) -> frozenset[str]:
        try:
            stamp = directory.stat().st_mtime_ns
        except FileNotFoundError:
            return frozenset()
        with self.lock:
            seen = self.seen.get(directory)
            if seen is not None and seen[0] == stamp and time.time_ns() - stamp >= RECENT_SECONDS * 1e9:
                return seen[1]
        try:
            names = frozenset(name for name in os.listdir(directory) if name.endswith(SUFFIX))
        except FileNotFoundError:
            names = frozenset()
        with self.lock:
            self.seen[directory] = (stamp, names)
        return names


_sender = Sender()
_listing = Listing()


class LocalDoorbellLayer(PerLoopLayer):
    """`directory`: where the sockets live; by default beside the SQLite database in use (read at
    each use, so a test database's processes share theirs and nobody else's)."""

    def __init__(self, directory: str | None = None, capacity: int = 100, patience_seconds: float = 1.0) -> None:
        super().__init__(capacity=capacity)
        self.configured = Path(directory) if directory else None
        self.patience_seconds = patience_seconds

    def directory(self) -> Path:
        if self.configured is not None:
            return self.configured
        return directory_for(str(connections["default"].settings_dict["NAME"]))

    def make_hub(self) -> Hub:
        return Hub(self, self.directory())

    def left(self, hub: Hub, channel: str) -> None:
        hub.members = {group: members - {channel} for group, members in hub.members.items() if members - {channel}}

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.hub().members.setdefault(group, set()).add(channel)

    async def group_discard(self, group: str, channel: str) -> None:
        hub = self.hub()
        members = hub.members.get(group)
        if members is not None:
            members.discard(channel)
            if not members:
                del hub.members[group]

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.ring([group], message)

    def ring(self, groups: Iterable[str], message: dict[str, Any]) -> None:
        """`message` to each of `groups`, from any thread, soon; never waits."""
        _sender.put(self.directory(), list(groups), message, self.patience_seconds)

    def heard(self, groups: Iterable[str]) -> set[str]:
        """Those of `groups` whose doorbell may be heard: every one where another listener's socket
        is in the directory (what it listens to is not known here), else those a channel of this
        layer's own loops is in. From any thread; a listener that comes a moment later reads the log
        anyway."""
        hubs = list(self.hubs.values())
        ours = {hub.path.name for hub in hubs}
        if any(name not in ours for name in _listing.names(self.directory())):
            return set(groups)
        return {group for group in groups if any(group in hub.members for hub in hubs)}
