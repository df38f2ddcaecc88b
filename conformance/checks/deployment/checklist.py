"""The seed's production checklist, judged per deployment pattern from what the run showed.

Each pattern run gathers evidence (exit codes after a SIGTERM in the middle of a job,
health answers of every process, the spans the processes exported, the normalised trace,
the services it deployed) and :class:`Checklist` turns it into one verdict per item:
``ok``, ``failed``, ``not checked`` (with the reason: evidence this run could not
gather) or ``n/a`` (with the reason the item cannot apply to the pattern, e.g. broker
connectivity where there is no broker). A failed item fails the
pattern's check; the report draws a pattern x item table from the ``checklist`` metric.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ITEMS: dict[str, str] = {
    "drain": "graceful shutdown: SIGTERM in the middle of a job lets it finish, exit 0",
    "health": "health exposed: /healthz and /readyz answer 200 on every process",
    "broker_health": "health follows broker connectivity: not ready while the broker is "
    "down, ready again once it is back",
    "telemetry": "OpenTelemetry spans exported, one trace crossing services",
    "secrets": "secrets read from a secret store, absent from the environment",
    "retry_policy": "a retry policy declared for every subscription and queue worker",
    "idempotency": "command side effects idempotent: repeated commands change nothing",
}
OK, FAILED, NOT_CHECKED, NOT_APPLICABLE = "ok", "failed", "not checked", "n/a"


class Checklist:
    """Verdicts of one pattern run, item by item."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.items: dict[str, tuple[str, str]] = {}

    def record(self, item: str, ok: bool, detail: str) -> None:
        """The verdict of ``item`` from evidence."""
        if item not in ITEMS:
            raise ValueError(f"unknown checklist item {item!r}; known: {sorted(ITEMS)}")
        self.items[item] = (OK if ok else FAILED, detail)

    def not_checked(self, item: str, why: str) -> None:
        """An item this pattern gives no evidence for, with the reason."""
        self.items[item] = (NOT_CHECKED, why)

    def not_applicable(self, item: str, why: str) -> None:
        """An item that cannot apply to this pattern, with the reason."""
        self.items[item] = (NOT_APPLICABLE, why)

    def failures(self) -> list[str]:
        """``item: detail`` of each failed item."""
        return [f"{k}: {d}" for k, (v, d) in self.items.items() if v == FAILED]

    def metric(self) -> dict[str, str]:
        """The report's form: item -> ``ok: ...`` / ``failed: ...`` / ``not checked: ...`` /
        ``n/a: ...``."""
        return {k: f"{v}: {d}" for k, (v, d) in sorted(self.items.items())}


def judge_retry_policies(checklist: Checklist, services: Iterable[Any]) -> None:
    """Every subscription and queue worker of the deployed services names its own policy."""
    missing, count = [], 0
    for svc in services:
        for name, sub in svc.subscriptions.items():
            count += 1
            if not getattr(sub, "failure_declared", False):
                missing.append(f"{svc.name}.{name}")
        for queue, worker in svc.queue_workers.items():
            count += 1
            if not getattr(worker, "retry_declared", False):
                missing.append(f"{svc.name} worker of {queue}")
    if missing:
        checklist.record("retry_policy", False, f"no retry policy declared: {missing}")
    else:
        checklist.record("retry_policy", True, f"{count} subscription(s)/worker(s) declare one")


def judge_idempotency(checklist: Checklist, normal: Mapping[str, Any]) -> None:
    """The scenario repeats a sign-up and an invoice request, and its events may be
    redelivered: one user, one invoice job, one welcome mail per user."""
    commands = {label: (status, body) for label, status, body in normal["commands"]}
    problems = []
    if commands.get("signUp ada again", (None,))[0] != 409:
        problems.append(f"a repeated sign-up answered {commands.get('signUp ada again')}")
    first, again = commands.get("invoice i1"), commands.get("invoice i1 again")
    if first is None or again is None or first[1] != again[1]:
        problems.append(f"a repeated invoice request gave another job: {first} then {again}")
    welcome = [e for e in normal["events"] if e.startswith("welcomeEmailSent")]
    sent = [k for k in normal["state"] if k.startswith("email:sent:")]
    if len(welcome) != len(sent):
        problems.append(f"{len(welcome)} welcome e-mail event(s) for {len(sent)} mail(s) sent")
    checklist.record(
        "idempotency",
        not problems,
        "; ".join(problems)
        or "repeated sign-up 409, repeated invoice the same job, one welcome mail per user",
    )


@dataclass
class DrainProbe:
    """What the drain probe saw: the invoice it stopped the processes on, whether it was
    issued anyway, and why the probe could not show a drain (empty when it could)."""

    invoice: str
    finished: bool = False
    inconclusive: str = ""


def judge_drain(checklist: Checklist, exits: Mapping[str, int | None], probe: DrainProbe) -> None:
    """SIGTERM came while the probe's job ran: it must have finished and every process
    exited 0; a probe that could not time its SIGTERM fails."""
    bad = {label: code for label, code in exits.items() if code != 0}
    problems = []
    if probe.inconclusive:
        problems.append(f"no drain shown: {probe.inconclusive}")
    elif not probe.finished:
        problems.append(f"the job {probe.invoice} running at SIGTERM did not finish")
    if bad:
        problems.append(f"exit codes after SIGTERM {bad}")
    checklist.record(
        "drain",
        not problems,
        "; ".join(problems)
        or f"{probe.invoice} finished after SIGTERM, {len(exits)} process(es) exit 0",
    )


def judge_health(checklist: Checklist, answers: Mapping[str, Mapping[str, int | str]]) -> None:
    """Every process answered 200 on both probe paths."""
    if not answers:
        checklist.record("health", False, "no process exposes a health port")
        return
    bad = {label: a for label, a in answers.items() if set(a.values()) != {200}}
    checklist.record(
        "health",
        not bad,
        f"not 200: {bad}"
        if bad
        else f"{len(answers)} process(es) or function(s): /healthz, /readyz 200",
    )


def spans_by_trace(files: Iterable[Path], services: Iterable[str]) -> dict[str, set[str]]:
    """trace id -> the services whose handlers have spans in it (from exported span files)."""
    names = list(services)
    out: dict[str, set[str]] = {}
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            span = json.loads(line)
            trace_id = span.get("context", {}).get("trace_id")
            kind = span.get("name", "").split(" ", 1)
            if not trace_id or len(kind) != 2 or kind[0] not in ("command", "subscription"):
                continue
            service = kind[1].split(".", 1)[0]
            if service in names:
                out.setdefault(trace_id, set()).add(service)
    return out


def judge_telemetry(checklist: Checklist, files: list[Path], services: Iterable[str]) -> None:
    """Spans were exported, and one trace holds handler spans of two services or more."""
    traces = spans_by_trace(files, services)
    crossing = {t: s for t, s in traces.items() if len(s) >= 2}
    if not traces:
        checklist.record("telemetry", False, f"no handler spans exported into {len(files)} file(s)")
    elif not crossing:
        checklist.record("telemetry", False, f"{len(traces)} trace(s), none crossing services")
    else:
        widest = max(crossing.values(), key=len)
        checklist.record(
            "telemetry",
            True,
            f"{len(traces)} trace(s) exported; {len(crossing)} cross services "
            f"(widest: {sorted(widest)})",
        )


def judge_secrets(
    checklist: Checklist,
    leaks: Mapping[str, bool],
    state: Mapping[str, Any],
    places: str = "the environment",
) -> None:
    """The invoice was issued (billing reads its gateway token from the secret store and
    refuses without it) and no process shows the token in ``places`` (its environment; a
    container's environment, labels or logs)."""
    problems = [f"the gateway token is in {places} of {k}" for k, v in leaks.items() if v]
    invoice = state.get("invoice:i1")
    if not (isinstance(invoice, dict) and invoice.get("status") == "issued"):
        problems.append("invoice i1 was not issued: the token was not read from the store")
    checklist.record(
        "secrets",
        not problems,
        "; ".join(problems)
        or f"token read from the secret store; absent from {places} of {len(leaks)} process(es)",
    )


def judge_broker_health(
    checklist: Checklist,
    broker: str,
    down: Mapping[str, Mapping[str, int | str]],
    back: Mapping[str, Mapping[str, int | str]],
) -> None:
    """While ``broker`` was stopped every process's /readyz left 200 (``down``: the first
    answers that did, or the last ones seen), and once it ran again every one came back to
    200 (``back``)."""
    stayed = {label: a for label, a in down.items() if a.get("/readyz") == 200}
    stuck = {label: a for label, a in back.items() if a.get("/readyz") != 200}
    problems = []
    if not down:
        problems.append("no process exposes a health port")
    if stayed:
        problems.append(f"/readyz stayed 200 with {broker} stopped: {sorted(stayed)}")
    if stuck:
        problems.append(f"not ready again after {broker} came back: {stuck}")
    checklist.record(
        "broker_health",
        not problems,
        "; ".join(problems)
        or f"{len(down)} process(es) or function(s): /readyz not ready with {broker} stopped, "
        "200 again after its restart",
    )
