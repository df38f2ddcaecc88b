"""The in-process patterns (monolith, serverless) in an OS process of their own, exporting
their spans to a file.

A tracer provider is global to a process: installed in the test process it would trace
every later check of the run. So the monolith and serverless checks run their pattern
here instead (``python -m conformance.checks.deployment.own_process PATTERN RESULT``;
serverless: its URLs as JSON in ``DEPLOY_URLS``, its prefix in ``DEPLOY_PREFIX``), with
the deployment's own file exporter (``OTEL_SPANS_FILE`` in its environment, as a
deployed process has it), and write the trace as JSON to RESULT;
:func:`run_own_process` starts it and judges the telemetry item from the spans.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

from conformance.adapters import subprocess_env
from conformance.checks.deployment.checklist import judge_telemetry
from conformance.checks.deployment.scenario import Trace, run_monolith, run_serverless
from harness import run as harness_run
from reference_services.services import ALL_SERVICES


def _dump(trace: Trace) -> dict[str, object]:
    return {
        "commands": trace.commands,
        "events": dict(trace.events),
        "state": trace.state,
        "dead_letters": trace.dead_letters,
        "duration_s": trace.duration_s,
        "checklist": trace.checklist.items,
    }


def _load(pattern: str, data: dict[str, object]) -> Trace:
    trace = Trace(pattern)
    trace.commands = [tuple(c) for c in data["commands"]]  # type: ignore[attr-defined, misc]
    trace.events = Counter(data["events"])  # type: ignore[arg-type]
    trace.state = data["state"]  # type: ignore[assignment]
    trace.dead_letters = [tuple(d) for d in data["dead_letters"]]  # type: ignore[attr-defined, misc]
    trace.duration_s = float(data["duration_s"])  # type: ignore[arg-type]
    trace.checklist.items = {
        k: tuple(v)  # type: ignore[misc]
        for k, v in data["checklist"].items()  # type: ignore[attr-defined]
    }
    return trace


def span_env(spans: Path, pattern: str) -> dict[str, str]:
    """The child's telemetry variables: its span file and service name."""
    return {"OTEL_SPANS_FILE": str(spans), "OTEL_SERVICE_NAME": pattern}


async def run_own_process(
    pattern: str,
    workdir: Path,
    urls: dict[str, str] | None = None,
    prefix: str = "",
    timeout_s: float = 180.0,
) -> Trace:
    """Run ``pattern`` (monolith or serverless, on ``urls`` and ``prefix``) in a child
    process with a span file; its trace, with the telemetry item judged from the spans
    it exported."""
    spans, result = workdir / f"spans-{pattern}.jsonl", workdir / f"{pattern}.json"
    log = (workdir / f"{pattern}.log").open("ab")
    env = {
        **span_env(spans, pattern),
        "DEPLOY_URLS": json.dumps(urls or {}),
        "DEPLOY_PREFIX": prefix,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conformance.checks.deployment.own_process",
        pattern,
        str(result),
        env=harness_run.child_env(subprocess_env(env)),
        stdout=log,
        stderr=log,
        preexec_fn=harness_run.child_preexec(),
    )
    log.close()
    harness_run.current().track(proc.pid)
    try:
        code = await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"the {pattern} process did not end in {timeout_s}s") from None
    if code != 0 or not result.exists():
        raise AssertionError(f"the {pattern} process exited {code}; see {workdir / pattern}.log")
    trace = _load(pattern, json.loads(result.read_text(encoding="utf-8")))
    judge_telemetry(trace.checklist, [spans], ALL_SERVICES)
    return trace


def main(argv: list[str]) -> int:
    """``PATTERN RESULT``: export spans as the environment says, run the pattern, write its
    trace to RESULT."""
    import os

    from reference_services.deploy.telemetry_file import configure

    pattern, result = argv
    stop = configure(os.environ)
    try:
        if pattern == "monolith":
            trace = asyncio.run(run_monolith())
        elif pattern == "serverless":
            urls = json.loads(os.environ["DEPLOY_URLS"])
            workdir = Path(result).parent
            trace = asyncio.run(run_serverless(urls, os.environ["DEPLOY_PREFIX"], workdir))
        else:
            raise SystemExit(f"unknown pattern {pattern!r}: monolith or serverless")
    finally:
        if stop is not None:
            stop()
    Path(result).write_text(json.dumps(_dump(trace)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
