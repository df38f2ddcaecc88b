"""The adapter SPI boundary: adapters use only what the SPI base classes expose.

Walks the AST of every module under ``reference_services/adapters`` (and the
out-of-tree example). A class deriving from an SPI base class (``EventBridgeBase``,
``StoreBase``, ...) must not read a private attribute the base defines (a
``self._x`` it assigns, or a ``_x`` method it has) unless the class itself defines
that method (a transport hook it implements); and nothing may read a private
attribute of the bridge's SPI object (``.core._x``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPI = ROOT / "reference_services" / "runtime" / "spi"
ADAPTER_TREES = [ROOT / "reference_services" / "adapters", ROOT / "examples"]
Privates = dict[str, set[str]]


def _classes(path: Path) -> list[ast.ClassDef]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def spi_privates() -> Privates:
    """Private names each SPI class defines (methods, and attributes it assigns on self)."""
    found: Privates = {}
    for path in SPI.glob("*.py"):
        for cls in _classes(path):
            names = found.setdefault(cls.name, set())
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if node.name.startswith("_") and not node.name.startswith("__"):
                        names.add(node.name)
                elif (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                ):
                    names.add(node.attr)
    return found


def violations(paths: list[Path], privates: Privates, root: Path = ROOT) -> list[str]:
    """Every read of a base's private attribute by a class derived from it."""
    classes = {cls.name: cls for path in paths for cls in _classes(path)}
    where = {cls.name: path for path in paths for cls in _classes(path)}

    def spi_ancestors(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if name in privates:
            return {name}
        cls = classes.get(name)
        if cls is None or name in seen:
            return set()
        out: set[str] = set()
        for base in cls.bases:
            out |= spi_ancestors(_base_name(base), seen | {name})
        return out

    core_privates = privates.get("BridgeCore", set())
    out = []
    for name, cls in classes.items():
        forbidden = set().union(*(privates[a] for a in spi_ancestors(name) - {name}))
        own = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for node in ast.walk(cls):
            if not isinstance(node, ast.Attribute):
                continue
            via_core = isinstance(node.value, ast.Attribute) and node.value.attr == "core"
            if (node.attr in forbidden and node.attr not in own) or (
                via_core and node.attr in core_privates
            ):
                rel = where[name].relative_to(root)
                out.append(f"{rel}:{node.lineno} {name} reads private {node.attr} of the SPI")
    return out


def _adapter_modules() -> list[Path]:
    return sorted(p for tree in ADAPTER_TREES for p in tree.rglob("*.py"))


def test_the_walk_sees_the_bases_private_state() -> None:
    # without these the boundary test below would pass vacuously
    privates = spi_privates()
    assert {"_own", "_check_encodable"} <= privates["EventBridgeBase"]
    assert {"_commands", "_subscriptions", "_background"} <= privates["BridgeCore"]
    assert "_started" in privates["StoreBase"]


def test_adapters_read_no_private_attribute_of_the_spi() -> None:
    modules = _adapter_modules()
    assert len(modules) > 20
    problems = violations(modules, spi_privates())
    assert not problems, "\n".join(problems)


def test_the_walk_catches_private_reads(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "class Mid(EventBridgeBase):\n"
        "    pass\n"
        "class Bad(Mid):\n"
        "    async def _connect(self):\n"
        "        return len(self.core._commands), self._own(None)\n"
        "class Unrelated:\n"
        "    def f(self):\n"
        "        return self._own\n"
    )
    problems = violations([bad], spi_privates(), tmp_path)
    assert len(problems) == 2 and all("Bad" in p for p in problems), problems


@pytest.mark.parametrize("attr", ["_started", "_commands"])
def test_the_walk_catches_each_kind_of_private(tmp_path: Path, attr: str) -> None:
    owner = "self" if attr == "_started" else "self.core"
    bad = tmp_path / "bad.py"
    bad.write_text(f"class S(StoreBase):\n    def f(self):\n        return {owner}.{attr}\n")
    assert len(violations([bad], spi_privates(), tmp_path)) == 1
