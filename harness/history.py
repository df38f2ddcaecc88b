"""Operation history recorder and a Jepsen total-queue style checker.

Every message id ends in exactly one class (precedence from top to bottom):

- ``unexpected``: delivered, but never sent, or only sent with outcome ``failed``
- ``duplicated``: sent (ok or unknown) and delivered more than once
- ``delivered_once``: sent ok, delivered exactly once
- ``recovered``: sent with outcome ``unknown``, delivered exactly once
- ``lost``: sent ok, never delivered
- ``indeterminate``: sent with outcome ``unknown``, never delivered (allowed)
- ``failed``: sent failed, never delivered (allowed)

A message sent several times (retries) takes its best outcome: ok > unknown > failed.
Duplicates are counted, never merged. ``acknowledged`` records a consumer's ack of a
delivery; ``effect`` a side effect (e.g. an e-mail sent): effects are checked for
duplicates separately.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, overload

Outcome = Literal["ok", "failed", "unknown"]
Kind = Literal["sent", "acknowledged", "delivered", "effect"]
CLASSES = ("delivered_once", "lost", "duplicated", "unexpected", "recovered",
           "indeterminate", "failed")
_RANK = {"failed": 0, "unknown": 1, "ok": 2}


@dataclass(frozen=True)
class Event:
    """One recorded operation."""

    seq: int
    time: float
    kind: Kind
    msg_id: str
    outcome: Outcome | None = None
    consumer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "kind": self.kind, "msg_id": self.msg_id,
                "outcome": self.outcome, "consumer": self.consumer, "meta": self.meta}


class History:
    """Thread- and task-safe append-only log of sent/acknowledged/delivered/effect events."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._seq = itertools.count()

    def _add(self, kind: Kind, msg_id: object, outcome: Outcome | None = None,
             consumer: str | None = None, meta: dict[str, Any] | None = None) -> Event:
        with self._lock:
            event = Event(next(self._seq), time.monotonic(), kind, str(msg_id), outcome,
                          consumer, meta or {})
            self._events.append(event)
        return event

    def sent(self, msg_id: object, outcome: Outcome = "ok", **meta: Any) -> Event:
        """A publish attempt: ok (confirmed), failed (certainly not sent) or unknown."""
        if outcome not in _RANK:
            raise ValueError(f"outcome must be ok, failed or unknown, not {outcome!r}")
        return self._add("sent", msg_id, outcome, meta=meta)

    def acknowledged(self, msg_id: object, **meta: Any) -> Event:
        """A consumer acknowledged (finished) a delivery."""
        return self._add("acknowledged", msg_id, meta=meta)

    def delivered(self, msg_id: object, consumer: str | None = None, **meta: Any) -> Event:
        """A consumer received the message (every delivery, duplicates included)."""
        return self._add("delivered", msg_id, consumer=consumer, meta=meta)

    def effect(self, msg_id: object, **meta: Any) -> Event:
        """A side effect of handling the message happened."""
        return self._add("effect", msg_id, meta=meta)

    @property
    def events(self) -> list[Event]:
        """A snapshot of the events in sequence order."""
        with self._lock:
            return list(self._events)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def to_list(self) -> list[dict[str, Any]]:
        """The events as JSON-ready dicts."""
        return [e.to_dict() for e in self.events]

    def check(self, **expect: Any) -> Verdict:
        """Classify this history; see check()."""
        return check(self, **expect)


class _ClassCount:
    """A read-only :class:`Verdict` attribute: how many ids fell in the class it is named
    after (``lost = _ClassCount()`` counts ``classes["lost"]``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.cls = name

    @overload
    def __get__(self, verdict: None, owner: type) -> _ClassCount: ...

    @overload
    def __get__(self, verdict: Verdict, owner: type | None = None) -> int: ...

    def __get__(self, verdict: Verdict | None, owner: type | None = None) -> int | _ClassCount:
        return self if verdict is None else verdict.count(self.cls)

    def __set__(self, verdict: Verdict, value: object) -> None:
        raise AttributeError(f"{self.cls} is counted from the classes, not set")


@dataclass
class Verdict:
    """The classification of a history, with counts, rates and expectations."""

    classes: dict[str, list[str]]
    published: int
    published_ok: int
    acknowledged: int
    delivered: int
    delivered_distinct: int
    duplicate_deliveries: int
    unacknowledged: list[str]
    effects: int
    effect_duplicated: list[str]
    allow_duplicates: bool = False
    allow_loss: bool = False
    allow_unexpected: bool = False
    allow_effect_duplicates: bool = False

    def count(self, cls: str) -> int:
        return len(self.classes[cls])

    lost = _ClassCount()
    duplicated = _ClassCount()
    unexpected = _ClassCount()
    recovered = _ClassCount()
    delivered_once = _ClassCount()

    @property
    def lost_rate(self) -> float:
        """Lost over messages sent ok."""
        return self.lost / self.published_ok if self.published_ok else 0.0

    @property
    def duplicate_rate(self) -> float:
        """Duplicated messages over distinct delivered messages."""
        return self.duplicated / self.delivered_distinct if self.delivered_distinct else 0.0

    @property
    def problems(self) -> list[str]:
        """Why the verdict is not ok (empty when ok)."""
        out = []
        if self.lost and not self.allow_loss:
            out.append(f"{self.lost} lost")
        if self.duplicated and not self.allow_duplicates:
            out.append(f"{self.duplicated} duplicated")
        if self.unexpected and not self.allow_unexpected:
            out.append(f"{self.unexpected} unexpected")
        if self.effect_duplicated and not self.allow_effect_duplicates:
            out.append(f"{len(self.effect_duplicated)} with duplicate effects")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (counts, rates and the offending ids)."""
        return {
            "ok": self.ok,
            "published": self.published,
            "published_ok": self.published_ok,
            "acknowledged": self.acknowledged,
            "delivered": self.delivered,
            "delivered_distinct": self.delivered_distinct,
            "duplicate_deliveries": self.duplicate_deliveries,
            **{cls: self.count(cls) for cls in CLASSES},
            "lost_rate": self.lost_rate,
            "duplicate_rate": self.duplicate_rate,
            "unacknowledged": len(self.unacknowledged),
            "effects": self.effects,
            "effect_duplicated": len(self.effect_duplicated),
            "problems": self.problems,
            "ids": {cls: ids for cls, ids in self.classes.items()
                    if cls in ("lost", "duplicated", "unexpected", "recovered") and ids}
            | ({"effect_duplicated": self.effect_duplicated} if self.effect_duplicated else {}),
        }

    def format(self, limit: int = 10) -> str:
        """Readable report listing offending ids (at most limit of each)."""
        head = "OK" if self.ok else "FAILED: " + ", ".join(self.problems)
        lines = [
            head,
            f"published {self.published} (ok {self.published_ok}), delivered {self.delivered} "
            f"({self.delivered_distinct} distinct), acknowledged {self.acknowledged}",
            "  ".join(f"{cls} {self.count(cls)}" for cls in CLASSES),
            f"lost rate {self.lost_rate:.2%}, duplicate rate {self.duplicate_rate:.2%}",
        ]
        listing = [(c, self.classes[c]) for c in ("lost", "duplicated", "unexpected", "recovered")]
        listing.append(("effect_duplicated", self.effect_duplicated))
        for cls, ids in listing:
            if ids:
                more = f" ... (+{len(ids) - limit} more)" if len(ids) > limit else ""
                lines.append(f"  {cls}: {', '.join(ids[:limit])}{more}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def check(history: History | list[Event], *, allow_duplicates: bool = False,
          allow_loss: bool = False, allow_unexpected: bool = False,
          allow_effect_duplicates: bool = False) -> Verdict:
    """Classify every message of a history (see the module docstring)."""
    events = history.events if isinstance(history, History) else list(history)
    best: dict[str, str] = {}
    deliveries: Counter[str] = Counter()
    acks: set[str] = set()
    effects: Counter[str] = Counter()
    order: dict[str, int] = {}
    for e in events:
        order.setdefault(e.msg_id, e.seq)
        if e.kind == "sent":
            assert e.outcome is not None
            if _RANK[e.outcome] > _RANK.get(best.get(e.msg_id, ""), -1):
                best[e.msg_id] = e.outcome
        elif e.kind == "delivered":
            deliveries[e.msg_id] += 1
        elif e.kind == "acknowledged":
            acks.add(e.msg_id)
        elif e.kind == "effect":
            effects[e.msg_id] += 1
    classes: dict[str, list[str]] = {cls: [] for cls in CLASSES}
    for msg_id in sorted(set(best) | set(deliveries), key=lambda m: order[m]):
        outcome, n = best.get(msg_id), deliveries[msg_id]
        if n and outcome in (None, "failed"):
            cls = "unexpected"
        elif n > 1:
            cls = "duplicated"
        elif n == 1:
            cls = "delivered_once" if outcome == "ok" else "recovered"
        else:
            cls = {"ok": "lost", "unknown": "indeterminate", "failed": "failed"}[str(outcome)]
        classes[cls].append(msg_id)
    return Verdict(
        classes=classes,
        published=len(best),
        published_ok=sum(1 for o in best.values() if o == "ok"),
        acknowledged=len(acks),
        delivered=sum(deliveries.values()),
        delivered_distinct=len(deliveries),
        duplicate_deliveries=sum(n - 1 for n in deliveries.values() if n > 1),
        unacknowledged=[m for m in deliveries if m not in acks],
        effects=sum(effects.values()),
        effect_duplicated=[m for m, n in effects.items() if n > 1],
        allow_duplicates=allow_duplicates,
        allow_loss=allow_loss,
        allow_unexpected=allow_unexpected,
        allow_effect_duplicates=allow_effect_duplicates,
    )
