"""Dapr adapters: a state store over a Dapr sidecar's HTTP state API (httpx). The
harness's ``dapr`` service is daprd with a ``state.redis`` component named ``statestore``;
``DAPR_URL`` says where the sidecar listens."""

from __future__ import annotations

from reference_services.runtime.spi.descriptor import AdapterDescriptor

DESCRIPTORS: tuple[AdapterDescriptor, ...] = (
    AdapterDescriptor(
        "dapr",
        "state_store",
        "reference_services.adapters.dapr.state_store:DaprStateStore",
        service="dapr",
        url_var="DAPR_URL",
        deployable=True,
        fault_options={"timeout_s": 2.0, "health_timeout_s": 0.5},
    ),
)
