"""The faults suite's verdict rules, without brokers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from conformance.adapters import AdapterSpec
from conformance.checks.faults.engine import expectations, judge
from conformance.checks.faults.processes import in_flight
from conformance.checks.faults.workload import Invocation, Stats
from harness.history import History, check
from reference_services.runtime.spi.capabilities import (
    EventBridgeCapabilities,
    QueueBridgeCapabilities,
    unsupported,
)


def _aut(kind: str, caps: Any) -> Any:
    spec = AdapterSpec("x", kind, None, "builtin", capabilities=caps)
    return SimpleNamespace(kind=kind, spec=spec, supports=lambda c: spec.support(c)[0])


def test_durable_manual_ack_means_no_loss() -> None:
    exp = expectations(_aut("event_bridge", EventBridgeCapabilities(delivery="at_least_once")))
    assert exp.no_loss and exp.duplicates_allowed
    h = History()
    h.sent("a")
    h.sent("b")
    h.delivered("a")
    problems = judge(check(h, allow_duplicates=True), exp, 0.1, [])
    assert problems == [
        "1 acknowledged message(s) lost (declares durable_subscriptions + "
        "manual_ack; delivery at_least_once)"
    ]


def test_loss_reported_not_failed_without_durability() -> None:
    caps = EventBridgeCapabilities(survives_broker_restart=unsupported("measured"))
    exp = expectations(_aut("event_bridge", caps), crash=True)
    assert not exp.no_loss
    h = History()
    h.sent("a")
    assert judge(check(h, allow_loss=True), exp, 0.1, []) == []


def test_duplicates_only_where_at_least_once_and_effects_once() -> None:
    exp = expectations(_aut("event_bridge", EventBridgeCapabilities(delivery="at_most_once")))
    h = History()
    h.sent("a")
    h.delivered("a")
    h.delivered("a")
    h.effect("a")
    h.effect("a")
    problems = judge(check(h), exp, 0.1, [])
    assert any("more than once (" in p for p in problems)
    assert any("side effect(s) happened more than once" in p for p in problems)


def test_queue_rules_and_missing_recovery() -> None:
    exp = expectations(_aut("queue_bridge", QueueBridgeCapabilities()))
    assert exp.no_loss and exp.duplicates_allowed
    h = History()
    h.sent("a")
    h.delivered("a")
    h.delivered("a")
    h.effect("a")
    problems = judge(check(h, allow_duplicates=True), exp, None, [])
    assert problems == ["the adapter did not serve again within 45s after the fault ended"]


def test_invocations_must_fail_with_503_504_within_ttl() -> None:
    stats = Stats(
        invocations=[
            Invocation(None, 0.1),
            Invocation(503, 0.01),
            Invocation(504, 2.05),
            Invocation(404, 0.01),
            Invocation(504, 3.5),
            Invocation(None, 9.0, hung=True),
        ]
    )
    problems = stats.invocation_problems()
    assert any("exceeded ttl" in p and "2 invocation(s)" in p for p in problems), problems
    assert any("status 404" in p for p in problems), problems
    assert stats.invocation_metrics()["outcomes"] == {
        "ok": 1,
        "503": 1,
        "504": 2,
        "404": 1,
        "hung": 1,
    }


def test_in_flight_stages() -> None:
    lines = [
        {"id": i, "ev": ev}
        for i, ev in (
            ("a", "start"),
            ("a", "effect"),
            ("a", "recorded"),
            ("a", "done"),
            ("b", "start"),
            ("b", "effect"),
            ("b", "recorded"),
            ("c", "start"),
        )
    ]
    assert in_flight(lines) == {"b", "c"}
    assert in_flight(lines, "recorded", "done") == {"b"}
    assert in_flight(lines, "start", "recorded") == {"c"}


class _NoDeliveryDeclared:
    """Capabilities of a third-party adapter that says nothing about delivery."""

    durable_subscriptions = True
    manual_ack = True
    survives_broker_restart = True


def test_no_declared_delivery_is_judged_at_most_once() -> None:
    # the SPI's own capabilities class without delivery= declares nothing too (its default
    # must not be a promise that lets duplicates through)
    for caps in (
        EventBridgeCapabilities(),
        _NoDeliveryDeclared(),
        {"durable_subscriptions": True},
        None,
    ):
        exp = expectations(_aut("event_bridge", caps))
        assert not exp.duplicates_allowed, caps
        assert "the adapter declared nothing, judged as at_most_once (no promise)" in exp.why
    h = History()
    h.sent("a")
    h.delivered("a")
    h.delivered("a")
    problems = judge(check(h), expectations(_aut("event_bridge", _NoDeliveryDeclared())), 0.1, [])
    assert problems == [
        "1 message(s) delivered more than once (declares durable_subscriptions + manual_ack; "
        "delivery: the adapter declared nothing, judged as at_most_once (no promise))"
    ]
