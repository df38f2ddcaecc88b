"""One idempotent state-store effect in its own OS process, for the faults suite.

``python -m reference_services.deploy.effectwork KEY`` connects to the state
store named by ``STORE`` (``*_URL``, ``PURISTA_PREFIX`` as for deployments) and
runs, once per ``KEY`` through :meth:`Idempotency.run_atomic`, an effect that
increments the counter ``effectwork:count:KEY``: it reads the counter, appends
``effect`` to ``EFFECTWORK_LOG``, waits ``EFFECTWORK_WINDOW_MS`` (the window
between the effect and its "done" record, where the suite's SIGKILL lands) and
returns the new value as the outcome's write. On a store declaring
``atomic_effects`` the write and the done record commit together, so a kill
inside the window commits nothing and the next process commits once.

``EFFECTWORK_MODE=external`` writes the counter inside the effect instead (the
at-least-once window, to show the check catches it). ``EFFECTWORK_CLAIM_TTL_S``
sets the claim ttl. Prints ``COMMITTED <value>`` and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from reference_services.deploy.config import DeploymentConfig
from reference_services.deploy.factory import make_stores
from reference_services.runtime.idempotency import Idempotency, Outcome

COUNTER = "effectwork:count:{key}"


def _log(event: str, key: str) -> None:
    path = os.environ.get("EFFECTWORK_LOG")
    if not path:
        return
    line = json.dumps({"t": time.time(), "ev": event, "id": key, "pid": os.getpid()}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def run(key: str) -> int:
    """Run the effect for ``key`` once; 0 when its outcome is recorded."""
    cfg = DeploymentConfig.from_env()
    store = make_stores(cfg).state
    await store.start()
    try:
        ttl = float(os.environ.get("EFFECTWORK_CLAIM_TTL_S", "1"))
        window = float(os.environ.get("EFFECTWORK_WINDOW_MS", "500")) / 1000
        external = os.environ.get("EFFECTWORK_MODE", "atomic") == "external"
        idem = Idempotency(store, prefix="effectwork", claim_ttl_s=ttl, wait_s=ttl * 10)
        name = COUNTER.format(key=key)

        async def effect(k: str) -> Outcome[Any]:
            current = (await store.get(name))[name] or 0
            if external:
                await store.set(name, current + 1)
            _log("effect", k)
            await asyncio.sleep(window)
            return Outcome(current + 1, {} if external else {name: current + 1})

        value = await idem.run_atomic(key, effect)
        _log("recorded", key)
        print(f"COMMITTED {value}", flush=True)
        return 0
    finally:
        await store.destroy()


def main() -> int:
    """Entry point."""
    if len(sys.argv) != 2:
        print("usage: python -m reference_services.deploy.effectwork KEY", file=sys.stderr)
        return 2
    return asyncio.run(run(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
