"""The ``numbers="safe_integers"`` path of the numbers checks: a queue that refuses, naming
the field, every integer a double would round passes; one declaring it and rounding fails
(``safe_integers_unchecked`` in the broken-adapters run)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_broken_adapters import run_conformance  # noqa: E402


def test_a_queue_refusing_unsafe_integers_as_declared_passes(tmp_path: Path) -> None:
    code, report = run_conformance(
        [
            "--suite",
            "contract",
            "-k",
            "queue_bridge.fidelity.numbers",
            "--adapter",
            "safe_integers_queue=broken_adapters:safe_integers_queue",
        ],
        tmp_path,
        timeout=300,
    )
    rows = [r for r in report["results"] if r["check"] == "queue_bridge.fidelity.numbers"]
    assert code == 0 and [r["status"] for r in rows] == ["passed"], rows
