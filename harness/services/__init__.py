"""Real brokers for tests: specs, providers (local, docker, external) and handles."""

from harness.errors import LifecycleFaultsUnavailable, ServiceStartError, ServiceUnavailable
from harness.services.base import Provider, ServiceHandle
from harness.services.registry import ServiceSet, start_many
from harness.services.select import PROVIDERS, select_provider
from harness.services.spec import SERVICE_NAMES, SPECS, ServiceSpec, get_spec

__all__ = [
    "PROVIDERS",
    "SERVICE_NAMES",
    "SPECS",
    "LifecycleFaultsUnavailable",
    "Provider",
    "ServiceHandle",
    "ServiceSet",
    "ServiceSpec",
    "ServiceStartError",
    "ServiceUnavailable",
    "get_spec",
    "select_provider",
    "start_many",
]
