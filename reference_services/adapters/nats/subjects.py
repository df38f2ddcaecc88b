"""Every name this package puts on NATS: subjects, streams, consumers, KV buckets and keys.

Two encodings, for two contracts that cannot share one without renaming
what already exists on the wire or on disk:

* :func:`token` writes a value into PURISTA's *wire* subject layout (below)
  exactly as PURISTA v3 does: snake-cased (:mod:`~reference_services.runtime.purista_names`),
  so that a PURISTA TypeScript service and ours meet on the same subjects.
* :func:`name_token` and :func:`kv_key` make the bridge's *own* resource names
  (queue streams, subjects and ledger keys; store buckets and keys): they must
  also be valid KV keys and stream names, where ``%`` is not allowed, so an
  unsafe name becomes ``_`` + lowercase base32 (injective; a plain name never
  starts with ``_``).

A message travels on the 13-token subject::

    <prefix>.<messageType>.<principalId>.<tenantId>.<senderInstanceId>.<senderName>
    .<senderVersion>.<senderTarget>.<eventName>.<receiverInstanceId>.<receiverName>
    .<receiverVersion>.<receiverTarget>

Every token but the prefix is snake-cased as PURISTA does it (``customMessage`` ->
``custom_message``, ``1.0.0`` -> ``1_0_0``); empty parts are PURISTA's marker
``__empty__`` snake-cased, i.e. ``empty`` on the wire; a subscription filter puts
``*`` where it does not care, and a command filter has ``*`` in the
receiver-instance slot. Snake-casing is lossy, so values are always read from
the body. A value with no letter or digit at all (PURISTA would put it on the
wire unchanged and break the layout) is written as ``%HH`` per UTF-8 byte
instead; an overlong token is replaced by ``~`` and a hash of the value.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import string

from reference_services.runtime.definitions import Subscription
from reference_services.runtime.messages import Address, AnyMessage, MessageType
from reference_services.runtime.purista_names import address_levels, snake_case

EMPTY_MARKER = "__empty__"
"""PURISTA's ``emptyTopicPartString`` default; it goes on the wire snake-cased."""
EMPTY = snake_case(EMPTY_MARKER)
MAX_TOKEN = 96
ANY = "*"
_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9-]+$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9/=-]+(\.[A-Za-z0-9/=-]+)*$")

EVENT_TYPES: tuple[MessageType, ...] = tuple(t for t in MessageType if t is not MessageType.COMMAND)
"""Message types kept by the JetStream stream (everything but commands)."""


@functools.lru_cache(maxsize=8192)  # a pure function of the value: every send needs 13
def token(value: str | None) -> str:
    """One subject token for ``value``: ``empty`` when empty, snake-cased otherwise.

    A token longer than ``MAX_TOKEN`` becomes ``~`` + a hash of the value, so a
    huge id cannot push a subject past the server's control-line limit (which
    would cost the connection); the message body still carries the value.
    """
    if not value:
        return EMPTY
    out = snake_case(value)
    if not out or not all(c in _SAFE for c in out):
        out = value
        parts: list[str] = []
        for char in value:
            if char in _SAFE:
                parts.append(char)
            # value had no word PURISTA keeps: escape, so the layout holds
            else:
                parts.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        out = "".join(parts)
    if len(out) > MAX_TOKEN:
        return "~" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return out


def _filter_token(value: str | None) -> str:
    return ANY if value is None else token(value)


def message_subject(prefix: str, message: AnyMessage) -> str:
    """The subject ``message`` is published on."""
    parts = [
        prefix,
        token(str(message.message_type)),
        token(message.principal_id),
        token(message.tenant_id),
        *address_levels(message.sender, token, EMPTY),
        token(message.event_name),
        *address_levels(getattr(message, "receiver", None), token, EMPTY),
    ]
    return ".".join(parts)


def subscription_filter(prefix: str, sub: Subscription) -> str:
    """The subject filter that selects exactly what ``sub`` matches."""
    parts = [
        prefix,
        _filter_token(str(sub.message_type) if sub.message_type else None),
        _filter_token(sub.principal_id),
        _filter_token(sub.tenant_id),
        *address_levels(sub.sender, _filter_token, ANY),
        _filter_token(sub.event_name),
        *address_levels(sub.receiver, _filter_token, ANY),
    ]
    return ".".join(parts)


def command_filter(prefix: str, address: Address, instance_id: str | None) -> str:
    """Commands for ``address``: PURISTA's filter (``*`` in the receiver-instance slot)
    when ``instance_id`` is None, else this bridge's subject for commands pinned to
    that instance (:func:`command_subject`)."""
    if instance_id is not None:
        return _pinned_subject(prefix, address, instance_id)
    head = [prefix, token(str(MessageType.COMMAND))] + [ANY] * 7
    receiver = [
        ANY,
        token(address.service_name),
        token(address.service_version),
        token(address.service_target),
    ]
    return ".".join(head + receiver)


def _pinned_subject(prefix: str, address: Address, instance_id: str) -> str:
    parts = [
        prefix,
        "_pinned",
        token(instance_id),
        token(address.service_name),
        token(address.service_version),
        token(address.service_target),
    ]
    return ".".join(parts)


def command_subject(prefix: str, command: AnyMessage) -> str:
    """Where a command is sent: its 13-token subject, or, when it names a receiver
    instance, a subject outside PURISTA's layout. PURISTA has no pinning: its
    command filter takes any receiver instance, so a pinned command on the 13-token
    subject would also run on whichever group member got it."""
    receiver = getattr(command, "receiver", None)
    if receiver is not None and receiver.instance_id:
        return _pinned_subject(prefix, receiver, receiver.instance_id)
    return message_subject(prefix, command)


def stream_subjects(prefix: str) -> list[str]:
    """The subjects the event stream captures: every message type but commands."""
    return [f"{prefix}.{token(str(t))}.>" for t in EVENT_TYPES]


def queue_group(prefix: str, address: Address) -> str:
    """PURISTA's queue group of a command or shared subscription, on the *raw* values:
    ``PURISTA_QUEUE_<SVC>_<VER>_<TARGET>`` upper-cased; PURISTA instances and ours
    serving the same function compete in it, so each message runs once."""
    return (
        f"{prefix}_queue_{address.service_name}_{address.service_version}_{address.service_target}"
    ).upper()


def reply_subject(prefix: str, instance_id: str) -> str:
    """The per-instance subject prefix where command responses arrive."""
    return f"{prefix}._reply.{token(instance_id)}"


def dead_letter_subject(prefix: str, consumer: str) -> str:
    """Where a subscription's native dead letters are kept."""
    return f"{prefix}._dlq.{consumer}"


PURISTA_DEAD_LETTER_SUFFIX = ".dead-letter"
"""PURISTA's ``defaultConsumerFailureHandling.deadLetterSuffix``."""


def purista_dead_letter_subject(subscription_filter: str) -> str:
    """PURISTA's dead-letter subject of a subscription: its *filter* plus ``.dead-letter``
    (wildcards and all: JetStream accepts the literal ``*`` tokens, and a consumer on the
    same subject reads it)."""
    return subscription_filter + PURISTA_DEAD_LETTER_SUFFIX


def purista_dead_letter_headers(
    reason: str, attempt: int, subscription_filter: str, subscriber: Address
) -> dict[str, str]:
    """PURISTA's dead-letter headers (``x-purista-dead-letter-*``); the original subject
    is the subscription's filter, the subscriber ``<svc>/<ver>/<target>``, raw."""
    return {
        "x-purista-dead-letter-reason": reason,
        "x-purista-dead-letter-attempt": str(attempt),
        "x-purista-dead-letter-original-subject": subscription_filter,
        "x-purista-dead-letter-subscriber": (
            f"{subscriber.service_name}/{subscriber.service_version}/{subscriber.service_target}"
        ),
    }


_PURISTA_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def purista_consumer_name(subscriber: Address, instance_id: str | None = None) -> str:
    """PURISTA's durable JetStream consumer of a subscription,
    ``subscription_<svc>_<ver>_<target>`` on the raw values (plus ``_<instance>`` when not
    shared), every character outside ``[A-Za-z0-9_-]`` made ``_``, at most 200 characters.
    Not injective (``1.0.0`` and ``1_0_0`` meet), as in PURISTA: both runtimes must agree."""
    base = (
        f"subscription_{subscriber.service_name}_{subscriber.service_version}_"
        f"{subscriber.service_target}"
    )
    if instance_id is not None:
        base = f"{base}_{instance_id}"
    return _PURISTA_UNSAFE.sub("_", base)[:200]


def purista_filter_stream_name(prefix: str, subject: str) -> str:
    """The stream PURISTA makes for a JetStream subscription when no stream holds its
    filter yet: ``<prefix>_subscription_<filter>``, made safe as consumer names are."""
    return _PURISTA_UNSAFE.sub("_", f"{prefix}_subscription_{subject}")[:200]


def deliver_subject(stream: str, consumer: str) -> str:
    """The deliver subject of a push consumer this bridge creates: derived from the names,
    so instances creating it at once agree, and in ``_INBOX`` as PURISTA's own (a new
    inbox), outside every stream's subjects."""
    return f"_INBOX.purista-deliver.{stream}.{consumer}"


def safe_name(*parts: str, limit: int = 64) -> str:
    """A stream/consumer name: readable, only ``[A-Za-z0-9_-]``, unique per ``parts``."""
    digest = hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:10]
    readable = "_".join(_NAME_UNSAFE.sub("-", p).strip("-") or "x" for p in parts)
    return f"{readable[: limit - len(digest) - 1]}_{digest}"


def stream_name(prefix: str) -> str:
    """The event stream of ``prefix``."""
    return safe_name("purista", prefix)


def dead_letter_stream_name(prefix: str) -> str:
    """The stream keeping native dead letters of ``prefix``."""
    return safe_name("purista-dlq", prefix)


# ---- the bridges' own resource names ---------------------------------------------------


def _b32(name: str) -> str:
    return "_" + base64.b32encode(name.encode()).decode().rstrip("=").lower()


def name_token(name: str) -> str:
    """A subject-, stream- and KV-key-safe token for ``name``, injective.

    Names of letters, digits and ``-`` stay as they are; anything else becomes
    ``_`` + lowercase base32 (a plain name never starts with ``_``).
    """
    return name if _PLAIN_NAME.match(name) else _b32(name)


def kv_key(name: str) -> str:
    """A valid KV key for a store name, injective.

    Dotted names of letters, digits, ``-``, ``/`` and ``=`` stay readable;
    anything else becomes ``_`` + base32 (a plain key never contains ``_``).
    """
    return name if _PLAIN_KEY.match(name) else _b32(name)


def level_token(priority: int) -> str:
    """Subject token of a queue priority level: ``p3``, ``p0``, ``m2`` (= -2)."""
    return f"p{priority}" if priority >= 0 else f"m{-priority}"


def parse_level(tok: str) -> int | None:
    """Inverse of :func:`level_token`; ``None`` for a foreign token."""
    if len(tok) < 2 or tok[0] not in "pm" or not tok[1:].isdigit():
        return None
    value = int(tok[1:])
    return value if tok[0] == "p" else -value
