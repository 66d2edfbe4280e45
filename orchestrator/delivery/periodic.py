"""The executor's periodic work for deliveries and deadlines (see `engine.periodic`).

Claiming happens on the executor's database thread; sending happens on a few worker threads of
its own, so a slow receiver holds neither the database thread the jobs share nor a job's step.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections, connection
from django.utils import timezone

from ..engine import periodic
from .models import ConfirmationDeadline

logger = logging.getLogger(__name__)

SENDERS = 4
DELIVERY_SECONDS = 1.0
EXPIRY_SECONDS = 0.5

_pool = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="cortex-delivery")
_busy = 0
_busy_lock = threading.Lock()


@periodic.every(DELIVERY_SECONDS, name="delivery.send")
def deliveries_send(*, owner: str) -> None:
    """Claim as many due deliveries as there are idle senders, and hand them over."""
    from .dispatch import deliveries_claim

    global _busy
    with _busy_lock:
        free = SENDERS - _busy
    for delivery_id in deliveries_claim(owner=owner, limit=free):
        with _busy_lock:
            _busy += 1
        _pool.submit(_send_one, owner, delivery_id)


def _send_one(owner: str, delivery_id: str) -> None:
    from .dispatch import delivery_attempt

    global _busy
    try:
        close_old_connections()
        delivery_attempt(owner=owner, delivery_id=delivery_id)
    except Exception:
        # The lease runs out and another attempt is made: nothing is lost.
        logger.exception("delivery %s failed unexpectedly", delivery_id)
    finally:
        connection.close()
        with _busy_lock:
            _busy -= 1


@periodic.every(EXPIRY_SECONDS, name="delivery.expire")
def confirmations_expire(*, owner: str) -> int:
    """Deny the calls whose deadline passed; each deadline is claimed once, in the transaction that
    denies (see `services.confirmation_expire`). Returns how many calls expired."""
    from .. import services

    due = list(ConfirmationDeadline.objects.filter(fired_at=None, expires_at__lte=timezone.now())
               .order_by("expires_at").values_list("id", flat=True)[:100])
    return sum(services.confirmation_expire(deadline_id=deadline_id) for deadline_id in due)
