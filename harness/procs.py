"""Linux /proc helpers: which processes belong to a group or carry an env marker."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int, tid: int | None = None) -> list[str] | None:
    """The fields after the command name of a process's (or one of its threads') stat."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def process_state(pid: int) -> str | None:
    """One-letter state from /proc (R, S, T for stopped, Z, ...) or None if gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def all_pids() -> list[int]:
    """Every pid visible in /proc."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pids_in_group(pgid: int) -> set[int]:
    """Live processes whose process group is pgid."""
    found = set()
    for pid in all_pids():
        fields = _stat_fields(pid)
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.add(pid)
    return found


def running_threads_in_group(pgid: int) -> list[int]:
    """Threads of the group's live processes not stopped yet (a SIGSTOP takes effect
    thread by thread: a thread busy on another core stops when it is interrupted)."""
    running = []
    for pid in pids_in_group(pgid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            fields = _stat_fields(pid, tid)
            if fields is not None and fields[0] not in ("T", "t", "Z", "X"):
                running.append(tid)
    return running


def pids_with_env(name: str, value: str) -> set[int]:
    """Live processes whose environment has name=value (readable ones only)."""
    needle = f"{name}={value}".encode()
    found = set()
    for pid in all_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and is_alive(pid):
            found.add(pid)
    return found


def descendants(pid: int) -> set[int]:
    """Live processes below pid in the process tree (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for other in all_pids():
        fields = _stat_fields(other)
        if fields and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(other)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
