#!/usr/bin/env bash
# Starts the real services backflow's tests and local development use:
#   PostgreSQL 15 with wal_level=logical            127.0.0.1:5432 (trust auth, TLS)
#   MariaDB with a ROW/FULL binlog and server_id=1  127.0.0.1:3306 (root, no password, TLS)
#   Apache Kafka 4.1.1 (KRaft, jars from Maven)     127.0.0.1:9092
# and the tools the tests drive: headless Chromium (the dashboard test),
# tcpdump (the test that no row value crosses the loopback in clear).
#
# Usage: scripts/services.sh up|down|status
#   up      install what is missing, (re)configure, start, wait until each answers
#   down    stop the broker this script started (the databases keep running)
#   status  one line per service; exits non-zero if one is not ok
#
# Idempotent: a second `up` changes nothing and returns in about a second.
# Settings (environment):
#   BACKFLOW_CACHE         where Kafka's jars are cached (default ~/.cache/backflow)
#   BACKFLOW_SERVICES_DIR  broker data, logs and pid (default <repo>/.services)
#   BACKFLOW_KAFKA_PORT    broker port (default 9092)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BACKFLOW_CACHE:-$HOME/.cache/backflow}
STATE=${BACKFLOW_SERVICES_DIR:-$ROOT/.services}
KAFKA_PORT=${BACKFLOW_KAFKA_PORT:-9092}

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

# wait_until DESCRIPTION SECONDS COMMAND...: retry COMMAND until it succeeds.
wait_until() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
  log "installing $* from Debian"
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -f "$STATE/.apt-updated" ]; then
    apt-get update -qq
    mkdir -p "$STATE" && touch "$STATE/.apt-updated"
  fi
  apt-get install -y -qq "$@" >/dev/null
}

# ------------------------------------------------------- database TLS certs
# Both test databases offer TLS with a certificate for IP 127.0.0.1 (and no
# DNS name, so a client that connects to "localhost" under verify-full is
# refused: the tests use that). Made once with openssl into $CACHE/db-tls
# (one set per machine, as the servers are: every checkout's tests find it):
#   ca.crt        the CA that signs the servers' certificate (clients trust it)
#   other-ca.crt  a CA that signed nothing here (clients that trust only it fail)
#   server.crt/.key  copied to where each server may read its key
DB_TLS=$CACHE/db-tls
PG_TLS_DIR=/var/lib/postgresql/backflow-tls
MARIADB_TLS_DIR=/etc/mysql/backflow-tls

db_tls_certs() {
  command -v openssl >/dev/null || apt_install openssl
  if [ ! -f "$DB_TLS/server.crt" ] || [ ! -f "$DB_TLS/other-ca.crt" ]; then
    log "making the test databases' TLS certificates in $DB_TLS"
    rm -rf "$DB_TLS.partial" && mkdir -p "$DB_TLS.partial"
    (
      cd "$DB_TLS.partial"
      for ca in ca other-ca; do
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=backflow test $ca" \
          -keyout "$ca.key" -out "$ca.crt" 2>/dev/null
      done
      openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout server.key -out server.csr 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile server.ext -out server.crt 2>/dev/null
      rm -f server.csr server.ext ca.srl other-ca.key
    ) || die "cannot make the databases' TLS certificates with openssl"
    rm -rf "$DB_TLS" && mv "$DB_TLS.partial" "$DB_TLS"
  fi
}

# install_server_tls DIR OWNER: the server certificate and key where OWNER
# (and only OWNER) reads them; succeeds when they changed (the server must
# then read them again).
install_server_tls() {
  local dir=$1 owner=$2
  mkdir -p "$dir"
  chown "$owner" "$dir" && chmod 0700 "$dir"
  cmp -s "$DB_TLS/server.crt" "$dir/server.crt" && return 1
  install -m 0644 -o "$owner" "$DB_TLS/server.crt" "$dir/server.crt"
  install -m 0644 -o "$owner" "$DB_TLS/ca.crt" "$dir/ca.crt"
  install -m 0600 -o "$owner" "$DB_TLS/server.key" "$dir/server.key"
}

# ---------------------------------------------------------------- PostgreSQL
pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n1; }
pg_tcp() { psql -h 127.0.0.1 -U postgres -d postgres -XAtq "$@"; }
pg_tls_on() { [ "$(pg_tcp -c 'show ssl')" = on ]; }
pg_local() { su postgres -c "psql -d postgres -XAtq $(printf '%q ' "$@")"; }

postgres_up() {
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(pg_version)" ]; then
    apt_install postgresql postgresql-client
  fi
  local ver; ver=$(pg_version)
  local conf=/etc/postgresql/$ver/main
  if ! pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
    log "starting PostgreSQL $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  fi
  wait_until "PostgreSQL" 60 pg_local -c 'select 1' \
    || die "PostgreSQL $ver did not start; see /var/log/postgresql/postgresql-$ver-main.log"

  # Tests connect over TCP as postgres without a password.
  if ! pg_tcp -c 'select 1' >/dev/null 2>&1; then
    log "allowing trust auth on 127.0.0.1 for local tests ($conf/pg_hba.conf)"
    sed -i '1i host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust' "$conf/pg_hba.conf"
    pg_local -c 'select pg_reload_conf()' >/dev/null
  fi
  if ! grep -qE '^host\s+replication\s+all\s+127\.0\.0\.1/32\s+trust' "$conf/pg_hba.conf"; then
    sed -i '1i host replication all 127.0.0.1/32 trust' "$conf/pg_hba.conf"
    pg_local -c 'select pg_reload_conf()' >/dev/null
  fi
  # TLS: the tests' role bf_tls (created by the tests) may log in only over
  # TLS, with its password; these lines go first.
  if ! grep -qE '^hostnossl\s+all\s+bf_tls\s+127\.0\.0\.1/32\s+reject' "$conf/pg_hba.conf"; then
    log "allowing the test role bf_tls over TLS only ($conf/pg_hba.conf)"
    local net
    for net in 127.0.0.1/32 ::1/128; do
      sed -i "1i hostnossl all bf_tls $net reject\nhostnossl replication bf_tls $net reject\nhostssl all bf_tls $net scram-sha-256\nhostssl replication bf_tls $net scram-sha-256" "$conf/pg_hba.conf"
    done
    pg_local -c 'select pg_reload_conf()' >/dev/null
  fi
  local new_cert=0
  install_server_tls "$PG_TLS_DIR" postgres && new_cert=1
  if [ $new_cert = 1 ] || [ "$(pg_tcp -c 'show ssl')" != on ] || [ "$(pg_tcp -c 'show ssl_cert_file')" != "$PG_TLS_DIR/server.crt" ]; then
    log "turning on TLS (ssl = on, $PG_TLS_DIR)"
    pg_tcp -c 'ALTER SYSTEM SET ssl = on' \
      -c "ALTER SYSTEM SET ssl_cert_file = '$PG_TLS_DIR/server.crt'" \
      -c "ALTER SYSTEM SET ssl_key_file = '$PG_TLS_DIR/server.key'" >/dev/null
    pg_tcp -c 'select pg_reload_conf()' >/dev/null
    wait_until "PostgreSQL TLS" 20 pg_tls_on \
      || die "PostgreSQL did not turn TLS on; see /var/log/postgresql/postgresql-$ver-main.log"
  fi
  # The connector tests' SCRAM role (bf_scram, created by the tests) must
  # give its password: these lines go first, before the trust lines above.
  # Run again, nothing changes.
  if ! grep -qE '^host\s+all\s+bf_scram\s+127\.0\.0\.1/32\s+scram-sha-256' "$conf/pg_hba.conf"; then
    log "requiring scram-sha-256 of the test role bf_scram ($conf/pg_hba.conf)"
    sed -i '1i host all bf_scram 127.0.0.1/32 scram-sha-256\nhost replication bf_scram 127.0.0.1/32 scram-sha-256' "$conf/pg_hba.conf"
    pg_local -c 'select pg_reload_conf()' >/dev/null
  fi

  local restart=0
  [ "$(pg_tcp -c 'show wal_level')" = logical ] || restart=1
  [ "$(pg_tcp -c 'show max_replication_slots')" -ge 128 ] || restart=1
  [ "$(pg_tcp -c 'show max_wal_senders')" -ge 64 ] || restart=1
  if [ $restart = 1 ]; then
    log "setting wal_level=logical, max_replication_slots=128, max_wal_senders=64 and restarting PostgreSQL"
    pg_tcp -c 'ALTER SYSTEM SET wal_level = logical' \
      -c 'ALTER SYSTEM SET max_replication_slots = 128' \
      -c 'ALTER SYSTEM SET max_wal_senders = 64' >/dev/null
    pg_ctlcluster --skip-systemctl-redirect "$ver" main restart
    wait_until "PostgreSQL" 60 pg_tcp -c 'select 1' || die "PostgreSQL did not come back after restart"
  fi
  for db in test root; do
    [ "$(pg_tcp -c "select 1 from pg_database where datname = '$db'")" = 1 ] \
      || pg_tcp -c "create database $db" >/dev/null
  done
}

postgres_status() {
  local wal
  if wal=$(pg_tcp -c 'show wal_level' 2>/dev/null) && [ "$wal" = logical ]; then
    echo "postgres  ok    127.0.0.1:5432  $(pg_tcp -c 'show server_version' | cut -d' ' -f1) wal_level=$wal"
  else
    echo "postgres  DOWN  127.0.0.1:5432  ${wal:+wal_level=$wal (needs logical)}"
    return 1
  fi
}

# ------------------------------------------------------------------- MariaDB
MARIADB_CNF=/etc/mysql/mariadb.conf.d/90-backflow.cnf
my_tcp() { mariadb -uroot -h127.0.0.1 -P3306 -N -B "$@"; }
my_binlog() { my_tcp -e 'select @@log_bin, @@binlog_format, @@binlog_row_image, @@server_id' | tr '\t' ' '; }

mariadb_start() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  mkdir -p /var/log/mysql && chown mysql:mysql /var/log/mysql
  # mariadbd refuses to run as root: it drops to the mysql user itself.
  # Its error log goes to a file (no syslog or journal here).
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
    -- --user=mysql --log-error=/var/log/mysql/error.log
  wait_until "MariaDB" 60 mariadb -uroot -N -e 'select 1' \
    || { tail -n 20 /var/log/mysql/error.log >&2 || true; die "MariaDB did not start; see /var/log/mysql/error.log"; }
}

mariadb_up() {
  if ! command -v mariadbd >/dev/null; then
    apt_install mariadb-server mariadb-client
  fi
  mkdir -p "$(dirname "$MARIADB_CNF")"
  local want; want=$(cat <<'EOF'
# Written by backflow's scripts/services.sh: the binlog the mysql source needs.
[mariadbd]
log_bin           = mysql-bin
binlog_format     = ROW
binlog_row_image  = FULL
server_id         = 1
bind_address      = 127.0.0.1
ssl_cert          = /etc/mysql/backflow-tls/server.crt
ssl_key           = /etc/mysql/backflow-tls/server.key
ssl_ca            = /etc/mysql/backflow-tls/ca.crt
EOF
)
  local new_cert=0
  install_server_tls "$MARIADB_TLS_DIR" mysql && new_cert=1
  if [ ! -f "$MARIADB_CNF" ] || [ "$(cat "$MARIADB_CNF")" != "$want" ]; then
    printf '%s\n' "$want" >"$MARIADB_CNF"
  fi
  # Some images ship a my.cnf that does not read mariadb.conf.d.
  if [ -f /etc/mysql/my.cnf ] && ! grep -qE '^!includedir\s+/etc/mysql/mariadb.conf.d' /etc/mysql/my.cnf; then
    printf '\n!includedir /etc/mysql/mariadb.conf.d/\n' >>/etc/mysql/my.cnf
  fi
  if ! mariadb -uroot -N -e 'select 1' >/dev/null 2>&1; then
    log "starting MariaDB"
    mariadb_start
  fi
  # Tests connect over TCP as root without a password.
  if ! my_tcp -e 'select 1' >/dev/null 2>&1; then
    log "allowing root without password over TCP for local tests"
    mariadb -uroot -e "ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket"
  fi
  if [ "$(my_binlog)" != "1 ROW FULL 1" ] || [ "$(my_tcp -e 'select @@have_ssl')" != YES ]; then
    log "enabling the ROW/FULL binlog and TLS ($MARIADB_CNF) and restarting MariaDB"
    mariadb-admin -uroot shutdown
    wait_until "MariaDB to stop" 60 bash -c '! pgrep -x mariadbd'
    mariadb_start
    [ "$(my_binlog)" = "1 ROW FULL 1" ] || die "MariaDB binlog settings not applied: $(my_binlog)"
  fi
  if [ $new_cert = 1 ]; then
    log "MariaDB reads its new TLS certificate (FLUSH SSL)"
    my_tcp -e 'FLUSH SSL'
  fi
  my_tcp -e 'create database if not exists test'
}

mariadb_status() {
  local b
  if b=$(my_binlog 2>/dev/null) && [ "$b" = "1 ROW FULL 1" ]; then
    echo "mariadb   ok    127.0.0.1:3306  $(my_tcp -e 'select version()' | cut -d- -f1) log_bin=ON binlog_format=ROW binlog_row_image=FULL server_id=1"
  else
    echo "mariadb   DOWN  127.0.0.1:3306  ${b:+log_bin/format/image/server_id=$b}"
    return 1
  fi
}

# ------------------------------------------------------------- Apache Kafka
# The broker of every test, benchmark and local run: Apache Kafka from Maven
# Central (scripts/kafka/pom.xml: kafka_2.13 and its dependencies, a log4j2
# binding), cached in $CACHE/kafka-$KAFKA_VERSION/libs; a formatted KRaft
# storage directory beside it (storage-template/), which each test's broker
# copies (tests/src/lib.rs TestBroker); and one broker+controller on
# 127.0.0.1:$KAFKA_PORT for development, its data in $STATE/kafka.
KAFKA_VERSION=4.1.1
KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
KAFKA_DATA=$STATE/kafka
CONTROLLER_PORT=${BACKFLOW_KAFKA_CONTROLLER_PORT:-9093}

kafka_java() { java -Xms64m -Xmx512m -XX:+UseSerialGC -cp "$KAFKA_HOME/libs/*" "$@"; }
kafka_pid() { cat "$KAFKA_DATA/kafka.pid" 2>/dev/null || true; }
kafka_running() { local p; p=$(kafka_pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

kafka_fetch() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  # The tests' secured brokers get certificates made with openssl.
  command -v openssl >/dev/null || apt_install openssl
  if [ ! -f "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    command -v mvn >/dev/null || apt_install maven
    log "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME/libs"
    rm -rf "$KAFKA_HOME/libs.partial"
    mkdir -p "$KAFKA_HOME"
    (cd "$KAFKA_HOME" && mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" \
      -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DoutputDirectory="$KAFKA_HOME/libs.partial") \
      || die "cannot fetch Apache Kafka from Maven Central (mvn dependency:copy-dependencies -f scripts/kafka/pom.xml)"
    mv "$KAFKA_HOME/libs.partial" "$KAFKA_HOME/libs"
  fi
  if [ ! -f "$KAFKA_HOME/storage-template/meta.properties" ]; then
    # Formatted once; every broker copies it (node id 1, a quorum of
    # itself), so none pays for a second JVM start to format.
    local tmp; tmp=$(mktemp -d)
    printf 'process.roles=broker,controller\nnode.id=1\ncontroller.quorum.voters=1@127.0.0.1:1\nlisteners=PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:1\ncontroller.listener.names=CONTROLLER\nlog.dirs=%s\n' \
      "$tmp/storage" >"$tmp/format.properties"
    kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null)" \
      -c "$tmp/format.properties" >/dev/null 2>&1 || die "cannot format Kafka's storage template"
    rm -rf "$KAFKA_HOME/storage-template"
    mv "$tmp/storage" "$KAFKA_HOME/storage-template"
    rm -rf "$tmp"
  fi
}

kafka_config() {
  cat <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA/storage
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPERTIES
}

kafka_log_config() {
  cat <<PROPERTIES
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $KAFKA_DATA/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{ISO8601} %p %c{1}: %m%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
PROPERTIES
}

kafka_up() {
  kafka_fetch
  if kafka_running && port_open "$KAFKA_PORT"; then return; fi
  if port_open "$KAFKA_PORT"; then
    # Another checkout's broker (or one started by hand): use it.
    log "a broker already listens on 127.0.0.1:$KAFKA_PORT; using it (set BACKFLOW_KAFKA_PORT for a separate one)"
    return
  fi
  mkdir -p "$KAFKA_DATA"
  [ -f "$KAFKA_DATA/storage/meta.properties" ] || cp -r "$KAFKA_HOME/storage-template" "$KAFKA_DATA/storage"
  kafka_config >"$KAFKA_DATA/server.properties"
  kafka_log_config >"$KAFKA_DATA/log4j2.properties"
  log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT"
  (cd "$KAFKA_DATA" || exit 1
    setsid java -Xms64m -Xmx512m -XX:+UseSerialGC \
      -Dlog4j2.configurationFile="$KAFKA_DATA/log4j2.properties" \
      -cp "$KAFKA_HOME/libs/*" kafka.Kafka server.properties \
      >>stdout.log 2>&1 </dev/null &
    echo $! >kafka.pid)
  wait_until "Apache Kafka" 30 port_open "$KAFKA_PORT" \
    || { tail -n 20 "$KAFKA_DATA/broker.log" >&2 || true; die "Apache Kafka did not listen on $KAFKA_PORT"; }
}

kafka_down() {
  local p; p=$(kafka_pid)
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill "$p"
    wait_until "Apache Kafka to stop" 30 bash -c "! kill -0 $p" || kill -9 "$p"
    log "stopped Apache Kafka (pid $p)"
  fi
  rm -f "$KAFKA_DATA/kafka.pid"
}

kafka_status() {
  if kafka_running && port_open "$KAFKA_PORT"; then
    echo "kafka     ok    127.0.0.1:$KAFKA_PORT  Apache Kafka $KAFKA_VERSION (KRaft, data in $KAFKA_DATA)"
  elif port_open "$KAFKA_PORT"; then
    echo "kafka     ok    127.0.0.1:$KAFKA_PORT  (a broker not started by this script)"
  else
    echo "kafka     DOWN  127.0.0.1:$KAFKA_PORT"
    return 1
  fi
}

# ------------------------------------------------------------------- tools
# Headless Chromium for the web page's browser tests (Debian's package),
# the CJK fonts its Chinese pages are drawn with, and Node.js with npm for
# the Playwright tests (tests/ui: the e2e test runs `npm ci` there itself).
tools_up() {
  command -v chromium >/dev/null || apt_install chromium
  fc-list :lang=zh 2>/dev/null | grep -q . || apt_install fonts-noto-cjk
  command -v npm >/dev/null || apt_install npm
  # The encryption test captures loopback traffic.
  command -v tcpdump >/dev/null || apt_install tcpdump
  "$ROOT/scripts/helm-setup.sh" >/dev/null
}

status() {
  local rc=0
  postgres_status || rc=1
  mariadb_status || rc=1
  kafka_status || rc=1
  return $rc
}

case "${1:-}" in
  up)
    db_tls_certs
    postgres_up
    mariadb_up
    kafka_up
    tools_up
    status
    ;;
  down)
    kafka_down
    log "PostgreSQL and MariaDB are machine services and keep running"
    ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
