"""The production checklist fails when an item is broken: one broken item per pattern.

- microservices: the drain is cut short (``SHUTDOWN_TIMEOUT_S`` 0.05 s): the invoice job
  running at SIGTERM does not finish, or a process exits 1 -> ``drain`` fails;
- edge: the process exposes no health port and exports no spans -> ``health`` and
  ``telemetry`` fail;
- serverless: the invoice command enqueues without its idempotency key and the gateway
  token is also in the environment -> ``idempotency`` and ``secrets`` fail;
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
    judge_idempotency,
    judge_retry_policies,
)
from reference_services.adapters import registry
from reference_services.runtime.service import ServiceBuilder
from reference_services.services import ALL_SERVICES
from reference_services.services.billing import INVOICE_QUEUE, billing_v1


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


async def _run(pattern: str, urls: dict[str, str], tmp_path: Path, prefix: str) -> Checklist:
    client = registry.resolve("event_bridge", "mqtt").build_from_urls(urls, prefix)
    await client.start()
    try:
        trace, _exits = await scenario.run_processes(
            pattern, client, "mqtt", urls, prefix, tmp_path, timeout_s=30
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


async def test_serverless_without_an_idempotency_key_fails_the_idempotency_item(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    definition = billing_v1.commands["requestInvoice"]

    async def enqueue_twice(ctx: Any, payload: Any, parameter: Any) -> dict[str, str]:
        job_id = await ctx.queue.enqueue(INVOICE_QUEUE, payload.model_dump(), max_attempts=3)
        return {"job_id": job_id}

    monkeypatch.setattr(definition, "handler", enqueue_twice)
    monkeypatch.setenv("PAYMENT_GATEWAY_TOKEN", scenario.GATEWAY_TOKEN)  # a secret in env
    from conformance.adapters import SERVERLESS_SECRET_STORE, store_urls

    def url(service: str) -> str:
        return str(request.getfixturevalue(f"harness_{service}").url)

    urls = {
        **process_backend_urls(url),
        **store_urls("secret_store", SERVERLESS_SECRET_STORE, url),
    }
    trace = await scenario.run_serverless(urls, "cks", timeout_s=30)
    checklist = trace.checklist
    judge_idempotency(checklist, trace.normalised())
    verdict, detail = checklist.items["idempotency"]
    assert verdict == FAILED and "another job" in detail, checklist.metric()
    verdict, detail = checklist.items["secrets"]
    assert verdict == FAILED and "environment of serverless" in detail, checklist.metric()


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
    from conformance.checks.deployment import monolith_process

    monkeypatch.setattr(monolith_process, "span_env", lambda spans: {"OTEL_SPANS_FILE": ""})
    trace = await monolith_process.run_monolith_process(tmp_path)
    verdict, detail = trace.checklist.items["telemetry"]
    assert verdict == FAILED and "no handler spans" in detail, trace.checklist.metric()
    assert trace.checklist.items["drain"][0] == OK, "only the exporter was taken away"
