"""A stopped run leaves nothing behind (issue 19), with real runners and real brokers.

Each runner (``conformance run``, ``harness up``, ``harness doctor``, a pytest session
with the plugin) gets a private TMPDIR. Its processes are the ones that reference that
directory: in their environment (TMPDIR is inherited), command line, working directory
or open files (every local service logs into its data dir there). That finds them
independently of the run-id mechanism under test, and never touches the brokers of
other runs on the machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness_helpers import wait_until

from harness import procs
from harness.services.local_recipes import which

BIN = Path(sys.executable).parent
REPORT = "{report}"  # in a runner's arguments: its report dir (next to TMPDIR and cwd)
STRIP = ("HARNESS_RUN_ID", "HARNESS_RUN_ROOT", "HARNESS_RUN_PARENT", "PYTEST_XDIST_WORKER",
         "PYTEST_XDIST_TESTRUNUID", "HARNESS_PROVIDER", "HARNESS_TMPDIR", "PYTEST_ADDOPTS")


def _needs(*binaries: str) -> pytest.MarkDecorator:
    missing = [b for b in binaries if which(b) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


def _references(pid: int, needle: str) -> bool:
    base = f"/proc/{pid}"
    raw = needle.encode()
    try:
        if raw in Path(base, "environ").read_bytes() or raw in Path(base, "cmdline").read_bytes():
            return True
        if os.readlink(f"{base}/cwd").startswith(needle):
            return True
        for fd in os.listdir(f"{base}/fd"):
            try:
                if os.readlink(f"{base}/fd/{fd}").startswith(needle):
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
    except OSError:
        return "?"


@dataclass
class Runner:
    """One runner process in its own TMPDIR and working directory."""

    proc: subprocess.Popen[bytes]
    tmpdir: Path
    cwd: Path
    log: Path
    before: set[str] = field(default_factory=set)

    def processes(self) -> dict[int, str]:
        """Live processes of this run (the runner included), with their command lines."""
        mine = {os.getpid(), *_ancestor_pids()}
        return {pid: _cmdline(pid) for pid in procs.all_pids()
                if pid not in mine and procs.is_alive(pid) and _references(pid, str(self.tmpdir))}

    def has(self, *names: str) -> bool:
        cmds = " ".join(self.processes().values())
        return all(n in cmds for n in names)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def temp_entries(self) -> set[str]:
        return {p.name for p in self.tmpdir.iterdir() if p.name.startswith("harness-")}

    def signal_and_wait(self, sig: int, timeout: float = 30.0) -> tuple[int | None, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started


def _ancestor_pids() -> set[int]:
    out, pid = set(), os.getppid()
    while pid > 1:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Runner]]:
    """start(args) -> Runner; afterwards anything of the run still alive is killed."""
    made: list[Runner] = []

    def make(*args: str) -> Runner:
        tmpdir, cwd = tmp_path / "tmp", tmp_path / "cwd"
        tmpdir.mkdir()
        cwd.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in STRIP and not k.endswith("_URL")}
        env["TMPDIR"] = str(tmpdir)
        log = tmp_path / "runner.log"
        with log.open("wb") as out:
            args = tuple(str(tmp_path / "report") if a == REPORT else a for a in args)
            proc = subprocess.Popen(list(args), cwd=cwd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        runner = Runner(proc, tmpdir, cwd, log)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        if runner.proc.poll() is None:
            runner.proc.kill()
            runner.proc.wait()
        for pid in runner.processes():
            with __import__("contextlib").suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _wait_started(runner: Runner, *names: str, marker: str | None = None,
                  timeout: float = 150.0) -> dict[int, str]:
    ok = wait_until(lambda: runner.proc.poll() is None and runner.has(*names)
                    and (marker is None or marker in runner.output()), timeout, 0.2)
    assert ok, (f"{names} / {marker!r} not seen (exit {runner.proc.poll()}):\n"
                f"{runner.output()[-3000:]}")
    runner.before = runner.temp_entries()
    assert runner.before, "the run has no harness-* entry in its TMPDIR (nothing to check)"
    return runner.processes()


def _signal_and_assert_stopped(runner: Runner, before: dict[int, str],
                               sig: int = signal.SIGTERM, expected: int = 143,
                               within: float = 5.0) -> None:
    """Send ``sig``; the run must exit ``expected`` and leave no process, temp entry or file."""
    code, took = runner.signal_and_wait(sig)
    left: dict[int, str] = {}

    def gone() -> bool:
        nonlocal left
        left = runner.processes()
        return not left

    signalled = time.monotonic() - took
    wait_until(gone, within, 0.1)
    cleared = time.monotonic() - signalled
    out = runner.output()[-3000:]
    problems = []
    if code != expected:
        problems.append(f"exit {code} (want {expected}) after {took:.2f} s")
    if left:
        problems.append(f"alive {within} s after the signal: {left} (before: {before})")
    if runner.temp_entries():
        problems.append(f"left in TMPDIR: {sorted(runner.temp_entries())}")
    if list(runner.cwd.iterdir()):
        problems.append(f"left in cwd: {list(runner.cwd.iterdir())}")
    assert not problems, "; ".join(problems) + f"\n{out}"
    print(f"\nexit {code} {took:.2f} s after the signal, no process left after "
          f"{cleared:.2f} s; processes before {len(before)} ({_names(before)}), after 0; "
          f"harness-* in TMPDIR before {len(runner.before)}, after 0")


def _names(pids: dict[int, str]) -> str:
    return ", ".join(sorted({Path(c.split()[0]).name if c.split() else "?"
                             for c in pids.values()}))


def _conformance(*args: str) -> list[str]:
    # the report dir is wanted output: outside the cwd, which must stay empty
    return [str(BIN / "conformance"), "run", "--provider", "local", "--report-dir",
            REPORT, *args]


@_needs("rabbitmq-server", "nats-server", "epmd")
def test_sigterm_stops_conformance_run(start: Callable[..., Runner]) -> None:
    runner = start(*_conformance("--adapter", "amqp", "--adapter", "nats", "--suite",
                                 "contract"))
    before = _wait_started(runner, "beam.smp", "nats-server", "epmd",
                           marker="test_")
    _signal_and_assert_stopped(runner, before)


@_needs("redis-server", "nats-server")
def test_sigterm_stops_conformance_run_with_xdist_workers(start: Callable[..., Runner]) -> None:
    runner = start(*_conformance("--adapter", "nats", "--adapter", "redis", "--suite",
                                 "contract", "-n", "2"))

    def both_workers_have_brokers() -> bool:
        cmds = list(runner.processes().values())
        return (sum("nats-server" in c for c in cmds) >= 2
                and sum("redis-server" in c for c in cmds) >= 2)

    assert wait_until(both_workers_have_brokers, 150.0, 0.2), runner.output()[-3000:]
    # the xdist workers: execnet's bootstrap command line, or the title xdist gives them
    # when setproctitle is installed (mutmut, a dev dependency, brings it)
    worker = "pytest-xdist" if importlib.util.find_spec("setproctitle") else "exec(eval("
    before = _wait_started(runner, worker)
    _signal_and_assert_stopped(runner, before)


@_needs("redis-server", "nats-server", "mosquitto", "toxiproxy-server")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGHUP, 129),
                                           (signal.SIGTERM, 143)])
def test_signals_stop_harness_up(start: Callable[..., Runner], sig: int, code: int) -> None:
    runner = start(str(BIN / "harness"), "up", "--provider", "local", "redis", "nats",
                   "mosquitto", "toxiproxy")
    before = _wait_started(runner, "redis-server", "nats-server", "mosquitto",
                           "toxiproxy-server", marker="running;")
    _signal_and_assert_stopped(runner, before, sig, code)


@_needs("rabbitmq-server", "nats-server", "epmd")
def test_sigterm_stops_harness_doctor(start: Callable[..., Runner]) -> None:
    runner = start(str(BIN / "harness"), "doctor", "--provider", "local", "rabbitmq", "nats")
    before = _wait_started(runner, "beam.smp", "epmd")
    _signal_and_assert_stopped(runner, before)


SESSION = '''
import time

def test_hold(harness_nats, harness_toxiproxy, fresh_service, proxied):
    fresh_service("redis")
    proxied(harness_nats)
    print("HOLDING", flush=True)
    time.sleep(600)
'''


@_needs("redis-server", "nats-server", "toxiproxy-server")
def test_sigterm_stops_a_pytest_session(start: Callable[..., Runner], tmp_path: Path) -> None:
    (tmp_path / "test_hold.py").write_text(SESSION)
    runner = start(sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider",
                   "--rootdir", str(tmp_path), "--provider", "local",
                   str(tmp_path / "test_hold.py"))
    before = _wait_started(runner, "redis-server", "nats-server", "toxiproxy-server",
                           marker="HOLDING")
    _signal_and_assert_stopped(runner, before)


@_needs("redis-server", "nats-server")
def test_sigterm_stops_deployment_service_processes(start: Callable[..., Runner]) -> None:
    runner = start(*_conformance("--adapter", "nats", "--suite", "deployment"))
    before = _wait_started(runner, "reference_services.deploy", "redis-server", "nats-server")
    _signal_and_assert_stopped(runner, before)


@_needs("rabbitmq-server", "nats-server", "epmd")
def test_sigkill_of_conformance_run_takes_its_processes_along(
        start: Callable[..., Runner]) -> None:
    runner = start(*_conformance("--adapter", "amqp", "--adapter", "nats", "--suite",
                                 "contract"))
    before = _wait_started(runner, "beam.smp", "nats-server", "epmd",
                           marker="test_")
    _signal_and_assert_stopped(runner, before, signal.SIGKILL, -signal.SIGKILL, within=10.0)


@_needs("redis-server", "nats-server", "toxiproxy-server")
def test_sigkill_takes_faults_service_processes_along(start: Callable[..., Runner]) -> None:
    runner = start(*_conformance("--adapter", "queue_bridge:nats", "--suite", "faults",
                                 "-k", "service"))
    before = _wait_started(runner, "reference_services.deploy.faultwork", "nats-server")
    _signal_and_assert_stopped(runner, before, signal.SIGKILL, -signal.SIGKILL, within=10.0)


@_needs("redis-server")
def test_keep_services_then_harness_down(start: Callable[..., Runner]) -> None:
    runner = start(*_conformance("--adapter", "queue_bridge:redis", "--suite", "contract",
                                 "--keep-services", "-k", "delayed_job"))
    runner.proc.wait(300)
    out = runner.output()
    kept = runner.processes()
    assert any("redis-server" in c for c in kept.values()), f"redis not kept: {kept}\n{out}"
    line = next((ln for ln in out.splitlines() if "harness down" in ln), "")
    assert line, out[-3000:]
    run_id = line.split()[-1]
    env = {**os.environ, "TMPDIR": str(runner.tmpdir)}
    down = subprocess.run([str(BIN / "harness"), "down", run_id], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert down.returncode == 0 and f"run {run_id}: stopped" in down.stdout, down
    assert wait_until(lambda: not runner.processes(), 5.0), runner.processes()
    assert not runner.temp_entries(), runner.temp_entries()


def test_next_run_reaps_a_run_whose_runner_and_reaper_both_died(tmp_path: Path) -> None:
    """Runner and reaper SIGKILLed together (or a reboot): the next run's start reaps the
    leftover process and temp dir; a kept run and a live run are left alone."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in STRIP}
    env["TMPDIR"] = str(tmpdir)
    script = ("import os, signal, time; from harness import run; r = run.begin(); "
              "open(os.environ['OUT'], 'w').write(r.id + ' ' + str(r._reaper.pid)); "
              "time.sleep(600)")

    def a_run(name: str) -> tuple[subprocess.Popen[bytes], str, int, subprocess.Popen[bytes]]:
        out = tmp_path / f"{name}.id"
        runner = subprocess.Popen([sys.executable, "-c", script], env={**env, "OUT": str(out)},
                                  start_new_session=True)
        assert wait_until(lambda: out.exists() and out.read_text(), 30.0), name
        run_id, reaper = out.read_text().split()
        # a "broker" of the run: carries the run's marker, like every child of a run
        child = subprocess.Popen(["sleep", "600"], env={**env, "HARNESS_RUN_ID": run_id},
                                 start_new_session=True)
        return runner, run_id, int(reaper), child

    old_empty, new_empty = tmpdir / "harness-run-oldempty", tmpdir / "harness-run-newempty"
    old_empty.mkdir()
    new_empty.mkdir()
    os.utime(old_empty, (time.time() - 3600, time.time() - 3600))
    dead, dead_id, dead_reaper, orphan = a_run("dead")
    live, live_id, _, live_child = a_run("live")
    kept, kept_id, kept_reaper, kept_child = a_run("kept")
    try:
        (tmpdir / f"harness-run-{kept_id}" / "kept.json").write_text(
            json.dumps({"run": kept_id, "pid": kept.pid, "hooks": []}))
        for pid in (dead_reaper, dead.pid, kept_reaper, kept.pid):  # reapers first
            os.kill(pid, signal.SIGKILL)
        dead.wait(10)
        kept.wait(10)
        assert wait_until(lambda: not procs.is_alive(dead_reaper), 10.0)
        assert procs.is_alive(orphan.pid)  # nobody reaped it: runner and reaper are gone
        nxt = subprocess.run([sys.executable, "-c", "from harness import run; run.begin()"],
                             env=env, timeout=60, check=False)
        assert nxt.returncode == 0
        assert wait_until(lambda: orphan.poll() is not None, 5.0), "orphan not reaped"
        assert not (tmpdir / f"harness-run-{dead_id}").exists()
        assert live_child.poll() is None and (tmpdir / f"harness-run-{live_id}").exists()
        assert kept_child.poll() is None and (tmpdir / f"harness-run-{kept_id}").exists()
        assert not old_empty.exists() and new_empty.exists()  # an hour old and empty: gone
    finally:
        for proc in (dead, live, kept, orphan, live_child, kept_child):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


STARTING = '''
import os, sys, threading, time
from harness import run

r = run.begin()
store = r.temp_dir / "harness-svc" / "jetstream"


def keep_starting() -> None:
    # a broker being (re)started while the signal arrives: each child creates its store
    # inside the run's temp dir at once, as nats-server does with its JetStream dir
    while True:
        try:
            run.popen(["sh", "-c", f"mkdir -p {store}; exec sleep 600"])
        except RuntimeError:
            return
        time.sleep(0.005)


threading.Thread(target=keep_starting, daemon=True).start()
print("STARTING", flush=True)
time.sleep(600)
'''


def test_sigterm_while_services_start_leaves_no_temp_dir(start: Callable[..., Runner],
                                                         tmp_path: Path) -> None:
    """A child started by another thread while the signal handler runs (a broker's start
    or restart) must not outlive the run or recreate its temp dir after its removal."""
    script = tmp_path / "starting.py"
    script.write_text(STARTING)
    runner = start(sys.executable, str(script))
    before = _wait_started(runner, "sleep 600", marker="STARTING")
    _signal_and_assert_stopped(runner, before)


BUSY_ELSEWHERE = '''
import threading, time
from harness import run

r = run.begin()
run.popen(["sleep", "600"])
threading.Thread(target=threading.Event().wait, daemon=True).start()
print("STARTED", flush=True)
time.sleep(600)  # blocked in a system call: wakes only for a signal sent to this thread
'''


def _blocks(pid: int, tid: int, sig: int) -> bool:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    mask = int(status.split("SigBlk:", 1)[1].split()[0], 16)
    return bool(mask >> (sig - 1) & 1)


def _tgkill(pid: int, tid: int, sig: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, pid, tid, sig) != 0:  # SYS_tgkill on x86-64
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {sig})")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_taken_by_another_thread_still_stops_the_run(
        start: Callable[..., Runner], tmp_path: Path, sig: int, code: int) -> None:
    """The kernel gives a process's signal to any of its threads; a main thread asleep in
    a system call never runs Python's handler then. The run must stop all the same (seen
    before the signal watcher: 5 % of SIGTERMs under load left the runner up for good)."""
    script = tmp_path / "busy_elsewhere.py"
    script.write_text(BUSY_ELSEWHERE)
    runner = start(sys.executable, str(script))
    before = _wait_started(runner, "sleep 600", marker="STARTED")
    pid = runner.proc.pid
    others = [tid for tid in map(int, os.listdir(f"/proc/{pid}/task"))
              if tid != pid and not _blocks(pid, tid, sig)]
    assert others, f"no thread but the main one takes {sig}: {os.listdir(f'/proc/{pid}/task')}"
    started = time.monotonic()
    _tgkill(pid, others[0], sig)
    try:
        got: int | None = runner.proc.wait(30)
    except subprocess.TimeoutExpired:
        got = None
    assert got == code, (f"exit {got} (want {code}) {time.monotonic() - started:.2f} s after "
                         f"{signal.Signals(sig).name} to thread {others[0]}\n"
                         f"{runner.output()[-3000:]}")
    assert wait_until(lambda: not runner.processes(), 5.0, 0.1), runner.processes()
    assert not runner.temp_entries(), sorted(runner.temp_entries())
    assert before


FORKS = '''
import os, signal, time
from harness import run

run.begin()
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
print(f"CHILD {child}", flush=True)
_, status = os.waitpid(child, 0)
print(f"CHILD EXIT {os.waitstatus_to_exitcode(status)}", flush=True)
time.sleep(2 * 0.5 + 1)  # twice the watcher's grace, and then some
print("SURVIVED", flush=True)
'''


def test_a_forked_childs_signal_does_not_stop_the_parent(start: Callable[..., Runner],
                                                          tmp_path: Path) -> None:
    """A child forked without exec inherits Python's wakeup fd: its signals must not
    reach the parent's signal watcher and stop the parent's run."""
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    runner = start(sys.executable, str(script))
    assert wait_until(lambda: "CHILD " in runner.output(), 60, 0.1), runner.output()
    child = int(runner.output().split("CHILD ", 1)[1].split()[0])
    os.kill(child, signal.SIGTERM)
    try:
        got: int | None = runner.proc.wait(30)
    except subprocess.TimeoutExpired:
        got = None
    out = runner.output()
    assert "CHILD EXIT 143" in out, out
    assert got == 0 and "SURVIVED" in out, f"parent exit {got}\n{out}"
