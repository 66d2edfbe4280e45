"""Reading a provider's retry hint: seconds, milliseconds or an HTTP date; nonsense is ignored."""

import email.utils
import time

import pytest

from orchestrator.engine.loop import backoff
from orchestrator.providers.openai_compat import retry_after


@pytest.mark.parametrize("headers,expected", [
    ({"retry-after": "3"}, 3.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "-4"}, 0.0),
    ({}, None),
])
def test_it_reads_the_retry_hint(headers, expected):
    assert retry_after(headers) == expected


def test_it_reads_an_http_date():
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= retry_after({"retry-after": in_ten}) <= 10


def test_backoff_honours_the_hint_up_to_the_cap(settings):
    settings.CORTEX_RETRY_MAX_SECONDS = 30
    assert backoff(1, 2.5) == 2.5
    assert backoff(1, 3600) == 30


def test_backoff_grows_without_a_hint(settings):
    settings.CORTEX_RETRY_BASE_SECONDS = 1.0
    settings.CORTEX_RETRY_MAX_SECONDS = 60
    assert 0.5 <= backoff(1, None) <= 1.0
    assert 4.0 <= backoff(4, None) <= 8.0
