"""Attempt numbers a transport carries on its own retry copies, signed.

A transport whose broker keeps no delivery count (RabbitMQ classic queues) carries the
attempt in a header on the copy it republishes. Anyone who may publish could set that
header too, and skip every retry; so the transport signs it with a key every instance of
the deployment derives from what it shares (the broker credentials and the prefix), and an
attempt whose signature does not verify counts as a first delivery.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

RETRY_SIGNATURE_HEADER = "x-purista-retry-sig"


class AttemptSigner:
    """Signs and verifies ``(message id, attempt)`` pairs with one deployment key."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the attempt signing key must not be empty")
        self._key = key

    def __repr__(self) -> str:  # never show the key
        return "AttemptSigner(<key hidden>)"

    @classmethod
    def derive(cls, *shared: str) -> AttemptSigner:
        """A signer whose key is derived from values every instance shares (secret ones
        included: the key is as hard to forge as they are to learn)."""
        material = "\x00".join(("purista-retry-attempt", *shared)).encode("utf-8")
        return cls(hashlib.sha256(material).digest())

    def sign(self, message_id: str, attempt: int) -> str:
        """The signature of ``attempt`` for ``message_id``."""
        mac = hmac.new(self._key, f"{message_id}|{attempt}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def verified(self, message_id: str | None, attempt: Any, signature: Any) -> int:
        """``attempt`` if it is a whole number ≥ 1 signed for ``message_id``, else 1."""
        if isinstance(attempt, bytes):
            attempt = attempt.decode("utf-8", "replace")
        if isinstance(signature, bytes):
            signature = signature.decode("utf-8", "replace")
        if isinstance(attempt, bool) or not isinstance(signature, str) or not message_id:
            return 1
        try:
            value = int(attempt)
        except (TypeError, ValueError):
            return 1
        if value < 1 or str(value) != str(attempt).strip():
            return 1
        if not hmac.compare_digest(self.sign(message_id, value), signature):
            return 1
        return value
