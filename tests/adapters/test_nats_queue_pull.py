"""The NATS queue bridge's no-wait pull against a real nats-server, with a scripted answerer.

nats-server 2.9 sometimes leaves a no-wait pull unanswered (issue 7457) and answers
others late; neither can be provoked on demand, so a subscriber on the pull subject plays
the JetStream side: it answers at once, holds a request, or answers a held one later.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats
import pytest
from adapter_helpers import wait_for

from reference_services.adapters.nats.queue_pull import NoWaitPuller, PullRefused


class Answerer:
    """Answers pulls on ``<prefix>.CONSUMER.MSG.NEXT.S.D`` as told by ``plan``."""

    def __init__(self, nc: Any, prefix: str) -> None:
        self.nc = nc
        self.subject = f"{prefix}.CONSUMER.MSG.NEXT.S.D"
        self.plan: list[list[bytes | str] | None] = []  # per request: bodies (str = status)
        self.held: list[tuple[str, int]] = []  # (reply, batch) of requests left unanswered
        self.requests: list[int] = []

    async def start(self) -> None:
        await self.nc.subscribe(self.subject, cb=self._on_request)

    async def _on_request(self, msg: Any) -> None:
        batch = json.loads(msg.data)["batch"]
        self.requests.append(batch)
        answer = self.plan.pop(0) if self.plan else ["404"]
        if answer is None:
            self.held.append((msg.reply, batch))
        else:
            await self.send(msg.reply, answer)

    async def send(self, reply: str, answer: list[bytes | str]) -> None:
        for item in answer:
            if isinstance(item, str):
                await self.nc.publish(reply, b"", headers={"Status": item})
            else:
                await self.nc.publish(reply, item)
        await self.nc.flush()


@pytest.fixture
async def wire(harness_nats: Any, namespace: str) -> Any:
    nc = await nats.connect(harness_nats.url)
    answerer = Answerer(nc, f"T{namespace}")
    await answerer.start()
    late: list[float] = []
    puller = NoWaitPuller(nc, f"T{namespace}", "S", "D", lambda: late.append(time.monotonic()))
    try:
        yield answerer, puller, late
    finally:
        await puller.close()
        await nc.close()


def bodies(msgs: list[Any]) -> list[bytes]:
    return [m.data for m in msgs]


async def test_ready_messages_then_the_end_of_the_answer(wire: Any) -> None:
    answerer, puller, _late = wire
    answerer.plan = [[b"a", b"b", "404"], [b"c", b"d"]]
    assert bodies(await puller.pull(5, 0.2, 5.0, 30.0)) == [b"a", b"b"]
    assert bodies(await puller.pull(2, 0.2, 5.0, 30.0)) == [b"c", b"d"]
    assert answerer.requests == [5, 2]


async def test_an_unanswered_request_is_asked_again_and_its_late_answer_kept(wire: Any) -> None:
    answerer, puller, late = wire
    answerer.plan = [[b"warm-up"], None, [b"again"]]
    assert bodies(await puller.pull(1, 0.2, 5.0, 30.0)) == [b"warm-up"]
    started = time.monotonic()
    assert bodies(await puller.pull(1, 0.2, 5.0, 30.0)) == [b"again"]
    # asked again after 0.2 s (answers took milliseconds), not after the 5 s timeout
    assert time.monotonic() - started < 2.0
    assert answerer.requests == [1, 1, 1]
    reply, _batch = answerer.held.pop()
    await answerer.send(reply, [b"late"])
    await wait_for(lambda: bool(late), 5, "the late answer announced")
    assert len(late) == 1
    assert bodies(await puller.pull(1, 0.2, 5.0, 30.0)) == [b"late"]
    assert answerer.requests == [1, 1, 1]  # handed out from the inbox, no request


async def test_a_pull_nobody_answers_times_out_at_its_timeout(wire: Any) -> None:
    answerer, puller, _late = wire
    answerer.plan = [[b"warm-up"], *[None] * 50]
    await puller.pull(1, 0.2, 5.0, 30.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer to a pull on D"):
        await puller.pull(1, 0.2, 1.0, 30.0)
    assert 0.9 < time.monotonic() - started < 3.0
    assert 3 <= len(answerer.requests) - 1 <= 6  # asked every 0.2 s


@pytest.mark.parametrize("status", ["404", "409"])
async def test_the_status_that_ends_a_late_answer_does_not_end_the_next_pull(
    wire: Any, status: str
) -> None:
    answerer, puller, late = wire
    answerer.plan = [[b"warm-up"], None, ["404"], [b"next", "404"]]
    await puller.pull(1, 0.2, 5.0, 30.0)
    assert await puller.pull(1, 0.2, 5.0, 30.0) == []
    reply, _batch = answerer.held.pop()
    await answerer.send(reply, [status])
    await wait_for(lambda: bool(late), 5, "the late status arrived")
    assert bodies(await puller.pull(3, 0.2, 5.0, 30.0)) == [b"next"]


async def test_a_message_older_than_max_age_is_not_handed_out(wire: Any) -> None:
    answerer, puller, late = wire
    answerer.plan = [[b"warm-up"], None, ["404"]]
    await puller.pull(1, 0.2, 5.0, 30.0)
    assert await puller.pull(1, 0.2, 5.0, 30.0) == []
    reply, _batch = answerer.held.pop()
    await answerer.send(reply, [b"stale"])
    await wait_for(lambda: bool(late), 5, "the late answer arrived")
    await asyncio.sleep(0.3)  # what is waited for is the message's age itself
    answerer.plan = [[b"fresh"]]
    assert bodies(await puller.pull(1, 0.2, 5.0, max_age_s=0.2)) == [b"fresh"]


async def test_concurrent_pulls_get_their_own_answers(wire: Any) -> None:
    answerer, puller, late = wire
    answerer.plan = [None, None]
    first = asyncio.ensure_future(puller.pull(2, 0.2, 5.0, 30.0))
    second = asyncio.ensure_future(puller.pull(2, 0.2, 5.0, 30.0))
    await wait_for(lambda: len(answerer.held) == 2, 5, "both requests held")
    (reply_a, _), (reply_b, _) = answerer.held
    assert reply_a != reply_b
    await answerer.send(reply_b, [b"b1", b"b2"])
    await answerer.send(reply_a, [b"a1", "404"])
    assert bodies(await first) == [b"a1"]
    assert bodies(await second) == [b"b1", b"b2"]
    # more for the second inbox, late: the next pull takes that inbox, not the first
    await answerer.send(reply_b, [b"b3"])
    await wait_for(lambda: bool(late), 5, "the late answer announced")
    requests_before = len(answerer.requests)
    assert bodies(await puller.pull(1, 0.2, 5.0, 30.0)) == [b"b3"]
    assert len(answerer.requests) == requests_before


async def test_a_refused_pull_says_so(wire: Any) -> None:
    answerer, puller, _late = wire
    answerer.plan = [["409"]]
    with pytest.raises(PullRefused, match="409"):
        await puller.pull(1, 0.2, 5.0, 30.0)
