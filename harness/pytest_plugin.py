"""pytest plugin `purista_harness`: real services as fixtures, namespaces, faults, histories.

Options: ``--provider``, ``--keep-services``, ``--require-services``. A service that cannot
be provided skips the test with its reason, or fails it under ``--require-services``.

The session is a run (:mod:`harness.run`): SIGTERM, SIGINT or SIGHUP stop every
service process of it and exit 128 + the signal; a reaper process reaps it when the
runner is killed; its temporary files are removed at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from harness import run
from harness.errors import ServiceUnavailable
from harness.history import History

if TYPE_CHECKING:
    from harness.faults.network import Proxy, Toxiproxy
    from harness.services.base import ServiceHandle
    from harness.services.registry import ServiceSet

_STATE = pytest.StashKey["_HarnessState"]()


class ServiceSkipped(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A test skipped because a service could not be provided (not a "not applicable" skip).

    ``not_tested`` lets the conformance verdict tell it from other skips without importing us.
    """

    not_tested = True


class _HarnessState:
    """Per-process (per xdist worker) registry, created on first use."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.services: ServiceSet | None = None
        self.kept: dict[str, str] = {}
        self.owns_run = False

    @property
    def require(self) -> bool:
        return bool(self.config.getoption("require_services"))

    def registry(self) -> ServiceSet:
        if self.services is None:
            from harness.services.registry import ServiceSet
            from harness.services.select import select_provider

            self.services = ServiceSet(select_provider(self.config.getoption("harness_provider")))
        return self.services

    def unavailable(self, exc: BaseException) -> None:
        """Skip (or fail under --require-services) because a service cannot be provided."""
        if self.require:
            pytest.fail(f"{exc} (--require-services)", pytrace=False)
        raise ServiceSkipped(str(exc))

    def get(self, name: str) -> ServiceHandle:
        try:
            return self.registry().get(name)
        except ServiceUnavailable as exc:
            self.unavailable(exc)
            raise  # unreachable: skip/fail raise

    def close(self) -> None:
        if self.services is None:
            return
        keep = bool(self.config.getoption("keep_services"))
        if keep and not self.kept:
            self.kept = _describe(self.services)
        self.services.close(keep=keep)


def _describe(services: ServiceSet) -> dict[str, str]:
    out = {}
    for name, handle in services.running.items():
        pid = getattr(handle, "pid", None)
        out[name] = handle.url + (f"  (pid {pid}, log {handle.log_path})" if pid else "")
    return out


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("purista-harness", "real brokers for tests")
    group.addoption("--provider", dest="harness_provider", default=None,
                    choices=["auto", "local", "docker", "external"],
                    help="where services come from (default: $HARNESS_PROVIDER or auto)")
    group.addoption("--keep-services", dest="keep_services", action="store_true",
                    help="leave the session's services running and print their URLs")
    group.addoption("--require-services", dest="require_services", action="store_true",
                    help="fail (instead of skip) tests whose services cannot be provided")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_services(*names): the test needs these services (skips or fails if absent)",
    )
    state = _HarnessState(config)
    config.stash[_STATE] = state
    current = run.current()
    if config.getoption("keep_services"):
        current.tie_children = False  # no parent-death signal for what must outlive us
    if not current.begun:  # not inside `conformance run` or an outer session (pytester)
        state.owns_run = current.owner
        run.begin()


def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.config.stash[_STATE]
    for marker in item.iter_markers("requires_services"):
        for name in marker.args:
            state.get(name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = terminalreporter.config.stash.get(_STATE, None)
    if state is None or not terminalreporter.config.getoption("keep_services"):
        return
    if state.services is not None and not state.kept:
        state.kept = _describe(state.services)
    if state.kept:
        terminalreporter.section("harness: services left running (--keep-services)")
        for name, url in state.kept.items():
            terminalreporter.write_line(f"{name}: {url}")
        terminalreporter.write_line(f"stop them with: harness down {run.current().id}")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.close()
        if state.owns_run:
            run.end(keep=bool(config.getoption("keep_services")))


def service_set(config: pytest.Config) -> ServiceSet:
    """The session's ServiceSet (for other plugins, e.g. the conformance preflight)."""
    return config.stash[_STATE].registry()


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def harness_services(request: pytest.FixtureRequest) -> ServiceSet:
    """The session's ServiceSet: `.get(name)` shared, `.fresh(name)` dedicated instances."""
    state = request.config.stash[_STATE]
    try:
        return state.registry()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc


@pytest.fixture(scope="session")
def rabbitmq(request: pytest.FixtureRequest) -> ServiceHandle:
    """The session's RabbitMQ (started on first use)."""
    return request.config.stash[_STATE].get("rabbitmq")


@pytest.fixture(scope="session")
def nats(request: pytest.FixtureRequest) -> ServiceHandle:
    """The session's nats-server with JetStream."""
    return request.config.stash[_STATE].get("nats")


@pytest.fixture(scope="session")
def redis(request: pytest.FixtureRequest) -> ServiceHandle:
    """The session's Redis (append-only file, fsync always)."""
    return request.config.stash[_STATE].get("redis")


@pytest.fixture(scope="session")
def mosquitto(request: pytest.FixtureRequest) -> ServiceHandle:
    """The session's Mosquitto (anonymous, persistence on)."""
    return request.config.stash[_STATE].get("mosquitto")


@pytest.fixture(scope="session")
def toxiproxy(request: pytest.FixtureRequest) -> ServiceHandle:
    """The session's toxiproxy-server."""
    return request.config.stash[_STATE].get("toxiproxy")


@pytest.fixture
def namespace() -> str:
    """A unique short lowercase prefix valid in AMQP names, subjects, keys and topics."""
    return "t" + uuid.uuid4().hex[:7]


@pytest.fixture
def fresh_service(request: pytest.FixtureRequest) -> Iterator[Callable[[str], ServiceHandle]]:
    """Factory of dedicated instances (for tests that kill or pause a broker)."""
    state = request.config.stash[_STATE]
    services = state.registry()
    started: list[ServiceHandle] = []

    def make(name: str) -> ServiceHandle:
        if not services.provider.supports_lifecycle_faults:
            state.unavailable(ServiceUnavailable(
                name, f"the {services.provider.name!r} provider cannot start dedicated "
                "instances (lifecycle faults unavailable)"))
        try:
            handle = services.fresh(name)
        except ServiceUnavailable as exc:
            state.unavailable(exc)
            raise
        started.append(handle)
        return handle

    yield make
    for handle in started:
        services.release(handle)


@pytest.fixture
def toxiproxy_client(toxiproxy: ServiceHandle) -> Toxiproxy:
    """A client of the session's toxiproxy-server."""
    from harness.faults.network import Toxiproxy

    return Toxiproxy(toxiproxy)


@pytest.fixture
def proxied(toxiproxy_client: Toxiproxy) -> Iterator[Callable[..., Proxy]]:
    """Factory: proxied(service_handle, name=None) -> Proxy, deleted at test end."""
    made: list[Proxy] = []

    def make(service: ServiceHandle | str, name: str | None = None) -> Proxy:
        proxy = toxiproxy_client.proxied(service, name)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.delete()


@pytest.fixture
def history() -> History:
    """A new, empty operation history."""
    return History()
