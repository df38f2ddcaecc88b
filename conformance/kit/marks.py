"""The ``@check`` decorator: a stable id, the adapter kinds, the capabilities needed."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

SUITES = ("contract", "faults", "deployment", "robustness")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CheckInfo:
    """What ``conformance list`` and the report know about a check."""

    id: str
    kinds: tuple[str, ...]
    needs: tuple[str, ...]
    suite: str
    doc: str
    open_behaviour: bool
    exercises: tuple[str, ...] = ()

    @property
    def exercised(self) -> tuple[str, ...]:
        """Every capability a run of this check puts to the test (``needs`` + ``exercises``)."""
        return tuple(dict.fromkeys(self.needs + self.exercises))

    def needs_for(self, kind: str) -> tuple[str, ...]:
        """The capabilities this check needs of an adapter of ``kind`` (``kind:cap``
        entries apply to that kind only)."""
        out = []
        for need in self.needs:
            only, sep, cap = need.rpartition(":")
            if not sep or only == kind:
                out.append(cap)
        return tuple(out)

    @property
    def summary(self) -> str:
        """The docstring's first paragraph on one line (whole sentences, not its first line)."""
        return " ".join(self.doc.strip().split("\n\n", 1)[0].split())


def _suite_of(module: str) -> str:
    parts = module.split(".")
    for suite in SUITES[1:]:
        if suite in parts:
            return suite
    return "contract"


def check(
    check_id: str,
    *,
    kinds: tuple[str, ...] | list[str],
    needs: tuple[str, ...] | list[str] = (),
    suite: str | None = None,
    open_behaviour: bool = False,
    exercises: tuple[str, ...] | list[str] = (),
) -> Callable[[F], F]:
    """Declare a conformance check.

    ``needs`` names capabilities (attributes of the adapter's ``capabilities``);
    ``kind:capability`` names one that only adapters of that kind need.
    An adapter that declares one of them unsupported still runs the check, in
    "expected to fail" mode. ``open_behaviour`` checks record what the adapter
    does where the contract leaves it open; they pass unless the run breaks.
    ``exercises`` names capabilities whose declaration the check's verdict follows without
    gating it (a fault check expecting no loss when ``durable`` is declared); the report
    counts them as exercised, as it does ``needs``.
    """

    def deco(fn: F) -> F:
        info = CheckInfo(
            id=check_id,
            kinds=tuple(kinds),
            needs=tuple(needs),
            suite=suite or _suite_of(fn.__module__),
            doc=inspect.getdoc(fn) or "",
            open_behaviour=open_behaviour,
            exercises=tuple(exercises),
        )
        marked = pytest.mark.conformance_check(info)(fn)
        marked.__conformance__ = info  # type: ignore[attr-defined]
        return marked

    return deco


def all_checks(suite: str = "all") -> list[CheckInfo]:
    """Import every check module and list the checks (for ``conformance list``)."""
    import conformance.checks as root

    found: dict[str, CheckInfo] = {}
    for mod in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
        if not mod.name.rpartition(".")[2].startswith("test_"):
            continue
        module = importlib.import_module(mod.name)
        for obj in vars(module).values():
            info = getattr(obj, "__conformance__", None)
            if isinstance(info, CheckInfo) and (suite == "all" or info.suite == suite):
                found[info.id] = info
    return sorted(found.values(), key=lambda c: c.id)
