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

import functools
import json
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reference_services.runtime.definitions import AddressFilter
    from reference_services.runtime.messages import Address

_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_DIGIT = frozenset("0123456789")
_WORD_CHARS = _UPPER | _LOWER | _DIGIT | {"_"}  # ASCII only, as in PURISTA


def _run(value: str, i: int, chars: frozenset[str]) -> int:
    while i < len(value) and value[i] in chars:
        i += 1
    return i


def _capitals_end(value: str, i: int) -> int | None:
    """End of rule 1 at ``i``: the longest run of >= 2 capitals that is followed by a
    capitalised word or ends at a word boundary."""
    stop = _run(value, i, _UPPER)
    for end in range(stop, i + 1, -1):
        nxt = value[end] if end < len(value) else ""
        if nxt in _UPPER and end + 1 < len(value) and value[end + 1] in _LOWER:
            return end
        if nxt not in _WORD_CHARS:  # the run ends a word
            return end
    return None


def _word_end(value: str, i: int) -> int | None:
    """End of the word starting at ``i`` (rules 1-4 in order), None if none starts there."""
    end = _capitals_end(value, i)
    if end is not None:
        return end
    j = i + 1 if value[i] in _UPPER else i
    if j < len(value) and value[j] in _LOWER:
        return _run(value, _run(value, j, _LOWER), _DIGIT)
    if value[i] in _UPPER:
        return i + 1
    if value[i] in _DIGIT:
        return _run(value, i, _DIGIT)
    return None


def words(value: str) -> list[str]:
    """The words PURISTA's snake-casing keeps, in order."""
    out: list[str] = []
    i = 0
    while i < len(value):
        end = _word_end(value, i)
        if end is None:
            i += 1
            continue
        out.append(value[i:end])
        i = end
    return out


@functools.lru_cache(maxsize=8192)  # pure, and asked for every level of every topic sent
def snake_case(value: str) -> str:
    """``value`` as PURISTA's ``convertToSnakeCase`` writes it."""
    found = words(value)
    if not found:
        return value
    return "_".join(word.lower() for word in found)


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


def address_levels(
    address: Address | AddressFilter | None,
    encode: Callable[[str | None], str],
    missing: str,
) -> list[str]:
    """The four subject/topic levels of an address (or an address filter) in PURISTA's
    order: instance id, service name, version, target, each through ``encode``;
    ``missing`` four times when there is no address."""
    if address is None:
        return [missing] * 4
    return [
        encode(address.instance_id),
        encode(address.service_name),
        encode(address.service_version),
        encode(address.service_target),
    ]


def address_headers(side: str, address: Address | None) -> dict[str, str]:
    """PURISTA's headers for one address of a message: ``{side}ServiceName``,
    ``{side}ServiceVersion``, ``{side}ServiceTarget`` and, when set, ``{side}InstanceId``
    (``side`` is ``sender`` or ``receiver``); none for a missing address."""
    if address is None:
        return {}
    out = {
        f"{side}ServiceName": address.service_name,
        f"{side}ServiceVersion": address.service_version,
        f"{side}ServiceTarget": address.service_target,
    }
    if address.instance_id:
        out[f"{side}InstanceId"] = address.instance_id
    return out


_LINE_BREAK = re.compile("[\r\n]")


def _address_key(address: Address | None) -> tuple[str | None, ...] | None:
    if address is None:
        return None
    return (address.service_name, address.service_version, address.service_target,
            address.instance_id)


# one fleet's sender/receiver pairs repeat: their headers are worked out once
_ROUTING_MEMO_SIZE = 4096
_routing_memo: dict[tuple[Any, ...], dict[str, str]] = {}


def routing_headers(message: object) -> dict[str, str]:
    """PURISTA's routing headers of a message (NATS headers, MQTT user properties):
    ``messageType``, ``sender*``, ``receiver*``, ``eventName``, ``principalId``,
    ``tenantId`` when set, and the W3C ``traceparent``/``tracestate`` of its ``otp``.
    Values a header cannot carry (line breaks) are left out. A new dict on every call."""
    key = (
        getattr(message, "message_type", ""),
        _address_key(getattr(message, "sender", None)),
        _address_key(getattr(message, "receiver", None)),
        getattr(message, "event_name", None),
        getattr(message, "principal_id", None),
        getattr(message, "tenant_id", None),
        getattr(message, "otp", None),
    )
    try:
        hit = _routing_memo.get(key)
    except TypeError:  # an unhashable value where a string belongs: work it out
        return _routing_headers(message)
    if hit is None:
        hit = _routing_headers(message)
        if len(_routing_memo) >= _ROUTING_MEMO_SIZE:
            _routing_memo.clear()
        _routing_memo[key] = hit
    return dict(hit)


def _routing_headers(message: object) -> dict[str, str]:
    out: dict[str, str] = {"messageType": str(getattr(message, "message_type", ""))}
    for side in ("sender", "receiver"):
        out.update(address_headers(side, getattr(message, side, None)))
    for key, attr in (
        ("eventName", "event_name"),
        ("principalId", "principal_id"),
        ("tenantId", "tenant_id"),
    ):
        value = getattr(message, attr, None)
        if value:
            out[key] = value
    otp = getattr(message, "otp", None)
    if otp:
        try:
            carrier = json.loads(otp)
        except ValueError:
            carrier = {}
        if isinstance(carrier, dict):
            for key in ("traceparent", "tracestate"):
                if isinstance(carrier.get(key), str):
                    out[key] = carrier[key]
    values = out.values()
    if all(values) and not _LINE_BREAK.search("".join(values)):
        return out  # the usual case: nothing to leave out, no second dict
    return {k: v for k, v in out.items() if v and "\r" not in v and "\n" not in v}
