"""Identifiers: 32 lowercase hex characters, as PURISTA uses them."""

import time
import uuid


def new_id() -> str:
    """Return a fresh random id (32 lowercase hex characters)."""
    return uuid.uuid4().hex


def now_ms() -> int:
    """Milliseconds since the epoch, the envelope's timestamp unit."""
    return time.time_ns() // 1_000_000
