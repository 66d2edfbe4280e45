"""Tool servers people add, the tools found on them, and the audit of changes to both."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.db import models

from .. import crypto
from . import risk as risks


class ToolServer(models.Model):
    """An MCP server whose tools Cortex offers. Site-wide when `owner` is empty (staff add those,
    and only those may be stdio: a command run on the host); else one person's own HTTP server."""

    class Transport(models.TextChoices):
        STDIO = "stdio", "stdio (a command)"
        HTTP = "http", "Streamable HTTP (a URL)"

    name = models.CharField(max_length=40, unique=True,
                            help_text="Letters, digits, - and _, starting with a letter; the tools are offered as <name>__<tool>.")
    transport = models.CharField(max_length=8, choices=Transport.choices)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="tool_servers")
    command = models.CharField(max_length=500, blank=True)
    args = models.JSONField(default=list, blank=True)
    env_encrypted = models.TextField(blank=True)  # a JSON object, encrypted (crypto.encrypt)
    url = models.URLField(max_length=500, blank=True)
    headers_encrypted = models.TextField(blank=True)  # a JSON object, encrypted
    # Added by staff (or the command line): its URL may point at a private address.
    trusted = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    timeout_seconds = models.FloatField(default=60.0)
    last_error = models.TextField(blank=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_site_wide(self) -> bool:
        return self.owner_id is None

    def secrets(self, field: str) -> dict[str, str]:
        """The decrypted environment (`env`) or headers (`headers`); raises crypto.SecretUnreadable."""
        stored = getattr(self, f"{field}_encrypted")
        return json.loads(crypto.decrypt(stored)) if stored else {}

    def secret_names(self, field: str) -> list[str]:
        """The names of the stored variables or headers, never their values (empty if unreadable)."""
        try:
            return sorted(self.secrets(field))
        except (crypto.SecretUnreadable, ValueError):
            return []

    @property
    def target(self) -> str:
        """What it runs or reaches, as a page shows it (no secrets: those live in env and headers)."""
        if self.transport == self.Transport.STDIO:
            return " ".join([self.command, *self.args])
        return self.url


class ServerTool(models.Model):
    """A tool as its server last described it, and the name the model sees it by."""

    server = models.ForeignKey(ToolServer, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=200)  # the server's own name for it
    exposed_name = models.CharField(max_length=64, unique=True)
    title = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    input_schema = models.JSONField(default=dict)
    annotations = models.JSONField(null=True, blank=True)  # None: the server gave none
    risk_override = models.CharField(max_length=8, blank=True,
                                     choices=[("", "as annotated"), ("low", "low"), ("medium", "medium"),
                                              ("high", "high")])
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["server__name", "name"]
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="mcp_tool_unique_per_server")]

    def __str__(self) -> str:
        return self.exposed_name

    @property
    def derived(self) -> tuple[str, str]:
        return risks.derived_risk(self.annotations)

    @property
    def risk(self) -> tuple[str, str]:
        """(risk, where it came from): the override, else the annotation or the spec's default."""
        return risks.effective_risk(self.annotations, self.risk_override)

    @property
    def annotation_words(self) -> list[str]:
        """The hints the server gave, in words ("read-only", "not destructive", ...)."""
        words = {"readOnlyHint": ("read-only", "not read-only"), "destructiveHint": ("destructive", "not destructive"),
                 "idempotentHint": ("idempotent", "not idempotent"), "openWorldHint": ("open world", "closed world")}
        return [words[hint][0 if self.annotations[hint] else 1] for hint in words
                if isinstance((self.annotations or {}).get(hint), bool)]


class Catalog(models.Model):
    """One row whose stamp changes with every change to the servers or their tools, so each
    process sees at the cost of one small read whether its copy of the tools is still current."""

    stamp = models.CharField(max_length=32, default="")

    @classmethod
    def touch(cls) -> None:
        cls.objects.update_or_create(pk=1, defaults={"stamp": uuid.uuid4().hex})


class ServerChange(models.Model):
    """The audit trail: who added, changed, refreshed or removed which server or tool, and when."""

    server_name = models.CharField(max_length=40)
    action = models.CharField(max_length=40)
    detail = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_label = models.CharField(max_length=150)  # kept when the account is gone; "command line" for manage.py
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.server_name} by {self.actor_label}"


def change_detail(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value not in (None, "", [], {})}
