"""PURISTA's name mangling for broker subjects and topics.

PURISTA v3 writes every NATS subject token and MQTT topic level (except the
prefix) through its ``convertToSnakeCase`` helper. This module reproduces that
behaviour (written from its observed input/output, see the vectors in
``tests/runtime/data/purista_snake_case.json``):

the value is split into *words*, each one of

1. a run of two or more capitals followed by a capitalised word or a word
   boundary (``HTTP`` in ``HTTPServer``),
2. an optional capital, lower-case letters and trailing digits (``Server``,
   ``ece0``),
3. a single capital,
4. a run of digits;

the words are lower-cased and joined with ``_``. Everything else (``.``,
``-``, ``_``, spaces, non-ASCII letters) is dropped. A value without any word
comes back unchanged (``''``, ``*``, ``+``).

The mapping is lossy and not injective (``userSignedUp`` and ``user_signed_up``
give the same token), which is why :func:`check_collisions` exists and why a
bridge always reads values from the message body, never from the subject.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# ASCII semantics on purpose: PURISTA's regex has no ``u`` flag, so ``\b`` and the
# character classes only know ASCII letters and digits.
_WORDS = re.compile(r"[A-Z]{2,}(?=[A-Z][a-z]+[0-9]*|\b)|[A-Z]?[a-z]+[0-9]*|[A-Z]|[0-9]+", re.ASCII)


def snake_case(value: str) -> str:
    """``value`` as PURISTA's ``convertToSnakeCase`` writes it."""
    words = _WORDS.findall(value)
    if not words:
        return value
    return "_".join(word.lower() for word in words)


class NameCollisionError(ValueError):
    """Two different names map to the same PURISTA subject/topic token."""


def check_collisions(kind: str, names: Iterable[tuple[str, str]]) -> None:
    """Fail when two distinct names in ``names`` snake-case to the same token.

    ``names`` holds ``(label, value)`` pairs; ``label`` says where a value comes
    from (``"service name"``, ``"event name"``) and appears in the error.
    """
    seen: dict[str, tuple[str, str]] = {}
    for label, value in names:
        token = snake_case(value)
        other = seen.get(token)
        if other is not None and other[1] != value:
            raise NameCollisionError(
                f"{kind}: {other[0]} {other[1]!r} and {label} {value!r} both become "
                f"{token!r} on the wire (PURISTA snake-cases every subject/topic level), "
                "so a PURISTA fleet cannot tell them apart; rename one of them"
            )
        seen.setdefault(token, (label, value))
