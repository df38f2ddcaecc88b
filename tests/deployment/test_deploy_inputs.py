"""Bad deployment input fails with a clear error; the seeding step never shows a value."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_services.deploy import seed
from reference_services.deploy.config import DeploymentConfig
from reference_services.deploy.factory import make_queue_bridge
from reference_services.deploy.serverless import handle


def test_queue_lease_ttl_reaches_the_queue_bridge_and_bad_values_are_named() -> None:
    cfg = DeploymentConfig.from_env({"QUEUE_LEASE_TTL_MS": "1500"})
    assert make_queue_bridge(cfg).default_lease_ttl_ms == 1500
    assert make_queue_bridge(DeploymentConfig.from_env({})).default_lease_ttl_ms == 30_000
    for bad in ("abc", "0", "-3"):
        with pytest.raises(ValueError, match="QUEUE_LEASE_TTL_MS"):
            DeploymentConfig.from_env({"QUEUE_LEASE_TTL_MS": bad})


def test_seed_names_what_is_wrong_and_never_prints_a_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="NAME=FILE"):
        seed.parse_pairs(["token"])
    with pytest.raises(ValueError, match="no NAME=FILE"):
        seed.parse_pairs([])
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert seed.main([f"tok={empty}"]) == 2
    assert seed.main([f"tok={tmp_path / 'missing'}"]) == 2
    value = tmp_path / "value"
    value.write_text("s3cr3t-value\n")
    assert seed.main([f"tok={value}"]) == 0  # the in-memory store of the default config
    out = capsys.readouterr()
    assert "SEEDED tok" in out.out
    assert "s3cr3t-value" not in out.out + out.err


async def test_a_health_invocation_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="health must be one of"):
        await handle({"service": "user", "health": "sometimes"}, DeploymentConfig())
    answer = await handle({"service": "user", "health": "ready"}, DeploymentConfig())
    assert answer["status"] == 200, answer
