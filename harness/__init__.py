"""The harness: real brokers and Toxiproxy for tests, faults, histories, a pytest plugin.

The service names load lazily: the pytest plugin (an entry point, loaded by every
pytest run where this package is installed) must import without the ``[harness]``
extra (mirakuru, testcontainers, docker), which only providing a service needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.errors import (
    HarnessError,
    LifecycleFaultsUnavailable,
    ServiceStartError,
    ServiceUnavailable,
)
from harness.history import History, Verdict, check

if TYPE_CHECKING:
    from harness.services import (
        SERVICE_NAMES,
        Provider,
        ServiceHandle,
        ServiceSet,
        select_provider,
        start_many,
    )

_SERVICES = ("SERVICE_NAMES", "Provider", "ServiceHandle", "ServiceSet", "select_provider",
             "start_many")

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


def __getattr__(name: str) -> Any:
    if name in _SERVICES:
        from harness import services

        return getattr(services, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
