"""Mutation testing of the built-in adapters by the conformance contract suite.

``python tools/mutation/run.py run [MODULE...]`` mutates the semantics-carrying modules
(mutmut 3, configured in ``[tool.mutmut]`` of pyproject.toml: the contract checks against
the in-memory adapters are the tests, each mutant runs only the checks that call the
mutated function, results are cached in ./mutants per function hash) and then writes the
summary; ``summary [MODULE...]`` only writes it from the cached results; ``rekey
[MODULE...]`` renames the equivalents file's entries whose mutant mutmut renumbered.

The summary (``reports/mutation/summary.md`` and ``summary.json``) has, per module,
killed / survived / timed out / equivalent / not run, the score
``(killed + timed out) / (total - equivalent)`` and every survivor with its diff.
Equivalent mutants are listed in ``equivalents.toml`` beside this file, each with the
mutated line it expects and a one-line reason; an entry whose line no longer matches
the mutant (the function changed) is reported stale and its mutant counts as survived.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EQUIVALENTS = HERE / "equivalents.toml"

# name -> source path, in the order a run takes them (cheapest checks first)
MODULES: dict[str, str] = {
    "memory.stores": "reference_services/adapters/memory/stores.py",
    "spi.store_base": "reference_services/runtime/spi/store_base.py",
    "memory.queue_bridge": "reference_services/adapters/memory/queue_bridge.py",
    "spi.queue_base": "reference_services/runtime/spi/queue_base.py",
    "memory.event_bridge": "reference_services/adapters/memory/event_bridge.py",
    "spi.bridge_base": "reference_services/runtime/spi/bridge_base.py",
}

KILLED, SURVIVED, TIMEOUT, EQUIVALENT, NOT_RUN = (
    "killed",
    "survived",
    "timeout",
    "equivalent",
    "not run",
)


def module_glob(path: str) -> str:
    """The mutmut mutant-name pattern of every mutant in ``path``."""
    return path.removesuffix(".py").replace("/", ".") + ".*"


def classify(exit_code: int | None) -> str:
    """Our category for a mutmut exit code (mutmut.stats.status_by_exit_code)."""
    from mutmut.stats import status_by_exit_code

    status = status_by_exit_code[exit_code]
    if status == "killed":
        return KILLED
    if status == "timeout":
        return TIMEOUT
    if status in ("survived", "no tests", "suspicious", "skipped"):
        return SURVIVED
    return NOT_RUN


@dataclass
class Equivalent:
    """One entry of equivalents.toml."""

    name: str
    line: str
    reason: str


def _tables(path: Path, kind: str, needs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The ``[KIND."NAME"]`` tables of the equivalents file, each checked for ``needs``."""
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    tables = data.get(kind, {})
    for name, entry in tables.items():
        if not isinstance(entry, dict) or not all(entry.get(key) for key in needs):
            wants = " and ".join(f"a '{key}'" for key in needs)
            raise ValueError(f"{path}: {kind} {name!r} needs {wants} (the reason one line)")
    return tables


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, Equivalent]:
    """Entries by mutant name; each needs ``line`` (the mutant's + line) and ``reason``."""
    return {
        name: Equivalent(name, str(entry["line"]).strip(), str(entry["reason"]).strip())
        for name, entry in _tables(path, "mutant", ("line", "reason")).items()
    }


def load_survivor_reasons(path: Path = EQUIVALENTS) -> dict[str, Equivalent]:
    """``[survivor."NAME"]`` tables of the equivalents file: why a mutant that is NOT
    equivalent still survives (an open property, a behaviour the contract leaves free). It
    still counts as survived; the summary lists the reason beside it. Each carries the
    mutated ``line`` as well: mutmut numbers a function's mutants in order, so a name can
    come to mean another mutant, and a reason whose line no longer matches is stale."""
    return {
        name: Equivalent(name, str(entry["line"]).strip(), str(entry["reason"]).strip())
        for name, entry in _tables(path, "survivor", ("line", "reason")).items()
    }


def mutant_diff(name: str, path: str) -> str:
    """The unified diff of one mutant (read from ./mutants)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    return get_diff_for_mutant(name, path=path)


def changed_lines(diff: str) -> list[str]:
    """The ``+`` lines of a diff, stripped (what the mutant changed to); for a mutant that
    only deletes (an argument on a line of its own), its removed lines, each as ``-TEXT``."""
    lines = diff.splitlines()
    added = [ln[1:].strip() for ln in lines if ln.startswith("+") and not ln.startswith("+++")]
    if added:
        return added
    return ["-" + ln[1:].strip() for ln in lines if ln.startswith("-") and not ln.startswith("---")]


@dataclass
class ModuleResult:
    """Counts and survivors of one module."""

    name: str
    path: str
    counts: dict[str, int] = field(default_factory=dict)
    survivors: list[dict[str, str]] = field(default_factory=list)
    equivalents: list[dict[str, str]] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    stale_reasons: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def measured(self) -> bool:
        return self.total > 0 and self.counts.get(NOT_RUN, 0) == 0

    @property
    def score(self) -> float | None:
        denom = self.total - self.counts.get(EQUIVALENT, 0) - self.counts.get(NOT_RUN, 0)
        if denom <= 0:
            return None
        return (self.counts.get(KILLED, 0) + self.counts.get(TIMEOUT, 0)) / denom


def summarise(
    modules: dict[str, str],
    root: Path,
    equivalents: dict[str, Equivalent],
    reasons: dict[str, Equivalent] | None = None,
) -> list[ModuleResult]:
    """Read mutmut's cached results for ``modules`` (name -> path; run from ``root``)."""
    results = []
    for mod, path in modules.items():
        zero = {k: 0 for k in (KILLED, SURVIVED, TIMEOUT, EQUIVALENT, NOT_RUN)}
        res = ModuleResult(mod, path, zero)
        meta = root / "mutants" / (path + ".meta")
        codes: dict[str, int | None] = {}
        if meta.is_file():
            codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        for name in sorted(codes):
            cat = classify(codes[name])
            if cat == SURVIVED:
                diff = mutant_diff(name, path)
                eq = equivalents.get(name)
                if eq is not None and eq.line in changed_lines(diff):
                    res.counts[EQUIVALENT] += 1
                    res.equivalents.append({"name": name, "reason": eq.reason, "line": eq.line})
                    continue
                if eq is not None:
                    res.stale.append(name)
                survivor = {"name": name, "diff": diff}
                if codes[name] in (5, 33):  # mutmut's "no tests": no check executes it
                    survivor["note"] = "no check executes the mutated statement"
                why = (reasons or {}).get(name)
                if why is not None and why.line in changed_lines(diff):
                    survivor["reason"] = why.reason
                elif why is not None:
                    res.stale_reasons.append(name)
                res.survivors.append(survivor)
            res.counts[cat] += 1
        results.append(res)
    return results


def write_summary(results: list[ModuleResult], out_dir: Path, when: str) -> Path:
    """summary.json and summary.md in ``out_dir``; returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        rows.append(
            {
                "module": r.name,
                "path": r.path,
                **{k.replace(" ", "_"): v for k, v in r.counts.items()},
                "total": r.total,
                "score": None if r.score is None else round(r.score, 4),
                "measured": r.measured,
                "survivors": r.survivors,
                "equivalents": r.equivalents,
                "stale_equivalents": r.stale,
                "stale_survivor_reasons": r.stale_reasons,
            }
        )
    (out_dir / "summary.json").write_text(
        json.dumps({"date": when, "modules": rows}, indent=2), encoding="utf-8"
    )
    lines = [
        f"# Mutation score of the contract suite on the built-in adapters ({when})",
        "",
        "score = (killed + timed out) / (total - equivalent); not run counts nothing.",
        "",
        "| module | total | killed | survived | timed out | equivalent | not run | score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        c = r.counts
        score = "-" if r.score is None else f"{100 * r.score:.1f} %"
        lines.append(
            f"| {r.name} | {r.total} | {c[KILLED]} | {c[SURVIVED]} | {c[TIMEOUT]} | "
            f"{c[EQUIVALENT]} | {c[NOT_RUN]} | {score} |"
        )
    for r in results:
        if r.survivors:
            lines += ["", f"## Survivors in {r.name} ({r.path})", ""]
            for s in r.survivors:
                why = " (stale equivalent entry)" if s["name"] in r.stale else ""
                if s["name"] in r.stale_reasons:
                    why += " (stale survivor reason: its line no longer matches)"
                if s.get("note"):
                    why += f" ({s['note']})"
                if s.get("reason"):
                    why += f"; survives because: {s['reason']}"
                lines += [f"### {s['name']}{why}", "", "```diff", s["diff"], "```", ""]
        if r.equivalents:
            lines += ["", f"## Equivalent in {r.name}", ""]
            lines += [f"- `{e['name']}`: {e['reason']}" for e in r.equivalents]
    md = out_dir / "summary.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md


def _tests_hash(root: Path) -> str:
    """A hash of every test file mutmut runs (the checks and their kit)."""
    h = hashlib.sha256()
    for sub in ("conformance", "tests"):
        for f in sorted((root / sub).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _drop_stale_stats(root: Path) -> str:
    """mutmut maps functions to tests once and only adds tests with new names; a changed
    check keeps its old mapping. So when any test file changed, the mapping is rebuilt.
    Returns the tests' hash, stamped once the run went through."""
    stamp = root / "mutants" / "tests.sha256"
    now = _tests_hash(root)
    if not stamp.is_file() or stamp.read_text() != now:
        (root / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    return now


def run_mutmut(
    paths: Sequence[str],
    root: Path,
    workers: int,
    rerun_survivors: bool,
    only: Sequence[str] = (),
    limit: int | None = None,
    runner: str = "session",
    lines: bool = True,
) -> None:
    """Run mutmut (in this process, from ``root``) on the mutants of ``paths`` only.

    ``mutmut run NAME...`` reruns every named mutant, cached or not; so all mutants are
    generated (cheap; a changed function's cached results are dropped by mutmut) and the
    list it walks is narrowed to ``paths``, keeping the cached results of killed mutants.
    Survivors are run again (a check may have been added since). ``only`` (fnmatch
    patterns of mutant names) narrows further and runs the matching mutants again, cached
    or not; ``limit`` stops after that many mutants. ``runner="session"`` forks each
    mutant from one collected pytest session (session_runner.py), ``"pytest"`` is mutmut's
    own pytest.main per mutant. This relies on mutmut internals, hence the pin to 3.8.x;
    tests/tools/test_mutation_tooling.py guards it.
    """
    os.chdir(root)
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(root / "mutants" / ".hypothesis"))
    tests_hash = _drop_stale_stats(root)
    import mutmut.__main__ as mm
    from mutmut.stats import status_by_exit_code

    wanted = set(paths)
    original = mm.collect_source_file_mutation_data
    original_runner = mm.get_mutant_runner

    def narrowed(*, mutant_names: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
        mutants, by_path = original(mutant_names=())
        keep = []
        for data, name, result in mutants:
            if str(data.path) not in wanted:
                continue
            if only:
                if not any(fnmatch.fnmatchcase(name, pat) for pat in only):
                    continue
                result = None
            elif rerun_survivors and status_by_exit_code[result] in ("survived", "no tests"):
                result = None
            keep.append((data, name, result))
        if limit is not None:
            todo = [m for m in keep if m[2] is None][:limit]
            keep = [m for m in keep if m[2] is not None] + todo
        return keep, by_path

    mm.collect_source_file_mutation_data = narrowed  # type: ignore[assignment]
    if runner == "session":
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        import session_runner

        if lines:
            import line_cover
            from mutmut.configuration import config

            cfg = config()
            args = [*cfg.pytest_add_cli_args_test_selection, *cfg.pytest_add_cli_args]
            files = sorted({*(m for m in MODULES.values() if (root / m).is_file()), *paths})
            coverage = line_cover.collect(root, files, args, tests_hash)
            session_runner.SELECTOR = line_cover.Selector(root, coverage)
        mm.get_mutant_runner = session_runner.make_runner  # type: ignore[assignment]
    try:
        mm._run((), workers)
        (root / "mutants" / "tests.sha256").write_text(tests_hash)
    finally:
        mm.collect_source_file_mutation_data = original  # type: ignore[assignment]
        mm.get_mutant_runner = original_runner  # type: ignore[assignment]


def _function_of(name: str) -> str:
    """The function part of a mutant name (``...ǁf__mutmut_12`` -> ``...ǁf``)."""
    return name.rsplit("__mutmut_", 1)[0]


def _number(name: str) -> int:
    return int(name.rsplit("__mutmut_", 1)[1])


def rekey(modules: dict[str, str], root: Path, path: Path = EQUIVALENTS) -> list[str]:
    """Rename the entries of the equivalents file whose mutant name came to mean another
    mutant (mutmut renumbers a function's mutants when the function changes): an entry whose
    ``line`` no longer matches its mutant moves to the one mutant of the same function whose
    diff has that line, if exactly one has. Returns what it did, one line per entry."""
    codes: dict[str, str] = {}
    for mod_path in modules.values():
        meta = root / "mutants" / (mod_path + ".meta")
        if meta.is_file():
            for name in json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]:
                codes[name] = mod_path
    lines_of = {name: changed_lines(mutant_diff(name, mp)) for name, mp in codes.items()}
    text = path.read_text(encoding="utf-8")
    entries = {**_tables(path, "mutant", ("line", "reason")), **_tables(path, "survivor", ())}
    line = {name: str(entry.get("line", "")).strip() for name, entry in entries.items()}
    mine = [n for n in entries if any(_function_of(n) == _function_of(c) for c in codes)]
    valid = {n for n in mine if line[n] and line[n] in lines_of.get(n, [])}

    def candidates(name: str) -> list[str]:
        return [
            n
            for n, got in lines_of.items()
            if _function_of(n) == _function_of(name) and line[name] in got and n not in valid
        ]

    stale = [n for n in mine if n not in valid]
    gone = [n for n in stale if not candidates(n)]  # its mutant is no longer made
    unsure = {n for n in stale if len(candidates(n)) > 1}
    moves: dict[str, str] = {}
    for name in stale:
        found = [n for n in candidates(name) if n not in unsure and n not in moves.values()]
        if name not in unsure and len(found) == 1:
            moves[name] = found[0]
    # mutmut keeps a function's mutants in order: where the sure moves of a function all
    # shift its numbers alike, an entry with several candidates takes the one so shifted
    shifts: dict[str, set[int]] = {}
    for old, new in moves.items():
        shifts.setdefault(_function_of(old), set()).add(_number(new) - _number(old))
    for name in sorted(unsure, key=_number):
        shift = shifts.get(_function_of(name), set())
        want = (
            f"{_function_of(name)}__mutmut_{_number(name) + next(iter(shift))}"
            if len(shift) == 1
            else None
        )
        if want in candidates(name) and want not in moves.values():
            moves[name] = want
            unsure.discard(name)
    done = [f"{old} -> {new}" for old, new in moves.items()]
    done += [f"{n}: dropped (no mutant of its function has its line now)" for n in gone]
    done += [f"{n}: stale, left as it is (several mutants have its line)" for n in unsure]
    for name in gone:
        text = re.sub(
            rf'^\[(?:mutant|survivor)\."{re.escape(name)}"\]\n(?:(?![\[#]).*\n)*',
            "",
            text,
            flags=re.M,
        )
    for i, name in enumerate(moves):  # two steps: a chain of renames must not collide
        text = text.replace(f'."{name}"]', f'."@rekey{i}@"]', 1)
    for i, new in enumerate(moves.values()):
        text = text.replace(f'."@rekey{i}@"]', f'."{new}"]', 1)
    path.write_text(text, encoding="utf-8")
    return done


def record(results: list[ModuleResult], when: str, path: Path) -> None:
    """Merge the fully measured modules into the recorded scores (others keep their entry)."""
    try:
        old = {m["module"]: m for m in json.loads(path.read_text(encoding="utf-8"))["modules"]}
    except (OSError, ValueError, KeyError):
        old = {}
    for r in results:
        if not r.measured or r.score is None:
            continue
        old[r.name] = {
            "module": r.name,
            "path": r.path,
            "date": when,
            "score": round(r.score, 4),
            "total": r.total,
            **{k.replace(" ", "_"): v for k, v in r.counts.items()},
        }
    order = {name: i for i, name in enumerate(MODULES)}
    rows = sorted(old.values(), key=lambda m: order.get(m["module"], len(order)))
    path.write_text(json.dumps({"modules": rows}, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mutation", description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=("run", "summary", "rekey"))
    p.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    p.add_argument("--workers", type=int, default=2, help="parallel mutants (default 2)")
    p.add_argument("--root", type=Path, default=Path.cwd(), help="the project (default: cwd)")
    p.add_argument("--out", type=Path, default=Path("reports/mutation"))
    p.add_argument(
        "--record",
        action="store_true",
        help="write the measured modules' scores (dated) to conformance/report/"
        "mutation_score.json, which report.html and the README quote",
    )
    p.add_argument("--equivalents", type=Path, default=EQUIVALENTS, help="the equivalents file")
    p.add_argument(
        "--keep-survivors", action="store_true", help="do not run cached survivors again"
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only the mutants whose name matches (fnmatch; repeatable), cached or not",
    )
    p.add_argument("--limit", type=int, default=None, help="run at most this many mutants")
    p.add_argument(
        "--runner",
        choices=("session", "pytest"),
        default="session",
        help="session: fork each mutant from one collected pytest session (default); "
        "pytest: mutmut's own pytest.main per mutant",
    )
    p.add_argument(
        "--function-level",
        action="store_true",
        help="run every check that calls the mutated function (mutmut's selection), not only "
        "those that execute the mutated statement",
    )
    args = p.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES and not m.endswith(".py")]
    if unknown:
        known = ", ".join(MODULES)
        p.error(f"unknown module(s) {', '.join(unknown)}; known: {known}, or a .py path")
    modules = args.modules or list(MODULES)
    paths = {m: MODULES.get(m, m) for m in modules}
    root = args.root.resolve()
    equivalents = load_equivalents(args.equivalents.resolve())
    if args.cmd == "run":
        run_mutmut(
            list(paths.values()),
            root,
            args.workers,
            not args.keep_survivors,
            only=args.only,
            limit=args.limit,
            runner=args.runner,
            lines=not args.function_level,
        )
    os.chdir(root)  # mutmut reads ./mutants and pyproject.toml from the cwd
    if args.cmd == "rekey":
        for line in rekey(paths, root, args.equivalents.resolve()):
            print(line)
        equivalents = load_equivalents(args.equivalents.resolve())
    results = summarise(paths, root, equivalents, load_survivor_reasons(args.equivalents.resolve()))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    md = write_summary(results, args.out if args.out.is_absolute() else root / args.out, when)
    if args.record:
        record(results, when, root / "conformance" / "report" / "mutation_score.json")
    print(md.read_text(encoding="utf-8").split("\n## ")[0])
    print(f"mutation: summary in {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
