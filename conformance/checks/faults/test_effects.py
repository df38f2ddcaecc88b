"""State-store effects under SIGKILL: the owner killed between its effect and the "done"
record, on stores that declare ``atomic_effects``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conformance.adapters import subprocess_env
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for
from conformance.kit.workdirs import workdir
from reference_services.deploy.effectwork import COUNTER
from reference_services.runtime.ids import new_id

WINDOW_MS = 1500
CLAIM_TTL_S = 1.0
MODE_ENV = "CF_EFFECT_MODE"  # "external": the effect writes outside the commit (self-test)


def _spawn(key: str, env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "reference_services.deploy.effectwork", key],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    out = []
    for raw in log.read_text().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue  # a line cut by the kill
    return out


@check(
    "faults.service.sigkill_inside_effect_window",
    kinds=("state_store",),
    needs=("compare_and_set", "atomic_effects"),
    exercises=("atomic_effects", "compare_and_set", "ttl"),
)
async def test_sigkill_inside_effect_window(aut: AdapterUnderTest, faults_services: Any) -> None:
    """Processes each run one counter increment through the idempotency helper's atomic
    effects; each is SIGKILLed after its effect, before the done record (inside the window
    the helper cannot close for external effects). A second process per key takes the
    expired claim over and commits: every counter ends at exactly 1."""
    spec = aut.spec
    if not (spec.deployable and spec.selector and spec.url_var and spec.services):
        pytest.skip("the adapter's descriptor does not declare it deployable in a process")
    work = workdir("cf-effects-")
    log = work / "effects.log"
    env = subprocess_env(
        {
            "STORE": str(spec.selector),
            str(spec.url_var): aut.ctx.url(spec.services[0]),
            "PURISTA_PREFIX": aut.ctx.prefix,
            "EFFECTWORK_LOG": str(log),
            "EFFECTWORK_WINDOW_MS": str(WINDOW_MS),
            "EFFECTWORK_CLAIM_TTL_S": str(CLAIM_TTL_S),
            "EFFECTWORK_MODE": os.environ.get(MODE_ENV, "atomic"),
        }
    )
    keys = [f"k{i}-{new_id()[:8]}" for i in range(aut.n(6, minimum=3))]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        victims = {key: _spawn(key, env, work / f"{key}.victim.out") for key in keys}
        procs += victims.values()

        killed: set[str] = set()

        def kill_inside_window() -> bool:
            """SIGKILL each owner as soon as its effect ran (its window has just begun)."""
            pids = {(ln["id"], ln["pid"]) for ln in _lines(log) if ln["ev"] == "effect"}
            for key, proc in victims.items():
                if key not in killed and (key, proc.pid) in pids:
                    proc.send_signal(signal.SIGKILL)
                    killed.add(key)
            return len(killed) == len(victims)

        assert await wait_for(kill_inside_window, 30.0, interval_s=0.005), (
            f"owners of {sorted(set(keys) - killed)} never reached their effect (logs: {work})"
        )
        for proc in victims.values():
            await asyncio.to_thread(proc.wait, 10)
        recorded_by_victims = {
            ln["id"]
            for ln in _lines(log)
            if ln["ev"] == "recorded" and ln["pid"] in {p.pid for p in victims.values()}
        }
        assert not recorded_by_victims, f"killed too late (after the record): {recorded_by_victims}"
        successors = {key: _spawn(key, env, work / f"{key}.successor.out") for key in keys}
        procs += successors.values()
        codes = {key: await asyncio.to_thread(p.wait, 60) for key, p in successors.items()}
        assert all(c == 0 for c in codes.values()), f"successor exit codes {codes} (logs: {work})"
        store = await aut.new()
        names = [COUNTER.format(key=key) for key in keys]
        counters = await store.get(*names)
        effects = [ln for ln in _lines(log) if ln["ev"] == "effect"]
        aut.metric("keys", len(keys))
        aut.metric("effect_attempts", len(effects))
        aut.metric("committed", {n.rsplit(":", 1)[-1]: v for n, v in counters.items()})
        wrong = {n: v for n, v in counters.items() if v != 1}
        assert not wrong, f"effects committed other than once: {wrong} (logs: {work})"
        shutil.rmtree(work, ignore_errors=True)  # kept only when the check fails
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        await aut.close()
