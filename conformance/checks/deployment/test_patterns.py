"""Deployment suite: the same scenario in every pattern gives the same normalised trace.

The monolith (every service in one process on the in-memory adapters) is the
reference. Serverless runs each trigger as a fresh function (in-memory bridge,
Redis stores and queue). Microservices run each service as its own OS process
over the adapter's broker; edge runs all services in one process over it;
containers run each service in its own container (the project's image) reaching
the broker containers by the engine's bridge network (docker provider only). A
client bridge of the adapter under test invokes the scenario's commands and
observes its events. Processes are stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance.adapters import (
    PROCESS_BACKEND,
    SERVERLESS_SECRET_STORE,
    process_backend_urls,
    store_urls,
)
from conformance.checks.deployment.checklist import (
    ITEMS,
    Checklist,
    judge_idempotency,
    judge_retry_policies,
)
from conformance.checks.deployment.own_process import run_own_process
from conformance.checks.deployment.scenario import (
    STEPS,
    Trace,
    diff,
    pattern_queue_urls,
    pattern_state_urls,
    run_monolith,
    run_processes,
    serverless_broker_health,
)
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from reference_services.adapters import registry
from reference_services.services import ALL_SERVICES

EXPECTED_STATUSES = [200, 200, 409, 400, 200, 404, 200, 200, 200, 200, 200, 200]
_reference: dict[str, Any] = {}


async def _reference_trace() -> dict[str, Any]:
    if not _reference:
        trace = await run_monolith()
        _reference["trace"] = trace.normalised()
        _reference["duration_s"] = trace.duration_s
    return _reference["trace"]


NO_EVIDENCE = "no evidence gathered in this pattern"
MONOLITH_NO_BROKER = (
    "every service is in one process on the in-memory bridge: no broker connection to lose"
)


def _judge(aut: AdapterUnderTest, trace: Trace, reference: dict[str, Any]) -> None:
    aut.metric("duration_s", round(trace.duration_s, 2))
    aut.metric("events_distinct", len(trace.events))
    aut.metric("event_duplicates", trace.duplicates)
    checklist = _checklist(trace)
    aut.metric("checklist", checklist.metric())
    problems = diff(reference, trace.normalised())
    assert not problems, f"{trace.pattern} differs from the monolith: " + "; ".join(problems)
    failed = checklist.failures()
    assert not failed, f"{trace.pattern}: production checklist: " + "; ".join(failed)


def _checklist(trace: Trace) -> Checklist:
    """The items every pattern judges the same way, and the reasons for those it cannot."""
    checklist = trace.checklist
    judge_retry_policies(checklist, ALL_SERVICES.values())
    judge_idempotency(checklist, trace.normalised())
    if "broker_health" not in checklist.items and trace.pattern == "monolith":
        checklist.not_applicable("broker_health", MONOLITH_NO_BROKER)
    for item in ITEMS:
        if item not in checklist.items:
            checklist.not_checked(item, NO_EVIDENCE)
    return checklist


def _deployable(aut: AdapterUnderTest) -> tuple[str, str]:
    """The adapter's harness service and URL variable, or skip: it cannot span processes."""
    spec = aut.spec
    if not (spec.deployable and spec.services and spec.url_var and spec.selector):
        pytest.skip("the adapter's descriptor does not declare it deployable across processes")
    return spec.services[0], spec.url_var


@check("deployment.monolith", kinds=("event_bridge",))
async def test_monolith_gives_the_expected_business_outcome(
    aut: AdapterUnderTest, tmp_path: Path
) -> None:
    """The reference run itself, in its own OS process exporting its spans to a file:
    every command answers as the services promise, both users get one welcome e-mail, the
    blocked invoice is dead-lettered after 3 attempts and the negative one at once, the
    good invoice is issued."""
    if not aut.is_reference:
        pytest.skip("the monolith runs on the in-memory adapters only")
    trace = await run_own_process("monolith", tmp_path)
    normal = trace.normalised()
    aut.metric("duration_s", round(trace.duration_s, 2))
    checklist = _checklist(trace)
    aut.metric("checklist", checklist.metric())
    assert not checklist.failures(), f"production checklist: {checklist.failures()}"
    statuses = [status for _label, status, _body in trace.commands]
    assert statuses == EXPECTED_STATUSES, list(zip([s[0] for s in STEPS], statuses, strict=True))
    assert normal["commands"][9][2] == normal["commands"][8][2], "idempotency key: same job"
    welcome = [e for e in normal["events"] if e.startswith("welcomeEmailSent")]
    assert len(welcome) == 2, normal["events"]
    assert [(d[0], d[1]) for d in normal["dead_letters"]] == [("i2", 3), ("i3", 1)]
    assert normal["state"]["invoice:i1"]["status"] == "issued"
    assert trace.duplicates == 0


@check("deployment.serverless", kinds=("event_bridge",))
async def test_serverless_matches_the_monolith(aut: AdapterUnderTest, tmp_path: Path) -> None:
    """Function per trigger (commands, events routed by the platform, queue triggers)
    with the process backend's state store and queue and the AWS secret store (Secrets
    Manager on the harness's moto), in a process of its own exporting spans, gives the
    monolith's trace; the platform probes each function's health, and cuts one
    invocation at its deadline in the middle of a job."""
    if not aut.is_reference:
        pytest.skip("serverless functions run on a per-invocation in-memory bridge")
    reference = await _reference_trace()
    # brokers of this run's own: it stops the queue's and state's Redis to see the
    # functions' readiness follow it
    dedicated = {} if aut.no_lifecycle else aut.isolate()
    secret_urls = store_urls("secret_store", SERVERLESS_SECRET_STORE, aut.ctx.url)
    urls = {**process_backend_urls(aut.ctx.url), **secret_urls}
    trace = await run_own_process("serverless", tmp_path, urls, aut.ctx.prefix)
    backend = registry.resolve("queue_bridge", PROCESS_BACKEND).service
    if backend in dedicated:
        await serverless_broker_health(trace.checklist, urls, aut.ctx.prefix, dedicated[backend])
    aut.metric("secret_store", SERVERLESS_SECRET_STORE)
    _judge(aut, trace, reference)


async def _processes(
    aut: AdapterUnderTest, pattern: str, tmp_path: Path, containers: bool = False
) -> None:
    service, var = _deployable(aut)
    reference = await _reference_trace()
    urls = {
        **process_backend_urls(aut.ctx.url),
        **pattern_queue_urls(pattern, aut.ctx.url),
        **pattern_state_urls(pattern, aut.ctx.url),
    }
    # the event bridge's broker is this run's own (the run stops it to see health follow);
    # a queue on the same broker (the edge's MQTT queue) shares it, as its URL variable does
    broker = None
    if aut.no_lifecycle:  # external brokers: nothing of this run's own to stop
        urls[var] = aut.ctx.url(service)
    else:
        dedicated = aut.isolate()
        urls[var] = aut.ctx.url(service)
        broker = dedicated[service]
    runner, service_urls = None, None
    if containers:
        runner, service_urls = _container_runner(aut, urls)
    client = await aut.new()
    selector = str(aut.spec.selector)
    trace, exits = await run_processes(
        pattern,
        client,
        selector,
        urls,
        aut.ctx.prefix,
        tmp_path,
        runner=runner,
        service_urls=service_urls,
        broker=broker,
    )
    aut.metric("processes", len(exits))
    _judge(aut, trace, reference)
    bad = {label: code for label, code in exits.items() if code != 0}
    assert not bad, f"processes did not exit 0 after SIGTERM: {bad} (logs in {tmp_path})"


@check("deployment.microservices", kinds=("event_bridge",))
async def test_microservices_match_the_monolith(aut: AdapterUnderTest, tmp_path: Path) -> None:
    """One OS process per service over the adapter's broker gives the monolith's trace,
    and every process exits 0 on SIGTERM."""
    await _processes(aut, "microservices", tmp_path)


def _container_runner(aut: AdapterUnderTest, urls: dict[str, str]) -> tuple[Any, dict[str, str]]:
    """ServiceContainers and the bridge-network URLs, or skip: not on the docker provider,
    or not a built-in adapter (the image holds the built-in ones only)."""
    from conformance.checks.deployment import containers as dc
    from conformance.kit.skips import not_tested

    if aut.spec.source != "builtin":
        pytest.skip("the service image holds the built-in adapters only")
    return dc.ServiceContainers, dc.container_urls(urls, not_tested)


@check("deployment.containers", kinds=("event_bridge",))
async def test_containers_match_the_monolith(aut: AdapterUnderTest, tmp_path: Path) -> None:
    """One container per service (the project's image) over the adapter's broker
    container, reached by the bridge network, gives the monolith's trace, and every
    container exits 0 on SIGTERM."""
    await _processes(aut, "microservices", tmp_path, containers=True)


@check("deployment.edge", kinds=("event_bridge",))
async def test_edge_matches_the_monolith(aut: AdapterUnderTest, tmp_path: Path) -> None:
    """All services in one lightweight process over the adapter's broker, with the
    MQTT-native queue (queue_bridge:mqtt) for its queue worker and the Dapr state store
    (a daprd sidecar) for its state, gives the monolith's trace, and the process exits 0
    on SIGTERM."""
    await _processes(aut, "edge", tmp_path)
