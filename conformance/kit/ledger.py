"""Recording what was sent and what arrived, and judging it.

Checks never assert "a function was called": they record every send and
every delivery in a :class:`Ledger` and judge the history. The verdict
classifies every message as the harness checker does (``harness.history``):
lost (acknowledged but never delivered), duplicated (delivered more than
once), unexpected (delivered but never sent) and recovered (its send raised,
yet it arrived). When ``harness.history`` is importable its checker produces
the verdict; otherwise the same rules run here.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_IDS = 10


@dataclass
class Verdict:
    """Counts per class, with the offending message ids."""

    name: str
    sent: int
    delivered: int
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No message lost, duplicated or unexpected."""
        return not (self.lost or self.duplicated or self.unexpected)

    def to_dict(self) -> dict[str, Any]:
        """Counts and (a few) ids, for report metrics."""
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "recovered": len(self.recovered),
            "lost_ids": self.lost[:MAX_IDS],
            "duplicated_ids": list(self.duplicated)[:MAX_IDS],
            "unexpected_ids": self.unexpected[:MAX_IDS],
        }

    def format(self) -> str:
        """One line: counts and offending ids."""
        parts = [f"{self.name}: sent {self.sent}, delivered {self.delivered}"]
        if self.lost:
            parts.append(f"lost {len(self.lost)} {_ids(self.lost)}")
        if self.duplicated:
            dup = [f"{k}x{v}" for k, v in list(self.duplicated.items())[:MAX_IDS]]
            parts.append(f"duplicated {len(self.duplicated)} [{', '.join(dup)}]")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)} {_ids(self.unexpected)}")
        if self.recovered:
            parts.append(f"recovered {len(self.recovered)}")
        return "; ".join(parts)


def _ids(ids: list[str]) -> str:
    more = f" +{len(ids) - MAX_IDS} more" if len(ids) > MAX_IDS else ""
    return "[" + ", ".join(ids[:MAX_IDS]) + more + "]"


class Ledger:
    """The history of one stream of messages towards one receiver (or one group).

    Thread-safe, so that adapters calling handlers from other threads can record.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._sent: dict[str, bool] = {}
        self._delivered: Counter[str] = Counter()
        self._by: dict[str, list[str]] = {}
        self.order: list[str] = []

    def sent(self, message_id: str, acknowledged: bool = True) -> None:
        """Record a send; ``acknowledged`` is False when the send call raised."""
        with self._lock:
            self._sent[message_id] = acknowledged

    def delivered(self, message_id: str, by: str = "") -> None:
        """Record one delivery of ``message_id`` (to receiver ``by``)."""
        with self._lock:
            self._delivered[message_id] += 1
            self._by.setdefault(message_id, []).append(by)
            self.order.append(message_id)

    def sent_ids(self) -> list[str]:
        """Every id recorded as sent, in order."""
        with self._lock:
            return list(self._sent)

    @property
    def total_delivered(self) -> int:
        """Deliveries, duplicates included."""
        return sum(self._delivered.values())

    @property
    def unique_delivered(self) -> int:
        """Distinct message ids delivered."""
        return len(self._delivered)

    def count(self, message_id: str) -> int:
        """How often ``message_id`` was delivered."""
        return self._delivered.get(message_id, 0)

    def receivers(self) -> Counter[str]:
        """Deliveries per receiver."""
        with self._lock:
            return Counter(r for rs in self._by.values() for r in rs)

    def all_arrived(self) -> bool:
        """Every acknowledged send was delivered at least once."""
        with self._lock:
            return all(mid in self._delivered for mid, ok in self._sent.items() if ok)

    def verdict(self) -> Verdict:
        """Classify the history (via ``harness.history`` when available)."""
        with self._lock:
            sent = dict(self._sent)
            delivered = Counter(self._delivered)
        external = _harness_verdict(self.name, sent, delivered)
        if external is not None:
            return external
        return Verdict(
            name=self.name,
            sent=len(sent),
            delivered=sum(delivered.values()),
            lost=[m for m, ok in sent.items() if ok and m not in delivered],
            duplicated={m: n for m, n in delivered.items() if n > 1},
            unexpected=[m for m in delivered if m not in sent],
            recovered=[m for m, ok in sent.items() if not ok and m in delivered],
        )


def _harness_verdict(name: str, sent: dict[str, bool], delivered: Counter[str]) -> Verdict | None:
    """Judge with the harness checker (``harness.history``) when it is importable."""
    try:
        from harness.history import History, check
    except ImportError:
        return None
    hist = History()
    for mid, ok in sent.items():
        hist.sent(mid, "ok" if ok else "unknown")
    for mid, n in delivered.items():
        for _ in range(n):
            hist.delivered(mid)
    v = check(hist)
    return Verdict(
        name=name,
        sent=len(sent),
        delivered=sum(delivered.values()),
        lost=list(v.classes["lost"]),
        duplicated={m: delivered[m] for m in v.classes["duplicated"]},
        unexpected=list(v.classes["unexpected"]),
        recovered=list(v.classes["recovered"]),
    )


def expect_exactly_once(*ledgers: Ledger) -> list[Verdict]:
    """Assert every acknowledged message arrived exactly once at each ledger."""
    verdicts = [ledger.verdict() for ledger in ledgers]
    bad = [v for v in verdicts if not v.ok]
    if bad:
        raise AssertionError(" | ".join(v.format() for v in bad))
    return verdicts


def expect_at_least_once(*ledgers: Ledger) -> list[Verdict]:
    """Assert nothing was lost or unexpected; duplicates are counted, not failed."""
    verdicts = [ledger.verdict() for ledger in ledgers]
    bad = [v for v in verdicts if v.lost or v.unexpected]
    if bad:
        raise AssertionError(" | ".join(v.format() for v in bad))
    return verdicts
