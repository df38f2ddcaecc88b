"""What the terminal shows while a run goes: brokers starting, checks done/total, the
current check.

Two displays with one interface. ``RichProgress`` (a TTY, not under CI, default
verbosity) draws a live panel and mutes pytest's per-file dots while checks run;
``PlainProgress`` (a pipe, a CI log, ``-v``, ``-s``) writes whole lines and leaves
pytest's own output alone. ``--cf-progress rich|plain`` forces one.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from reference_services.runtime.redact import redact_text

MODES = ("auto", "rich", "plain")


@dataclass
class _Service:
    name: str
    started: float
    state: str = "starting"  # starting | ready | failed
    seconds: float = 0.0
    detail: str = ""


@dataclass
class _Counts:
    total: int = 0
    done: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


def choose(mode: str, config: pytest.Config, stream: Any = None) -> str:
    """``rich`` or ``plain`` for ``mode`` (``auto`` decides from the terminal and CI)."""
    if mode not in MODES:
        raise pytest.UsageError(f"--cf-progress must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    stream = stream or sys.stdout
    plain = (
        not getattr(stream, "isatty", lambda: False)()
        or os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
        or os.environ.get("TERM") == "dumb"
        or config.getoption("capture", "fd") == "no"  # -s: checks print into the panel
        or config.getoption("verbose", 0) != 0
        or not config.get_terminal_writer().hasmarkup
    )
    return "plain" if plain else "rich"


class PlainProgress:
    """Whole lines through pytest's terminal writer; pytest's own lines stay as they are."""

    def __init__(self, tr: Any) -> None:
        self._tr = tr
        self._lock = threading.Lock()
        self.counts = _Counts()

    def _line(self, text: str, **markup: bool) -> None:
        with self._lock:
            self._tr.write_line(redact_text(text), **markup)

    def services_starting(self, names: list[str]) -> None:
        # brokers take seconds to start (RabbitMQ ~10 s): say what the wait is for
        self._line(f"services: starting and probing {', '.join(names)} ...")

    def service_done(self, name: str, problem: str | None, seconds: float, version: str) -> None:
        if problem:
            self._line(f"services: {name} failed after {seconds:.1f}s", red=True)
        else:
            self._line(f"services: {name} ready in {seconds:.1f}s {version}".rstrip())

    def services_finished(self, seconds: float, versions: str) -> None:
        self._line(f"services: ready in {seconds:.1f}s: {versions or 'none'}")

    def checks_begin(self, total: int) -> None:
        self.counts.total = total

    def check_started(self, title: str) -> None:
        pass

    def check_finished(self, title: str, outcome: str, seconds: float) -> None:
        self.counts.done += 1
        self.counts.outcomes[outcome] = self.counts.outcomes.get(outcome, 0) + 1

    def note(self, text: str, **markup: bool) -> None:
        self._line(text, **markup)

    def close(self) -> None:
        pass


_SYMBOL = {"passed": "[green]✔[/]", "failed": "[red]✘[/]", "unsupported": "[yellow]~[/]"}


class RichProgress:
    """A live panel (rich) that pytest's per-test output does not scribble over.

    The panel writes to its own duplicate of the terminal's file descriptor, so that its
    refresh thread reaches the terminal while pytest captures a check's output; pytest's
    per-test writes go to a muted writer from the first check to the last.
    """

    def __init__(self, tr: Any, *, force: bool = False) -> None:
        from rich.console import Console
        from rich.live import Live

        self._tr = tr
        self._lock = threading.RLock()
        self.counts = _Counts()
        self._services: dict[str, _Service] = {}
        self._running: dict[str, float] = {}
        self._began = time.monotonic()
        self._checks_began: float | None = None
        fd = os.dup(sys.stdout.fileno())
        self._file = os.fdopen(fd, "w", encoding="utf-8", errors="replace", buffering=1)
        width = getattr(tr._tw, "fullwidth", None)
        self.console = Console(file=self._file, force_terminal=True if force else None, width=width)
        # sys.stdout and sys.stderr stay pytest's (its capture and the CLI's redaction own them)
        self._live = Live(
            self,
            console=self.console,
            refresh_per_second=4,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live_on = False
        self._tw_saved: Any = None

    # rich calls this on every refresh
    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.markup import escape
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            now = time.monotonic()
            grid = Table.grid(padding=(0, 1))
            grid.add_column(style="bold", no_wrap=True)
            grid.add_column()
            if self._services:
                parts = Table.grid(padding=(0, 2))
                cells: list[Any] = []
                for svc in sorted(self._services.values(), key=lambda s: s.name):
                    # a version is what the broker reports: text, never markup
                    name, detail = escape(svc.name), escape(svc.detail)
                    if svc.state == "starting":
                        cells.append(Spinner("dots", text=f"{svc.name} {now - svc.started:.1f}s"))
                    elif svc.state == "ready":
                        cells.append(
                            Text.from_markup(
                                f"[green]✔[/] {name} {svc.seconds:.1f}s [dim]{detail}[/]"
                            )
                        )
                    else:
                        cells.append(Text.from_markup(f"[red]✘[/] {name} {detail}"))
                for _ in cells:
                    parts.add_column(no_wrap=True)
                parts.add_row(*cells)
                grid.add_row("services", parts)
            c = self.counts
            if c.total:
                line = Table.grid(padding=(0, 1))
                line.add_column(width=30)
                line.add_column(no_wrap=True)
                tally = "  ".join(
                    f"{_SYMBOL.get(k, '[dim]-[/]')} {v}" for k, v in sorted(c.outcomes.items())
                )
                took = now - (self._checks_began or now)
                line.add_row(
                    ProgressBar(total=c.total, completed=c.done, width=30),
                    Text.from_markup(f"{c.done}/{c.total}  {tally}  [dim]{took:.0f}s[/]"),
                )
                grid.add_row("checks", line)
                for title, since in list(self._running.items())[-4:]:
                    grid.add_row(
                        "running", Text(f"{title}  {now - since:.1f}s", overflow="ellipsis")
                    )
            return Group(grid)

    def _ensure_live(self) -> None:
        if not self._live_on:
            self._live.start()
            self._live_on = True

    def services_starting(self, names: list[str]) -> None:
        with self._lock:
            now = time.monotonic()
            for name in names:
                self._services[name] = _Service(name, now)
        self._ensure_live()

    def service_done(self, name: str, problem: str | None, seconds: float, version: str) -> None:
        with self._lock:
            svc = self._services.setdefault(name, _Service(name, time.monotonic()))
            svc.state = "failed" if problem else "ready"
            svc.seconds = seconds
            svc.detail = "failed" if problem else version

    def services_finished(self, seconds: float, versions: str) -> None:
        self.note(f"services: ready in {seconds:.1f}s: {versions or 'none'}")

    def checks_begin(self, total: int) -> None:
        with self._lock:
            self.counts.total = total
            self._checks_began = time.monotonic()
        if total:
            self._ensure_live()
            self._mute_pytest()

    def check_started(self, title: str) -> None:
        with self._lock:
            self._running[title] = time.monotonic()

    def check_finished(self, title: str, outcome: str, seconds: float) -> None:
        with self._lock:
            self._running.pop(title, None)
            self.counts.done += 1
            self.counts.outcomes[outcome] = self.counts.outcomes.get(outcome, 0) + 1
        if outcome == "failed":
            from rich.markup import escape

            self.note(f"[red]✘[/] {escape(title)}  [dim]{seconds:.2f}s[/]", markup=True)
        if self._live_on:
            self._live.refresh()

    def note(self, text: str, *, markup: bool = False, **_: bool) -> None:
        """A line above the panel (kept in the scrollback); URL passwords masked, as
        everywhere (the panel writes to its own descriptor, past the CLI's redaction)."""
        text = redact_text(text)
        if self._live_on:
            self._live.console.print(text, markup=markup, highlight=False, soft_wrap=True)
        else:
            self._tr.write_line(text)

    def _mute_pytest(self) -> None:
        if self._tw_saved is None:
            from _pytest.terminal import TerminalWriter

            self._tw_saved = self._tr._tw
            muted = TerminalWriter(io.StringIO())
            muted.fullwidth = self._tw_saved.fullwidth
            self._tr._tw = muted
            # pytest writes its final "[100%]" after the loop, where the panel has gone
            self._tr._show_progress_info = False

    def close(self) -> None:
        """Stop the panel, give pytest its writer back and leave one line of counts."""
        if self._tw_saved is not None:
            self._tr._tw = self._tw_saved
            self._tw_saved = None
            self._tr.currentfspath = None
        if self._live_on:
            self._live.stop()
            self._live_on = False
            c = self.counts
            if c.total:
                tally = ", ".join(f"{v} {k}" for k, v in sorted(c.outcomes.items()))
                took = time.monotonic() - (self._checks_began or self._began)
                self._tr.write_line(f"checks: {c.done}/{c.total} in {took:.1f}s ({tally})")
        try:
            self._file.close()
        except OSError:
            pass


def make(mode: str, config: pytest.Config, tr: Any) -> PlainProgress | RichProgress:
    """The display for this run (``mode`` as given by ``--cf-progress``)."""
    chosen = choose(mode, config)
    if chosen == "rich":
        try:
            return RichProgress(tr, force=mode == "rich")
        except (ImportError, OSError, ValueError):
            pass  # no rich, or no real stdout: lines still work
    return PlainProgress(tr)
