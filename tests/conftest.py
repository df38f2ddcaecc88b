"""Settings shared by the project's own tests."""

from hypothesis import HealthCheck, settings

# Hypothesis' timing health checks (slow input generation, per-example deadline) judge the
# machine, not the code: on a loaded CI runner they fail properties that hold. Speed
# belongs in `make bench`; the properties keep their example counts.
settings.register_profile(
    "project", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("project")

# The longest files first (seconds per file in `make test` on 4 workers, 2026-12-02): xdist
# hands whole files out in collection order (`--dist loadfile --no-loadscope-reorder`), so
# none of them starts last and runs alone while the other workers idle.
SLOW_FILES = (
    "tests/faults/test_caught.py",  # 273 s
    "tests/adapters/test_idempotency_race.py",  # 248 s
    "tests/conformance/test_exit_codes.py",  # 222 s
    "tests/packaging/test_wheel.py",  # 209 s
    "tests/conformance/test_credentials_external.py",  # 181 s
    "tests/deployment/test_checklist.py",  # 155 s
    "tests/conformance/test_example_adapter.py",  # 146 s
    "tests/conformance/test_cli.py",  # 129 s
    "tests/deployment/test_deployment_suite.py",  # 120 s
    "tests/conformance/test_broken_adapters.py",  # 92 s
    "tests/conformance/test_terminal.py",  # 85 s
)


def pytest_collection_modifyitems(items: list) -> None:
    rank = {path: i for i, path in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))
