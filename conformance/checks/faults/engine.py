"""Running one fault against a workload and judging the history by the adapter's capabilities.

Timeline: warm up (the adapter serves), traffic, the fault held for its
duration, the fault removed, recovery measured (time until a probe through the
faulted instance succeeds again), more traffic, producers stopped, then the
history settles (every acknowledged send delivered, or a deadline) and is
classified by ``harness.history.check``.

Rules from capabilities:
- lost = 0 when the adapter declares the durability this fault needs
  (event bridge: ``durable_subscriptions`` + ``manual_ack``, plus
  ``survives_broker_restart`` for a broker crash; queue bridge: ``durable``);
- duplicates only where delivery is declared at-least-once (queues always are; an
  event bridge that declares no delivery is judged at most once: no promise), and
  then every side effect exactly once (through the idempotency helper);
- nothing unexpected;
- invocations fail with 503/504 within ttl + margin, or succeed; never hang;
- the adapter serves again after the fault (``recovery_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from harness.history import Verdict

WARMUP_S = 20.0
PRE_S = 0.8
POST_S = 0.8
RECOVERY_DEADLINE_S = 45.0
SETTLE_S = 30.0
QUIET_S = 0.5

FaultCM = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class Fault:
    """A fault: active inside ``active()``, held for ``hold_s`` seconds."""

    name: str
    hold_s: float
    active: FaultCM
    crash: bool = False  # the broker process dies (needs survives_broker_restart)


@dataclass(frozen=True)
class Expectations:
    """What the adapter's capabilities promise under this fault."""

    no_loss: bool
    duplicates_allowed: bool
    why: str


def expectations(aut: AdapterUnderTest, crash: bool = False, drain: bool = False) -> Expectations:
    """The verdict rules for ``aut`` (see the module docstring)."""
    caps = aut.spec.capabilities
    if aut.kind == "queue_bridge":
        durable = aut.supports("durable")
        return Expectations(
            durable,
            True,
            "queue bridge: durable"
            if durable
            else "queue bridge: not durable (loss reported, not failed)",
        )
    needs = ["durable_subscriptions", "manual_ack"]
    if crash:
        needs.append("survives_broker_restart")
    if drain:
        needs.append("graceful_drain")
    missing = [n for n in needs if not aut.supports(n)]
    declared = declared_delivery(caps)
    why = (
        ("declares " + " + ".join(needs))
        if not missing
        else ("does not declare " + ", ".join(missing) + " (loss reported, not failed)")
    )
    if declared is None:
        return Expectations(
            not missing,
            False,
            f"{why}; delivery: the adapter declared nothing, judged as {NO_PROMISE} (no promise)",
        )
    return Expectations(not missing, declared == "at_least_once", f"{why}; delivery {declared}")


NO_PROMISE = "at_most_once"


def declared_delivery(caps: Any) -> str | None:
    """The ``delivery`` the adapter declares, or None when it declares nothing."""
    if isinstance(caps, Mapping):
        value = caps.get("delivery")
    elif caps is not None and hasattr(caps, "delivery"):
        value = caps.delivery
    else:
        value = None
    return str(value) if value else None


async def measure_recovery(
    probe: Callable[[], Any], since: float, deadline_s: float = RECOVERY_DEADLINE_S
) -> float | None:
    """Seconds from ``since`` until ``probe()`` first succeeds; None if it never does."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if await probe():
            return time.monotonic() - since
        await asyncio.sleep(0.05)  # probe cadence
    return None


def record(
    aut: AdapterUnderTest,
    fault: str,
    verdict: Verdict,
    recovery_s: float | None,
    extra: dict[str, Any],
) -> None:
    """Put the report metrics of one fault run on the adapter under test."""
    d = verdict.to_dict()
    aut.metric("fault", fault)
    aut.metric("published", d["published"])
    aut.metric("acknowledged", d["published_ok"])
    aut.metric("delivered", d["delivered_distinct"])
    aut.metric("deliveries", d["delivered"])
    aut.metric("lost", d["lost"])
    aut.metric("duplicated", d["duplicated"])
    aut.metric("unexpected", d["unexpected"])
    aut.metric("recovered", d["recovered"])
    aut.metric("indeterminate", d["indeterminate"])
    aut.metric("effects", d["effects"])
    aut.metric("effects_duplicated", d["effect_duplicated"])
    aut.metric("recovery_s", None if recovery_s is None else round(recovery_s, 3))
    for key, value in extra.items():
        aut.metric(key, value)
    if d.get("ids"):
        aut.observe("ids", {k: v[:10] for k, v in d["ids"].items()})


def judge(
    verdict: Verdict, exp: Expectations, recovery_s: float | None, extra_problems: list[str]
) -> list[str]:
    """Every broken promise, as readable lines (empty: the check passes)."""
    problems = list(extra_problems)
    if verdict.lost and exp.no_loss:
        problems.append(f"{verdict.lost} acknowledged message(s) lost ({exp.why})")
    if verdict.duplicated and not exp.duplicates_allowed:
        problems.append(f"{verdict.duplicated} message(s) delivered more than once ({exp.why})")
    if verdict.unexpected:
        problems.append(f"{verdict.unexpected} unexpected message(s)")
    if verdict.effect_duplicated:
        problems.append(
            f"{len(verdict.effect_duplicated)} side effect(s) happened more than "
            "once despite the idempotency helper"
        )
    if recovery_s is None:
        problems.append(
            f"the adapter did not serve again within {RECOVERY_DEADLINE_S:.0f}s "
            "after the fault ended"
        )
    return problems


async def run_fault(
    aut: AdapterUnderTest, workload: Any, fault: Fault, crash: bool = False
) -> None:
    """Run ``fault`` under ``workload``, record metrics on ``aut``, assert the promises."""
    from harness.history import check

    await workload.setup()
    if not await wait_for_async(workload.probe, WARMUP_S):
        raise AssertionError(f"the adapter never served before the fault ({WARMUP_S:.0f}s)")
    workload.start()
    recovery_s: float | None = None
    try:
        await asyncio.sleep(PRE_S)  # traffic before the fault
        started = time.monotonic()
        async with fault.active():
            await asyncio.sleep(fault.hold_s)  # the fault itself
        ended = time.monotonic()
        recovery_s = await measure_recovery(workload.probe, ended)
        await asyncio.sleep(POST_S)  # traffic after recovery
    finally:
        await workload.stop_producers()
    await wait_for(workload.all_delivered, SETTLE_S, interval_s=0.05)
    await wait_quiet(workload.progress, quiet_s=QUIET_S, timeout_s=10.0)
    await workload.close()
    exp = expectations(aut, crash=crash or fault.crash)
    verdict = check(
        workload.history, allow_duplicates=exp.duplicates_allowed, allow_loss=not exp.no_loss
    )
    stats = workload.stats
    extra: dict[str, Any] = {
        "hold_s": fault.hold_s,
        "fault_s": round(ended - started, 3),
        "max_emit_s": round(stats.max_emit_s, 3),
        "emit_errors": stats.emit_errors,
    }
    if stats.invocations:
        extra["invocations"] = stats.invocation_metrics()
    extra["delivery_declared"] = declared_delivery(aut.spec.capabilities) or (
        f"nothing (judged {NO_PROMISE})"
    )
    record(aut, fault.name, verdict, recovery_s, extra)
    problems = judge(verdict, exp, recovery_s, stats.invocation_problems())
    assert not problems, f"{fault.name}: " + "; ".join(problems) + "\n" + verdict.format()


async def wait_for_async(probe: Callable[[], Any], timeout_s: float) -> bool:
    """Poll an async predicate until it holds or ``timeout_s`` passes."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if await probe():
            return True
        await asyncio.sleep(0.05)
    return False


@contextlib.asynccontextmanager
async def nothing() -> AsyncIterator[None]:
    """No fault (a control run)."""
    yield
