from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FastPBKDF2(PBKDF2PasswordHasher):
    """Same algorithm and encoding as the default (so server processes verify these hashes),
    with few iterations so creating test users is quick."""

    iterations = 1000
