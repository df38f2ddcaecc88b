"""pytest plugin `purista_harness`: real services as fixtures, namespaces, faults, histories.

Options: ``--provider``, ``--keep-services``, ``--require-services``,
``--skip-missing-services``; ini settings ``harness_provider``,
``harness_require_services`` and ``harness_executables``. A service that cannot be
provided skips the test with its reason, or fails it under ``--require-services`` and
whenever the ``CI`` environment variable is set (a CI job without brokers must not be
green; ``--skip-missing-services`` skips anyway).

Service fixtures are ``harness_rabbitmq``, ``harness_nats``, ``harness_redis``,
``harness_mosquitto`` and ``harness_toxiproxy``; the unprefixed names (which clash with
pytest-rabbitmq and pytest-redis) still work for one release, with a deprecation warning.

The session is a run (:mod:`harness.run`): SIGTERM, SIGINT or SIGHUP stop every
service process of it and exit 128 + the signal; a reaper process reaps it when the
runner is killed; its temporary files are removed at the end.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

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
        """Fail rather than skip: --require-services, the ini setting, or $CI set."""
        config = self.config
        if config.getoption("require_services") or _ini_true(config, "harness_require_services"):
            return True
        if config.getoption("skip_missing_services"):
            return False
        if config.pluginmanager.hasplugin("conformance.plugin"):
            return False  # conformance decides itself: "not tested", exit 3
        return _ci()

    def registry(self) -> ServiceSet:
        if self.services is None:
            try:
                from harness.services.registry import ServiceSet
                from harness.services.select import select_provider
            except ImportError as exc:
                pytest.fail(
                    f"the harness' services need the [harness] extra ({exc}): "
                    "pip install 'purista-conformance[harness]'",
                    pytrace=False,
                )

            self.services = ServiceSet(select_provider(provider_option(self.config)))
        return self.services

    def unavailable(self, exc: BaseException) -> None:
        """Skip (or fail under --require-services or $CI) because a service cannot be provided."""
        if self.require:
            why = "--require-services" if not _ci() else "CI is set; --skip-missing-services skips"
            pytest.fail(f"{exc} ({why})", pytrace=False)
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


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _ini_true(config: pytest.Config, name: str) -> bool:
    return str(config.getini(name)).strip().lower() in ("1", "true", "yes", "on")


def provider_option(config: pytest.Config) -> str | None:
    """--provider, else $HARNESS_PROVIDER (left to select_provider), else the ini setting."""
    opt = config.getoption("harness_provider")
    if opt or os.environ.get("HARNESS_PROVIDER"):
        return opt
    return str(config.getini("harness_provider")).strip() or None


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
                    help="fail (instead of skip) tests whose services cannot be provided "
                    "(the default when $CI is set)")
    group.addoption("--skip-missing-services", dest="skip_missing_services",
                    action="store_true",
                    help="skip tests whose services cannot be provided, even when $CI is set")
    parser.addini("harness_provider", "where services come from: auto, local, docker or "
                  "external (--provider and $HARNESS_PROVIDER win)", default="")
    parser.addini("harness_require_services", "fail instead of skip when a service cannot "
                  "be provided (true/false)", default="false")
    parser.addini("harness_executables", "binaries of the local provider, one per line: "
                  "redis-server=/opt/redis/bin/redis-server (or $HARNESS_BIN_REDIS_SERVER)",
                  type="linelist", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_services(*names): the test needs these services (skips or fails if absent)",
    )
    state = _HarnessState(config)
    config.stash[_STATE] = state
    _executables(config)
    current = run.current()
    if config.getoption("keep_services"):
        current.tie_children = False  # no parent-death signal for what must outlive us
    if not current.begun:  # not inside `conformance run` or an outer session (pytester)
        state.owns_run = current.owner
        run.begin()


def _executables(config: pytest.Config) -> None:
    """``harness_executables`` lines as $HARNESS_BIN_* (so workers and children see them)."""
    lines = config.getini("harness_executables")
    if not lines:
        return
    from harness.services.local_recipes import executable_variable

    for line in lines:
        binary, eq, path = str(line).partition("=")
        if not eq or not binary.strip() or not path.strip():
            raise pytest.UsageError(
                f"harness_executables: {line!r} is not binary=/path/to/binary"
            )
        os.environ.setdefault(executable_variable(binary.strip()), path.strip())


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


_HANDLE_DOC = """

    A ``ServiceHandle``: ``.url`` (with credentials; shown as ``***`` in reprs and
    reports), ``.host``, ``.port``, ``.address`` (``host:port``), ``.version`` (as the
    server reports it), ``.name``, ``.env()`` (``{{"{var}": url}}``), ``.log_path`` (local
    provider). Skips the test when the service cannot be provided (fails under
    ``--require-services`` or ``$CI``).

    Example::

        {example}
"""


def _service_fixture(service: str, summary: str, var: str, example: str) -> Callable[..., Any]:
    def fixture(request: pytest.FixtureRequest) -> ServiceHandle:
        return request.config.stash[_STATE].get(service)

    fixture.__name__ = f"harness_{service}"
    fixture.__doc__ = summary + _HANDLE_DOC.format(var=var, example=example)
    return pytest.fixture(scope="session", name=f"harness_{service}")(fixture)


def _deprecated_alias(service: str) -> Callable[..., Any]:
    def alias(request: pytest.FixtureRequest) -> ServiceHandle:
        warnings.warn(
            f"the {service!r} fixture is deprecated (it clashes with other plugins' fixtures); "
            f"use 'harness_{service}'",
            HarnessFixtureDeprecation,
            stacklevel=2,
        )
        return request.getfixturevalue(f"harness_{service}")

    alias.__name__ = service
    alias.__doc__ = f"Deprecated alias of ``harness_{service}`` (kept for one release)."
    return pytest.fixture(scope="session", name=service)(alias)


class HarnessFixtureDeprecation(DeprecationWarning):
    """An unprefixed service fixture (``redis``...) was used; use ``harness_redis``."""


harness_rabbitmq = _service_fixture(
    "rabbitmq", "The session's RabbitMQ (started on first use).", "AMQP_URL",
    "async def test_publish(harness_rabbitmq):\n"
    "            connection = await aio_pika.connect(harness_rabbitmq.url)",
)
harness_nats = _service_fixture(
    "nats", "The session's nats-server with JetStream.", "NATS_URL",
    "async def test_kv(harness_nats):\n"
    "            nc = await nats.connect(harness_nats.url)",
)
harness_redis = _service_fixture(
    "redis", "The session's Redis (append-only file, fsync always).", "REDIS_URL",
    "def test_ping(harness_redis):\n"
    "            assert redis.Redis.from_url(harness_redis.url).ping()",
)
harness_mosquitto = _service_fixture(
    "mosquitto", "The session's Mosquitto (anonymous, persistence on).", "MQTT_URL",
    "def test_connect(harness_mosquitto):\n"
    "            client.connect(harness_mosquitto.host, harness_mosquitto.port)",
)
harness_toxiproxy = _service_fixture(
    "toxiproxy", "The session's toxiproxy-server (see also ``proxied``).", "TOXIPROXY_URL",
    "def test_cut(harness_toxiproxy, proxied, harness_redis):\n"
    "            proxy = proxied(harness_redis)",
)
harness_moto = _service_fixture(
    "moto", "The session's moto_server (AWS Secrets Manager and SSM on loopback).",
    "AWS_ENDPOINT_URL",
    "def test_secret(harness_moto):\n"
    "            boto3.client('secretsmanager', endpoint_url=harness_moto.url)",
)
harness_dapr = _service_fixture(
    "dapr", "The session's daprd sidecar (state store ``statestore`` on its own Redis).",
    "DAPR_URL",
    "def test_state(harness_dapr):\n"
    "            httpx.get(f'{harness_dapr.url}/v1.0/state/statestore/k')",
)
rabbitmq = _deprecated_alias("rabbitmq")
nats = _deprecated_alias("nats")
redis = _deprecated_alias("redis")
mosquitto = _deprecated_alias("mosquitto")
toxiproxy = _deprecated_alias("toxiproxy")


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
def toxiproxy_client(harness_toxiproxy: ServiceHandle) -> Toxiproxy:
    """A client of the session's toxiproxy-server."""
    from harness.faults.network import Toxiproxy

    return Toxiproxy(harness_toxiproxy)


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
