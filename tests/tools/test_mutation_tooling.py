"""The mutation tooling works: on a tiny project, known mutants are killed, the one the tests
cannot see survives with its diff, and an equivalents entry moves it out of the score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "tools" / "mutation" / "run.py"

PYPROJECT = """[tool.mutmut]
source_paths = ["tiny"]
pytest_add_cli_args_test_selection = ["tests"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:purista_harness"]
"""
TINY = """def is_adult(age):
    return age >= 18
"""
# 18 and 17 pin the boundary: every mutant of the comparison and of the constant is killed.
TESTS = """from tiny.calc import is_adult


def test_boundary():
    assert is_adult(18)
    assert not is_adult(17)
"""


def _project(tmp: Path, source: str) -> Path:
    (tmp / "tiny").mkdir()
    (tmp / "tiny" / "__init__.py").write_text("")
    (tmp / "tiny" / "calc.py").write_text(source)
    (tmp / "tests").mkdir()
    (tmp / "tests" / "test_calc.py").write_text(TESTS)
    (tmp / "pyproject.toml").write_text(PYPROJECT)
    return tmp


def _run(root: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            str(RUN),
            *extra,
            "tiny/calc.py",
            "--root",
            str(root),
            "--workers",
            "1",
            "--out",
            str(root / "out"),
            "--equivalents",
            str(root / "eq.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((root / "out" / "summary.json").read_text())["modules"][0]


def test_killed_survived_and_equivalent(tmp_path: Path) -> None:
    # a second function no test calls: its mutants survive ("no tests")
    root = _project(tmp_path, TINY + "\n\ndef unused(x):\n    return x + 1\n")
    got = _run(root, "run")
    assert got["killed"] >= 2, got
    assert got["survived"] >= 1, got
    names = [s["name"] for s in got["survivors"]]
    assert all("unused" in n for n in names), names
    assert all(s["diff"].count("\n+") >= 1 for s in got["survivors"])
    assert got["score"] < 1

    # mark every survivor equivalent (by its + line): the score counts only the rest
    lines = []
    for s in got["survivors"]:
        plus = [
            ln[1:].strip()
            for ln in s["diff"].splitlines()
            if ln.startswith("+") and not ln.startswith("+++")
        ]
        lines.append(f'[mutant."{s["name"]}"]\nline = {json.dumps(plus[0])}\nreason = "test"\n')
    (root / "eq.toml").write_text("\n".join(lines))
    again = _run(root, "summary")
    assert again["equivalent"] == got["survived"], again
    assert again["survived"] == 0 and again["score"] == 1.0, again

    # a survivor with a reason still counts as survived, the summary says why
    name = got["survivors"][0]["name"]
    first = lines[0].split("\n")[1]  # the first survivor's line = "..."
    (root / "eq.toml").write_text(f'[survivor."{name}"]\n{first}\nreason = "open: left free"\n')
    known = _run(root, "summary")
    assert known["survived"] == got["survived"], known
    assert [s.get("reason") for s in known["survivors"] if s["name"] == name] == [
        "open: left free"
    ], known
    assert known["stale_survivor_reasons"] == [], known

    # a reason whose line no longer matches (the name now means another mutant) is stale:
    # the summary does not print it beside the other mutant
    wrong = first.replace('line = "', 'line = "renumbered ')
    (root / "eq.toml").write_text(f'[survivor."{name}"]\n{wrong}\nreason = "open: left free"\n')
    renamed = _run(root, "summary")
    assert renamed["stale_survivor_reasons"] == [name], renamed
    assert not [s for s in renamed["survivors"] if s.get("reason")], renamed

    # an entry whose line no longer matches the mutant is stale: the mutant survives
    (root / "eq.toml").write_text(lines[0].replace('line = "', 'line = "stale '))
    stale = _run(root, "summary")
    assert stale["stale_equivalents"] == [got["survivors"][0]["name"]], stale


def test_report_quotes_recorded_scores(tmp_path: Path) -> None:
    from conformance.report.html import _mutation_score

    assert _mutation_score(tmp_path / "absent.json") == ""
    path = tmp_path / "score.json"
    row = {"module": "memory.stores", "date": "2026-12-01", "score": 0.9512, "killed": 39}
    row |= {"survived": 2, "equivalent": 1, "total": 42}
    path.write_text(json.dumps({"modules": [row]}))
    html = _mutation_score(path)
    assert "memory.stores" in html and "2026-12-01" in html and "95.1 %" in html


BRANCHY = """def label(age):
    if age < 0:
        raise ValueError("negative age")
    return "adult" if age >= 18 else "minor"
"""


def test_statement_range_and_line_selection() -> None:
    """A mutant runs only the checks that execute its statement: a compound statement's
    header is its own statement, a signature change keeps every check."""
    import ast

    sys.path.insert(0, str(RUN.parent))
    import line_cover

    func = ast.parse(BRANCHY).body[0]
    assert line_cover.statement_range(func, 2) == (2, 2)  # the if header, not its body
    assert line_cover.statement_range(func, 3) == (3, 3)
    assert line_cover.statement_range(func, 4) == (4, 4)
    assert line_cover.statement_range(func, 1) is None  # the signature


def test_line_selection_keeps_the_kills(tmp_path: Path) -> None:
    """With line-level selection the boundary test still kills every mutant it did, and a
    mutant on a line no test executes survives as run by no check."""
    root = _project(tmp_path, BRANCHY)
    (root / "tests" / "test_calc.py").write_text(
        "from tiny.calc import label\n\n\ndef test_boundary():\n"
        "    assert label(18) == 'adult'\n    assert label(17) == 'minor'\n"
    )
    mod = _run(root, "run")
    assert mod["killed"] > 0
    survivors = "\n".join(s["diff"] for s in mod["survivors"])
    assert "negative age" in survivors or "age < 0" in survivors or "age <= 0" in survivors
    changed = [
        ln
        for s in mod["survivors"]
        for ln in s["diff"].splitlines()
        if ln.startswith("+") and not ln.startswith("+++")
    ]
    assert changed and not any("return" in ln for ln in changed), survivors


def test_changed_lines_names_a_pure_deletion_by_its_removed_line() -> None:
    sys.path.insert(0, str(RUN.parent))
    import run

    swapped = "--- a.py\n+++ a.py\n@@ -1,2 +1,2 @@\n-    x = 1\n+    x = 2\n"
    deleted = "--- a.py\n+++ a.py\n@@ -1,3 +1,2 @@\n     f(\n-        y,\n     )\n"
    assert run.changed_lines(swapped) == ["x = 2"]
    assert run.changed_lines(deleted) == ["-y,"]


def test_rekey_follows_renumbered_mutants(tmp_path: Path) -> None:
    # survivors marked by their line; a statement added in front renumbers them
    root = _project(tmp_path, TINY + "\n\ndef unused(x):\n    return x + 1\n")
    got = _run(root, "run")
    entries = []
    for s in got["survivors"]:
        plus = [ln[1:].strip() for ln in s["diff"].splitlines() if ln.startswith("+ ")]
        entries.append(f'[mutant."{s["name"]}"]\nline = {json.dumps(plus[0])}\nreason = "t"\n')
    (root / "eq.toml").write_text("\n".join(entries))
    assert _run(root, "summary")["equivalent"] == got["survived"]
    (root / "tiny" / "calc.py").write_text(
        TINY + "\n\ndef unused(x):\n    y = 'first'\n    return x + 1\n"
    )
    moved = _run(root, "run")
    assert moved["stale_equivalents"], moved  # the old names now mean other mutants
    fixed = _run(root, "rekey")
    assert fixed["stale_equivalents"] == [], fixed
    assert fixed["equivalent"] == got["survived"], fixed
