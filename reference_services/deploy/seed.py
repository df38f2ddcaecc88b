"""Put secrets into the configured secret store: the deployment's one-shot seeding step.

``python -m reference_services.deploy.seed NAME=FILE [NAME=FILE ...]`` reads each value
from FILE (a mounted secret, e.g. ``/run/secrets/NAME``: never from the environment or
the command line, where ``docker inspect`` and ``ps`` would show it) and sets it in the
secret store ``SECRET_STORE``/``STORE`` names, through an admin instance (the services'
own stores are get-only). Values are never printed; the exit code says whether it worked.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

from reference_services.adapters import registry
from reference_services.deploy.config import DeploymentConfig


def parse_pairs(args: list[str]) -> dict[str, Path]:
    """``NAME=FILE`` pairs; a clear error for anything else (no value is ever echoed)."""
    out: dict[str, Path] = {}
    for arg in args:
        name, sep, file = arg.partition("=")
        if not sep or not name or not file:
            raise ValueError(f"expected NAME=FILE, got an argument without '=' or a part: "
                             f"{name or '<empty>'!r}")
        out[name] = Path(file)
    if not out:
        raise ValueError("no NAME=FILE given")
    return out


async def seed(cfg: DeploymentConfig, values: Mapping[str, str]) -> None:
    """Set every secret of ``values`` in the configured secret store."""
    descriptor = registry.resolve("secret_store", cfg.store_for("secret_store"))
    admin = descriptor.build_from_urls(cfg.urls, cfg.prefix, enable_set=True)
    await admin.start()
    try:
        for name, value in values.items():
            await admin.set(name, value)
    finally:
        await admin.destroy()


def main(argv: list[str] | None = None) -> int:
    """Seed the secrets named on the command line; 0 when every one was set."""
    try:
        files = parse_pairs(list(sys.argv[1:] if argv is None else argv))
        values = {}
        for name, path in files.items():
            value = path.read_text(encoding="utf-8").strip()
            if not value:
                raise ValueError(f"secret {name!r}: {path} is empty")
            values[name] = value
        cfg = DeploymentConfig.from_env()
    except (OSError, ValueError) as exc:
        print(f"seed: {exc}", file=sys.stderr, flush=True)
        return 2
    asyncio.run(seed(cfg, values))
    print(f"SEEDED {' '.join(sorted(values))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
