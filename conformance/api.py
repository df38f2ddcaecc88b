"""``conformance.run(...)``: the suite from Python, as ``conformance run`` runs it.

::

    import conformance

    def test_my_bridge_conforms(tmp_path):
        report = conformance.run(adapters=["mypkg.bridge:DESCRIPTOR"], quick=True,
                                 report_dir=tmp_path)
        assert report.exit_code == 0, [f"{r.check}: {r.message}" for r in report.failed()]

The run happens in this process (pytest in-process, like the command line); inside a
harness run that is already going (a test session using the harness plugin) it joins
that run instead of ending it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from conformance.report.model import Report

Suite = Literal["contract", "faults", "deployment", "robustness", "all"]
Provider = Literal["auto", "local", "docker", "external"]


class RunError(RuntimeError):
    """The suite could not run (a usage error: bad adapter, -k, provider...)."""


def run(
    adapters: Sequence[str] = (),
    *,
    suite: Suite = "contract",
    quick: bool = False,
    keyword: str | None = None,
    provider: Provider | None = None,
    workers: int | None = None,
    report_dir: Path | str | None = None,
    allow_missing_services: bool = False,
    baseline: Path | str | None = None,
    pytest_args: Sequence[str] = (),
) -> Report:
    """Run ``suite`` against ``adapters`` (selectors as for ``--adapter``; all when empty).

    Returns the report (what report.json holds; ``report.exit_code`` is the CLI's exit
    code). ``report_dir`` also writes junit.xml, report.json and report.html there
    (compared with the ``baseline`` report.json if given).
    Raises :class:`RunError` for a usage error, naming what was wrong.
    """
    from conformance import cli, plugin
    from conformance.adapters import UsageError, resolve

    args = argparse.Namespace(
        cmd="run",
        adapter=list(adapters),
        suite=suite,
        provider=provider,
        keep_services=False,
        report_dir=Path(report_dir) if report_dir is not None else None,
        allow_missing_services=allow_missing_services,
        baseline=Path(baseline) if baseline is not None else None,
        keyword=keyword,
        quick=quick,
        workers=str(workers) if workers else None,
        verbose=0,
        pytest_args=list(pytest_args),
    )
    if suite not in cli.SUITE_DIRS:
        raise RunError(f"suite {suite!r} is not one of {', '.join(sorted(cli.SUITE_DIRS))}")
    if provider is not None and provider not in cli.PROVIDERS:
        raise RunError(f"provider {provider!r} is not one of {', '.join(cli.PROVIDERS)}")
    try:
        resolve(list(adapters))
    except UsageError as exc:
        raise RunError(str(exc)) from exc
    problem = cli._usage_problem(args)
    if problem:
        raise RunError(problem)
    plugin.LAST_REPORT.clear()
    code = cli.run(args)
    doc = plugin.LAST_REPORT.get("last")
    if doc is None:
        raise RunError(f"the run ended before its report (exit {code}); see the output above")
    return Report.model_validate(doc)
