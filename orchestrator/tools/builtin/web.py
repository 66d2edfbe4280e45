"""`http_get`: fetch a public web page for the model, without becoming an SSRF proxy.

Every TCP connection is opened by `netguard.checked_transport`, which connects only to addresses
it checked itself (see there), so a DNS answer that changes between check and connect cannot
slip a private address in. Redirects are followed by hand, one request per hop, so every hop passes through that backend.
"""

from __future__ import annotations

import asyncio
import codecs
import ssl
import zlib
from typing import Any

import httpx

from ... import netguard
from ..registry import ToolContext, ToolError, tool

MAX_BODY_BYTES = 100_000  # decoded bytes returned to the model
MAX_RAW_BYTES = 1_000_000  # bytes read off the wire, compressed or not
MAX_REDIRECTS = 5
TOTAL_TIMEOUT = 15.0  # below the tool timeout, so the model gets a clear message, not a kill
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "Cortex-http_get/1.0"

_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/x-www-form-urlencoded",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/x-ndjson",
        "application/csv",
        "application/rss+xml",
        "application/atom+xml",
    }
)


def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


# --- body -------------------------------------------------------------------------------------


class _Decompressor:
    """Undo Content-Encoding with a bound on the output, so a small gzip bomb stays small."""

    def __init__(self, header: str) -> None:
        codings = [c.strip().lower() for c in header.split(",") if c.strip() and c.strip().lower() != "identity"]
        self._coding = codings[0] if len(codings) == 1 else None
        self._started = False
        if not codings:
            self._inflater: Any = None
        elif self._coding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self._coding == "deflate":
            self._inflater = zlib.decompressobj()
        else:
            raise ToolError(f"the server sent an unsupported content encoding: {header}")

    def feed(self, data: bytes, limit: int) -> bytes:
        if self._inflater is None:
            return data
        try:
            out = self._inflater.decompress(data, limit)
        except zlib.error:
            if self._coding == "deflate" and not self._started:
                # Some servers send raw deflate without the zlib header the standard asks for.
                self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                self._started = True
                return self.feed(data, limit)
            raise ToolError(f"the response body is not valid {self._coding} data") from None
        self._started = True
        return out


def _is_text(mime: str) -> bool:
    return mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith(("+json", "+xml"))


def _charset(response: httpx.Response) -> str:
    name = response.charset_encoding or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


async def _read_body(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Read at most `limit` decoded bytes; report whether more was there."""
    decompressor = _Decompressor(response.headers.get("content-encoding", ""))
    body = bytearray()
    raw = 0
    async for chunk in response.aiter_raw():
        raw += len(chunk)
        body += decompressor.feed(chunk, limit + 1 - len(body))
        if len(body) > limit or raw > MAX_RAW_BYTES:
            return bytes(body[:limit]), True
    return bytes(body), False


# --- the tool ---------------------------------------------------------------------------------


def _parse_url(text: str) -> httpx.URL:
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ToolError(f"not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ToolError(f"only http:// and https:// URLs can be fetched, not {text[:100]!r}")
    if not url.host:
        raise ToolError("the URL has no host")
    if url.userinfo:
        raise ToolError("URLs with credentials (user:password@) are not accepted")
    return url


def _check_url(args: dict[str, Any], ctx: ToolContext) -> None:
    """The URL's form (scheme, host, no credentials), as `fetch` checks it; addresses are checked
    when the tool runs, as they may change."""
    _parse_url(args.get("url", ""))


def _peer(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    address = stream.get_extra_info("server_addr") if stream is not None else None
    return str(address[0]) if address else None


async def fetch(url: str, *, allow_private: bool, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """GET `url`, following up to MAX_REDIRECTS redirects, each hop address-checked."""
    current = _parse_url(url)
    redirects: list[str] = []
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate", "Accept": "*/*"}
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
    async with httpx.AsyncClient(
        transport=netguard.checked_transport(allow_private, ssl_context=_ssl_context()), follow_redirects=False, trust_env=False, timeout=timeout
    ) as client:
        while True:
            async with client.stream("GET", current, headers=headers) as response:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    if len(redirects) >= MAX_REDIRECTS:
                        raise ToolError(f"more than {MAX_REDIRECTS} redirects; stopped at {current}")
                    try:
                        current = _parse_url(str(response.url.join(location)))
                    except httpx.InvalidURL as exc:
                        raise ToolError(f"the server redirected to an invalid URL: {exc}") from None
                    redirects.append(str(current))
                    continue
                return await _describe(response, url, redirects, limit)


async def _describe(response: httpx.Response, url: str, redirects: list[str], limit: int) -> dict[str, Any]:
    content_type = response.headers.get("content-type", "")
    mime = content_type.split(";", 1)[0].strip().lower()
    result: dict[str, Any] = {
        "url": url,
        "final_url": str(response.url),
        "status": response.status_code,
        "reason": response.reason_phrase,
        "content_type": content_type or None,
        "redirects": redirects,
        "server_ip": _peer(response),
    }
    if mime and not _is_text(mime):
        result.update(body=None, truncated=False, note=f"binary content ({mime}) is not shown")
        return result
    data, truncated = await _read_body(response, limit)
    if not mime and b"\x00" in data:
        result.update(body=None, truncated=False, note="binary content is not shown")
        return result
    # Held back when truncated: a multi-byte character cut in half at the limit.
    text = codecs.getincrementaldecoder(_charset(response))(errors="replace").decode(data, final=not truncated)
    result.update(body=text, truncated=truncated)
    if truncated:
        result["note"] = f"the body was cut off after {limit} bytes"
    return result


@tool(
    name="http_get",
    category="web",
    description=(
        "Fetch a public http(s) URL with GET and return status, content type, final URL and the body "
        f"as text (first {MAX_BODY_BYTES // 1000} KB; truncated=true when cut). Follows up to "
        f"{MAX_REDIRECTS} redirects. Private and local network addresses are refused; binary bodies are not shown."
    ),
    risk="medium",
    idempotent=True,
    timeout=20.0,
    check=_check_url,
    parameters={
        "type": "object",
        "properties": {
            "url": {
                "type": "string",
                "minLength": 1,
                "maxLength": 2048,
                "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                "description": "Absolute http:// or https:// URL.",
            }
        },
        "required": ["url"],
        "additionalProperties": False,
    },
)
async def http_get(ctx: ToolContext, *, url: str) -> dict[str, Any]:
    allow_private = bool(getattr(ctx.settings, "CORTEX_HTTP_ALLOW_PRIVATE", False))
    try:
        async with asyncio.timeout(TOTAL_TIMEOUT):
            return await fetch(url, allow_private=allow_private)
    except netguard.Unreachable as error:
        raise ToolError(str(error)) from None
    except TimeoutError:
        raise ToolError(f"the request did not finish within {TOTAL_TIMEOUT:g} seconds") from None
    except httpx.TimeoutException:
        raise ToolError("the server did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ToolError(f"the request failed: {type(exc).__name__}: {exc}") from None
