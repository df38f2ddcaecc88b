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
    DrainProbe,
    judge_broker_health,
    judge_drain,
    judge_health,
    judge_secrets,
    judge_telemetry,
)
from conformance.kit.waits import wait_for_async
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
GATEWAY_LATENCY_MS = 1500  # the slow gateway's, for the slow customer's invoices
SERVICE_ENV = {
    "SERVICE_CONFIG_THRESHOLD": str(THRESHOLD),
    "SERVICE_CONFIG_GATEWAY_BLOCKED_CUSTOMERS": BLOCKED,
    "SERVICE_CONFIG_GATEWAY_SLOW_CUSTOMERS": "slowpay",
    "SERVICE_CONFIG_GATEWAY_LATENCY_MS": str(GATEWAY_LATENCY_MS),
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
                "gateway_latency_ms": GATEWAY_LATENCY_MS,
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

        probe = await drain_probe(bridge_invoker(bridge), queue, state, shut_down)
        judge_drain(trace.checklist, codes, probe)
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
        self.health_ports: dict[str, int] = {}  # label -> where its probes answer

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
        port = (env or {}).get("HEALTH_PORT") or self.env.get("HEALTH_PORT")
        if port:
            self.health_ports[label] = int(port)
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

    leak_places = "the environment"

    def spans_file(self, label: str, env: dict[str, str]) -> Path | None:
        """Where the process ``label`` exported its spans (None: no exporter asked)."""
        path = env.get("OTEL_SPANS_FILE")
        return Path(path) if path else None

    async def secret_leaks(self, secret: str) -> dict[str, bool]:
        """label -> whether ``secret`` is in that process's environment."""
        return _environment_leaks({label: proc.pid for label, proc in self.procs}, secret)

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
    broker: Any | None = None,
) -> tuple[Trace, dict[str, int | None]]:
    """``microservices`` (one process per service) or ``edge`` (one process for all)
    over a broker, with ``client`` (a started bridge of the same kind and prefix)
    invoking and observing. ``runner`` (default ServiceProcesses) starts the services
    with ``service_urls`` (default ``urls``: what the services use to reach the brokers).
    ``broker`` (a harness handle of the event bridge's broker, dedicated to this run) is
    stopped and started again to see health follow it."""
    trace = Trace(pattern)
    start = time.monotonic()
    env = deploy_env(event_bridge, service_urls or urls, prefix, pattern_queue(pattern))
    if pattern_state(pattern) != PROCESS_BACKEND:
        env["STATE_STORE"] = pattern_state(pattern)
    procs = (runner or ServiceProcesses)(env, workdir)
    state, queue, read = backend_outcome_reader(
        trace, urls, prefix, pattern_queue(pattern), pattern_state(pattern)
    )
    # the checklist's evidence: a health port and a span file per process
    local = runner is None
    labels = list(ALL_SERVICES) if pattern == "microservices" else ["edge"]
    extra = {label: _checklist_env(label, workdir, local) for label in labels}
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
        trace.health = await probe_all(procs.health_ports)
        leaks = await procs.secret_leaks(GATEWAY_TOKEN)
        judge_secrets(trace.checklist, leaks, trace.state, procs.leak_places)
        if broker is None:
            trace.checklist.not_checked("broker_health", "no broker of its own to stop")
        else:
            down, back = await broker_outage(procs.health_ports, broker)
            judge_broker_health(trace.checklist, broker.name, down, back)
            await wait_ready(client, 60)
        probe = await drain_probe(bridge_invoker(client), queue, state, procs.stop)
        stopped = True
        checklist = trace.checklist
        judge_drain(checklist, procs.exit_codes, probe)
        judge_health(checklist, trace.health)
        spans = [procs.spans_file(label, e) for label, e in extra.items()]
        judge_telemetry(checklist, [p for p in spans if p is not None], ALL_SERVICES)
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


def _environment_leaks(pids: dict[str, int | None], secret: str = GATEWAY_TOKEN) -> dict[str, bool]:
    """label -> whether ``secret`` is in that process's environment (None: this process)."""
    import os

    out = {}
    for label, pid in pids.items():
        if pid is None:
            out[label] = any(secret in v for v in os.environ.values())
        else:
            out[label] = secret.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    return out


DRAIN_INVOICE = "drain-probe"
SLOW_CUSTOMER = "slowpay"


CONTAINER_HEALTH_PORT = 8080  # inside the container; published on a free loopback port
CONTAINER_SPANS_DIR = "/spans"  # a run directory bind-mounted into each container


def _checklist_env(label: str, workdir: Path, local: bool) -> dict[str, str]:
    from harness.services.local import free_port

    spans = workdir if local else Path(CONTAINER_SPANS_DIR)
    return {
        "HEALTH_PORT": str(free_port() if local else CONTAINER_HEALTH_PORT),
        "OTEL_SPANS_FILE": str(spans / f"spans-{label}.jsonl"),
        "OTEL_SERVICE_NAME": label,
    }


async def probe_all(
    ports: dict[str, int], timeout_s: float = 5.0
) -> dict[str, dict[str, int | str]]:
    """``probe_health`` of every process at once: label -> answers."""
    labels = list(ports)
    answers = await asyncio.gather(*(probe_health(ports[k], timeout_s) for k in labels))
    return dict(zip(labels, answers, strict=True))


Answers = dict[str, dict[str, int | str]]


async def _until(
    probe: Callable[[], Awaitable[Answers]],
    ok: Callable[[dict[str, int | str]], bool],
    timeout_s: float,
) -> Answers:
    """Probe until every label has given an answer ``ok`` accepts (kept: the first such),
    or the deadline passes (then the last answer of those that never did)."""
    seen: Answers = {}
    latched: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        answers = await probe()
        for label, answer in answers.items():
            if label not in latched:
                seen[label] = answer
                if ok(answer):
                    latched.add(label)
        if latched >= set(answers) or time.monotonic() >= deadline:
            return seen
        await asyncio.sleep(0.1)


async def broker_outage(
    ports: dict[str, int], broker: Any, down_s: float = 20.0, back_s: float = 90.0
) -> tuple[dict[str, dict[str, int | str]], dict[str, dict[str, int | str]]]:
    """SIGKILL ``broker``, probe until every process's /readyz leaves 200, start it again
    (same port, same data), probe until every one answers 200; both sets of answers."""

    async def probe() -> Answers:
        return await probe_all(ports, 2.0)

    await asyncio.to_thread(broker.kill)
    try:
        down = await _until(probe, lambda a: a.get("/readyz") != 200, down_s)
    finally:
        await asyncio.to_thread(broker.start)
    back = await _until(probe, lambda a: a.get("/readyz") == 200, back_s)
    return down, back


async def wait_ready(component: Any, timeout_s: float) -> None:
    """Until ``component.is_ready()`` (a client bridge reconnecting after an outage)."""
    deadline = time.monotonic() + timeout_s
    while not await component.is_ready():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{component!r} not ready again within {timeout_s}s")
        await asyncio.sleep(0.1)


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


#: a lease this much younger than the slow gateway's latency still has most of the job
#: ahead of it: SIGTERM sent then lands while the handler runs
FRESH_LEASE_MS = GATEWAY_LATENCY_MS // 2
DRAIN_TRIES = 3


async def drain_probe(
    invoke: Invoke, queue: Any, state: Any, stop: Callable[[], Awaitable[None]]
) -> DrainProbe:
    """Request an invoice the slow gateway takes a while for; once its job is leased (the
    worker is in the middle of it), stop the processes (SIGTERM); ``finished`` when the
    invoice was issued anyway, i.e. the shutdown drained the running job.

    The lease must be fresh when SIGTERM goes (younger than ``FRESH_LEASE_MS``): a reply or
    a poll late by the gateway's latency would send it after the job had already finished,
    and a shutdown that drains nothing would pass. A stale lease is let finish and the
    probe tried again with another invoice, up to ``DRAIN_TRIES`` times."""
    stale: list[int] = []
    for attempt in range(DRAIN_TRIES):
        invoice = DRAIN_INVOICE if attempt == 0 else f"{DRAIN_INVOICE}-{attempt + 1}"
        probe = DrainProbe(invoice)
        payload = {"invoice_id": invoice, "customer": SLOW_CUSTOMER, "amount_cents": 1}
        status, body = await invoke("billing", "requestInvoice", payload, None)
        if status != 200:
            probe.inconclusive = f"requestInvoice answered {status}: {body}"
            break
        age_ms = await _lease_age_ms(queue, state, invoice, body["job_id"], 10.0)
        if age_ms is None:
            probe.inconclusive = f"the job of {invoice} was not leased within 10 s"
            break
        if age_ms < FRESH_LEASE_MS:
            await stop()
            probe.finished = await _issued(state, invoice)
            return probe
        stale.append(age_ms)
        await wait_for_async(lambda invoice=invoice: _issued(state, invoice), 10.0)
    else:
        probe.inconclusive = (
            f"the job's lease was already {stale} ms old when seen, on each of {DRAIN_TRIES} "
            f"tries (SIGTERM must come within {FRESH_LEASE_MS} ms of it)"
        )
    await stop()
    return probe


async def _lease_age_ms(
    queue: Any, state: Any, invoice: str, job_id: str, timeout_s: float
) -> int | None:
    """How long ago ``job_id``'s lease was taken, once it is seen; None if it never is.
    A job already done when first looked for counts as stale as the gateway's latency."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for lease in await queue.inspect_leases(INVOICE_QUEUE):
            if lease.job_id == job_id:
                return int(time.time() * 1000) - lease.leased_at_ms
        if await _issued(state, invoice):
            return GATEWAY_LATENCY_MS
        await asyncio.sleep(0.02)
    return None


async def _issued(state: Any, invoice: str) -> bool:
    value = (await state.get(f"invoice:{invoice}"))[f"invoice:{invoice}"]
    return isinstance(value, dict) and value.get("status") == "issued"


async def run_serverless(
    urls: dict[str, str], prefix: str, workdir: Path, timeout_s: float = 60.0
) -> Trace:
    """Function per trigger: commands, events routed by a tiny platform, queue triggers;
    the platform's health invocations, and an invocation it cuts at its deadline."""
    from reference_services.deploy.config import DeploymentConfig
    from reference_services.deploy.serverless import handle
    from reference_services.runtime.codec import from_wire
    from reference_services.runtime.spi.matcher import matches

    trace = Trace("serverless")
    start = time.monotonic()
    env = serverless_env(urls, prefix)
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
        judge_health(trace.checklist, await probe_functions(cfg))
        cut = await cut_invocation_probe(env, queue, state, workdir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not cut.settled():
            await handle({"service": "billing", "queue": INVOICE_QUEUE}, cfg)
            await cut.read(queue, state)
        judge_cut_invocation(trace.checklist, cut)
    finally:
        await state.destroy()
        await queue.destroy()
    trace.duration_s = time.monotonic() - start
    return trace


FUNCTION_LEASE_TTL_MS = 3000


def serverless_env(urls: dict[str, str], prefix: str) -> dict[str, str]:
    """The seed's serverless configuration: a cloud secret store beside Redis state and
    queue; a job's lease lasts about the function timeout (a cut invocation's job comes
    back soon)."""
    return {
        **deploy_env(REFERENCE_ADAPTER, urls, prefix),
        "SECRET_STORE": SERVERLESS_SECRET_STORE,
        "QUEUE_LEASE_TTL_MS": str(FUNCTION_LEASE_TTL_MS),
    }


async def serverless_broker_health(
    checklist: Checklist, urls: dict[str, str], prefix: str, broker: Any
) -> None:
    """Health follows the broker in the serverless pattern: the platform's readiness
    invocation of every function answers 503 while ``broker`` (the queue's and state's
    Redis) is stopped, 200 again once it is back."""
    from reference_services.deploy.config import DeploymentConfig
    from reference_services.deploy.serverless import handle

    cfg = DeploymentConfig.from_env(serverless_env(urls, prefix))

    async def ready(service: str) -> dict[str, int | str]:
        return {"/readyz": (await handle({"service": service, "health": "ready"}, cfg))["status"]}

    async def probe() -> dict[str, dict[str, int | str]]:
        answers = await asyncio.gather(*(ready(s) for s in ALL_SERVICES))
        return {f"{s} function": a for s, a in zip(ALL_SERVICES, answers, strict=True)}

    await asyncio.to_thread(broker.kill)
    try:
        down = await _until(probe, lambda a: a.get("/readyz") != 200, 40)
    finally:
        await asyncio.to_thread(broker.start)
    back = await _until(probe, lambda a: a.get("/readyz") == 200, 60)
    judge_broker_health(checklist, broker.name, down, back)


async def probe_functions(cfg: Any) -> dict[str, dict[str, int | str]]:
    """The platform's health invocation of every service's function: live and ready."""
    from reference_services.deploy.serverless import handle

    async def status(service: str, kind: str) -> int | str:
        try:
            return int((await handle({"service": service, "health": kind}, cfg))["status"])
        except Exception as exc:  # a function without a health invocation
            return f"no answer ({type(exc).__name__}: {exc})"

    return {
        f"{service} function": {
            "/healthz": await status(service, "live"),
            "/readyz": await status(service, "ready"),
        }
        for service in ALL_SERVICES
    }


class CutInvocation:
    """What became of the job whose invocation the platform killed at its deadline."""

    def __init__(self) -> None:
        self.leased = False  # the job was running when the platform cut the invocation
        self.cut_code: int | None = None
        self.record: Any = None
        self.dead: list[tuple[str, int, str]] = []
        self.pending = self.inflight = -1

    def settled(self) -> bool:
        """Nothing of the queue left to do (the job done, dead or lost)."""
        return self.pending == 0 and self.inflight == 0

    async def read(self, queue: Any, state: Any) -> None:
        key = f"invoice:{DRAIN_INVOICE}"
        self.record = (await state.get(key))[key]
        self.dead = [
            (d.payload["invoice_id"], d.attempts, d.reason)
            for d in await queue.peek_dead_letter(INVOICE_QUEUE)
            if d.payload.get("invoice_id") == DRAIN_INVOICE
        ]
        metrics = await queue.metrics(INVOICE_QUEUE)
        self.pending, self.inflight = metrics.pending, metrics.inflight


def function_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a function invocation run in its own process."""
    return dict(env)


#: how long after the job is taken the platform's deadline cuts the function (well inside
#: the slow gateway's 1.5 s, so a kept job is still running then)
CUT_AFTER_LEASE_S = 0.5


async def cut_invocation_probe(
    env: dict[str, str], queue: Any, state: Any, workdir: Path
) -> CutInvocation:
    """A job for the slow gateway's invoice arrives on the queue (as the billing command
    puts it there); the platform runs the queue trigger as a function process of its own
    and SIGKILLs it (its deadline) once the job is taken (leased, or gone from pending):
    the job must come back, be done once by a later invocation, and nothing be left or
    dead-lettered."""
    cut = CutInvocation()
    payload = {"invoice_id": DRAIN_INVOICE, "customer": SLOW_CUSTOMER, "amount_cents": 1}
    await queue.enqueue(
        INVOICE_QUEUE,
        payload,
        idempotency_key=f"invoice:{DRAIN_INVOICE}",
        max_attempts=3,
        lease_ttl_ms=FUNCTION_LEASE_TTL_MS,
    )
    trigger = json.dumps({"service": "billing", "queue": INVOICE_QUEUE})
    log = (workdir / "function-cut.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reference_services.deploy.serverless",
        trigger,
        env=harness_run.child_env(subprocess_env(function_env(env))),
        stdout=log,
        stderr=log,
        preexec_fn=harness_run.child_preexec(),
    )
    harness_run.current().track(proc.pid)
    log.close()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.returncode is None:
            if (
                await queue.inspect_leases(INVOICE_QUEUE)
                or not (await queue.metrics(INVOICE_QUEUE)).pending
            ):
                cut.leased = True
                break
            await asyncio.sleep(0.02)
        # the deadline strikes while the handler runs (its gateway call takes 1.5 s), not
        # at the lease itself: a queue that settles the job as it hands it out (at most
        # once) has settled it by then, and a kill in the instant between its lease and its
        # settle would let it pass as if it had kept the job
        cut_at = time.monotonic() + CUT_AFTER_LEASE_S
        while cut.leased and time.monotonic() < cut_at and proc.returncode is None:
            if not await queue.inspect_leases(INVOICE_QUEUE):
                break  # settled already: cut now
            await asyncio.sleep(0.02)
    finally:
        if proc.returncode is None:
            proc.kill()
        cut.cut_code = await proc.wait()
    await cut.read(queue, state)
    return cut


def judge_cut_invocation(checklist: Checklist, cut: CutInvocation) -> None:
    """The serverless drain: the killed invocation's job was neither lost (issued by a
    later invocation, once) nor doubled (attempt 2, nothing pending, in flight or dead)."""
    problems = []
    record = cut.record if isinstance(cut.record, dict) else {}
    if not cut.leased:
        problems.append(
            f"the job was never taken before the platform's deadline (function exit {cut.cut_code})"
        )
    if record.get("status") != "issued":
        problems.append(f"the cut invocation's job was lost: invoice {cut.record!r}")
    elif record.get("attempt") != 2:
        problems.append(f"issued at attempt {record.get('attempt')}, not by the one redelivery")
    if cut.dead:
        problems.append(f"dead-lettered: {cut.dead}")
    if (cut.pending, cut.inflight) != (0, 0):
        problems.append(f"left in the queue: {cut.pending} pending, {cut.inflight} in flight")
    checklist.record(
        "drain",
        not problems,
        "; ".join(problems)
        or f"the invocation running {DRAIN_INVOICE} was killed at the platform's deadline; "
        "a later one issued it once (attempt 2), nothing left in the queue",
    )
