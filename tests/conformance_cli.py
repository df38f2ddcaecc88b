"""The ``conformance`` command line as the project's tests run it: a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def conformance_cli(
    *args: str,
    timeout: float = 300,
    cwd: Path = ROOT,
    paths: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m conformance *args`` in ``cwd``, output captured as text; PYTHONPATH is
    ``paths`` (say, a folder of test adapters) then the project; ``env`` adds variables."""
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([*map(str, paths), str(ROOT)]),
            **(env or {}),
        },
    )
