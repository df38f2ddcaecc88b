#!/usr/bin/env bash
# A Docker engine for the harness on a machine without one (Debian 12, root):
#   docker/engine.sh install   apt-get install docker.io debootstrap docker-compose (if missing)
#   docker/engine.sh start     start dockerd in the background (no-op if it answers already)
#   docker/engine.sh stop      stop the dockerd this script started (its pid file), and its containers
#   docker/engine.sh status    say whether it answers
#   docker/engine.sh purge     (private socket only) stop it and delete its data root: images,
#                              containers and build cache, so the next start builds from nothing
#
# The daemon runs with --iptables=false --ip-forward=false --ip-masq=false: containers get
# bridge addresses inside namespaces the daemon creates and cannot reach beyond this machine;
# published ports work through docker-proxy on 127.0.0.1. A private engine (another socket)
# gets a bridge device of its own (hdk-<hash>, 10.199.N.0/24), not the shared docker0.
#
# HARNESS_DOCKER_SOCKET selects the socket (default /var/run/docker.sock, what every Docker
# client finds by itself). Any other path gives a private daemon with its own data root,
# exec root, pid file and log next to the socket (data under /var/lib/harness-docker/<name>);
# point clients at it with DOCKER_HOST=unix://<path>.
set -euo pipefail

DEFAULT_SOCKET=/var/run/docker.sock
SOCKET="${HARNESS_DOCKER_SOCKET:-$DEFAULT_SOCKET}"

log() { printf '[docker-engine] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$SOCKET" in
  unix://*) SOCKET="${SOCKET#unix://}" ;;
esac
[[ "$SOCKET" == /* ]] || die "HARNESS_DOCKER_SOCKET must be an absolute path (got '$SOCKET')"

if [ "$SOCKET" = "$DEFAULT_SOCKET" ] || [ "$SOCKET" = /run/docker.sock ]; then
  DATA_ROOT=/var/lib/docker
  EXEC_ROOT=/var/run/docker
  PIDFILE=/var/run/harness-dockerd.pid
  LOGFILE=/var/log/harness-dockerd.log
else
  dir=$(dirname "$SOCKET")
  name=$(printf '%s' "$dir" | tr -c 'A-Za-z0-9' '_' | sed 's/^_*//')
  DATA_ROOT="/var/lib/harness-docker/${name:-root}"
  EXEC_ROOT="$dir/exec"
  PIDFILE="$dir/dockerd.pid"
  LOGFILE="$dir/dockerd.log"
  # A bridge of its own: engines sharing docker0 hand out the same 172.17.0.x addresses
  # to their containers, and a container then answers for another engine's (refused
  # connections, seen with three engines on one machine).
  sum=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
  BRIDGE="hdk-$(printf '%08x' "$sum" | cut -c1-8)"
  BRIDGE_NET=$((sum % 250 + 1))
fi
export DOCKER_HOST="unix://$SOCKET"

answers() { timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (re-run with sudo)"; }

cmd_install() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  if [ ${#missing[@]} = 0 ]; then log "docker.io, debootstrap and docker-compose present"; return; fi
  need_root "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-cache show "${missing[@]}" >/dev/null 2>&1 || apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
  # Debian may start the packaged daemon on the default socket; this script owns the engine.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true
  fi
}

# The private engine's bridge device, on the first 10.199.N.0/24 no other device uses.
own_bridge() {
  if ip link show "$BRIDGE" >/dev/null 2>&1; then return; fi
  local n=$BRIDGE_NET tries=0
  while ip -4 addr show | grep -q "inet 10\.199\.$n\."; do
    n=$((n % 250 + 1)); tries=$((tries + 1))
    [ $tries -lt 250 ] || die "no free 10.199.N.0/24 for bridge $BRIDGE"
  done
  ip link add name "$BRIDGE" type bridge
  ip addr add "10.199.$n.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  log "bridge $BRIDGE on 10.199.$n.0/24"
}

cmd_start() {
  if answers; then log "an engine answers on $SOCKET already"; return; fi
  need_root "starting dockerd"
  local dockerd
  dockerd=$(command -v dockerd || echo /usr/sbin/dockerd)
  [ -x "$dockerd" ] || die "dockerd not found (run: docker/engine.sh install)"
  mkdir -p "$(dirname "$SOCKET")" "$DATA_ROOT" "$EXEC_ROOT" "$(dirname "$LOGFILE")"
  rm -f "$SOCKET"
  local bridge_args=()
  if [ -n "${BRIDGE:-}" ]; then
    own_bridge
    bridge_args=(--bridge "$BRIDGE")
  fi
  log "starting dockerd on $SOCKET (data $DATA_ROOT, log $LOGFILE${BRIDGE:+, bridge $BRIDGE})"
  # setsid: the daemon outlives this shell and make; it is stopped by `stop` (its pid file).
  setsid "$dockerd" -H "unix://$SOCKET" --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" \
    --pidfile "$PIDFILE" --iptables=false --ip-forward=false --ip-masq=false \
    "${bridge_args[@]}" >>"$LOGFILE" 2>&1 < /dev/null &
  local deadline=$((SECONDS + 30))
  until answers; do
    if ! kill -0 $! 2>/dev/null; then tail -n 20 "$LOGFILE" >&2; die "dockerd exited"; fi
    [ $SECONDS -lt $deadline ] || { tail -n 20 "$LOGFILE" >&2; die "dockerd not answering after 30 s"; }
    sleep 0.2
  done
  log "engine $(docker version --format '{{.Server.Version}}') answers on $SOCKET"
}

cmd_stop() {
  if [ ! -s "$PIDFILE" ]; then
    if answers; then log "an engine answers on $SOCKET but was not started by this script; left alone"
    else log "no engine running on $SOCKET"; fi
    return
  fi
  local pid
  pid=$(cat "$PIDFILE")
  if ! kill -0 "$pid" 2>/dev/null; then
    # killed, not stopped: what it would have removed on its way out is still here
    log "dockerd $pid is gone"
    rm -f "$PIDFILE" "$SOCKET"
    drop_bridge
    return
  fi
  if answers; then
    local ids
    ids=$(docker ps -aq --filter label=org.purista-harness.run 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  fi
  log "stopping dockerd $pid"
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { log "dockerd $pid ignores SIGTERM; SIGKILL"; kill -KILL "$pid"; }
    sleep 0.2
  done
  rm -f "$PIDFILE" "$SOCKET"
  drop_bridge
  log "stopped"
}

drop_bridge() {
  if [ -n "${BRIDGE:-}" ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE" || log "could not delete bridge $BRIDGE"
  fi
}

cmd_purge() {
  # an engine of its own only: never the system engine's /var/lib/docker
  [ "$DATA_ROOT" != /var/lib/docker ] || die "purge is for a private socket only (got $SOCKET)"
  need_root "purge"
  cmd_stop
  # what a stopped (or killed) dockerd can leave mounted at or below its roots: the exec
  # root's netns/default bind mount, and the data root bound onto itself (dockerd makes its
  # root a private mount and undoes that only on a clean shutdown; a killed one leaves it
  # and rm then fails with "Device or resource busy"). Unmounted deepest first.
  local mounted
  awk -v a="$DATA_ROOT" -v b="$EXEC_ROOT" '
    $2 == a || $2 == b || index($2, a "/") == 1 || index($2, b "/") == 1 { print $2 }' \
    /proc/mounts | sort -r | while read -r mounted; do
    umount -l "$mounted" || log "could not unmount $mounted"
  done
  rm -rf --one-file-system "$DATA_ROOT" "$EXEC_ROOT"
  log "removed $DATA_ROOT (images, containers, build cache) and $EXEC_ROOT"
}

cmd_status() {
  if answers; then log "engine answers on $SOCKET"; else log "no engine on $SOCKET"; return 1; fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  purge) cmd_purge ;;
  *) die "usage: $0 install|start|stop|status|purge (socket: HARNESS_DOCKER_SOCKET, default $DEFAULT_SOCKET)" ;;
esac
