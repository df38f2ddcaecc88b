"""The pytest plugin behind ``conformance run`` (load it with ``-p conformance.plugin``).

It parametrizes every ``@check`` over the adapters of the matching kind,
turns a declared-unsupported capability into an expected failure, records one
result row per (adapter, check) and writes the reports at the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conformance import report as report_mod
from conformance.adapters import (
    AdapterContext,
    AdapterSpec,
    ServiceUnavailable,
    UsageError,
    resolve_by_selector,
)
from conformance.kit import waits, workdirs
from conformance.kit.marks import SUITES, CheckInfo
from conformance.kit.skips import not_tested
from conformance.kit.under_test import AdapterUnderTest
from conformance.plugin import preflight, progress, summary_names
from conformance.plugin.services import Services
from conformance.report import environment
from conformance.report.results import result_row
from conformance.report.verdict import Verdict, decide

PROPERTY = "conformance"
KEPT_PROPERTY = "conformance-kept"
_AUT_KEY = pytest.StashKey[AdapterUnderTest]()
_FAILED_KEY = pytest.StashKey[bool]()


@dataclass
class RunState:
    """Per-session state of the plugin."""

    specs: list[AdapterSpec]
    suite: str
    quick: bool
    report_dir: Path | None
    started: float = field(default_factory=time.time)
    services: Services = field(default_factory=lambda: Services(None))
    needed: set[str] = field(default_factory=set)
    prestarted: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    provider: str = "none"
    allow_missing: bool = False
    collected: bool = False
    selected: int = 0
    empty_selection: str = ""
    selectors: dict[str, list[str]] = field(default_factory=dict)  # --adapter -> labels
    checked: set[str] = field(default_factory=set)  # labels with a selected check
    in_suite: set[str] = field(default_factory=set)  # labels with a check in the suite (pre -k)
    missing: dict[str, str] = field(default_factory=dict)  # service -> preflight line
    missing_adapters: dict[str, str] = field(default_factory=dict)  # label -> reason
    preflight_s: float = 0.0
    verdict: Verdict | None = None
    brokers: dict[str, str] = field(default_factory=dict)  # service -> version it reported
    provider_reason: str = ""
    display: Any = None  # progress.PlainProgress | progress.RichProgress, on the controller
    titles: dict[str, str] = field(default_factory=dict)  # nodeid -> "check [kind:adapter]"
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> pytest outcome


#: the verdict of the last session in this process (read by ``conformance run``)
LAST_VERDICT: dict[str, Verdict] = {}
#: the report document of the last session in this process (read by ``conformance.run``)
LAST_REPORT: dict[str, dict[str, Any]] = {}


_STATE = pytest.StashKey[RunState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "PURISTA adapter conformance")
    group.addoption(
        "--cf-adapter",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="adapter to check: name, kind:name, module:factory or name=module:factory",
    )
    group.addoption(
        "--cf-suite",
        default="all",
        choices=[*SUITES, "all"],
        help="which suite's checks to run",
    )
    group.addoption("--cf-quick", action="store_true", help="scale message counts down")
    group.addoption("--cf-report-dir", default=None, help="write report.json and report.html here")
    group.addoption(
        "--cf-provider",
        default=None,
        help="service provider when the harness plugin is not loaded (default auto)",
    )
    group.addoption("--cf-no-matrix", action="store_true", help="no matrix in the terminal")
    group.addoption(
        "--cf-baseline",
        default=None,
        metavar="REPORT.json",
        help="compare report.html with this previous report.json",
    )
    group.addoption(
        "--cf-progress",
        default="auto",
        choices=progress.MODES,
        help="terminal display while checks run: a live panel (rich, on a TTY outside CI) "
        "or plain lines; default auto",
    )
    group.addoption(
        "--cf-allow-missing-services",
        action="store_true",
        help="a backing service that cannot be provided skips its adapters (exit 0, reported "
        "as not tested) instead of ending the run with exit 3",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "conformance_check(info): a conformance check (set by @conformance.kit.marks.check)",
    )
    try:
        specs, selectors = resolve_by_selector(list(config.getoption("cf_adapter")))
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from exc
    report_dir = config.getoption("cf_report_dir")
    config.stash[_STATE] = RunState(
        specs=specs,
        suite=config.getoption("cf_suite"),
        quick=bool(config.getoption("cf_quick")),
        report_dir=Path(report_dir) if report_dir else None,
        services=Services(config.getoption("cf_provider")),
        allow_missing=bool(config.getoption("cf_allow_missing_services")),
        selectors=selectors,
    )
    LAST_VERDICT.clear()
    LAST_REPORT.clear()
    waits.set_quick(config.stash[_STATE].quick)
    if not _is_worker(config):
        summary_names.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _is_worker(config) and config.stash.get(_STATE, None) is not None:
        summary_names.uninstall()


def _info(item: pytest.Item | Any) -> CheckInfo | None:
    marker = item.get_closest_marker("conformance_check")
    return marker.args[0] if marker else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cf_spec" not in metafunc.fixturenames:
        return
    info = _info(metafunc.definition)
    if info is None:
        return
    state = metafunc.config.stash[_STATE]
    specs = [s for s in state.specs if s.kind in info.kinds]
    metafunc.parametrize("cf_spec", specs, ids=[s.label for s in specs])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[_STATE]
    keep, drop = [], []
    for item in items:
        info = _info(item)
        if info is None:
            keep.append(item)
            continue
        spec = getattr(item, "callspec", None) and item.callspec.params.get("cf_spec")
        if not isinstance(spec, AdapterSpec) or (
            state.suite != "all" and info.suite != state.suite
        ):
            drop.append(item)
            continue
        item.extra_keyword_matches.add(info.id)
        state.titles[item.nodeid] = f"{info.id} [{spec.label}]"
        state.in_suite.add(spec.label)  # -k deselects later (this hook runs first)
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    keep.sort(key=_broker_last)
    items[:] = keep


def _broker_last(item: pytest.Item) -> int:
    """Checks of in-process adapters run first, so brokers can boot in the background."""
    spec = getattr(item, "callspec", _NoCallspec).params.get("cf_spec")
    return 1 if isinstance(spec, AdapterSpec) and spec.services else 0


# ------------------------------------------------------------------ fixtures
def _service_lookup(request: pytest.FixtureRequest) -> Any:
    cache: dict[str, str] = {}

    def lookup(service: str) -> str:
        if service in cache:
            return cache[service]
        try:
            services = request.getfixturevalue("harness_services")
        except pytest.FixtureLookupError:
            url = request.config.stash[_STATE].services.url(service)
        else:
            try:
                url = str(services.get(service).url)
            except Exception as exc:
                raise ServiceUnavailable(f"{type(exc).__name__}: {exc}") from exc
        cache[service] = url
        return url

    return lookup


@pytest.fixture
def cf_aut(cf_spec: AdapterSpec, request: pytest.FixtureRequest) -> AdapterUnderTest:
    """The adapter under test for this check (instances are built by the check)."""
    if cf_spec.unavailable:
        not_tested(cf_spec.unavailable)
    state = request.config.stash[_STATE]
    for service in cf_spec.services:
        if service in state.missing:
            not_tested(state.missing[service])
    lookup = _service_lookup(request)
    for service in cf_spec.services:
        try:
            lookup(service)
        except ServiceUnavailable as exc:
            not_tested(f"{service} unavailable: {exc}")
    ctx = AdapterContext(
        adapter=cf_spec.name,
        kind=cf_spec.kind,
        prefix=f"cf{uuid.uuid4().hex[:10]}",
        provider=state.provider,
        url_lookup=lookup,
    )
    try:
        pool: Any = request.getfixturevalue("harness_services")
    except pytest.FixtureLookupError:
        pool = state.services
    _prestart(state, pool)
    aut = AdapterUnderTest(
        cf_spec,
        ctx,
        quick=state.quick,
        fresh=pool.fresh,
        release=pool.release,
        no_lifecycle=_no_lifecycle(pool),
    )
    request.node.stash[_AUT_KEY] = aut
    _expect_unsupported(request, aut)
    return aut


def _no_lifecycle(pool: Any) -> str:
    """The provider's name when it cannot restart brokers (external URLs), else ``""``."""
    provider = pool.provider_object() if isinstance(pool, Services) else pool.provider
    if provider is None or provider.supports_lifecycle_faults:
        return ""
    return str(provider.name)


def _expect_unsupported(request: pytest.FixtureRequest, aut: AdapterUnderTest) -> None:
    """Mark the check as an expected failure when a capability it needs is declared unsupported.

    Adapters built from a descriptor may set capabilities per instance (from their
    options), so an unstarted probe instance is asked; factories were probed at collection.
    """
    info = _info(request.node)
    if info is None or not info.needs_for(aut.spec.kind):
        return
    spec = aut.spec
    if spec.adapter_class is not None:
        try:
            probe = spec.factory(aut.ctx.for_instance(-1, {}))  # type: ignore[misc]
            caps = getattr(probe, "capabilities", None)
            if caps is not None:
                spec.capabilities = caps
        except Exception:
            pass
    needs = info.needs_for(spec.kind)
    missing = [(cap, spec.support(cap)[1]) for cap in needs if not spec.support(cap)[0]]
    if missing:
        reason = "; ".join(f"{cap}: {why}" for cap, why in missing)
        request.node.add_marker(
            pytest.mark.xfail(reason=f"declared unsupported: {reason}", strict=False)
        )


@pytest.fixture
async def aut(cf_aut: AdapterUnderTest) -> AsyncIterator[AdapterUnderTest]:
    """``cf_aut`` for async checks: instances are destroyed after the check."""
    try:
        yield cf_aut
    finally:
        await cf_aut.close()


# ------------------------------------------------------------------- results
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    if _info(item) is None or "cf_spec" not in getattr(item, "callspec", _NoCallspec).params:
        return
    if rep.when == "call" or not rep.passed:
        row = json.dumps(
            result_row(item, rep, call, _info(item), item.stash.get(_AUT_KEY, None)), default=str
        )
        rep.user_properties.append((PROPERTY, row))
        if rep.when != "teardown":  # so that junit.xml (teardown properties) carries it too
            item.user_properties.append((PROPERTY, row))
    if rep.failed:
        item.stash[_FAILED_KEY] = True
    if rep.when == "teardown":
        _keep_or_drop_workdirs(item, rep)


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """One vocabulary: a check failing as declared is "unsupported" (pytest says xfailed)."""
    if getattr(report, "wasxfail", None) is not None and report.when == "call":
        if report.skipped or report.passed:  # failed as declared / better than declared
            return "unsupported", "u", ("UNSUPPORTED", {"yellow": True})
    return None


def _keep_or_drop_workdirs(item: pytest.Item, rep: pytest.TestReport) -> None:
    """After the teardown: the check's work dirs go, or move under the report dir if it
    failed (the rows then name the new place)."""
    paths = workdirs.finish(item.nodeid)
    if not item.stash.get(_FAILED_KEY, False):
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
        return
    tmp = (getattr(item, "funcargs", None) or {}).get("tmp_path")
    if isinstance(tmp, Path):
        paths.append(tmp)
    state = item.config.stash[_STATE]
    try:
        moved = workdirs.keep(paths, workdirs.kept_root(state.report_dir), item.nodeid)
    except OSError as exc:
        moved = [("", f"could not keep {[str(p) for p in paths]}: {exc}")]
    if moved:
        rep.user_properties.append((KEPT_PROPERTY, json.dumps(moved)))


class _NoCallspec:
    params: dict[str, Any] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _CONFIG.get("config")
    if config is None:
        return
    state = config.stash[_STATE]
    rows = [json.loads(v) for k, v in report.user_properties if k == PROPERTY]
    state.durations[report.nodeid] = state.durations.get(report.nodeid, 0.0) + report.duration
    if report.failed or report.when == "call" or (report.skipped and report.when == "setup"):
        if state.outcomes.get(report.nodeid) != "failed":
            state.outcomes[report.nodeid] = "failed" if report.failed else report.outcome
    existing = state.results.get(report.nodeid)
    for row in rows:
        if existing is None:
            existing = row
        elif row["status"] == "failed" and existing["status"] != "failed":
            existing.update(status="failed", message=row["message"])
    for k, v in report.user_properties:
        if k == KEPT_PROPERTY and existing is not None:
            _name_kept(existing, json.loads(v))
    if existing is not None:
        state.results[report.nodeid] = existing


def _name_kept(row: dict[str, Any], moved: list[list[str]]) -> None:
    """Point the row's message at the kept copies of its files."""
    message = row.get("message", "")
    for old, new in moved:
        if old:
            message = message.replace(old, new)
    kept = [new for _, new in moved]
    row["kept"] = kept
    row["message"] = message + "\nkept: " + ", ".join(kept)


_CONFIG: dict[str, pytest.Config] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    workdirs.begin(item.nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG["config"] = session.config
    state = session.config.stash[_STATE]
    state.started = time.time()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Preflight, then the display learns how many checks will run."""
    _preflight(session)
    display = _display(session.config)
    if display is not None and session.items:
        display.checks_begin(len(session.items))


def _preflight(session: pytest.Session) -> None:
    """Provide and probe every backing service the selected checks need."""
    config = session.config
    state = config.stash[_STATE]
    users: dict[str, set[str]] = {}
    for item in session.items:
        spec = getattr(item, "callspec", _NoCallspec).params.get("cf_spec")
        if isinstance(spec, AdapterSpec):
            state.checked.add(spec.label)
        if isinstance(spec, AdapterSpec) and not spec.unavailable:
            needs = preflight.services_of(
                spec.services, getattr(item, "fixturenames", ()), "/faults/" in str(item.path)
            )
            state.needed.update(needs)
            for service in needs:
                users.setdefault(service, set()).add(spec.label)
    state.collected = True
    state.selected = len(session.items)
    if _is_worker(config):
        config.workeroutput["cf_checked"] = json.dumps(sorted(state.checked))  # type: ignore[attr-defined]
        config.workeroutput["cf_in_suite"] = json.dumps(sorted(state.in_suite))  # type: ignore[attr-defined]
    if not session.items:
        state.empty_selection = _describe_selection(config, state)
        return
    if not state.needed:
        return
    state.prestarted = True
    tr = config.pluginmanager.get_plugin("terminalreporter")
    display = _display(config)
    on_done = None
    if display is not None:
        display.services_starting(sorted(state.needed))

        def on_done(name: str, problem: str | None, seconds: float) -> None:
            display.service_done(name, problem, seconds, state.brokers.get(name, ""))

    state.missing, state.preflight_s = preflight.run(
        state.needed, _recording(state, _service_getter(config)), on_done
    )
    if display is not None:
        ready = sorted(set(state.needed) - set(state.missing))
        versions = ", ".join(f"{n} {state.brokers.get(n, '')}".strip() for n in ready)
        display.services_finished(state.preflight_s, versions)
    if _is_worker(config):
        config.workeroutput["cf_brokers"] = json.dumps(state.brokers)  # type: ignore[attr-defined]
    if not state.missing:
        return
    for service, line in sorted(state.missing.items()):
        for label in users.get(service, ()):
            state.missing_adapters.setdefault(label, line)
        if display is not None:
            display.note(f"preflight: {line}", red=True)
        elif tr is not None:
            tr.write_line(f"preflight: {line}", red=True)
    if _is_worker(config):
        # xdist needs every worker to keep the collected items: they are skipped as not
        # tested (cf_aut), and the controller decides the verdict (pytest_testnodedown)
        config.workeroutput["cf_preflight"] = json.dumps(  # type: ignore[attr-defined]
            {"missing": state.missing, "adapters": state.missing_adapters}
        )
    elif not state.allow_missing:
        config.hook.pytest_deselected(items=list(session.items))
        session.items[:] = []


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """pytest-xdist controller: the total comes from the first worker's collection."""
    display = _display(node.config)
    if display is not None and not display.counts.total:
        display.checks_begin(len(ids))


def _display(config: pytest.Config) -> Any:
    """The run's progress display (created on first use; None on xdist workers)."""
    state = config.stash.get(_STATE, None)
    if state is None or _is_worker(config):
        return None
    if state.display is None:
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is None:
            return None
        state.display = progress.make(config.getoption("cf_progress"), config, tr)
    return state.display


def _close_display(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state.display is not None:
        state.display.close()


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    config = _CONFIG.get("config")
    if config is not None and (display := _display(config)) is not None:
        display.check_started(_title(config, nodeid))


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    config = _CONFIG.get("config")
    if config is None or (display := _display(config)) is None:
        return
    state = config.stash[_STATE]
    outcome = state.results.get(nodeid, {}).get("status") or state.outcomes.get(nodeid, "done")
    display.check_finished(_title(config, nodeid), outcome, state.durations.get(nodeid, 0.0))


def _title(config: pytest.Config, nodeid: str) -> str:
    """``check [kind:adapter]`` (a test's own name for items that are not checks)."""
    titles = config.stash[_STATE].titles
    if nodeid not in titles:  # an xdist controller collects nothing: read the check's mark
        titles[nodeid] = _title_from_nodeid(nodeid)
    return titles[nodeid]


def _title_from_nodeid(nodeid: str) -> str:
    """``check [label]`` of ``conformance/checks/x/test_y.py::test_z[label]``, else the
    test's name."""
    path, _, test = nodeid.partition("::")
    name, _, param = test.partition("[")
    fallback = test or nodeid
    parts = path.removesuffix(".py").split("/")
    if "checks" not in parts or not path.endswith(".py"):
        return fallback
    dotted = ".".join(["conformance", *parts[parts.index("checks") :]])
    try:
        import importlib

        info = getattr(
            getattr(importlib.import_module(dotted), name, None), "__conformance__", None
        )
    except Exception:
        return fallback
    if not isinstance(info, CheckInfo):
        return fallback
    return f"{info.id} [{param.rstrip(']')}]" if param else info.id


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    try:
        return (yield)
    finally:
        _close_display(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist controller: take in what a worker's preflight found."""
    state = node.config.stash[_STATE]
    state.brokers.update(json.loads(getattr(node, "workeroutput", {}).get("cf_brokers") or "{}"))
    state.checked.update(json.loads(getattr(node, "workeroutput", {}).get("cf_checked") or "[]"))
    state.in_suite.update(json.loads(getattr(node, "workeroutput", {}).get("cf_in_suite") or "[]"))
    raw = getattr(node, "workeroutput", {}).get("cf_preflight")
    if not raw:
        return
    state.brokers.update(json.loads(getattr(node, "workeroutput", {}).get("cf_brokers") or "{}"))
    found = json.loads(raw)
    state.missing.update(found["missing"])
    state.missing_adapters.update(found["adapters"])


def _recording(state: RunState, get: Any) -> Any:
    """``get``, noting the version each service reports (report.json's environment)."""

    def recording_get(name: str) -> Any:
        handle = get(name)
        state.brokers[name] = str(getattr(handle, "version", "") or "")
        return handle

    return recording_get


def _service_getter(config: pytest.Config) -> Any:
    """``get(name) -> handle`` of the pool the checks will use."""
    if config.pluginmanager.hasplugin("purista_harness"):
        from harness.pytest_plugin import service_set

        try:
            return service_set(config).get
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from exc
    return config.stash[_STATE].services.get


def _unmatched_selectors(
    config: pytest.Config, state: RunState, results: list[dict[str, Any]]
) -> str:
    """The ``--adapter`` values none of whose adapters has a selected check, described
    for the usage error ("" when each matched one)."""
    checked = state.checked | {f"{r['kind']}:{r['adapter']}" for r in results}
    unmatched = [sel for sel, labels in state.selectors.items() if not checked & set(labels)]
    if not unmatched:
        return ""
    keyword = config.getoption("keyword", "")
    where = (f"-k {keyword!r} in " if keyword else "") + f"suite {state.suite!r}"
    return f"--adapter {', '.join(repr(s) for s in unmatched)} ({where})"


def _left_out_by_keyword(
    config: pytest.Config, state: RunState, results: list[dict[str, Any]]
) -> str:
    """The adapters an ``--adapter`` value selected that have checks in the suite but none
    that ``-k`` kept (another adapter of that value had some), described for the verdict
    ("" when there are none): they were not tested, and the verdict must not say they were."""
    keyword = config.getoption("keyword", "")
    if not keyword:
        return ""
    checked = state.checked | {f"{r['kind']}:{r['adapter']}" for r in results}
    left = sorted(
        {
            label
            for labels in state.selectors.values()
            for label in labels
            if label in state.in_suite and label not in checked
        }
    )
    return f"-k {keyword!r} keeps no check of {', '.join(left)}" if left else ""


def _describe_selection(config: pytest.Config, state: RunState) -> str:
    parts = [f"suite {state.suite!r}"]
    keyword = config.getoption("keyword", "")
    if keyword:
        parts.insert(0, f"-k {keyword!r}")
    selectors = config.getoption("cf_adapter")
    parts.append(f"adapters {', '.join(selectors)}" if selectors else "every adapter")
    return " with ".join(parts[:1]) + (" in " + ", ".join(parts[1:]) if parts[1:] else "")


def _prestart(state: RunState, pool: Any) -> None:
    """Start every needed broker in background threads while in-memory checks run."""
    if state.prestarted or not state.needed:
        return
    state.prestarted = True
    if pool is state.services:
        state.services.prestart(state.needed)
        return
    for name in sorted(state.needed):
        threading.Thread(target=_quietly, args=(pool.get, name), daemon=True).start()


def _quietly(fn: Any, *args: Any) -> None:
    with contextlib.suppress(Exception):
        fn(*args)


def _provider(config: pytest.Config, ran_brokers: bool) -> tuple[str, str]:
    """The provider that served the brokers and why it was chosen (``none`` when no
    broker adapter ran)."""
    if not ran_brokers:
        return "none", "no adapter of the run needs a broker"
    if config.pluginmanager.hasplugin("purista_harness"):
        with contextlib.suppress(Exception):
            from harness.pytest_plugin import service_set

            provider = service_set(config).provider
            return str(provider.name), str(getattr(provider, "reason", ""))
    opt = config.getoption("cf_provider")
    for name in ("harness_provider", "provider"):
        with contextlib.suppress(ValueError):
            opt = opt or config.getoption(name)
    try:
        from harness.services import select_provider

        provider = select_provider(opt or "auto")
        return str(provider.name), str(getattr(provider, "reason", ""))
    except Exception as exc:
        return str(opt or "auto"), f"{type(exc).__name__}: {exc}"


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _is_worker(config):
        return
    state = config.stash[_STATE]
    _name_checks_in_short_summary(terminalreporter, state)
    if config.getoption("cf_no_matrix"):
        return
    if not state.results and not (state.verdict and state.verdict.not_tested):
        return
    report_mod.print_matrix(list(state.results.values()), terminalreporter, state.verdict)
    unexercised = {
        s.label: report_mod.annotate_unexercised(s.kind, caps)
        for s in state.specs
        if (caps := report_mod.declared_not_exercised(s, list(state.results.values())))
    }
    if unexercised:
        terminalreporter.section("declared, not exercised in this run")
        for label, caps in sorted(unexercised.items()):
            terminalreporter.write_line(f"{label}: {', '.join(caps)}")
    kept = [
        (r["check"], r["adapter"], path)
        for r in state.results.values()
        for path in r.get("kept", [])
    ]
    if kept:
        terminalreporter.section("files of failing checks (kept)")
        for check, adapter, path in kept:
            terminalreporter.write_line(f"{check} [{adapter}]: {path}")


#: the short test summary categories whose lines start with the test's position
_SUMMARY_CATEGORIES = ("failed", "error", "xfailed", "xpassed", "passed")


def _name_checks_in_short_summary(tr: Any, state: RunState) -> None:
    """The short test summary (printed after this hook) names checks by id and adapter:
    ``FAILED event_bridge.commands.timeout[event_bridge:amqp] - ...``, which ``-k`` takes.

    pytest builds each line's position from the report (``_pytest.terminal._get_pos``);
    ``summary_names`` answers with ``cf_title`` where a report has one. The node ids
    themselves (junit, cache, other plugins) stay as they are.
    """
    for category in _SUMMARY_CATEGORIES:
        for rep in tr.stats.get(category) or ():
            row = state.results.get(getattr(rep, "nodeid", ""))
            if row is not None:
                rep.cf_title = f"{row['check']}[{row['kind']}:{row['adapter']}]"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _is_worker(config):
        return
    _close_display(config)
    state = config.stash[_STATE]
    for nodeid, row in state.results.items():
        row["duration_s"] = round(state.durations.get(nodeid, 0.0), 4)
    results = sorted(state.results.values(), key=lambda r: (r["kind"], r["adapter"], r["check"]))
    ran_brokers = any(
        s.services
        for s in state.specs
        if any(
            r["adapter"] == s.name and r["kind"] == s.kind and r["status"] != "skipped"
            for r in results
        )
    )
    if state.services._set:
        state.provider = state.services.provider
        state.provider_reason = str(getattr(state.services._set.provider, "reason", ""))
    else:
        state.provider, state.provider_reason = _provider(config, ran_brokers)
    state.services.close()
    state.verdict = decide(
        int(exitstatus),
        results,
        selected=state.selected if state.collected else len(results),
        allow_missing=state.allow_missing,
        preflight_missing=state.missing_adapters,
        empty_selection=state.empty_selection,
        unmatched=_unmatched_selectors(config, state, results),
        left_out=_left_out_by_keyword(config, state, results),
    )
    LAST_VERDICT["last"] = state.verdict
    doc = report_mod.build(
        results=results,
        specs=state.specs,
        provider=state.provider,
        duration_s=time.time() - state.started,
        suite=state.suite,
        quick=state.quick,
        verdict=state.verdict,
        preflight=state.missing,
        environment=environment.collect(state.provider, state.provider_reason, state.brokers),
    )
    LAST_REPORT["last"] = doc
    if state.report_dir is not None:
        baseline = config.getoption("cf_baseline")
        report_mod.write(
            doc, state.report_dir, report_mod.load_baseline(baseline) if baseline else None
        )
