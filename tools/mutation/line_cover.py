"""Line-level test selection for mutants: a check runs on a mutant only if it executes
the mutated statement.

mutmut selects the checks that call the mutated function. Most survivors sit on paths
few checks take (an error branch, an info message), yet each ran every check that calls
its function, up to 20 s. A check that never executes the mutated statement runs the
mutant exactly as the original, so it cannot kill it and is not run.

``collect`` runs the checks once on the original tree under a line tracer restricted to
the mutated files (a pytest plugin in this module) and caches, per check node id, the
lines it executed in set-up, call and tear-down. ``Selector`` maps a mutant to the
statements its diff changes (the whole statement, or a compound statement's header) and
keeps the checks that executed any line of them. A change in a function's signature
(defaults, decorators) keeps every check of the function. Anything that cannot be mapped
keeps them too, so the selection only ever drops checks that cannot see the mutant.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ENV_OUT = "MUTATION_LINE_COVER_OUT"
ENV_FILES = "MUTATION_LINE_COVER_FILES"
HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


# ------------------------------------------------------------------ the pytest plugin
class _Tracer:
    """Records (file, line) executed in the watched files while a check runs."""

    def __init__(self, files: set[str]) -> None:
        self.files = files
        self.lines: set[tuple[str, int]] = set()

    def global_trace(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename in self.files:
            self.lines.add((frame.f_code.co_filename, frame.f_lineno))
            return self.local_trace
        return None

    def local_trace(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines.add((frame.f_code.co_filename, frame.f_lineno))
        return self.local_trace


class Plugin:
    """``-p line_cover``: writes {nodeid: {file: [lines]}} to $MUTATION_LINE_COVER_OUT."""

    def __init__(self) -> None:
        files = os.environ.get(ENV_FILES, "")
        self.tracer = _Tracer({str(Path(f).resolve()) for f in files.split(os.pathsep) if f})
        self.by_test: dict[str, dict[str, list[int]]] = {}

    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Any:
        self.tracer.lines = set()
        sys.settrace(self.tracer.global_trace)
        threading.settrace(self.tracer.global_trace)
        try:
            yield
        finally:
            sys.settrace(None)
            threading.settrace(None)  # type: ignore[arg-type]
            per_file: dict[str, set[int]] = {}
            for f, ln in self.tracer.lines:
                per_file.setdefault(f, set()).add(ln)
            self.by_test[item.nodeid] = {f: sorted(v) for f, v in per_file.items()}

    pytest_runtest_protocol.hookwrapper = True  # type: ignore[attr-defined]

    def pytest_sessionfinish(self, session: Any) -> None:
        out = os.environ.get(ENV_OUT)
        if out:
            Path(out).write_text(json.dumps(self.by_test), encoding="utf-8")


_plugin: Plugin | None = None


def pytest_configure(config: Any) -> None:
    global _plugin
    _plugin = Plugin()
    config.pluginmanager.register(_plugin, "line_cover_recorder")


# ------------------------------------------------------------------ collection
def _key(root: Path, files: Sequence[str], pytest_args: Sequence[str], tests_hash: str) -> str:
    h = hashlib.sha256(tests_hash.encode())
    for f in files:
        h.update(f.encode() + b"\0" + (root / f).read_bytes())
    h.update("\0".join(pytest_args).encode())
    return h.hexdigest()


def collect(
    root: Path, files: Sequence[str], pytest_args: Sequence[str], tests_hash: str
) -> dict[str, dict[str, list[int]]]:
    """Per check, the lines of ``files`` (relative to root) it executes; cached in
    mutants/line-coverage.json while the checks, the files and the arguments are unchanged."""
    cache = root / "mutants" / "line-coverage.json"
    key = _key(root, files, pytest_args, tests_hash)
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("key") == key:
            return dict(data["tests"])
    except (OSError, ValueError, KeyError):
        pass
    out = root / "mutants" / "line-coverage.tmp.json"
    out.parent.mkdir(exist_ok=True)
    env = {
        **os.environ,
        ENV_OUT: str(out),
        ENV_FILES: os.pathsep.join(str((root / f).resolve()) for f in files),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent), str(root)]),
        "MUTANT_UNDER_TEST": "",
    }
    cmd = [sys.executable, "-m", "pytest", "--rootdir=.", "-q", "-p", "line_cover", *pytest_args]
    print("line coverage of the checks:", " ".join(cmd[3:]), flush=True)
    proc = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not out.is_file():
        tail = proc.stdout.decode(errors="replace")[-3000:]
        raise RuntimeError(f"the line-coverage run failed (exit {proc.returncode}):\n{tail}")
    by_file = json.loads(out.read_text(encoding="utf-8"))
    out.unlink()
    # files as root-relative paths, as the selector names them
    rel = {str((root / f).resolve()): f for f in files}
    tests = {t: {rel[f]: v for f, v in cov.items() if f in rel} for t, cov in by_file.items()}
    cache.write_text(json.dumps({"key": key, "tests": tests}), encoding="utf-8")
    return tests


# ------------------------------------------------------------------ mutant -> statements
def _blocks(node: ast.AST) -> list[ast.AST]:
    out: list[ast.AST] = []
    for name in ("body", "orelse", "finalbody", "handlers", "cases"):
        value = getattr(node, name, None)
        if isinstance(value, list):
            out += [v for v in value if hasattr(v, "lineno")]
    return out


def statement_range(func: ast.AST, line: int) -> tuple[int, int] | None:
    """The lines of the statement holding ``line`` inside ``func`` (a compound
    statement's header only); None when the line is the function's own signature."""
    node = func
    while True:
        inner = [c for c in _blocks(node) if c.lineno <= line <= (c.end_lineno or c.lineno)]
        if inner:
            node = inner[0]
            continue
        if node is func:
            return None
        children = _blocks(node)
        first = min((c.lineno for c in children), default=None)
        if first is not None and line < first:
            return node.lineno, first - 1  # type: ignore[attr-defined]
        return node.lineno, node.end_lineno or node.lineno  # type: ignore[attr-defined]


def _find_function(tree: ast.Module, mangled: str) -> ast.AST | None:
    """The def of ``x_func`` or ``xǁClassǁmethod`` (mutmut's mangled names)."""
    if mangled.startswith("xǁ"):
        _, cls, meth = mangled.split("ǁ", 2)
        scopes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
        if not scopes:
            return None
        body, name = scopes[0].body, meth
    else:
        body, name = tree.body, mangled.removeprefix("x_")
    for n in body:
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name:
            return n
    return None


class Selector:
    """Keeps, of a mutant's function-level checks, those that execute its statements."""

    def __init__(self, root: Path, coverage: dict[str, dict[str, list[int]]]) -> None:
        self.root = root
        self.cover = {t: {f: set(v) for f, v in c.items()} for t, c in coverage.items()}
        self._trees: dict[str, tuple[ast.Module, list[str]]] = {}
        self.dropped = 0
        self.kept = 0

    def _tree(self, path: str) -> tuple[ast.Module, list[str]]:
        if path not in self._trees:
            text = (self.root / path).read_text(encoding="utf-8")
            self._trees[path] = (ast.parse(text), text.splitlines())
        return self._trees[path]

    def ranges(self, mutant_name: str, path: str) -> list[tuple[int, int]] | None:
        """The statements a mutant changes, as line ranges of ``path``; None: unknown."""
        from mutmut.mutation.diff_apply import get_diff_for_mutant, read_functions_from_index

        try:
            import libcst as cst

            functions = read_functions_from_index(mutant_name, path)
            if functions is None:
                return None
            orig = cst.Module([functions[0]]).code.strip().split("\n")
            diff = get_diff_for_mutant(mutant_name, path=path)
        except Exception:
            return None
        def_idx = next((i for i, ln in enumerate(orig) if re.match(r"(async\s+)?def\s", ln)), None)
        mangled = mutant_name.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
        tree, lines = self._tree(path)
        func = _find_function(tree, mangled)
        if def_idx is None or func is None:
            return None
        offset = func.lineno - (def_idx + 1)  # type: ignore[attr-defined]
        changed: set[int] = set()
        inserted: set[int] = set()
        n = 0
        for ln in diff.splitlines():
            m = HUNK.match(ln)
            if m:
                n = int(m.group(1))
                continue
            if ln.startswith(("---", "+++")):
                continue
            if ln.startswith("-"):
                abs_line = n + offset
                if abs_line > len(lines) or lines[abs_line - 1].strip() != ln[1:].strip():
                    return None  # the file and mutmut's copy differ: unknown
                changed.add(abs_line)
                n += 1
            elif ln.startswith("+"):  # between two lines of the original
                inserted.update({n - 1 + offset, n + offset})
            else:
                n += 1
        if not changed:  # a pure insertion: the statements around it
            body = func.body[0].lineno  # type: ignore[attr-defined]
            changed = {x for x in inserted if body <= x <= (func.end_lineno or 0)}  # type: ignore[attr-defined]
        if not changed:
            return None
        out = []
        for line in sorted(changed):
            r = statement_range(func, line)
            if r is None:
                return None
            out.append(r)
        return out

    def select(self, mutant_name: str, path: str, tests: Iterable[str]) -> list[str]:
        tests = list(tests)
        ranges = self.ranges(mutant_name, path)
        if ranges is None:
            self.kept += len(tests)
            return tests
        keep = []
        for t in tests:
            cov = self.cover.get(t)
            if cov is None:  # not in the coverage run: keep it
                keep.append(t)
                continue
            hit = cov.get(path, set())
            if any(any(lo <= x <= hi for x in hit) for lo, hi in ranges):
                keep.append(t)
        self.kept += len(keep)
        self.dropped += len(tests) - len(keep)
        return keep
