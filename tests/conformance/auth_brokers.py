"""A RabbitMQ and a nats-server that require a user and password (local processes).

The harness' local recipes are extended with credentials, so the brokers are the
same ones the suite uses otherwise. ``python tests/conformance/auth_brokers.py``
starts both and prints their URLs (for manual runs).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.services import local_recipes
from harness.services.local import LocalProvider

USER = "cfuser"


def new_password() -> str:
    """A password that cannot occur by accident in any output."""
    return "Pw" + secrets.token_hex(12)


@contextlib.contextmanager
def brokers_with_password(password: str) -> Iterator[dict[str, Any]]:
    """Start RabbitMQ and NATS requiring ``USER``/``password``; yields {service: handle}."""
    orig = dict(local_recipes.RECIPES)

    def rabbitmq(d: Path, port: int, free_port: Any) -> local_recipes.Recipe:
        recipe = orig["rabbitmq"](d, port, free_port)
        conf = d / "rabbitmq.conf"
        conf.write_text(conf.read_text() + f"default_user = {USER}\ndefault_pass = {password}\n")
        return recipe

    def nats(d: Path, port: int, free_port: Any) -> local_recipes.Recipe:
        recipe = orig["nats"](d, port, free_port)
        recipe.command += ["--user", USER, "--pass", password]
        return recipe

    local_recipes.RECIPES.update(rabbitmq=rabbitmq, nats=nats)
    handles: dict[str, Any] = {}
    try:
        provider = LocalProvider()
        for name in ("rabbitmq", "nats"):
            handles[name] = provider.start(name)
    finally:
        local_recipes.RECIPES.update(orig)
    try:
        yield handles
    finally:
        for handle in handles.values():
            with contextlib.suppress(Exception):
                handle.stop()


def urls(handles: dict[str, Any], password: str) -> dict[str, str]:
    """AMQP_URL and NATS_URL with the credentials in them."""
    r, n = handles["rabbitmq"], handles["nats"]
    return {
        "AMQP_URL": f"amqp://{USER}:{password}@127.0.0.1:{r.port}/",
        "NATS_URL": f"nats://{USER}:{password}@127.0.0.1:{n.port}",
    }


if __name__ == "__main__":
    import signal
    import sys
    import time

    # SIGTERM ends the run like Ctrl-C, so that the brokers are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pw = new_password()
    with brokers_with_password(pw) as hs:
        for k, v in urls(hs, pw).items():
            print(f"export {k}='{v}'", flush=True)
        print(f"export CF_PASSWORD='{pw}'", flush=True)
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            while True:
                time.sleep(3600)
