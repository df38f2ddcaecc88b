"""Service process faults: the workload service as real OS processes, SIGTERM and SIGKILL.

Two instances of ``reference_services.deploy.faultwork`` (same prefix, same
broker, a Redis state store for the idempotency helper) consume what the
check's producers send. One instance is signalled mid-stream; afterwards it is
started again with the same instance id (so a persistent session comes back).
The history is rebuilt from the instances' append-only logs: ``start`` =
delivered, ``effect`` = side effect, ``done`` = acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from conformance.adapters import (
    PROCESS_BACKEND,
    REFERENCE_ADAPTER,
    process_backend_urls,
    subprocess_env,
)
from conformance.checks.faults.workload import adapter_options, new_instance, send_work
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.workdirs import workdir
from harness import run as harness_run
from harness.faults import process as pfaults
from harness.history import History
from reference_services.runtime.ids import new_id

READY_TIMEOUT_S = 40.0
SHUTDOWN_TIMEOUT_S = 10.0
HANDLER_DELAY_MS = 300
PRODUCER_INTERVAL_S = 0.12

SELECTOR_VARS = {"event_bridge": "EVENT_BRIDGE", "queue_bridge": "QUEUE_BRIDGE"}


def deployable(aut: AdapterUnderTest) -> bool:
    """Whether the deployment bootstrap can run this adapter in service processes
    (its descriptor says so)."""
    spec = aut.spec
    return bool(
        spec.deployable
        and spec.kind in SELECTOR_VARS
        and spec.services
        and spec.url_var
        and spec.selector
    )


def _jsonable(opts: dict[str, Any]) -> dict[str, Any]:
    return {
        k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v  # type: ignore[arg-type]
        for k, v in opts.items()
    }


def _open_log(path: Path) -> Any:
    return path.open("wb")


class ServiceProcess:
    """One faultwork process: start (wait for READY), signal, wait for its exit."""

    def __init__(self, label: str, env: dict[str, str], workdir: Path) -> None:
        self.label = label
        self.instance_id = new_id()
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{label}.jsonl"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        """Start the process and wait for its READY line."""
        env = subprocess_env(
            {
                **self.env,
                "FAULTWORK_INSTANCE_ID": self.instance_id,
                "SERVICE_CONFIG_LOG": str(self.log_path),
            }
        )
        self.starts += 1
        err = _open_log(self.workdir / f"{self.label}.{self.starts}.stderr")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reference_services.deploy.faultwork",
            env=harness_run.child_env(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            preexec_fn=harness_run.child_preexec(),  # own session, dies with the runner
        )
        harness_run.current().track(self.proc.pid)
        err.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), max(left, 0.01))
            except TimeoutError:
                raise AssertionError(
                    f"{self.label} not READY within {READY_TIMEOUT_S}s; see {self.workdir}"
                ) from None
            if not line:
                raise AssertionError(
                    f"{self.label} exited before READY "
                    f"(code {await self.proc.wait()}); see {self.workdir}"
                )
            if line.startswith(b"READY"):
                return

    def signal(self, sig: int) -> None:
        """Signal the process group (SIGKILL, SIGTERM)."""
        assert self.proc is not None
        pfaults.signal_group(self.proc.pid, sig)

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code, or None if still running after ``timeout_s``."""
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            return None

    async def stop(self) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not end."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGTERM)
        code = await self.wait_exit(SHUTDOWN_TIMEOUT_S + 5)
        if code is None:
            self.signal(signal.SIGKILL)
            code = await self.wait_exit(5)
        return code

    def lines(self) -> list[dict[str, Any]]:
        """Every complete log line so far."""
        try:
            raw = self.log_path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for text in raw.splitlines():
            try:
                out.append(json.loads(text))
            except ValueError:
                continue  # a line cut by SIGKILL
        return out


def in_flight(lines: list[dict[str, Any]], since: str = "start", until: str = "done") -> set[str]:
    """Ids that reached ``since`` but not ``until`` in one process's log.

    Stages: ``start`` -> ``effect`` -> ``recorded`` (the idempotency helper marked the
    effect done) -> ``done`` (the handler returns and the message is acked).
    """
    reached = {ln["id"] for ln in lines if ln["ev"] == since}
    passed = {ln["id"] for ln in lines if ln["ev"] == until}
    return reached - passed


class ProcessDeployment:
    """Two service processes plus in-process producers, with the recorded history."""

    def __init__(self, aut: AdapterUnderTest, *, idempotent: bool = True):
        self.aut = aut
        self.workdir = workdir("cf-faults-")
        spec = aut.spec
        url = aut.ctx.url(spec.services[0])
        env = {
            "EVENT_BRIDGE": REFERENCE_ADAPTER,
            "QUEUE_BRIDGE": REFERENCE_ADAPTER,
            "STORE": PROCESS_BACKEND,
            **process_backend_urls(aut.ctx.url),
            str(spec.url_var): url,
            SELECTOR_VARS[spec.kind]: str(spec.selector),
            "PURISTA_PREFIX": aut.ctx.prefix,
            "SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
            "SERVICE_CONFIG_DELAY_MS": str(HANDLER_DELAY_MS),
            "SERVICE_CONFIG_IDEMPOTENT": "true" if idempotent else "false",
            "SERVICE_CONFIG_CLAIM_TTL_S": "5",
        }
        opts = json.dumps(_jsonable(adapter_options(aut)))
        env["FAULTWORK_EVENT_OPTS" if aut.kind == "event_bridge" else "FAULTWORK_QUEUE_OPTS"] = opts
        self.procs = [ServiceProcess(f"svc{i}", env, self.workdir) for i in range(2)]
        self.sent: list[tuple[str, str]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.emit_errors = 0

    async def start(self) -> None:
        """Start both processes and two producers."""
        await asyncio.gather(*(p.start() for p in self.procs))
        producers = [await new_instance(self.aut, None) for _ in range(2)]
        for i, bridge in enumerate(producers):
            self._tasks.append(asyncio.ensure_future(self._produce(f"p{i}", bridge)))

    async def _produce(self, label: str, bridge: Any) -> None:
        n = 0
        while not self._stop.is_set():
            msg_id = f"{label}-{n}"
            n += 1
            try:
                await asyncio.wait_for(send_work(bridge, self.aut.kind, msg_id), 8.0)
                self.sent.append((msg_id, "ok"))
            except Exception:
                self.emit_errors += 1
                self.sent.append((msg_id, "unknown"))
            try:
                await asyncio.wait_for(self._stop.wait(), PRODUCER_INTERVAL_S)
            except TimeoutError:
                pass

    async def stop_producers(self) -> None:
        """Stop sending."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def all_lines(self) -> list[dict[str, Any]]:
        """The lines of both processes, in time order."""
        return sorted((ln for p in self.procs for ln in p.lines()), key=lambda ln: ln["t"])

    def all_done(self) -> bool:
        """Every acknowledged send was handled to the end by some instance."""
        done = {ln["id"] for ln in self.all_lines() if ln["ev"] == "done"}
        return all(m in done for m, outcome in self.sent if outcome == "ok")

    def progress(self) -> int:
        """Log lines so far."""
        return len(self.all_lines())

    def first_done_after(self, t_wall: float) -> float | None:
        """Wall time of the first ``done`` after ``t_wall``."""
        times = [ln["t"] for ln in self.all_lines() if ln["ev"] == "done" and ln["t"] > t_wall]
        return min(times) if times else None

    def history(self) -> History:
        """The recorded history: sends, then deliveries/effects/acks from the logs."""
        h = History()
        for msg_id, outcome in self.sent:
            h.sent(msg_id, outcome)  # type: ignore[arg-type]
        for ln in self.all_lines():
            if ln["ev"] == "start":
                h.delivered(ln["id"], consumer=ln["inst"][:8])
            elif ln["ev"] == "effect":
                h.effect(ln["id"], consumer=ln["inst"][:8])
            elif ln["ev"] == "done":
                h.acknowledged(ln["id"])
        return h

    async def close(self) -> None:
        """Stop producers and every process."""
        await self.stop_producers()
        await asyncio.gather(*(p.stop() for p in self.procs), return_exceptions=True)
