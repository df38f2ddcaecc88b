#!/usr/bin/env bash
# Install the brokers the harness runs as local processes (Debian/Ubuntu):
#   rabbitmq-server nats-server redis-server mosquitto (apt), toxiproxy-server (go install)
#   and daprd (built from the dapr module's source, since `go install` refuses a module with
#   replace directives; kept in a build cache, ~/.cache/purista-harness or $DAPR_CACHE_DIR,
#   so that installing it again is a copy).
# Idempotent: a fast no-op when every binary exists. Also wanted with a Docker engine: the
# toxiproxy image copies this toxiproxy-server in, and an engine without the harness images
# is not selected. Root installs to /usr/local/bin, others to ~/.local/bin (apt needs root).
#
# Options:
#   --force        run every branch even when everything is present: re-check the apt
#                  packages (apt-get install, then stop the packaged daemons) and rebuild
#                  toxiproxy-server into a temporary GOBIN, and install daprd again
#                  (from its build cache; a missing cache entry is built) (CI runs this
#                  on every run)
#   --prefix DIR   install toxiproxy-server and daprd into DIR and look for them only there
#                  (default /usr/local/bin for root, else ~/.local/bin)
set -euo pipefail

TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.12.0}"
DAPR_VERSION="${DAPR_VERSION:-v1.14.0}"
# the components compiled into daprd (cmd/daprd/components/<name>.go): the harness needs
# the Redis state store only; leaving the others out saves a third of the build and 67 MB
DAPR_COMPONENTS="${DAPR_COMPONENTS:-state_redis}"
APT_PACKAGES=(rabbitmq-server nats-server redis-server mosquitto)

FORCE=0
PREFIX=""
TMP_GOBIN=""
TMP_DAPR=""

log() { printf '[install-local-services] %s\n' "$*" >&2; }

usage() {
  printf 'usage: %s [--force] [--prefix DIR]\n' "$0" >&2
}

cleanup() {
  # an EXIT trap at the top level: a RETURN trap set in a function fires again when
  # its caller returns, where its local variables are gone (set -u then aborts)
  if [ -n "$TMP_GOBIN" ]; then rm -rf "$TMP_GOBIN"; fi
  if [ -n "$TMP_DAPR" ]; then rm -rf "$TMP_DAPR"; fi
}
trap cleanup EXIT

toxiproxy_dest() {
  if [ -n "$PREFIX" ]; then echo "$PREFIX"
  elif [ "$(id -u)" = 0 ]; then echo /usr/local/bin
  else echo "$HOME/.local/bin"; fi
}

have_toxiproxy() {
  if [ -n "$PREFIX" ]; then [ -x "$PREFIX/toxiproxy-server" ]; else have toxiproxy-server; fi
}

have_daprd() {
  if [ -n "$PREFIX" ]; then [ -x "$PREFIX/daprd" ]; else have daprd; fi
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/bin/$1" ] \
  || [ -x "$HOME/.local/bin/$1" ]; }

missing_apt() {
  local out=()
  have nats-server || out+=(nats-server)
  have redis-server || out+=(redis-server)
  have mosquitto || out+=(mosquitto)
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && have epmd || out+=(rabbitmq-server)
  echo "${out[@]:-}"
}

stop_system_service() {
  # Debian starts the packaged daemons after install; they would hold the default ports.
  local svc="$1" proc="$2"
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    service "$svc" stop >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
  # no init system here: stop a daemon started for the package's own user only
  local pids=()
  mapfile -t pids < <(pgrep -u "$proc" 2>/dev/null || true)
  if [ "${#pids[@]}" -gt 0 ]; then
    log "stopping system $svc daemon (pids ${pids[*]})"
    kill "${pids[@]}" 2>/dev/null || true
  fi
}

install_apt() {
  local pkgs=("$@")
  if [ "$(id -u)" != 0 ]; then
    log "need root for: apt-get install ${pkgs[*]} (re-run with sudo)"; return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when the package lists do not know the packages yet
  if ! apt-cache show "${pkgs[@]}" >/dev/null 2>&1; then
    apt-get update -q
  fi
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${pkgs[@]}"
  stop_system_service rabbitmq-server rabbitmq
  stop_system_service redis-server redis
  stop_system_service mosquitto mosquitto
  stop_system_service nats-server nats
}

install_toxiproxy() {
  local dest
  dest=$(toxiproxy_dest)
  mkdir -p "$dest"
  if ! command -v go >/dev/null 2>&1; then
    log "toxiproxy-server needs Go >= 1.23 to build (apt-get install golang-go, or go.dev/dl)"
    return 1
  fi
  TMP_GOBIN=$(mktemp -d)
  log "building toxiproxy-server $TOXIPROXY_VERSION"
  GOBIN="$TMP_GOBIN" go install "github.com/Shopify/toxiproxy/v2/cmd/server@${TOXIPROXY_VERSION}"
  install -m 0755 "$TMP_GOBIN/server" "$dest/toxiproxy-server"
  rm -rf "$TMP_GOBIN"
  TMP_GOBIN=""
  log "installed $dest/toxiproxy-server"
}

dapr_cache() {
  local cache="${DAPR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/purista-harness}"
  echo "$cache/daprd-${DAPR_VERSION}-${DAPR_COMPONENTS// /+}"
}

build_daprd() {
  # into the cache: a build takes minutes (about 280 modules), a copy milliseconds
  local cache="$1" dir
  if ! command -v go >/dev/null 2>&1; then
    log "daprd needs Go >= 1.22 to build (apt-get install golang-go, or go.dev/dl)"
    return 1
  fi
  TMP_DAPR=$(mktemp -d)
  log "building daprd $DAPR_VERSION (components: $DAPR_COMPONENTS) into $cache"
  # the module cache's copy is read-only: build in a writable copy of it
  dir=$(go mod download -json "github.com/dapr/dapr@${DAPR_VERSION}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then
    log "go mod download gave no module directory"; return 1
  fi
  cp -r "$dir" "$TMP_DAPR/src"
  chmod -R u+w "$TMP_DAPR/src"
  local keep=(-name zz_notag.go) name
  for name in $DAPR_COMPONENTS; do keep+=(-o -name "$name.go"); done
  find "$TMP_DAPR/src/cmd/daprd/components" -name '*.go' ! \( "${keep[@]}" \) -delete
  # without a components build tag daprd panics at start; it reports its version only
  # when the linker is told it
  (cd "$TMP_DAPR/src" && go build -tags stablecomponents \
    -ldflags "-X github.com/dapr/dapr/pkg/buildinfo.version=${DAPR_VERSION#v}" \
    -o "$TMP_DAPR/daprd" ./cmd/daprd)
  mkdir -p "$(dirname "$cache")"
  install -m 0755 "$TMP_DAPR/daprd" "$cache"
  rm -rf "$TMP_DAPR"
  TMP_DAPR=""
}

install_daprd() {
  local dest cache
  dest=$(toxiproxy_dest)
  cache=$(dapr_cache)
  mkdir -p "$dest"
  if [ -x "$cache" ] && [ "$("$cache" --version 2>/dev/null)" = "${DAPR_VERSION#v}" ]; then
    log "daprd $DAPR_VERSION from the build cache $cache"
  else
    build_daprd "$cache"
  fi
  install -m 0755 "$cache" "$dest/daprd"
  log "installed $dest/daprd"
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --force) FORCE=1 ;;
      --prefix)
        [ $# -ge 2 ] || { usage; log "--prefix needs a directory"; exit 2; }
        PREFIX="$2"; shift ;;
      --prefix=*) PREFIX="${1#--prefix=}" ;;
      -h|--help) usage; exit 0 ;;
      *) usage; log "unknown option: $1"; exit 2 ;;
    esac
    shift
  done
}

main() {
  parse_args "$@"
  local apt_missing
  apt_missing=$(missing_apt)
  if [ "$FORCE" = 1 ]; then
    log "--force: re-checking ${APT_PACKAGES[*]}, rebuilding toxiproxy-server, installing daprd"
    install_apt "${APT_PACKAGES[@]}"
    install_toxiproxy
    install_daprd
    log "done"; return 0
  fi
  if [ -z "$apt_missing" ] && have_toxiproxy && have_daprd; then
    log "all services present"; return 0
  fi
  if [ -n "$apt_missing" ]; then
    # shellcheck disable=SC2086
    install_apt $apt_missing
  fi
  have_toxiproxy || install_toxiproxy
  have_daprd || install_daprd
  log "done"
}

main "$@"
