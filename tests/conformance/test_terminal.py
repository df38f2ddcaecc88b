"""What `conformance run` shows in a terminal: a live panel on a TTY (brokers starting,
checks done/total, the running check), plain lines under CI, the shipped ini in the
header, and check ids in the short summary. Run in a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

# at collection, not inside the test: Python 3.11.7's ast.parse (pytest's assertion rewriting
# of conformance.plugin on first import) raised "SystemError: AST constructor recursion
# depth mismatch" when that first import came late in an xdist worker
from conformance.plugin.progress import RichProgress

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SELECTION = [
    "--adapter",
    "ignores_ttl=broken_adapters:ignores_ttl",
    "--adapter",
    "state_store:redis",
    "--suite",
    "contract",
    "-k",
    "event_bridge.commands.timeout or event_bridge.commands.round_trip or stores.crud",
]
# the harness decides whether a missing redis skips the test or fails it (under
# --require-services or $CI), as for every other test that needs a broker
needs_redis = pytest.mark.usefixtures("harness_redis")


def run_in_pty(args: list[str], tmp_path: Path, **env: str) -> tuple[int, str]:
    """``conformance run`` with its stdout and stderr on a pseudo-terminal (100 columns)."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    environ.update(
        COLUMNS="100",
        LINES="40",
        TERM="xterm-256color",
        PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]),
        **env,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "conformance", "run", *args, "--report-dir", str(tmp_path)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=HERE,
        env=environ,
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=30)
    os.close(master)
    return code, out.decode("utf-8", "replace")


def plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "\n")


def assert_header_and_summary(out: str) -> None:
    config_lines = [ln for ln in out.splitlines() if ln.startswith("configfile:")]
    assert config_lines == ["configfile: conformance/run.ini"], config_lines
    assert "harness-run-" not in out and "pytest.ini" not in out
    summary = out.split("short test summary info", 1)[1]
    assert "FAILED event_bridge.commands.timeout[event_bridge:ignores_ttl]" in summary, summary
    assert "test_commands.py::" not in summary, summary


@needs_redis
def test_a_terminal_gets_the_live_panel(tmp_path: Path) -> None:
    code, raw = run_in_pty(SELECTION, tmp_path)
    out = plain(raw)
    assert code == 1, out[-3000:]
    assert "\x1b[?25l" in raw, "no live display (rich hides the cursor while it draws)"
    assert re.search(r"services\s.*redis", out), out[:3000]
    assert re.search(r"checks\s.*\d+/4\b", out), out[:3000]
    assert re.search(r"running\s+event_bridge\.commands\.timeout \[event_bridge:ignores_ttl\]", out)
    assert "✘ event_bridge.commands.timeout [event_bridge:ignores_ttl]" in out
    assert re.search(r"checks: 4/4 in [0-9.]+s \(2 failed, 2 passed\)", out), out[-3000:]
    # pytest's own per-file line of dots is muted while the panel shows
    assert not re.search(r"test_commands\.py [.F]+", out), out[:3000]
    assert_header_and_summary(out)


@needs_redis
def test_under_ci_the_terminal_gets_plain_lines(tmp_path: Path) -> None:
    code, raw = run_in_pty(SELECTION, tmp_path, CI="true")
    out = plain(raw)
    assert code == 1, out[-3000:]
    assert "\x1b[?25l" not in raw and "\x1b[1A" not in raw, "a live display under CI"
    assert "services: starting and probing redis ..." in out
    assert re.search(r"services: redis ready in [0-9.]+s", out), out[:3000]
    assert re.search(r"test_commands\.py [.F]+", out), out[:3000]
    assert_header_and_summary(out)


def test_the_panel_shows_a_refused_broker_and_no_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, raw = run_in_pty(
        ["--provider", "external", "--adapter", "state_store:redis", "--suite", "contract",
         "-k", "stores.crud"],
        tmp_path,
        REDIS_URL=f"redis://user:hunter2@127.0.0.1:{port}/0",
    )  # fmt: skip
    out = plain(raw)
    assert code == 3, out[-3000:]
    assert "\x1b[?25l" in raw, "no live display"
    assert re.search(r"✘ redis", out), out[:3000]
    assert f"preflight: redis: connection refused at 127.0.0.1:{port}" in out
    assert "hunter2" not in raw


def test_the_panel_shows_a_version_as_text_not_markup() -> None:
    """A broker's version string with brackets (an external server reports its own) is shown
    as it is; read as markup it raised in the panel's refresh (seen: MarkupError before)."""
    import io

    from rich.console import Console

    class Writer:
        fullwidth = 100

    class Reporter:
        _tw = Writer()

    panel = RichProgress(Reporter())
    try:
        panel.service_done("nats", None, 0.5, "2.10.18 [/beta]")
        out = io.StringIO()
        Console(file=out, width=100).print(panel)
        assert "2.10.18 [/beta]" in out.getvalue()
    finally:
        panel.close()
