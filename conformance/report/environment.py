"""The environment block of report.json: tool, git revision, Python, libraries, brokers."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

TOOL = "purista-conformance"
# client libraries under the project's own, whose versions a reader of a report wants
_INDIRECT = ("aiormq",)


def _libraries() -> tuple[str, ...]:
    """The tool and every distribution it requires (any extra), read from its metadata."""
    try:
        requires = importlib.metadata.requires(TOOL) or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    names = [m.group(0) for r in requires if (m := re.match(r"[A-Za-z0-9._-]+", r))]
    return tuple(dict.fromkeys([TOOL, *names, *_INDIRECT]))


LIBRARIES = _libraries()


def tool_version() -> str:
    """The installed purista-conformance version."""
    try:
        return importlib.metadata.version(TOOL)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def libraries() -> dict[str, str]:
    """``{distribution: version}`` for the installed ones among :data:`LIBRARIES`."""
    out = {}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def git_revision(start: Path | None = None) -> str | None:
    """The commit of the source checkout the package runs from (None in a pip install)."""
    root = (start or Path(__file__)).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    rev = proc.stdout.strip()
    if proc.returncode != 0 or not rev:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout.strip()
    return rev + ("-dirty" if dirty else "")


def collect(
    provider: str, provider_reason: str, brokers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The environment block (``brokers`` maps service name to the version it reported)."""
    return {
        "tool_version": tool_version(),
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "libraries": libraries(),
        "brokers": [{"name": n, "version": v} for n, v in sorted((brokers or {}).items())],
        "provider": provider,
        "provider_reason": provider_reason,
    }
