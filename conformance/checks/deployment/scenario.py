"""The deployment suite's scenario, its patterns, and the normalised trace they must share.

One business scenario (sign-ups with a welcome e-mail, a duplicate and bad
sign-up, look-ups, sensor readings over and under the threshold, invoices that
succeed, fail past max attempts, or are rejected) runs in each deployment
pattern. What a user can observe is reduced to a *normalised trace*: command
outcomes (status and body, random job ids replaced by their order of first
appearance), the distinct events seen, the business state in the state store
and the queue's dead letters. Every pattern must give the monolith's trace.
"""

from __future__ import annotations

import asyncio
import json
import secrets as _secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from conformance.adapters import (
    EDGE_QUEUE,
    EDGE_STATE_STORE,
    PROCESS_BACKEND,
    REFERENCE_ADAPTER,
    SERVERLESS_SECRET_STORE,
    reference_adapter,
    store_urls,
    subprocess_env,
)
from conformance.checks.deployment.checklist import (
    Checklist,
    judge_drain,
    judge_health,
    judge_secrets,
    judge_telemetry,
)
from harness import run as harness_run
from reference_services.adapters import registry
from reference_services.runtime.definitions import Subscription
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.health import HealthServer
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandPayload,
    SenderAddress,
)
from reference_services.runtime.shutdown import destroy_all
from reference_services.services import ALL_SERVICES
from reference_services.services.billing import GATEWAY_TOKEN_SECRET, INVOICE_QUEUE
from reference_services.services.user import user_id_for

THRESHOLD = 30.0
BLOCKED = "acme"
SERVICE_ENV = {
    "SERVICE_CONFIG_THRESHOLD": str(THRESHOLD),
    "SERVICE_CONFIG_GATEWAY_BLOCKED_CUSTOMERS": BLOCKED,
    "SERVICE_CONFIG_GATEWAY_SLOW_CUSTOMERS": "slowpay",
    "SERVICE_CONFIG_GATEWAY_LATENCY_MS": "1500",
}
OBSERVED_EVENTS = ("userSignedUp", "welcomeEmailSent", "thresholdExceeded", "emailDeadLetter")
USERS = (("ada@example.org", "Ada"), ("bob@example.org", "Bob"))

# (label, service, command, payload, parameter)
STEPS: list[tuple[str, str, str, Any, Any]] = [
    ("signUp ada", "user", "signUp", {"email": USERS[0][0], "name": USERS[0][1]}, None),
    ("signUp bob", "user", "signUp", {"email": USERS[1][0], "name": USERS[1][1]}, None),
    ("signUp ada again", "user", "signUp", {"email": USERS[0][0], "name": "Ada"}, None),
    ("signUp bad e-mail", "user", "signUp", {"email": "not-an-address", "name": "X"}, None),
    ("getUser ada", "user", "getUser", None, {"user_id": user_id_for(USERS[0][0])}),
    ("getUser nobody", "user", "getUser", None, {"user_id": "nobody"}),
    ("reading low", "sensor", "recordReading", {"sensor_id": "s1", "value": 12.5}, None),
    ("reading high", "sensor", "recordReading", {"sensor_id": "s1", "value": 31}, None),
    (
        "invoice i1",
        "billing",
        "requestInvoice",
        {"invoice_id": "i1", "customer": "bob", "amount_cents": 100},
        None,
    ),
    (
        "invoice i1 again",
        "billing",
        "requestInvoice",
        {"invoice_id": "i1", "customer": "bob", "amount_cents": 100},
        None,
    ),
    (
        "invoice i2 blocked",
        "billing",
        "requestInvoice",
        {"invoice_id": "i2", "customer": BLOCKED, "amount_cents": 100},
        None,
    ),
    (
        "invoice i3 negative",
        "billing",
        "requestInvoice",
        {"invoice_id": "i3", "customer": "bob", "amount_cents": -5},
        None,
    ),
]
STATE_KEYS = [
    *(f"user:{user_id_for(email)}" for email, _ in USERS),
    *(f"email:sent:{user_id_for(email)}" for email, _ in USERS),
    "sensor:last:s1",
    "invoice:i1",
]
SENDER_NAME = "deploytrace"

Invoke = Callable[[str, str, Any, Any], Awaitable[tuple[int, Any]]]


def _normalise_body(body: Any, jobs: dict[str, str]) -> Any:
    if isinstance(body, dict) and set(body) == {"job_id"}:
        job = jobs.setdefault(body["job_id"], f"<job {len(jobs) + 1}>")
        return {"job_id": job}
    if isinstance(body, dict) and set(body) >= {"message", "data"}:
        return {"message": body["message"]}
    return body


class Trace:
    """What one pattern produced, normalised for comparison."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.checklist = Checklist(pattern)
        self.health: dict[str, dict[str, int | str]] = {}
        self.commands: list[tuple[str, int, Any]] = []
        self.events: Counter[str] = Counter()
        self.state: dict[str, Any] = {}
        self.dead_letters: list[tuple[str, int, str]] = []
        self.duration_s = 0.0
        self._jobs: dict[str, str] = {}

    def command(self, label: str, status: int, body: Any) -> None:
        self.commands.append((label, status, _normalise_body(body, self._jobs)))

    def event(self, message: AnyMessage) -> None:
        payload = json.dumps(message.payload, sort_keys=True)
        self.events[f"{message.event_name} {payload}"] += 1

    def normalised(self) -> dict[str, Any]:
        """The comparable trace: duplicates of an event count once (see ``duplicates``)."""
        state = {
            k: {kk: vv for kk, vv in v.items() if kk != "attempt"} if isinstance(v, dict) else v
            for k, v in self.state.items()
        }
        return {
            "commands": [list(c) for c in self.commands],
            "events": sorted(self.events),
            "state": state,
            "dead_letters": sorted(list(d) for d in self.dead_letters),
        }

    @property
    def duplicates(self) -> int:
        """Events seen more than once (at-least-once delivery; never hidden)."""
        return sum(n - 1 for n in self.events.values())


def diff(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Readable differences between two normalised traces."""
    out: list[str] = []
    for part in ("commands", "events", "state", "dead_letters"):
        a, b = expected[part], got[part]
        if a == b:
            continue
        if isinstance(a, list):
            missing = [x for x in a if x not in b]
            extra = [x for x in b if x not in a]
            out.append(f"{part}: missing {missing[:5]}, unexpected {extra[:5]}")
        else:
            keys = sorted(set(a) | set(b))
            for k in keys:
                if a.get(k) != b.get(k):
                    out.append(f"state[{k}]: expected {a.get(k)!r}, got {b.get(k)!r}")
    return out


def _sender(instance_id: str) -> SenderAddress:
    return SenderAddress(
        service_name=SENDER_NAME,
        service_version="1",
        service_target="client",
        instance_id=instance_id,
    )


async def run_steps(trace: Trace, invoke: Invoke) -> None:
    """Run the scenario's commands in order, recording each outcome."""
    for label, service, name, payload, parameter in STEPS:
        status, body = await invoke(service, name, payload, parameter)
        trace.command(label, status, body)


def bridge_invoker(bridge: Any, ttl_s: float = 15.0) -> Invoke:
    """Invoke commands through an event bridge, as a client would."""

    async def invoke(service: str, name: str, payload: Any, parameter: Any) -> tuple[int, Any]:
        command = Command(
            sender=_sender(bridge.instance_id),
            receiver=ALL_SERVICES[service].address(name),
            payload=CommandPayload(payload=payload, parameter=parameter),
        )
        try:
            return 200, await bridge.invoke(command, ttl_s)
        except PuristaError as exc:
            return exc.status, {"message": exc.message, "data": exc.data}

    return invoke


async def observe(bridge: Any, trace: Trace) -> None:
    """Subscribe an observer to the scenario's events on ``bridge``."""
    for event_name in OBSERVED_EVENTS:

        async def record(message: AnyMessage) -> None:
            trace.event(message)

        await bridge.register_subscription(
            Subscription(
                subscriber=Address(
                    service_name=SENDER_NAME,
                    service_version="1",
                    service_target=f"observe-{event_name}",
                ),
                event_name=event_name,
            ),
            record,
        )


async def settle(trace: Trace, read: Callable[[], Awaitable[None]], timeout_s: float) -> bool:
    """Poll ``read`` (which fills state and dead letters) until the scenario's end state shows."""
    deadline = time.monotonic() + timeout_s
    while True:
        await read()
        done = (
            all(trace.state.get(k) is not None for k in STATE_KEYS)
            and len(trace.dead_letters) == 2
            and sum(1 for e in trace.events if e.startswith("welcomeEmailSent")) == len(USERS)
            and any(e.startswith("thresholdExceeded") for e in trace.events)
        )
        if done or time.monotonic() >= deadline:
            return done
        await asyncio.sleep(0.05)


async def read_outcome(trace: Trace, state: Any, queue: Any) -> None:
    """Fill the trace's state and dead letters from a state store and queue bridge."""
    trace.state = await state.get(*STATE_KEYS)
    trace.dead_letters = [
        (d.payload["invoice_id"], d.attempts, d.reason)
        for d in await queue.peek_dead_letter(INVOICE_QUEUE)
    ]


# ------------------------------------------------------------------ patterns
async def run_monolith(timeout_s: float = 30.0) -> Trace:
    """All services in one process on the in-memory adapters: the reference trace."""
    trace = Trace("monolith")
    start = time.monotonic()
    bridge = reference_adapter("event_bridge").build_from_urls({}, "purista")
    queue = reference_adapter("queue_bridge").build_from_urls({}, "purista")
    state = reference_adapter("state_store").build_from_urls({}, "purista")
    config = reference_adapter("config_store").build_from_urls({}, "purista")
    secret = reference_adapter("secret_store").load()(initial={GATEWAY_SECRET: GATEWAY_TOKEN})
    await bridge.start()
    await queue.start()
    await secret.start()
    instances = [
        svc.get_instance(
            bridge,
            state_store=state,
            config_store=config,
            secret_store=secret,
            queue_bridge=queue,
            config={
                "threshold": THRESHOLD,
                "gateway_blocked_customers": (BLOCKED,),
                "gateway_slow_customers": (SLOW_CUSTOMER,),
                "gateway_latency_ms": int(SERVICE_ENV["SERVICE_CONFIG_GATEWAY_LATENCY_MS"]),
            },
        )
        for svc in ALL_SERVICES.values()
    ]
    health = HealthServer([bridge, queue, *instances], host="127.0.0.1", port=0)
    try:
        await observe(bridge, trace)
        for instance in instances:
            await instance.start()
        await health.start()
        await run_steps(trace, bridge_invoker(bridge))
        await settle(trace, lambda: read_outcome(trace, state, queue), timeout_s)
        judge_secrets(trace.checklist, _environment_leaks({"monolith": None}), trace.state)
        judge_health(trace.checklist, {"monolith": await probe_health(health.port)})
        codes: dict[str, int | None] = {}

        async def shut_down() -> None:  # what the bootstrap does on SIGTERM (deploy/run.py)
            order = [*reversed(instances), bridge, queue]
            codes["monolith"] = (await destroy_all(order, timeout_s=20)).code

        finished = await drain_probe(bridge_invoker(bridge), queue, state, shut_down)
        judge_drain(trace.checklist, codes, finished, DRAIN_INVOICE)
    finally:
        await health.destroy()
        for instance in instances:
            await instance.destroy()
        await bridge.destroy()
        await queue.destroy()
        await secret.destroy()
    trace.duration_s = time.monotonic() - start
    return trace


class ServiceProcesses:
    """Deployment processes (``python -m reference_services.deploy``), SIGTERM to stop."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.procs: list[tuple[str, asyncio.subprocess.Process]] = []
        self.exit_codes: dict[str, int | None] = {}

    async def start(
        self, label: str, *args: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
    ) -> None:
        """Start one process (``env``: variables of its own) and wait for its READY line."""
        log = (self.workdir / f"{label}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reference_services.deploy",
            *args,
            env=harness_run.child_env(subprocess_env({**self.env, **(env or {})})),
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            preexec_fn=harness_run.child_preexec(),  # own session, dies with the runner
        )
        harness_run.current().track(proc.pid)
        log.close()
        self.procs.append((label, proc))
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
        except TimeoutError:
            line = b""
        if not line.startswith(b"READY"):
            raise AssertionError(
                f"{label} did not report READY within {timeout_s}s "
                f"(exit {proc.returncode}); see {self.workdir / (label + '.log')}"
            )

    async def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every process and record its exit code."""
        for _label, proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for label, proc in self.procs:
            try:
                self.exit_codes[label] = await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                self.exit_codes[label] = await proc.wait()


def pattern_queue(pattern: str) -> str:
    """The queue bridge a pattern's processes use: the edge's own, else the process backend's."""
    return EDGE_QUEUE if pattern == "edge" else PROCESS_BACKEND


def pattern_queue_urls(pattern: str, url: Callable[[str], str]) -> dict[str, str]:
    """The URL variable of the pattern's queue bridge, from a service-to-URL lookup."""

    d = registry.resolve("queue_bridge", pattern_queue(pattern))
    return {d.url_var: url(d.service)} if d.service and d.url_var else {}


def pattern_state(pattern: str) -> str:
    """The state store a pattern's processes use: the edge's Dapr sidecar, else the
    process backend's."""
    return EDGE_STATE_STORE if pattern == "edge" else PROCESS_BACKEND


def pattern_state_urls(pattern: str, url: Callable[[str], str]) -> dict[str, str]:
    """The URL variable of the pattern's state store, from a service-to-URL lookup."""
    return store_urls("state_store", pattern_state(pattern), url)


def deploy_env(
    event_bridge: str, urls: dict[str, str], prefix: str, queue_bridge: str = PROCESS_BACKEND
) -> dict[str, str]:
    """Environment for deployment processes: the given bridge, the process backend's
    stores and the given queue (default: the process backend's)."""
    return {
        "EVENT_BRIDGE": event_bridge,
        "QUEUE_BRIDGE": queue_bridge,
        "STORE": PROCESS_BACKEND,
        "PURISTA_PREFIX": prefix,
        "SHUTDOWN_TIMEOUT_S": "20",
        "PYTHONUNBUFFERED": "1",
        **urls,
        **SERVICE_ENV,
    }


def backend_outcome_reader(
    trace: Trace,
    urls: dict[str, str],
    prefix: str,
    queue_bridge: str = PROCESS_BACKEND,
    state_store: str = PROCESS_BACKEND,
) -> tuple[Any, Any, Any]:
    """The given state store and queue bridge (default: the process backend's) on
    ``prefix``, and a reader filling ``trace``."""

    state = registry.resolve("state_store", state_store).build_from_urls(urls, prefix)
    queue = registry.resolve("queue_bridge", queue_bridge).build_from_urls(urls, prefix)
    return state, queue, lambda: read_outcome(trace, state, queue)


async def run_processes(
    pattern: str,
    client: Any,
    event_bridge: str,
    urls: dict[str, str],
    prefix: str,
    workdir: Path,
    timeout_s: float = 60.0,
    runner: Callable[[dict[str, str], Path], Any] | None = None,
    service_urls: dict[str, str] | None = None,
) -> tuple[Trace, dict[str, int | None]]:
    """``microservices`` (one process per service) or ``edge`` (one process for all)
    over a broker, with ``client`` (a started bridge of the same kind and prefix)
    invoking and observing. ``runner`` (default ServiceProcesses) starts the services
    with ``service_urls`` (default ``urls``: what the services use to reach the brokers)."""
    trace = Trace(pattern)
    start = time.monotonic()
    env = deploy_env(event_bridge, service_urls or urls, prefix, pattern_queue(pattern))
    if pattern_state(pattern) != PROCESS_BACKEND:
        env["STATE_STORE"] = pattern_state(pattern)
    procs = (runner or ServiceProcesses)(env, workdir)
    state, queue, read = backend_outcome_reader(
        trace, urls, prefix, pattern_queue(pattern), pattern_state(pattern)
    )
    # the checklist's evidence: a health port and a span file per process (own processes
    # only: a container publishes no port to the host and its image has no OTel SDK)
    local = runner is None
    labels = list(ALL_SERVICES) if pattern == "microservices" else ["edge"]
    extra = {label: _checklist_env(label, workdir) if local else {} for label in labels}
    await seed_secret(registry.resolve("secret_store", PROCESS_BACKEND), urls, prefix)
    await state.start()
    await queue.start()
    stopped = False
    try:
        await observe(client, trace)
        if pattern == "microservices":
            await asyncio.gather(
                *(
                    _start(procs, name, ("microservice", "--service", name), extra[name])
                    for name in ALL_SERVICES
                )
            )
        else:
            args = [a for name in ALL_SERVICES for a in ("--service", name)]
            await _start(procs, "edge", ("edge", *args), extra["edge"])
        await run_steps(trace, bridge_invoker(client))
        await settle(trace, read, timeout_s)
        if local:
            trace.health = {
                label: await probe_health(int(e["HEALTH_PORT"])) for label, e in extra.items()
            }
        if local:
            pids = {label: proc.pid for label, proc in procs.procs}
            judge_secrets(trace.checklist, _environment_leaks(pids), trace.state)
        else:
            trace.checklist.not_checked("secrets", "a container's environment is not readable")
        finished = await drain_probe(bridge_invoker(client), queue, state, procs.stop)
        stopped = True
        checklist = trace.checklist
        judge_drain(checklist, procs.exit_codes, finished, DRAIN_INVOICE)
        if local:
            judge_health(checklist, trace.health)
            spans = [Path(e["OTEL_SPANS_FILE"]) for e in extra.values()]
            judge_telemetry(checklist, spans, ALL_SERVICES)
        else:
            why = "a container publishes no health port to the host and has no OTel SDK"
            checklist.not_checked("health", why)
            checklist.not_checked("telemetry", why)
    finally:
        if not stopped:
            await procs.stop()
        await state.destroy()
        await queue.destroy()
    trace.duration_s = time.monotonic() - start
    return trace, procs.exit_codes


GATEWAY_SECRET = GATEWAY_TOKEN_SECRET
GATEWAY_TOKEN = f"tok-{_secrets.token_hex(12)}"  # per run: found nowhere but in the store


async def seed_secret(descriptor: Any, urls: dict[str, str], prefix: str) -> None:
    """Put the gateway token into the secret store the pattern's services read (an admin
    instance: the services' own stores are get-only)."""
    admin = descriptor.build_from_urls(urls, prefix, enable_set=True)
    await admin.start()
    try:
        await admin.set(GATEWAY_SECRET, GATEWAY_TOKEN)
    finally:
        await admin.destroy()


def _environment_leaks(pids: dict[str, int | None]) -> dict[str, bool]:
    """label -> whether the token is in that process's environment (None: this process)."""
    import os

    out = {}
    for label, pid in pids.items():
        if pid is None:
            out[label] = any(GATEWAY_TOKEN in v for v in os.environ.values())
        else:
            out[label] = GATEWAY_TOKEN.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    return out


DRAIN_INVOICE = "drain-probe"
SLOW_CUSTOMER = "slowpay"


def _checklist_env(label: str, workdir: Path) -> dict[str, str]:
    from harness.services.local import free_port

    return {
        "HEALTH_PORT": str(free_port()),
        "OTEL_SPANS_FILE": str(workdir / f"spans-{label}.jsonl"),
        "OTEL_SERVICE_NAME": label,
    }


async def _start(procs: Any, label: str, args: tuple[str, ...], env: dict[str, str]) -> None:
    if env:
        await procs.start(label, *args, env=env)
    else:
        await procs.start(label, *args)


async def probe_health(port: int, timeout_s: float = 5.0) -> dict[str, int | str]:
    """Status of ``/healthz`` and ``/readyz`` on ``127.0.0.1:port``."""
    out: dict[str, int | str] = {}
    for path in ("/healthz", "/readyz"):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout_s
            )
            writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout_s)
            writer.close()
            out[path] = int(line.split()[1])
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            out[path] = f"no answer ({type(exc).__name__})"
    return out


async def drain_probe(
    invoke: Invoke, queue: Any, state: Any, stop: Callable[[], Awaitable[None]]
) -> bool:
    """Request an invoice the slow gateway takes a while for; once its job is leased (the
    worker is in the middle of it), stop the processes (SIGTERM); True when the invoice was
    issued anyway, i.e. the shutdown drained the running job."""
    payload = {"invoice_id": DRAIN_INVOICE, "customer": SLOW_CUSTOMER, "amount_cents": 1}
    status, _body = await invoke("billing", "requestInvoice", payload, None)
    leased = False
    if status == 200:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not leased:
            leased = bool(await queue.inspect_leases(INVOICE_QUEUE))
            if not leased:
                await asyncio.sleep(0.02)
    await stop()
    if not leased:
        return False
    value = (await state.get(f"invoice:{DRAIN_INVOICE}"))[f"invoice:{DRAIN_INVOICE}"]
    return isinstance(value, dict) and value.get("status") == "issued"


async def run_serverless(urls: dict[str, str], prefix: str, timeout_s: float = 60.0) -> Trace:
    """Function per trigger: commands, events routed by a tiny platform, queue triggers."""
    from reference_services.deploy.config import DeploymentConfig
    from reference_services.deploy.serverless import handle
    from reference_services.runtime.codec import from_wire
    from reference_services.runtime.spi.matcher import matches

    trace = Trace("serverless")
    start = time.monotonic()
    # the seed's serverless configuration: a cloud secret store beside Redis state
    env = {**deploy_env(REFERENCE_ADAPTER, urls, prefix), "SECRET_STORE": SERVERLESS_SECRET_STORE}
    cfg = DeploymentConfig.from_env(env)
    await seed_secret(registry.resolve("secret_store", SERVERLESS_SECRET_STORE), urls, prefix)
    state, queue, read = backend_outcome_reader(trace, urls, prefix)
    await state.start()
    await queue.start()
    subscribers = [
        (name, Subscription(subscriber=svc.address(sub.name), event_name=sub.event_name))
        for name, svc in ALL_SERVICES.items()
        for sub in svc.subscriptions.values()
    ]

    async def route(emitted: list[dict[str, Any]]) -> None:
        for wire in emitted:
            message = from_wire(wire)
            if message.event_name in OBSERVED_EVENTS:
                trace.event(message)
            for service, sub in subscribers:
                if matches(sub, message):
                    answer = await handle({"service": service, "message": wire}, cfg)
                    await route(answer["emitted"])

    async def invoke(service: str, name: str, payload: Any, parameter: Any) -> tuple[int, Any]:
        answer = await handle(
            {"service": service, "command": name, "payload": payload, "parameter": parameter},
            cfg,
        )
        await route(answer["emitted"])
        return answer["status"], answer["body"]

    try:
        await run_steps(trace, invoke)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = await handle({"service": "billing", "queue": INVOICE_QUEUE}, cfg)
            await route(answer["emitted"])
            if await settle(trace, read, 0):
                break
        judge_secrets(trace.checklist, _environment_leaks({"serverless": None}), trace.state)
    finally:
        await state.destroy()
        await queue.destroy()
    trace.duration_s = time.monotonic() - start
    return trace
