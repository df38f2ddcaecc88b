"""The history checker: one test per class, concurrency, and counts that always add up."""

from __future__ import annotations

import asyncio
import json
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.history import CLASSES, History, check


def _classes_of(history: History) -> dict[str, list[str]]:
    return {cls: ids for cls, ids in check(history).classes.items() if ids}


def test_delivered_once() -> None:
    h = History()
    h.sent("a")
    h.delivered("a", consumer="c1")
    h.acknowledged("a")
    v = check(h)
    assert _classes_of(h) == {"delivered_once": ["a"]}
    assert v.ok and v.to_dict()["acknowledged"] == 1 and v.unacknowledged == []


def test_lost() -> None:
    h = History()
    h.sent("a")
    h.sent("b")
    h.delivered("b")
    v = check(h)
    assert v.classes["lost"] == ["a"] and v.lost == 1 and v.lost_rate == 0.5
    assert not v.ok and "1 lost" in v.problems
    assert check(h, allow_loss=True).ok


def test_duplicated_is_counted_never_merged() -> None:
    h = History()
    h.sent("a")
    for _ in range(3):
        h.delivered("a")
    v = check(h)
    assert v.classes["duplicated"] == ["a"]
    assert v.delivered == 3 and v.delivered_distinct == 1 and v.duplicate_deliveries == 2
    assert not v.ok and check(h, allow_duplicates=True).ok


def test_unexpected_never_sent_or_sent_failed() -> None:
    h = History()
    h.delivered("ghost")
    h.sent("f", outcome="failed")
    h.delivered("f")
    v = check(h)
    assert v.classes["unexpected"] == ["ghost", "f"]
    assert not check(h, allow_duplicates=True, allow_loss=True).ok


def test_recovered_unknown_outcome_seen_later() -> None:
    h = History()
    h.sent("u", outcome="unknown")
    h.delivered("u")
    h.sent("v", outcome="unknown")
    v = check(h)
    assert v.classes["recovered"] == ["u"] and v.classes["indeterminate"] == ["v"]
    assert v.ok  # neither is a violation


def test_failed_and_never_delivered_is_fine() -> None:
    h = History()
    h.sent("f", outcome="failed")
    v = check(h)
    assert v.classes["failed"] == ["f"] and v.ok and v.published_ok == 0


def test_retry_takes_the_best_outcome() -> None:
    h = History()
    h.sent("r", outcome="failed")
    h.sent("r", outcome="unknown")
    h.sent("r", outcome="ok")
    h.delivered("r")
    assert _classes_of(h) == {"delivered_once": ["r"]}


def test_effect_duplicates_are_reported() -> None:
    h = History()
    h.sent("e")
    h.delivered("e")
    h.delivered("e")
    h.effect("e", kind="email")
    h.effect("e", kind="email")
    v = check(h, allow_duplicates=True)
    assert v.effect_duplicated == ["e"] and not v.ok
    assert check(h, allow_duplicates=True, allow_effect_duplicates=True).ok


def test_to_dict_is_json_and_format_lists_offenders_truncated() -> None:
    h = History()
    for i in range(25):
        h.sent(f"m{i}")
    h.delivered("m0")
    v = check(h)
    data = json.loads(json.dumps(v.to_dict()))
    for key in ("published", "acknowledged", "delivered", "lost", "duplicated", "unexpected",
                "recovered"):
        assert key in data
    assert data["lost"] == 24 and data["ids"]["lost"][0] == "m1"
    text = v.format(limit=5)
    assert text.startswith("FAILED: 24 lost")
    assert "lost: m1, m2, m3, m4, m5 ... (+19 more)" in text
    assert "OK" in check(History()).format()


def test_events_have_sequence_numbers_and_monotonic_times() -> None:
    h = History()
    h.sent(1, outcome="ok", size=3)
    h.delivered(1, consumer="c")
    events = h.events
    assert [e.seq for e in events] == [0, 1]
    assert events[0].time <= events[1].time and events[0].meta == {"size": 3}
    assert events[0].msg_id == "1" and events[1].consumer == "c"
    assert h.to_list()[1]["kind"] == "delivered"


def test_many_threads_and_tasks_record_safely() -> None:
    h = History()

    def worker(t: int) -> None:
        for i in range(500):
            h.sent(f"{t}-{i}")
            h.delivered(f"{t}-{i}")

    async def tasks() -> None:
        async def one(i: int) -> None:
            h.sent(f"task-{i}")
            await asyncio.sleep(0)
            h.delivered(f"task-{i}")

        await asyncio.gather(*(one(i) for i in range(500)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    v = check(h)
    assert len(h) == 2 * 4500 and sorted(e.seq for e in h.events) == list(range(9000))
    assert v.delivered_once == 4500 and v.ok


ids = st.sampled_from([f"m{i}" for i in range(12)])
ops = st.one_of(
    st.tuples(st.just("sent"), ids, st.sampled_from(["ok", "failed", "unknown"])),
    st.tuples(st.just("delivered"), ids, st.none()),
    st.tuples(st.just("acknowledged"), ids, st.none()),
    st.tuples(st.just("effect"), ids, st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=60))
def test_counts_of_any_history_add_up(operations: list[tuple[str, str, str | None]]) -> None:
    h = History()
    for kind, msg_id, outcome in operations:
        if kind == "sent":
            h.sent(msg_id, outcome=outcome)  # type: ignore[arg-type]
        else:
            getattr(h, kind)(msg_id)
    v = check(h)
    sent = {m for k, m, _ in operations if k == "sent"}
    delivered = [m for k, m, _ in operations if k == "delivered"]
    every = sent | set(delivered)
    classified = [m for cls in CLASSES for m in v.classes[cls]]
    assert sorted(classified) == sorted(every)  # each message in exactly one class
    assert sum(v.count(c) for c in CLASSES) == len(every)
    assert v.published == len(sent)
    assert v.delivered == len(delivered)
    assert v.delivered_distinct == len(set(delivered))
    assert v.delivered == v.delivered_distinct + v.duplicate_deliveries
    seen_sent = v.delivered_once + v.recovered + v.duplicated
    assert seen_sent + v.unexpected == v.delivered_distinct
    assert v.lost + v.delivered_once <= v.published_ok <= v.published
    assert v.ok == (not v.lost and not v.duplicated and not v.unexpected
                    and not v.effect_duplicated)
    assert 0.0 <= v.lost_rate <= 1.0 and 0.0 <= v.duplicate_rate <= 1.0
