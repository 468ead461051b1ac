# shellcheck shell=bash
# Single-node Apache Kafka (KRaft, broker+controller) for scripts/infra.
# Jars come from Maven Central via `mvn dependency:copy-dependencies`.

KAFKA_HOME="$SLUICE_INFRA_CACHE/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_M2_REPO="$SLUICE_INFRA_CACHE/m2"
KAFKA_STATE="$SLUICE_INFRA_STATE/kafka"
KAFKA_DATA="$KAFKA_STATE/data"
KAFKA_CONFIG="$KAFKA_STATE/server.properties"
KAFKA_PIDFILE="$KAFKA_STATE/kafka.pid"
# Holds the pid of the broker once it answered a client; the server log rolls over at 20 MB,
# so its "Kafka Server started" line cannot tell later runs that the broker is up.
KAFKA_READY_FILE="$KAFKA_STATE/ready.pid"
KAFKA_SERVER_LOG="$KAFKA_STATE/server.log"
KAFKA_STDOUT_LOG="$KAFKA_STATE/stdout.log"
# Certificates of the SASL_SSL listener, made once with keytool and kept: a test CA
# (ca.pem, for librdkafka's ssl.ca.location), the broker's PKCS12 keystore signed by it, and
# an unrelated CA (other-ca.pem) that a client must refuse the broker with.
KAFKA_TLS_DIR="$KAFKA_STATE/tls"
KAFKA_CA_PEM="$KAFKA_TLS_DIR/ca.pem"
KAFKA_OTHER_CA_PEM="$KAFKA_TLS_DIR/other-ca.pem"
KAFKA_KEYSTORE="$KAFKA_TLS_DIR/broker.p12"
# Development-only password of the test keystores. Not a secret.
KAFKA_KEYSTORE_PASSWORD=sluice-test-keystore
# Holds "cluster id + user + password" once the SCRAM user exists in that cluster's metadata.
KAFKA_SCRAM_DONE="$KAFKA_STATE/scram.key"
KAFKA_HEAP_OPTS="${SLUICE_KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
# JVM flags for short-lived CLI tools: fast start matters more than throughput.
KAFKA_TOOL_JVM_OPTS=(-Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true -Dlog4j2.shutdownHookEnabled=false)

# kafka_java_version: print the major version of the `java` on PATH.
kafka_java_version() {
  java -XshowSettings:properties -version 2>&1 |
    awk -F' = ' '/java.specification.version/ {print $2}' | cut -d. -f1
}

# kafka_ensure_toolchain: make sure Java >= 17 and Maven are installed.
kafka_ensure_toolchain() {
  local pkgs=()
  if ! command -v java >/dev/null 2>&1 || (($(kafka_java_version) < 17)); then
    pkgs+=(openjdk-17-jre-headless)
  fi
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  if ((${#pkgs[@]})); then apt_install "${pkgs[@]}"; fi
}

# kafka_write_pom DIR: a throw-away pom listing the broker and CLI artifacts.
# kafka-server's published pom leaks test-only deps (junit, apacheds) into the
# runtime scope and kafka-tools drags in Connect; both are excluded.
kafka_write_pom() {
  cat >"$1/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sluice</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- kafka.Kafka (broker main) and kafka.tools.StorageTool -->
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version>
    </dependency>
    <!-- org.apache.kafka.tools.TopicCommand and friends -->
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
      </exclusions>
    </dependency>
    <!-- slf4j 1.x -> log4j2 binding so the broker logs to a file -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.25.5</version>
    </dependency>
  </dependencies>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>org.apache.kafka</groupId><artifactId>kafka-server</artifactId><version>$KAFKA_VERSION</version>
        <exclusions>
          <exclusion><groupId>org.junit.jupiter</groupId><artifactId>*</artifactId></exclusion>
          <exclusion><groupId>org.apache.directory.server</groupId><artifactId>*</artifactId></exclusion>
          <exclusion><groupId>org.apache.directory.api</groupId><artifactId>*</artifactId></exclusion>
        </exclusions>
      </dependency>
    </dependencies>
  </dependencyManagement>
</project>
EOF
}

# kafka_ensure_libs: download the Kafka jars into the cache once.
kafka_ensure_libs() {
  [[ -f $KAFKA_HOME/.complete ]] && return 0
  kafka_ensure_toolchain
  log "resolving Kafka $KAFKA_VERSION jars with Maven into $KAFKA_LIBS"
  mkdir -p "$KAFKA_HOME"
  kafka_write_pom "$KAFKA_HOME"
  rm -rf "$KAFKA_HOME/libs.tmp"
  if ! (cd "$KAFKA_HOME" && mvn -B -q -Dmaven.repo.local="$KAFKA_M2_REPO" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory=libs.tmp >"$KAFKA_HOME/mvn.log" 2>&1); then
    show_log_tail "$KAFKA_HOME/mvn.log"
    die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
  fi
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_HOME/libs.tmp" "$KAFKA_LIBS"
  touch "$KAFKA_HOME/.complete"
  log "Kafka jars ready ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
}

# kafka_write_log4j: log4j2 configs: broker -> rolling file, CLI tools -> stderr (warnings only).
kafka_write_log4j() {
  cat >"$KAFKA_STATE/log4j2.properties" <<EOF
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $KAFKA_SERVER_LOG
appender.file.filePattern = $KAFKA_SERVER_LOG.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.raft.name = org.apache.kafka.raft
logger.raft.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOF
  cat >"$KAFKA_STATE/tools-log4j2.properties" <<EOF
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# kafka_render_config: print server.properties for a one-node broker+controller on loopback:
# PLAINTEXT on KAFKA_PORT, SASL_SSL (PLAIN, SCRAM-SHA-256/512) on KAFKA_SASL_SSL_PORT.
kafka_render_config() {
  local plain_jaas scram_jaas
  plain_jaas="org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_PLAIN_USER=\"$KAFKA_PLAIN_PASSWORD\";"
  scram_jaas="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  cat <<EOF
# Generated by scripts/infra; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$INFRA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$INFRA_HOST:$KAFKA_PORT,CONTROLLER://$INFRA_HOST:$KAFKA_CONTROLLER_PORT,SASL_SSL://$INFRA_HOST:$KAFKA_SASL_SSL_PORT
advertised.listeners=PLAINTEXT://$INFRA_HOST:$KAFKA_PORT,CONTROLLER://$INFRA_HOST:$KAFKA_CONTROLLER_PORT,SASL_SSL://$INFRA_HOST:$KAFKA_SASL_SSL_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=$plain_jaas
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram_jaas
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram_jaas
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_KEYSTORE
listener.name.sasl_ssl.ssl.keystore.password=$KAFKA_KEYSTORE_PASSWORD
listener.name.sasl_ssl.ssl.key.password=$KAFKA_KEYSTORE_PASSWORD
log.dirs=$KAFKA_DATA
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
EOF
}

# kafka_write_config: write server.properties (see kafka_render_config).
kafka_write_config() { kafka_render_config >"$KAFKA_CONFIG"; }

# kafka_config_current: true when the running broker's server.properties is what this
# script writes now (a state dir from an older script lacks the SASL_SSL listener, say).
kafka_config_current() {
  [[ -f $KAFKA_CONFIG ]] && [[ $(cat "$KAFKA_CONFIG") == "$(kafka_render_config)" ]]
}

# kafka_ensure_certs: make the SASL_SSL listener's certificates with keytool, once: a CA, a
# broker certificate it signs (SAN localhost and 127.0.0.1) in a PKCS12 keystore, the CA as
# PEM, and an unrelated CA as PEM. Kept across runs; made again only if incomplete.
kafka_ensure_certs() {
  [[ -f $KAFKA_TLS_DIR/.complete ]] && return 0
  command -v keytool >/dev/null 2>&1 || kafka_ensure_toolchain
  local tmp="$KAFKA_TLS_DIR.tmp" pass=$KAFKA_KEYSTORE_PASSWORD ca
  KAFKA_KEYTOOL_LOG="$KAFKA_STATE/keytool.log"
  log "making test certificates for the SASL_SSL listener in $KAFKA_TLS_DIR"
  rm -rf "$tmp" "$KAFKA_TLS_DIR"
  mkdir -p "$tmp"
  : >"$KAFKA_KEYTOOL_LOG"
  for ca in ca other-ca; do
    kafka_keytool -genkeypair -alias "$ca" -keyalg RSA -keysize 2048 -validity 3650 \
      -dname "CN=Sluice test $ca" -ext BC:critical=ca:true -ext KU:critical=keyCertSign,cRLSign \
      -keystore "$tmp/$ca.p12" -storetype PKCS12 -storepass "$pass"
    kafka_keytool -exportcert -rfc -alias "$ca" -keystore "$tmp/$ca.p12" -storepass "$pass" -file "$tmp/$ca.pem"
  done
  kafka_keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 -dname "CN=localhost" \
    -keystore "$tmp/broker.p12" -storetype PKCS12 -storepass "$pass"
  kafka_keytool -certreq -alias broker -keystore "$tmp/broker.p12" -storepass "$pass" -file "$tmp/broker.csr"
  kafka_keytool -gencert -alias ca -keystore "$tmp/ca.p12" -storepass "$pass" -validity 3650 -rfc \
    -infile "$tmp/broker.csr" -outfile "$tmp/broker.pem" \
    -ext SAN=dns:localhost,ip:127.0.0.1 -ext KU:critical=digitalSignature,keyEncipherment -ext EKU=serverAuth
  kafka_keytool -importcert -noprompt -alias ca -file "$tmp/ca.pem" -keystore "$tmp/broker.p12" -storepass "$pass"
  kafka_keytool -importcert -noprompt -alias broker -file "$tmp/broker.pem" -keystore "$tmp/broker.p12" -storepass "$pass"
  rm -f "$tmp/broker.csr"
  touch "$tmp/.complete"
  mv "$tmp" "$KAFKA_TLS_DIR"
}

# kafka_keytool ARGS...: one keytool call; its output goes to KAFKA_KEYTOOL_LOG, shown on failure.
kafka_keytool() {
  if ! keytool "$@" >>"$KAFKA_KEYTOOL_LOG" 2>&1 </dev/null; then
    show_log_tail "$KAFKA_KEYTOOL_LOG" 20
    die "keytool $1 failed while making the test certificates"
  fi
}

# kafka_cluster_id: the cluster id the data dir was formatted with.
kafka_cluster_id() {
  sed -n 's/^cluster\.id=//p' "$KAFKA_DATA/meta.properties" 2>/dev/null
}

# kafka_ensure_scram_user: give the SCRAM user its SCRAM-SHA-256 and SCRAM-SHA-512
# credentials through the PLAINTEXT listener (admin API), once per cluster. The broker
# must be up. The PLAIN user is in the listener's JAAS config.
kafka_ensure_scram_user() {
  local key
  key="cluster=$(kafka_cluster_id) user=$KAFKA_SCRAM_USER password=$KAFKA_SCRAM_PASSWORD"
  if [[ -f $KAFKA_SCRAM_DONE && $(cat "$KAFKA_SCRAM_DONE") == "$key" ]]; then
    return 0
  fi
  log "creating SCRAM-SHA-256/512 credentials for $KAFKA_SCRAM_USER"
  local mechanism
  # One mechanism per request: the broker refuses two changes to one user in one request.
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
    if ! kafka_tool org.apache.kafka.tools.ConfigCommand --bootstrap-server "$INFRA_HOST:$KAFKA_PORT" \
      --alter --entity-type users --entity-name "$KAFKA_SCRAM_USER" \
      --add-config "$mechanism=[password=$KAFKA_SCRAM_PASSWORD]" >"$KAFKA_STATE/scram.log" 2>&1; then
      show_log_tail "$KAFKA_STATE/scram.log" 20
      die "could not give the SCRAM user $KAFKA_SCRAM_USER its $mechanism credential"
    fi
  done
  echo "$key" >"$KAFKA_SCRAM_DONE"
}

# kafka_new_cluster_id: a random 22-char base64url id (the format StorageTool expects).
kafka_new_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $id != -* ]] && break
  done
  echo "$id"
}

# kafka_format_storage: format log.dirs once; reformat if version or ports changed.
kafka_format_storage() {
  local key="version=$KAFKA_VERSION controller=$INFRA_HOST:$KAFKA_CONTROLLER_PORT broker=$KAFKA_PORT"
  local keyfile="$KAFKA_STATE/format.key"
  if [[ -f $KAFKA_DATA/meta.properties && -f $keyfile && $(cat "$keyfile") == "$key" ]]; then
    return 0
  fi
  if [[ -d $KAFKA_DATA ]]; then
    log "Kafka data dir was formatted for another version/port; wiping $KAFKA_DATA"
    rm -rf "$KAFKA_DATA"
  fi
  log "formatting Kafka storage (KRaft, standalone controller)"
  if ! java "${KAFKA_TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$KAFKA_STATE/tools-log4j2.properties" \
    -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format --standalone \
    -t "$(kafka_new_cluster_id)" -c "$KAFKA_CONFIG" >"$KAFKA_STATE/format.log" 2>&1; then
    show_log_tail "$KAFKA_STATE/format.log"
    die "kafka storage format failed"
  fi
  echo "$key" >"$keyfile"
}

# kafka_pid: print the broker's pid if it is running from this state dir.
kafka_pid() { pid_of "$KAFKA_PIDFILE" "$KAFKA_CONFIG"; }

# kafka_tool CLASS ARGS...: run a Kafka CLI class (e.g. org.apache.kafka.tools.TopicCommand).
kafka_tool() {
  local class=$1
  shift
  [[ -f $KAFKA_HOME/.complete ]] || die "Kafka jars not downloaded yet; run scripts/infra up"
  mkdir -p "$KAFKA_STATE"
  [[ -f $KAFKA_STATE/tools-log4j2.properties ]] || kafka_write_log4j
  java "${KAFKA_TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$KAFKA_STATE/tools-log4j2.properties" \
    -cp "$KAFKA_LIBS/*" "$class" "$@"
}

# kafka_spawn: configure, format and launch the broker in the background (no waiting).
kafka_spawn() {
  mkdir -p "$KAFKA_STATE"
  rm -f "$KAFKA_PIDFILE" "$KAFKA_READY_FILE"
  require_port_free "$KAFKA_PORT" kafka
  require_port_free "$KAFKA_CONTROLLER_PORT" "kafka controller"
  require_port_free "$KAFKA_SASL_SSL_PORT" "kafka SASL_SSL listener"
  kafka_ensure_certs
  kafka_write_log4j
  kafka_write_config
  kafka_format_storage
  # Keep the previous run's logs for post-mortems, start the new ones empty.
  local f
  for f in "$KAFKA_SERVER_LOG" "$KAFKA_STDOUT_LOG"; do
    if [[ -f $f ]]; then mv -f "$f" "$f.prev"; fi
  done
  log "starting Kafka $KAFKA_VERSION on $INFRA_HOST:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT, SASL_SSL :$KAFKA_SASL_SSL_PORT)"
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of JVM flags
  nohup setsid java $KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_STATE/log4j2.properties" \
    -Dkafka.logs.dir="$KAFKA_STATE" -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONFIG" \
    </dev/null >"$KAFKA_STDOUT_LOG" 2>&1 9>&- &
  echo $! >"$KAFKA_PIDFILE"
}

# kafka_wait_ready: wait until the broker serves metadata requests, or fail with its log.
kafka_wait_ready() {
  local deadline=$((SECONDS + INFRA_START_TIMEOUT)) next_probe=$((SECONDS + 5)) pid
  pid=$(tr -dc '0-9' <"$KAFKA_PIDFILE")
  while :; do
    if ! spawned_alive "$KAFKA_PIDFILE"; then
      show_log_tail "$KAFKA_SERVER_LOG"
      show_log_tail "$KAFKA_STDOUT_LOG" 20
      die "Kafka exited during startup"
    fi
    if port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$KAFKA_SERVER_LOG" 2>/dev/null; then
      break
    fi
    # A broker started long ago may have rolled that line out of its log: ask it directly.
    if ((SECONDS >= next_probe)) && port_open "$KAFKA_PORT"; then
      next_probe=$((SECONDS + 5))
      if kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$INFRA_HOST:$KAFKA_PORT" \
        --list >/dev/null 2>&1; then
        break
      fi
    fi
    if ((SECONDS >= deadline)); then
      show_log_tail "$KAFKA_SERVER_LOG"
      die "Kafka did not start within ${INFRA_START_TIMEOUT}s (pid $pid)"
    fi
    sleep 0.2
  done
  # A real client round trip confirms the broker answers metadata requests.
  if ! kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$INFRA_HOST:$KAFKA_PORT" \
    --list >/dev/null 2>"$KAFKA_STATE/probe.log"; then
    show_log_tail "$KAFKA_STATE/probe.log" 20
    show_log_tail "$KAFKA_SERVER_LOG"
    die "Kafka is listening but does not answer a topic listing"
  fi
  if ! port_open "$KAFKA_SASL_SSL_PORT"; then
    show_log_tail "$KAFKA_SERVER_LOG"
    die "Kafka answers on $KAFKA_PORT but its SASL_SSL listener on $KAFKA_SASL_SSL_PORT is not open"
  fi
  echo "$pid" >"$KAFKA_READY_FILE"
  log "Kafka ready on $INFRA_HOST:$KAFKA_PORT (pid $pid)"
}

# kafka_start: ensure jars and launch the broker unless it already runs.
# Sets KAFKA_NEEDS_WAIT=1 when kafka_wait_ready must follow.
kafka_start() {
  local pid
  KAFKA_NEEDS_WAIT=0
  kafka_ensure_libs
  if pid=$(kafka_pid); then
    if ! kafka_config_current; then
      # Started by an older scripts/infra (without the SASL_SSL listener, say): restart it
      # once with today's configuration; its KRaft data dir is kept.
      log "Kafka (pid $pid) runs with an older configuration; restarting it with the current one"
      kafka_stop
      kafka_spawn
    elif port_open "$KAFKA_PORT" && [[ $(cat "$KAFKA_READY_FILE" 2>/dev/null) == "$pid" ]]; then
      log "Kafka already running (pid $pid) on $INFRA_HOST:$KAFKA_PORT"
      return 0
    else
      log "Kafka (pid $pid) is running but not answering yet; waiting for it"
    fi
  else
    kafka_spawn
  fi
  KAFKA_NEEDS_WAIT=1
}

# kafka_stop: stop the broker if it runs.
kafka_stop() {
  local pid
  if pid=$(kafka_pid); then
    log "stopping Kafka (pid $pid)"
    stop_pid "$pid" kafka
  fi
  rm -f "$KAFKA_PIDFILE" "$KAFKA_READY_FILE"
}

# kafka_status: print one status line; non-zero when the broker is down.
kafka_status() {
  local pid
  if pid=$(kafka_pid) && port_open "$KAFKA_PORT" && port_open "$KAFKA_SASL_SSL_PORT"; then
    echo "kafka    up    pid $pid  $INFRA_HOST:$KAFKA_PORT  SASL_SSL :$KAFKA_SASL_SSL_PORT  (Kafka $KAFKA_VERSION, KRaft)"
  else
    echo "kafka    DOWN  $INFRA_HOST:$KAFKA_PORT"
    return 1
  fi
}
