"""Every write to the tool servers and their tools. Each change is recorded in the audit trail
(`ServerChange`) and moves the catalogue's stamp, in the same transaction, so every process sees
it at its next look.

`by` is the person acting; None is the operator on the command line (`manage.py mcp`), who may do
what staff may.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import crypto, netguard
from ..services import Conflict, Forbidden, Invalid, NotFound
from ..tools.registry import RISKS, registry
from . import client, selectors
from . import risk as risks
from .models import Catalog, ServerChange, ServerTool, ToolServer, change_detail
from .source import mcp_tools, server_config

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")  # a tool name some providers accept must start so
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,100}")


def _actor(by: AbstractBaseUser | None) -> tuple[AbstractBaseUser | None, str]:
    return by, (by.get_username() if by is not None else "command line")


def _record(server_name: str, action: str, by: AbstractBaseUser | None, **detail: Any) -> None:
    actor, label = _actor(by)
    ServerChange.objects.create(server_name=server_name, action=action, actor=actor, actor_label=label,
                                detail=change_detail(**detail))
    Catalog.touch()


def _is_staff(by: AbstractBaseUser | None) -> bool:
    return by is None or bool(getattr(by, "is_staff", False))


def _may_change(by: AbstractBaseUser | None, server: ToolServer) -> None:
    if _is_staff(by):
        return
    if server.owner_id is None:
        raise Forbidden("only staff may change site-wide tool servers")
    if server.owner_id != by.pk:
        raise NotFound("no such tool server")


def _clean_pairs(values: dict[str, str] | None, pattern: re.Pattern[str], what: str) -> dict[str, str]:
    cleaned = {}
    for key, value in (values or {}).items():
        key = str(key).strip()
        if not pattern.fullmatch(key):
            raise Invalid(f"{what} name {key[:60]!r} is not valid")
        if any(ch in str(value) for ch in "\r\n\x00"):
            raise Invalid(f"{what} {key} must be on one line")
        cleaned[key] = str(value)
    return cleaned


def parse_header(text: str) -> tuple[str, str]:
    """`"Name: value"` (as typed on the command line or in a form) as a pair, or Invalid."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise Invalid(f"a header is written \"Name: value\", not {text[:60]!r}")
    return name.strip(), value.strip()


def parse_env(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise Invalid(f"an environment variable is written NAME=value, not {text[:60]!r}")
    return name.strip(), value


def url_check(*, url: str, trusted: bool) -> None:
    """A server URL someone typed: http(s), and not private unless staff added it or the site allows it.
    (Checked again at every connection: a name may resolve elsewhere tomorrow.)"""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as error:
        raise Invalid(f"the server URL is not valid: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("the server URL must be an http:// or https:// address")
    if trusted or settings.CORTEX_HTTP_ALLOW_PRIVATE:
        return
    try:
        netguard.check_endpoint_blocking(url)
    except netguard.Unreachable as error:
        raise Invalid(f"the server URL is not allowed: {error}") from None


def secrets_json(values: dict[str, str]) -> str:
    """Headers or an environment, encrypted at rest as a JSON object (see `ToolServer.secrets`)."""
    return crypto.encrypt(json.dumps(values)) if values else ""


def listing_schema_ok(schema: Any) -> bool:
    """An input schema the registry can check arguments against."""
    if not isinstance(schema, dict):
        return False
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError:
        return False
    return True


@transaction.atomic
def server_add(*, by: AbstractBaseUser | None, name: str, site_wide: bool, command: str = "",
               args: list[str] | None = None, env: dict[str, str] | None = None, url: str = "",
               headers: dict[str, str] | None = None, timeout: float | None = None) -> ToolServer:
    """Add a server: stdio (`command`, `args`, `env`) for staff only, site-wide; or streamable HTTP
    (`url`, `headers`), site-wide for staff or a person's own. Its tools are found by a refresh."""
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        raise Invalid("the name must be 1 to 40 letters, digits, - or _, starting with a letter")
    if bool(command) == bool(url):
        raise Invalid("give either a command (a stdio server) or a URL (an HTTP server)")
    if site_wide and not _is_staff(by):
        raise Forbidden("only staff may add site-wide tool servers")
    if command and not _is_staff(by):
        raise Forbidden("only staff may add servers that run a command on the host")
    if timeout is not None and not (0 < timeout <= 3600):
        raise Invalid("the timeout must be between 0 and 3600 seconds")
    trusted = _is_staff(by)
    if url:
        url = url.strip()
        if len(url) > 500:
            raise Invalid("the URL is longer than 500 characters")
        url_check(url=url, trusted=trusted)
    if ToolServer.objects.filter(name=name).exists():
        raise Conflict(f"a tool server named {name!r} exists already")
    server = ToolServer(
        name=name, transport=ToolServer.Transport.STDIO if command else ToolServer.Transport.HTTP,
        owner=None if site_wide or by is None else by, command=command.strip(), args=[str(a) for a in args or []],
        env_encrypted=secrets_json(_clean_pairs(env, ENV_NAME, "environment variable")),
        url=url, headers_encrypted=secrets_json(_clean_pairs(headers, HEADER_NAME, "header")), trusted=trusted)
    if timeout is not None:
        server.timeout_seconds = timeout
    try:
        with transaction.atomic():
            server.save()
    except IntegrityError:
        raise Conflict(f"a tool server named {name!r} exists already") from None
    _record(name, "added", by, transport=server.transport, target=server.target,
            env=sorted((env or {})), headers=sorted((headers or {})), site_wide=server.is_site_wide)
    return server


def server_remove(*, by: AbstractBaseUser | None, server_id: int) -> None:
    with transaction.atomic():
        server = _server(by, server_id)
        _may_change(by, server)
        name = server.name
        server.delete()
        _record(name, "removed", by)


def server_set_enabled(*, by: AbstractBaseUser | None, server_id: int, enabled: bool) -> ToolServer:
    with transaction.atomic():
        server = _server(by, server_id)
        _may_change(by, server)
        server.enabled = enabled
        server.save(update_fields=["enabled", "updated_at"])
        _record(server.name, "enabled" if enabled else "disabled", by)
    return server


def server_refresh(*, by: AbstractBaseUser | None, server_id: int) -> tuple[ToolServer, str | None]:
    """Connect, list the tools, store them; returns the server and what went wrong (None if it
    worked). A server that cannot be reached keeps the tools it had (they answer with an error
    until it is back) and its error is shown."""
    server = _server(by, server_id)
    _may_change(by, server)
    try:
        config = server_config(server)
    except (crypto.SecretUnreadable, ValueError) as error:
        return _refresh_failed(server, f"its stored secrets cannot be read ({error}); add it again", by)
    try:
        listing = async_to_sync(client.discover)(config)
    except client.ServerUnavailable as error:
        return _refresh_failed(server, str(error), by)
    server_tools_store(server_id=server.pk, listing=listing, by=by)
    server.refresh_from_db()
    return server, None


def server_test(*, by: AbstractBaseUser | None, server_id: int) -> tuple[bool, str]:
    """Connect and list the tools without storing anything: (worked, what happened)."""
    server = _server(by, server_id)
    _may_change(by, server)
    try:
        listing = async_to_sync(client.discover)(server_config(server))
    except (crypto.SecretUnreadable, ValueError) as error:
        return False, f"its stored secrets cannot be read: {error}"
    except client.ServerUnavailable as error:
        return False, str(error)
    return True, f"connected; it offers {len(listing)} tool{'s' if len(listing) != 1 else ''}"


def _refresh_failed(server: ToolServer, error: str, by: AbstractBaseUser | None) -> tuple[ToolServer, str]:
    with transaction.atomic():
        ToolServer.objects.filter(pk=server.pk).update(last_error=error[:2000], updated_at=timezone.now())
        _record(server.name, "refresh failed", by, error=error[:500])
    server.refresh_from_db()
    return server, error


def server_tools_store(*, server_id: int, listing: list[dict[str, Any]], by: AbstractBaseUser | None = None) -> None:
    """Store what the server lists now: new tools get a name, changed ones are updated, those it no
    longer lists are removed (and no longer offered). Overrides of the tools that stay are kept."""
    with transaction.atomic():
        server = ToolServer.objects.select_for_update().filter(pk=server_id).first()
        if server is None:
            return
        existing = {row.name: row for row in server.tools.all()}
        taken = set(registry.names()) - {row.exposed_name for row in existing.values()}
        taken |= set(ServerTool.objects.exclude(server=server).values_list("exposed_name", flat=True))
        seen, added, skipped = set(), [], []
        for item in listing:
            name = str(item.get("name") or "")
            if not name or name in seen:
                continue
            if not listing_schema_ok(item.get("input_schema")):
                skipped.append(name)
                continue
            seen.add(name)
            row = existing.get(name)
            if row is None:
                row = ServerTool(server=server, name=name[:200],
                                 exposed_name=risks.exposed_name(server.name, name, taken))
                added.append(row.exposed_name)
            taken.add(row.exposed_name)
            row.title = str(item.get("title") or "")[:200]
            row.description = str(item.get("description") or "")
            row.input_schema = item["input_schema"]
            row.annotations = item.get("annotations")
            row.save()
        gone = [row for key, row in existing.items() if key not in seen]
        ServerTool.objects.filter(pk__in=[row.pk for row in gone]).delete()
        server.refreshed_at = timezone.now()
        server.last_error = (f"tools with an input schema that is not valid were left out: {', '.join(skipped)}"
                             if skipped else "")
        server.save(update_fields=["refreshed_at", "last_error", "updated_at"])
        _record(server.name, "tools refreshed", by, added=added, removed=[row.exposed_name for row in gone],
                count=len(seen))
    mcp_tools.forget()


def tool_risk_override(*, by: AbstractBaseUser | None, tool_id: int, risk: str) -> ServerTool:
    """Set (or with "" clear) a tool's risk, instead of the one its annotations give. Staff only."""
    if not _is_staff(by):
        raise Forbidden("only staff may override the risk of a tool")
    if risk not in ("", *RISKS):
        raise Invalid(f"risk must be one of {', '.join(RISKS)} (or empty for the annotation's)")
    with transaction.atomic():
        row = ServerTool.objects.select_related("server").filter(pk=tool_id).first()
        if row is None:
            raise NotFound("no such tool")
        before = row.risk_override
        row.risk_override = risk
        row.save(update_fields=["risk_override", "updated_at"])
        _record(row.server.name, "risk overridden" if risk else "risk override cleared", by,
                tool=row.exposed_name, before=before, after=risk)
    return row


def _server(by: AbstractBaseUser | None, server_id: Any) -> ToolServer:
    """The server by id: any for the command line, else one `by` may see (404 otherwise)."""
    if by is None:
        server = ToolServer.objects.filter(pk=server_id).first() if str(server_id).isdigit() else None
        if server is None:
            raise NotFound("no such tool server")
        return server
    return selectors.server_for_user(by, server_id)
