"""docker/install-local-services.sh is a fast no-op when every binary is present."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from harness.services.local import LocalProvider
from harness.services.spec import SERVICE_NAMES, SPECS

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "install-local-services.sh"


def test_installer_is_a_fast_no_op_when_everything_is_installed() -> None:
    if any(LocalProvider().unavailable_reason(n) for n in SERVICE_NAMES):
        pytest.skip("some binaries are missing: the installer would install them")
    started = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "all services present" in proc.stderr
    assert time.monotonic() - started < 5


def test_compose_file_uses_the_locally_built_images() -> None:
    text = (SCRIPT.parent / "compose.yaml").read_text()
    for name in SERVICE_NAMES:
        assert f"image: {SPECS[name].image}" in text
        assert (SCRIPT.parent / "images" / name / "Dockerfile").is_file()


def test_the_harness_installs_the_moto_its_image_runs() -> None:
    """The moto the harness extra installs (the local provider's moto_server) is the one the
    image is built with: with a range, a new release made them differ (the docker provider's
    moto reported 5.2.6 for an image of 5.2.5)."""
    import tomllib

    from harness.services.spec import MOTO_VERSION

    pyproject = tomllib.loads((SCRIPT.parents[1] / "pyproject.toml").read_text())
    harness_extra = pyproject["project"]["optional-dependencies"]["harness"]
    (moto,) = [r for r in harness_extra if r.startswith("moto[")]
    assert moto.endswith(f"=={MOTO_VERSION}"), f"{moto} does not pin moto {MOTO_VERSION}"
