"""What a ``conformance run`` means: the exit code and the adapters that were not tested.

Every exit code is decided here (:func:`decide`), so that callers extend one table:

- 0 ``passed``: every selected adapter ran at least one check and every check that
  ran passed or was declared unsupported (an adapter of a broad ``--adapter`` value,
  such as ``memory``, whose checks ``-k`` all deselected is named as not tested);
- 1 ``failed``: a check failed (or pytest hit an internal error);
- 2 ``usage``: a bad option, provider, suite or adapter, or a selection that
  matches no check;
- 3 ``not tested``: a selected adapter had checks skipped because its backing
  service could not be provided (``--allow-missing-services`` turns it into 0).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_TESTED = 3

STATUS = {
    EXIT_PASSED: "passed",
    EXIT_FAILED: "failed",
    EXIT_USAGE: "usage error",
    EXIT_NOT_TESTED: "not tested",
}

# pytest's own exit codes (pytest.ExitCode)
_PYTEST_OK, _PYTEST_FAILED, _PYTEST_INTERRUPTED, _PYTEST_INTERNAL = 0, 1, 2, 3
_PYTEST_USAGE, _PYTEST_NO_TESTS = 4, 5
_RAN = ("passed", "failed", "unsupported")


@dataclass
class Verdict:
    """The outcome of one run: exit code, why, and which adapters were not tested."""

    code: int
    reason: str
    not_tested: dict[str, str] = field(default_factory=dict)
    allowed_missing: bool = False

    @property
    def status(self) -> str:
        """``passed``, ``failed``, ``usage error`` or ``not tested``."""
        return STATUS.get(self.code, "failed")

    def as_dict(self) -> dict[str, Any]:
        """For report.json."""
        return {
            "exit_code": self.code,
            "status": self.status,
            "reason": self.reason,
            "allowed_missing_services": self.allowed_missing,
            "not_tested": [
                {"adapter": label.partition(":")[2], "kind": label.partition(":")[0], "reason": r}
                for label, r in sorted(self.not_tested.items())
            ],
        }


def not_tested_adapters(
    rows: list[dict[str, Any]], preflight_missing: dict[str, str] | None = None
) -> dict[str, str]:
    """``{kind:adapter: reason}`` for adapters with a "not tested" skip or with no check run.

    ``preflight_missing`` maps adapters whose services failed the preflight to the reason.
    """
    out: dict[str, str] = dict(preflight_missing or {})
    by_adapter: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_adapter[f"{r['kind']}:{r['adapter']}"].append(r)
    for label, rs in by_adapter.items():
        if label in out:
            continue
        missing = [r for r in rs if r["status"] == "skipped" and r.get("skip") == "not_tested"]
        if missing:
            out[label] = missing[0]["message"].splitlines()[0] if missing[0]["message"] else ""
        elif not any(r["status"] in _RAN for r in rs):
            out[label] = "no check ran: " + (rs[0]["message"].splitlines() or [""])[0]
    return out


def decide(
    pytest_code: int,
    rows: list[dict[str, Any]],
    *,
    selected: int,
    allow_missing: bool = False,
    preflight_missing: dict[str, str] | None = None,
    empty_selection: str = "",
    unmatched: str = "",
    left_out: str = "",
) -> Verdict:
    """The exit code of a run from pytest's exit code and the result rows.

    ``selected`` is how many checks the selection held (before any preflight removed
    them); ``empty_selection`` describes the selection when it held none; ``unmatched``
    names the ``--adapter`` values whose adapters got no check (another's did);
    ``left_out`` names the selected adapters ``-k`` kept no check of (a passing run says
    so instead of "every selected adapter was tested").
    """
    if pytest_code == _PYTEST_USAGE:
        return Verdict(EXIT_USAGE, "pytest rejected the arguments")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed or pytest_code in (_PYTEST_FAILED, _PYTEST_INTERNAL):
        n = len(failed)
        return Verdict(EXIT_FAILED, f"{n} check(s) failed" if n else "pytest reported an error")
    if pytest_code == _PYTEST_INTERRUPTED:
        return Verdict(EXIT_FAILED, "interrupted")
    missing = not_tested_adapters(rows, preflight_missing)
    if preflight_missing and not allow_missing:
        return Verdict(EXIT_NOT_TESTED, "backing services unavailable", missing)
    if selected == 0:
        return Verdict(EXIT_USAGE, f"the selection matches no check: {empty_selection}")
    if unmatched:
        return Verdict(EXIT_USAGE, f"the selection matches no check for {unmatched}")
    if missing:
        if allow_missing:
            return Verdict(
                EXIT_PASSED,
                f"{len(missing)} adapter(s) not tested (--allow-missing-services)",
                missing,
                allowed_missing=True,
            )
        return Verdict(EXIT_NOT_TESTED, f"{len(missing)} adapter(s) not tested", missing)
    if left_out:
        return Verdict(
            EXIT_PASSED,
            f"no check failed; not tested: {left_out} (a narrower --adapter "
            "names only what -k checks)",
        )
    return Verdict(EXIT_PASSED, "every selected adapter was tested; no check failed")
