"""Command line: `harness doctor [--json] [--provider P]`, `harness up [names...]`,
`harness down [RUN...]`, `harness images build|list [names...]`.

`doctor` and `up` are runs (:mod:`harness.run`): SIGTERM, SIGINT or SIGHUP stop
every service they started and exit 128 + the signal (143, 130, 129).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from harness import run
from harness.doctor import run_doctor
from harness.services.registry import ServiceSet
from harness.services.select import PROVIDERS, select_provider
from harness.services.spec import SERVICE_NAMES, SPECS


def _doctor(args: argparse.Namespace) -> int:
    provider = select_provider(args.provider)
    report = run_doctor(provider, tuple(args.services or SERVICE_NAMES), not args.serial)
    ok = all(s["ok"] for s in report["services"].values())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if ok else 1
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"provider: [bold]{report['provider']}[/] ({report['reason']})")
    if not report["lifecycle_faults"]:
        console.print("[yellow]lifecycle faults (restart/pause/kill) unavailable[/]")
    table = Table("service", "ok", "version", "start s", "error")
    for name, res in report["services"].items():
        mark = "[green]ok[/]" if res["ok"] else "[red]FAIL[/]"
        table.add_row(name, mark, res["version"], f"{res['start_s']:.2f}", res["error"] or "")
    console.print(table)
    console.print(f"all together: {report['total_s']:.2f} s")
    return 0 if ok else 1


def _up(args: argparse.Namespace) -> int:
    current = run.current()
    if args.keep:
        current.tie_children = False  # they must outlive this process
    services = ServiceSet(select_provider(args.provider))
    handles = services.start_many(args.services or SERVICE_NAMES)
    for name, handle in handles.items():
        pid = getattr(handle, "pid", None)
        where = (f"pid {pid}, " if pid else "") + f"log {handle.log_path}"
        print(f"{name}: {handle.url} ({where})")
    for var, url in services.env().items():
        print(f"export {var}={url}")
    if args.keep:
        services.close(keep=True)
        print(f"left running; stop them with: harness down {current.id}", flush=True)
        return 0
    print("running; Ctrl-C (or SIGTERM) stops them", flush=True)
    while True:  # the run's signal handlers stop everything and exit 128 + signal
        signal.pause()


def _down(args: argparse.Namespace) -> int:
    kept = run.kept_runs()
    chosen = [k for k in kept if not args.runs or k["run"] in args.runs]
    unknown = sorted(set(args.runs) - {k["run"] for k in kept})
    if unknown:
        print(f"harness down: no kept run {', '.join(unknown)} "
              f"(kept: {', '.join(k['run'] for k in kept) or 'none'})", file=sys.stderr)
    if not chosen:
        if not unknown:
            print("harness down: no services left running by harness up --keep or "
                  "--keep-services")
        return 1 if unknown else 0
    for info in chosen:
        result = run.reap(info["run"], Path(info["temp_dir"]), info.get("hooks"))
        line = f"run {info['run']}: stopped {len(result['killed'])} processes"
        if result["errors"]:
            line += "; " + "; ".join(result["errors"])
        print(line)
    return 1 if unknown else 0


def _images(args: argparse.Namespace) -> int:
    from harness.images import SERVICE_IMAGE, ImageBuildError, build_images, images_missing
    from harness.services.docker_engine import docker_client, docker_ping

    reason = docker_ping()
    if reason:
        print(f"harness images: {reason} (start one with `make docker-engine`)", file=sys.stderr)
        return 1
    names = tuple(args.services or SERVICE_NAMES)
    if args.action == "list":
        client = docker_client()
        try:
            missing = set(images_missing(client, names))
        finally:
            client.close()
        for name in names:
            image = SERVICE_IMAGE if name == "service" else SPECS[name].image
            print(f"{name}: {image} {'MISSING' if image in missing else 'present'}")
        return 1 if missing else 0
    try:
        results = build_images(names, force=args.force, log=args.log)
    except ImageBuildError as exc:
        print(f"harness images build: {exc}", file=sys.stderr)
        return 1
    for res in results:
        print(f"{res.image}: {res.action} ({res.seconds:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `harness` console script."""
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    choices = ["auto", *PROVIDERS]
    doc = sub.add_parser("doctor", help="start each service, do a round trip, stop it")
    doc.add_argument("--json", action="store_true", help="machine-readable report")
    doc.add_argument("--provider", choices=choices, default=None)
    doc.add_argument("--serial", action="store_true", help="one service at a time")
    doc.add_argument("services", nargs="*", default=[], help=", ".join(SERVICE_NAMES))
    up = sub.add_parser("up", help="start services and print their URLs")
    up.add_argument("--provider", choices=choices, default=None)
    up.add_argument("--keep", action="store_true", help="leave them running and exit")
    up.add_argument("services", nargs="*", default=[], help=", ".join(SERVICE_NAMES))
    down = sub.add_parser("down", help="stop services left running by up --keep or "
                          "--keep-services")
    down.add_argument("runs", nargs="*", default=[], help="run ids (default: every kept run)")
    img = sub.add_parser("images", help="build the service images from source (no registry)")
    img.add_argument("action", choices=["build", "list"])
    img.add_argument("--force", action="store_true", help="rebuild even when up to date")
    img.add_argument("--log", type=Path, default=None, help="append build output to this file")
    img.add_argument("services", nargs="*", default=[],
                     help=", ".join(SERVICE_NAMES) + " (default), and service (the project)")
    args = parser.parse_args(argv)
    if args.command == "down":
        return _down(args)
    known = (*SERVICE_NAMES, "service") if args.command == "images" else SERVICE_NAMES
    unknown = [n for n in args.services if n not in known]
    if unknown:
        parser.error(f"unknown services {unknown}; known: {', '.join(known)}")
    if args.command == "images":
        return _images(args)
    with run.running():
        return _doctor(args) if args.command == "doctor" else _up(args)


if __name__ == "__main__":
    sys.exit(main())
