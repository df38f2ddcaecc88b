"""No-wait pulls for the NATS queue bridge: bounded waits, inboxes that outlive a pull."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable
from typing import Any


class PullRefused(Exception):
    """The server refused a pull (e.g. the consumer does not exist)."""


class _Inbox:
    """One subscription the server answers pulls on; used by one pull at a time."""

    def __init__(self, on_idle_message: Callable[[], None]) -> None:
        self.sub: Any = None
        self.name = ""
        self.busy = False
        self.arrived: collections.deque[tuple[float, Any]] = collections.deque()
        self.signal = asyncio.Event()
        self._on_idle_message = on_idle_message

    async def on_msg(self, msg: Any) -> None:
        self.arrived.append((time.monotonic(), msg))
        self.signal.set()
        if not self.busy:
            self._on_idle_message()


class NoWaitPuller:
    """Fetches the messages a durable pull consumer has ready now; never waits for new ones.

    The server answers a ``no_wait`` pull at once: the messages it has, then a 404/408
    status when it has no more. nats-server 2.9 sometimes leaves one of several
    concurrent no-wait pulls unanswered (nats-server issue 7457, fixed in 2.11.11 and
    2.12.2), which once cost such a pull the whole operation timeout. Hence:

    - a request waits for its first answer three times as long as the slowest of the
      last 16 answers took (at least ``answer_s``; before any answer, the operation
      timeout), then the pull asks again, until ``timeout_s``;
    - the inboxes outlive their pulls (one per concurrent pull, reused): what the server
      sends late to an earlier request is not lost to an unsubscribed inbox. It calls
      ``on_late`` (the bridge wakes its waiting leases) and the next pull hands it out.

    A message left in an inbox longer than ``max_age_s`` is not handed out: the server
    redelivers it after the consumer's ack wait, and leasing it that late would race the
    redelivery.
    """

    def __init__(
        self,
        nc: Any,
        api_prefix: str,
        stream: str,
        durable: str,
        on_late: Callable[[], None] = lambda: None,
    ) -> None:
        self.nc = nc
        self.durable = durable
        self.on_late = on_late
        self._subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inboxes: list[_Inbox] = []
        self._answer_times: collections.deque[float] = collections.deque(maxlen=16)

    async def _inbox(self) -> _Inbox:
        """An idle inbox, one holding late messages first; a new one when all are busy."""
        idle = [box for box in self._inboxes if not box.busy]
        for box in idle:
            if box.arrived:
                return box
        if idle:
            return idle[0]
        box = _Inbox(self.on_late)
        box.busy = True  # nobody else takes it while it subscribes
        box.name = self.nc.new_inbox()
        box.sub = await self.nc.subscribe(box.name, cb=box.on_msg)
        self._inboxes.append(box)
        return box

    def _answer_bound(self, answer_s: float, timeout_s: float) -> float:
        if not self._answer_times:
            return timeout_s
        return min(timeout_s, max(answer_s, 3 * max(self._answer_times)))

    async def pull(
        self, batch: int, answer_s: float, timeout_s: float, max_age_s: float
    ) -> list[Any]:
        """Up to ``batch`` messages ready now ([] when none); raises :class:`PullRefused`
        when the server refuses the pull and ``TimeoutError`` when no request was answered
        within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            box = await self._inbox()
            box.busy = True
            try:
                return await self._pull(box, batch, answer_s, deadline, max_age_s)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                # asked again: the stall hits one request, not the next one
            finally:
                box.busy = False

    async def _pull(
        self, box: _Inbox, batch: int, answer_s: float, deadline: float, max_age_s: float
    ) -> list[Any]:
        out: list[Any] = []
        _take(box, out, batch, max_age_s, self.durable, from_earlier=True)
        if len(out) >= batch:
            return out
        request = json.dumps({"batch": batch - len(out), "no_wait": True}).encode()
        await self.nc.publish(self._subject, request, box.name)
        started = time.monotonic()
        first_answer_by = min(deadline, started + self._answer_bound(answer_s, deadline - started))
        answered = False
        while len(out) < batch:
            if not box.arrived:
                wait = (deadline if answered else first_answer_by) - time.monotonic()
                box.signal.clear()
                try:
                    if wait <= 0:
                        raise TimeoutError
                    await asyncio.wait_for(box.signal.wait(), wait)
                except TimeoutError:
                    if out or answered:
                        break
                    raise TimeoutError(f"no answer to a pull on {self.durable}") from None
                continue
            if not answered:
                answered = True
                self._answer_times.append(time.monotonic() - started)
            if _take(box, out, batch, max_age_s, self.durable, from_earlier=False):
                break
        return out

    async def close(self) -> None:
        """Drop the inboxes (messages still in them are redelivered after the ack wait)."""
        boxes, self._inboxes = self._inboxes, []
        for box in boxes:
            box.arrived.clear()
            if box.sub is not None:
                await box.sub.unsubscribe()


def _take(
    box: _Inbox, out: list[Any], batch: int, max_age_s: float, durable: str, *, from_earlier: bool
) -> bool:
    """Move arrived messages into ``out``; True at a status that ends the pull."""
    from nats.js.client import JetStreamContext

    now = time.monotonic()
    while box.arrived and len(out) < batch:
        at, msg = box.arrived.popleft()
        status = JetStreamContext.is_status_msg(msg)
        if status == "100":  # idle heartbeat
            continue
        if status:
            if from_earlier:
                continue  # the end of an earlier request's answer
            if status in ("404", "408"):  # no (more) messages
                return True
            if out:  # 409 (consumer deleted, limits), 503 (no responders)...
                return True
            raise PullRefused(f"pull on {durable} answered {status}")
        if now - at <= max_age_s:
            out.append(msg)
    return False
