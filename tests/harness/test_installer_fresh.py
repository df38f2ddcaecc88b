"""docker/install-local-services.sh on a machine where toxiproxy-server and daprd are absent
(real runs; daprd comes from the installer's build cache when it holds one).

``--prefix`` points the installer at an empty directory, so it finds no toxiproxy-server
and takes the build branch (the one a fresh machine takes, and the one that used to abort
with ``gobin: unbound variable``); ``--force`` also re-checks the apt packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "install-local-services.sh"

needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="go is not installed")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )


def _new_temp_dirs(before: set[str]) -> list[str]:
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    return sorted({p.name for p in tmp.glob("tmp.*") if p.is_dir()} - before)


def _temp_dirs() -> set[str]:
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    return {p.name for p in tmp.glob("tmp.*") if p.is_dir()}


@needs_go
def test_installer_builds_toxiproxy_into_an_empty_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "bin"
    prefix.mkdir()
    before = _temp_dirs()
    proc = _run("--prefix", str(prefix))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unbound variable" not in proc.stderr
    assert "building toxiproxy-server" in proc.stderr
    binary = prefix / "toxiproxy-server"
    assert binary.is_file() and os.access(binary, os.X_OK)
    version = subprocess.run(
        [str(binary), "-version"], capture_output=True, text=True, timeout=10, check=False
    )
    assert version.returncode == 0 and "toxiproxy-server version" in version.stdout
    assert not _new_temp_dirs(before), "temporary GOBIN left behind"
    daprd = prefix / "daprd"
    assert daprd.is_file() and "installed " + str(daprd) in proc.stderr
    dapr_version = subprocess.run(
        [str(daprd), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    assert dapr_version.stdout.strip() == "1.14.0", dapr_version.stdout
    again = _run("--prefix", str(prefix))
    assert again.returncode == 0 and "all services present" in again.stderr, again.stderr


@needs_go
@pytest.mark.skipif(os.geteuid() != 0, reason="--force re-installs apt packages (root)")
def test_installer_force_runs_every_branch(tmp_path: Path) -> None:
    prefix = tmp_path / "bin"
    proc = _run("--force", "--prefix", str(prefix))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unbound variable" not in proc.stderr
    assert "re-checking rabbitmq-server nats-server redis-server mosquitto" in proc.stderr
    assert "building toxiproxy-server" in proc.stderr
    assert (prefix / "toxiproxy-server").is_file()
    assert (prefix / "daprd").is_file() and "installed " + str(prefix / "daprd") in proc.stderr


def test_installer_rejects_an_unknown_option() -> None:
    proc = _run("--frobnicate")
    assert proc.returncode == 2
    assert "unknown option: --frobnicate" in proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shell_scripts_pass_shellcheck() -> None:
    root = SCRIPT.parents[1]
    scripts = [str(p) for p in (root / "docker").glob("*.sh")]
    scripts += [str(p) for p in sorted((root / ".ci").iterdir()) if p.is_file()]
    proc = subprocess.run(  # -x: follow what the CI scripts source, as `make lint` does
        ["shellcheck", "-x", *scripts], capture_output=True, text=True, timeout=60,
        check=False, cwd=root,
    )
    assert proc.returncode == 0, proc.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root to drop to nobody"
)
def test_installer_without_root_says_what_needs_root(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    proc = subprocess.run(
        ["runuser", "-u", "nobody", "--", "bash", str(SCRIPT), "--force", "--prefix",
         str(tmp_path / "bin")],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "need root for: apt-get install rabbitmq-server nats-server redis-server mosquitto" in (
        proc.stderr
    )
