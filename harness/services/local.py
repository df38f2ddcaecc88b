"""Local provider: real broker processes started with mirakuru on free ports."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import random
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any

import port_for
from mirakuru import SimpleExecutor, TCPExecutor
from mirakuru.base import ENV_UUID
from mirakuru.exceptions import AlreadyRunning, ExecutorError

from harness import procs, run
from harness.errors import ServiceStartError, ServiceUnavailable
from harness.services.base import (
    START_ATTEMPTS,
    Provider,
    ServiceHandle,
    port_taken,
    tcp_open,
)
from harness.services.local_recipes import (
    RECIPES,
    Recipe,
    dapr_redis,
    epmd,
    local_version,
    which,
)
from harness.services.spec import ServiceSpec, get_spec

START_TIMEOUT = {"rabbitmq": 120.0}
DEFAULT_START_TIMEOUT = 45.0
STOP_TIMEOUT = 30.0
#: how long pause() waits for every thread of a SIGSTOPped broker to stop
PAUSE_TIMEOUT_S = 5.0

log = logging.getLogger("harness.services")
_ports_lock = threading.Lock()
_ports_given: set[int] = set()
_live_handles: weakref.WeakSet[LocalHandle] = weakref.WeakSet()


@functools.cache
def _pickable_ports() -> tuple[int, ...]:
    """port_for's good ports (below the kernel's ephemeral range); under pytest-xdist only
    this worker's share (port % workers == worker index), so that two workers never pick
    the same port at the same time."""
    ports = sorted(port_for.available_good_ports())
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1:
        index, workers = int(worker[2:]) % int(count), int(count)
        ports = [p for p in ports if p % workers == index]
    return tuple(ports)


def free_port() -> int:
    """A free TCP port never handed out before by this process. Free only when asked:
    another process may take it before the broker binds it (a first start retries)."""
    pool = _pickable_ports()
    with _ports_lock:
        for _ in range(200):
            port = random.choice(pool)
            if port not in _ports_given and not port_for.port_is_used(port):
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port found")


class PortTaken(ExecutorError):
    """The process said that a port it was given is taken by another process."""

    def __init__(self, executor: _Executor, marker: str) -> None:
        super().__init__(executor)
        self.marker = marker

    def __str__(self) -> str:
        return (f"a port it was given is taken by another process ({self.marker!r} in "
                f"{os.path.basename(self.executor._log_path)})")  # type: ignore[attr-defined]


def _marker() -> str:
    # letters only: mirakuru's atexit kills processes whose marker contains our pid
    return "harness-" + "".join(random.choices(string.ascii_lowercase, k=20))


class _Executor(TCPExecutor):
    """TCPExecutor whose readiness also needs a predicate and a log marker."""

    def __init__(self, recipe: Recipe, port: int, log_path: Path, marker: str,
                 timeout: float) -> None:
        super().__init__(recipe.command, host="127.0.0.1", port=port, envvars=recipe.env,
                         timeout=timeout, sleep=0.05, stdin=subprocess.DEVNULL)
        self._uuid = marker
        self._recipe = recipe
        self._log_path = log_path
        self._log: IO[Any] | None = None
        self._offset = 0

    @property
    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs = super()._popen_kwargs
        kwargs["env"] = run.child_env(kwargs["env"])
        kwargs["preexec_fn"] = run.child_preexec()
        return kwargs

    def start(self) -> _Executor:
        self._log = open(self._log_path, "a")
        self._offset = self._log.tell()
        self._stdout = self._log
        self._stderr = subprocess.STDOUT
        try:
            if self.pre_start_check():
                raise AlreadyRunning(self)
            # forked in the spawner thread: the parent-death signal is tied to the thread
            run.spawn(lambda: SimpleExecutor.start(self))
            if self.process is not None:
                run.current().track(self.process.pid)
            self.wait_for(self.check_subprocess)
        except BaseException:
            self._close_log()
            raise
        return self

    def output(self) -> str:
        """What the process wrote to its log since this start began."""
        try:
            with open(self._log_path, errors="replace") as fh:
                fh.seek(self._offset)
                return fh.read()
        except OSError:
            return ""

    def check_subprocess(self) -> bool:
        # a taken port fails the start at once: rabbitmq and toxiproxy keep running
        taken = port_taken(self.output())
        if taken:
            raise PortTaken(self, taken)
        return super().check_subprocess()

    def after_start_check(self) -> bool:
        if not super().after_start_check():
            return False
        marker = self._recipe.ready_marker
        if marker and marker not in self.output():
            return False
        return self._recipe.ready()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _clear_process(self) -> None:
        super()._clear_process()
        self._close_log()

    @property
    def pgid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class LocalHandle(ServiceHandle):
    """A service running as local processes in their own process group."""

    def __init__(self, spec: ServiceSpec, data_dir: Path) -> None:
        super().__init__(spec, "127.0.0.1", 0, local_version(spec.name), "local",
                         data_dir / f"{spec.name}.log")
        self.data_dir = data_dir
        self.ports: dict[str, int] = {}
        self.keep = False
        self._marker = _marker()
        self._epmd_marker = _marker()  # independent: mirakuru matches markers as substrings
        self._main: _Executor | None = None
        self._epmd: _Executor | None = None
        self._paused = False
        self._lock = threading.RLock()
        self._attempt = 0  # failed first starts so far
        self._note = ""  # written at the top of the next attempt's log

    # -- lifecycle -------------------------------------------------------------------------
    def _build(self) -> None:
        port = free_port()
        recipe = RECIPES[self.name](self.data_dir, port, free_port)
        timeout = START_TIMEOUT.get(self.name, DEFAULT_START_TIMEOUT)
        if self.name == "rabbitmq":
            ep = epmd(free_port())
            recipe.env["ERL_EPMD_PORT"] = str(ep.ports["epmd"])
            self._epmd = _Executor(ep, ep.ports["epmd"], self.data_dir / "epmd.log",
                                   self._epmd_marker, 15.0)
            recipe.ports["epmd"] = ep.ports["epmd"]
        elif self.name == "dapr":
            # the sidecar's Redis rides in the companion slot: started first, kept over
            # daprd restarts (state survives them), killed by stop()
            companion = dapr_redis(self.data_dir, recipe.ports["redis"])
            self._epmd = _Executor(companion, recipe.ports["redis"],
                                   self.data_dir / "dapr-redis.log", self._epmd_marker, 15.0)
        self.port = port
        self.ports = dict(recipe.ports)
        self._main = _Executor(recipe, port, self.log_path or Path(os.devnull), self._marker,
                               timeout)

    def _start_processes(self) -> None:
        assert self._main is not None
        if self._note and self.log_path is not None:
            with contextlib.suppress(OSError), open(self.log_path, "a") as fh:
                fh.write(self._note)
            self._note = ""
        try:
            if self._epmd is not None and not self._epmd.running():
                self._epmd.start()
            self._main.start()
        except (ExecutorError, OSError) as exc:
            raise ServiceStartError(self.name, f"{type(exc).__name__}: {exc}",
                                    str(self.log_path)) from exc

    def start(self) -> None:
        """Start (first time on fresh ports, later on the same ports and data)."""
        with self._lock:
            if self._main is None:
                self._first_start()
            else:
                self._start_processes()
            _live_handles.add(self)

    def _first_start(self) -> None:
        """Start on freshly picked ports; when the broker says another process took one of
        them, again on new ones (START_ATTEMPTS in all). Other failures raise at once."""
        for attempt in range(1, START_ATTEMPTS + 1):
            self._build()
            try:
                self._start_processes()
                return
            except ServiceStartError as exc:
                taken = self._port_taken(exc)
                ports = dict(self.ports)
                self._discard(keep_log=taken is None or attempt == START_ATTEMPTS)
                if taken is None:
                    raise
                if attempt == START_ATTEMPTS:
                    raise ServiceStartError(
                        self.name, f"{exc.reason}; ports taken on each of {attempt} attempts, "
                        "freshly picked each time", exc.log_path) from exc.__cause__
                note = (f"{self.name}: start attempt {attempt} of {START_ATTEMPTS} failed: a "
                        f"port was taken by another process ({taken}; ports {ports}); "
                        "retrying on freshly picked ports")
                log.warning(note)
                self._note = f"harness: {note}\n"

    def _port_taken(self, exc: ServiceStartError) -> str | None:
        """What says that another process took one of our ports (None if nothing does)."""
        cause = exc.__cause__
        if isinstance(cause, PortTaken):
            return cause.marker
        if isinstance(cause, AlreadyRunning):
            return f"port {getattr(cause.executor, 'port', '?')} already accepted connections"
        for ex in (self._epmd, self._main):
            found = port_taken(ex.output()) if ex is not None else None
            if found:
                return found
        return None

    def _discard(self, keep_log: bool) -> None:
        """Kill everything of a failed first start so that it can be rebuilt; its logs
        move aside (``<name>.attempt<n>.log``) unless keep_log (the error names them)."""
        # not waiting for the port to close: another process may be the one listening there
        self._halt(signal.SIGKILL, wait_port=False)
        if self._epmd is not None:
            with contextlib.suppress(ExecutorError, OSError):
                self._epmd.kill()
        logs = [ex._log_path for ex in (self._main, self._epmd) if ex is not None]
        self._main = self._epmd = None
        self._attempt += 1
        if keep_log:
            return
        for path in logs:
            with contextlib.suppress(OSError):
                path.rename(path.with_suffix(f".attempt{self._attempt}.log"))

    def _halt(self, sig: int | None, wait_port: bool = True) -> None:
        """Stop the main process (SIGKILL when sig is SIGKILL, else graceful) and wait
        until every process of it is gone and (when wait_port) its port is closed."""
        ex = self._main
        if ex is None:
            return
        self._resume_group()
        doomed = procs.pids_with_env(ENV_UUID, self._marker)
        if ex.pgid is not None:
            doomed |= procs.pids_in_group(ex.pgid)
        if sig == signal.SIGKILL:
            ex.kill()
        else:
            with contextlib.suppress(ExecutorError, OSError):
                ex.stop()
        doomed |= procs.pids_with_env(ENV_UUID, self._marker)
        for pid in doomed:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not any(procs.is_alive(p) for p in doomed) and not (
                    wait_port and tcp_open(self.host, self.port)):
                return
            time.sleep(0.02)
        raise ServiceStartError(self.name, f"processes {sorted(doomed)} or port {self.port} "
                                "still alive after stop", str(self.log_path))

    def restart(self, kill: bool = True) -> None:
        with self._lock:
            self._halt(signal.SIGKILL if kill else signal.SIGTERM)
            self._start_processes()

    def kill(self) -> None:
        with self._lock:
            self._halt(signal.SIGKILL)

    def stop(self) -> None:
        with self._lock:
            self._halt(signal.SIGTERM)
            if self._epmd is not None:
                with contextlib.suppress(ExecutorError, OSError):
                    self._epmd.kill()
            _live_handles.discard(self)
            if not os.environ.get("HARNESS_KEEP_DIRS"):
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def detach(self) -> None:
        """Forget the processes so that they outlive this Python process (--keep-services)."""
        with self._lock:
            self.keep = True
            for ex in (self._main, self._epmd):
                if ex is not None:
                    ex._close_log()
                    ex.process = None
            _live_handles.discard(self)

    # -- pause ----------------------------------------------------------------------------
    def _signal_group(self, sig: int) -> int:
        """Send ``sig`` to the main process's group; returns the group id."""
        pgid = self._main.pgid if self._main else None
        if pgid is None:
            raise ServiceStartError(self.name, "not running")
        os.killpg(pgid, sig)
        return pgid

    def _resume_group(self) -> None:
        if self._paused:
            with contextlib.suppress(OSError, ServiceStartError):
                self._signal_group(signal.SIGCONT)
            self._paused = False

    def pause(self) -> None:
        """SIGSTOP the broker's process group; returns once every one of its threads is
        stopped (until then a thread still running could answer a request sent after
        pause returned: robustness.burst.paused_broker saw one answered, once, in CI)."""
        with self._lock:
            pgid = self._signal_group(signal.SIGSTOP)
            self._paused = True
            deadline = time.monotonic() + PAUSE_TIMEOUT_S
            while procs.running_threads_in_group(pgid):
                if time.monotonic() > deadline:
                    raise ServiceStartError(
                        self.name, f"still running {PAUSE_TIMEOUT_S:.0f} s after SIGSTOP"
                    )
                time.sleep(0.001)

    def resume(self) -> None:
        with self._lock:
            self._signal_group(signal.SIGCONT)
            self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    # -- inspection ------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._main is not None and self._main.running() and tcp_open(self.host, self.port)

    def persisted(self, token: bytes, pattern: str = "**/*") -> bool:
        """True when a data file matching pattern (never the logs) contains token: a way
        to wait until a write (queue declaration, queued message) is on disk before a
        SIGKILL. RabbitMQ metadata: pattern "mnesia/*/*" (not the message store)."""
        for path in self.data_dir.glob(pattern):
            if path.is_file() and path.suffix != ".log":
                try:
                    if token in path.read_bytes():
                        return True
                except OSError:
                    continue
        return False

    @property
    def pid(self) -> int | None:
        """Pid (= process group id) of the main process."""
        return self._main.pgid if self._main else None

    def process_ids(self) -> set[int]:
        """Every live process of this service (its groups and env-marked descendants)."""
        found = procs.pids_with_env(ENV_UUID, self._marker)
        found |= procs.pids_with_env(ENV_UUID, self._epmd_marker)
        for ex in (self._main, self._epmd):
            if ex is not None and ex.pgid is not None:
                found |= procs.pids_in_group(ex.pgid)
        return found


class LocalProvider(Provider):
    """Starts services as local processes (binaries from the Debian packages)."""

    name = "local"

    def __init__(self, reason: str = "", base_dir: str | None = None) -> None:
        super().__init__(reason)
        self.base_dir = base_dir or os.environ.get("HARNESS_TMPDIR")

    def unavailable_reason(self, service_name: str) -> str | None:
        spec = get_spec(service_name)
        missing = [b for b in self._binaries(spec) if which(b) is None]
        if missing:
            return f"{', '.join(missing)} not found"
        return None

    @staticmethod
    def _binaries(spec: ServiceSpec) -> list[str]:
        if spec.name == "rabbitmq":
            return [spec.binary, "epmd"]
        if spec.name == "dapr":
            return [spec.binary, "redis-server"]
        return [spec.binary]

    def start(self, service_name: str) -> LocalHandle:
        spec = get_spec(service_name)
        reason = self.unavailable_reason(service_name)
        if reason:
            raise ServiceUnavailable(service_name, f"local provider: {reason}")
        base = self.base_dir or str(run.current().temp_dir)  # removed when the run ends
        run.current().refuse_if_stopping()  # a signal is removing that dir right now
        Path(base).mkdir(parents=True, exist_ok=True)
        data_dir = Path(tempfile.mkdtemp(prefix=f"harness-{service_name}-", dir=base))
        if self.base_dir and not os.environ.get("HARNESS_KEEP_DIRS"):
            # outside the run's temp dir: remove it also when the run is signalled
            run.current().on_cleanup(lambda: shutil.rmtree(data_dir, ignore_errors=True),
                                     f"remove {data_dir}")
        handle = LocalHandle(spec, data_dir)
        handle.start()
        return handle


@atexit.register
def _stop_leftovers() -> None:
    for handle in list(_live_handles):
        if not handle.keep:
            with contextlib.suppress(Exception):
                handle.stop()
