"""Every capability a built-in adapter declares supported has a check that exercises it in
some suite; the gaps left are named here with their reason, and the terminal says which
suite would exercise a capability a run did not."""

from __future__ import annotations

import pytest

from conformance.adapters import builtin_specs
from conformance.report import annotate_unexercised, suites_exercising

# importing the checks outside a conformance run: their mark is the plugin's
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")

#: (kind, capability) declared by built-ins that no check exercises yet, and why
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def _declared(spec: object) -> list[str]:
    caps = spec.capabilities_dict() or {}  # type: ignore[attr-defined]
    return [n for n, value in caps.items() if isinstance(value, dict) and value.get("supported")]


def test_every_declared_capability_of_the_builtins_has_a_check() -> None:
    gaps = {
        (spec.kind, cap)
        for spec in builtin_specs()
        for cap in _declared(spec)
        if not suites_exercising(spec.kind, cap)
    }
    assert gaps == set(KNOWN_GAPS), (
        f"declared but no check exercises them: {sorted(gaps - set(KNOWN_GAPS))}; "
        f"checked now, drop from KNOWN_GAPS: {sorted(set(KNOWN_GAPS) - gaps)}"
    )


def test_store_capabilities_are_checked_on_every_store_kind() -> None:
    for kind in ("state_store", "config_store", "secret_store"):
        for cap in ("set_if_absent", "ttl", "compare_and_set", "atomic_effects"):
            assert "contract" in suites_exercising(kind, cap), (kind, cap)


def test_the_terminal_names_where_an_unexercised_capability_is_checked() -> None:
    notes = annotate_unexercised(
        "event_bridge", ["publisher_confirms", "no_such_capability", "bounded_retry"]
    )
    assert notes[0] == "publisher_confirms (checked in the faults suite)"
    assert notes[1] == "no_such_capability (no check exists)"
    assert notes[2].startswith("bounded_retry (checked in the contract, ") and "suites)" in notes[2]
