"""A mutmut runner that collects the checks once and forks each mutant from that session.

mutmut's own fork runner calls ``pytest.main`` in every forked mutant, so each mutant pays
for pytest's configuration, the plugins' set-up (the harness plugin starts its process
reaper) and the collection of the whole conformance suite, about 1.5 s here before the
first check runs. This runner does that once, in mutmut's main process, after the clean
run and the forced-fail run (which still go through ``pytest.main``): it keeps a
configured, collected pytest session, and each forked mutant runs only its checks' items
through ``pytest_runtest_protocol`` (fastest first, stopping at the first failure, as
``-x`` does) and exits 1 (killed) or 0 (survived).

It relies on pytest internals (``_prepareconfig``, ``Session``, ``_setupstate``) and on
mutmut's runner classes, hence the version pins; tests/tools/test_mutation_tooling.py
guards it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from mutmut.runners.harness import PytestRunner
from mutmut.utils.format_utils import strip_prefix
from mutmut.workers.isolation import ForkRunner

#: pytest exit codes as mutmut reads them: 0 survived, 1 killed, 3 internal error (killed)
SURVIVED, KILLED, INTERNAL_ERROR = 0, 1, 3


class CollectedSessionRunner(PytestRunner):
    """PytestRunner whose mutant runs reuse one collected session (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.session: Any = None
        self.items: dict[str, Any] = {}
        self.failed = False
        self.mutants_dir = os.path.abspath("mutants")

    # -- pytest hook (this object is registered as a plugin of the kept session)
    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self.failed = True

    def open_session(self) -> None:
        """Configure pytest and collect every check once, in this (the parent) process."""
        from _pytest.config import _prepareconfig
        from _pytest.main import Session

        args = [
            "--rootdir=.",
            "--tb=native",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:random-order",
            *self._pytest_add_cli_args_test_selection,
            *self._pytest_add_cli_args,
        ]
        root = os.getcwd()
        os.chdir(self.mutants_dir)
        try:
            config = _prepareconfig(args, plugins=[self])
            config._do_configure()
            session = Session.from_config(config)
            config.hook.pytest_sessionstart(session=session)
            config.hook.pytest_collection(session=session)
        finally:
            os.chdir(root)  # mutmut writes its results relative to the project
        if session.testsfailed:
            raise RuntimeError(f"collecting the checks failed ({session.testsfailed} errors)")
        self.session = session
        self.items = {strip_prefix(i.nodeid, prefix="mutants/"): i for i in session.items}

    def run_tests(self, *, mutant_name: str | None, tests: Iterable[str]) -> int:
        tests = list(tests)
        if self.session is None or mutant_name is None or not tests:
            return super().run_tests(mutant_name=mutant_name, tests=tests)
        items = [self.items.get(t) for t in tests]
        if any(i is None for i in items):  # a check the kept session does not know
            return super().run_tests(mutant_name=mutant_name, tests=tests)
        os.chdir(self.mutants_dir)  # a forked child: checks run from where pytest.main would
        return self._run_items(items)

    def _run_items(self, items: list[Any]) -> int:
        """Run the items in this (forked) process; KILLED at the first failing one."""
        self.failed = False
        try:
            for n, item in enumerate(items):
                nextitem = items[n + 1] if n + 1 < len(items) else None
                item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                if self.failed:
                    self.session._setupstate.teardown_exact(None)
                    return KILLED
        except BaseException:
            return INTERNAL_ERROR
        return SURVIVED


class CollectedSessionForkRunner(ForkRunner):
    """mutmut's ForkRunner, opening the kept session before the first mutant is forked;
    with a line_cover.Selector, each mutant runs only the checks that execute its change."""

    test_runner: CollectedSessionRunner
    selector: Any = None

    def startup(self) -> None:
        self.test_runner.open_session()
        if not self.debug:
            # the kept session's terminal writer holds the real stdout: the children's
            # check output goes nowhere (ForkRunner only swaps sys.stdout)
            self._devnull = os.open(os.devnull, os.O_WRONLY)
        super().startup()

    def submit(
        self, mutant_name: str, tests: list[str], cpu_time_limit: int, estimated_time: float
    ) -> None:
        if self.selector is not None and tests:
            from mutmut.state import state

            path = mutant_name.rsplit(".", 1)[0].replace(".", "/") + ".py"
            tests = self.selector.select(mutant_name, path, tests)
            durations = state().duration_by_test
            estimated_time = sum(durations.get(t, 0.0) for t in tests)
        devnull = getattr(self, "_devnull", None)
        if devnull is None or not tests:
            return super().submit(mutant_name, tests, cpu_time_limit, estimated_time)
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            super().submit(mutant_name, tests, cpu_time_limit, estimated_time)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


#: set by run.py before mutmut's ``_run``: a line_cover.Selector, or None for mutmut's
#: function-level selection alone
SELECTOR: Any = None


def make_runner(max_workers: int) -> CollectedSessionForkRunner:
    """The runner for mutmut's ``_run`` (replaces ``get_mutant_runner``)."""
    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    from mutmut.configuration import config

    runner = CollectedSessionRunner()
    runner.prepare_main_test_run()
    fork_runner = CollectedSessionForkRunner(
        max_workers=max_workers, test_runner=runner, debug=config().debug
    )
    fork_runner.selector = SELECTOR
    return fork_runner
