"""Does a message match a subscription? One function every bridge reuses."""

from __future__ import annotations

from reference_services.runtime.definitions import AddressFilter, Subscription
from reference_services.runtime.messages import Address, AnyMessage, MessageType


def _address_matches(flt: AddressFilter | None, address: Address | None) -> bool:
    if flt is None:
        return True
    if address is None:
        return False
    return all(
        want is None or want == got
        for want, got in (
            (flt.service_name, address.service_name),
            (flt.service_version, address.service_version),
            (flt.service_target, address.service_target),
            (flt.instance_id, address.instance_id),
        )
    )


def matches(subscription: Subscription, message: AnyMessage) -> bool:
    """True when every filter the subscription sets equals the message's value."""
    s = subscription
    if s.message_type is not None and message.message_type != s.message_type:
        return False
    if s.event_name is not None and message.event_name != s.event_name:
        return False
    if s.principal_id is not None and message.principal_id != s.principal_id:
        return False
    if s.tenant_id is not None and message.tenant_id != s.tenant_id:
        return False
    if not _address_matches(s.sender, message.sender):
        return False
    return _address_matches(s.receiver, getattr(message, "receiver", None))


def is_event(message: AnyMessage) -> bool:
    """Whether subscriptions may see ``message`` at all.

    Where a transport sends responses the way PURISTA does (through the exchange
    or on their 13-level topic), every response passes the subscription routes;
    only a success response that carries an event name is an event.
    """
    if message.message_type is MessageType.COMMAND_SUCCESS_RESPONSE:
        return bool(message.event_name)
    return message.message_type is not MessageType.COMMAND_ERROR_RESPONSE
