"""One validation rule and one life cycle for every queue bridge.

Bad arguments are a 400 naming the argument, and nothing is enqueued;
``idempotency_key=""`` is bad input (not "no key", not a key). Operations
before ``start`` and after ``destroy`` fail with the same 503 error type;
``start`` and ``destroy`` are idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from reference_services.runtime.errors import PuristaError

QB = ("queue_bridge",)


async def _rejected(call: Awaitable[Any], status: int, names: str | None = None) -> PuristaError:
    """Await ``call``: it must raise a PuristaError with ``status``, naming ``names`` (as a
    whole word: an error about some other field that merely contains the name does not
    name it)."""
    try:
        result = await call
    except PuristaError as exc:
        assert exc.status == status, f"status {exc.status} ({exc!r}), expected {status}"
        if names is not None:
            word = rf"(?<![A-Za-z0-9_]){re.escape(names)}(?![A-Za-z0-9_])"
            assert re.search(word, str(exc)), f"error {str(exc)!r} does not name {names!r}"
        return exc
    raise AssertionError(f"accepted (returned {result!r}), expected a {status} error")


@check("queue_bridge.validation.idempotency_key", kinds=QB)
async def test_idempotency_key_rule(aut: AdapterUnderTest) -> None:
    """idempotency_key must be None or a non-empty string: "" and 42 are a 400, nothing queued."""
    q = await aut.new()
    for bad in ("", 42):
        call = q.enqueue("idem-rule", {"x": 1}, idempotency_key=bad)
        await _rejected(call, 400, "idempotency_key")
    assert await q.lease_next("idem-rule", 10) == [], "a rejected enqueue queued a job"
    first = await q.enqueue("idem-rule", {"x": 1}, idempotency_key="k")
    assert await q.enqueue("idem-rule", {"x": 2}, idempotency_key="k") == first


@check("queue_bridge.validation.arguments", kinds=QB)
async def test_bad_arguments(aut: AdapterUnderTest) -> None:
    """Each bad argument is a 400 naming it; every queue-named operation rejects an empty name."""
    q = await aut.new()
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("queue", lambda: q.enqueue("", 1)),
        ("delay_ms", lambda: q.enqueue("v", 1, delay_ms=-1)),
        ("max_attempts", lambda: q.enqueue("v", 1, max_attempts=0)),
        ("priority", lambda: q.enqueue("v", 1, priority="high")),
        ("lease_ttl_ms", lambda: q.enqueue("v", 1, lease_ttl_ms=0)),
        ("payload", lambda: q.enqueue("v", {1, 2})),
        ("parameter", lambda: q.enqueue("v", 1, float("nan"))),
        ("batch", lambda: q.lease_next("v", 0)),
        ("queue", lambda: q.lease_next("", 1)),
        ("queue", lambda: q.peek_dead_letter("")),
        ("queue", lambda: q.redrive_dead_letter("")),
        ("queue", lambda: q.purge_dead_letter("")),
        ("queue", lambda: q.inspect_leases("")),
        ("queue", lambda: q.metrics("")),
    ]
    for names, call in cases:
        await _rejected(call(), 400, names)
    assert await q.lease_next("v", 10) == [], "a rejected enqueue queued a job"


@check("queue_bridge.lifecycle.not_running", kinds=QB)
async def test_not_running(aut: AdapterUnderTest) -> None:
    """Before start and after destroy: the same 503 error type, whose message says which (not
    started / destroyed); start/destroy are idempotent."""
    q = aut.build()
    before = await _rejected(q.enqueue("life", 1), 503)
    await _rejected(q.lease_next("life", 1), 503)
    await _rejected(q.metrics("life"), 503)
    await q.start()
    await q.start()
    job_id = await q.enqueue("life", 1)
    assert job_id, "no job id after a second start"
    await aut.destroy(q)
    await q.destroy()
    after = await _rejected(q.enqueue("life", 2), 503)
    await _rejected(q.lease_next("life", 1), 503)
    await _rejected(q.metrics("life"), 503)
    assert type(before) is type(after), (
        f"before start {type(before).__name__}, after destroy {type(after).__name__}"
    )
    assert "start" in str(before).lower(), f"the 503 before start does not say so: {before}"
    assert "destroy" in str(after).lower(), f"the 503 after destroy does not say so: {after}"
