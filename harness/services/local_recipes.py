"""How each service is run as a local process: command, environment, files, readiness."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RABBIT_HOME = "/usr/lib/rabbitmq"
CLI_DIST_RANGE = range(35672, 35683)


@dataclass
class Recipe:
    """A ready-to-run command for one service instance."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    ready: Callable[[], bool] = lambda: True
    ready_marker: str | None = None  # text the log must show (after the start offset)


def executable_variable(binary: str) -> str:
    """The variable naming a binary's path: ``redis-server`` -> ``HARNESS_BIN_REDIS_SERVER``."""
    return "HARNESS_BIN_" + "".join(c if c.isalnum() else "_" for c in binary).upper()


def which(binary: str) -> str | None:
    """Absolute path of a binary: ``$HARNESS_BIN_<NAME>`` if set, else the PATH (also
    /usr/sbin, /usr/local/bin, ~/.local/bin)."""
    override = os.environ.get(executable_variable(os.path.basename(binary)))
    if override:
        binary = override
    if os.path.isabs(binary):
        return binary if os.access(binary, os.X_OK) else None
    # the running interpreter's bin directory first: moto_server comes with the venv
    extra = os.pathsep.join(
        [os.path.dirname(sys.executable), "/usr/local/bin", "/usr/sbin", "/sbin",
         str(Path.home() / ".local/bin")]
    )
    return shutil.which(binary, path=os.environ.get("PATH", "") + os.pathsep + extra)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET url answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def redis_pong(port: int) -> bool:
    """True when redis answers PING with PONG (not LOADING)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _output(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout + proc.stderr


@functools.cache
def local_version(name: str) -> str:
    """The version of the locally installed service binary ('unknown' if not found)."""
    pattern = r"(\d+\.\d+\.\d+)"
    text = ""
    if name == "rabbitmq":
        text = " ".join(glob.glob(f"{RABBIT_HOME}/lib/rabbitmq_server-*"))
    elif name == "nats":
        text = _output([which("nats-server") or "nats-server", "--version"])
    elif name == "redis":
        text = _output([which("redis-server") or "redis-server", "--version"])
        pattern = r"v=(\d+\.\d+\.\d+)"
    elif name == "mosquitto":
        text = _output([which("mosquitto") or "mosquitto", "-h"])
    elif name == "toxiproxy":
        path = which("toxiproxy-server")
        if path:
            data = Path(path).read_bytes()
            match = re.search(rb"mod\tgithub.com/Shopify/toxiproxy/v2\tv(\d+\.\d+\.\d+)", data)
            text = match.group(1).decode() if match else _output([path, "-version"])
    elif name == "moto":
        with contextlib.suppress(Exception):
            import importlib.metadata

            text = importlib.metadata.version("moto")
    elif name == "dapr":
        path = which("daprd")
        if path:
            text = _output([path, "--version"])
    match = re.search(pattern, text)
    return match.group(1) if match else "unknown"


def rabbitmq(d: Path, port: int, free_port: Callable[[], int]) -> Recipe:
    """RabbitMQ run directly (not the root wrapper that switches users), no plugins."""
    dist = free_port()
    while dist in CLI_DIST_RANGE or dist == port:
        dist = free_port()
    (d / "enabled_plugins").write_text("[].\n")
    (d / "rabbitmq.conf").write_text(
        "log.file = false\nlog.console = true\nlog.console.level = info\n"
        "loopback_users = none\n"
    )
    (d / "rabbitmq-env.conf").write_text("")
    node = f"harness{port}@localhost"
    env = {
        "HOME": str(d),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
        "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
        "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        # the distribution listener binds every interface unless told otherwise
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        # not erl_crash.dump in the runner's working directory when a stopped run kills it
        "ERL_CRASH_DUMP": str(d / "erl_crash.dump"),
    }
    return Recipe(
        command=[f"{RABBIT_HOME}/bin/rabbitmq-server"],
        env=env,
        ports={"amqp": port, "dist": dist},
        ready_marker="Server startup complete",
    )


def epmd(port: int) -> Recipe:
    """A private epmd in the foreground, owned by one RabbitMQ handle."""
    return Recipe(
        command=[which("epmd") or "epmd", "-address", "127.0.0.1", "-port", str(port)],
        ports={"epmd": port},
    )


def nats(d: Path, port: int, free_port: Callable[[], int]) -> Recipe:
    """nats-server with JetStream storing under d/jetstream."""
    monitor = free_port()
    cmd = [which("nats-server") or "nats-server", "-a", "127.0.0.1", "-p", str(port),
           "-m", str(monitor), "-js", "-sd", str(d / "jetstream"), "-n", f"harness{port}"]
    return Recipe(
        command=cmd,
        ports={"client": port, "monitor": monitor},
        ready=lambda: http_ok(f"http://127.0.0.1:{monitor}/healthz"),
    )


def redis(d: Path, port: int, free_port: Callable[[], int]) -> Recipe:
    """redis-server over TCP only, append-only file fsynced on every write."""
    cmd = [which("redis-server") or "redis-server", "--port", str(port),
           "--bind", "127.0.0.1", "--dir", str(d), "--appendonly", "yes",
           "--appendfsync", "always", "--save", "", "--protected-mode", "no",
           "--daemonize", "no", "--logfile", ""]
    return Recipe(command=cmd, ports={"client": port}, ready=lambda: redis_pong(port))


def mosquitto(d: Path, port: int, free_port: Callable[[], int]) -> Recipe:
    """mosquitto with anonymous access and persistence saved on every change."""
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {d}/",
        "autosave_interval 1",
        "autosave_on_changes true",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "max_queued_messages 100000",
        # no Nagle on the broker side of each connection: small publishes leave at once
        "set_tcp_nodelay true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    (d / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    cmd = [which("mosquitto") or "mosquitto", "-c", str(d / "mosquitto.conf")]
    return Recipe(command=cmd, ports={"client": port})


def toxiproxy(d: Path, port: int, free_port: Callable[[], int]) -> Recipe:
    """toxiproxy-server with its HTTP API on port."""
    cmd = [which("toxiproxy-server") or "toxiproxy-server", "-host", "127.0.0.1",
           "-port", str(port)]
    return Recipe(
        command=cmd,
        ports={"api": port},
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/version"),
    )


def moto(d: Path, port: int, free_port: Callable[[], int]) -> Recipe:
    """moto_server (the venv's) answering the AWS APIs on port; values live in memory."""
    cmd = [which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)]
    return Recipe(
        command=cmd,
        ports={"api": port},
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/moto-api/data.json"),
    )


DAPR_STATE_STORE = "statestore"


def dapr_component(redis_host: str) -> str:
    """The state.redis component file daprd loads (its state store ``statestore``)."""
    return (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n"
        f"  name: {DAPR_STATE_STORE}\nspec:\n  type: state.redis\n  version: v1\n"
        "  metadata:\n"
        f"  - name: redisHost\n    value: \"{redis_host}\"\n"
        "  - name: redisPassword\n    value: \"\"\n"
        "  - name: actorStateStore\n    value: \"false\"\n"
    )


def dapr(d: Path, port: int, free_port: Callable[[], int]) -> Recipe:
    """daprd in standalone mode (no placement, no app) with a state.redis component on
    the redis-server recipe ``dapr_redis`` (the handle starts that one first)."""
    resources = d / "components"
    resources.mkdir(exist_ok=True)
    redis_port = free_port()
    (resources / "statestore.yaml").write_text(dapr_component(f"127.0.0.1:{redis_port}"))
    grpc, metrics, internal = free_port(), free_port(), free_port()
    cmd = [which("daprd") or "daprd", "--app-id", f"harness{port}", "--mode", "standalone",
           "--resources-path", str(resources), "--dapr-http-port", str(port),
           "--dapr-grpc-port", str(grpc), "--dapr-internal-grpc-port", str(internal),
           "--metrics-port", str(metrics), "--dapr-listen-addresses", "127.0.0.1",
           # the internal API and the metrics server listen on every interface by default
           # (1.14 keeps metrics there even with --metrics-listen-address); nothing reads
           # the metrics
           "--dapr-internal-grpc-listen-address", "127.0.0.1", "--enable-metrics=false",
           "--log-level", "warn"]
    return Recipe(
        command=cmd,
        ports={"http": port, "grpc": grpc, "metrics": metrics, "internal": internal,
               "redis": redis_port},
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/v1.0/healthz/outbound"),
    )


def dapr_redis(d: Path, port: int) -> Recipe:
    """The dapr service's own redis-server (data under d/redis)."""
    (d / "redis").mkdir(exist_ok=True)
    return redis(d / "redis", port, lambda: port)


RECIPES: dict[str, Callable[[Path, int, Callable[[], int]], Recipe]] = {
    "rabbitmq": rabbitmq,
    "nats": nats,
    "redis": redis,
    "mosquitto": mosquitto,
    "toxiproxy": toxiproxy,
    "moto": moto,
    "dapr": dapr,
}
