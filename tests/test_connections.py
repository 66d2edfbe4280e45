"""Model endpoints' connections: the pool reuses a kept-alive connection, and notices one the
server closed while it sat idle (`netguard._stream_class`), instead of sending the next request
into it and failing."""

from __future__ import annotations

import asyncio
import socket

import httpx2
import pytest

from orchestrator import netguard


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
        assert not netguard._readable(ours)
        theirs.close()
        assert netguard._readable(ours)
    finally:
        ours.close()
    assert netguard._readable(ours)  # gone altogether
    assert netguard._readable(None)


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
