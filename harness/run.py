"""The run: one id per `conformance run`, `harness up|doctor` or pytest session, the
processes and files it owns, and how all of it ends (normally, on a signal, or by a
reaper when the runner itself is killed).

Every process a run starts carries ``HARNESS_RUN_ID=<id>`` in its environment
(inherited from ``os.environ``, so the brokers' own children carry it too), and the
processes started through :func:`child_env` also ``HARNESS_RUN_PARENT=<pid>``.
Temporary files of the run live in one directory, :attr:`Run.temp_dir`
(``<tmp>/harness-run-<id>``). Other parts of the harness (the docker provider)
register what else has to go with :meth:`Run.on_cleanup` (in this process) and
:func:`register_reap_hook` (also run by the reaper and by ``harness down``), and
label what they create with :meth:`Run.labels`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any

from harness import procs

RUN_ENV = "HARNESS_RUN_ID"
PARENT_ENV = "HARNESS_RUN_PARENT"
ROOT_ENV = "HARNESS_RUN_ROOT"
TEMP_PREFIX = "harness-run-"
KEPT_FILE = "kept.json"
OWNER_FILE = "owner.json"
SESSIONS_FILE = "sessions"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
REAP_TIMEOUT_S = 5.0
CLEANUP_TIMEOUT_S = 4.0
EMPTY_DIR_AGE_S = 600.0

_PR_SET_PDEATHSIG = 1
try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
    _prctl: Any = _libc.prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]
except (OSError, AttributeError):  # not Linux: only the reaper and the signal handlers
    _prctl = None

# "module:function" names called with the run id when a run is reaped (by the signal
# handler, the reaper process or `harness down`); the docker provider adds its own.
_REAP_HOOKS: list[str] = []


def register_reap_hook(target: str) -> None:
    """Call ``module:function(run_id)`` whenever a run is reaped (also in the reaper
    process, so it must be importable and work without the runner's state)."""
    if ":" not in target:
        raise ValueError(f"reap hook must be 'module:function', got {target!r}")
    if target not in _REAP_HOOKS:
        _REAP_HOOKS.append(target)
        if _current is not None and _current.pid == os.getpid():
            _current.write_hooks()


def _pid_start(pid: int) -> str | None:
    """The start time of pid in clock ticks since boot (tells a reused pid apart)."""
    fields = procs._stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def run_alive(labels: dict[str, str]) -> bool | None:
    """Whether the run that put :meth:`Run.labels` on something is still alive
    (None: another host, cannot tell)."""
    if labels.get("harness.run.host") != socket.gethostname():
        return None
    try:
        pid = int(labels.get("harness.run.pid", ""))
    except ValueError:
        return None
    return procs.is_alive(pid) and _pid_start(pid) == labels.get("harness.run.start")


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        fields = procs._stat_fields(pid)
        if not fields:
            break
        pid = int(fields[1])
    return out


def _session_of(pid: int) -> int | None:
    fields = procs._stat_fields(pid)
    return int(fields[3]) if fields and fields[0] not in ("Z", "X") else None


def read_sessions(temp_dir: Path | None) -> dict[int, str]:
    """The sessions a run recorded (leader pid -> its start time)."""
    out: dict[int, str] = {}
    if temp_dir is None:
        return out
    with contextlib.suppress(OSError):
        for line in (temp_dir / SESSIONS_FILE).read_text().splitlines():
            pid, _, start = line.partition(" ")
            if pid.isdigit():
                out[int(pid)] = start
    return out


def session_members(sessions: dict[int, str]) -> set[int]:
    """Live processes in the given sessions. A leader pid alive with another start time
    was reused, so its old session is empty (the kernel reuses no pid still used as a
    session id) and is skipped."""
    wanted = {sid for sid, start in sessions.items()
              if not procs.is_alive(sid) or _pid_start(sid) == start}
    if not wanted:
        return set()
    return {pid for pid in procs.all_pids() if _session_of(pid) in wanted}


def run_pids(run_id: str, parent: int | None = None, temp_dir: Path | None = None,
             sessions: dict[int, str] | None = None) -> set[int]:
    """Live processes of a run, never this process or its ancestors: those with the
    environment marker (with parent: started by that pid's :func:`child_env`) and
    every member of the run's recorded sessions (a process that rewrites its
    environment block, like redis-server's process title, still is in its session)."""
    found = procs.pids_with_env(RUN_ENV, run_id)
    if parent is not None:
        found &= procs.pids_with_env(PARENT_ENV, str(parent))
    tracked = dict(sessions or {})
    if parent is None:
        tracked.update(read_sessions(temp_dir))
    found |= session_members(tracked)
    return found - _ancestors()


def kill_run_processes(run_id: str, parent: int | None = None, temp_dir: Path | None = None,
                       sessions: dict[int, str] | None = None,
                       timeout: float = REAP_TIMEOUT_S, below: int | None = None,
                       spare: frozenset[int] = frozenset()) -> set[int]:
    """SIGKILL every process of the run until none is left (children started while
    this runs are caught by the next pass); returns the pids killed. With ``below``,
    every descendant of that pid counts too (but ``spare``): a process that rewrote its
    environment block (an xdist worker titled by setproctitle) carries no marker."""
    killed: set[int] = set()
    sessions = {**read_sessions(temp_dir), **(sessions or {})} if parent is None else sessions
    deadline = time.monotonic() + timeout
    while True:
        pids = run_pids(run_id, parent, sessions=sessions)
        if below is not None:
            pids |= procs.descendants(below) - spare - _ancestors()
        if not pids or time.monotonic() > deadline:
            return killed
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)  # a stopped process dies only once continued
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.02)


def run_hooks(run_id: str, hooks: list[str] | None = None) -> list[str]:
    """Call the reap hooks for run_id; returns the errors (one line each)."""
    errors = []
    for target in hooks if hooks is not None else list(_REAP_HOOKS):
        module, _, func = target.partition(":")
        try:
            getattr(importlib.import_module(module), func)(run_id)
        except Exception as exc:
            errors.append(f"{target}: {type(exc).__name__}: {exc}")
    return errors


def reap(run_id: str, temp_dir: Path | None, hooks: list[str] | None = None) -> dict[str, Any]:
    """Remove every trace of a run: its processes, what the hooks own, its temp dir."""
    killed = kill_run_processes(run_id, temp_dir=temp_dir)
    errors = run_hooks(run_id, hooks)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return {"run": run_id, "killed": sorted(killed), "errors": errors}


def _no_escape() -> None:
    """preexec_fn: SIGKILL this child when the thread that started it ends (the spawner
    thread lives as long as the runner), and start a new session (own process group)."""
    os.setsid()
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the runner died between fork and prctl
        os._exit(137)


def child_preexec() -> Callable[[], None]:
    """The preexec_fn for every child of a run: own session, and the parent-death signal
    unless the run keeps its services (``Run.tie_children`` False: --keep-services).
    The signal is tied to the forking thread: fork in :func:`spawn`'s thread."""
    return _no_escape if current().tie_children else os.setsid


class _Spawner:
    """One thread that lives as long as the process and makes every Popen call, because
    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = 0
        # held while a job runs: close() waits for a fork in flight (its child is then
        # visible to the kill that follows)
        self._busy = threading.Lock()
        self._closed_in = 0  # pid whose run is stopping: it starts no more children

    def close(self, timeout: float = 2.0) -> None:
        """No new child from now on (the run is being stopped by a signal): later calls
        raise, and a job already forking is waited for. Safe in a signal handler (no
        wait on a lock the interrupted thread may hold, only on the spawner's own)."""
        self._closed_in = os.getpid()
        if self._thread is not None and self._thread is not threading.current_thread():
            if self._busy.acquire(timeout=timeout):
                self._busy.release()

    def _refuse(self) -> None:
        if self._closed_in == os.getpid():
            raise RuntimeError("the run is being stopped: no new process is started")

    def call(self, fn: Callable[[], Any]) -> Any:
        self._refuse()
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[Any] = Future()
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._jobs = []
                self._thread = threading.Thread(target=self._loop, name="harness-spawner",
                                                daemon=True)
                self._thread.start()
            self._jobs.append((fn, fut))
            self._wake.notify()
        return fut.result()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    self._wake.wait()
                fn, fut = self._jobs.pop(0)
                self._busy.acquire()
            try:
                self._refuse()
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
            finally:
                self._busy.release()


_spawner = _Spawner()


def spawn(fn: Callable[[], Any]) -> Any:
    """Run fn (which starts a child with :func:`child_preexec`) in the spawner thread."""
    return _spawner.call(fn)


def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen for a child of the run: run markers in its environment, own
    session, SIGKILL when the runner dies."""
    kwargs["env"] = child_env(kwargs.get("env"))
    kwargs["preexec_fn"] = child_preexec()
    kwargs.pop("start_new_session", None)
    proc: subprocess.Popen[Any] = spawn(lambda: subprocess.Popen(args, **kwargs))
    current().track(proc.pid)
    return proc


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """env (default os.environ) plus the run's markers."""
    out = dict(os.environ if env is None else env)
    out[RUN_ENV] = current().id
    out[PARENT_ENV] = str(os.getpid())
    return out


class Run:
    """One run: its id, its temp dir, what to clean up when it ends."""

    def __init__(self, run_id: str, owner: bool) -> None:
        self.id = run_id
        self.owner = owner
        self.pid = os.getpid()
        self.temp_dir = Path(tempfile.gettempdir()) / f"{TEMP_PREFIX}{run_id}"
        if owner:  # members (xdist workers) use the owner's, created when needed
            self.temp_dir.mkdir(exist_ok=True)
        self.kept = False
        self.ended = False
        self.begun = False
        # False when services must outlive the runner on purpose (--keep-services):
        # children then get no parent-death signal (it cannot be taken back later)
        self.tie_children = True
        self._cleanups: dict[int, tuple[str, Callable[[], None]]] = {}
        self._next = 0
        # reentrant: the signal handler runs in the main thread, which may hold it
        self._lock = threading.RLock()
        self._reaper: subprocess.Popen[bytes] | None = None
        self.stopper = ""  # who stops the run on a signal: "main thread" or "signal watcher"
        self._stop_lock = threading.RLock()  # reentrant: taken in the main thread's handler
        self.sessions: dict[int, str] = {}  # the session leaders this process started
        if owner:
            self._write_owner()

    def __repr__(self) -> str:
        return f"<Run {self.id} pid {self.pid} {'owner' if self.owner else 'member'}>"

    # -- what other modules use ----------------------------------------------------------
    def labels(self) -> dict[str, str]:
        """Labels for things of this run outside this host's process table (containers)."""
        return {"harness.run": self.id, "harness.run.pid": str(self.pid),
                "harness.run.start": _pid_start(self.pid) or "",
                "harness.run.host": socket.gethostname()}

    def on_cleanup(self, fn: Callable[[], None], name: str = "") -> int:
        """Call fn when the run ends or is signalled (newest first); returns a token."""
        with self._lock:
            self._next += 1
            self._cleanups[self._next] = (name or getattr(fn, "__qualname__", "?"), fn)
            return self._next

    def cancel_cleanup(self, token: int) -> None:
        """Forget a cleanup (its thing is gone already)."""
        with self._lock:
            self._cleanups.pop(token, None)

    def claim_stop(self, by: str) -> bool:
        """True when ``by`` is the first to stop the run on a signal (and now does)."""
        with self._stop_lock:
            if self.stopper:
                return False
            self.stopper = by
            return True

    @property
    def _signalled(self) -> bool:
        return bool(self.stopper)

    def refuse_if_stopping(self) -> None:
        """Raise when a signal is stopping the run (nothing new may appear in its temp dir)."""
        if self._signalled and self.pid == os.getpid():
            raise RuntimeError(f"run {self.id} is being stopped: nothing new is started")

    def track(self, pid: int) -> None:
        """Record a child that leads its own session (see :func:`child_preexec`): its
        whole session belongs to the run, also for the reaper and `harness down`."""
        start = _pid_start(pid) or ""
        with self._lock:
            self.sessions[pid] = start
        if not self._signalled:  # being stopped: the temp dir is going, never recreate it
            self.temp_dir.mkdir(exist_ok=True)
        with contextlib.suppress(OSError), open(self.temp_dir / SESSIONS_FILE, "a") as fh:
            fh.write(f"{pid} {start}\n")

    def mkdtemp(self, prefix: str) -> Path:
        """A new directory inside the run's temp dir."""
        self.refuse_if_stopping()
        self.temp_dir.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.temp_dir))

    # -- ending --------------------------------------------------------------------------
    def _run_cleanups(self, timeout: float) -> list[str]:
        with self._lock:
            jobs = sorted(self._cleanups.items(), reverse=True)
            self._cleanups.clear()
        errors: list[str] = []

        def one(name: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=one, args=job, daemon=True) for _, job in jobs]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        errors += [f"cleanup {t.name} still running after {timeout:.0f} s"
                   for t in threads if t.is_alive()]
        return errors

    def end(self, keep: bool = False) -> None:
        """The normal end: cleanups, then every leftover process and the temp dir go.
        With keep (--keep-services), processes and the temp dir stay for `harness down`."""
        if self.ended:
            return
        self.ended = True
        if keep or self.kept:
            self.keep_for_down()
        else:
            self._run_cleanups(CLEANUP_TIMEOUT_S * 4)
            if self.owner:
                reap(self.id, self.temp_dir)
            else:
                kill_run_processes(self.id, parent=os.getpid(), sessions=self.sessions)
        self._stop_reaper(reap_now=False)

    def keep_for_down(self) -> None:
        """Record that the run's services stay up on purpose (found by `harness down`)."""
        self.kept = True
        self.temp_dir.mkdir(exist_ok=True)
        (self.temp_dir / KEPT_FILE).write_text(json.dumps(
            {"run": self.id, "pid": self.pid, "hooks": list(_REAP_HOOKS),
             "created": time.time()}))

    def stop_now(self, signum: int) -> int:
        """The signal path: kill what the run started, run cleanups with a deadline,
        remove the temp dir; returns the exit code (128 + signum)."""
        started = time.monotonic()
        # another thread may be starting (or restarting) a service right now: nothing new
        # may start once the kill below has looked, or it outlives the temp dir's removal
        # (nats-server recreated its JetStream dir under a removed temp dir)
        _spawner.close()
        spare = frozenset([self._reaper.pid] if self._reaper is not None else [])
        if self.owner:
            killed = kill_run_processes(self.id, temp_dir=self.temp_dir, sessions=self.sessions,
                                        below=os.getpid(), spare=spare)
        else:
            killed = kill_run_processes(self.id, parent=os.getpid(), sessions=self.sessions,
                                        below=os.getpid(), spare=spare)
        errors = self._run_cleanups(CLEANUP_TIMEOUT_S)
        if self.owner:
            errors += run_hooks(self.id)
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.ended = True
        self._stop_reaper(reap_now=False)
        name = signal.Signals(signum).name
        msg = (f"harness: {name}: stopped {len(killed)} processes of run {self.id} "
               f"in {time.monotonic() - started:.2f} s")
        if errors:
            msg += "; " + "; ".join(errors)
        with contextlib.suppress(Exception):
            print(msg, file=sys.stderr, flush=True)
        return 128 + signum

    # -- the reaper ----------------------------------------------------------------------
    def start_reaper(self) -> None:
        """A separate process that reaps the run when this process dies without a chance
        to clean up (SIGKILL, a crash): it waits for EOF on a pipe only we hold."""
        if self._reaper is not None or not self.owner:
            return
        env = {k: v for k, v in os.environ.items() if k not in (RUN_ENV, PARENT_ENV, ROOT_ENV)}
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "harness.reaper", self.id, str(self.pid),
             str(self.temp_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True, close_fds=True)
        self._write_owner(reaper=self._reaper.pid, reaper_start=_pid_start(self._reaper.pid))
        self.write_hooks()

    def _write_owner(self, **extra: Any) -> None:
        """Who handles this run (for :func:`reap_stale` of a later run)."""
        info = {"run": self.id, "pid": self.pid, "start": _pid_start(self.pid),
                "host": socket.gethostname(), **extra}
        with contextlib.suppress(OSError):
            (self.temp_dir / OWNER_FILE).write_text(json.dumps(info))

    def _stop_reaper(self, reap_now: bool) -> None:
        proc, self._reaper = self._reaper, None
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write(b"reap\n" if reap_now else b"exit\n")
            proc.stdin.flush()
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2.0)

    def write_hooks(self) -> None:
        """Tell the reaper which hooks to call (registered after it started)."""
        proc = self._reaper
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write(("hooks " + json.dumps(list(_REAP_HOOKS)) + "\n").encode())
            proc.stdin.flush()


_current: Run | None = None
_current_lock = threading.Lock()


def current() -> Run:
    """This process's run: the one begun here, else the one inherited from the parent
    (an xdist worker, a service process), else a new one owned by this process."""
    global _current
    with _current_lock:
        if _current is None or _current.pid != os.getpid():
            inherited = os.environ.get(RUN_ENV)
            root = os.environ.get(ROOT_ENV)
            if inherited and root == str(os.getpid()):
                _current = Run(inherited, owner=True)
            elif inherited and os.environ.get("PYTEST_XDIST_WORKER") and root == str(
                    os.getppid()):  # a worker of the runner, not a process a worker started
                _current = Run(inherited, owner=False)
            else:
                _current = _new_run()
        return _current


def _new_run() -> Run:
    run_id = uuid.uuid4().hex[:12]
    os.environ[RUN_ENV] = run_id
    os.environ[ROOT_ENV] = str(os.getpid())
    return Run(run_id, owner=True)


@atexit.register
def _end_at_exit() -> None:
    # a script that used the harness without begin()/end() leaves nothing behind either
    if _current is not None and _current.pid == os.getpid():
        _current.end()


def begin(signals: bool = True, reaper: bool = True) -> Run:
    """Begin (or join) this process's run: signal handlers, reaper. Idempotent."""
    run = current()
    if run.begun:
        return run
    run.begun = True
    if signals:
        install_signal_handlers()
    if reaper:
        run.start_reaper()
    if run.owner:
        reap_stale(exclude=run.id)
    return run


def _alive(pid: Any, start: Any) -> bool:
    return isinstance(pid, int) and procs.is_alive(pid) and _pid_start(pid) == start


def reap_stale(base: Path | None = None, exclude: str = "") -> list[str]:
    """Reap runs left behind where nobody handles them any more: owner and reaper both
    dead (e.g. both SIGKILLed, or a reboot), not kept on purpose, on this host. Their
    processes (a later run could collide with them) and temp dirs go; returns their ids."""
    base = base or Path(tempfile.gettempdir())
    reaped = []
    for empty in base.glob(f"{TEMP_PREFIX}*"):
        # an empty dir (a member's, or an older harness's) holds nothing of a live run
        with contextlib.suppress(OSError):
            if time.time() - empty.stat().st_mtime > EMPTY_DIR_AGE_S and empty.is_dir():
                empty.rmdir()  # only succeeds when empty
    for owner_file in base.glob(f"{TEMP_PREFIX}*/{OWNER_FILE}"):
        temp_dir = owner_file.parent
        try:
            info = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            continue
        run_id = str(info.get("run", ""))
        if (not run_id or run_id == exclude or temp_dir.name != TEMP_PREFIX + run_id
                or (temp_dir / KEPT_FILE).exists() or info.get("host") != socket.gethostname()
                or _alive(info.get("pid"), info.get("start"))
                or _alive(info.get("reaper"), info.get("reaper_start"))):
            continue
        reap(run_id, temp_dir)
        reaped.append(run_id)
    return reaped


def end(keep: bool = False) -> None:
    """End this process's run (see :meth:`Run.end`)."""
    if _current is not None and _current.pid == os.getpid():
        _current.end(keep=keep)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    run = _current
    if run is None or run.pid != os.getpid():
        os._exit(128 + signum)
    if not run.claim_stop("main thread"):
        if run.stopper == "main thread":  # a second signal while stopping: leave at once
            os._exit(128 + signum)
        return  # the watcher took this signal first, and stops the run
    _stop_and_exit(run, signum)


def _stop_and_exit(run: Run, signum: int) -> None:
    for sig in STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, _second_signal)
    code = run.stop_now(signum)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(code)


def _second_signal(signum: int, frame: FrameType | None) -> None:
    os._exit(128 + signum)


class _SignalWatcher:
    """Stops the run when the main thread cannot: the kernel may deliver a signal to any
    thread, and Python then runs its handler only once the main thread next executes
    bytecode, which a main thread blocked in a sleep or a wait does not do (seen: 5 %
    of SIGTERMs under load never handled). The signal's C handler writes its number to
    Python's wakeup fd, whatever the thread; this thread reads it, gives the main thread
    MAIN_THREAD_GRACE_S to start stopping, then stops the run itself."""

    MAIN_THREAD_GRACE_S = 0.5

    def __init__(self) -> None:
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._held = threading.local()  # the mask a forking thread had (hold_for_fork)

    def install(self) -> bool:
        """Take Python's wakeup fd (main thread only); False when someone else holds it
        (an asyncio loop with signal handlers): the main thread's handler alone then."""
        if self._pid != os.getpid() or self._pipe is None:
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[1], False)
            self._pid = os.getpid()
            self._thread = None
        try:
            previous = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        except (ValueError, OSError):
            return False
        if previous not in (-1, self._pipe[1]):
            signal.set_wakeup_fd(previous)
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, args=(self._pipe[0],),
                                            name="harness-signals", daemon=True)
            self._thread.start()
        return True

    def _loop(self, fd: int) -> None:
        # never the thread a stop signal is delivered to: the main thread or another is
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        seen = 0
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                run = _current
                if (signum not in STOP_SIGNALS or run is None or run.pid != os.getpid()
                        or signal.getsignal(signum) not in (_on_signal, _second_signal)):
                    continue
                seen += 1
                if seen > 1 and run.stopper:  # a second signal while stopping
                    os._exit(128 + signum)
                deadline = time.monotonic() + self.MAIN_THREAD_GRACE_S
                while not run.stopper and time.monotonic() < deadline:
                    time.sleep(0.01)
                if run.claim_stop("signal watcher"):
                    self._stop_in_thread(run, signum)

    @staticmethod
    def _stop_in_thread(run: Run, signum: int) -> None:
        # the stop starts processes' cleanups: their threads (and what they start) must
        # not inherit this thread's blocked stop signals
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            threading.Thread(target=_stop_and_exit, args=(run, signum),
                             name="harness-stop", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def hold_for_fork(self) -> None:
        """Before a fork: the forking thread takes no stop signal until the child has let
        go of the wakeup fd (a signal that reached the child before then was written to the
        parent's pipe, and its watcher stopped the parent: seen under load)."""
        if self._pipe is not None and self._pid == os.getpid():
            self._held.mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def _unhold(self) -> None:
        mask = getattr(self._held, "mask", None)
        if mask is not None:
            self._held.mask = None
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def after_fork_in_parent(self) -> None:
        """After a fork, in the parent: the stop signals as they were."""
        self._unhold()

    def after_fork_in_child(self) -> None:
        """After a fork, in the child: forget the parent's pipe, then take signals again."""
        try:
            self.forget_after_fork()
        finally:
            self._unhold()

    def forget_after_fork(self) -> None:
        """In a forked child: its signals are its own, not the parent's to read."""
        if self._pipe is None or self._pid == os.getpid():
            return
        pipe, self._pipe, self._thread = self._pipe, None, None
        try:
            previous = signal.set_wakeup_fd(-1)
        except (ValueError, OSError):  # forked by another thread: the exec ends it all
            return
        if previous not in (-1, pipe[1]):  # not ours: leave it as it was
            signal.set_wakeup_fd(previous)
            return
        for fd in pipe:  # a reused number would get the child's signal bytes
            with contextlib.suppress(OSError):
                os.close(fd)


_watcher = _SignalWatcher()
os.register_at_fork(
    before=_watcher.hold_for_fork,
    after_in_parent=_watcher.after_fork_in_parent,
    after_in_child=_watcher.after_fork_in_child,
)


def install_signal_handlers() -> bool:
    """SIGTERM, SIGINT and SIGHUP stop the run and exit 128 + signal (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    _watcher.install()
    return True


@contextlib.contextmanager
def running(signals: bool = True, reaper: bool = True) -> Iterator[Run]:
    """``with running() as run:`` begin the run, end it on the way out."""
    run = begin(signals, reaper)
    try:
        yield run
    finally:
        end(keep=run.kept)


def kept_runs(base: Path | None = None) -> list[dict[str, Any]]:
    """Runs left up with --keep-services (their kept.json), oldest first."""
    base = base or Path(tempfile.gettempdir())
    out = []
    for path in sorted(base.glob(f"{TEMP_PREFIX}*/{KEPT_FILE}")):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_text())
            info["temp_dir"] = str(path.parent)
            out.append(info)
    return sorted(out, key=lambda i: i.get("created", 0))
