"""The conformance suite: one contract, every adapter, a report people and CI can read.

``conformance.run(adapters=[...], suite="contract", quick=True) -> Report`` runs it
from Python (see :mod:`conformance.api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conformance.adapters import AdapterContext

if TYPE_CHECKING:
    from conformance.api import RunError, run
    from conformance.report.model import Report

__all__ = ["AdapterContext", "Report", "RunError", "run"]


def __getattr__(name: str) -> Any:
    # lazily: importing the package must not import pytest
    if name in ("run", "RunError"):
        from conformance import api

        return getattr(api, name)
    if name == "Report":
        from conformance.report.model import Report

        return Report
    raise AttributeError(f"module 'conformance' has no attribute {name!r}")
