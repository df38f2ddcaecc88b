"""Names, headers and bindings of the AMQP bridge (pure functions, no I/O).

PURISTA's conventions: one headers exchange named after the prefix; every
message carries its routing facts as string headers (``messageType``,
``sender*``, ``receiver*``, ``eventName``, ``principalId``, ``tenantId``);
commands queue on ``<prefix>.cmd.<service>.<version>.<target>``, shared
subscriptions on ``<prefix>.sub.<service>.<version>.<target>``.
"""

from __future__ import annotations

import json
from typing import Any

from reference_services.runtime import telemetry
from reference_services.runtime.definitions import AddressFilter, Subscription
from reference_services.runtime.messages import Address, AnyMessage, MessageType
from reference_services.runtime.purista_names import address_headers

DEAD_LETTER_SUFFIX = "dlq"
RETRY_SUFFIX = "retry"
# Headers RabbitMQ adds when it dead-letters a message; dropped when we republish.
BROKER_DEATH_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)


def _address_part(address: Address) -> str:
    return f"{address.service_name}.{address.service_version}.{address.service_target}"


def command_queue(prefix: str, address: Address) -> str:
    """The shared queue of a command: ``<prefix>.cmd.<service>.<version>.<target>``."""
    return f"{prefix}.cmd.{_address_part(address)}"


def subscription_queue(prefix: str, sub: Subscription, instance_id: str) -> str:
    """The queue of a subscription: shared per group, or one per instance."""
    base = f"{prefix}.sub.{_address_part(sub.subscriber)}"
    return base if sub.shared else f"{base}.{instance_id}"


def subscription_queue_options(sub: Subscription) -> dict[str, Any]:
    """How a subscription queue is declared, as PURISTA declares it.

    Shared: durable as the subscription says, **never auto-delete**, no arguments
    (PURISTA's ``assertQueue(name, {durable})``; RabbitMQ refuses a second declaration
    with other properties with PRECONDITION_FAILED, closing the declarer's channel).
    A non-durable shared queue is therefore deleted by the bridge when its last
    consumer leaves (:func:`deleted_when_unused`), not by the broker. Not shared: one
    exclusive auto-delete queue per instance.
    """
    if sub.shared:
        return {"durable": sub.durable, "auto_delete": False}
    return {"exclusive": True, "auto_delete": True}


def deleted_when_unused(sub: Subscription) -> bool:
    """Whether the bridge deletes the subscription's queue once nobody consumes it:
    a non-durable shared queue (PURISTA declares it without auto-delete)."""
    return sub.shared and not sub.durable


def dead_letter_queue(prefix: str, sub: Subscription) -> str:
    """The native dead letter queue of a subscription group."""
    return f"{prefix}.sub.{_address_part(sub.subscriber)}.{DEAD_LETTER_SUFFIX}"


def retry_queue(source_queue: str, attempt: int) -> str:
    """The delay queue for retries after failed ``attempt``: messages wait out their
    per-message TTL there, then are dead-lettered back to ``source_queue``.

    One queue per attempt number keeps similar delays together, so a message
    never waits behind a much longer one (RabbitMQ expires messages at the head).
    """
    return f"{source_queue}.{RETRY_SUFFIX}.{attempt}"


def reply_queue(prefix: str, instance_id: str) -> str:
    """The exclusive per-instance queue for responses and instance-pinned commands."""
    return f"{prefix}.reply.{instance_id}"


REPLY_TO_HEADER = "replyTo"
"""PURISTA binds each reply queue on the exchange by this header; responses carry it."""


def reply_binding(queue: str) -> dict[str, Any]:
    """The binding of a reply queue on the exchange (PURISTA routes responses by it)."""
    return {"x-match": "all", REPLY_TO_HEADER: queue}


def response_headers(response: AnyMessage, reply_to: str) -> dict[str, Any]:
    """Headers of a command response: the message's, the invoker's reply queue and
    PURISTA v3's ``receiverServiceInstanceId`` (v3 responses name the invoking
    instance so; ``receiverInstanceId`` stays for subscription bindings)."""
    headers = message_headers(response)
    receiver = getattr(response, "receiver", None)
    if receiver is not None and receiver.instance_id:
        headers["receiverServiceInstanceId"] = receiver.instance_id
    headers[REPLY_TO_HEADER] = reply_to
    return headers


def message_headers(message: AnyMessage) -> dict[str, Any]:
    """The routing headers of a message, plus W3C trace context."""
    headers: dict[str, Any] = {"messageType": str(message.message_type)}
    headers.update(address_headers("sender", message.sender))
    headers.update(address_headers("receiver", getattr(message, "receiver", None)))
    for key, value in (
        ("eventName", message.event_name),
        ("principalId", message.principal_id),
        ("tenantId", message.tenant_id),
    ):
        if value:
            headers[key] = value
    carrier: dict[str, str] = telemetry.inject_headers({})
    if not carrier and message.otp:
        carrier = _otp_carrier(message.otp)
    headers.update(carrier)
    return headers


def _otp_carrier(otp: str) -> dict[str, str]:
    try:
        data = json.loads(otp)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    keys = ("traceparent", "tracestate")
    return {k: v for k, v in data.items() if k in keys and isinstance(v, str)}


def command_binding(address: Address) -> dict[str, Any]:
    """Binding arguments of a command queue on the headers exchange."""
    return {
        "x-match": "all",
        "messageType": str(MessageType.COMMAND),
        "receiverServiceName": address.service_name,
        "receiverServiceVersion": address.service_version,
        "receiverServiceTarget": address.service_target,
    }


def _filter_headers(side: str, flt: AddressFilter | None) -> dict[str, Any]:
    if flt is None:
        return {}
    out: dict[str, Any] = {}
    for part, value in (
        ("ServiceName", flt.service_name),
        ("ServiceVersion", flt.service_version),
        ("ServiceTarget", flt.service_target),
        ("InstanceId", flt.instance_id),
    ):
        if value is not None:
            out[f"{side}{part}"] = value
    return out


# Everything a subscription can receive when it names no messageType: commands
# are left out on purpose (as with the in-memory bridge), so that a catch-all
# subscription does not make every command routable and hide an unknown
# command's fast 404.
_EVENT_TYPES = tuple(
    t
    for t in MessageType
    if t is not MessageType.COMMAND and t is not MessageType.COMMAND_ERROR_RESPONSE
)


def subscription_bindings(sub: Subscription) -> list[dict[str, Any]]:
    """Binding arguments (x-match=all) expressing a subscription's filters.

    One binding when the subscription names a message type, else one per
    event-like message type. The bridge double-checks with the matcher.
    """
    common: dict[str, Any] = {"x-match": "all"}
    if sub.event_name is not None:
        common["eventName"] = sub.event_name
    if sub.principal_id is not None:
        common["principalId"] = sub.principal_id
    if sub.tenant_id is not None:
        common["tenantId"] = sub.tenant_id
    common.update(_filter_headers("sender", sub.sender))
    common.update(_filter_headers("receiver", sub.receiver))
    types = (sub.message_type,) if sub.message_type is not None else _EVENT_TYPES
    return [{**common, "messageType": str(t)} for t in types]


def attempt_of(headers: dict[str, Any] | None, header: str) -> int:
    """The delivery attempt recorded in ``header`` (1 when absent or invalid)."""
    raw = (headers or {}).get(header)
    try:
        value = int(raw.decode() if isinstance(raw, bytes) else raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1
    return max(value, 1)


def republish_headers(headers: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """Copy delivery headers for a republish, without the broker's x-death bookkeeping."""
    out = {k: v for k, v in (headers or {}).items() if k not in BROKER_DEATH_HEADERS}
    out.update(extra)
    return out
