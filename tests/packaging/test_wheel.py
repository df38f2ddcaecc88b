"""The wheel as a pip user gets it: the runtime alone, and the conformance extra.

Each test builds nothing itself: one wheel per session (``pip wheel``), then a fresh
venv per install. pip resolves the dependencies as it would for a user (its cache
makes repeated runs fast).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(
    cmd: list[str], *, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # from a copy: building in place would leave build/ in the checkout
    src = tmp_path_factory.mktemp("src") / "purista-conformance"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "reports",
            ".tox",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
            ".ruff_cache",
            ".hypothesis",
            ".local",
        ),
    )
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        timeout=300,
    )
    (found,) = out.glob("purista_conformance-*.whl")
    return found


def _venv(path: Path, requirement: str) -> tuple[Path, float]:
    """A fresh venv with ``requirement`` installed; its python and the install's seconds."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)], timeout=120)
    python = path / "bin" / "python"
    started = time.monotonic()
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", requirement],
        timeout=600,
    )
    return python, time.monotonic() - started


def _installed(python: Path) -> set[str]:
    proc = _run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps(sorted({d.metadata['Name'].lower() for d in m.distributions()})))",
        ],
        timeout=60,
    )
    return set(json.loads(proc.stdout))


SERVICE_SCRIPT = textwrap.dedent(
    """
    import asyncio
    from reference_services.services import user_v1
    from reference_services.testing import TestClient

    async def main():
        async with TestClient(user_v1) as client:
            user = await client.invoke("signUp", {"email": "ada@example.org", "name": "Ada"})
            event = await client.wait_for_event("userSignedUp")
            assert event.payload == user, (event, user)
            print("signed up", user["user_id"])

    asyncio.run(main())
    """
)


def test_the_runtime_alone_installs_two_dependencies_and_runs_a_service(
    wheel: Path, tmp_path: Path
) -> None:
    python, took = _venv(tmp_path / "venv", str(wheel))
    print(f"runtime install: {took:.1f}s")
    names = _installed(python)
    assert {"purista-conformance", "pydantic", "opentelemetry-api"} <= names
    for heavy in (
        "pytest",
        "hypothesis",
        "testcontainers",
        "docker",
        "mirakuru",
        "port-for",
        "rich",
        "opentelemetry-sdk",
        "aio-pika",
        "nats-py",
        "redis",
        "paho-mqtt",
        "toxiproxy-python",
    ):
        assert heavy not in names, f"the runtime alone pulled in {heavy}"
    proc = _run([str(python), "-c", SERVICE_SCRIPT], timeout=60, cwd=tmp_path)
    assert proc.stdout.startswith("signed up "), proc.stdout
    # the harness' pytest plugin is an entry point: with pytest but no [harness] extra,
    # pytest still runs, and a harness fixture names the extra it needs
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "pytest"],
        timeout=300,
    )
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "test_it.py").write_text(
        "def test_plain():\n    pass\n\ndef test_broker(harness_redis):\n    pass\n"
    )
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests,
        check=False,
    )
    assert "1 passed, 1 error" in proc.stdout, proc.stdout + proc.stderr
    assert "pip install 'purista-conformance[harness]'" in proc.stdout


def test_the_conformance_extra_runs_the_suite_in_parallel(wheel: Path, tmp_path: Path) -> None:
    python, took = _venv(tmp_path / "venv", f"{wheel}[conformance]")
    print(f"[conformance] install: {took:.1f}s")
    conformance = python.parent / "conformance"
    version = _run([str(conformance), "--version"], timeout=60)
    assert "0.1.0" in version.stdout
    shipped = _run(
        [
            str(python),
            "-c",
            "from conformance.report import model; print(model.SCHEMA_FILE.is_file())",
        ],
        timeout=60,
    )
    assert shipped.stdout.strip() == "True", "report.schema.json is not in the wheel"
    reports = tmp_path / "reports"
    proc = subprocess.run(
        [
            str(conformance),
            "run",
            "--adapter",
            "memory",
            "-n",
            "2",
            "--quick",
            "--suite",
            "contract",
            "--report-dir",
            str(reports),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((reports / "report.json").read_text())
    assert doc["verdict"]["exit_code"] == 0
    assert doc["environment"]["git_revision"] is None  # a pip install, no checkout
    assert doc["environment"]["libraries"]["pytest-xdist"]
    assert doc["summary"].get("passed", 0) > 10
    assert {r["adapter"] for r in doc["results"]} == {"memory"}
    assert "gw0" in proc.stdout or "2 workers" in proc.stdout


def test_every_data_file_of_the_packages_is_in_the_wheel(wheel: Path) -> None:
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [
        str(p.relative_to(ROOT))
        for pkg in ("reference_services", "harness", "conformance")
        for p in (ROOT / pkg).rglob("*")
        if p.is_file()
        and p.suffix not in (".py", ".pyc")
        and "__pycache__" not in p.parts
        and str(p.relative_to(ROOT)) not in names
    ]
    assert not missing, f"not in the wheel (add them to package-data): {missing}"
