"""Work directories of checks (service logs, traces): created in the run's temporary
directory, removed with it when the run ends, moved under the report directory when
their check fails (``<report dir>/kept/<check>/``) and named in its report row."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

_lock = threading.Lock()
_current: list[str] = []
_dirs: dict[str, list[Path]] = {}


def workdir(prefix: str) -> Path:
    """A new directory for the running check (kept if the check fails)."""
    from harness import run

    path = run.current().mkdtemp(prefix)
    with _lock:
        if _current:
            _dirs.setdefault(_current[-1], []).append(path)
    return path


def begin(nodeid: str) -> None:
    """The check ``nodeid`` starts: later work dirs belong to it."""
    with _lock:
        _current.append(nodeid)


def finish(nodeid: str) -> list[Path]:
    """The check ended: its work dirs (and forget them)."""
    with _lock:
        if nodeid in _current:
            _current.remove(nodeid)
        return _dirs.pop(nodeid, [])


def safe_name(nodeid: str) -> str:
    """A file name for a check's node id."""
    name = nodeid.split("::", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)[:120] or "check"


def kept_root(report_dir: Path | None) -> Path:
    """Where files of failing checks go: ``<report dir>/kept``, else ``./conformance-kept``."""
    return report_dir / "kept" if report_dir is not None else Path("conformance-kept")


def keep(paths: list[Path], root: Path, nodeid: str) -> list[tuple[str, str]]:
    """Move the existing paths to ``root/<check>/``; returns (old, new) pairs."""
    dest = root / safe_name(nodeid)
    moved = []
    for path in paths:
        if not path.exists():
            continue
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / path.name
        shutil.move(str(path), str(target))
        moved.append((str(path), str(target.resolve())))
    return moved
