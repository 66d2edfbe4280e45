"""Writes for callbacks and notifications: the person's callback secret and notification settings.

Every address a person types (a callback URL, a webhook, an ntfy server) is checked against the
private-address guard when it is saved, and again at every connection (see `dispatch`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils import timezone

from .. import crypto, netguard
from ..services import Invalid
from .models import CallbackSecret, Delivery, Event, NotificationSettings

SECRET_PREFIX = "whsec_"
TOPIC = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_URL = 500


def target_check(*, url: str, what: str) -> str:
    """A URL the server will POST to: http(s), and public unless the site allows private addresses."""
    url = (url or "").strip()
    if len(url) > MAX_URL:
        raise Invalid(f"{what} is longer than {MAX_URL} characters")
    if not re.match(r"^https?://[^\s/?#]+", url) or any(ch.isspace() for ch in url):
        raise Invalid(f"{what} must be an http:// or https:// address")
    try:
        netguard.check_endpoint_blocking(url)
    except netguard.Unreachable as error:
        raise Invalid(f"{what} cannot be used: {error}") from None
    return url


def has_callback_secret(*, user: AbstractBaseUser) -> bool:
    return CallbackSecret.objects.filter(user=user).exists()


def callback_secret_rotate(*, user: AbstractBaseUser) -> str:
    """A new signing secret for the person's callbacks and webhook notifications, replacing any
    old one at once. The raw value is returned this once; only its encrypted form is stored."""
    raw = SECRET_PREFIX + secrets.token_urlsafe(32)
    CallbackSecret.objects.update_or_create(
        user=user, defaults={"secret_encrypted": crypto.encrypt(raw), "prefix": raw[:10]})
    return raw


def notifications_update(*, user: AbstractBaseUser, events: Iterable[str], email_enabled: bool = False,
                         email_address: str = "", ntfy_enabled: bool = False, ntfy_server: str = "",
                         ntfy_topic: str = "", ntfy_token: str | None = None, webhook_enabled: bool = False,
                         webhook_url: str = "", browser_enabled: bool = False) -> NotificationSettings:
    """Save the person's channels and the events that use them. `ntfy_token=None` keeps the
    stored token; "" removes it. A channel that is switched on must be complete."""
    from .dispatch import email_configured

    events = sorted(set(events))
    unknown = [event for event in events if event not in Event.values]
    if unknown:
        raise Invalid(f"unknown events: {', '.join(unknown)}")
    email_address, ntfy_server, ntfy_topic = (email_address or "").strip(), (ntfy_server or "").strip(), \
        (ntfy_topic or "").strip()
    webhook_url = (webhook_url or "").strip()
    if email_enabled:
        if not email_configured():
            raise Invalid("e-mail is not set up on this site (the operator sets CORTEX_EMAIL_URL)")
        try:
            validate_email(email_address)
        except ValidationError:
            raise Invalid("enter the e-mail address to notify") from None
    if ntfy_server or ntfy_enabled:
        ntfy_server = target_check(url=ntfy_server, what="the ntfy server")
    if ntfy_topic and not TOPIC.fullmatch(ntfy_topic):
        raise Invalid("an ntfy topic is up to 64 letters, digits, - or _")
    if ntfy_enabled and not ntfy_topic:
        raise Invalid("enter the ntfy topic to publish to")
    if webhook_url or webhook_enabled:
        webhook_url = target_check(url=webhook_url, what="the webhook URL")
        if webhook_enabled and not has_callback_secret(user=user):
            raise Invalid("a webhook is signed with your callback secret: create one under Settings → Callbacks first")
    chosen, _ = NotificationSettings.objects.get_or_create(user=user)
    chosen.events = events
    chosen.email_enabled, chosen.email_address = email_enabled, email_address
    chosen.ntfy_enabled, chosen.ntfy_server, chosen.ntfy_topic = ntfy_enabled, ntfy_server, ntfy_topic
    if ntfy_token is not None:
        chosen.ntfy_token_encrypted = crypto.encrypt(ntfy_token.strip()[:200])
    chosen.webhook_enabled, chosen.webhook_url = webhook_enabled, webhook_url
    chosen.browser_enabled = browser_enabled
    chosen.save()
    return chosen


def public_url_is_set() -> bool:
    """Links in notifications point at CORTEX_PUBLIC_URL; its default only works on this machine."""
    return settings.CORTEX_PUBLIC_URL != "http://127.0.0.1:8000"


def deliveries_retry(*, ids: Iterable[str]) -> int:
    """Send given-up deliveries again, from the first attempt (an operator's decision, in admin)."""
    return Delivery.objects.filter(pk__in=list(ids), state=Delivery.State.GAVE_UP).update(
        state=Delivery.State.PENDING, attempts=0, next_attempt_at=timezone.now(), held_by="", held_until=None)
