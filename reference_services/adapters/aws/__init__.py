"""AWS adapters: a secret store on Secrets Manager and a config store on SSM Parameter
Store (boto3, run off the event loop). The harness's ``moto`` service answers both APIs
on loopback; ``AWS_ENDPOINT_URL`` (or ``aws://REGION`` for AWS itself) says where."""

from __future__ import annotations

from reference_services.runtime.spi.descriptor import AdapterDescriptor

_PKG = "reference_services.adapters.aws"
_FAST = {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, "health_timeout_s": 0.5}

DESCRIPTORS: tuple[AdapterDescriptor, ...] = (
    AdapterDescriptor(
        "aws",
        "secret_store",
        f"{_PKG}.secrets_manager:AwsSecretStore",
        service="moto",
        url_var="AWS_ENDPOINT_URL",
        deployable=True,
        fault_options=_FAST,
    ),
    AdapterDescriptor(
        "aws",
        "config_store",
        f"{_PKG}.parameter_store:AwsConfigStore",
        service="moto",
        url_var="AWS_ENDPOINT_URL",
        deployable=True,
        fault_options=_FAST,
    ),
)
