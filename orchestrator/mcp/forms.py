"""The forms of the Tool servers page."""

from __future__ import annotations

import shlex
from typing import Any

from django import forms

from . import services


class ServerForm(forms.Form):
    """A new server: an HTTP URL (anyone, for themselves), or a command (staff, site-wide)."""

    name = forms.CharField(max_length=40, help_text="Letters, digits, - and _, starting with a letter. Its tools are offered as name__tool.")
    url = forms.CharField(max_length=500, required=False, label="URL",
                          help_text="A streamable HTTP MCP server, e.g. https://ha.example.org/api/mcp")
    headers = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "autocomplete": "off"}),
                              label="Headers", help_text="One “Name: value” a line, e.g. Authorization: Bearer …. "
                                                         "Stored encrypted; never shown again.")
    command = forms.CharField(max_length=1000, required=False, label="Command",
                              help_text="Staff only: a stdio server to run on this host, with its arguments, "
                                        "e.g. uvx mcp-server-time")
    env = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "autocomplete": "off"}),
                          label="Environment", help_text="For a command: one NAME=value a line. Stored encrypted; "
                                                         "never shown again.")
    site_wide = forms.BooleanField(required=False, label="For everyone (site-wide)",
                                   help_text="Staff only. Otherwise the server and its tools are yours alone.")
    timeout = forms.FloatField(required=False, min_value=1, max_value=3600, label="Timeout (seconds)",
                               help_text="How long one call may take (60 if empty).")

    def __init__(self, *args: Any, staff: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.staff = staff
        if not staff:
            for name in ("command", "env", "site_wide"):
                del self.fields[name]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        url, command = data.get("url", "").strip(), data.get("command", "").strip()
        if bool(url) == bool(command):
            raise forms.ValidationError("Give either a URL (an HTTP server) or a command (a stdio server).")
        try:
            data["header_pairs"] = dict(services.parse_header(line) for line in _lines(data.get("headers", "")))
            data["env_pairs"] = dict(services.parse_env(line) for line in _lines(data.get("env", "")))
            data["argv"] = shlex.split(command) if command else []
        except services.Invalid as error:
            raise forms.ValidationError(error.message) from None
        except ValueError as error:
            raise forms.ValidationError(f"The command cannot be read: {error}") from None
        if data["header_pairs"] and not url:
            self.add_error("headers", "Headers are for HTTP servers.")
        if data["env_pairs"] and not command:
            self.add_error("env", "An environment is for commands.")
        return data


def _lines(text: str) -> list[str]:
    return [line for line in (text or "").splitlines() if line.strip()]


class RiskOverrideForm(forms.Form):
    risk = forms.ChoiceField(choices=[("", "as annotated"), ("low", "low"), ("medium", "medium"), ("high", "high")],
                             required=False)
