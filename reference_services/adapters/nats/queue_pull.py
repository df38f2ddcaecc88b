"""No-wait pulls for the NATS queue bridge."""

from __future__ import annotations

import json
import time
from typing import Any

#: how long the server may hold a no-wait pull it cannot answer at once. nats-server before
#: 2.11.11 / 2.12.2 leaves a no-wait pull without an expiry unanswered when concurrent pulls
#: took the messages its pending count still counts (nats-server issue 7457): the puller
#: waited for its whole op timeout (5 s) at the end of every drained queue. With an expiry
#: the server answers 408 by then; an empty consumer then holds the pull this long too
#: (instead of a 404 at once), which a lease with wait_ms=0 can afford.
NO_WAIT_EXPIRES_S = 0.05


class PullRefused(Exception):
    """The server refused a pull (e.g. the consumer does not exist)."""


async def pull_no_wait(
    nc: Any, api_prefix: str, stream: str, durable: str, batch: int, timeout_s: float
) -> list[Any]:
    """Fetch up to ``batch`` messages that are ready now; never waits for new ones.

    The server answers a ``no_wait`` pull at once with the messages it has, then a 404/408
    status when it has no more; at the latest after :data:`NO_WAIT_EXPIRES_S`.
    """
    from nats.js.client import JetStreamContext

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=0)
    out: list[Any] = []
    try:
        request = json.dumps(
            {"batch": batch, "no_wait": True, "expires": int(NO_WAIT_EXPIRES_S * 1e9)}
        ).encode()
        await nc.publish(f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}", request, inbox)
        deadline = time.monotonic() + timeout_s
        while len(out) < batch:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                msg = await sub.next_msg(timeout=remaining)
            except TimeoutError:
                if out:
                    break
                raise TimeoutError(f"no answer to a pull on {durable}") from None
            status = JetStreamContext.is_status_msg(msg)
            if status == "100":  # idle heartbeat
                continue
            if status in ("404", "408"):  # no (more) messages
                break
            if status:  # 409 (consumer deleted, limits), 503 (no responders)...
                if out:
                    break
                raise PullRefused(f"pull on {durable} answered {status}")
            out.append(msg)
    finally:
        await sub.unsubscribe()
    return out
