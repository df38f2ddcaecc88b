"""Skips that mean something for the verdict.

A plain ``pytest.skip`` is "not applicable" (e.g. an in-process adapter has no
broker to restart). :func:`not_tested` says a backing service could not be
provided, which makes the run "not tested" (exit 3) unless
``--allow-missing-services``. :func:`no_lifecycle` says the provider cannot
restart brokers (the external provider): reported, not counted as not tested.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

NO_LIFECYCLE_REASON = "provider {provider} cannot restart brokers"


class NotTested(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A check skipped because its backing service could not be provided."""

    not_tested = True


class NoLifecycle(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A check skipped because the provider cannot restart, pause or kill brokers."""


def not_tested(reason: str) -> NoReturn:
    """Skip the current check: its backing service could not be provided."""
    raise NotTested(reason)


def no_lifecycle(provider: str) -> NoReturn:
    """Skip the current check: ``provider`` cannot restart brokers."""
    raise NoLifecycle(NO_LIFECYCLE_REASON.format(provider=provider))


def skip_kind(exc: BaseException | None) -> str:
    """``not_tested``, ``no_lifecycle`` or ``skipped`` for the exception that skipped a check.

    The harness plugin raises its own skip for an unavailable service; it carries
    ``not_tested = True`` too (the harness does not import this package).
    """
    if isinstance(exc, NoLifecycle):
        return "no_lifecycle"
    if exc is not None and getattr(type(exc), "not_tested", False) is True:
        return "not_tested"
    return "skipped"
