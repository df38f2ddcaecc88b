"""``conformance run`` / ``conformance list``: a thin front over pytest and our plugin.

Exit codes: 0 every check that ran passed (or is declared unsupported),
1 a check failed, 2 a usage error; stopped by a signal: 128 + its number
(SIGTERM 143, SIGINT 130, SIGHUP 129), after every service of the run is stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import conformance

SUITE_DIRS = {
    "contract": ("event_bridge", "queue_bridge", "stores"),
    "faults": ("faults",),
    "deployment": ("deployment",),
}
SUITE_DIRS["all"] = tuple(d for dirs in SUITE_DIRS.values() for d in dirs)

_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
python_files = test_*.py
junit_suite_name = conformance
junit_family = xunit1
filterwarnings =
    ignore::DeprecationWarning:testcontainers.*
    ignore::pytest.PytestAssertRewriteWarning
"""
EXIT = {0: 0, 1: 1, 2: 1, 3: 1, 4: 2, 5: 0}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"conformance: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="conformance", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run checks against adapters")
    run.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="built-in name (memory, amqp, redis, nats-kv...), kind:name, "
        "module:factory or name=module:factory; repeatable; default: all",
    )
    run.add_argument("--suite", default="all", choices=sorted(SUITE_DIRS))
    run.add_argument("--provider", default=None, help="harness service provider (default: auto)")
    run.add_argument(
        "--report-dir",
        default=None,
        type=Path,
        help="write junit.xml, report.json and report.html here",
    )
    run.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    run.add_argument("--quick", action="store_true", help="scale message counts down")
    run.add_argument("-n", dest="workers", default=None, help="parallel workers (pytest-xdist)")
    run.add_argument("-v", "--verbose", action="count", default=0)
    run.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest arguments"
    )
    lst = sub.add_parser("list", help="list adapters and checks")
    lst.add_argument("--adapter", action="append", default=[], metavar="SELECTOR")
    lst.add_argument("--suite", default="all", choices=sorted(SUITE_DIRS))
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _harness_available() -> bool:
    try:
        return importlib.util.find_spec("harness.pytest_plugin") is not None
    except ImportError:
        return False


def pytest_args(args: argparse.Namespace, ini: Path) -> list[str]:
    """The pytest command line for ``conformance run``."""
    pkg = Path(conformance.__file__).resolve().parent
    checks = pkg / "checks"
    out = [
        "-p",
        "conformance.plugin",
        "-p",
        "no:cacheprovider",
        "-c",
        str(ini),
        "--rootdir",
        str(pkg.parent),
        "--cf-suite",
        args.suite,
    ]
    for sel in args.adapter:
        out += ["--cf-adapter", sel]
    if args.quick:
        out.append("--cf-quick")
    if args.keyword:
        out += ["-k", args.keyword]
    if args.workers:
        out += ["-n", str(args.workers)]
    if args.verbose:
        out.append("-" + "v" * args.verbose)
    harness = _harness_available()
    if not harness:
        out += ["-p", "no:purista_harness"]
    if args.provider:
        if not harness:
            print(
                "conformance: --provider ignored: the harness plugin is not installed",
                file=sys.stderr,
            )
        else:
            out += ["--provider", args.provider]
    if args.report_dir:
        out += [
            "--cf-report-dir",
            str(args.report_dir),
            "--junitxml",
            str(args.report_dir / "junit.xml"),
        ]
    extra = [a for a in args.pytest_args if a != "--"]
    out += extra
    out += [str(checks / d) for d in SUITE_DIRS[args.suite] if (checks / d).is_dir()]
    return out


def run(args: argparse.Namespace) -> int:
    """Run pytest in-process and map its exit code."""
    import pytest

    from .adapters import UsageError, resolve

    try:
        resolve(list(args.adapter))
    except UsageError as exc:
        print(f"conformance: error: {exc}", file=sys.stderr)
        return 2
    if args.report_dir:
        args.report_dir.mkdir(parents=True, exist_ok=True)
    from harness import run as harness_run

    # a run: signals stop every service and exit 128 + signal, a reaper covers SIGKILL,
    # and its temp dir (ini, broker data, check work dirs) goes at the end
    with harness_run.running() as current:
        tmp = current.mkdtemp("conformance-")
        ini = tmp / "pytest.ini"
        ini.write_text(_INI)
        extra = [] if _has_basetemp(args.pytest_args) else ["--basetemp", str(tmp / "pytest")]
        code = int(pytest.main(pytest_args(args, ini) + extra))
    return EXIT.get(code, 1)


def _has_basetemp(extra: list[str]) -> bool:
    return any(a == "--basetemp" or a.startswith("--basetemp=") for a in extra)


def list_cmd(args: argparse.Namespace) -> int:
    """Print the adapters and the checks."""
    from .adapters import UsageError, resolve
    from .marks import all_checks

    try:
        specs = resolve(list(args.adapter))
    except UsageError as exc:
        print(f"conformance: error: {exc}", file=sys.stderr)
        return 2
    checks = all_checks(args.suite)
    if args.json:
        print(
            json.dumps(
                {
                    "adapters": [
                        {
                            "adapter": s.name,
                            "kind": s.kind,
                            "source": s.source,
                            "reference": s.reference,
                            "unavailable": s.unavailable,
                            "capabilities": s.capabilities_dict(),
                        }
                        for s in specs
                    ],
                    "checks": [
                        {
                            "check": c.id,
                            "suite": c.suite,
                            "kinds": list(c.kinds),
                            "needs": list(c.needs),
                            "summary": c.summary,
                        }
                        for c in checks
                    ],
                },
                indent=2,
                default=str,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 180)
    t = Table(title="adapters", title_justify="left")
    for col in ("adapter", "source", "reference", "status"):
        t.add_column(col)
    for s in specs:
        t.add_row(
            s.label,
            s.source,
            s.reference,
            f"[yellow]{s.unavailable}[/]" if s.unavailable else "[green]available[/]",
        )
    console.print(t)
    t = Table(title=f"checks ({len(checks)})", title_justify="left")
    t.add_column("check", no_wrap=True)
    for col in ("suite", "kinds", "needs", "what it proves"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.id, c.suite, ", ".join(c.kinds), ", ".join(c.needs), c.summary)
    console.print(t)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``conformance`` console script."""
    args = _parser().parse_args(argv)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so that --adapter can name modules of this project
    if args.cmd == "run":
        return run(args)
    return list_cmd(args)


if __name__ == "__main__":
    raise SystemExit(main())
