"""Queue bridges and stores, ours against the raw client doing the same work."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from benchmarks.contenders import PAYLOAD, Ctx, prefix
from reference_services.adapters.registry import resolve

WORKERS = 4


class _Contender:
    """One side of a comparison: set up, measured, closed."""

    label = "?"

    async def setup(self) -> None: ...

    async def close(self) -> None: ...


class _Ours:
    """Our adapter (built unstarted): started at set-up, destroyed at close."""

    label = "ours"
    adapter: Any

    async def setup(self) -> None:
        await self.adapter.start()

    async def close(self) -> None:
        await self.adapter.destroy()


class _Raw:
    """A raw client of the broker under a key/subject prefix of its own."""

    label = "raw"

    def __init__(self, url: str, tag: str) -> None:
        self.url = url
        self.p = prefix(tag)


class _RawRedis(_Raw):
    """A redis-py client (the raw Redis contenders)."""

    async def setup(self) -> None:
        import redis.asyncio as redis

        self.r = redis.from_url(self.url)

    async def close(self) -> None:
        await self.r.aclose()


class _RawNats(_Raw):
    """A nats-py connection and its JetStream context (the raw NATS contenders)."""

    async def _connect(self) -> None:
        import nats

        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()


# ------------------------------------------------------------------------ queues
class QueueContender(_Contender):
    async def enqueue(self, queue: str) -> None:
        raise NotImplementedError

    async def work_one(self, queue: str) -> bool:
        """Lease one job and ack it; False when none was ready."""
        raise NotImplementedError


class OursQueue(_Ours, QueueContender):
    def __init__(self, adapter: str, urls: dict[str, str]) -> None:
        self.adapter = self.bridge = resolve("queue_bridge", adapter).build(
            Ctx(urls, prefix(adapter))
        )

    async def enqueue(self, queue: str) -> None:
        await self.bridge.enqueue(queue, PAYLOAD)

    async def work_one(self, queue: str) -> bool:
        jobs = await self.bridge.lease_next(queue, 1, 0)
        for job in jobs:
            await self.bridge.ack(job)
        return bool(jobs)


class RawRedisQueue(_RawRedis, QueueContender):
    """redis-py: the reliable-queue pattern (LPUSH; LMOVE to a processing list; LREM)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "rq")

    async def enqueue(self, queue: str) -> None:
        job = json.dumps({"id": uuid.uuid4().hex, "payload": PAYLOAD}, separators=(",", ":"))
        await self.r.lpush(f"{self.p}:{queue}", job)

    async def work_one(self, queue: str) -> bool:
        raw = await self.r.lmove(f"{self.p}:{queue}", f"{self.p}:{queue}:busy", "RIGHT", "LEFT")
        if raw is None:
            return False
        json.loads(raw)
        await self.r.lrem(f"{self.p}:{queue}:busy", 1, raw)
        return True


class RawNatsQueue(_RawNats, QueueContender):
    """nats-py: a JetStream work-queue stream, one durable pull consumer, fetch(1) + ack."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "nq")
        self._subs: dict[str, Any] = {}

    async def setup(self) -> None:
        from nats.js.api import RetentionPolicy

        await self._connect()
        await self.js.add_stream(name=self.p, subjects=[f"{self.p}.>"],
                                 retention=RetentionPolicy.WORK_QUEUE)

    async def close(self) -> None:
        await self.js.delete_stream(self.p)
        await self.nc.close()

    async def enqueue(self, queue: str) -> None:
        await self.js.publish(f"{self.p}.{queue}", json.dumps(PAYLOAD).encode(), stream=self.p)

    async def _sub(self, queue: str) -> Any:
        sub = self._subs.get(queue)
        if sub is None:
            sub = await self.js.pull_subscribe(f"{self.p}.{queue}", durable=f"w{queue}",
                                               stream=self.p)
            self._subs[queue] = sub
        return sub

    async def work_one(self, queue: str) -> bool:
        import nats

        sub = await self._sub(queue)
        try:
            msgs = await sub.fetch(1, timeout=0.2)
        except nats.errors.TimeoutError:
            return False
        for msg in msgs:
            json.loads(msg.data)
            await msg.ack()
        return bool(msgs)


# ------------------------------------------------------------------------ stores
class StoreContender(_Contender):
    async def set(self, key: str) -> None:
        raise NotImplementedError

    async def get(self, key: str) -> None:
        raise NotImplementedError


class OursStore(_Ours, StoreContender):
    def __init__(self, kind: str, adapter: str, urls: dict[str, str]) -> None:
        # config and secret stores are read-only by default: the bench writes what it reads
        self.adapter = self.store = resolve(kind, adapter).build(
            Ctx(urls, prefix("s"), enable_set=True)
        )

    async def set(self, key: str) -> None:
        await self.store.set(key, PAYLOAD)

    async def get(self, key: str) -> None:
        await self.store.get(key)


class RawRedisStore(_RawRedis, StoreContender):
    def __init__(self, url: str) -> None:
        super().__init__(url, "rs")

    async def set(self, key: str) -> None:
        await self.r.set(f"{self.p}:{key}", json.dumps(PAYLOAD, separators=(",", ":")))

    async def get(self, key: str) -> None:
        raw = await self.r.get(f"{self.p}:{key}")
        if raw is not None:
            json.loads(raw)


class RawNatsKV(_RawNats, StoreContender):
    def __init__(self, url: str) -> None:
        super().__init__(url, "kv")

    async def setup(self) -> None:
        await self._connect()
        self.kv = await self.js.create_key_value(bucket=self.p)

    async def close(self) -> None:
        await self.js.delete_key_value(self.p)
        await self.nc.close()

    async def set(self, key: str) -> None:
        await self.kv.put(key, json.dumps(PAYLOAD).encode())

    async def get(self, key: str) -> None:
        entry = await self.kv.get(key)
        json.loads(entry.value or b"null")


async def drain_with_workers(contender: QueueContender, queue: str, jobs: int,
                             timeout_s: float = 60.0) -> None:
    """WORKERS concurrent workers lease and ack until ``jobs`` are done."""
    done = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    async def worker() -> None:
        nonlocal done
        while done < jobs:
            if loop.time() > deadline:
                raise TimeoutError(f"{contender.label}: {done} of {jobs} jobs in {timeout_s}s")
            if await contender.work_one(queue):
                done += 1
            else:
                await asyncio.sleep(0.001)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
