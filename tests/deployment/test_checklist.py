"""The production checklist fails when an item is broken: one broken item per pattern.

- microservices: the drain is cut short (``SHUTDOWN_TIMEOUT_S`` 0.05 s): the invoice job
  running at SIGTERM does not finish, or a process exits 1 -> ``drain`` fails;
- edge: the process exposes no health port and exports no spans -> ``health`` and
  ``telemetry`` fail;
- microservices and edge: the event bridge reports ready whatever its connection, and
  the broker is stopped -> ``broker_health`` fails;
- serverless: the invoice command enqueues without its idempotency key, the gateway
  token is also in the environment, and the function the platform cuts at its deadline
  acked its job when it took it -> ``idempotency``, ``secrets`` and ``drain`` fail; its
  functions answer no health invocation -> ``health`` fails; their health invocation asks
  none of their adapters, and Redis is stopped -> ``broker_health`` fails; the platform
  runs without a span exporter -> ``telemetry`` fails;
- monolith: its shutdown does not wait for the running job (0.05 s), a service whose
  subscription takes the default retry policy, and its process without a span exporter
  -> ``drain``, ``retry_policy``, ``telemetry`` fail.

Real processes, real brokers (Mosquitto, Redis), as in the deployment suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance.adapters import process_backend_urls
from conformance.checks.deployment import scenario
from conformance.checks.deployment.checklist import (
    FAILED,
    OK,
    Checklist,
    judge_health,
    judge_idempotency,
    judge_retry_policies,
)
from reference_services.adapters import registry
from reference_services.runtime.service import ServiceBuilder
from reference_services.services import ALL_SERVICES
from reference_services.services.billing import INVOICE_QUEUE, billing_v1

HERE = Path(__file__).resolve().parent


def _urls(request: pytest.FixtureRequest, pattern: str) -> dict[str, str]:
    """The URLs the pattern's processes need, from the harness's session services."""

    def url(service: str) -> str:
        return str(request.getfixturevalue(f"harness_{service}").url)

    return {
        "MQTT_URL": url("mosquitto"),
        **process_backend_urls(url),
        **scenario.pattern_queue_urls(pattern, url),
        **scenario.pattern_state_urls(pattern, url),
    }


async def _run(
    pattern: str,
    urls: dict[str, str],
    tmp_path: Path,
    prefix: str,
    bridge: str = "mqtt",
    broker: Any = None,
) -> Checklist:
    client = registry.resolve("event_bridge", "mqtt").build_from_urls(urls, prefix)
    await client.start()
    try:
        trace, _exits = await scenario.run_processes(
            pattern, client, bridge, urls, prefix, tmp_path, timeout_s=30, broker=broker
        )
    finally:
        await client.destroy()
    return trace.checklist


async def test_microservices_without_a_drain_fail_the_drain_item(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = scenario.deploy_env

    def no_drain(*args: Any, **kwargs: Any) -> dict[str, str]:
        return {**real(*args, **kwargs), "SHUTDOWN_TIMEOUT_S": "0.05"}

    monkeypatch.setattr(scenario, "deploy_env", no_drain)
    checklist = await _run("microservices", _urls(request, "microservices"), tmp_path, "ckd")
    # seen both ways: the running invoice job cut off, or a process exiting 1 from the
    # cut-short drain; either fails the item
    assert checklist.items["drain"][0] == FAILED, checklist.metric()
    assert checklist.items["health"][0] == OK, "only the drain was broken"


async def test_edge_without_health_or_exporter_fails_those_items(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = scenario.ServiceProcesses.start

    async def bare(self: Any, label: str, *args: str, **kw: Any) -> None:
        env = dict(kw.pop("env", None) or {})
        env.update(HEALTH_PORT="", OTEL_SPANS_FILE="")  # the process ignores the probes' port
        await real(self, label, *args, env=env, **kw)

    monkeypatch.setattr(scenario.ServiceProcesses, "start", bare)
    checklist = await _run("edge", _urls(request, "edge"), tmp_path, "cke")
    assert checklist.items["health"][0] == FAILED, checklist.metric()
    assert checklist.items["telemetry"][0] == FAILED, checklist.metric()
    assert checklist.items["drain"][0] == OK, "only health and telemetry were broken"


@pytest.mark.parametrize("pattern", ["microservices", "edge"])
async def test_health_blind_to_the_broker_fails_the_broker_health_item(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_service: Any,
    pattern: str,
) -> None:
    real = scenario.deploy_env

    def blind_queue(*args: Any, **kwargs: Any) -> dict[str, str]:
        env = real(*args, **kwargs)  # the edge's MQTT queue would see the broker go
        if env["QUEUE_BRIDGE"] == "mqtt":
            env["QUEUE_BRIDGE"] = "broken_adapters:BLIND_QUEUE"
        return env

    monkeypatch.setattr(scenario, "deploy_env", blind_queue)
    broker = fresh_service("mosquitto")
    urls = {**_urls(request, pattern), "MQTT_URL": str(broker.url)}
    blind = await _run(pattern, urls, tmp_path, "ckb", "broken_adapters:BLIND_HEALTH", broker)
    verdict, detail = blind.items["broker_health"]
    assert verdict == FAILED and "stayed 200 with mosquitto stopped" in detail, blind.metric()
    assert blind.items["health"][0] == OK, "only health's view of the broker was broken"


async def test_serverless_without_an_idempotency_key_fails_the_idempotency_item(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    definition = billing_v1.commands["requestInvoice"]

    async def enqueue_twice(ctx: Any, payload: Any, parameter: Any) -> dict[str, str]:
        job_id = await ctx.queue.enqueue(INVOICE_QUEUE, payload.model_dump(), max_attempts=3)
        return {"job_id": job_id}

    monkeypatch.setattr(definition, "handler", enqueue_twice)
    monkeypatch.setenv("PAYMENT_GATEWAY_TOKEN", scenario.GATEWAY_TOKEN)  # a secret in env
    real = scenario.function_env  # and the function cut at its deadline acked its job early
    monkeypatch.setattr(
        scenario,
        "function_env",
        lambda env: {**real(env), "QUEUE_BRIDGE": "broken_adapters:ACK_ON_LEASE"},
    )
    trace = await scenario.run_serverless(_serverless_urls(request), "cks", tmp_path, 30)
    checklist = trace.checklist
    judge_idempotency(checklist, trace.normalised())
    verdict, detail = checklist.items["idempotency"]
    assert verdict == FAILED and "another job" in detail, checklist.metric()
    verdict, detail = checklist.items["secrets"]
    assert verdict == FAILED and "environment of serverless" in detail, checklist.metric()
    verdict, detail = checklist.items["drain"]
    assert verdict == FAILED and "job was lost" in detail, checklist.metric()
    assert checklist.items["health"][0] == OK, checklist.metric()


def _serverless_urls(request: pytest.FixtureRequest) -> dict[str, str]:
    from conformance.adapters import SERVERLESS_SECRET_STORE, store_urls

    def url(service: str) -> str:
        return str(request.getfixturevalue(f"harness_{service}").url)

    return {
        **process_backend_urls(url),
        **store_urls("secret_store", SERVERLESS_SECRET_STORE, url),
    }


async def test_serverless_functions_without_health_fail_the_health_items(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, fresh_service: Any
) -> None:
    from reference_services.deploy import serverless
    from reference_services.deploy.config import DeploymentConfig

    urls = _serverless_urls(request)
    cfg = DeploymentConfig.from_env(scenario.serverless_env(urls, "ckh"))
    good = Checklist("serverless")
    judge_health(good, await scenario.probe_functions(cfg))
    assert good.items["health"][0] == OK, good.metric()

    async def no_health(kind: str, builder: Any, parts: Any) -> Any:
        raise ValueError("trigger needs one of: command, message, queue")  # the old handler

    monkeypatch.setattr(serverless, "_probe_function", no_health)
    none = Checklist("serverless")
    judge_health(none, await scenario.probe_functions(cfg))
    verdict, detail = none.items["health"]
    assert verdict == FAILED and "no answer (ValueError" in detail, none.metric()
    monkeypatch.undo()

    async def always_ok(kind: str, builder: Any, parts: Any) -> Any:
        return {"status": 200, "body": {"ok": True}, "emitted": []}  # touches no adapter

    monkeypatch.setattr(serverless, "_probe_function", always_ok)
    redis = fresh_service("redis")
    urls = {**urls, "REDIS_URL": str(redis.url)}
    blind = Checklist("serverless")
    await scenario.serverless_broker_health(blind, urls, "ckh", redis)
    verdict, detail = blind.items["broker_health"]
    assert verdict == FAILED and "stayed 200 with redis stopped" in detail, blind.metric()


async def test_serverless_exporting_no_spans_fails_the_telemetry_item(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformance.checks.deployment import own_process

    monkeypatch.setattr(own_process, "span_env", lambda spans, pattern: {"OTEL_SPANS_FILE": ""})
    trace = await own_process.run_own_process(
        "serverless", tmp_path, _serverless_urls(request), "ckt"
    )
    verdict, detail = trace.checklist.items["telemetry"]
    assert verdict == FAILED and "no handler spans" in detail, trace.checklist.metric()
    assert trace.checklist.items["drain"][0] == OK, trace.checklist.metric()


def test_a_subscription_without_its_own_retry_policy_fails_the_retry_item() -> None:
    careless = ServiceBuilder("careless", "1", "subscribes without a policy")

    @careless.subscription("onAnything", event_name="userSignedUp")
    async def on_anything(ctx: Any, message: Any) -> None:
        return None

    checklist = Checklist("monolith")
    judge_retry_policies(checklist, [*ALL_SERVICES.values(), careless])
    verdict, detail = checklist.items["retry_policy"]
    assert verdict == FAILED and "careless.onAnything" in detail, detail
    good = Checklist("monolith")
    judge_retry_policies(good, ALL_SERVICES.values())
    assert good.items["retry_policy"][0] == OK, good.metric()


async def test_a_monolith_whose_shutdown_does_not_wait_fails_the_drain_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = scenario.destroy_all

    async def hasty(things: Any, **kw: Any) -> Any:
        return await real(things, **{**kw, "timeout_s": 0.05})

    monkeypatch.setattr(scenario, "destroy_all", hasty)
    trace = await scenario.run_monolith()
    assert trace.checklist.items["drain"][0] == FAILED, trace.checklist.metric()
    assert trace.checklist.items["health"][0] == OK, "only the drain was broken"


async def test_a_monolith_exporting_no_spans_fails_the_telemetry_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformance.checks.deployment import own_process

    monkeypatch.setattr(own_process, "span_env", lambda spans, pattern: {"OTEL_SPANS_FILE": ""})
    trace = await own_process.run_own_process("monolith", tmp_path)
    verdict, detail = trace.checklist.items["telemetry"]
    assert verdict == FAILED and "no handler spans" in detail, trace.checklist.metric()
    assert trace.checklist.items["drain"][0] == OK, "only the exporter was taken away"


def _bridge_urls_or_skip(urls: dict[str, str]) -> dict[str, str]:
    """The brokers' URLs as containers reach them, or skip: not the docker provider, or
    no service image built from this source."""
    from conformance.checks.deployment import containers as dc

    return dc.container_urls(urls, pytest.skip)


async def _run_containers(
    urls: dict[str, str], tmp_path: Path, prefix: str, runner: Any, broker: Any = None
) -> Checklist:
    service_urls = _bridge_urls_or_skip(urls)
    client = registry.resolve("event_bridge", "mqtt").build_from_urls(urls, prefix)
    await client.start()
    try:
        trace, _exits = await scenario.run_processes(
            "microservices",
            client,
            "mqtt",
            urls,
            prefix,
            tmp_path,
            timeout_s=30,
            runner=runner,
            service_urls=service_urls,
            broker=broker,
        )
    finally:
        await client.destroy()
    return trace.checklist


def _wrap_create(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Let ``change(labels, kwargs)`` alter every service container the deployment creates
    (not the brokers' containers)."""
    from docker.models.containers import ContainerCollection

    from harness.services.docker_engine import LABEL_SERVICE

    create = ContainerCollection.create

    def changed(self: Any, *args: Any, **kwargs: Any) -> Any:
        labels = kwargs.get("labels") or {}
        if str(labels.get(LABEL_SERVICE, "")).startswith("deploy-"):
            change(labels, kwargs)
        return create(self, *args, **kwargs)

    monkeypatch.setattr(ContainerCollection, "create", changed)


async def test_containers_showing_the_token_without_probes_or_spans_fail_those_items(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """user has the token in its environment, email in a label; none publishes a health
    port or exports spans."""
    from harness.services.docker_engine import LABEL_SERVICE

    def careless(labels: dict[str, str], kwargs: dict[str, Any]) -> None:
        env = kwargs["environment"]
        for var in ("HEALTH_PORT", "OTEL_SPANS_FILE"):
            env.pop(var, None)
        kwargs["volumes"] = {}  # its port stays published: nothing answers behind it
        if labels.get(LABEL_SERVICE) == "deploy-user":
            env["PAYMENT_GATEWAY_TOKEN"] = scenario.GATEWAY_TOKEN
        if labels.get(LABEL_SERVICE) == "deploy-email":
            kwargs["labels"] = {**labels, "gateway": scenario.GATEWAY_TOKEN}

    _wrap_create(monkeypatch, careless)
    from conformance.checks.deployment.containers import ServiceContainers

    checklist = await _run_containers(
        _urls(request, "microservices"), tmp_path, "ckc", ServiceContainers
    )
    verdict, detail = checklist.items["secrets"]
    assert verdict == FAILED, checklist.metric()
    assert "environment, labels or logs of user" in detail, detail
    assert "environment, labels or logs of email" in detail, detail
    assert "sensor" not in detail and "billing" not in detail, detail
    assert checklist.items["health"][0] == FAILED, checklist.metric()
    assert checklist.items["telemetry"][0] == FAILED, checklist.metric()
    assert checklist.items["drain"][0] == OK, "the drain was not broken"


async def test_containers_blind_to_the_broker_fail_the_broker_health_item(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_service: Any,
) -> None:
    """Every container runs broken_adapters:BLIND_HEALTH (this directory mounted)."""
    here = str(HERE)

    def blind(labels: dict[str, str], kwargs: dict[str, Any]) -> None:
        kwargs["environment"].update(
            PYTHONPATH="/broken", EVENT_BRIDGE="broken_adapters:BLIND_HEALTH"
        )
        kwargs["volumes"] = {**kwargs.get("volumes", {}), here: {"bind": "/broken", "mode": "ro"}}

    _wrap_create(monkeypatch, blind)
    from conformance.checks.deployment.containers import ServiceContainers

    broker = fresh_service("mosquitto")
    urls = {**_urls(request, "microservices"), "MQTT_URL": str(broker.url)}
    checklist = await _run_containers(urls, tmp_path, "ckm", ServiceContainers, broker)
    verdict, detail = checklist.items["broker_health"]
    assert verdict == FAILED and "stayed 200 with mosquitto stopped" in detail, checklist.metric()
    assert checklist.items["health"][0] == OK, "only health's view of the broker was broken"
