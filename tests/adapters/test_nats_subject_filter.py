"""A NATS consumer that reads the whole stream (a subscription without a message type)
settles what its filter does not select without decoding it: it must never skip an event
the subscription matches, and does skip another event's."""

from __future__ import annotations

import itertools

from reference_services.adapters.nats import subjects
from reference_services.adapters.nats.consumers import JetStreamConsumer
from reference_services.adapters.nats.event_bridge import NatsBridge
from reference_services.runtime.definitions import AddressFilter, Subscription
from reference_services.runtime.messages import (
    Address,
    Command,
    CommandSuccessResponse,
    CustomMessage,
    SenderAddress,
)
from reference_services.runtime.spi.bridge_base import RegisteredSubscription
from reference_services.runtime.spi.matcher import matches


async def _noop(_m: object) -> None:
    return None


SUBSCRIBER = Address(service_name="sub", service_version="1", service_target="onEvent")
SENDERS = [
    SenderAddress(service_name="svcA", service_version="1", service_target="fn", instance_id="i1"),
    SenderAddress(service_name="svcB", service_version="2", service_target="fnX", instance_id="i2"),
]
SUBSCRIPTIONS = [
    Subscription(subscriber=SUBSCRIBER, event_name="userAdded"),
    Subscription(subscriber=SUBSCRIBER, event_name="userAdded",
                 sender=AddressFilter(service_name="svcA")),
    Subscription(subscriber=SUBSCRIBER, sender=AddressFilter(service_name="svcB",
                                                           service_version="2")),
    Subscription(subscriber=SUBSCRIBER, principal_id="p1"),
    Subscription(subscriber=SUBSCRIBER, tenant_id="t 1"),
    Subscription(subscriber=SUBSCRIBER),
]


def _messages() -> list[object]:
    out: list[object] = []
    receiver = Address(service_name="other", service_version="1", service_target="x")
    for sender, event, principal, tenant in itertools.product(
        SENDERS, ["userAdded", "user_added", "orderPaid"], [None, "p1"], [None, "t 1"]
    ):
        out.append(CustomMessage(sender=sender, event_name=event, principal_id=principal,
                                 tenant_id=tenant, payload=1))
        command = Command(sender=sender, receiver=receiver, principal_id=principal,
                          tenant_id=tenant)
        out.append(CommandSuccessResponse(
            id=command.id, correlation_id=command.correlation_id,
            sender=SenderAddress(service_name="other", service_version="1",
                                 service_target="x", instance_id="i3"),
            receiver=sender, event_name=event, principal_id=principal, tenant_id=tenant,
        ))
    return out


def test_the_subject_check_never_skips_a_matching_event_and_skips_others() -> None:
    bridge = NatsBridge("nats://127.0.0.1:1", prefix="pfx")
    skipped = 0
    for sub in SUBSCRIPTIONS:
        consumer = JetStreamConsumer(bridge, RegisteredSubscription(sub, _noop))
        assert consumer.consumer_filter is None  # reads the whole stream
        for message in _messages():
            selected = consumer._subject_selected(subjects.message_subject("pfx", message))
            if matches(sub, message):
                assert selected, (sub, message)
            elif not selected:
                skipped += 1
    assert skipped > 100  # other events are settled without decoding


def test_a_subject_of_another_layout_is_left_to_the_body() -> None:
    bridge = NatsBridge("nats://127.0.0.1:1", prefix="pfx")
    consumer = JetStreamConsumer(bridge, RegisteredSubscription(SUBSCRIPTIONS[0], _noop))
    assert consumer._subject_selected("pfx.custom_message.something")
