"""Model endpoints' connections: the pool reuses a kept-alive connection, and notices one the
server closed while it sat idle (`http1.Connection.usable`, and `netguard._stream_class` for the
checked httpx transports), instead of sending the next request into it and failing."""

from __future__ import annotations

import asyncio
import socket

import httpx2
import pytest

from orchestrator import http1, netguard
from orchestrator.providers.base import LoopClients
from orchestrator.providers.openai_compat import OpenAIProvider


class ClosingServer:
    """An HTTP/1.1 server that answers each request with keep-alive, then closes the connection
    as soon as the answer is sent: as a server whose idle timeout is shorter than the client's."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        self.closed.set()


def test_a_closed_socket_reads_as_closed_and_an_idle_one_does_not() -> None:
    ours, theirs = socket.socketpair()
    try:
        assert not http1.readable(ours)
        theirs.close()
        assert http1.readable(ours)
    finally:
        ours.close()
    assert http1.readable(ours)  # gone altogether
    assert http1.readable(None)


@pytest.mark.parametrize("transport", [netguard.site_endpoint_transport,
                                       lambda: netguard.checked_transport(True, http=httpx2, core=netguard.httpcore2)])
async def test_a_connection_the_server_closed_while_idle_is_not_used_again(transport) -> None:
    server = ClosingServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with httpx2.AsyncClient(transport=transport()) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
            await server.closed.wait()
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
    finally:
        listener.close()
        await listener.wait_closed()
    assert server.connections == 2


async def test_a_connection_kept_alive_is_used_again() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()  # the client closed its end

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with httpx2.AsyncClient(transport=netguard.site_endpoint_transport()) as client:
            for _ in range(3):
                assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
    finally:
        listener.close()
    assert connections == 1


async def test_every_connection_of_a_wave_of_calls_is_kept_for_the_next() -> None:
    """An executor with more calls in flight than the SDKs' 100 kept-alive connections: every
    connection of the first wave answers the second, none is closed and opened again."""
    wave = 120
    connections = 0
    arrived = 0
    everyone_in = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, arrived
        connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                arrived += 1
                if arrived % wave == 0:
                    everyone_in.set()
                await everyone_in.wait()  # answers only once the whole wave is in flight
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=wave)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with httpx2.AsyncClient(transport=netguard.site_endpoint_transport()) as client:
            for _ in range(2):
                everyone_in.clear()
                answers = await asyncio.gather(*(client.get(f"http://127.0.0.1:{port}/") for _ in range(wave)))
                assert [answer.text for answer in answers] == ["ok"] * wave
    finally:
        listener.close()
    assert connections == wave


def test_calls_take_a_loops_clients_in_turn_each_made_when_first_needed() -> None:
    made: list[object] = []

    def factory() -> object:
        made.append(object())
        return made[-1]

    clients = LoopClients(factory, shards=3)

    async def take(count: int) -> list[object]:
        return [clients.get() for _ in range(count)]

    first = asyncio.run(take(2))
    assert len(made) == 2 and first == made  # only the clients needed so far
    more = asyncio.run(take(6))  # another loop: clients of its own
    assert len(made) == 5 and not set(more) & set(first)
    assert set(more) == set(made[2:]) and more[:3] == more[3:]  # each in turn


def test_a_providers_clients_share_one_tls_context() -> None:
    provider = OpenAIProvider(base_url="https://models.example/v1", api_key="k")

    def context_of(client) -> object:
        return client._client._transport._ssl_context

    assert context_of(provider._new_client()) is context_of(provider._new_client())
