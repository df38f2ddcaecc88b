"""The harness: real brokers and Toxiproxy for tests, faults, histories, a pytest plugin."""

from harness.errors import (
    HarnessError,
    LifecycleFaultsUnavailable,
    ServiceStartError,
    ServiceUnavailable,
)
from harness.history import History, Verdict, check
from harness.services import (
    SERVICE_NAMES,
    Provider,
    ServiceHandle,
    ServiceSet,
    select_provider,
    start_many,
)

__all__ = [
    "SERVICE_NAMES",
    "HarnessError",
    "History",
    "LifecycleFaultsUnavailable",
    "Provider",
    "ServiceHandle",
    "ServiceSet",
    "ServiceStartError",
    "ServiceUnavailable",
    "Verdict",
    "check",
    "select_provider",
    "start_many",
]
