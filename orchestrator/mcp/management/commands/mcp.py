"""`manage.py mcp`: add, list, refresh and remove MCP tool servers from the command line.

    manage.py mcp add NAME -- COMMAND [ARGS...]          a stdio server (its tools found at once)
    manage.py mcp add NAME --url URL [--header "Name: value"]...
    manage.py mcp list                                    one line per tool: name, risk, where the risk came from
    manage.py mcp refresh [NAME]
    manage.py mcp remove NAME

Servers added here are site-wide, as if staff added them.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator.services import ServiceError

from ... import services
from ...models import ToolServer


class Command(BaseCommand):
    help = "Manage MCP tool servers: add, list, refresh, remove."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True)
        add = commands.add_parser("add", help="add a server: `add NAME -- COMMAND [ARGS...]` or `add NAME --url URL`")
        add.add_argument("name")
        add.add_argument("--url", default="", help="a streamable HTTP server's URL")
        add.add_argument("--header", action="append", default=[], metavar='"Name: value"',
                         help="an HTTP header to send (repeatable), e.g. an Authorization bearer token")
        add.add_argument("--env", action="append", default=[], metavar="NAME=value",
                         help="an environment variable for a stdio server (repeatable)")
        add.add_argument("--timeout", type=float, default=None, help="seconds a call may take (default 60)")
        add.add_argument("--no-refresh", action="store_true", help="do not connect to find its tools now")
        add.add_argument("command", nargs="*", help="after --: the command and its arguments")
        commands.add_parser("list", help="one line per tool: its name, risk and where the risk came from")
        refresh = commands.add_parser("refresh", help="find the tools of one server again, or of every server")
        refresh.add_argument("name", nargs="?")
        remove = commands.add_parser("remove", help="remove a server and its tools")
        remove.add_argument("name")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            getattr(self, f"_{action}")(**options)
        except ServiceError as error:
            raise CommandError(error.message) from None

    def _add(self, *, name: str, url: str, header: list[str], env: list[str], timeout: float | None,
             no_refresh: bool, command: list[str], **_: Any) -> None:
        if command and command[0] == "--":
            command = command[1:]
        if command and url:
            raise CommandError("give either a command (after --) or --url, not both")
        if not command and not url:
            raise CommandError("give the server's command after -- (a stdio server) or its --url (an HTTP server)")
        if header and not url:
            raise CommandError("--header is for HTTP servers (--url)")
        if env and not command:
            raise CommandError("--env is for stdio servers (a command after --)")
        headers = dict(services.parse_header(text) for text in header)
        environment = dict(services.parse_env(text) for text in env)
        server = services.server_add(by=None, name=name, site_wide=True, command=command[0] if command else "",
                                     args=command[1:], env=environment, url=url, headers=headers, timeout=timeout)
        self.stdout.write(f"Added {server.name} ({server.get_transport_display()}).")
        if not no_refresh and not self._refresh_one(server):
            raise CommandError(f"{server.name} was added, but its tools could not be listed; "
                               f"`manage.py mcp refresh {server.name}` tries again")

    def _list(self, **_: Any) -> None:
        servers = ToolServer.objects.prefetch_related("tools").order_by("name")
        if not servers:
            self.stdout.write("No tool servers. Add one with `manage.py mcp add NAME -- COMMAND` or `--url URL`.")
        for server in servers:
            for row in server.tools.all():
                risk, source = row.risk
                state = "" if server.enabled else "  (server disabled)"
                self.stdout.write(f"{row.exposed_name}  {risk}  {source}{state}")
            if not server.tools.all():
                self.stderr.write(f"{server.name}: no tools found yet"
                                  + (f" ({server.last_error})" if server.last_error else ""))

    def _refresh(self, *, name: str | None, **_: Any) -> None:
        servers = ToolServer.objects.order_by("name")
        if name:
            servers = servers.filter(name=name)
            if not servers:
                raise CommandError(f"no tool server named {name!r}")
        failed = [server.name for server in servers if not self._refresh_one(server)]
        if failed:
            raise CommandError(f"could not refresh: {', '.join(failed)}")

    def _refresh_one(self, server: ToolServer) -> bool:
        server, problem = services.server_refresh(by=None, server_id=server.pk)
        if problem is not None:
            self.stderr.write(f"{server.name}: {problem}")
            return False
        count = server.tools.count()
        self.stdout.write(f"{server.name}: {count} tool{'s' if count != 1 else ''}")
        if server.last_error:
            self.stderr.write(f"{server.name}: {server.last_error}")
        return True

    def _remove(self, *, name: str, **_: Any) -> None:
        server = ToolServer.objects.filter(name=name).first()
        if server is None:
            raise CommandError(f"no tool server named {name!r}")
        services.server_remove(by=None, server_id=server.pk)
        self.stdout.write(f"Removed {name}.")
