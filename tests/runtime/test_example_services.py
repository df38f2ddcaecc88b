"""The example services' business behaviour on the in-memory adapters."""

from __future__ import annotations

import asyncio

import pytest

from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub
from reference_services.adapters.memory.queue_bridge import DefaultQueueBridge
from reference_services.adapters.memory.stores import DefaultConfigStore, DefaultStateStore
from reference_services.runtime.codec import encode
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.messages import CustomMessage
from reference_services.services import billing_v1, email_v1, sensor_v1, user_v1
from reference_services.services.billing import INVOICE_QUEUE

from .helpers import command, wait_for


@pytest.fixture
async def stack():
    hub = MemoryHub()
    bridge = DefaultEventBridge(hub)
    await bridge.start()
    state = DefaultStateStore()
    queue = DefaultQueueBridge()
    await queue.start()
    yield bridge, state, queue
    await bridge.destroy()
    await queue.destroy()


async def _sent_mail(state: DefaultStateStore, user_id: str) -> object:
    key = f"email:sent:{user_id}"
    return (await state.get(key))[key]


async def test_sign_up_sends_one_welcome_email_even_when_the_event_arrives_twice(stack) -> None:
    bridge, state, _queue = stack
    welcomed: list[CustomMessage] = []
    watcher = DefaultEventBridge(bridge.hub)
    await watcher.start()
    from reference_services.runtime.definitions import Subscription
    from reference_services.runtime.messages import Address

    async def on_welcome(msg):
        welcomed.append(msg)

    await watcher.register_subscription(
        Subscription(
            subscriber=Address(service_name="t", service_version="1", service_target="w"),
            event_name="welcomeEmailSent",
        ),
        on_welcome,
    )
    # two email instances (one per bridge) sharing the state store: a real race for the effect
    other = DefaultEventBridge(bridge.hub)
    await other.start()
    users = user_v1.get_instance(bridge, state_store=state)
    mail_a = email_v1.get_instance(bridge, state_store=state)
    mail_b = email_v1.get_instance(other, state_store=state)
    for svc in (users, mail_a, mail_b):
        await svc.start()

    user = await bridge.invoke(
        command("user", "signUp", {"email": "ada@example.org", "name": "Ada"})
    )
    await wait_for(lambda: len(welcomed) == 1, what="the first welcome")
    # the same userSignedUp delivered again, to both instances at once
    duplicate = CustomMessage(sender=welcomed[0].sender, event_name="userSignedUp", payload=user)
    raw = encode(duplicate)
    bridge.receive_raw(raw)
    bridge.receive_raw(raw)
    await wait_for(lambda: len(welcomed) == 3, what="redelivered events handled")
    mail = await _sent_mail(state, user["user_id"])
    assert mail == {"to": "ada@example.org", "subject": "Welcome, Ada", "user_id": user["user_id"]}
    assert await mail_a.idempotency.was_done(f"welcome:{user['user_id']}")
    sent_keys = [k for k in state.kv.data if k.startswith("email:sent:")]
    assert sent_keys == [f"email:sent:{user['user_id']}"]
    with pytest.raises(PuristaError) as info:
        await bridge.invoke(command("user", "signUp", {"email": "ada@example.org", "name": "Ada"}))
    assert info.value.status == 409
    found = await bridge.invoke(command("user", "getUser", None, {"user_id": user["user_id"]}))
    assert found == user
    with pytest.raises(PuristaError) as info:
        await bridge.invoke(command("user", "getUser", None, {"user_id": "nobody"}))
    assert info.value.status == 404
    await watcher.destroy()
    await other.destroy()


async def test_email_effect_happens_once_under_concurrent_duplicates(stack) -> None:
    bridge, state, _queue = stack
    mail = email_v1.get_instance(bridge, state_store=state)
    await mail.start()
    writes: list[str] = []
    original_set = state.set

    async def counting_set(name, value):
        if name.startswith("email:sent:"):
            writes.append(name)
        await original_set(name, value)

    state.set = counting_set  # type: ignore[method-assign]
    from .helpers import CALLER

    payload = {"user_id": "u1", "email": "u1@example.org", "name": "U"}
    raw = encode(CustomMessage(sender=CALLER, event_name="userSignedUp", payload=payload))
    for _ in range(20):
        bridge.receive_raw(raw)
    await wait_for(lambda: bridge.inflight == 0 and len(writes) >= 1)
    assert writes == ["email:sent:u1"]


async def test_reading_over_threshold_emits_threshold_exceeded(stack) -> None:
    bridge, state, _queue = stack
    config = DefaultConfigStore(initial={"threshold": 30})
    sensor = sensor_v1.get_instance(bridge, state_store=state, config_store=config)
    await sensor.start()
    alerts: list[object] = []
    from reference_services.runtime.definitions import Subscription
    from reference_services.runtime.messages import Address

    async def on_alert(msg):
        alerts.append(msg.payload)

    await bridge.register_subscription(
        Subscription(
            subscriber=Address(service_name="ops", service_version="1", service_target="alerts"),
            event_name="thresholdExceeded",
        ),
        on_alert,
    )
    low = await bridge.invoke(
        command("sensor", "recordReading", {"sensor_id": "s1", "value": 12.5})
    )
    high = await bridge.invoke(command("sensor", "recordReading", {"sensor_id": "s1", "value": 31}))
    assert (low["exceeded"], high["exceeded"]) == (False, True)
    await wait_for(lambda: len(alerts) == 1)
    assert alerts == [{"sensor_id": "s1", "value": 31.0, "threshold": 30.0}]
    assert (await state.get("sensor:last:s1"))["sensor:last:s1"] == {
        "sensor_id": "s1",
        "value": 31.0,
    }


async def test_invoice_failing_past_max_attempts_lands_in_the_dead_letter(stack) -> None:
    bridge, state, queue = stack
    from reference_services.adapters.memory.stores import DefaultSecretStore
    from reference_services.services.billing import GATEWAY_TOKEN_SECRET

    secret = DefaultSecretStore(initial={GATEWAY_TOKEN_SECRET: "tok-test"})
    await secret.start()
    billing = billing_v1.get_instance(
        bridge,
        state_store=state,
        secret_store=secret,
        queue_bridge=queue,
        config={"gateway_blocked_customers": ("acme",)},
    )
    await billing.start()
    ok = await bridge.invoke(
        command(
            "billing",
            "requestInvoice",
            {"invoice_id": "i1", "customer": "bob", "amount_cents": 100},
        )
    )
    again = await bridge.invoke(
        command(
            "billing",
            "requestInvoice",
            {"invoice_id": "i1", "customer": "bob", "amount_cents": 100},
        )
    )
    assert ok == again  # idempotency key: the original job id
    await bridge.invoke(
        command(
            "billing",
            "requestInvoice",
            {"invoice_id": "i2", "customer": "acme", "amount_cents": 100},
        )
    )
    await bridge.invoke(
        command(
            "billing", "requestInvoice", {"invoice_id": "i3", "customer": "bob", "amount_cents": -5}
        )
    )

    async def dead() -> list:
        return await queue.peek_dead_letter(INVOICE_QUEUE)

    letters: list = []
    for _ in range(400):
        letters = await dead()
        if len(letters) == 2:
            break
        await asyncio.sleep(0.01)
    by_invoice = {d.payload["invoice_id"]: d for d in letters}
    assert set(by_invoice) == {"i2", "i3"}
    assert by_invoice["i2"].attempts == 3
    assert "payment gateway refused customer acme" in by_invoice["i2"].reason
    assert by_invoice["i3"].attempts == 1  # handled error: dead-lettered at once, never retried
    issued = (await state.get("invoice:i1"))["invoice:i1"]
    assert issued["status"] == "issued"
    metrics = await queue.metrics(INVOICE_QUEUE)
    assert (metrics.pending, metrics.inflight, metrics.dead_letter) == (0, 0, 2)
    await billing.destroy()
