"""conformance merge: per-adapter reports joined give the matrix of one run over both."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conformance_cli import conformance_cli

import conformance
from conformance.report.model import Report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BROKEN = "ignores_ttl=broken_adapters:ignores_ttl"
KEYWORD = "event_bridge.commands"


def _matrix(report: Report) -> dict[tuple[str, str, str], str]:
    return {(r.kind, r.adapter, r.check): r.status for r in report.results}


def _merge(*args: str) -> subprocess.CompletedProcess[str]:
    return conformance_cli("merge", *args, timeout=120)


def _merge_runs(
    runs: dict[str, Path], names: list[str], out: Path
) -> subprocess.CompletedProcess[str]:
    """``conformance merge`` of the named runs' report.json files into ``out``."""
    return _merge(*(str(runs[name] / "report.json") for name in names), "--report-dir", str(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(HERE))
        for name, adapters in {
            "memory": ["memory"],
            "broken": [BROKEN],
            "both": ["memory", BROKEN],
        }.items():
            out[name] = tmp_path_factory.mktemp(name)
            conformance.run(adapters=adapters, keyword=KEYWORD, quick=True, report_dir=out[name])
    return out


def test_merge_gives_the_matrix_of_one_run_over_both(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = _merge_runs(runs, ["memory", "broken"], tmp_path)
    one = Report.load(runs["both"] / "report.json")
    merged = Report.load(tmp_path / "report.json")
    assert _matrix(merged) == _matrix(one)
    assert len(merged.results) > 2 and {"passed", "failed"} <= set(_matrix(merged).values())
    assert merged.summary == one.summary
    assert {(a.kind, a.adapter): a.summary for a in merged.adapters} == {
        (a.kind, a.adapter): a.summary for a in one.adapters
    }
    assert merged.exit_code == one.exit_code == 1 == proc.returncode, proc.stderr
    assert merged.merged_from and len(merged.merged_from) == 2
    assert (tmp_path / "junit.xml").is_file() and (tmp_path / "report.html").is_file()


def test_merging_the_same_check_twice_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = _merge_runs(runs, ["memory", "both"], tmp_path)
    assert proc.returncode == 2
    assert "both hold event_bridge.commands" in proc.stderr and "event_bridge:memory" in proc.stderr
    assert not (tmp_path / "report.json").exists()


def test_merging_a_file_that_is_not_a_report_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    proc = _merge(str(bad), "--report-dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "bad.json is not a conformance report.json" in proc.stderr
