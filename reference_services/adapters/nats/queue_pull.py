"""No-wait pulls for the NATS queue bridge."""

from __future__ import annotations

import json
import time
from typing import Any


class PullRefused(Exception):
    """The server refused a pull (e.g. the consumer does not exist)."""


async def pull_no_wait(
    nc: Any, api_prefix: str, stream: str, durable: str, batch: int, timeout_s: float
) -> list[Any]:
    """Fetch up to ``batch`` messages that are ready now; never waits for new ones.

    The server answers a ``no_wait`` pull at once: the messages it has, then a
    404/408 status when it has no more.
    """
    from nats.js.client import JetStreamContext

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=0)
    out: list[Any] = []
    try:
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
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
