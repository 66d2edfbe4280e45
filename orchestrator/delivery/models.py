from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Event(models.TextChoices):
    """What happened to a job that someone may want to hear about."""

    AWAITING_CONFIRMATION = "job.awaiting_confirmation", "a confirmation is waiting"
    FAILED = "job.failed", "a job failed"
    FINISHED = "job.finished", "a job finished"


class CallbackSecret(models.Model):
    """The key a person's callbacks and webhook notifications are signed with (encrypted at rest)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="callback_secret")
    secret_encrypted = models.TextField()
    prefix = models.CharField(max_length=16)  # shown, to tell which secret is in use
    rotated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"callback secret of {self.user} ({self.prefix}…)"


class NotificationSettings(models.Model):
    """A person's notification channels and the events that use them. Absent: no notifications."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="notification_settings")
    events = models.JSONField(default=list, blank=True)  # Event values
    email_enabled = models.BooleanField(default=False)
    email_address = models.EmailField(blank=True)
    ntfy_enabled = models.BooleanField(default=False)
    ntfy_server = models.URLField(max_length=500, blank=True)
    ntfy_topic = models.CharField(max_length=64, blank=True)
    ntfy_token_encrypted = models.TextField(blank=True)
    webhook_enabled = models.BooleanField(default=False)
    webhook_url = models.URLField(max_length=500, blank=True)
    browser_enabled = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "notification settings"

    def __str__(self) -> str:
        return f"notifications of {self.user}"


class Delivery(models.Model):
    """One message to send (an outbox row): a callback or a notification on one channel."""

    class Channel(models.TextChoices):
        CALLBACK = "callback"
        EMAIL = "email", "e-mail"
        NTFY = "ntfy"
        WEBHOOK = "webhook"

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        GAVE_UP = "gave_up", "given up"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)  # X-Cortex-Delivery
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="deliveries")
    job = models.ForeignKey("orchestrator.Job", on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    event = models.CharField(max_length=32, choices=Event.choices)
    # Where it goes: a URL, an e-mail address, or an ntfy server and topic. Secrets (the ntfy
    # token, the signing key) are read from the person's settings when it is sent.
    target = models.CharField(max_length=600)
    subject = models.CharField(max_length=200, blank=True)
    body = models.TextField()  # exactly what is sent (and, for callbacks and webhooks, signed)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    held_by = models.CharField(max_length=100, blank=True)
    held_until = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=Q(state="pending"), name="delivery_due"),
            models.Index(fields=["job", "created_at"], name="delivery_job"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.event} for {self.job_id} ({self.state})"


class ConfirmationDeadline(models.Model):
    """When a waiting tool call expires. The periodic tick claims a due row by `fired_at` and denies
    the call if it still waits; a decision that came first leaves nothing to deny."""

    call = models.OneToOneField("orchestrator.ToolCall", on_delete=models.CASCADE, related_name="deadline")
    job = models.ForeignKey("orchestrator.Job", on_delete=models.CASCADE, related_name="+")
    ttl_seconds = models.PositiveIntegerField()
    expires_at = models.DateTimeField()
    fired_at = models.DateTimeField(null=True, blank=True)
    expired = models.BooleanField(default=False)  # the call was still waiting: it was denied

    class Meta:
        ordering = ["expires_at"]
        indexes = [models.Index(fields=["expires_at"], condition=Q(fired_at=None), name="deadline_due")]

    def __str__(self) -> str:
        return f"{self.call} expires at {self.expires_at:%Y-%m-%d %H:%M:%S}"
