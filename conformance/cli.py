"""``conformance run`` / ``conformance list``: a thin front over pytest and our plugin.

Exit codes (decided in :mod:`conformance.report.verdict`): 0 every selected adapter was
tested and every check that ran passed (or is declared unsupported), 1 a check
failed, 2 a usage error (including a selection that matches no check), 3 not
tested (a backing service could not be provided; ``--allow-missing-services``
reports it and exits 0); stopped by a signal: 128 + its number (SIGTERM 143,
SIGINT 130, SIGHUP 129), after every service of the run is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import conformance
from conformance.report.verdict import EXIT_FAILED, EXIT_USAGE, Verdict
from reference_services.runtime.redact import redact_text

SUITE_DIRS = {
    "contract": ("event_bridge", "queue_bridge", "stores"),
    "faults": ("faults",),
    "deployment": ("deployment",),
    "robustness": ("robustness",),
}
SUITE_DIRS["all"] = tuple(d for dirs in SUITE_DIRS.values() for d in dirs)

#: the pytest settings of a run (shipped; the header names it, not a temporary file)
RUN_INI = Path(__file__).resolve().parent / "run.ini"
PROVIDERS = ("auto", "local", "docker", "external")
DEFAULT_REPORT_DIR = Path("reports/conformance")
DEFAULT_MERGE_DIR = Path("reports/merged")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"conformance: error: {message}", file=sys.stderr)
        raise SystemExit(2)


EXIT_CODES = """exit codes:
  0    every selected adapter was tested; every check that ran passed (or is declared
       unsupported); adapters of a broad --adapter value that -k kept no check of are
       named as not tested
  1    a check failed
  2    usage error: bad option, adapter, provider, -k, or a selection matching no check
  3    not tested: a backing service could not be provided (--allow-missing-services: 0)
  128+N  stopped by signal N (SIGINT 130, SIGTERM 143) after every service is stopped"""

RUN_EXAMPLES = """examples:
  conformance run --suite contract --quick            every built-in adapter, fast
  conformance run --adapter memory -n 2               in-memory adapters, 2 workers
  conformance run --adapter event_bridge:amqp --provider docker
  conformance run --adapter mypkg.bridge:DESCRIPTOR   your own adapter
  conformance run -k "event_bridge and timeout" --baseline old/report.json
  conformance run --adapter nats -- -x --maxfail 3    more pytest arguments after --"""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; appends each option's default where one matters."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        if action.option_strings and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="conformance",
        description=__doc__.splitlines()[0],
        epilog=EXIT_CODES + "\n\nsee `conformance run --help` for examples",
        formatter_class=_Help,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{run,list,merge}")
    run = sub.add_parser(
        "run",
        help="run checks against adapters",
        description="Run the conformance checks of a suite against adapters and write "
        "junit.xml, report.json and report.html.",
        epilog=RUN_EXAMPLES + "\n\n" + EXIT_CODES,
        formatter_class=_Help,
    )
    run.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="built-in name (memory, amqp, redis, nats-kv...), kind:name, "
        "module:factory or name=module:factory; repeatable; default: all",
    )
    run.add_argument(
        "--suite",
        default="all",
        choices=sorted(SUITE_DIRS),
        help="which checks: contract (the behaviour every adapter owes; the quickest), "
        "faults, deployment, robustness, or all of them (slow)",
    )
    run.add_argument(
        "--provider",
        default=None,
        choices=PROVIDERS,
        help="where brokers come from (default: $HARNESS_PROVIDER or auto)",
    )
    run.add_argument(
        "--keep-services",
        action="store_true",
        help="leave the brokers running at the end (stop them with `harness down`)",
    )
    run.add_argument(
        "--report-dir",
        default=DEFAULT_REPORT_DIR,
        type=Path,
        help=f"write junit.xml, report.json and report.html here (default {DEFAULT_REPORT_DIR})",
    )
    run.add_argument(
        "--allow-missing-services",
        action="store_true",
        help="run without the adapters whose broker cannot be provided: exit 0, and the "
        "report lists them as not tested (default: exit 3)",
    )
    run.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="OLD/report.json",
        help="compare with a previous run in report.html: new failures, fixed checks, "
        "changed figures",
    )
    run.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    run.add_argument("--quick", action="store_true", help="scale message counts down")
    run.add_argument(
        "-n",
        dest="workers",
        default=None,
        metavar="N|auto",
        help="parallel workers (pytest-xdist; in the [conformance] extra); default: none",
    )
    run.add_argument(
        "--progress",
        default="auto",
        choices=("auto", "rich", "plain"),
        help="while checks run: a live panel (rich) or plain lines; auto: the panel on a "
        "terminal, plain lines in a pipe, under CI (CI set), with -v or -s",
    )
    run.add_argument("-v", "--verbose", action="count", default=0, help="more pytest output")
    run.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest arguments"
    )
    mrg = sub.add_parser(
        "merge",
        formatter_class=_Help,
        epilog="example:\n  conformance merge jobs/*/report.json --report-dir reports/all"
        "\n\nexits with the merged verdict's code (0, 1 or 3; 2 if the inputs clash)",
        help="join per-job report.json files into one report (one matrix across jobs)",
        description="Join the report.json files of disjoint runs (e.g. one CI job per "
        "adapter) into the report one run over all of them gives; writes report.json, "
        "report.html and junit.xml, and exits with the merged verdict's code.",
    )
    mrg.add_argument("reports", nargs="+", type=Path, metavar="REPORT.json")
    mrg.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="OLD/report.json",
        help="compare the merged report.html with a previous report.json",
    )
    mrg.add_argument(
        "--report-dir",
        default=DEFAULT_MERGE_DIR,
        type=Path,
        help=f"where the merged reports go (default {DEFAULT_MERGE_DIR})",
    )
    lst = sub.add_parser("list", help="list adapters and checks", formatter_class=_Help)
    lst.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="as for run; default: all",
    )
    lst.add_argument("--suite", default="all", choices=sorted(SUITE_DIRS), help="which checks")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("purista-conformance")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


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
    if args.allow_missing_services:
        out.append("--cf-allow-missing-services")
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
    if getattr(args, "keep_services", False) and harness:
        out.append("--keep-services")
    if getattr(args, "progress", "auto") != "auto":
        out += ["--cf-progress", args.progress]
    if args.report_dir:
        out += ["--cf-report-dir", str(args.report_dir)]  # junit.xml too (report.junit)
    if getattr(args, "baseline", None):
        out += ["--cf-baseline", str(args.baseline)]
    extra = [a for a in args.pytest_args if a != "--"]
    out += extra
    out += [str(checks / d) for d in SUITE_DIRS[args.suite] if (checks / d).is_dir()]
    return out


def _usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options pytest would otherwise reject (or None)."""
    env_provider = os.environ.get("HARNESS_PROVIDER", "").strip().lower()
    if args.provider is None and env_provider and env_provider not in PROVIDERS:
        return f"HARNESS_PROVIDER={env_provider!r} is not one of {', '.join(PROVIDERS)}"
    if args.keyword:
        from _pytest.mark.expression import Expression

        try:
            Expression.compile(args.keyword)
        except Exception as exc:  # SyntaxError in pytest 9, ParseError before
            return f"-k {args.keyword!r} is not a valid expression: {exc}"
    if getattr(args, "baseline", None):
        from conformance.report import load_baseline

        try:
            load_baseline(args.baseline)
        except ValueError as exc:
            return f"--baseline: {exc}"
    if args.workers and not importlib.util.find_spec("xdist"):
        return "-n needs pytest-xdist (pip install pytest-xdist)"
    return None


class _Redacting:
    """A text stream that masks URL passwords in everything written through it."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def _redacted_output() -> Iterator[None]:
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Redacting(out), _Redacting(err)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def _redact_file(path: Path) -> None:
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        clean = redact_text(text)
        if clean != text:
            path.write_text(clean, encoding="utf-8")


def _print_verdict(verdict: Verdict, report_dir: Path | None) -> None:
    print(f"conformance: {verdict.status} (exit {verdict.code}): {verdict.reason}", file=sys.stderr)
    for label, why in sorted(verdict.not_tested.items()):
        print(f"conformance: not tested: {label}: {why}", file=sys.stderr)
    if report_dir is not None:
        print(f"conformance: reports in {report_dir}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run pytest in-process; the exit code is the plugin's verdict (conformance.report.verdict)."""
    import pytest

    from conformance import plugin
    from conformance.adapters import UsageError, resolve

    try:
        resolve(list(args.adapter))
    except UsageError as exc:
        print(f"conformance: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    problem = _usage_problem(args)
    if problem:
        print(f"conformance: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.report_dir:
        args.report_dir.mkdir(parents=True, exist_ok=True)
    plugin.LAST_VERDICT.clear()
    from harness import run as harness_run

    # a run: signals stop every service and exit 128 + signal, a reaper covers SIGKILL,
    # and its temp dir (broker data, check work dirs) goes at the end
    # called from Python inside a run already going (conformance.run in a test session):
    # join it rather than end it
    joined = harness_run.current().begun
    outer = contextlib.nullcontext(harness_run.current()) if joined else harness_run.running()
    with outer as current, _redacted_output():
        tmp = current.mkdtemp("conformance-")
        # Hypothesis' example database: not a .hypothesis dir in the user's cwd
        os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(tmp / "hypothesis"))
        extra = [] if _has_basetemp(args.pytest_args) else ["--basetemp", str(tmp / "pytest")]
        code = int(pytest.main(pytest_args(args, RUN_INI) + extra))
    if args.report_dir:
        _redact_file(args.report_dir / "junit.xml")
    verdict = plugin.LAST_VERDICT.get("last")
    if verdict is None:  # pytest stopped before the session ended (bad arguments)
        if code == 4:
            print("conformance: error: pytest rejected the arguments (see above)", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_FAILED
    _print_verdict(verdict, args.report_dir)
    return verdict.code


def _has_basetemp(extra: list[str]) -> bool:
    return any(a == "--basetemp" or a.startswith("--basetemp=") for a in extra)


def list_cmd(args: argparse.Namespace) -> int:
    """Print the adapters and the checks."""
    from conformance.adapters import UsageError, resolve
    from conformance.kit.marks import all_checks

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
                    "adapters": [s.describe() for s in specs],
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
    if args.cmd == "merge":
        return merge_cmd(args)
    return list_cmd(args)


def merge_cmd(args: argparse.Namespace) -> int:
    """``conformance merge``: write the merged reports; exit with the merged verdict."""
    from conformance import report as report_mod
    from conformance.report.merge import MergeError, merge

    try:
        doc = merge(list(args.reports))
        baseline = report_mod.load_baseline(args.baseline) if args.baseline else None
    except (MergeError, ValueError) as exc:
        print(f"conformance: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report_mod.write(doc, args.report_dir, baseline)
    v = doc["verdict"]
    print(
        f"conformance: merged {len(args.reports)} reports: {len(doc['results'])} results, "
        f"{v['status']} (exit {v['exit_code']}): {v['reason']}",
        file=sys.stderr,
    )
    print(f"conformance: reports in {args.report_dir}", file=sys.stderr)
    return int(v["exit_code"])


if __name__ == "__main__":
    raise SystemExit(main())
