"""Behaviour of the built-in tools, called the way the engine calls them: through the registry."""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import os
import ssl
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import orchestrator.tools.builtin  # noqa: F401  (registers the tools)
from orchestrator import netguard
from orchestrator.tools.builtin import web
from orchestrator.tools.builtin.workspace import MAX_READ_BYTES, MAX_WRITE_BYTES, resolve_in_workspace
from orchestrator.tools.registry import ArgumentsInvalid, ToolContext, ToolError, registry


def make_ctx(workspace: Path, *, allow_private: bool = False) -> ToolContext:
    return ToolContext(
        user_id=1,
        username="alice",
        job_id="j1",
        workspace=workspace,
        settings=types.SimpleNamespace(CORTEX_HTTP_ALLOW_PRIVATE=allow_private),
    )


async def call(ctx: ToolContext, name: str, **args: Any) -> Any:
    tool = registry.get(name)
    assert tool is not None, name
    return await tool.handler(ctx, **tool.validate(args))


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return make_ctx(tmp_path / "ws")


# --- registry declarations --------------------------------------------------------------------


def test_every_builtin_tool_is_registered_with_a_closed_schema() -> None:
    expected = {
        "calculator": ("math", "low", True),
        "current_time": ("time", "low", True),
        "workspace_list": ("files", "low", True),
        "workspace_read": ("files", "low", True),
        "workspace_write": ("files", "medium", True),
        "workspace_delete": ("files", "high", True),
        "http_get": ("web", "medium", True),
    }
    for name, (category, risk, idempotent) in expected.items():
        tool = registry.get(name)
        assert tool is not None, name
        assert (tool.category, tool.risk, tool.idempotent) == (category, risk, idempotent)
        assert tool.parameters["additionalProperties"] is False
        assert tool.description
    assert registry.get("http_get").timeout == 20.0


# --- calculator -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1+2", 3),
        ("2 ** 10", 1024),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("10 / 4", 2.5),
        ("-3 + +2", -1),
        ("(1 + 2) * 3", 9),
        ("sqrt(16)", 4.0),
        ("round(pi, 2)", 3.14),
        ("round(2.5)", 2),
        ("max(1, 5, 3)", 5),
        ("min(4, -1.5)", -1.5),
        ("abs(-2.5)", 2.5),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("sin(0) + cos(0) + tan(0)", 1.0),
        ("2 ** -1", 0.5),
        ("2 ** 1000", 2**1000),
    ],
)
async def test_it_evaluates_arithmetic(ctx: ToolContext, expression: str, expected: float) -> None:
    result = await call(ctx, "calculator", expression=expression)
    assert result["result"] == pytest.approx(expected)
    assert type(result["result"]) is type(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("x + 1", "unknown name 'x'"),
        ("__builtins__", "unknown name"),
        ("(1).real", "attribute access"),
        ("().__class__.__bases__", "attribute access"),
        ("__import__('os')", "calling '__import__' is not allowed"),
        ("open('/etc/passwd')", "calling 'open' is not allowed"),
        ("eval('1')", "calling 'eval' is not allowed"),
        ("(lambda: 1)()", "calling an expression"),
        ("lambda: 1", "lambda"),
        ("[x for x in (1, 2)]", "comprehensions"),
        ("'a' * 3", "strings"),
        ("1 < 2", "comparisons"),
        ("1 << 2", "LShift"),
        ("~1", "~"),
        ("True + 1", "bool"),
        ("abs", "is a function"),
        ("sqrt(x=4)", "keyword arguments"),
        ("sqrt(1, 2)", "takes 1 argument"),
    ],
)
async def test_it_refuses_what_is_not_arithmetic(ctx: ToolContext, expression: str, message: str) -> None:
    with pytest.raises(ToolError, match="not allowed|unknown name|is a function|keyword|takes") as caught:
        await call(ctx, "calculator", expression=expression)
    assert message in str(caught.value)


@pytest.mark.parametrize("expression", ["9**9**9", "10 ** 400", "2 ** 1024", "(10**300) * (10**300)", "1.5 ** 100000"])
async def test_it_refuses_huge_powers_and_results_quickly(ctx: ToolContext, expression: str) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match="too large|overflows"):
        await call(ctx, "calculator", expression=expression)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("expression", ["1/0", "5 // 0", "5 % 0", "0 ** -1", "1 / (2 - 2)"])
async def test_it_reports_division_by_zero(ctx: ToolContext, expression: str) -> None:
    with pytest.raises(ToolError, match="division by zero"):
        await call(ctx, "calculator", expression=expression)


async def test_it_refuses_an_expression_longer_than_the_limit(ctx: ToolContext) -> None:
    tool = registry.get("calculator")
    long_expression = "1+" * 300 + "1"
    with pytest.raises(ToolError, match="limit is 500"):
        await tool.handler(ctx, expression=long_expression)
    with pytest.raises(ArgumentsInvalid):
        tool.validate({"expression": long_expression})


async def test_it_reports_domain_errors_and_complex_results(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="sqrt"):
        await call(ctx, "calculator", expression="sqrt(-1)")
    with pytest.raises(ToolError, match="complex"):
        await call(ctx, "calculator", expression="(-8) ** 0.5")
    with pytest.raises(ToolError, match="not a valid expression"):
        await call(ctx, "calculator", expression="1 +")


def test_the_calculator_schema_rejects_bad_arguments() -> None:
    tool = registry.get("calculator")
    for bad in ({}, {"expression": 3}, {"expression": "1", "extra": True}, {"expression": ""}):
        with pytest.raises(ArgumentsInvalid):
            tool.validate(bad)


# --- clock ------------------------------------------------------------------------------------


async def test_it_tells_the_time_in_utc_by_default(ctx: ToolContext) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = await call(ctx, "current_time")
    after = dt.datetime.now(dt.UTC)
    moment = dt.datetime.fromisoformat(result["iso"])
    assert result["timezone"] == "UTC"
    assert result["utc_offset"] == "+00:00"
    assert before <= moment <= after
    assert result["weekday"] == moment.strftime("%A")
    assert result["unix"] == int(moment.timestamp())


async def test_it_tells_the_time_in_a_named_zone(ctx: ToolContext) -> None:
    result = await call(ctx, "current_time", timezone="Asia/Kolkata")
    moment = dt.datetime.fromisoformat(result["iso"])
    assert result["timezone"] == "Asia/Kolkata"
    assert result["utc_offset"] == "+05:30"
    assert moment.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert result["weekday"] == moment.strftime("%A")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "America", "not a zone"])
async def test_it_refuses_an_unknown_time_zone(ctx: ToolContext, zone: str) -> None:
    with pytest.raises(ToolError, match="unknown time zone"):
        await call(ctx, "current_time", timezone=zone)


def test_the_clock_schema_rejects_bad_arguments() -> None:
    tool = registry.get("current_time")
    for bad in ({"timezone": 5}, {"tz": "UTC"}, {"timezone": ""}):
        with pytest.raises(ArgumentsInvalid):
            tool.validate(bad)


# --- workspace --------------------------------------------------------------------------------


async def test_it_writes_reads_lists_and_deletes_a_file(ctx: ToolContext) -> None:
    written = await call(ctx, "workspace_write", path="notes/plan.md", content="step 1\nétape 2\n")
    assert written == {"path": "notes/plan.md", "bytes": len("step 1\nétape 2\n".encode()), "created": True}

    read = await call(ctx, "workspace_read", path="notes/plan.md")
    assert read["content"] == "step 1\nétape 2\n"
    assert read["truncated"] is False

    root_listing = await call(ctx, "workspace_list")
    assert root_listing["entries"] == [{"name": "notes", "type": "directory"}]
    listing = await call(ctx, "workspace_list", path="notes")
    assert listing["entries"] == [{"name": "plan.md", "type": "file", "size": written["bytes"]}]
    recursive = await call(ctx, "workspace_list", recursive=True)
    assert [e["name"] for e in recursive["entries"]] == ["notes", "notes/plan.md"]

    deleted = await call(ctx, "workspace_delete", path="notes/plan.md")
    assert deleted == {"path": "notes/plan.md", "deleted": True, "type": "file"}
    assert (await call(ctx, "workspace_list", path="notes"))["entries"] == []
    again = await call(ctx, "workspace_delete", path="notes/plan.md")
    assert again["deleted"] is False
    assert (await call(ctx, "workspace_delete", path="notes"))["type"] == "directory"


async def test_it_creates_the_workspace_root_when_missing(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "deep" / "alice")
    assert (await call(ctx, "workspace_list"))["entries"] == []
    assert (tmp_path / "deep" / "alice").is_dir()


async def test_writing_the_same_content_twice_is_harmless(ctx: ToolContext) -> None:
    first = await call(ctx, "workspace_write", path="a.txt", content="same")
    second = await call(ctx, "workspace_write", path="a.txt", content="same")
    assert first["created"] is True and second["created"] is False
    assert (await call(ctx, "workspace_read", path="a.txt"))["content"] == "same"
    assert [e["name"] for e in (await call(ctx, "workspace_list"))["entries"]] == ["a.txt"]


@pytest.mark.parametrize("path", ["../outside.txt", "notes/../../outside.txt", "notes/..", ".."])
async def test_it_refuses_a_parent_directory_path(ctx: ToolContext, tmp_path: Path, path: str) -> None:
    for name, args in (
        ("workspace_write", {"path": path, "content": "x"}),
        ("workspace_read", {"path": path}),
        ("workspace_list", {"path": path}),
        ("workspace_delete", {"path": path}),
    ):
        with pytest.raises(ToolError, match=r"'\.\.'"):
            await call(ctx, name, **args)
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("path", ["/etc/passwd", "/tmp/x"])
async def test_it_refuses_an_absolute_path(ctx: ToolContext, path: str) -> None:
    with pytest.raises(ToolError, match="absolute"):
        await call(ctx, "workspace_read", path=path)
    with pytest.raises(ToolError, match="absolute"):
        await call(ctx, "workspace_write", path=path, content="x")


async def test_it_refuses_backslashes_and_nul_characters(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="forward slashes"):
        await call(ctx, "workspace_write", path="..\\evil.txt", content="x")
    with pytest.raises(ToolError, match="NUL"):
        await call(ctx, "workspace_write", path="a\x00b", content="x")


async def test_it_refuses_a_symlink_that_escapes_the_root(ctx: ToolContext, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    root = Path(ctx.workspace)
    root.mkdir(parents=True)
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "dangling").symlink_to(outside / "planted.txt")

    with pytest.raises(ToolError, match="outside the workspace"):
        await call(ctx, "workspace_read", path="link/secret.txt")
    with pytest.raises(ToolError, match="outside the workspace"):
        await call(ctx, "workspace_list", path="link")
    with pytest.raises(ToolError, match="outside the workspace"):
        await call(ctx, "workspace_write", path="link/new.txt", content="x")
    with pytest.raises(ToolError, match="outside the workspace"):
        await call(ctx, "workspace_write", path="dangling", content="x")
    with pytest.raises(ToolError, match="outside the workspace"):
        await call(ctx, "workspace_delete", path="link/secret.txt")
    assert not (outside / "new.txt").exists()
    assert not (outside / "planted.txt").exists()
    assert (outside / "secret.txt").read_text() == "top secret"

    # Deleting the link itself is allowed and leaves its target alone.
    assert (await call(ctx, "workspace_delete", path="link"))["type"] == "symlink"
    assert not (root / "link").exists()
    assert (outside / "secret.txt").read_text() == "top secret"


async def test_it_follows_a_symlink_that_stays_inside_the_root(ctx: ToolContext) -> None:
    await call(ctx, "workspace_write", path="real/data.txt", content="inside")
    root = Path(ctx.workspace)
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert (await call(ctx, "workspace_read", path="alias/data.txt"))["content"] == "inside"
    listing = await call(ctx, "workspace_list")
    assert {"name": "alias", "type": "symlink"} in listing["entries"]


def test_resolve_in_workspace_confines_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "up").symlink_to(tmp_path, target_is_directory=True)
    (root / "self").symlink_to(root / "sub", target_is_directory=True)
    real_root = root.resolve()
    assert resolve_in_workspace(root, "") == real_root
    assert resolve_in_workspace(root, ".") == real_root
    assert resolve_in_workspace(root, "sub//file.txt") == real_root / "sub" / "file.txt"
    assert resolve_in_workspace(root, "self/x") == real_root / "sub" / "x"
    assert resolve_in_workspace(root, "new/dir/file") == real_root / "new" / "dir" / "file"
    for bad in ("../x", "sub/../../x", "/abs", "up", "up/elsewhere", "sub\\..\\..\\x"):
        with pytest.raises(ToolError):
            resolve_in_workspace(root, bad)


async def test_it_refuses_an_oversized_write(ctx: ToolContext) -> None:
    tool = registry.get("workspace_write")
    with pytest.raises(ToolError, match="limit is"):
        # Under the schema's character limit, but over the byte limit once encoded.
        await tool.handler(ctx, path="big.txt", content="é" * (MAX_WRITE_BYTES // 2 + 1))
    with pytest.raises(ArgumentsInvalid):
        tool.validate({"path": "big.txt", "content": "x" * (MAX_WRITE_BYTES + 1)})
    assert not (Path(ctx.workspace) / "big.txt").exists()


async def test_it_truncates_a_large_file_when_reading(ctx: ToolContext) -> None:
    root = Path(ctx.workspace)
    root.mkdir(parents=True)
    # 3-byte characters, so the byte limit falls inside a character.
    (root / "big.txt").write_text("€" * 100_000, encoding="utf-8")
    result = await call(ctx, "workspace_read", path="big.txt")
    assert result["truncated"] is True
    assert result["size"] == 300_000
    assert result["content"] == "€" * (MAX_READ_BYTES // 3)


async def test_it_refuses_to_read_a_binary_file(ctx: ToolContext) -> None:
    root = Path(ctx.workspace)
    root.mkdir(parents=True)
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ToolError, match="binary"):
        await call(ctx, "workspace_read", path="image.png")
    with pytest.raises(ToolError, match="not UTF-8"):
        await call(ctx, "workspace_read", path="latin1.txt")


async def test_it_reports_missing_files_and_directories(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="does not exist"):
        await call(ctx, "workspace_read", path="nope.txt")
    with pytest.raises(ToolError, match="does not exist"):
        await call(ctx, "workspace_list", path="nope")
    await call(ctx, "workspace_write", path="dir/file.txt", content="x")
    with pytest.raises(ToolError, match="is a directory"):
        await call(ctx, "workspace_read", path="dir")
    with pytest.raises(ToolError, match="is a directory"):
        await call(ctx, "workspace_write", path="dir", content="x")
    with pytest.raises(ToolError, match="a file is in the way"):
        await call(ctx, "workspace_write", path="dir/file.txt/inner.txt", content="x")


async def test_it_deletes_only_files_and_empty_directories(ctx: ToolContext) -> None:
    await call(ctx, "workspace_write", path="full/file.txt", content="x")
    with pytest.raises(ToolError, match="not empty"):
        await call(ctx, "workspace_delete", path="full")
    with pytest.raises(ToolError, match="root cannot be deleted"):
        await call(ctx, "workspace_delete", path=".")
    assert (Path(ctx.workspace) / "full" / "file.txt").exists()


def test_the_workspace_schemas_reject_bad_arguments() -> None:
    cases = {
        "workspace_list": [{"path": 1}, {"recursive": "yes"}, {"other": 1}],
        "workspace_read": [{}, {"path": ""}, {"path": "a", "extra": 1}],
        "workspace_write": [{"path": "a"}, {"content": "x"}, {"path": "a", "content": 1}],
        "workspace_delete": [{}, {"path": None}],
    }
    for name, bad_arguments in cases.items():
        for bad in bad_arguments:
            with pytest.raises(ArgumentsInvalid):
                registry.get(name).validate(bad)


# --- http_get: address policy ------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fd00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",
        "2002:a00:1::1",
        "64:ff9b::a00:1",
        "::7f00:1",
        "2001:db8::1",
    ],
)
def test_check_address_refuses_non_public_addresses(address: str) -> None:
    with pytest.raises(netguard.AddressRefused):
        netguard.check_address(address, allow_private=False)


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_check_address_allows_public_addresses(address: str) -> None:
    assert netguard.check_address(address, allow_private=False) == ipaddress.ip_address(address)


def test_allowing_private_addresses_still_refuses_unspecified_and_multicast() -> None:
    for address in ("127.0.0.1", "10.0.0.1", "::1", "fd00::1", "::ffff:192.168.0.1"):
        netguard.check_address(address, allow_private=True)
    for address in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "::ffff:0.0.0.0"):
        with pytest.raises(netguard.AddressRefused):
            netguard.check_address(address, allow_private=True)


async def test_resolve_host_returns_every_address_of_a_name() -> None:
    assert await netguard.resolve_host("127.0.0.1", 80) == [ipaddress.ip_address("127.0.0.1")]
    assert await netguard.resolve_host("[::1]", 80) == [ipaddress.ip_address("::1")]
    addresses = await netguard.resolve_host("localhost", 80)
    assert addresses and all(a.is_loopback for a in addresses)


# --- http_get: refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost/",
        "http://0x7f.1/",  # inet_aton spelling of 127.0.0.1
        "http://2130706433/",  # decimal spelling of 127.0.0.1
    ],
)
async def test_it_refuses_private_and_local_destinations(ctx: ToolContext, url: str) -> None:
    with pytest.raises(ToolError, match="refused to connect"):
        await call(ctx, "http_get", url=url)


async def test_without_settings_private_addresses_are_refused(tmp_path: Path) -> None:
    ctx = ToolContext(user_id=1, username="alice", job_id="j1", workspace=tmp_path, settings=None)
    with pytest.raises(ToolError, match="refused to connect"):
        await call(ctx, "http_get", url="http://127.0.0.1/")


async def test_it_refuses_a_host_when_any_of_its_addresses_is_private(
    ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def resolve(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("10.0.0.1")]

    monkeypatch.setattr(netguard, "resolve_host", resolve)
    with pytest.raises(ToolError, match="10.0.0.1"):
        await call(ctx, "http_get", url="http://mixed.test/")


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "gopher://x/", "example.com"])
async def test_it_refuses_other_schemes(ctx: ToolContext, url: str) -> None:
    with pytest.raises(ArgumentsInvalid):
        registry.get("http_get").validate({"url": url})
    with pytest.raises(ToolError, match="only http"):
        await registry.get("http_get").handler(ctx, url=url)


def test_the_http_get_schema_rejects_bad_arguments() -> None:
    tool = registry.get("http_get")
    for bad in ({}, {"url": 5}, {"url": "https://example.com", "method": "POST"}, {"url": "x" * 3000}):
        with pytest.raises(ArgumentsInvalid):
            tool.validate(bad)
    assert tool.validate({"url": "https://example.com/"}) == {"url": "https://example.com/"}


# --- http_get: against a local server ----------------------------------------------------------

BIG_BODY = b"0123456789" * 30_000  # 300 KB
EURO_BODY = "€".encode() * 50_000  # 150 KB of 3-byte characters


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read responses, not the server's log."""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        merged = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}
        merged.update(headers or {})
        for name, value in merged.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading at its cap

    def do_GET(self) -> None:
        path = self.path
        if path == "/hello":
            self._send(200, b"hello from cortex")
        elif path == "/host":
            self._send(200, self.headers["Host"].encode())
        elif path == "/big":
            self._send(200, BIG_BODY)
        elif path == "/euro":
            self._send(200, EURO_BODY)
        elif path == "/bomb":
            self._send(200, self.server.bomb, {"Content-Encoding": "gzip"})  # type: ignore[attr-defined]
        elif path == "/gzip":
            self._send(200, gzip.compress(b"compressed hello"), {"Content-Encoding": "gzip"})
        elif path == "/image":
            self._send(200, b"\x89PNG\r\n\x1a\n\x00\x00", {"Content-Type": "image/png"})
        elif path == "/missing":
            self._send(404, b"no such page")
        elif path.startswith("/redirect/"):
            left = int(path.rsplit("/", 1)[1])
            target = "/hello" if left == 0 else f"/redirect/{left - 1}"
            self._send(302, headers={"Location": target})
        elif path == "/to-absolute":
            self._send(301, headers={"Location": f"http://127.0.0.1:{self.server.server_port}/hello"})
        elif path == "/to-private":
            self._send(302, headers={"Location": "http://10.0.0.1/secret"})
        elif path == "/to-metadata":
            self._send(307, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif path == "/to-localhost":
            self._send(302, headers={"Location": f"http://[::1]:{self.server.server_port}/hello"})
        elif path == "/to-file":
            self._send(302, headers={"Location": "file:///etc/passwd"})
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200, b"late")
        else:
            self._send(404, b"unknown")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused TLS handshakes and dropped connections are expected here


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip.compress(b"\x20" * 20_000_000, compresslevel=9)


@pytest.fixture(scope="module")
def server(bomb: bytes) -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.bomb = bomb  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def open_ctx(tmp_path: Path) -> ToolContext:
    return make_ctx(tmp_path, allow_private=True)


async def test_with_private_allowed_it_fetches_from_a_local_server(open_ctx: ToolContext, server: str) -> None:
    result = await call(open_ctx, "http_get", url=f"{server}/hello")
    assert result["status"] == 200
    assert result["body"] == "hello from cortex"
    assert result["content_type"] == "text/plain; charset=utf-8"
    assert result["final_url"] == f"{server}/hello"
    assert result["truncated"] is False
    assert result["redirects"] == []
    assert result["server_ip"] == "127.0.0.1"


async def test_it_returns_error_statuses_as_results(open_ctx: ToolContext, server: str) -> None:
    result = await call(open_ctx, "http_get", url=f"{server}/missing")
    assert (result["status"], result["body"]) == (404, "no such page")


async def test_it_truncates_a_body_past_the_size_cap(open_ctx: ToolContext, server: str) -> None:
    result = await call(open_ctx, "http_get", url=f"{server}/big")
    assert result["truncated"] is True
    assert len(result["body"]) == web.MAX_BODY_BYTES
    assert result["body"] == BIG_BODY[: web.MAX_BODY_BYTES].decode()
    assert "cut off" in result["note"]


async def test_truncation_does_not_split_a_character(open_ctx: ToolContext, server: str) -> None:
    result = await call(open_ctx, "http_get", url=f"{server}/euro")
    assert result["truncated"] is True
    assert result["body"] == "€" * (web.MAX_BODY_BYTES // 3)


async def test_it_stops_inflating_a_compression_bomb_at_the_cap(open_ctx: ToolContext, server: str) -> None:
    result = await call(open_ctx, "http_get", url=f"{server}/bomb")
    assert result["truncated"] is True
    assert result["body"] == " " * web.MAX_BODY_BYTES
    plain = await call(open_ctx, "http_get", url=f"{server}/gzip")
    assert plain["body"] == "compressed hello"


async def test_it_does_not_show_binary_bodies(open_ctx: ToolContext, server: str) -> None:
    result = await call(open_ctx, "http_get", url=f"{server}/image")
    assert result["body"] is None
    assert "image/png" in result["note"]


async def test_it_follows_a_redirect_chain(open_ctx: ToolContext, server: str) -> None:
    result = await call(open_ctx, "http_get", url=f"{server}/redirect/4")
    assert result["body"] == "hello from cortex"
    assert result["final_url"] == f"{server}/hello"
    assert result["redirects"] == [f"{server}/redirect/{n}" for n in (3, 2, 1, 0)] + [f"{server}/hello"]
    absolute = await call(open_ctx, "http_get", url=f"{server}/to-absolute")
    assert absolute["body"] == "hello from cortex"


async def test_it_stops_after_five_redirects(open_ctx: ToolContext, server: str) -> None:
    with pytest.raises(ToolError, match="more than 5 redirects"):
        await call(open_ctx, "http_get", url=f"{server}/redirect/5")


async def test_it_refuses_a_redirect_to_another_scheme(open_ctx: ToolContext, server: str) -> None:
    with pytest.raises(ToolError, match="only http"):
        await call(open_ctx, "http_get", url=f"{server}/to-file")


@pytest.fixture
def only_the_test_server_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat 127.0.0.1 as if it were a public address, and nothing else private."""
    real_check = netguard.check_address

    def check(ip: Any, allow_private: bool) -> Any:
        if str(ip) == "127.0.0.1":
            return ipaddress.ip_address(ip)
        return real_check(ip, allow_private)

    monkeypatch.setattr(netguard, "check_address", check)


@pytest.mark.parametrize(
    ("path", "refused"), [("/to-private", "10.0.0.1"), ("/to-metadata", "169.254.169.254"), ("/to-localhost", "::1")]
)
async def test_it_refuses_a_redirect_from_an_allowed_server_to_a_private_address(
    ctx: ToolContext, server: str, only_the_test_server_is_public: None, path: str, refused: str
) -> None:
    # The first hop is allowed, which shows the refusal comes from checking the redirect hop.
    assert (await call(ctx, "http_get", url=f"{server}/hello"))["body"] == "hello from cortex"
    with pytest.raises(ToolError, match=f"refused to connect to {refused}"):
        await call(ctx, "http_get", url=f"{server}{path}")


async def test_it_connects_to_the_address_it_checked(
    open_ctx: ToolContext, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "rebind.test" exists in no DNS: the request can only succeed if the connection goes to
    # the address the checked resolver returned, and nothing resolves the name again.
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[Any]:
        lookups.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(netguard, "resolve_host", resolve)
    port = server.rsplit(":", 1)[1]
    result = await call(open_ctx, "http_get", url=f"http://rebind.test:{port}/host")
    assert result["body"] == f"rebind.test:{port}"
    assert result["server_ip"] == "127.0.0.1"
    assert lookups == ["rebind.test"]


async def test_it_enforces_a_total_time_limit(
    open_ctx: ToolContext, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "TOTAL_TIMEOUT", 0.3)
    started = time.monotonic()
    with pytest.raises(ToolError, match="did not finish within 0.3 seconds"):
        await call(open_ctx, "http_get", url=f"{server}/slow")
    assert time.monotonic() - started < 1.2


# --- http_get: TLS to the checked address ------------------------------------------------------


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Cortex test CA"))
        .issuer_name(name("Cortex test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("cortex.test"))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("cortex.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "leaf.pem", "key": folder / "leaf.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(paths["key"], 0o600)
    return paths


@pytest.fixture
def tls_server(tls_material: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tls_material["cert"], tls_material["key"])
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.socket = server_context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    async def resolve(host: str, port: int) -> list[Any]:
        if host in ("cortex.test", "impostor.test"):
            return [ipaddress.ip_address("127.0.0.1")]
        raise AssertionError(f"unexpected lookup of {host}")

    monkeypatch.setattr(netguard, "resolve_host", resolve)
    monkeypatch.setattr(web, "_ssl_context", lambda: ssl.create_default_context(cafile=str(tls_material["ca"])))
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


async def test_tls_verifies_the_hostname_while_connecting_to_the_checked_address(
    open_ctx: ToolContext, tls_server: int
) -> None:
    result = await call(open_ctx, "http_get", url=f"https://cortex.test:{tls_server}/host")
    assert result["body"] == f"cortex.test:{tls_server}"
    assert result["server_ip"] == "127.0.0.1"
    # Same address, but the certificate does not name this host: verification must fail.
    with pytest.raises(ToolError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        await call(open_ctx, "http_get", url=f"https://impostor.test:{tls_server}/host")
