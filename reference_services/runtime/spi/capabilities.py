"""What an adapter guarantees, declared so that it can be checked both ways.

Each capability is a :class:`Support`: supported, or unsupported with a reason.
The conformance suite runs a capability's checks when it is declared and, when
it is declared unsupported, records whether the adapter does better than declared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal


@dataclass(frozen=True)
class Support:
    """A declared capability: ``supported`` or not, and why not."""

    supported: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.supported


YES = Support(True)


def unsupported(reason: str) -> Support:
    """Declare a capability unsupported; the reason is mandatory."""
    if not reason:
        raise ValueError("an unsupported capability needs a reason")
    return Support(False, reason)


Delivery = Literal["at_most_once", "at_least_once"]
Numbers = Literal["exact", "safe_integers"]
"""``exact``: any integer and every finite double survive unchanged. ``safe_integers``: an
integer beyond +-(2**53 - 1) is rejected at encode with ``MessageEncodeError`` naming the
field (see :func:`reference_services.runtime.spi.numbers.reject_unsafe_integers`); finite
doubles still survive unchanged."""


@dataclass(frozen=True)
class _Capabilities:
    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view for reports."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = asdict(value) if isinstance(value, Support) else value
        return out

    def supports(self, name: str) -> bool:
        """Whether the named capability is declared supported."""
        value = getattr(self, name)
        return bool(value)


@dataclass(frozen=True)
class EventBridgeCapabilities(_Capabilities):
    """Capabilities of an event bridge.

    - ``delivery``: what a delivered subscription message is promised; None (the
      default) declares nothing, and the faults suite then judges the adapter as at most
      once (no promise: a duplicate fails) and says it declared nothing.
    - ``durable_subscriptions``: messages for a durable subscription survive
      subscriber restarts (nothing lost while no instance runs).
    - ``survives_broker_restart``: durable subscriptions lose nothing when the
      broker process is killed and restarted.
    - ``durable_commands``: commands survive a broker restart.
    - ``manual_ack``: a message is acknowledged only after its handler finished.
    - ``shared_subscriptions``: one instance per group receives each message.
    - ``shared_commands``: exactly one instance executes a command.
    - ``bounded_retry`` / ``delayed_retry``: failed handlers are redelivered
      up to ``max_attempts`` times, with a delay between attempts.
    - ``dead_letter``: exhausted messages go to the dead letter target with a reason.
    - ``native_dead_lettering``: the broker itself keeps dead letters.
    - ``unknown_command_fails_fast``: invoking an unregistered command fails
      before the ttl instead of timing out.
    - ``unknown_command_status``: the status that invoke fails with: 404 where the bridge
      knows nobody serves the command (the in-memory hub, AMQP's returned mandatory
      publish), 503 where it sees only that nobody answered (NATS "no responders", MQTT's
      missing consumer); a caller may retry a 503, not a 404. None declares nothing, and
      any of 404, 502 and 503 passes.
    - ``graceful_drain``: ``destroy`` lets in-flight handlers finish.
    - ``reconnect``: the bridge reconnects and re-registers after a broker outage.
    - ``publisher_confirms``: ``emit_message`` returns only once the broker has the message.
    - ``numbers``: how payload numbers travel (:data:`Numbers`).
    - ``per_sender_order``: the events of one sending instance reach one subscriber in the
      order they were emitted (first deliveries; a retried message may come later).
    - ``duplicate_ids_dropped``: a message whose id an instance's subscription already
      handled (among the last ``DEDUPE_WINDOW`` ids) or is handling now is acked, not run
      again (published twice with one id, or redelivered after a lost ack).
    - ``purista_wire``: on its transport the bridge speaks PURISTA v3's wire conventions
      (names, headers, subjects/topics, reply routing, envelope), so PURISTA
      TypeScript services and ours form one fleet (checks ``event_bridge.wire.purista.*``).
    - ``purista_durable_wire``: a *durable* shared subscription (persistent queue /
      JetStream consumer / session) with a PURISTA member and one of ours reaches one of
      them per event (check ``event_bridge.wire.purista.mixed_fleet_durable_subscription_once``).
    """

    # not a promise by default: an adapter that leaves it out is allowed no duplicates
    delivery: Delivery | None = None
    durable_subscriptions: Support = YES
    survives_broker_restart: Support = YES
    durable_commands: Support = field(default_factory=lambda: unsupported("not declared"))
    manual_ack: Support = YES
    shared_subscriptions: Support = YES
    shared_commands: Support = YES
    bounded_retry: Support = YES
    delayed_retry: Support = YES
    dead_letter: Support = YES
    native_dead_lettering: Support = field(default_factory=lambda: unsupported("not declared"))
    unknown_command_fails_fast: Support = YES
    unknown_command_status: int | None = None
    graceful_drain: Support = YES
    reconnect: Support = YES
    publisher_confirms: Support = YES
    per_sender_order: Support = field(default_factory=lambda: unsupported("not declared"))
    numbers: Numbers = "exact"
    duplicate_ids_dropped: Support = field(default_factory=lambda: unsupported("not declared"))
    purista_wire: Support = field(
        default_factory=lambda: unsupported("no PURISTA transport of this kind")
    )
    purista_durable_wire: Support = field(
        default_factory=lambda: unsupported("no PURISTA transport of this kind")
    )
    max_message_bytes: int | None = None


@dataclass(frozen=True)
class QueueBridgeCapabilities(_Capabilities):
    """Capabilities of a queue bridge.

    - ``durable``: jobs survive a restart of the backing service.
    - ``delayed_jobs``: ``delay_ms`` holds a job back.
    - ``priorities``: higher ``priority`` jobs are leased first.
    - ``idempotency_keys``: a duplicate key returns the original job id.
    - ``lease_recovery``: an expired lease makes the job leasable again.
    - ``blocking_lease``: ``lease_next(wait_ms=...)`` waits for work.
    - ``numbers``: how payload numbers travel (:data:`Numbers`).
    - ``fifo_within_priority``: jobs of one priority are leased in enqueue order (jobs
      never leased before; a retried job may come later).
    """

    durable: Support = YES
    delayed_jobs: Support = YES
    priorities: Support = YES
    idempotency_keys: Support = YES
    lease_recovery: Support = YES
    blocking_lease: Support = YES
    reconnect: Support = YES
    fifo_within_priority: Support = field(default_factory=lambda: unsupported("not declared"))
    numbers: Numbers = "exact"


@dataclass(frozen=True)
class StoreCapabilities(_Capabilities):
    """Capabilities of a state, config or secret store.

    - ``durable``: values survive a restart of the backing service.
    - ``set_if_absent``: an atomic create used by the idempotency helper.
    - ``ttl``: values written with a ttl disappear after it.
    - ``cache``: reads may be served from a cache (secret stores).
    - ``compare_and_set``: versioned reads and writes (``get_versioned``,
      ``create_versioned``, ``replace_if``, ``remove_if``) that fence stale writers.
    - ``atomic_effects``: ``replace_if(..., also=...)`` commits the record and the
      extra writes as one unit (an effect's state writes and its "done" record).
    - ``numbers``: how stored numbers travel (:data:`Numbers`).
    """

    durable: Support = YES
    set_if_absent: Support = YES
    ttl: Support = YES
    cache: Support = field(default_factory=lambda: unsupported("no cache"))
    compare_and_set: Support = field(default_factory=lambda: unsupported("not declared"))
    atomic_effects: Support = field(default_factory=lambda: unsupported("not declared"))
    numbers: Numbers = "exact"
