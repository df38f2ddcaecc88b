"""Model-based: random operation sequences agree with the in-memory reference bridge."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conformance.kit import addr, command, event, responder, subscription
from conformance.kit.hyp import session, settings_for
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub
from reference_services.runtime.errors import PuristaError

EB = ("event_bridge",)
INSTANCES = 2
# service index -> (event it listens to, shared)
SERVICES = {0: ("e0", True), 1: ("e1", False), 2: ("e0", True)}
COMMANDS = 2
UNAVAILABLE = {404, 502, 503, 504}

Key = tuple[Any, ...]


class Side:
    """Two instances of one bridge implementation and what they delivered."""

    def __init__(self, bridges: list[Any]) -> None:
        self.bridges = bridges
        self.deliveries: Counter[Key] = Counter()

    def handler(self, inst: int, svc: int, shared: bool) -> Any:

        async def on(msg: Any) -> None:
            key: Key = (svc, msg.payload["pid"]) if shared else (inst, svc, msg.payload["pid"])
            self.deliveries[key] += 1

        return on

    async def invoke(self, inst: int, cmd: int, payload: Any) -> tuple[Any, ...]:
        bridge = self.bridges[inst]
        try:
            result = await bridge.invoke(command(bridge, addr(f"cmd{cmd}"), payload), 0.5)
        except PuristaError as exc:
            return ("unavailable",) if exc.status in UNAVAILABLE else ("error", exc.status)
        return ("ok", result)


def _machine(aut: AdapterUnderTest, runner: asyncio.Runner) -> type[RuleBasedStateMachine]:
    # what the adapter declares unsupported is not exercised here (its own checks do that)
    shared_subs = aut.supports("shared_subscriptions")
    shared_cmds = aut.supports("shared_commands")
    services = {svc: (name, shared and shared_subs) for svc, (name, shared) in SERVICES.items()}
    # conformance_reconnect() is an optional hook; whether it was used is in the report
    reconnect = all(callable(getattr(b, "conformance_reconnect", None)) for b in [aut.build()])
    aut.instances.clear()
    aut.metric("model_interleaves_reconnects", reconnect)

    class AgreesWithReference(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            aut.ctx = replace(aut.ctx, prefix=f"cf{uuid.uuid4().hex[:10]}", shared={})
            hub = MemoryHub()

            async def build() -> tuple[Side, Side]:
                adapter = Side([await aut.new() for _ in range(INSTANCES)])
                refs = [DefaultEventBridge(hub=hub) for _ in range(INSTANCES)]
                for r in refs:
                    await r.start()
                return adapter, Side(refs)

            self.adapter, self.reference = runner.run(build())
            self.subs: set[tuple[int, int]] = set()
            self.cmds: set[tuple[int, int]] = set()
            self.eligible: set[Key] = set()
            self.pid = 0

        @initialize()
        def start(self) -> None:
            pass

        def _both(self, fn: Any) -> None:
            async def go() -> None:
                for side in (self.adapter, self.reference):
                    await fn(side)

            runner.run(go())

        @rule(inst=st.integers(0, INSTANCES - 1), svc=st.sampled_from(sorted(SERVICES)))
        def register_subscription(self, inst: int, svc: int) -> None:
            if (inst, svc) in self.subs:
                return
            name, shared = services[svc]
            sub = subscription(f"svc{svc}", event_name=name, shared=shared, durable=False)
            self._both(
                lambda side: side.bridges[inst].register_subscription(
                    sub, side.handler(inst, svc, shared)
                )
            )
            self.subs.add((inst, svc))

        @precondition(lambda self: bool(self.subs))
        @rule(data=st.data())
        def unregister_subscription(self, data: st.DataObject) -> None:
            inst, svc = data.draw(st.sampled_from(sorted(self.subs)))
            self._both(
                lambda side: side.bridges[inst].unregister_subscription(
                    addr(f"svc{svc}", target="on")
                )
            )
            self.subs.discard((inst, svc))

        @rule(inst=st.integers(0, INSTANCES - 1), cmd=st.integers(0, COMMANDS - 1))
        def register_command(self, inst: int, cmd: int) -> None:
            if (inst, cmd) in self.cmds:
                return
            if not shared_cmds and any(c == cmd for _, c in self.cmds):
                return

            async def answer(c: Any) -> Any:
                return {"cmd": cmd, "echo": c.payload.payload}

            self._both(
                lambda side: side.bridges[inst].register_command(
                    addr(f"cmd{cmd}"), responder(answer)
                )
            )
            self.cmds.add((inst, cmd))

        @precondition(lambda self: bool(self.cmds))
        @rule(data=st.data())
        def unregister_command(self, data: st.DataObject) -> None:
            inst, cmd = data.draw(st.sampled_from(sorted(self.cmds)))
            self._both(lambda side: side.bridges[inst].unregister_command(addr(f"cmd{cmd}")))
            self.cmds.discard((inst, cmd))

        @rule(
            inst=st.integers(0, INSTANCES - 1),
            ev=st.sampled_from(["e0", "e1", "e2"]),
            count=st.integers(1, 3),
        )
        def emit(self, inst: int, ev: str, count: int) -> None:
            pids = []
            for _ in range(count):
                self.pid += 1
                pids.append(self.pid)
                for svc, (name, shared) in services.items():
                    holders = [i for i, s in self.subs if s == svc]
                    if name != ev or not holders:
                        continue
                    if shared:
                        self.eligible.add((svc, self.pid))
                    else:
                        self.eligible.update((i, svc, self.pid) for i in holders)

            async def send(side: Side) -> None:
                bridge = side.bridges[inst]
                for pid in pids:
                    await bridge.emit_message(event(bridge, ev, {"pid": pid}))

            self._both(send)
            runner.run(self._settle())

        async def _settle(self) -> None:
            await wait_quiet(lambda: sum(self.reference.deliveries.values()), quiet_s=0.02)
            want = +self.reference.deliveries
            await wait_for(
                lambda: all(self.adapter.deliveries[k] >= n for k, n in want.items()),
                5,
                progress=lambda: sum(self.adapter.deliveries.values()),
            )

        @rule(
            inst=st.integers(0, INSTANCES - 1),
            cmd=st.integers(0, COMMANDS - 1),
            payload=st.integers(0, 1000),
        )
        def invoke(self, inst: int, cmd: int, payload: int) -> None:
            async def both() -> tuple[Any, Any]:
                return (
                    await self.adapter.invoke(inst, cmd, payload),
                    await self.reference.invoke(inst, cmd, payload),
                )

            got, want = runner.run(both())
            assert got == want, (
                f"invoke cmd{cmd} from instance {inst} (served by "
                f"{sorted(self.cmds)}): adapter {got!r}, reference {want!r}"
            )

        if reconnect:

            @rule(inst=st.integers(0, INSTANCES - 1))
            def reconnect_instance(self, inst: int) -> None:
                runner.run(self.adapter.bridges[inst].conformance_reconnect())

        def teardown(self) -> None:
            async def finish() -> None:
                await wait_quiet(lambda: sum(self.adapter.deliveries.values()), quiet_s=0.15)
                for b in self.reference.bridges:
                    await b.destroy()
                await aut.close()

            try:
                runner.run(finish())
                got = Counter(
                    {k: n for k, n in self.adapter.deliveries.items() if k in self.eligible}
                )
                want = Counter(
                    {k: n for k, n in self.reference.deliveries.items() if k in self.eligible}
                )
                late = sum(n for k, n in self.adapter.deliveries.items() if k not in self.eligible)
                if late:
                    aut.observations["late_subscriber_deliveries"] = (
                        aut.observations.get("late_subscriber_deliveries", 0) + late
                    )
                assert got == want, (
                    f"deliveries disagree: missing {dict(want - got)}, extra {dict(got - want)}"
                )
                missing_ref = {k for k in self.eligible if k not in want}
                assert not missing_ref, f"the reference itself missed {sorted(missing_ref)[:10]}"
            finally:
                aut.instances.clear()

    return AgreesWithReference


@check("event_bridge.model.agrees_with_reference", kinds=EB)
def test_agrees_with_reference(cf_aut: AdapterUnderTest) -> None:
    """Stateful property: random register/unregister/emit/invoke (and reconnect where the
    adapter offers ``conformance_reconnect``) sequences deliver what the reference delivers."""
    with session(cf_aut) as runner:
        machine = _machine(cf_aut, runner)
        base = settings_for(cf_aut, memory=25, broker=8)
        # shrinking and explaining re-run sequences against a real broker for minutes
        phases = (
            base.phases
            if cf_aut.is_reference
            else tuple(p for p in base.phases if p not in (Phase.shrink, Phase.explain))
        )
        run_state_machine_as_test(
            machine, settings=settings(base, stateful_step_count=12, phases=phases)
        )
