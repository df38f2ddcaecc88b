"""PURISTA's MQTT topic layout: 13 levels, snake-cased, empty parts as ``none``.

``<prefix>/<messageType>/<principalId>/<tenantId>/<senderInstanceId>/<senderName>/
<senderVersion>/<senderTarget>/<eventName>/<receiverInstanceId>/<receiverName>/
<receiverVersion>/<receiverTarget>``

Every level but the prefix is written as PURISTA v3 writes it: snake-cased
(:mod:`~reference_services.runtime.purista_names`), the empty marker ``__none__``
snake-cased to ``none``. Subscription filters put ``+`` where the subscription
does not filter; command filters have ``+`` in the receiver-instance slot.
Snake-casing is lossy: values are always read from the body. A value with no
letter or digit (PURISTA would write it unchanged, possibly breaking the
layout) is percent-encoded instead (``/ + # NUL %``), so it stays one level.
Responses travel on their own 13-level topic (receiver instance = the
invoker's), not on an MQTT 5 response topic.
"""

from __future__ import annotations

import math
import zlib

from reference_services.runtime.definitions import Subscription
from reference_services.runtime.messages import Address, AnyMessage, MessageType
from reference_services.runtime.purista_names import address_levels, snake_case

EMPTY_MARKER = "__none__"
"""PURISTA's MQTT ``emptyTopicPartString`` default; on the wire it is snake-cased."""
EMPTY = snake_case(EMPTY_MARKER)
SHARE_GROUP = "sharedpurista"
"""PURISTA's ``$share`` group name (``shareTopicName``), one group for all commands."""
ANY = "+"
_ESCAPES = {"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\x00": "%00"}
MAX_SUBSCRIPTION_ID = 268_435_455


def escape_level(value: str | None) -> str:
    """One topic level for ``value``: snake-cased, or ``none`` when empty."""
    if not value:
        return EMPTY
    out = snake_case(value)
    if out != value or not any(ch in _ESCAPES for ch in out):
        return out
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


def unescape_level(level: str) -> str:
    """The escaped value a level of a wordless value encodes (``""`` for ``none``)."""
    if level == EMPTY:
        return ""
    if "%" not in level:
        return level
    out: list[str] = []
    i = 0
    while i < len(level):
        if level[i] == "%" and i + 3 <= len(level):
            try:
                out.append(chr(int(level[i + 1 : i + 3], 16)))
                i += 3
                continue
            except ValueError:
                pass
        out.append(level[i])
        i += 1
    return "".join(out)


def validate_prefix(prefix: str) -> str:
    """A prefix is one or more plain topic levels (no wildcards, no leading ``$``)."""
    if not prefix or prefix.startswith("$") or any(c in prefix for c in "+#\x00"):
        raise ValueError(f"invalid MQTT topic prefix {prefix!r}")
    if any(not part for part in prefix.split("/")):
        raise ValueError(f"MQTT topic prefix {prefix!r} has an empty level")
    return prefix


def message_topic(prefix: str, message: AnyMessage) -> str:
    """The topic ``message`` is published on."""
    levels = [
        escape_level(str(message.message_type)),
        escape_level(message.principal_id),
        escape_level(message.tenant_id),
        *address_levels(message.sender, escape_level, EMPTY),
        escape_level(message.event_name),
        *address_levels(getattr(message, "receiver", None), escape_level, EMPTY),
    ]
    return "/".join([prefix, *levels])


def _filter_level(value: str | None) -> str:
    return ANY if value is None else escape_level(value)


def subscription_filters(
    prefix: str, sub: Subscription, purista_groups: bool = False
) -> list[str]:
    """The topic filters for a subscription (the broker-side part of its matching).

    A subscription that does not filter on the message type gets one filter per type
    except ``command``: subscriptions never see commands (as in the reference bridge),
    so a command nobody serves matches no subscription and the broker says so. A shared
    one in PURISTA's groups (``purista_groups``) gets PURISTA's single filter instead,
    ``+`` in the type level (MQTT puts two members in one shared subscription only for
    the same filter text): commands reaching it are dropped in-process, and a command
    nobody serves that it matches then waits for its ttl (504) instead of failing fast."""
    if sub.message_type is None and purista_groups and sub.shared:
        return [_subscription_filter(prefix, sub, None)]
    types = (
        [sub.message_type]
        if sub.message_type
        else [t for t in MessageType if t is not MessageType.COMMAND]
    )
    return [_subscription_filter(prefix, sub, str(t)) for t in types]


def _subscription_filter(prefix: str, sub: Subscription, message_type: str | None) -> str:
    sender = sub.sender
    levels = [
        _filter_level(message_type),
        _filter_level(sub.principal_id),
        _filter_level(sub.tenant_id),
        *address_levels(sender, _filter_level, ANY),
        _filter_level(sub.event_name),
        *address_levels(sub.receiver, _filter_level, ANY),
    ]
    return "/".join([prefix, *levels])


def command_filter(prefix: str, address: Address, instance_id: str | None) -> str:
    """Commands for ``address``: PURISTA's filter (``+`` in the receiver-instance slot)
    when ``instance_id`` is None, else this bridge's topic for commands pinned to that
    instance (see :func:`command_topic`)."""
    if instance_id is not None:
        return _pinned_topic(prefix, address, instance_id)
    levels = ["command", *[ANY] * 7, ANY]
    levels += [
        escape_level(address.service_name),
        escape_level(address.service_version),
        escape_level(address.service_target),
    ]
    return "/".join([prefix, *levels])


def _pinned_topic(prefix: str, address: Address, instance_id: str) -> str:
    levels = [
        escape_level(v)
        for v in (
            instance_id,
            address.service_name,
            address.service_version,
            address.service_target,
        )
    ]
    return "/".join([prefix, "_pinned", *levels])


def command_topic(prefix: str, command: AnyMessage) -> str:
    """Where a command is published: its 13-level topic, or, when it names a receiver
    instance, a topic outside PURISTA's layout (PURISTA has no pinning; its command
    filter takes any instance, so a pinned command would run on any group member)."""
    receiver = getattr(command, "receiver", None)
    if receiver is not None and receiver.instance_id:
        return _pinned_topic(prefix, receiver, receiver.instance_id)
    return message_topic(prefix, command)


def share_group(*parts: str) -> str:
    """A shared-subscription group name (no ``/ + #`` allowed in it)."""
    return ".".join(escape_level(p).replace("%", "~") for p in parts)


def subscription_group(prefix: str, sub: Subscription, purista_groups: bool) -> str:
    """The share group of a shared subscription.

    ``purista_groups``: PURISTA's one group for everything (``sharedpurista``), so a
    PURISTA instance of the same subscriber and ours compete for each message. It is
    PURISTA's defect that *different* subscribers with the same filter then compete
    too (each message reaches one service only). Otherwise one group per
    subscriber (``<prefix>.sub.<svc>.<ver>.<target>``): every subscriber gets each
    message once, but a PURISTA member of the same subscriber gets it as well.
    """
    if purista_groups:
        return SHARE_GROUP
    return share_group(prefix, "sub", *sub.key)


def shared(group: str, topic_filter: str) -> str:
    """``$share/<group>/<filter>``."""
    return f"$share/{group}/{topic_filter}"


def concrete(topic_filter: str) -> str:
    """A topic that ``topic_filter`` matches: share prefix dropped, ``+`` as ``__empty__``."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    return "/".join(EMPTY if level == ANY else level for level in topic_filter.split("/"))


def response_filters(prefix: str, instance_id: str) -> list[str]:
    """Where responses to this instance's commands arrive: the 13-level topics of
    both response types with this instance in the receiver-instance slot."""
    return [
        "/".join([prefix, escape_level(str(t)), *[ANY] * 7, escape_level(instance_id), *[ANY] * 3])
        for t in (MessageType.COMMAND_SUCCESS_RESPONSE, MessageType.COMMAND_ERROR_RESPONSE)
    ]


MESSAGE_EXPIRY_S = 30 * 86_400
"""PURISTA's ``defaultMessageExpiryInterval`` (30 days, in seconds)."""


def message_expiry_s(message: AnyMessage, ttl_s: float) -> int:
    """The MQTT 5 Message Expiry Interval of a publish, as PURISTA v3 sets it.

    Events (and everything but commands and responses): 30 days. A command: the
    invoker's ttl (``ttl_s``, what is left of it) in whole seconds, at least 1 and
    rounded up, so the broker never drops it while the invoker still waits (PURISTA
    rounds, which gives 0 below half a second). A response: the command's ttl. A
    command or response with an event name: 30 days, since subscribers see it as that
    event. PURISTA converts the 30 days of a response with an event name from ms to s
    once more (2592 s); we do not repeat that defect: no receiver reads the value,
    only the broker, and 43 minutes would drop the event for an offline durable
    subscriber.
    """
    kind = message.message_type
    answers = (MessageType.COMMAND, MessageType.COMMAND_SUCCESS_RESPONSE,
               MessageType.COMMAND_ERROR_RESPONSE)
    if kind not in answers or message.event_name:
        return MESSAGE_EXPIRY_S
    return max(1, math.ceil(ttl_s))


def subscription_id(topic_filter: str) -> int:
    """A stable MQTT 5 subscription identifier for a filter (same across restarts)."""
    return (zlib.crc32(topic_filter.encode("utf-8")) % MAX_SUBSCRIPTION_ID) + 1
