"""Sending the outbox: claiming due deliveries under a lease, sending each, and recording how it went.

A delivery is claimed like a job: its row gets the executor's id and a lease, in a transaction
that skips rows another executor holds (SKIP LOCKED on PostgreSQL; SQLite's IMMEDIATE transactions
take one writer at a time), so however many executors run, one sends it at a time. The outcome is
recorded only while the lease is still the sender's. A failed attempt is tried again after a
backoff that starts at CORTEX_DELIVERY_BACKOFF_SECONDS and doubles up to
CORTEX_DELIVERY_BACKOFF_MAX_SECONDS; after CORTEX_DELIVERY_ATTEMPTS attempts it is given up and
marked so. A sender that dies leaves its lease to run out, and the delivery is sent again: at least
once, and receivers tell repeats apart by the delivery id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from email.header import Header
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.core.mail import EmailMessage, mailers
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import crypto, netguard
from .models import CallbackSecret, Delivery, NotificationSettings

logger = logging.getLogger(__name__)

USER_AGENT = "Cortex-Delivery/1"


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str = ""
    status: int | None = None


class CannotSend(Exception):
    """A delivery that no retry can help (its signing key is gone, say): given up at once."""


def lease_seconds() -> float:
    # Long enough for a send to time out and be recorded; short enough to retry soon after a crash.
    return max(30.0, settings.CORTEX_DELIVERY_TIMEOUT * 4)


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt (1 and up)."""
    seconds = settings.CORTEX_DELIVERY_BACKOFF_SECONDS * 2 ** min(attempts - 1, 40)
    return timedelta(seconds=min(seconds, settings.CORTEX_DELIVERY_BACKOFF_MAX_SECONDS))


def _due(now: datetime) -> Q:
    return (Q(state=Delivery.State.PENDING, next_attempt_at__lte=now)
            & (Q(held_until__isnull=True) | Q(held_until__lt=now)))


def deliveries_claim(*, owner: str, limit: int) -> list[str]:
    """Lease up to `limit` due deliveries to `owner`; each claim counts as an attempt."""
    if limit <= 0:
        return []
    now = timezone.now()
    if not Delivery.objects.filter(_due(now)).exists():  # the usual answer, without a write lock
        return []
    with transaction.atomic():
        ids = list(Delivery.objects.select_for_update(skip_locked=True).filter(_due(now))
                   .order_by("next_attempt_at").values_list("id", flat=True)[:limit])
        if ids:
            Delivery.objects.filter(id__in=ids).filter(_due(now)).update(
                held_by=owner, held_until=now + timedelta(seconds=lease_seconds()),
                attempts=F("attempts") + 1)
    return [str(delivery_id) for delivery_id in ids]


def delivery_attempt(*, owner: str, delivery_id: str) -> Outcome | None:
    """Send one delivery `owner` holds and record the outcome; None when it is not held any more."""
    delivery = Delivery.objects.filter(pk=delivery_id, held_by=owner, state=Delivery.State.PENDING).first()
    if delivery is None:
        return None
    try:
        outcome = send(delivery)
    except CannotSend as error:
        _record(delivery, owner, Outcome(False, str(error)), give_up=True)
        return Outcome(False, str(error))
    _record(delivery, owner, outcome)
    return outcome


def _record(delivery: Delivery, owner: str, outcome: Outcome, *, give_up: bool = False) -> None:
    now = timezone.now()
    held = Delivery.objects.filter(pk=delivery.pk, held_by=owner, state=Delivery.State.PENDING)
    common = {"held_by": "", "held_until": None, "response_status": outcome.status,
              "last_error": outcome.error[:500]}
    if outcome.delivered:
        held.update(state=Delivery.State.DELIVERED, delivered_at=now, **common)
    elif give_up or delivery.attempts >= settings.CORTEX_DELIVERY_ATTEMPTS:
        held.update(state=Delivery.State.GAVE_UP, **common)
        logger.warning("gave up delivering %s %s for job %s after %d attempts: %s", delivery.channel,
                       delivery.pk, delivery.job_id, delivery.attempts, outcome.error)
    else:
        held.update(next_attempt_at=now + backoff(delivery.attempts), **common)


# --- Sending -------------------------------------------------------------------------------------

def signature(secret: str, body: bytes) -> str:
    """`X-Cortex-Signature`: `sha256=` and the hex HMAC-SHA256 of the body under the person's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(delivery: Delivery) -> Outcome:
    if delivery.channel == Delivery.Channel.EMAIL:
        return _send_email(delivery)
    if delivery.channel == Delivery.Channel.NTFY:
        return _send_ntfy(delivery)
    return _send_signed(delivery)


def _secret_of(delivery: Delivery) -> str:
    stored = CallbackSecret.objects.filter(user_id=delivery.user_id).first()
    if stored is None:
        raise CannotSend("there is no callback secret to sign with (create one under Settings → Callbacks)")
    try:
        return crypto.decrypt(stored.secret_encrypted)
    except crypto.SecretUnreadable as error:
        raise CannotSend(f"the callback secret cannot be read: {error}") from None


def _send_signed(delivery: Delivery) -> Outcome:
    body = delivery.body.encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Cortex-Signature": signature(_secret_of(delivery), body),
               "X-Cortex-Delivery": str(delivery.pk), "X-Cortex-Event": delivery.event}
    return _post(delivery.target, body, headers)


def _send_ntfy(delivery: Delivery) -> Outcome:
    """ntfy's plain publishing: the message as the body, the rest as headers."""
    message = json.loads(delivery.body)
    headers = {"User-Agent": USER_AGENT, "Title": _header_safe(message["title"]), "Click": message["click"],
               "Tags": "robot", "X-Cortex-Delivery": str(delivery.pk)}
    if delivery.event == "job.awaiting_confirmation":
        headers["Priority"] = "high"
    chosen = NotificationSettings.objects.filter(user_id=delivery.user_id).first()
    if chosen is not None and chosen.ntfy_token_encrypted:
        try:
            headers["Authorization"] = f"Bearer {crypto.decrypt(chosen.ntfy_token_encrypted)}"
        except crypto.SecretUnreadable as error:
            raise CannotSend(f"the ntfy token cannot be read: {error}") from None
    return _post(delivery.target, message["message"].encode(), headers)


def _header_safe(text: str) -> str:
    """A header value in ASCII: other text RFC 2047 encoded, which ntfy decodes."""
    if text.isascii():
        return text
    return Header(text, "utf-8").encode()


def _post(url: str, body: bytes, headers: dict[str, str]) -> Outcome:
    async def post() -> int:
        transport = netguard.checked_transport(lambda: settings.CORTEX_HTTP_ALLOW_PRIVATE, max_connections=1)
        async with httpx.AsyncClient(transport=transport, timeout=settings.CORTEX_DELIVERY_TIMEOUT,
                                     follow_redirects=False) as client:
            # Only the status matters: the receiver's body is never read, however large it is.
            async with asyncio.timeout(settings.CORTEX_DELIVERY_TIMEOUT * 2):
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    return response.status_code

    try:
        status = asyncio.run(post())
    except TimeoutError:
        return Outcome(False, f"no answer within {settings.CORTEX_DELIVERY_TIMEOUT * 2:g} seconds")
    except netguard.Unreachable as error:
        return Outcome(False, str(error))
    except httpx.HTTPError as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, netguard.Unreachable):
            return Outcome(False, str(cause))
        return Outcome(False, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    if 200 <= status < 300:
        return Outcome(True, status=status)
    return Outcome(False, f"the receiver answered {status}", status=status)


def email_configured() -> bool:
    return "default" in mailers


def _send_email(delivery: Delivery) -> Outcome:
    if not email_configured():
        raise CannotSend("e-mail is not set up on this site (CORTEX_EMAIL_URL)")
    message = EmailMessage(subject=delivery.subject, body=delivery.body, from_email=settings.DEFAULT_FROM_EMAIL,
                           to=[delivery.target], headers={"X-Cortex-Delivery": str(delivery.pk)})
    try:
        with mailers.default as connection:
            sent = connection.send_messages([message])
    except Exception as error:  # smtplib, ssl and socket errors alike: try again later
        return Outcome(False, f"{type(error).__name__}: {error}")
    if not sent:
        return Outcome(False, "the mail server accepted nothing")
    return Outcome(True)
