"""Fixtures of the faults suite: brokers to hurt, a Toxiproxy server, dedicated instances.

The harness pytest plugin (``harness.pytest_plugin``) provides the shared
broker fixtures (``rabbitmq``, ``nats``, ``redis``, ``mosquitto``,
``toxiproxy``) and ``harness_services``. When it is not loaded, the same
fixtures are defined here on a session :class:`harness.services.ServiceSet`
so that the suite still runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conformance.plugin.preflight import FAULTS_EXTRA
from harness.services import ServiceHandle, ServiceSet
from harness.services.spec import SPECS


def _harness_plugin_loaded(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("purista_harness") or any(
        getattr(p, "__name__", "") == "harness.pytest_plugin"
        for p in config.pluginmanager.get_plugins()
    )


_PLUGIN_INSTALLED = importlib.util.find_spec("harness.pytest_plugin") is not None


@pytest.fixture(scope="session")
def faults_services(request: pytest.FixtureRequest) -> Iterator[ServiceSet]:
    """The harness' session ServiceSet if its plugin runs, else one of our own."""
    if _harness_plugin_loaded(request.config):
        try:
            yield request.getfixturevalue("harness_services")
            return
        except pytest.FixtureLookupError:
            pass
    services = ServiceSet()
    try:
        yield services
    finally:
        services.close()


class Dedicated:
    """Dedicated broker instances for broker faults, one per service, reused across checks.

    Broker-fault checks kill and pause these; every check restores them (restart or
    resume) before it ends, and each check uses its own prefix, so reuse is safe
    and saves a start per check (RabbitMQ takes ~9 s).
    """

    def __init__(self, services: ServiceSet) -> None:
        self.services = services
        self.handles: dict[str, ServiceHandle] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, name: str) -> ServiceHandle:
        """The dedicated instance of ``name`` (started on first use, restarted if dead)."""
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            handle = self.handles.get(name)
            if handle is None:
                handle = self.services.fresh(name)
                self.handles[name] = handle
            elif not handle.is_running():
                handle.restart(kill=True)
            return handle


@pytest.fixture(scope="session")
def faults_dedicated(faults_services: ServiceSet) -> Dedicated:
    """Dedicated broker instances for broker-process faults."""
    return Dedicated(faults_services)


def _quietly(fn: Any, name: str) -> None:
    with contextlib.suppress(Exception):
        fn(name)


@pytest.fixture(scope="session", autouse=True)
def faults_prestart(
    request: pytest.FixtureRequest, faults_services: ServiceSet, faults_dedicated: Dedicated
) -> None:
    """Start every broker the selected faults checks need, in background threads, at once.

    Brokers otherwise start one after another on first use (RabbitMQ alone takes ~9 s,
    twice: shared and dedicated); errors surface later where a check asks for the broker.
    """
    shared: set[str] = set()
    dedicated: set[str] = set()
    for item in request.session.items:
        spec = getattr(getattr(item, "callspec", None), "params", {}).get("cf_spec")
        services = tuple(getattr(spec, "services", ()) or ())
        if not services or "/faults/" not in str(item.path):
            continue
        shared.update(services)
        shared.update(FAULTS_EXTRA)
        if item.path.name == "test_broker.py":
            dedicated.update(services[:1])
    for name in sorted(shared):
        threading.Thread(target=_quietly, args=(faults_services.get, name), daemon=True).start()
    for name in sorted(dedicated):
        threading.Thread(target=_quietly, args=(faults_dedicated.get, name), daemon=True).start()


@pytest.fixture(scope="session")
def faults_toxiproxy(faults_services: ServiceSet) -> Any:
    """A Toxiproxy client of the session's toxiproxy-server."""
    from harness.faults.network import Toxiproxy

    return Toxiproxy(faults_services.get("toxiproxy"))


if not _PLUGIN_INSTALLED:

    def _shared(name: str) -> Any:
        @pytest.fixture(scope="session", name=name)
        def fixture(faults_services: ServiceSet) -> ServiceHandle:
            return faults_services.get(name)

        return fixture

    for _service in SPECS:  # the harness plugin's fixtures, when it is not installed
        globals()[_service] = _shared(_service)


# ------------------------------------------------------------- summary of the faults suite
_T0 = time.monotonic()
_ROWS: dict[str, dict[str, Any]] = {}
BUDGET_S = 600.0
_COLUMNS = (
    "published",
    "acknowledged",
    "lost",
    "duplicated",
    "effects_duplicated",
    "recovered",
    "recovery_s",
)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the faults rows the conformance plugin attaches to each report."""
    for key, value in report.user_properties:
        if key != "conformance":
            continue
        row = json.loads(value)
        if row.get("suite") != "faults":
            continue
        old = _ROWS.get(report.nodeid)
        if old is None or (row["status"] == "failed" and old["status"] != "failed"):
            _ROWS[report.nodeid] = row


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print adapter x fault with the history figures, and the suite's wall time."""
    if not _ROWS:
        return
    import io

    from rich.console import Console
    from rich.table import Table

    from conformance.report import STYLE

    tr = terminalreporter
    tr.section("faults: adapter x fault")
    tw = getattr(tr, "_tw", None)
    markup = bool(getattr(tw, "hasmarkup", False))
    buf = io.StringIO()
    console = Console(
        file=buf,
        force_terminal=markup,
        color_system="standard" if markup else None,
        width=max(180, int(getattr(tw, "fullwidth", 180) or 180)),  # headers whole
    )
    table = Table(show_lines=False)
    table.add_column("adapter", no_wrap=True)
    table.add_column("fault", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for c in _COLUMNS:
        table.add_column(c, justify="right", min_width=len(c))
    for row in sorted(_ROWS.values(), key=lambda r: (r["kind"], r["adapter"], r["check"])):
        m = row.get("metrics") or {}
        status = row["status"]
        table.add_row(
            f"{row['kind']}:{row['adapter']}",  # the label every other output uses
            row["check"].removeprefix("faults."),
            f"[{STYLE.get(status, '')}]{status}[/]" if status in STYLE else status,
            *("" if m.get(c) is None else str(m.get(c)) for c in _COLUMNS),
        )
    console.print(table)
    tr.write(buf.getvalue())
    wall = time.monotonic() - _T0
    verdict = "within" if wall <= BUDGET_S else "OVER"
    tr.write_line(f"faults suite wall time: {wall:.1f} s ({verdict} the {BUDGET_S:.0f} s budget)")
