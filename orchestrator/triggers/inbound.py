"""An inbound webhook delivery, checked and turned into a task. Pure functions, no Django.

Signatures: GitHub's `X-Hub-Signature-256: sha256=<hex>`, Gitea's `X-Gitea-Signature: <hex>` and
Cortex's own `X-Cortex-Signature: sha256=<hex>`, each the HMAC-SHA256 of the raw body under the
hook's secret, compared in constant time. Delivery ids from the same senders let a repeated
delivery be recognised.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

# (header, whether its value carries the "sha256=" prefix)
SIGNATURE_HEADERS: tuple[tuple[str, bool], ...] = (
    ("X-Hub-Signature-256", True),
    ("X-Gitea-Signature", False),
    ("X-Cortex-Signature", True),
)
DELIVERY_HEADERS: tuple[str, ...] = ("X-GitHub-Delivery", "X-Gitea-Delivery", "X-Cortex-Delivery")
MAX_DELIVERY_ID_CHARS = 200

PLACEHOLDER = re.compile(r"\{payload((?:\.[A-Za-z0-9_-]+)*)\}")


def signature(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of `body` under `secret`: what a sender signs with."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether one of the known signature headers holds the body's signature under `secret`.

    `headers` is looked up by the names above (case-insensitively when it is Django's
    `request.headers`). Every header present is compared, each in constant time."""
    expected = signature(secret, body).encode()
    valid = False
    for name, prefixed in SIGNATURE_HEADERS:
        given = headers.get(name)
        if not given:
            continue
        given = given.strip()
        if prefixed:
            scheme, _, given = given.partition("=")
            if scheme.strip().lower() != "sha256":
                continue
        # compare_digest needs ASCII; anything else cannot be a hex digest.
        candidate = given.strip().lower().encode("ascii", "replace")
        valid |= hmac.compare_digest(candidate, expected)
    return valid


def delivery_id(headers: Mapping[str, str]) -> str:
    """The sender's id of this delivery (empty when it sends none)."""
    for name in DELIVERY_HEADERS:
        value = (headers.get(name) or "").strip()
        if value:
            return value[:MAX_DELIVERY_ID_CHARS]
    return ""


def parse(body: bytes) -> Any:
    """The payload: JSON when the body is JSON, else its text (undecodable bytes replaced)."""
    text = body.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def field(payload: Any, path: str) -> Any:
    """`payload` followed along a dotted path (`repository.full_name`, `commits.0.id`); None when
    the path leads nowhere."""
    value = payload
    for step in filter(None, path.split(".")):
        if isinstance(value, Mapping):
            value = value.get(step)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return value


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def placeholders(template: str) -> list[str]:
    """The payload fields a task template uses ("" for the whole payload)."""
    return [match.group(1).lstrip(".") for match in PLACEHOLDER.finditer(template)]


def render(template: str, payload: Any, fence: Callable[[str], str]) -> str:
    """The task: the template with each `{payload}` / `{payload.a.b}` replaced by that part of the
    payload, passed through `fence` (which marks it as outside data). Other braces stay as written."""
    return PLACEHOLDER.sub(lambda match: fence(as_text(field(payload, match.group(1)))), template)
