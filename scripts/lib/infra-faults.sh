# shellcheck shell=bash
# Fault injection into the services of one scripts/infra instance, for the fault-injection
# tests. Every command acts on the instance named by SLUICE_INFRA_STATE / SLUICE_KAFKA_PORT /
# SLUICE_MYSQL_BASE_PORT, so a test starts its own instance on its own ports and never
# touches the shared one. Sourced by scripts/infra after the Kafka and MariaDB libraries.

# fault_guard_shared: refuse to inject faults into the default (shared) instance unless
# SLUICE_INFRA_ALLOW_FAULTS=1 says that is really meant.
fault_guard_shared() {
  if [[ $SLUICE_INFRA_STATE == /tmp/sluice-infra && ${SLUICE_INFRA_ALLOW_FAULTS:-0} != 1 ]]; then
    die "refusing to inject a fault into the default instance ($SLUICE_INFRA_STATE): start a private one with its own SLUICE_INFRA_STATE and ports, or set SLUICE_INFRA_ALLOW_FAULTS=1"
  fi
}

# fault_signal PID NAME SIGNAL: send SIGNAL to a running service, failing clearly if it is gone.
fault_signal() {
  local pid=$1 name=$2 signal=$3
  kill "-$signal" "$pid" 2>/dev/null || die "$name (pid $pid) could not be sent SIG$signal"
  log "$name (pid $pid): SIG$signal"
}

# fault_wait_gone PID NAME: wait until a killed process has disappeared (its ports are free).
fault_wait_gone() {
  local pid=$1 name=$2 waited=0
  while kill -0 "$pid" 2>/dev/null; do
    ((waited < INFRA_STOP_TIMEOUT * 10)) || die "$name (pid $pid) still exists ${INFRA_STOP_TIMEOUT}s after SIGKILL"
    sleep 0.1
    waited=$((waited + 1))
  done
}

# fault_kafka_pid: the broker's pid, or fail.
fault_kafka_pid() {
  kafka_pid || die "Kafka of $SLUICE_INFRA_STATE is not running"
}

# cmd_kafka_kill: kill -9 the broker (its data dir stays; `kafka-start` brings it back).
cmd_kafka_kill() {
  local pid
  fault_guard_shared
  pid=$(fault_kafka_pid)
  fault_signal "$pid" kafka KILL
  fault_wait_gone "$pid" kafka
  rm -f "$KAFKA_READY_FILE"
}

# cmd_kafka_pause / cmd_kafka_resume: freeze (SIGSTOP) and thaw (SIGCONT) the broker.
cmd_kafka_pause() {
  fault_guard_shared
  fault_signal "$(fault_kafka_pid)" kafka STOP
}
cmd_kafka_resume() {
  fault_guard_shared
  fault_signal "$(fault_kafka_pid)" kafka CONT
}

# cmd_kafka_start: start the broker again (keeping its KRaft data) and wait until it answers.
cmd_kafka_start() {
  fault_guard_shared
  take_lock
  kafka_start
  if ((KAFKA_NEEDS_WAIT)); then kafka_wait_ready; fi
}

# fault_shard_index I: validate a shard number.
fault_shard_index() {
  [[ ${1:-} =~ ^[0-9]+$ ]] && (($1 < MYSQL_SHARD_COUNT)) ||
    die "expected a shard number 0..$((MYSQL_SHARD_COUNT - 1)), got '${1:-}'"
}

# fault_shard_pid I: shard I's pid, or fail.
fault_shard_pid() {
  mariadb_pid "$1" || die "shard$1 of $SLUICE_INFRA_STATE is not running"
}

# cmd_shard_kill I: kill -9 one shard's server (InnoDB recovers on `shard-start`).
cmd_shard_kill() {
  local pid
  fault_shard_index "${1:-}"
  fault_guard_shared
  pid=$(fault_shard_pid "$1")
  fault_signal "$pid" "shard$1" KILL
  fault_wait_gone "$pid" "shard$1"
}

# cmd_shard_pause I / cmd_shard_resume I: freeze (SIGSTOP) and thaw (SIGCONT) one shard.
cmd_shard_pause() {
  fault_shard_index "${1:-}"
  fault_guard_shared
  fault_signal "$(fault_shard_pid "$1")" "shard$1" STOP
}
cmd_shard_resume() {
  fault_shard_index "${1:-}"
  fault_guard_shared
  fault_signal "$(fault_shard_pid "$1")" "shard$1" CONT
}

# cmd_shard_stop I: stop one shard cleanly; its port refuses connections until `shard-start`.
cmd_shard_stop() {
  local pid
  fault_shard_index "${1:-}"
  fault_guard_shared
  take_lock
  pid=$(fault_shard_pid "$1")
  log "stopping shard$1 (pid $pid)"
  stop_pid "$pid" "shard$1"
}

# cmd_shard_start I: start one shard again and wait until it accepts logins over TCP.
cmd_shard_start() {
  fault_shard_index "${1:-}"
  fault_guard_shared
  take_lock
  mariadb_ensure_installed
  mkdir -p "$MARIADB_STATE"
  mariadb_start_shard "$1"
}
