"""The stored form of an API key: its SHA-256 digest (the server never keeps a key)."""

from __future__ import annotations

import hashlib

HASH_PREFIX = "sha256:"


def hash_key(key: str) -> str:
    """The form `auth.api_key_hashes` stores: 'sha256:<hex digest>'."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()
