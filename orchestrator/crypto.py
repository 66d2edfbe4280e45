"""Encryption at rest for provider API keys.

Keys are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from
CORTEX_ENCRYPTION_KEY, or from SECRET_KEY when that is not set. Changing the secret makes stored
keys unreadable: they must then be entered again.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

PREFIX = "fernet1:"


class SecretUnreadable(Exception):
    """A stored key that cannot be decrypted with the current secret."""


def _fernet() -> Fernet:
    material = (settings.CORTEX_ENCRYPTION_KEY or settings.SECRET_KEY).encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"cortex-provider-keys", info=b"fernet").derive(material)
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(plaintext: str) -> str:
    if not plaintext:
        return ""
    return PREFIX + _fernet().encrypt(plaintext.encode()).decode()


def decrypt(stored: str) -> str:
    if not stored:
        return ""
    if not stored.startswith(PREFIX):
        raise SecretUnreadable("the stored key is not in a known format")
    try:
        return _fernet().decrypt(stored[len(PREFIX):].encode()).decode()
    except InvalidToken:
        raise SecretUnreadable("the stored API key cannot be decrypted (was the secret key changed?); "
                               "enter it again") from None


def mask(plaintext: str) -> str:
    """What a page may show of a key: enough to recognise it, never enough to use it."""
    if not plaintext:
        return ""
    return f"{plaintext[:3]}…{plaintext[-2:]}" if len(plaintext) > 12 else "••••"
