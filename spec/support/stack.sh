#!/usr/bin/env bash
# Throwaway PostgreSQL + Ceph RGW (S3) on loopback for resclean's integration specs.
#
#   stack.sh start DIR        start both servers, load examples/schema.sql, write DIR/env
#   stack.sh stop DIR         stop what `start` started (by recorded PID) and remove DIR; idempotent
#   stack.sh restart-rgw DIR  (re)start radosgw, e.g. after a spec killed it; prints the new PID
#   stack.sh pg-ctl DIR ARGS  run pg_ctl ARGS on the stack's cluster as the right user
#   stack.sh standby DIR      start a streaming standby of its PostgreSQL (see "streaming standby")
#   stack.sh promote DIR      promote it;  stack.sh standby-stop DIR: stop it and remove its data
#   stack.sh pgbouncer DIR    start Debian's pgbouncer in front of the stack's PostgreSQL (only when
#                             asked: the pooler specs call it); idempotent; prints NAME=value lines
#   stack.sh pgbouncer-stop DIR  stop it (by its recorded PID): its server connections end with it
#
# PgBouncer (stack.sh pgbouncer): one pgbouncer on a free loopback port, run as postgres, with two
# databases onto the stack's one: resclean in transaction pooling and resclean_session in session
# pooling, default_pool_size 2 (so the same server connections are handed from client to client),
# auth_type scram-sha-256 against an auth_file written at start (DIR/pgbouncer, mode 600). Adds to
# DIR/env (and prints): RESCLEAN_PGBOUNCER_TX_URL, RESCLEAN_PGBOUNCER_SESSION_URL (sslmode=disable,
# the same resclean role and password as DATABASE_URL), RESCLEAN_PGBOUNCER_PID,
# RESCLEAN_PGBOUNCER_PORT, RESCLEAN_PGBOUNCER_LOG. Its PID is recorded in DIR/pids; stop stops it
# first, by that PID.
#
# DIR/env (mode 600) has `export NAME=value` lines:
#   DATABASE_URL (postgres://resclean:PASSWORD@127.0.0.1:PORT/resclean?sslmode=disable: plain TCP),
#   DATABASE_URL_TLS (postgres://resclean_tls:PASSWORD@127.0.0.1:PORT/resclean?sslmode=verify-full&
#   sslrootcert=CA: resclean_tls is a member of resclean that pg_hba.conf admits over TLS only),
#   RESCLEAN_PG_CA (that CA file), PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE;
#   AWS_ENDPOINT_URL_S3 AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION;
#   RESCLEAN_THROWAWAY_STACK (see below); RESCLEAN_STACK_DIR; RESCLEAN_PG_{BIN,PID,PORT,SOCKDIR,LOG,
#   RUNAS} RESCLEAN_PGDATA (superuser `postgres` via the socket dir, trust); RESCLEAN_CEPH_CONF
#   RESCLEAN_{MON,OSD,RGW}_PID RESCLEAN_{MON,RGW}_PORT RESCLEAN_RGW_LOG. restart-rgw and pg-ctl
#   rewrite the PID lines.
#
# Proof of a throwaway database: a random token made at start sits in the table
# resclean_throwaway_stack of the stack's database (owned by postgres, resclean may only read it)
# and in RESCLEAN_THROWAWAY_STACK. Helpers that truncate (fixtures.reset, the demo, the bench)
# run only where both match, so a production DATABASE_URL left in a shell is refused.
#
# PostgreSQL has ssl=on with a CA and a server certificate (SAN 127.0.0.1, localhost) made with
# openssl at start in DIR/pg/tls; DATABASE_URL asks for no TLS, so the specs that shift the clock
# and the bench see what they always did.
# DIR/pids has one "name pid" line per process started (postgres, ceph-mon, ceph-osd, radosgw).
#
# Everything lives under DIR (sockets, logs, data, ceph.conf), ports are free ones picked at
# random below the kernel's ephemeral range, and stop/cleanup only ever signals PIDs recorded in
# DIR/pids whose command line still names DIR, so several stacks can run side by side.
# See ../../../shared/notes/ceph-rgw.md for why the Ceph settings are what they are.
set -euo pipefail

PROG=stack
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SCHEMA=${RESCLEAN_SCHEMA:-$REPO/examples/schema.sql}
# Per-step deadline in seconds; the whole stack starts in ~3-5 s on an idle 2-core machine,
# but several stacks and spec runs at once can make it 5x slower.
STEP_TIMEOUT=${RESCLEAN_STACK_TIMEOUT:-90}
MARKER=.resclean-stack

# Values from the caller's shell must not leak into our own psql/curl calls.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGSSLMODE PGOPTIONS \
    PGPASSFILE DATABASE_URL CEPH_ARGS CEPH_CONF

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# Microseconds since the epoch, without forking.
now_us() { local t=${EPOCHREALTIME/./}; echo "$((10#$t))"; }
# Seconds (one decimal) since a now_us value.
since() { local d=$((($(now_us) - $1) / 100000)); echo "$((d / 10)).$((d % 10))s"; }

# The newest Debian PostgreSQL (RESCLEAN_PG_BIN overrides).
find_pg_bin() {
    local best
    best=$(printf '%s\n' /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)
    [[ -x $best ]] || die "no PostgreSQL under /usr/lib/postgresql/*/bin"
    dirname "$best"
}

# initdb and pg_ctl refuse to run as root: run them as `postgres` then.
as_pg() {
    if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

# The system interpreter: a pyenv shim costs ~0.8 s a call.
PYTHON=${RESCLEAN_PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}

# A free loopback port, picked at random below the ephemeral range so that an outgoing
# connection cannot grab it between this probe and the server's bind. Args: ports to avoid.
free_port() {
    "$PYTHON" - "$@" <<'PY'
import random, socket, sys
avoid = {int(a) for a in sys.argv[1:]}
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    eph_lo = int(f.read().split()[0])
lo, hi = 20000, max(20100, eph_lo - 1)
for _ in range(500):
    port = random.randint(lo, hi)
    if port in avoid:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    sys.exit(0)
sys.exit("no free port found")
PY
}

# Random credentials: hex password, AWS-shaped access key (20) and secret (40); then the
# throwaway stack's token.
gen_secrets() {
    "$PYTHON" -c '
import secrets, string
up = string.ascii_uppercase + string.digits
al = string.ascii_letters + string.digits
print(secrets.token_hex(16))
print("".join(secrets.choice(up) for _ in range(20)))
print("".join(secrets.choice(al) for _ in range(40)))
print(secrets.token_hex(16))'
}

# --- process bookkeeping ----------------------------------------------------------------------

# Alive and not a zombie (PID 1 here may not reap orphans promptly).
alive() {
    local pid=$1 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# Ours = alive and its command line names this stack's DIR (guards against PID reuse).
ours() {
    local pid=$1 cmd
    alive "$pid" || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *"$DIR/"* ]]
}

# Wait up to $2 seconds for PID $1 to be gone.
wait_gone() {
    local pid=$1 deadline=$(($(now_us) + $2 * 1000000))
    while alive "$pid"; do
        (($(now_us) < deadline)) || return 1
        sleep 0.05
    done
}

# TERM, wait, then KILL: only if the PID is still one of ours.
terminate() {
    local name=$1 pid=$2
    ours "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 15; then
        log "$name (pid $pid) ignored SIGTERM for 15s, killing"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || log "$name (pid $pid) still there after SIGKILL"
    fi
}

# Last recorded PID for a name in DIR/pids ("name pid" lines).
recorded_pid() {
    [[ -f $DIR/pids ]] || return 0
    awk -v n="$1" '$1 == n { p = $2 } END { if (p != "") print p }' "$DIR/pids"
}

record_pid() {
    echo "$1 $2" >>"$DIR/pids"
}

# Replace `export NAME=...` in DIR/env atomically (specs may re-read it after a restart).
set_env_var() {
    local name=$1 value=$2 tmp
    [[ -f $DIR/env ]] || return 0
    tmp=$(mktemp "$DIR/env.XXXXXX")
    grep -v "^export $name=" "$DIR/env" >"$tmp" || true
    printf 'export %s=%q\n' "$name" "$value" >>"$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$DIR/env"
}

# Run a daemon in its own session (so a Ctrl-C meant for the test run does not hit it;
# stop/cleanup shuts it down in order instead) and record its PID in SPAWNED and DIR/pids.
# setsid does not fork here: a background job of a script is never a process-group leader.
spawn() {
    local name=$1 out=$2
    shift 2
    setsid "$@" </dev/null >>"$out" 2>&1 &
    SPAWNED=$!
    record_pid "$name" "$SPAWNED"
}

tail_log() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        log "---- last lines of $f"
        tail -n 25 "$f" >&2
    done
}

# --- PostgreSQL -------------------------------------------------------------------------------

# A CA made for this stack and a server certificate it signed for 127.0.0.1 and localhost (EC
# P-256: ~0.1 s). The keys stay in DIR/pg/tls (mode 600); ca.crt is what sslrootcert names.
pg_tls() {
    local tls=$1
    mkdir -p "$tls"
    # (An `if` turns off set -e inside the subshell: each step is chained explicitly.)
    if ! (
        umask 077 && cd "$tls" &&
            openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
                -keyout ca.key -out ca.crt -days 30 -subj "/CN=resclean throwaway stack CA" \
                -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
            openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
                -keyout server.key -out server.csr -subj "/CN=127.0.0.1" &&
            printf '%s\n' subjectAltName=IP:127.0.0.1,DNS:localhost basicConstraints=critical,CA:FALSE \
                keyUsage=critical,digitalSignature extendedKeyUsage=serverAuth >server.ext &&
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
                -extfile server.ext -out server.crt
    ) >"$tls/openssl.out" 2>&1; then
        tail_log "$tls/openssl.out"
        log "could not make the TLS certificates"
        return 1
    fi
    chmod 644 "$tls/ca.crt" "$tls/server.crt"
    chmod 755 "$tls"
}

pg_up() {
    local t0 port pid tries=0 pgroot=$DIR/pg
    t0=$(now_us)
    mkdir -p "$pgroot/run"
    chmod 755 "$pgroot" "$pgroot/run"
    pg_tls "$pgroot/tls" || return 1
    if ((EUID == 0)); then chown -R postgres: "$pgroot"; fi
    if ! as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync --no-instructions \
        >"$pgroot/initdb.log" 2>&1; then
        tail_log "$pgroot/initdb.log"
        log "initdb failed"
        return 1
    fi
    # Loopback only; fsync off because the data is thrown away; log lines say who did what
    # so a failing spec's server side can be read in DIR/pg/postgres.log.
    cat >>"$PGDATA/postgresql.conf" <<EOF

# resclean throwaway test stack
listen_addresses = '127.0.0.1'
unix_socket_directories = '$pgroot/run'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 100
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
ssl = on
ssl_cert_file = '$pgroot/tls/server.crt'
ssl_key_file = '$pgroot/tls/server.key'
EOF
    # First match wins: resclean_tls is refused on any TCP connection without TLS.
    {
        printf '%s\n' '# resclean throwaway stack: resclean_tls connects over TLS only' \
            'hostnossl all resclean_tls all reject'
        cat "$PGDATA/pg_hba.conf"
    } >"$PGDATA/pg_hba.conf.new"
    mv -f "$PGDATA/pg_hba.conf.new" "$PGDATA/pg_hba.conf"
    if ((EUID == 0)); then chown postgres: "$PGDATA/pg_hba.conf"; fi
    port=$PG_PORT
    while :; do
        tries=$((tries + 1))
        echo "port = $port" >>"$PGDATA/postgresql.conf"
        if as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG" -w -t "$STEP_TIMEOUT" start \
            >"$pgroot/pg_ctl.out" 2>&1; then
            break
        fi
        # Someone took the port between probe and bind: try another one.
        if ((tries < 3)) && grep -q 'could not bind\|Address already in use' "$PG_LOG"; then
            log "postgres: port $port taken, retrying"
            port=$(free_port "${AVOID_PORTS[@]}")
            continue
        fi
        tail_log "$pgroot/pg_ctl.out" "$PG_LOG"
        log "postgres did not start"
        return 1
    done
    pid=$(head -n 1 "$PGDATA/postmaster.pid")
    record_pid postgres "$pid"
    echo "$port" >"$pgroot/port"

    # log_min_error_statement=panic: a failing CREATE ROLE must not write the password to the log.
    if ! psql -X -q -v ON_ERROR_STOP=1 -h "$pgroot/run" -p "$port" -U postgres -d postgres \
        -v pw="$PG_PASSWORD" >"$pgroot/setup.out" 2>&1 <<'SQL'; then
SET log_min_error_statement = panic;
CREATE ROLE resclean LOGIN PASSWORD :'pw';
CREATE ROLE resclean_tls LOGIN PASSWORD :'pw' IN ROLE resclean;
CREATE ROLE resclean_app NOLOGIN; -- the application's grants (examples/cancel-requests.sql)
CREATE DATABASE resclean OWNER resclean;
SQL
        tail_log "$pgroot/setup.out" "$PG_LOG"
        log "could not create role/database"
        return 1
    fi
    # Loaded as resclean over TCP with the password: the objects belong to resclean, and the
    # same path DATABASE_URL will take is proven to work.
    if ! PGPASSWORD=$PG_PASSWORD psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
        -U resclean -d resclean -f "$SCHEMA" -v app_role=resclean_app -v sweeper_role=resclean \
        -f "$REPO/examples/cancel-requests.sql" >"$pgroot/schema.out" 2>&1; then
        tail_log "$pgroot/schema.out"
        log "could not load $SCHEMA"
        return 1
    fi
    # The throwaway marker, made by postgres: resclean can read it, not forge or drop it.
    if ! psql -X -q -v ON_ERROR_STOP=1 -h "$pgroot/run" -p "$port" -U postgres -d resclean \
        -v token="$THROWAWAY_TOKEN" >"$pgroot/marker.out" 2>&1 <<'SQL'; then
CREATE TABLE public.resclean_throwaway_stack (token text NOT NULL);
COMMENT ON TABLE public.resclean_throwaway_stack IS
  'resclean''s throwaway test stack (spec/support/stack.sh): helpers that truncate run only here';
INSERT INTO public.resclean_throwaway_stack VALUES (:'token');
GRANT SELECT ON public.resclean_throwaway_stack TO resclean;
SQL
        tail_log "$pgroot/marker.out"
        log "could not write the throwaway marker"
        return 1
    fi
    log "postgres up in $(since "$t0") (port $port, pid $pid)"
}

# --- Ceph -------------------------------------------------------------------------------------

write_ceph_conf() {
    cat >"$CEPH_CONF" <<EOF
# resclean throwaway single-node Ceph: one mon, one memstore OSD, one radosgw.
[global]
fsid = $1
mon host = [v2:127.0.0.1:$2]
public addr = 127.0.0.1
ms bind ipv6 = false
# Cluster-internal auth off; RGW still checks every S3 signature against its own users.
auth cluster required = none
auth service required = none
auth client required = none
# Without this radosgw loops on "get_initial_auth_request returned -13".
ms mon client mode = crc secure
run dir = $CEPH_BASE/run
pid file = $CEPH_BASE/run/\$name.pid
log file = $CEPH_BASE/log/\$name.log
mon cluster log file = $CEPH_BASE/log/cluster.log
crash dir = $CEPH_BASE/crash
keyring = $CEPH_BASE/keyring
osd objectstore = memstore
memstore device bytes = 4294967296
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
# The monitor batches map changes for paxos_propose_interval (1 s); radosgw's first start makes
# ~10 such changes one after another (its pools), so a short interval cuts the cold start.
paxos propose interval = 0.05
paxos min wait = 0.01

[mon.a]
mon data = $CEPH_BASE/mon.a

[osd]
osd data = $CEPH_BASE/osd.\$id

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$3
rgw dns name = localhost
rgw data = $CEPH_BASE/rgw
rgw thread pool size = 64
# At the default 1/5, radosgw formats three lines for every request and writes them to its
# log (about 450 MB in half an hour of benchmarking): about 150 of the ~700 us of CPU a HEAD
# costs it here. Errors (level 0) are still logged.
debug rgw = 0/0
EOF
}

ceph_cli() {
    ceph -c "$CEPH_CONF" --connect-timeout 2 "$@"
}

# RGW, like AWS S3, wants the payload hash header; curl signs it when given (here: empty body).
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

# HTTP status of an S3 request signed with the stack's keys (credentials go through curl's
# config on stdin, so they never appear in a process list).
rgw_status() {
    printf 'user = "%s:%s"\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" |
        curl -sS -K - -o /dev/null -w '%{http_code}' --max-time 3 \
            --aws-sigv4 "aws:amz:us-east-1:s3" -H "x-amz-content-sha256: $EMPTY_SHA256" \
            "http://127.0.0.1:$RGW_PORT/" 2>/dev/null || true
}

# Start radosgw on RGW_PORT and wait until it answers HTTP; retries on another port if the
# chosen one was taken (only when allowed to move, i.e. during `start`).
rgw_spawn_and_wait() {
    local may_move=$1 deadline code tries=0
    while :; do
        tries=$((tries + 1))
        spawn radosgw "$CEPH_BASE/log/radosgw.out" radosgw -c "$CEPH_CONF" -n client.rgw.a -f
        RGW_PID=$SPAWNED
        deadline=$(($(now_us) + STEP_TIMEOUT * 1000000))
        while :; do
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$RGW_PORT/" || true)
            [[ $code != 000 && -n $code ]] && return 0
            if ! alive "$RGW_PID"; then
                if ((may_move && tries < 3)) &&
                    grep -qi 'address already in use' "$CEPH_BASE/log/client.rgw.a.log" 2>/dev/null; then
                    log "radosgw: port $RGW_PORT taken, retrying"
                    RGW_PORT=$(free_port "${AVOID_PORTS[@]}")
                    sed -i "s/^rgw frontends = .*/rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT/" "$CEPH_CONF"
                    continue 2
                fi
                FAIL_LOGS=("$CEPH_BASE/log/radosgw.out" "$CEPH_BASE/log/client.rgw.a.log")
                log "radosgw exited before answering"
                return 1
            fi
            if (($(now_us) >= deadline)); then
                FAIL_LOGS=("$CEPH_BASE/log/radosgw.out" "$CEPH_BASE/log/client.rgw.a.log")
                log "radosgw did not answer on port $RGW_PORT within ${STEP_TIMEOUT}s"
                return 1
            fi
            sleep 0.1
        done
    done
}

# Poll until a signed request succeeds (the user is visible to radosgw). The user is written
# synchronously, so a 403 that lasts 15 s is a real problem, not a delay.
wait_rgw_signed() {
    local deadline code limit=$((STEP_TIMEOUT < 15 ? STEP_TIMEOUT : 15))
    deadline=$(($(now_us) + limit * 1000000))
    while :; do
        code=$(rgw_status)
        [[ $code == 200 ]] && return 0
        if (($(now_us) >= deadline)) || ! alive "$RGW_PID"; then
            FAIL_LOGS=("$CEPH_BASE/log/client.rgw.a.log")
            log "signed S3 request still answered ${code:-nothing} after ${limit}s"
            return 1
        fi
        sleep 0.1
    done
}

ceph_up() {
    local t0 t1 fsid mon_port osd_uuid osd_id deadline
    t0=$(now_us)
    mkdir -p "$CEPH_BASE"/{run,log,crash,mon.a,rgw}
    fsid=$(cat /proc/sys/kernel/random/uuid)
    mon_port=$MON_PORT
    write_ceph_conf "$fsid" "$mon_port" "$RGW_PORT"

    FAIL_LOGS=("$CEPH_BASE/log/mkfs.out")
    {
        ceph-authtool --create-keyring "$CEPH_BASE/keyring" --gen-key -n mon. --cap mon 'allow *'
        # msgr v2 address form: plain --add with a non-default port makes clients hang.
        monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$CEPH_BASE/monmap"
        ceph-mon -c "$CEPH_CONF" --mkfs -i a --monmap "$CEPH_BASE/monmap" \
            --keyring "$CEPH_BASE/keyring"
    } >>"$CEPH_BASE/log/mkfs.out" 2>&1
    spawn ceph-mon "$CEPH_BASE/log/ceph-mon.out" ceph-mon -c "$CEPH_CONF" -i a -f
    MON_PID=$SPAWNED

    # `osd new` doubles as the monitor readiness probe (same UUID => same id when repeated).
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    deadline=$(($(now_us) + STEP_TIMEOUT * 1000000))
    FAIL_LOGS=("$CEPH_BASE/log/ceph-mon.out" "$CEPH_BASE/log/mon.a.log")
    until osd_id=$(ceph_cli osd new "$osd_uuid" 2>>"$CEPH_BASE/log/cli.err"); do
        alive "$MON_PID" || { log "ceph-mon exited"; return 1; }
        (($(now_us) < deadline)) || { log "ceph-mon did not answer within ${STEP_TIMEOUT}s"; return 1; }
        sleep 0.1
    done
    [[ $osd_id =~ ^[0-9]+$ ]] || { log "unexpected 'osd new' answer: $osd_id"; return 1; }
    log "ceph-mon up in $(since "$t0") (port $mon_port, pid $MON_PID)"

    t1=$(now_us)
    mkdir -p "$CEPH_BASE/osd.$osd_id"
    FAIL_LOGS=("$CEPH_BASE/log/mkfs.out" "$CEPH_BASE/log/osd.$osd_id.log")
    ceph-osd -c "$CEPH_CONF" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" \
        >>"$CEPH_BASE/log/mkfs.out" 2>&1
    spawn ceph-osd "$CEPH_BASE/log/ceph-osd.out" ceph-osd -c "$CEPH_CONF" -i "$osd_id" -f
    OSD_PID=$SPAWNED
    log "ceph-osd started in $(since "$t1") (pid $OSD_PID)"

    # radosgw is started right away: it waits for the OSD itself while creating its pools,
    # which saves a round of slow `ceph osd stat` polling.
    t1=$(now_us)
    rgw_spawn_and_wait 1
    log "radosgw answering in $(since "$t1") (port $RGW_PORT, pid $RGW_PID)"

    FAIL_LOGS=("$CEPH_BASE/log/admin.out")
    radosgw-admin -c "$CEPH_CONF" user create --uid=resclean --display-name="resclean specs" \
        --access-key="$AWS_ACCESS_KEY_ID" --secret-key="$AWS_SECRET_ACCESS_KEY" \
        >/dev/null 2>"$CEPH_BASE/log/admin.out"
    wait_rgw_signed
    log "rgw up in $(since "$t0") (S3 user ready)"
}

# --- streaming standby (on demand) -----------------------------------------------------------
# `stack.sh standby DIR`: a hot standby of the stack's PostgreSQL, made with pg_basebackup -R
# (streaming replication over the primary's socket as postgres, which initdb's pg_hba.conf
# admits; wal_level=replica and max_wal_senders=10 are the defaults) into DIR/pg-standby/data,
# started on a free port. Its lines go to DIR/env and, as NAME=value, to stdout:
#   RESCLEAN_STANDBY_URL       DATABASE_URL's user, password and database at the standby
#   RESCLEAN_FAILOVER_URL      both hosts, primary first, target_session_attrs=read-write
#   RESCLEAN_STANDBY_{PORT,PID,PGDATA,SOCKDIR,LOG}
# It returns once the standby has replayed what the primary had written at the call.
# `stack.sh promote DIR` promotes it (pg_ctl promote -w); `stack.sh standby-stop DIR` stops it
# (immediate) and removes its data, so that a later spec can make a fresh one; stop stops it too.

SB_ROOT='' SB_DATA='' SB_LOG='' SB_RUN=''
standby_paths() {
    SB_ROOT=$DIR/pg-standby
    SB_DATA=$SB_ROOT/data
    SB_LOG=$SB_ROOT/postgres.log
    SB_RUN=$SB_ROOT/run
}

# NAME VALUE pairs: into DIR/env, and NAME=value on stdout.
standby_env() {
    while (($# >= 2)); do
        set_env_var "$1" "$2"
        printf '%s=%s\n' "$1" "$2"
        shift 2
    done
}

cmd_standby() {
    local t0 port pid lsn deadline url hosts
    t0=$(now_us)
    [[ -f $DIR/env && -e $DIR/$MARKER ]] || die "no running stack in $DIR"
    # shellcheck disable=SC1091
    source "$DIR/env"
    standby_paths
    [[ ! -e $SB_DATA ]] || die "$SB_DATA exists: stop it first (stack.sh standby-stop $DIR)"
    mkdir -p "$SB_RUN"
    chmod 755 "$SB_ROOT" "$SB_RUN"
    if ((EUID == 0)); then chown -R postgres: "$SB_ROOT"; fi
    if ! as_pg "$PG_BIN/pg_basebackup" -h "$RESCLEAN_PG_SOCKDIR" -p "$RESCLEAN_PG_PORT" -U postgres \
        -D "$SB_DATA" -R -X stream -c fast --no-sync >"$SB_ROOT/basebackup.out" 2>&1; then
        tail_log "$SB_ROOT/basebackup.out"
        die "pg_basebackup failed"
    fi
    port=$(free_port "$RESCLEAN_PG_PORT" "$RESCLEAN_RGW_PORT" "$RESCLEAN_MON_PORT")
    # The copied postgresql.conf names the primary's port and socket dir: later lines win.
    printf '%s\n' '' '# resclean throwaway stack: the standby' "port = $port" \
        "unix_socket_directories = '$SB_RUN'" 'hot_standby = on' |
        as_pg tee -a "$SB_DATA/postgresql.conf" >/dev/null
    if ! as_pg "$PG_BIN/pg_ctl" -D "$SB_DATA" -l "$SB_LOG" -w -t "$STEP_TIMEOUT" start \
        >"$SB_ROOT/pg_ctl.out" 2>&1; then
        tail_log "$SB_ROOT/pg_ctl.out" "$SB_LOG"
        die "the standby did not start"
    fi
    pid=$(head -n 1 "$SB_DATA/postmaster.pid")
    record_pid postgres-standby "$pid"
    # Caught up: it has replayed what the primary had written when we asked.
    lsn=$(psql -X -At -h "$RESCLEAN_PG_SOCKDIR" -p "$RESCLEAN_PG_PORT" -U postgres -d postgres \
        -c 'SELECT pg_current_wal_lsn()')
    deadline=$(($(now_us) + STEP_TIMEOUT * 1000000))
    until [[ $(psql -X -At -h "$SB_RUN" -p "$port" -U postgres -d postgres \
        -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn" 2>/dev/null) == t ]]; do
        (($(now_us) < deadline)) || { tail_log "$SB_LOG"; die "the standby did not catch up"; }
        sleep 0.1
    done
    # shellcheck disable=SC2153 # PGPASSWORD comes from DIR/env
    url="postgres://resclean:$PGPASSWORD@127.0.0.1:$port/resclean?sslmode=disable"
    hosts="127.0.0.1:$RESCLEAN_PG_PORT,127.0.0.1:$port"
    standby_env RESCLEAN_STANDBY_URL "$url" \
        RESCLEAN_FAILOVER_URL "postgres://resclean:$PGPASSWORD@$hosts/resclean?sslmode=disable&target_session_attrs=read-write" \
        RESCLEAN_STANDBY_PORT "$port" RESCLEAN_STANDBY_PID "$pid" RESCLEAN_STANDBY_PGDATA "$SB_DATA" \
        RESCLEAN_STANDBY_SOCKDIR "$SB_RUN" RESCLEAN_STANDBY_LOG "$SB_LOG"
    log "standby up in $(since "$t0") (port $port, pid $pid)"
}

cmd_promote() {
    standby_paths
    [[ -f $SB_DATA/postmaster.pid ]] || die "no standby running in $SB_ROOT"
    as_pg "$PG_BIN/pg_ctl" -D "$SB_DATA" -w -t "$STEP_TIMEOUT" promote >/dev/null ||
        die "pg_ctl promote failed"
    log "standby promoted"
}

# Stop the standby (if it runs) and remove its data.
stop_standby() {
    local pid
    standby_paths
    [[ -d $SB_ROOT ]] || return 0
    if [[ -f $SB_DATA/postmaster.pid ]]; then
        pid=$(head -n 1 "$SB_DATA/postmaster.pid")
        if ours "$pid"; then
            as_pg "$PG_BIN/pg_ctl" -D "$SB_DATA" -m immediate -w -t 20 stop >/dev/null 2>&1 ||
                log "pg_ctl stop (standby) failed"
            terminate postgres-standby "$pid"
        fi
    fi
    rm -rf -- "$SB_ROOT"
}

cmd_standby_stop() {
    local tmp
    [[ -e $DIR/$MARKER ]] || die "no stack in $DIR"
    stop_standby
    if [[ -f $DIR/env ]]; then
        tmp=$(mktemp "$DIR/env.XXXXXX")
        grep -v '^export RESCLEAN_\(STANDBY_[A-Z]*\|FAILOVER_URL\)=' "$DIR/env" >"$tmp" || true
        chmod 600 "$tmp"
        mv -f "$tmp" "$DIR/env"
    fi
    log "standby stopped"
}

# --- subcommands ------------------------------------------------------------------------------

set_dir() {
    [[ -n ${1:-} ]] || die "usage: $0 {start|stop|restart-rgw|pg-ctl|standby|promote|standby-stop|pgbouncer|pgbouncer-stop} DIR"
    DIR=$(realpath -m -- "$1")
    [[ $DIR != / ]] || die "refusing DIR=/"
    CEPH_BASE=$DIR/ceph
    CEPH_CONF=$CEPH_BASE/ceph.conf
    PGDATA=$DIR/pg/data
    PG_LOG=$DIR/pg/postgres.log
}

write_env() {
    local pg_port=$1 pg_pid=$2 tls_url runas=
    tls_url="postgres://resclean_tls:$PG_PASSWORD@127.0.0.1:$pg_port/resclean"
    tls_url+="?sslmode=verify-full&sslrootcert=$DIR/pg/tls/ca.crt"
    ((EUID == 0)) && runas="runuser -u postgres --"
    {
        printf 'export %s=%q\n' \
            RESCLEAN_STACK_DIR "$DIR" \
            RESCLEAN_THROWAWAY_STACK "$THROWAWAY_TOKEN" \
            DATABASE_URL "postgres://resclean:$PG_PASSWORD@127.0.0.1:$pg_port/resclean?sslmode=disable" \
            DATABASE_URL_TLS "$tls_url" \
            RESCLEAN_PG_CA "$DIR/pg/tls/ca.crt" \
            PGHOST 127.0.0.1 \
            PGPORT "$pg_port" \
            PGUSER resclean \
            PGPASSWORD "$PG_PASSWORD" \
            PGDATABASE resclean \
            AWS_ENDPOINT_URL_S3 "http://127.0.0.1:$RGW_PORT" \
            AWS_ACCESS_KEY_ID "$AWS_ACCESS_KEY_ID" \
            AWS_SECRET_ACCESS_KEY "$AWS_SECRET_ACCESS_KEY" \
            AWS_REGION us-east-1 \
            RESCLEAN_PG_BIN "$PG_BIN" \
            RESCLEAN_PGDATA "$PGDATA" \
            RESCLEAN_PG_PID "$pg_pid" \
            RESCLEAN_PG_PORT "$pg_port" \
            RESCLEAN_PG_SOCKDIR "$DIR/pg/run" \
            RESCLEAN_PG_LOG "$PG_LOG" \
            RESCLEAN_PG_RUNAS "$runas" \
            RESCLEAN_CEPH_CONF "$CEPH_CONF" \
            RESCLEAN_MON_PID "$MON_PID" \
            RESCLEAN_MON_PORT "$MON_PORT" \
            RESCLEAN_OSD_PID "$OSD_PID" \
            RESCLEAN_RGW_PID "$RGW_PID" \
            RESCLEAN_RGW_PORT "$RGW_PORT" \
            RESCLEAN_RGW_LOG "$CEPH_BASE/log/client.rgw.a.log"
    } >"$DIR/env.tmp"
    chmod 600 "$DIR/env.tmp"
    mv -f "$DIR/env.tmp" "$DIR/env"
}

stop_stack() {
    local pid name pidfile_pid
    [[ -e $DIR ]] || return 0
    # An empty DIR (mktemp -d, start refused early) is simply removed.
    if [[ -d $DIR && -z $(ls -A "$DIR") ]]; then
        rmdir -- "$DIR"
        return 0
    fi
    [[ -e $DIR/$MARKER ]] || die "$DIR is not a stack directory (no $MARKER); not touching it"
    pgbouncer_stop
    terminate radosgw "$(recorded_pid radosgw)"
    terminate ceph-osd "$(recorded_pid ceph-osd)"
    terminate ceph-mon "$(recorded_pid ceph-mon)"
    stop_standby
    if [[ -f $PGDATA/postmaster.pid ]]; then
        pidfile_pid=$(head -n 1 "$PGDATA/postmaster.pid")
        if ours "$pidfile_pid"; then
            as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 20 stop >/dev/null 2>&1 ||
                log "pg_ctl stop failed"
        fi
        terminate postgres "$pidfile_pid"
    fi
    # Anything else recorded (older radosgw or postmaster PIDs after restarts).
    if [[ -f $DIR/pids ]]; then
        while read -r name pid; do
            terminate "$name" "$pid"
        done <"$DIR/pids"
    fi
    rm -rf -- "$DIR"
}

# Start state lives in globals: the EXIT trap may run after cmd_start's locals are gone.
START_OK=0
PG_JOB=
T0=
LAST_ERR=
INTERRUPTED=
on_start_exit() {
    local rc=$?
    ((START_OK)) && return 0
    ((rc != 0)) || rc=1
    if [[ -n $INTERRUPTED ]]; then
        log "interrupted by SIG$INTERRUPTED"
    else
        # The command text is logged unexpanded, so no secret shows here.
        [[ -n $LAST_ERR ]] && log "failed at $LAST_ERR"
        tail_log "${FAIL_LOGS[@]}"
    fi
    if [[ -n $PG_JOB ]]; then wait "$PG_JOB" 2>/dev/null || true; fi
    if [[ -n ${RESCLEAN_KEEP_STACK:-} ]]; then
        log "start failed; RESCLEAN_KEEP_STACK set, leaving $DIR (stop it with: $0 stop $DIR)"
    else
        log "start failed after $(since "$T0"); cleaning up"
        stop_stack || true
    fi
    exit "$rc"
}

cmd_start() {
    local pg_port pg_pid main_pid=$$
    T0=$(now_us)
    command -v radosgw >/dev/null || die "radosgw not installed"
    [[ -x $PG_BIN/initdb ]] || die "no initdb in $PG_BIN"
    [[ -f $SCHEMA ]] || die "schema not found: $SCHEMA"
    if [[ -e $DIR ]]; then
        [[ -d $DIR && -z $(ls -A "$DIR") ]] || die "$DIR exists and is not empty"
    fi
    # Unix socket paths (PostgreSQL's, Ceph's admin sockets) must fit in 107 bytes.
    local longest="$CEPH_BASE/run/client.rgw.a.999999.99999999999999.asok"
    ((${#longest} < 108)) || die "DIR path too long for unix sockets: $DIR (use a shorter TMPDIR)"
    mkdir -p "$DIR"
    : >"$DIR/$MARKER"
    : >"$DIR/pids"
    # The postgres user must be able to reach DIR/pg; nobody needs to list DIR.
    chmod 711 "$DIR"

    FAIL_LOGS=()
    set -E
    trap 'LAST_ERR="line $LINENO: $BASH_COMMAND"' ERR
    trap on_start_exit EXIT
    trap 'INTERRUPTED=INT; exit 130' INT
    trap 'INTERRUPTED=TERM; exit 143' TERM
    trap 'INTERRUPTED=HUP; exit 129' HUP
    trap 'log "postgres failed"; exit 1' USR1

    local secrets
    mapfile -t secrets < <(gen_secrets)
    ((${#secrets[@]} == 4)) || { log "could not generate credentials"; exit 1; }
    PG_PASSWORD=${secrets[0]} AWS_ACCESS_KEY_ID=${secrets[1]} AWS_SECRET_ACCESS_KEY=${secrets[2]}
    THROWAWAY_TOKEN=${secrets[3]}
    # All three ports up front, so the background job and Ceph cannot pick the same one.
    PG_PORT=$(free_port)
    MON_PORT=$(free_port "$PG_PORT")
    RGW_PORT=$(free_port "$PG_PORT" "$MON_PORT")
    AVOID_PORTS=("$PG_PORT" "$MON_PORT" "$RGW_PORT")

    # PostgreSQL comes up in the background while Ceph does; a failure there interrupts us
    # through USR1 instead of being noticed only at the end. The job gets its own process
    # group (set -m) so a Ctrl-C does not kill initdb halfway: we let it finish, then clean up.
    set -m
    (
        trap '[[ $? -eq 0 ]] || kill -USR1 "$main_pid" 2>/dev/null' EXIT
        pg_up
    ) &
    PG_JOB=$!
    set +m

    ceph_up
    wait "$PG_JOB" || exit 1
    PG_JOB=
    pg_port=$(cat "$DIR/pg/port")
    pg_pid=$(recorded_pid postgres)
    write_env "$pg_port" "$pg_pid"
    START_OK=1
    log "stack up in $(since "$T0"): $DIR (source $DIR/env)"
}

# A radosgw killed with SIGKILL leaves its watches on the control objects, and until the OSD
# times them out (osd_client_watch_timeout, 30 s) every metadata change (bucket create or
# delete) waits for the dead watcher to acknowledge. Blocklisting the dead instance's address
# makes the OSD drop its watches now. Called only while no radosgw of ours runs.
drop_stale_watchers() {
    local addrs addr deadline
    addrs=$(rados -c "$CEPH_CONF" -p default.rgw.control listwatchers notify.0 2>/dev/null |
        sed -n 's/^watcher=\([^ ]*\) .*/\1/p' | sort -u) || true
    [[ -n $addrs ]] || return 0
    for addr in $addrs; do
        if ceph_cli osd blocklist add "$addr" 3600 >/dev/null 2>&1; then
            log "radosgw: blocklisted $addr, a killed instance still watching"
        else
            log "radosgw: could not blocklist $addr"
        fi
    done
    deadline=$(($(now_us) + 10 * 1000000))
    while rados -c "$CEPH_CONF" -p default.rgw.control listwatchers notify.0 2>/dev/null |
        grep -q '^watcher='; do
        (($(now_us) < deadline)) || { log "radosgw: stale watches still there"; return 0; }
        sleep 0.1
    done
}

cmd_restart_rgw() {
    local t0 old
    t0=$(now_us)
    [[ -f $DIR/env && -e $DIR/$MARKER ]] || die "no running stack in $DIR"
    # shellcheck disable=SC1091
    source "$DIR/env"
    RGW_PORT=$RESCLEAN_RGW_PORT
    old=$(recorded_pid radosgw)
    [[ -n $old ]] && terminate radosgw "$old"
    drop_stale_watchers
    AVOID_PORTS=(0)
    FAIL_LOGS=()
    if ! rgw_spawn_and_wait 0 || ! wait_rgw_signed; then
        tail_log "${FAIL_LOGS[@]}"
        exit 1
    fi
    set_env_var RESCLEAN_RGW_PID "$RGW_PID"
    log "radosgw restarted in $(since "$t0") (pid $RGW_PID)"
    echo "$RGW_PID"
}

# pg_ctl on the stack's cluster; after start/restart the new postmaster PID is recorded.
cmd_pg_ctl() {
    local rc=0 pid
    [[ -f $DIR/env && -e $DIR/$MARKER ]] || die "no running stack in $DIR"
    [[ -x $PG_BIN/pg_ctl ]] || die "no pg_ctl in $PG_BIN"
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG" "$@" || rc=$?
    if [[ -f $PGDATA/postmaster.pid ]]; then
        pid=$(head -n 1 "$PGDATA/postmaster.pid")
        if ours "$pid" && [[ $pid != "$(recorded_pid postgres)" ]]; then
            record_pid postgres "$pid"
            set_env_var RESCLEAN_PG_PID "$pid"
        fi
    fi
    return "$rc"
}

# --- PgBouncer (only when asked: stack.sh pgbouncer DIR) -------------------------------------

# One query through the pool on port $1 (it answers once pgbouncer reached PostgreSQL).
# shellcheck disable=SC2153  # PGPASSWORD comes from DIR/env, sourced by pgbouncer_up
pgbouncer_answers() {
    PGPASSWORD=$PGPASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -At -h 127.0.0.1 -p "$1" -U resclean \
        -d resclean -c 'SELECT 1' >/dev/null 2>&1
}

pgbouncer_up() {
    local t0 root=$DIR/pgbouncer port pid tries=0 deadline base
    t0=$(now_us)
    [[ -f $DIR/env && -e $DIR/$MARKER ]] || die "no running stack in $DIR"
    command -v pgbouncer >/dev/null || die "pgbouncer not installed (apt-get install pgbouncer)"
    pid=$(recorded_pid pgbouncer)
    if [[ -n $pid ]] && ours "$pid"; then
        pgbouncer_print
        return 0
    fi
    # shellcheck disable=SC1091
    source "$DIR/env"
    mkdir -p "$root"
    (umask 077 && printf '"resclean" "%s"\n' "$PGPASSWORD" >"$root/users.txt")
    while :; do
        tries=$((tries + 1))
        port=$(free_port "$RESCLEAN_PG_PORT" "$RESCLEAN_MON_PORT" "$RESCLEAN_RGW_PORT")
        cat >"$root/pgbouncer.ini" <<EOF
; resclean throwaway stack: transaction and session pooling in front of the stack's PostgreSQL
[databases]
resclean = host=127.0.0.1 port=$RESCLEAN_PG_PORT dbname=resclean pool_mode=transaction
resclean_session = host=127.0.0.1 port=$RESCLEAN_PG_PORT dbname=resclean pool_mode=session pool_size=6

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $root/users.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
query_wait_timeout = 60
server_idle_timeout = 3600
pidfile = $root/pgbouncer.pid
logfile = $root/pgbouncer.log
ignore_startup_parameters = extra_float_digits
EOF
        rm -f "$root/pgbouncer.pid"
        if ((EUID == 0)); then chown -R postgres: "$root"; fi
        # pgbouncer refuses to run as root: as postgres, daemonized (-d), it writes its PID file.
        if ! as_pg pgbouncer -d "$root/pgbouncer.ini" >"$root/start.out" 2>&1; then
            if ((tries < 3)) && grep -qs 'Address already in use' "$root/pgbouncer.log" "$root/start.out"; then
                log "pgbouncer: port $port taken, retrying"
                continue
            fi
            tail_log "$root/start.out" "$root/pgbouncer.log"
            die "pgbouncer did not start"
        fi
        deadline=$(($(now_us) + STEP_TIMEOUT * 1000000))
        pid=
        while (($(now_us) < deadline)); do
            [[ -s $root/pgbouncer.pid ]] && pid=$(cat "$root/pgbouncer.pid")
            if [[ -n $pid ]] && ! alive "$pid"; then break; fi
            if [[ -n $pid ]] && pgbouncer_answers "$port"; then break; fi
            sleep 0.05
        done
        if [[ -n $pid ]] && alive "$pid"; then
            record_pid pgbouncer "$pid"
            pgbouncer_answers "$port" && break
        fi
        tail_log "$root/start.out" "$root/pgbouncer.log"
        die "pgbouncer did not answer within ${STEP_TIMEOUT}s"
    done
    base="postgres://resclean:$PGPASSWORD@127.0.0.1:$port"
    set_env_var RESCLEAN_PGBOUNCER_TX_URL "$base/resclean?sslmode=disable"
    set_env_var RESCLEAN_PGBOUNCER_SESSION_URL "$base/resclean_session?sslmode=disable"
    set_env_var RESCLEAN_PGBOUNCER_PID "$pid"
    set_env_var RESCLEAN_PGBOUNCER_PORT "$port"
    set_env_var RESCLEAN_PGBOUNCER_LOG "$root/pgbouncer.log"
    log "pgbouncer up in $(since "$t0") (port $port, pid $pid)"
    pgbouncer_print
}

# The RESCLEAN_PGBOUNCER_* lines of DIR/env as NAME=value (unquoted: the values have no blanks).
pgbouncer_print() {
    local name
    # shellcheck disable=SC1091
    source "$DIR/env"
    for name in RESCLEAN_PGBOUNCER_TX_URL RESCLEAN_PGBOUNCER_SESSION_URL RESCLEAN_PGBOUNCER_PID \
        RESCLEAN_PGBOUNCER_PORT RESCLEAN_PGBOUNCER_LOG; do
        printf '%s=%s\n' "$name" "${!name}"
    done
}

# Stop pgbouncer by its recorded PID (before PostgreSQL, so its server connections close first).
pgbouncer_stop() {
    terminate pgbouncer "$(recorded_pid pgbouncer)"
}

main() {
    local cmd=${1:-}
    shift || true
    PG_BIN=${RESCLEAN_PG_BIN:-$(find_pg_bin)}
    case $cmd in
    start) set_dir "${1:-}" && cmd_start ;;
    stop) set_dir "${1:-}" && stop_stack ;;
    restart-rgw) set_dir "${1:-}" && cmd_restart_rgw ;;
    pg-ctl) set_dir "${1:-}" && shift && cmd_pg_ctl "$@" ;;
    standby) set_dir "${1:-}" && cmd_standby ;;
    promote) set_dir "${1:-}" && cmd_promote ;;
    standby-stop) set_dir "${1:-}" && cmd_standby_stop ;;
    pgbouncer) set_dir "${1:-}" && pgbouncer_up ;;
    pgbouncer-stop) set_dir "${1:-}" && pgbouncer_stop ;;
    *) die "usage: $0 {start|stop|restart-rgw|pg-ctl|standby|promote|standby-stop|pgbouncer|pgbouncer-stop} DIR [ARGS]" ;;
    esac
}

main "$@"
