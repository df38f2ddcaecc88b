"""The suite knows adapters only through the registry (``conformance/adapters``).

A built-in adapter's name written anywhere else in ``conformance/`` would give that
adapter behaviour a third-party adapter with the same descriptor cannot get.
"""

from __future__ import annotations

import ast
from pathlib import Path

from reference_services.adapters import registry

CONFORMANCE = Path(__file__).resolve().parents[2] / "conformance"
REGISTRY = CONFORMANCE / "adapters"
# raw clients of a wire protocol, keyed on the descriptor's ``protocol`` ("amqp", "nats",
# "mqtt" name protocols there, not adapters)
PROTOCOL_MODULES = {
    CONFORMANCE / "checks" / "event_bridge" / "purista_peer.py",
    CONFORMANCE / "checks" / "event_bridge" / "test_purista_wire.py",
}


def adapter_names_outside_registry(root: Path, names: set[str]) -> list[str]:
    """``path:line 'name'`` for each string literal naming an adapter outside the registry."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if REGISTRY in path.parents or path.parent == root / "adapters":
            continue
        if path in PROTOCOL_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.value!r}")
    return found


def test_no_adapter_name_in_the_suite_outside_the_registry() -> None:
    names = {d.name for d in registry.builtin()}
    assert {"memory", "amqp", "nats", "mqtt", "redis", "nats-kv"} <= names
    found = adapter_names_outside_registry(CONFORMANCE, names)
    assert not found, "\n".join(found)


def test_the_scan_finds_a_name(tmp_path: Path) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "x.py").write_text('if aut.name == "amqp":\n    pass\n')
    assert len(adapter_names_outside_registry(tmp_path, {"amqp"})) == 1
