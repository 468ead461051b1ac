# shellcheck shell=bash
# Shared configuration and helpers for scripts/infra.
# Sourced by scripts/infra; not meant to be run on its own.

# --- configuration (all overridable from the environment) -------------------

# Where downloaded artifacts (Kafka jars, Maven repository) are kept.
SLUICE_INFRA_CACHE="${SLUICE_INFRA_CACHE:-$HOME/.cache/sluice-infra}"
# Where data dirs, configs, pid files and logs of the running services live.
SLUICE_INFRA_STATE="${SLUICE_INFRA_STATE:-/tmp/sluice-infra}"

# Every service binds to loopback only.
INFRA_HOST=127.0.0.1

# Kafka: pinned so every machine runs the same broker (newest 4.x on Maven Central).
KAFKA_VERSION="${SLUICE_KAFKA_VERSION:-4.4.0}"
KAFKA_PORT="${SLUICE_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
# A second client listener with TLS and SASL (PLAIN, SCRAM-SHA-256/512), for the tests of
# Sluice on a secured cluster. Every other test uses the PLAINTEXT listener on KAFKA_PORT.
KAFKA_SASL_SSL_PORT=$((KAFKA_PORT + 2))
# Documented development-only SASL users of that listener. Not secrets.
KAFKA_SCRAM_USER=sluice_scram
KAFKA_SCRAM_PASSWORD=sluice-scram-password
KAFKA_PLAIN_USER=sluice_plain
KAFKA_PLAIN_PASSWORD=sluice-plain-password

# MariaDB: shard i listens on MYSQL_BASE_PORT + i.
MYSQL_BASE_PORT="${SLUICE_MYSQL_BASE_PORT:-13306}"
MYSQL_SHARD_COUNT=4
# Documented development-only password for root over TCP. Not a secret.
MYSQL_ROOT_PASSWORD=sluice
# Database created on every shard (used by the SLUICE_SHARDn_URL variables).
MYSQL_DATABASE=sluice

# Seconds to wait for a service to answer after starting it / to exit after SIGTERM.
INFRA_START_TIMEOUT="${SLUICE_INFRA_START_TIMEOUT:-120}"
INFRA_STOP_TIMEOUT="${SLUICE_INFRA_STOP_TIMEOUT:-30}"

# --- logging -----------------------------------------------------------------

# log MSG...: progress message on stderr (stdout is reserved for `env`).
log() { printf '[infra %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# die MSG...: log an error and exit non-zero.
die() {
  log "ERROR: $*"
  exit 1
}

# show_log_tail FILE [LINES]: print the end of a log file to stderr (for errors).
show_log_tail() {
  local file=$1 lines=${2:-40}
  if [[ -f $file ]]; then
    log "---- last $lines lines of $file ----"
    tail -n "$lines" "$file" >&2 || true
    log "---- end of $file ----"
  else
    log "(no log file at $file)"
  fi
}

# --- processes ---------------------------------------------------------------

# pid_of PIDFILE MARKER: print the pid recorded in PIDFILE if that process is
# alive and its command line contains MARKER (guards against recycled pids).
pid_of() {
  local pidfile=$1 marker=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(tr -dc '0-9' <"$pidfile")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker" || return 1
  echo "$pid"
}

# spawned_alive PIDFILE: true while the process recorded in PIDFILE exists. Used right
# after a spawn, when the child may not have exec'ed into the server yet (so pid_of's
# command-line check would fail).
spawned_alive() {
  local pid
  pid=$(tr -dc '0-9' <"$1" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# stop_pid PID NAME: SIGTERM a process, wait up to INFRA_STOP_TIMEOUT s, then SIGKILL.
stop_pid() {
  local pid=$1 name=$2 waited=0
  kill -TERM "$pid" 2>/dev/null || return 0
  # A frozen (SIGSTOP) process handles SIGTERM only once it runs again.
  kill -CONT "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited >= INFRA_STOP_TIMEOUT * 10)); then
      log "$name (pid $pid) ignored SIGTERM for ${INFRA_STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

# port_open PORT: true if something accepts TCP connections on INFRA_HOST:PORT.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$INFRA_HOST/$1" 2>/dev/null
}

# require_port_free PORT NAME: fail clearly if a foreign process holds PORT.
require_port_free() {
  if port_open "$1"; then
    die "port $1 needed by $2 is already in use by another process (set SLUICE_KAFKA_PORT / SLUICE_MYSQL_BASE_PORT to move it)"
  fi
}

# --- packages ----------------------------------------------------------------

APT_UPDATED=0

# apt_install PKG...: install Debian packages without starting their services.
apt_install() {
  local created_policy=0
  ((EUID == 0)) || die "installing $* needs root (apt-get); install it by hand or run as root"
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    # Tell invoke-rc.d not to start services during the install.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  if ((APT_UPDATED == 0)); then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    APT_UPDATED=1
  fi
  local rc=0 apt_log="$SLUICE_INFRA_STATE/apt.log"
  mkdir -p "$SLUICE_INFRA_STATE"
  log "apt-get install $* (output in $apt_log)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$apt_log" 2>&1 || rc=$?
  if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
  if ((rc != 0)); then
    show_log_tail "$apt_log"
    die "apt-get install $* failed (exit $rc)"
  fi
}

# find_bin NAME: print the path of an executable, also looking in sbin dirs.
find_bin() {
  local name=$1 dir
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
    return 0
  fi
  for dir in /usr/sbin /usr/local/sbin /sbin; do
    if [[ -x $dir/$name ]]; then
      echo "$dir/$name"
      return 0
    fi
  done
  return 1
}

# --- locking -----------------------------------------------------------------

# take_lock: serialise concurrent `up`/`down` runs (e.g. .ci/run and make test).
take_lock() {
  mkdir -p "$(dirname "$SLUICE_INFRA_STATE")"
  exec 9>"$SLUICE_INFRA_STATE.lock"
  if ! flock -w 600 9; then
    die "timed out waiting for another scripts/infra run ($SLUICE_INFRA_STATE.lock)"
  fi
}
