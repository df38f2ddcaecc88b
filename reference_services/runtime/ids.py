"""Identifiers: 32 lowercase hex characters, as PURISTA uses them."""

import os
import time


def new_id() -> str:
    """Return a fresh random id: a version-4 UUID as 32 lowercase hex characters
    (``uuid.uuid4().hex``, built without the UUID object: a third of the time)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


def now_ms() -> int:
    """Milliseconds since the epoch, the envelope's timestamp unit."""
    return time.time_ns() // 1_000_000
