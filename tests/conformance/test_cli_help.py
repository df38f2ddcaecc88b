"""The command line explains itself: --help (defaults, choices, exit codes, examples),
--version, and an unknown kind named as such."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "100"},
    )


def test_run_help_shows_defaults_choices_exit_codes_and_examples() -> None:
    out = cli("run", "--help").stdout
    flat = " ".join(out.split())  # help text wraps anywhere
    assert "{all,contract,deployment,faults" in out
    assert "(default: all)" in flat and "(default reports/conformance)" in flat
    for code in ("  0 ", "  1 ", "  2 ", "  3 ", "128+N"):
        assert code in out, code
    assert "examples:" in out and "conformance run --adapter memory -n 2" in out


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"conformance {importlib.metadata.version('purista-conformance')}"


def test_an_unknown_kind_is_named_as_a_kind() -> None:
    proc = cli("run", "--adapter", "kafka:memory")
    assert proc.returncode == 2
    assert "unknown adapter kind 'kafka' in 'kafka:memory'" in proc.stderr
    assert "event_bridge, queue_bridge" in proc.stderr
    assert "No module named" not in proc.stderr


def test_list_gives_whole_sentences_for_what_each_check_proves() -> None:
    import json

    proc = cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    checks = json.loads(proc.stdout)["checks"]
    assert len(checks) > 50
    cut = [c["check"] for c in checks if not c["summary"].endswith((".", ")", ":"))]
    assert not cut, f"summaries cut mid-sentence: {cut}"
