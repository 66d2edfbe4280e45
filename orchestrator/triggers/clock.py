"""The time schedules go by.

The real clock, unless CORTEX_CLOCK_FILE names a file holding an ISO 8601 time: then that file
says what time it is (read on every call). It exists so that tests and demonstrations can move a
schedule's time on by minutes or days across several processes without waiting for them; a site
leaves it unset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone


def now() -> datetime:
    path = settings.CORTEX_CLOCK_FILE
    if not path:
        return timezone.now()
    try:
        text = Path(path).read_text().strip()
        moment = datetime.fromisoformat(text)
    except (OSError, ValueError) as error:
        raise ImproperlyConfigured(f"CORTEX_CLOCK_FILE: cannot read a time from {path}: {error}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
