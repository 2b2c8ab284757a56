#!/usr/bin/env bash
# Throwaway PostgreSQL + MariaDB servers for tests and benchmarks.
#
#   scripts/services.sh start  [DIR]   start both (idempotent), write DIR/env.sh
#   scripts/services.sh stop   [DIR]   stop both (by pid, never by name)
#   scripts/services.sh status [DIR]   exit 0 if both are up, 3 otherwise
#
# DIR defaults to ${ETL_SERVICES_DIR:-/tmp/etl-services}. Both servers listen on
# 127.0.0.1 only, on ETL_PG_PORT (55432) and ETL_MARIADB_PORT (53306).
#
# Layout of DIR:
#   env.sh            exports for the tests (source it)
#   pgdata/           PostgreSQL cluster        (owned by the PostgreSQL user)
#   pgrun/            PostgreSQL unix socket    (owned by the PostgreSQL user)
#   postgres.log      PostgreSQL server log
#   mariadb/          MariaDB datadir           (owned by the MariaDB user)
#   mariadb-run/      mariadb.sock, mariadbd.pid (owned by the MariaDB user)
#   mariadb.log       MariaDB error log
#   outfile/          MariaDB secure_file_priv: SELECT ... INTO OUTFILE goes here
#
# THESE INSTANCES ARE THROWAWAY TEST SERVERS: durability is switched off
# (fsync/synchronous_commit/full_page_writes off, InnoDB log flushed lazily)
# and authentication is trust / well-known passwords. Never point them at data
# you care about, and never expose them beyond loopback.
set -euo pipefail

PG_PORT=${ETL_PG_PORT:-55432}
MARIADB_PORT=${ETL_MARIADB_PORT:-53306}
PG_USER=etl                   # database superuser created by initdb
# Passwords with the characters URLs treat specially: the whole test suite runs with them, and
# the tests check that no output, log or file ever shows them.
PG_PASSWORD='etl-Pg/s3cret@x:y%z'
PG_DATABASE=postgres
MARIADB_USER=etl
MARIADB_PASSWORD='etl-My/s3cret@x:y%z'
MARIADB_DATABASE=matomo
FALLBACK_OS_USER=etl-services # used when no postgres/mysql system user exists
WAIT_SECONDS=60

die() { echo "services.sh: error: $*" >&2; exit 1; }
log() { echo "services.sh: $*" >&2; }

usage() {
    echo "usage: $0 {start|stop|status} [DIR]" >&2
    exit 2
}

# Print the last lines of a log file to stderr (used on every failure path).
log_tail() {
    local f=$1
    if [[ -s $f ]]; then
        echo "---- last 40 lines of $f ----" >&2
        tail -n 40 "$f" >&2 || true
        echo "---- end of $f ----" >&2
    else
        echo "(log $f is empty or missing)" >&2
    fi
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# kill -0, but a zombie (exited, not yet reaped -- happens when PID 1 in a
# container does not reap orphans) counts as dead.
pid_alive() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/stat ]]; then
        state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1) || return 1
        [[ $state != Z ]] || return 1
    fi
    return 0
}

# Pick (or create) the OS user a server runs as. Only relevant as root:
# PostgreSQL refuses to run as root, and MariaDB should not.
os_user_for() {
    local preferred=$1
    if ! is_root; then
        id -un
        return
    fi
    if getent passwd "$preferred" >/dev/null; then
        echo "$preferred"
        return
    fi
    if ! getent passwd "$FALLBACK_OS_USER" >/dev/null; then
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$FALLBACK_OS_USER" >/dev/null \
            || die "could not create system user $FALLBACK_OS_USER"
    fi
    echo "$FALLBACK_OS_USER"
}

# Run a command as the given OS user (directly if we are not root).
# cd / first: the caller's cwd (e.g. /root) may be unreadable for that user,
# which makes pg_ctl fail with "could not identify current directory".
run_as() {
    local user=$1
    shift
    if is_root && [[ $user != root ]]; then
        if command -v runuser >/dev/null; then
            (cd / && runuser -u "$user" -- "$@")
        else
            (cd / && su -s /bin/sh "$user" -c "$(printf '%q ' "$@")")
        fi
    else
        (cd / && "$@")
    fi
}

# Make a directory owned by the given user (when root) with the given mode.
own_dir() {
    local user=$1 mode=$2 dir=$3
    mkdir -p "$dir"
    if is_root; then chown "$user:" "$dir"; fi
    chmod "$mode" "$dir"
}

own_file() {
    local user=$1 file=$2
    touch "$file"
    if is_root; then chown "$user:" "$file"; fi
}

# ---------------------------------------------------------------- PostgreSQL

find_pg_bindir() {
    local d
    if [[ -n ${ETL_PG_BINDIR:-} ]]; then
        echo "$ETL_PG_BINDIR"
        return
    fi
    # Prefer 15 (what production runs), then pg_config, then newest installed.
    if [[ -x /usr/lib/postgresql/15/bin/pg_ctl ]]; then
        echo /usr/lib/postgresql/15/bin
        return
    fi
    if command -v pg_config >/dev/null; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if [[ -n $d && -x $d/pg_ctl ]]; then
            echo "$d"
            return
        fi
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x $d/pg_ctl ]]; then
            echo "$d"
            return
        fi
    done
    if command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"
        return
    fi
    die "PostgreSQL server binaries (pg_ctl/initdb) not found; install the 'postgresql' package"
}

pg_setup_vars() {
    PG_BIN=$(find_pg_bindir)
    PG_OS_USER=$(os_user_for postgres)
    PGDATA_DIR=$DIR/pgdata
    PG_SOCK_DIR=$DIR/pgrun
    PG_LOG=$DIR/postgres.log
}

pg_postmaster_pid() {
    local pid
    [[ -f $PGDATA_DIR/postmaster.pid ]] || return 1
    pid=$(head -n 1 "$PGDATA_DIR/postmaster.pid" | tr -dc '0-9')
    [[ -n $pid ]] || return 1
    echo "$pid"
}

pg_running() {
    local pid
    [[ -f $PGDATA_DIR/PG_VERSION ]] || return 1
    pid=$(pg_postmaster_pid) || return 1
    pid_alive "$pid" || return 1
    run_as "$PG_OS_USER" "$PG_BIN/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1
}

pg_ready() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DATABASE" \
        >/dev/null 2>&1
}

pg_wait_ready() {
    local i
    for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
        if pg_ready; then return 0; fi
        if ! pg_running; then
            log "PostgreSQL exited during startup"
            log_tail "$PG_LOG"
            exit 1
        fi
        sleep 0.5
    done
    log "PostgreSQL did not accept connections on 127.0.0.1:$PG_PORT within ${WAIT_SECONDS}s"
    log_tail "$PG_LOG"
    exit 1
}

pg_start() {
    local pid
    pg_setup_vars
    own_dir "$PG_OS_USER" 0755 "$PG_SOCK_DIR"
    own_file "$PG_OS_USER" "$PG_LOG"

    if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
        log "initialising PostgreSQL cluster in $PGDATA_DIR ($PG_BIN)"
        rm -rf "$PGDATA_DIR"
        own_dir "$PG_OS_USER" 0700 "$PGDATA_DIR"
        if ! run_as "$PG_OS_USER" "$PG_BIN/initdb" -D "$PGDATA_DIR" \
            --auth=trust -U "$PG_USER" --encoding=UTF8 --locale=C \
            >>"$PG_LOG" 2>&1; then
            log "initdb failed"
            log_tail "$PG_LOG"
            exit 1
        fi
        echo "include_if_exists = 'etl-services.conf'" >>"$PGDATA_DIR/postgresql.conf"
    fi

    # Rewritten on every start so that port/dir changes take effect.
    # Throwaway test instance: durability deliberately off for speed.
    cat >"$PGDATA_DIR/etl-services.conf" <<EOF
# Written by scripts/services.sh -- throwaway test instance, NOT crash safe.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK_DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
max_wal_size = 4GB
max_connections = 200
EOF
    if is_root; then chown "$PG_OS_USER:" "$PGDATA_DIR/etl-services.conf"; fi
    pg_tls_setup

    if pg_running; then
        if pg_ready; then
            log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
            # Settings written above (TLS, pg_hba) take effect on reload.
            run_as "$PG_OS_USER" "$PG_BIN/pg_ctl" reload -D "$PGDATA_DIR" >/dev/null 2>>"$PG_LOG" || true
            pg_tls_role
            return 0
        fi
        log "PostgreSQL running but not ready yet; waiting"
        local i
        for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
            if pg_ready; then return 0; fi
            if ! pg_running; then break; fi
            sleep 0.5
        done
        if pg_running; then
            log "PostgreSQL is running but does not accept connections on 127.0.0.1:$PG_PORT"
            log_tail "$PG_LOG"
            exit 1
        fi
        log "PostgreSQL went away; starting it again"
    fi
    # Lock file left by a postmaster that died (e.g. kill -9): remove it, or the
    # new postmaster may refuse to start if the old pid is a zombie or reused.
    if pid=$(pg_postmaster_pid) && ! pid_alive "$pid"; then
        rm -f "$PGDATA_DIR/postmaster.pid"
    fi
    local lock
    for lock in "$PG_SOCK_DIR"/.s.PGSQL.*.lock; do
        [[ -f $lock ]] || continue
        pid=$(head -n 1 "$lock" | tr -dc '0-9')
        if [[ -z $pid ]] || ! pid_alive "$pid"; then
            rm -f "$lock" "${lock%.lock}"
        fi
    done

    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    # pg_ctl -w itself waits for readiness; don't trust it blindly, check below.
    if ! run_as "$PG_OS_USER" "$PG_BIN/pg_ctl" start -D "$PGDATA_DIR" -l "$PG_LOG" \
        -w -t "$WAIT_SECONDS" >/dev/null 2>>"$PG_LOG"; then
        log "pg_ctl start failed"
        log_tail "$PG_LOG"
        exit 1
    fi
    pg_wait_ready
    pg_tls_role
}

# TLS for the tests of `sslmode=require` / `verify-full`: a throwaway CA (DIR/pg-ca.crt)
# signing a certificate for 127.0.0.1 and localhost, ssl = on, and a role
# `etl_tls` that pg_hba admits over TLS only.
pg_tls_setup() {
    local crt=$PGDATA_DIR/server.crt key=$PGDATA_DIR/server.key ca=$DIR/pg-ca.crt
    if [[ ! -s $crt || ! -s $key || ! -s $ca ]]; then
        command -v openssl >/dev/null || die "openssl is needed to make the test server's TLS certificate"
        local work
        work=$(mktemp -d)
        # A throwaway CA, and a server certificate it signs (clients verify the chain).
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=etl test CA" \
            -keyout "$work/ca.key" -out "$work/ca.crt" >/dev/null 2>&1 \
            && openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
                -keyout "$work/server.key" -out "$work/server.csr" >/dev/null 2>&1 \
            && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$work/ext" \
            && openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
                -CAcreateserial -days 3650 -extfile "$work/ext" -out "$work/server.crt" >/dev/null 2>&1 \
            || die "openssl could not make the test certificates"
        cp -f "$work/server.crt" "$crt"
        cp -f "$work/server.key" "$key"
        cp -f "$work/ca.crt" "$ca"
        rm -rf "$work"
        if is_root; then chown "$PG_OS_USER:" "$crt" "$key"; fi
        chmod 0600 "$key"
        chmod 0644 "$ca"
    fi
    printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" >>"$PGDATA_DIR/etl-services.conf"
    local hba=$PGDATA_DIR/pg_hba.conf
    if ! grep -q '^# etl-services tls' "$hba"; then
        local tmp
        tmp=$(mktemp)
        {
            echo "# etl-services tls: etl_tls may only connect over TLS"
            echo "hostssl all etl_tls 127.0.0.1/32 trust"
            echo "host    all etl_tls 127.0.0.1/32 reject"
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba"
        rm -f "$tmp"
    fi
    if ! grep -q '^# etl-services password' "$hba"; then
        local tmp
        tmp=$(mktemp)
        {
            echo "# etl-services password: over TCP, etl logs in with its password (scram)"
            echo "host    all etl 127.0.0.1/32 scram-sha-256"
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba"
        rm -f "$tmp"
    fi
}

pg_tls_role() {
    run_as "$PG_OS_USER" "$PG_BIN/psql" -X -q -h "$PG_SOCK_DIR" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DATABASE" \
        -c "DO \$\$ BEGIN CREATE ROLE etl_tls LOGIN SUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$" \
        -c "ALTER ROLE $PG_USER PASSWORD '$PG_PASSWORD'" \
        >/dev/null 2>>"$PG_LOG" || die "could not create the etl_tls role or set etl's password"
}

# A URL's user-info part: every byte but unreserved ones percent-encoded.
url_encode() {
    local s=$1 out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
            [A-Za-z0-9._~-]) out+=$c ;;
            *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    printf '%s' "$out"
}

pg_stop() {
    pg_setup_vars
    if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
        log "PostgreSQL: no cluster in $PGDATA_DIR"
        return 0
    fi
    if ! pg_running; then
        log "PostgreSQL not running"
        return 0
    fi
    log "stopping PostgreSQL"
    if ! run_as "$PG_OS_USER" "$PG_BIN/pg_ctl" stop -D "$PGDATA_DIR" -m fast \
        -w -t "$WAIT_SECONDS" >/dev/null; then
        log "pg_ctl stop failed"
        log_tail "$PG_LOG"
        return 1
    fi
}

pg_status() {
    pg_setup_vars
    if pg_running && pg_ready; then
        echo "postgresql: running, 127.0.0.1:$PG_PORT, data $PGDATA_DIR"
        return 0
    fi
    echo "postgresql: not running (data $PGDATA_DIR)"
    return 1
}

# ------------------------------------------------------------------- MariaDB

find_cmd() {
    local c
    for c in "$@"; do
        if command -v "$c" >/dev/null; then
            command -v "$c"
            return 0
        fi
        if [[ -x /usr/sbin/$c ]]; then
            echo "/usr/sbin/$c"
            return 0
        fi
    done
    return 1
}

mariadb_setup_vars() {
    MARIADB_DATA=$DIR/mariadb
    MARIADB_RUN=$DIR/mariadb-run
    MARIADB_SOCK=$MARIADB_RUN/mariadb.sock
    MARIADB_PIDFILE=$MARIADB_RUN/mariadbd.pid
    MARIADB_LOG=$DIR/mariadb.log
    MARIADB_OUTFILE=$DIR/outfile
}

mariadb_setup_bins() {
    MARIADBD=$(find_cmd mariadbd mysqld) \
        || die "mariadbd/mysqld not found; install the 'mariadb-server' package"
    MARIADB_INSTALL_DB=$(find_cmd mariadb-install-db mysql_install_db) \
        || die "mariadb-install-db not found; install the 'mariadb-server' package"
    MARIADB_CLIENT=$(find_cmd mariadb mysql) \
        || die "mariadb client not found; install the 'mariadb-client' package"
    MARIADB_ADMIN=$(find_cmd mariadb-admin mysqladmin) \
        || die "mariadb-admin not found; install the 'mariadb-client' package"
    MARIADB_OS_USER=$(os_user_for mysql)
}

mariadb_pid() {
    local pid
    [[ -f $MARIADB_PIDFILE ]] || return 1
    pid=$(tr -dc '0-9' <"$MARIADB_PIDFILE")
    [[ -n $pid ]] || return 1
    pid_alive "$pid" || return 1
    echo "$pid"
}

# Root over the unix socket (root has no password: --auth-root-authentication-method=normal).
mariadb_root() {
    "$MARIADB_CLIENT" --no-defaults --protocol=socket --socket="$MARIADB_SOCK" -uroot "$@"
}

mariadb_ready() {
    "$MARIADB_ADMIN" --no-defaults --protocol=socket --socket="$MARIADB_SOCK" -uroot \
        --connect-timeout=2 ping >/dev/null 2>&1
}

mariadb_start() {
    mariadb_setup_vars
    mariadb_setup_bins
    own_dir "$MARIADB_OS_USER" 0755 "$MARIADB_RUN"
    own_dir "$MARIADB_OS_USER" 0777 "$MARIADB_OUTFILE"
    own_file "$MARIADB_OS_USER" "$MARIADB_LOG"

    local pid
    if pid=$(mariadb_pid); then
        if mariadb_ready; then
            log "MariaDB already running on 127.0.0.1:$MARIADB_PORT (pid $pid)"
            mariadb_provision
            return 0
        fi
        log "MariaDB (pid $pid) running but not ready yet; waiting"
    else
        rm -f "$MARIADB_PIDFILE"
        if [[ ! -d $MARIADB_DATA/mysql ]]; then
            log "initialising MariaDB datadir $MARIADB_DATA"
            rm -rf "$MARIADB_DATA"
            own_dir "$MARIADB_OS_USER" 0700 "$MARIADB_DATA"
            local user_opt=()
            if is_root; then user_opt=(--user="$MARIADB_OS_USER"); fi
            if ! (cd / && "$MARIADB_INSTALL_DB" --no-defaults --datadir="$MARIADB_DATA" \
                "${user_opt[@]}" --auth-root-authentication-method=normal \
                --skip-test-db --skip-name-resolve) >>"$MARIADB_LOG" 2>&1; then
                log "mariadb-install-db failed"
                log_tail "$MARIADB_LOG"
                rm -rf "$MARIADB_DATA"
                exit 1
            fi
        fi

        log "starting MariaDB on 127.0.0.1:$MARIADB_PORT"
        local user_opt=()
        if is_root; then user_opt=(--user="$MARIADB_OS_USER"); fi
        # --no-defaults: ignore /etc/mysql/*.cnf (system socket/pid paths etc.).
        # Throwaway test instance: lazy InnoDB flushing, no binlog, no doublewrite.
        # setsid: own session, so a Ctrl-C on the caller's terminal doesn't hit it.
        (cd / && exec setsid "$MARIADBD" --no-defaults \
            "${user_opt[@]}" \
            --datadir="$MARIADB_DATA" \
            --port="$MARIADB_PORT" \
            --bind-address=127.0.0.1 \
            --socket="$MARIADB_SOCK" \
            --pid-file="$MARIADB_PIDFILE" \
            --log-error="$MARIADB_LOG" \
            --secure-file-priv="$MARIADB_OUTFILE" \
            --skip-name-resolve \
            --skip-log-bin \
            --innodb-flush-log-at-trx-commit=0 \
            --innodb-doublewrite=0 \
            --innodb-buffer-pool-size=256M \
            --max-allowed-packet=256M \
            --max-connections=200 \
            --character-set-server=utf8mb4 \
            --collation-server=utf8mb4_general_ci \
            </dev/null >>"$MARIADB_LOG" 2>&1) &
        local child=$!
        # Wait for the pid file (or the child dying).
        local i
        for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
            if mariadb_pid >/dev/null; then break; fi
            if ! pid_alive "$child"; then
                log "mariadbd exited during startup"
                log_tail "$MARIADB_LOG"
                exit 1
            fi
            sleep 0.5
        done
    fi

    local i
    for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
        if mariadb_ready; then
            mariadb_provision
            return 0
        fi
        if ! mariadb_pid >/dev/null; then
            log "mariadbd is not running (no live pid in $MARIADB_PIDFILE)"
            log_tail "$MARIADB_LOG"
            exit 1
        fi
        sleep 0.5
    done
    log "MariaDB did not accept connections within ${WAIT_SECONDS}s"
    log_tail "$MARIADB_LOG"
    exit 1
}

# Idempotent: run on every start.
mariadb_provision() {
    if ! mariadb_root <<EOF; then
CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`
    CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
CREATE USER IF NOT EXISTS '$MARIADB_USER'@'%' IDENTIFIED BY '$MARIADB_PASSWORD';
CREATE USER IF NOT EXISTS '$MARIADB_USER'@'localhost' IDENTIFIED BY '$MARIADB_PASSWORD';
ALTER USER '$MARIADB_USER'@'%' IDENTIFIED BY '$MARIADB_PASSWORD';
ALTER USER '$MARIADB_USER'@'localhost' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO '$MARIADB_USER'@'%' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO '$MARIADB_USER'@'localhost' WITH GRANT OPTION;
FLUSH PRIVILEGES;
EOF
        log "creating MariaDB user/database failed"
        log_tail "$MARIADB_LOG"
        exit 1
    fi
}

mariadb_stop() {
    mariadb_setup_vars
    local pid
    if ! pid=$(mariadb_pid); then
        log "MariaDB not running"
        rm -f "$MARIADB_PIDFILE"
        return 0
    fi
    log "stopping MariaDB (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
        if ! pid_alive "$pid"; then
            rm -f "$MARIADB_PIDFILE"
            return 0
        fi
        sleep 0.5
    done
    log "MariaDB (pid $pid) did not stop within ${WAIT_SECONDS}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
    rm -f "$MARIADB_PIDFILE"
    log_tail "$MARIADB_LOG"
    return 1
}

mariadb_status() {
    mariadb_setup_vars
    MARIADB_ADMIN=$(find_cmd mariadb-admin mysqladmin) || MARIADB_ADMIN=false
    local pid
    if pid=$(mariadb_pid) && mariadb_ready; then
        echo "mariadb: running (pid $pid), 127.0.0.1:$MARIADB_PORT, data $MARIADB_DATA"
        return 0
    fi
    echo "mariadb: not running (data $MARIADB_DATA)"
    return 1
}

# ------------------------------------------------------------------- env.sh

write_env() {
    local env=$DIR/env.sh tmp
    tmp=$(mktemp "$DIR/.env.sh.XXXXXX")
    {
        echo "# Written by scripts/services.sh; source this file."
        printf 'export ETL_SERVICES_DIR=%q\n' "$DIR"
        printf 'export ETL_TEST_POSTGRES_URL=%q\n' \
            "postgres://$PG_USER:$(url_encode "$PG_PASSWORD")@127.0.0.1:$PG_PORT/$PG_DATABASE"
        printf 'export ETL_TEST_MARIADB_URL=%q\n' \
            "mysql://$MARIADB_USER:$(url_encode "$MARIADB_PASSWORD")@127.0.0.1:$MARIADB_PORT/$MARIADB_DATABASE"
        printf 'export ETL_TEST_MARIADB_OUTFILE_DIR=%q\n' "$DIR/outfile"
        printf 'export ETL_TEST_POSTGRES_TLS_URL=%q\n' "postgres://etl_tls@127.0.0.1:$PG_PORT/$PG_DATABASE"
        printf 'export ETL_TEST_POSTGRES_CA=%q\n' "$DIR/pg-ca.crt"
        printf 'export POSTGRES_HOST=%q\n' 127.0.0.1
        printf 'export POSTGRES_PORT=%q\n' "$PG_PORT"
        printf 'export POSTGRES_USER=%q\n' "$PG_USER"
        printf 'export POSTGRES_PASSWORD=%q\n' "$PG_PASSWORD"
        printf 'export POSTGRES_DATABASE=%q\n' "$PG_DATABASE"
        printf 'export MATOMO_HOST=%q\n' 127.0.0.1
        printf 'export MATOMO_PORT=%q\n' "$MARIADB_PORT"
        printf 'export MATOMO_USER=%q\n' "$MARIADB_USER"
        printf 'export MATOMO_PASSWORD=%q\n' "$MARIADB_PASSWORD"
        printf 'export MATOMO_DATABASE=%q\n' "$MARIADB_DATABASE"
    } >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$env"
    log "services ready; run: source $env"
}

# --------------------------------------------------------------------- main

[[ $# -ge 1 && $# -le 2 ]] || usage
cmd=$1
DIR=${2:-${ETL_SERVICES_DIR:-/tmp/etl-services}}
[[ $PG_PORT =~ ^[0-9]+$ ]] || die "ETL_PG_PORT must be a number, got '$PG_PORT'"
[[ $MARIADB_PORT =~ ^[0-9]+$ ]] || die "ETL_MARIADB_PORT must be a number, got '$MARIADB_PORT'"

case $cmd in
start)
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    # The server users must be able to traverse DIR (mktemp -d creates 0700).
    chmod 0755 "$DIR"
    for u in "$(os_user_for postgres)" "$(os_user_for mysql)"; do
        run_as "$u" test -x "$DIR" \
            || die "user $u cannot access $DIR (a parent directory is not traversable); use a DIR under /tmp"
    done
    pg_start
    mariadb_start
    write_env
    ;;
stop)
    if [[ ! -d $DIR ]]; then
        log "$DIR does not exist; nothing to stop"
        exit 0
    fi
    DIR=$(cd "$DIR" && pwd -P)
    rc=0
    mariadb_stop || rc=1
    pg_stop || rc=1
    exit $rc
    ;;
status)
    if [[ ! -d $DIR ]]; then
        echo "postgresql: not running ($DIR does not exist)"
        echo "mariadb: not running ($DIR does not exist)"
        exit 3
    fi
    DIR=$(cd "$DIR" && pwd -P)
    rc=0
    pg_status || rc=3
    mariadb_status || rc=3
    exit $rc
    ;;
*)
    usage
    ;;
esac
