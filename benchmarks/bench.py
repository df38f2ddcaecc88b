"""`make bench`: our adapters against the raw clients and FastStream, side by side.

Brokers come from the harness (``HARNESS_PROVIDER``, local processes by default).
Contenders of one path live in this one process and take turns, round after round
(the order rotates each round); each figure is the median of the rounds. Writes
``benchmarks/results.json`` (per path: ``ours``, ``raw``, ``ratio`` = ours/raw and
``faststream`` where it has the broker) and ``benchmarks/results.md``. Figures, not
tests: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import contenders as cn  # noqa: E402
from benchmarks import queues_stores as qs  # noqa: E402

T = TypeVar("T")

SERVICES = ("rabbitmq", "nats", "redis", "mosquitto")
STORE_KINDS = ("state_store", "config_store", "secret_store")


def adapters(kind: str) -> list[str]:
    """Every registered adapter of ``kind`` (in-memory and on the brokers started here)."""
    from reference_services.adapters.registry import every

    return [d.name for d in every() if d.kind == kind and d.service in (None, *SERVICES)]


def not_measured() -> list[str]:
    """Registered adapters whose backing service this bench does not start."""
    from reference_services.adapters.registry import every

    return [f"{d.label} (needs {d.service})" for d in every()
            if d.service is not None and d.service not in SERVICES]


class Results:
    """Samples per (path, contender); medians and ratios at the end."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.units: dict[str, tuple[str, str]] = {}

    def add(self, path: str, who: str, value: float, unit: str, better: str) -> None:
        self.samples.setdefault(path, {}).setdefault(who, []).append(value)
        self.units[path] = (unit, better)

    def table(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for path, by in self.samples.items():
            unit, better = self.units[path]
            row: dict[str, Any] = {"unit": unit, "better": better}
            for who, values in by.items():
                row[who] = round(statistics.median(values), 4)
                row[f"{who}_range"] = [round(min(values), 4), round(max(values), 4)]
            if row.get("raw"):
                row["ratio"] = round(row["ours"] / row["raw"], 3)
            if row.get("faststream"):
                row["ratio_faststream"] = round(row["ours"] / row["faststream"], 3)
            out[path] = row
        return out


# ----------------------------------------------------------------- measurements
async def latency(call: Callable[[], Awaitable[None]], n: int, cap_s: float) -> list[float]:
    times: list[float] = []
    end = time.perf_counter() + cap_s
    while len(times) < n and (len(times) < 20 or time.perf_counter() < end):
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
    return times


async def throughput(
    call: Callable[[], Awaitable[None]], inflight: int, window_s: float
) -> tuple[float, float]:
    """Calls per second with ``inflight`` callers for about ``window_s``, and CPU s/call."""
    done = 0
    stop = time.perf_counter() + window_s

    async def caller() -> None:
        nonlocal done
        while True:
            await call()
            done += 1
            if time.perf_counter() >= stop:
                return

    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(inflight)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return done / wall, cpu / max(done, 1)


async def events(c: cn.Contender, event: str, window_s: float, max_n: int) -> float:
    """Events published (one after the other, each awaited) per second until every
    subscriber received every one of them."""
    subscribers = cn.EVENT_FANOUT[event]
    before = c.received[event]
    t0 = time.perf_counter()
    n = 0
    while n < max_n and (n < 20 or time.perf_counter() - t0 < window_s):
        await c.emit(event)
        n += 1
    if not await c.wait_received(event, before + n * subscribers, 60):
        raise TimeoutError(f"{c.label}: {event} not delivered to every subscriber")
    return n / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ----------------------------------------------------------------- event bridges
def event_contenders(
    adapter: str, urls: dict[str, str], faststream: bool, durable: bool = True,
    typed: bool = False,
) -> list[cn.Contender]:
    """Ours and its peers on ``adapter``; ``durable``: the subscribers' queues (AMQP: the
    raw client and FastStream alike); ``typed``: our subscriptions name the message type."""
    out: list[cn.Contender] = [cn.Ours(adapter, urls, durable=durable, typed=typed)]
    if adapter == "amqp":
        out.append(cn.RawAmqp(urls["rabbitmq"], durable=durable))
        if faststream:
            out.append(cn.FastStreamAmqp(urls["rabbitmq"], durable=durable))
    elif adapter == "nats":
        out.append(cn.RawNats(urls["nats"]))
        if faststream:
            out.append(cn.FastStreamNats(urls["nats"]))
    elif adapter == "mqtt":
        out.append(cn.RawMqtt(urls["mosquitto"]))
    return out


@contextlib.asynccontextmanager
async def started(cs: Sequence[Any], what: str) -> AsyncIterator[None]:
    """Set every contender up; close each one after (a failing close is printed)."""
    for c in cs:
        await c.setup()
    try:
        yield
    finally:
        for c in cs:
            try:
                await c.close()
            except Exception as exc:
                print(f"  {what} {c.label}: close failed: {exc!r}", flush=True)


def rotations(cs: Sequence[T], rounds: int) -> Iterator[tuple[int, list[T]]]:
    """Round r runs the contenders starting from the r-th, so none is always first."""
    for r in range(rounds):
        k = r % len(cs)
        yield r, [*cs[k:], *cs[:k]]


async def bench_event_bridge(adapter: str, urls: dict[str, str], res: Results, args: Any) -> None:
    cs = event_contenders(adapter, urls, args.faststream)
    async with started(cs, adapter):
        for r, order in rotations(cs, args.rounds):
            for c in order:
                await bench_commands(c, adapter, res, args)
                await bench_events(c, adapter, res, args, DURABLE_ROWS.get(adapter, ""))
            print(f"  {adapter}: round {r + 1} done", flush=True)
    if adapter == "amqp":  # the round trip against a raw client speaking PURISTA's wire too
        await bench_wire_commands(urls, res, args)
    for tag, variant in EVENT_VARIANTS.get(adapter, []):  # the same events, set up otherwise
        cs = event_contenders(adapter, urls, args.faststream, **variant)
        async with started(cs, f"{adapter}{tag}"):
            for r, order in rotations(cs, args.rounds):
                for c in order:
                    await bench_events(c, adapter, res, args, tag)
                print(f"  {adapter}{tag}: round {r + 1} done", flush=True)


async def bench_wire_commands(urls: dict[str, str], res: Results, args: Any) -> None:
    """AMQP command rows against :class:`RawAmqpPuristaWire`: how much of the gap to the
    plain RPC is the wire itself (header tables, headers-exchange routing, properties)."""
    tag = ", raw on PURISTA's wire"
    cs: list[cn.Contender] = [cn.Ours("amqp", urls), cn.RawAmqpPuristaWire(urls["rabbitmq"])]
    async with started(cs, f"amqp{tag}"):
        for r, order in rotations(cs, args.rounds):
            for c in order:
                await bench_commands(c, "amqp", res, args, tag, tails=False)
            print(f"  amqp{tag}: round {r + 1} done", flush=True)


async def bench_commands(
    c: cn.Contender, adapter: str, res: Results, args: Any, tag: str = "", *, tails: bool = True
) -> None:
    """Command p50 (and p99), commands/s with 64 (and 1,000) in flight, CPU per command;
    ``tails``: the p99 and 1,000-in-flight rows too."""
    times = await latency(c.call, 300, args.window)
    res.add(f"{adapter} command p50{tag}", c.label, pct(times, 0.5) * 1e3, "ms", "lower")
    if tails:
        res.add(f"{adapter} command p99{tag}", c.label, pct(times, 0.99) * 1e3, "ms", "lower")
    rate, cpu = await throughput(c.call, 64, args.window)
    res.add(f"{adapter} commands/s, 64 in flight{tag}", c.label, rate, "/s", "higher")
    res.add(f"{adapter} CPU per command{tag}", c.label, cpu * 1e6, "µs", "lower")
    if tails:
        rate, _ = await throughput(c.call, 1000, args.window)
        res.add(f"{adapter} commands/s, 1000 in flight{tag}", c.label, rate, "/s", "higher")


#: AMQP's events are measured twice: durable queues and persistent events (our default:
#: the broker confirms once the event is on disk), and transient queues (``durable=False``
#: subscriptions; the raw client and FastStream with auto-delete queues). NATS's too: our
#: subscriptions as PURISTA's name only the event (nats-server 2.9 allows a consumer one
#: filter inside one stream subject, so each reads the whole stream and settles the others'
#: events unread), and typed ones (customMessage: the consumer filters by subject, as the
#: raw client's and FastStream's do)
DURABLE_ROWS = {"amqp": ", durable queues"}
EVENT_VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "amqp": [(", transient queues", {"durable": False})],
    "nats": [(", typed subscriptions", {"typed": True})],
}


async def bench_events(c: cn.Contender, adapter: str, res: Results, args: Any, tag: str) -> None:
    for event, subs in cn.EVENT_FANOUT.items():
        rate = await events(c, event, args.window, 3000)
        label = f"{adapter} events/s, {subs} subscriber{'s' if subs > 1 else ''}{tag}"
        res.add(label, c.label, rate, "/s", "higher")


# ----------------------------------------------------------------- queues, stores
# the raw client each adapter is compared with: (harness service, contender class)
RAW_QUEUES: dict[str, tuple[str, Any]] = {
    "redis": ("redis", qs.RawRedisQueue), "nats": ("nats", qs.RawNatsQueue),
}
RAW_STORES: dict[str, tuple[str, Any]] = {
    "redis": ("redis", qs.RawRedisStore), "nats-kv": ("nats", qs.RawNatsKV),
}


def _raw(table: dict[str, tuple[str, Any]], adapter: str, urls: dict[str, str]) -> list[Any]:
    """The raw-client contender for ``adapter``, if it has one."""
    if adapter not in table:
        return []
    service, contender = table[adapter]
    return [contender(urls[service])]


async def _rate(
    op: Callable[[int], Awaitable[Any]], most: int, window_s: float
) -> tuple[float, int]:
    """Calls per second of ``op(n)`` run one after another: at least 20 calls, then until
    ``window_s`` passed or ``most`` calls were made; the rate and the number of calls."""
    t0, n = time.perf_counter(), 0
    while n < 20 or (n < most and time.perf_counter() - t0 < window_s):
        await op(n)
        n += 1
    return n / (time.perf_counter() - t0), n


async def bench_queue(adapter: str, urls: dict[str, str], res: Results, args: Any) -> None:
    cs: list[qs.QueueContender] = [qs.OursQueue(adapter, urls), *_raw(RAW_QUEUES, adapter, urls)]
    async with started(cs, adapter):
        for r, order in rotations(cs, args.rounds):
            for c in order:
                queue = f"q{r}"
                rate, n = await _rate(lambda _n, c=c, q=queue: c.enqueue(q), 3000, args.window)
                res.add(f"{adapter} queue enqueue/s", c.label, rate, "/s", "higher")
                t0 = time.perf_counter()
                await qs.drain_with_workers(c, queue, n)
                res.add(f"{adapter} queue jobs/s, {qs.WORKERS} workers", c.label,
                        n / (time.perf_counter() - t0), "/s", "higher")
            print(f"  queue {adapter}: round {r + 1} done", flush=True)


async def bench_store(kind: str, adapter: str, urls: dict[str, str], res: Results,
                      args: Any) -> None:
    cs: list[qs.StoreContender] = [
        qs.OursStore(kind, adapter, urls), *_raw(RAW_STORES, adapter, urls)
    ]
    async with started(cs, adapter):
        for _r, order in rotations(cs, args.rounds):
            for c in order:
                for op in ("set", "get"):
                    fn = getattr(c, op)
                    # the set loop runs at least 20 times: every key the get loop reads is set
                    rate, _ = await _rate(lambda n, fn=fn: fn(f"k{n % 20}"), 5000, args.window / 2)
                    res.add(f"{adapter} {kind.replace('_', ' ')} {op}/s", c.label, rate, "/s",
                            "higher")


# ----------------------------------------------------------------- memory
async def poll(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Whether ``condition`` came true within ``timeout_s`` (checked every 50 ms)."""
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def pending_memory(adapter: str, urls: dict[str, str], n: int) -> dict[str, float]:
    """Bytes per invocation with ``n`` waiting for a response (tracemalloc, whole process).

    On NATS nobody answers (a silent core subscriber takes the commands); on the memory
    bridge the handler waits, so its side is counted too. The raw figure is nats-py's
    ``request`` with the same silent subscriber."""
    import nats

    from reference_services.runtime.messages import Command, CommandPayload

    out: dict[str, float] = {}
    release = asyncio.Event()
    ours = cn.Ours(adapter, urls)
    await ours.server.start()
    await ours.client.start()
    silent = None

    async def drop(_msg: Any) -> None:
        return None

    if adapter == "nats":
        silent = await nats.connect(urls["nats"])
        await silent.subscribe(f"{ours.client.prefix}.>", cb=drop)
        await silent.flush()
    else:
        async def wait(cmd: Any) -> Any:
            await release.wait()
            return cn.success_response(cmd, None)

        await ours.server.register_command(cn.TARGET, wait)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tasks = [
        asyncio.ensure_future(ours.client.invoke(
            Command(sender=cn.SENDER, receiver=cn.TARGET,
                    payload=CommandPayload(payload=cn.PAYLOAD)), ttl_s=120))
        for _ in range(n)
    ]
    await poll(lambda: ours.client.pending_invocations >= n, 60)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    out["ours"] = held / n
    out["ours_total_mb"] = held / 1e6
    out["ours_pending_reached"] = ours.client.pending_invocations
    release.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await ours.close()
    if silent is not None:
        await silent.close()
        nc = await nats.connect(urls["nats"])
        listen = await nats.connect(urls["nats"])
        subject = cn.prefix("mem") + ".rpc"
        await listen.subscribe(subject, cb=drop)
        await listen.flush()
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        body = cn._body()
        tasks = [asyncio.ensure_future(nc.request(subject, body, timeout=120)) for _ in range(n)]
        await poll(lambda: len(nc._resp_map) >= n, 60)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        out["raw"] = held / n
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()
        await listen.close()
    return out


# ----------------------------------------------------------------- the contract suite
def contract_wall_time(selection: str) -> dict[str, Any]:
    cmd = [str(ROOT / ".venv/bin/conformance"), "run", "--suite", "contract", "--quick",
           "--report-dir", str(ROOT / "reports/bench-contract")]
    for adapter in selection.split(","):
        if adapter != "all":
            cmd += ["--adapter", adapter]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    return {"selection": selection, "seconds": round(time.perf_counter() - t0, 1),
            "exit_code": proc.returncode}


# ----------------------------------------------------------------- output
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    return str(value)


def write(out_dir: Path, data: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# `make bench` results",
        "",
        f"{data['date']} on {data['machine']}; brokers: "
        + ", ".join(f"{k} {v}" for k, v in data["brokers"].items())
        + f"; {data['rounds']} rounds, median (ratio = ours/raw; < 1 is faster for "
        "latency and CPU, > 1 is faster for rates).",
        "",
        "| path | unit | ours | raw client | FastStream | ours/raw | ours/FastStream |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, row in data["paths"].items():
        lines.append(
            f"| {path} | {row['unit']} | {fmt(row.get('ours'))} | {fmt(row.get('raw'))} | "
            f"{fmt(row.get('faststream'))} | {fmt(row.get('ratio'))} | "
            f"{fmt(row.get('ratio_faststream'))} |"
        )
    lines += ["", "Broker start times (s): "
              + ", ".join(f"{k} {v}" for k, v in data["broker_start_s"].items())]
    if data.get("contract"):
        c = data["contract"]
        lines.append(f"Contract suite (`--quick`, {c['selection']}): {c['seconds']} s, "
                     f"exit {c['exit_code']}")
    if data.get("not_measured"):
        lines.append("Not measured (their service is not started by the bench): "
                     + ", ".join(data["not_measured"]))
    lines.append(f"Total bench time: {data['total_s']} s")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from harness.services import select_provider

    t_start = time.perf_counter()
    provider = select_provider(args.provider) if args.provider else select_provider()
    handles: dict[str, Any] = {}
    starts: dict[str, float] = {}
    res = Results()
    try:
        for name in SERVICES:
            t0 = time.perf_counter()
            handles[name] = await asyncio.to_thread(provider.start, name)
            starts[name] = round(time.perf_counter() - t0, 2)
            print(f"{name} {handles[name].version} up in {starts[name]} s", flush=True)
        urls = {name: h.url for name, h in handles.items()}
        for adapter in adapters("event_bridge") if args.event_bridges is None \
                else args.event_bridges:
            print(f"event bridge {adapter}", flush=True)
            await bench_event_bridge(adapter, urls, res, args)
        for adapter in adapters("queue_bridge") if args.queues is None else args.queues:
            print(f"queue bridge {adapter}", flush=True)
            await bench_queue(adapter, urls, res, args)
        for kind in STORE_KINDS:
            for adapter in args.stores if args.stores is not None else adapters(kind):
                print(f"{kind} {adapter}", flush=True)
                await bench_store(kind, adapter, urls, res, args)
        for adapter in ("memory", "nats"):
            print(f"memory per pending invocation, {adapter}", flush=True)
            mem = await pending_memory(adapter, urls, args.pending)
            path = f"{adapter} memory per pending invocation ({args.pending:,} pending)"
            res.add(path, "ours", mem["ours"] / 1024, "KB", "lower")
            if "raw" in mem:
                res.add(path, "raw", mem["raw"] / 1024, "KB", "lower")
            res.add(f"{adapter} memory for {args.pending:,} pending invocations", "ours",
                    mem["ours_total_mb"], "MB", "lower")
    finally:
        for h in handles.values():
            await asyncio.to_thread(h.stop)
    contract = contract_wall_time(args.contract) if args.contract != "none" else None
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "rounds": args.rounds,
        "brokers": {name: h.version for name, h in handles.items()},
        "broker_start_s": starts,
        "paths": res.table(),
        "contract": contract,
        "not_measured": not_measured(),
        "total_s": round(time.perf_counter() - t_start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=0.6,
                        help="seconds per throughput window (and latency cap)")
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--event-bridges", nargs="*", default=None,
                        help="default: every registered one whose broker is started here")
    parser.add_argument("--queues", nargs="*", default=None)
    parser.add_argument("--stores", nargs="*", default=None)
    parser.add_argument("--provider", default=os.environ.get("HARNESS_PROVIDER", "local"))
    parser.add_argument("--contract", default="all",
                        help="adapters whose contract suite (--quick) is timed: all, none, or "
                             "a comma-separated list")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--no-faststream", dest="faststream", action="store_false")
    args = parser.parse_args()
    if args.faststream:
        try:
            import faststream  # noqa: F401
        except ImportError:
            print("FastStream is not installed (pip install -e '.[bench]'): raw only",
                  flush=True)
            args.faststream = False
    data = asyncio.run(run(args))
    write(args.out, data)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
