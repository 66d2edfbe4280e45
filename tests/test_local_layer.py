"""Doorbells between the processes of one machine over Unix datagram sockets (orchestrator/local_layer.py):
what a site on SQLite uses so `serve` can run jobs in processes of its own."""

from __future__ import annotations

import asyncio
import os
import stat
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator import local_layer
from orchestrator.local_layer import LocalDoorbellLayer
from tests.conftest import ROOT, process_env

RINGER = """
import sys, time
import django
django.setup()
from orchestrator.local_layer import LocalDoorbellLayer
layer = LocalDoorbellLayer(directory=sys.argv[1])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # until the test has heard it and stops this process
    layer.ring([sys.argv[2]], {"type": "doorbell", "from": "child"})
    time.sleep(0.2)
"""


async def receive(layer: LocalDoorbellLayer, channel: str, timeout: float = 10.0) -> dict:
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def nothing_for(layer: LocalDoorbellLayer, channel: str, seconds: float = 0.5) -> bool:
    try:
        await asyncio.wait_for(layer.receive(channel), seconds)
    except TimeoutError:
        return True
    return False


async def test_a_doorbell_rung_in_another_process_reaches_the_channels_of_its_group_only(tmp_path):
    layer = LocalDoorbellLayer(directory=str(tmp_path / "bells"))
    listening = await layer.new_channel()
    elsewhere = await layer.new_channel()
    await layer.group_add("job.1", listening)
    await layer.group_add("job.2", elsewhere)
    child = subprocess.Popen([sys.executable, "-c", RINGER, str(tmp_path / "bells"), "job.1"],
                             env=process_env(), cwd=ROOT)
    try:
        assert await receive(layer, listening, timeout=30) == {"type": "doorbell", "from": "child"}
        assert await nothing_for(layer, elsewhere)
    finally:
        child.kill()
        child.wait()


async def test_a_channel_that_left_its_group_hears_nothing_more(tmp_path):
    layer = LocalDoorbellLayer(directory=str(tmp_path))
    channel = await layer.new_channel()
    await layer.group_add("user.7", channel)
    await layer.group_send("user.7", {"type": "doorbell"})
    assert await receive(layer, channel) == {"type": "doorbell"}
    await layer.group_discard("user.7", channel)
    await layer.group_send("user.7", {"type": "doorbell"})
    assert await nothing_for(layer, channel)


async def test_every_doorbell_of_a_burst_arrives_while_the_listener_is_busy(tmp_path):
    """The kernel queues only a few datagrams for a socket (`net.unix.max_dgram_qlen`): doorbells
    rung one by one while the listening loop is held up wait for room instead of being dropped."""
    layer = LocalDoorbellLayer(directory=str(tmp_path), patience_seconds=30)
    channels = [await layer.new_channel() for _ in range(60)]
    for number, channel in enumerate(channels):
        await layer.group_add(f"job.{number}", channel)

    def ring_one_by_one() -> None:
        for number in range(len(channels)):
            layer.ring([f"job.{number}"], {"type": "doorbell"})
            time.sleep(0.005)  # each its own datagram: the sending thread has sent the last one

    ringing = threading.Thread(target=ring_one_by_one)
    ringing.start()
    time.sleep(1.0)  # the loop is busy: nothing is read meanwhile
    await asyncio.to_thread(ringing.join)
    for channel in channels:
        assert await receive(layer, channel, timeout=30) == {"type": "doorbell"}


async def test_a_socket_left_by_a_dead_process_is_removed_and_the_rest_still_hear(tmp_path):
    layer = LocalDoorbellLayer(directory=str(tmp_path))
    channel = await layer.new_channel()
    await layer.group_add("job.1", channel)
    left = tmp_path / f"999999-deadbeef{local_layer.SUFFIX}"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(left))
    dead.close()  # as a killed process leaves it: the file stays, nobody listens
    assert left.exists()
    layer.ring(["job.1"], {"type": "doorbell"})
    assert await receive(layer, channel) == {"type": "doorbell"}
    for _ in range(100):
        if not left.exists():
            break
        await asyncio.sleep(0.05)
    assert not left.exists()


async def test_a_datagram_that_is_not_a_batch_of_doorbells_is_ignored(tmp_path):
    layer = LocalDoorbellLayer(directory=str(tmp_path))
    channel = await layer.new_channel()
    await layer.group_add("job.1", channel)
    [path] = tmp_path.iterdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
        for junk in (b"\xff\xfe not json", b'{"job.1": 1}', b'[["job.1"]]', b'[[1, {"type": "doorbell"}]]',
                     b'[[[1], {"type": "doorbell"}]]', b'[[["job.1"], "doorbell"]]'):
            stranger.sendto(junk, str(path))
    layer.ring(["job.1"], {"type": "doorbell", "after": "junk"})
    # The first thing the channel hears is the doorbell rung after the junk, and the hub still reads.
    assert await receive(layer, channel) == {"type": "doorbell", "after": "junk"}


async def test_the_sockets_live_in_a_directory_only_their_user_may_enter(tmp_path):
    layer = LocalDoorbellLayer(directory=str(tmp_path / "bells"))
    await layer.new_channel()
    assert stat.S_IMODE(os.stat(tmp_path / "bells").st_mode) == 0o700


def test_a_database_deep_in_the_tree_gets_its_sockets_where_a_socket_path_fits():
    near = Path("/srv/cortex/var/cortex.sqlite3")
    deep = Path("/srv") / ("d" * 60) / ("e" * 60) / "cortex.sqlite3"
    assert local_layer.directory_for(str(near)) == Path("/srv/cortex/var/cortex.sqlite3.doorbells")
    far = local_layer.directory_for(str(deep))
    assert far != local_layer.directory_for(str(near))
    assert far == local_layer.directory_for(str(deep))  # every process of that database finds the same
    assert len(os.fsencode(str(far / f"{os.getpid()}-0123456789ab{local_layer.SUFFIX}"))) <= local_layer.MAX_PATH


@pytest.mark.django_db
async def test_by_default_the_sockets_lie_beside_the_database_in_use(settings):
    from django.db import connections

    layer = LocalDoorbellLayer()
    assert layer.directory() == local_layer.directory_for(str(connections["default"].settings_dict["NAME"]))


async def test_sockets_of_processes_that_ended_are_cleared_when_a_loop_starts_listening(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    left = tmp_path / f"{ended.pid}-0123456789ab{local_layer.SUFFIX}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(left))
    alive = tmp_path / f"{os.getpid()}-ba9876543210{local_layer.SUFFIX}"  # this process lives on
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ours:
        ours.bind(str(alive))
    layer = LocalDoorbellLayer(directory=str(tmp_path))
    await layer.new_channel()
    assert not left.exists() and alive.exists()


def test_the_last_listener_to_close_removes_the_directory_and_a_new_one_makes_it_again(tmp_path):
    bells = tmp_path / "bells"
    layer = LocalDoorbellLayer(directory=str(bells))
    for _ in range(2):
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(layer.new_channel())
            assert len(list(bells.iterdir())) == 1
        finally:
            loop.close()
        assert not bells.exists()


async def test_a_group_is_heard_where_a_channel_joined_it_or_another_process_may_hear(tmp_path):
    layer = LocalDoorbellLayer(directory=str(tmp_path / "bells"))
    assert layer.heard(["job.1"]) == set()  # no socket at all
    channel = await layer.new_channel()  # this loop's own socket, nothing joined yet
    assert layer.heard(["job.1"]) == set()
    await layer.group_add("job.1", channel)
    assert layer.heard(["job.1", "job.2"]) == {"job.1"}
    await layer.group_discard("job.1", channel)
    assert layer.heard(["job.1"]) == set()
    # Another process's socket: what it listens to is not known here, so any group may be heard.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.bind(str(tmp_path / "bells" / f"999998-0123456789ab{local_layer.SUFFIX}"))
        assert layer.heard(["job.1", "job.2"]) == {"job.1", "job.2"}


async def test_different_doorbells_for_one_group_rung_together_all_arrive(tmp_path):
    """Doorbells rung at the same moment go out in one batch, each once: two that differ (a wake-up
    and a cancellation, say) are both sent."""
    layer = LocalDoorbellLayer(directory=str(tmp_path))
    channel = await layer.new_channel()
    await layer.group_add("cortex.executors", channel)
    wake, cancel = {"type": "executor.wake"}, {"type": "executor.wake", "cancel": "job-1"}
    for message in (wake, cancel, wake):
        layer.ring(["cortex.executors"], message)
    heard: list[dict] = []
    while cancel not in heard or wake not in heard:  # or `receive` times out
        heard.append(await receive(layer, channel))
