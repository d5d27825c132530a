#!/usr/bin/env bash
# shellcheck disable=SC2317  # finish/on_signal/from_terminal run from traps
# with-stack.sh CMD [ARGS...]
#
# Run CMD with a throwaway PostgreSQL + Ceph RGW (see stack.sh) in its environment, and always
# tear the stack down afterwards: on success, failure, Ctrl-C, SIGTERM or SIGHUP. Exits with
# CMD's exit code (128+N if CMD exited 0 after we got signal N; 125 if the stack did not start).
# RESCLEAN_KEEP_STACK=1 keeps the stack and prints where it is.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STACK=$HERE/stack.sh
# How long CMD gets to finish after we passed it SIGTERM/SIGHUP, before SIGKILL.
KILL_AFTER=${RESCLEAN_KILL_AFTER:-15}

log() { printf 'with-stack: %s\n' "$*" >&2; }

if (($# == 0)); then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi

DIR=$(mktemp -d "${TMPDIR:-/tmp}/resclean-stack.XXXXXX") || exit 125
child=
signal=
kill_at=

# Bash gives background jobs /dev/null as stdin; keep the caller's for CMD (e.g. a shell).
exec 3<&0

finish() {
    local rc=$?
    # A second Ctrl-C while stopping must not leave daemons behind (stop has its own deadlines).
    trap '' INT TERM HUP
    if [[ -n ${RESCLEAN_KEEP_STACK:-} ]]; then
        log "keeping the stack in $DIR (source $DIR/env; stop it with: bash $STACK stop $DIR)"
    else
        bash "$STACK" stop "$DIR" || log "could not stop the stack in $DIR"
    fi
    exit "$rc"
}

# Is our process group the terminal's foreground group? Then a Ctrl-C reached CMD already.
from_terminal() {
    local pgid tpgid
    read -r pgid tpgid < <(ps -o pgid=,tpgid= -p $$) || return 1
    [[ $pgid == "$tpgid" ]]
}

on_signal() {
    signal=$1
    [[ -n $child ]] || return 0
    if [[ $1 == INT ]] && from_terminal; then
        return 0 # CMD got it too and decides; an interactive shell may rightly ignore it
    fi
    kill -s "$1" "$child" 2>/dev/null || true
    [[ -n $kill_at ]] || kill_at=$((SECONDS + KILL_AFTER))
}

# Run "$@" as a background job we can wait on interruptibly (a foreground job would delay our
# traps until it exits). Async jobs start with SIGINT ignored: restore it before exec.
run() {
    local rc
    (
        trap - INT QUIT
        exec "$@" <&3 3<&-
    ) &
    child=$!
    while :; do
        if [[ -n $kill_at ]]; then
            # Signal passed on: poll, so the deadline is noticed.
            if ! kill -0 "$child" 2>/dev/null; then
                wait "$child"
                rc=$?
                break
            fi
            if ((SECONDS >= kill_at)); then
                log "command still running ${KILL_AFTER}s after SIG$signal, killing it"
                kill -KILL "$child" 2>/dev/null || true
            fi
            sleep 0.1
            continue
        fi
        wait "$child"
        rc=$?
        # A trapped signal makes wait return early (> 128) while the job still runs, or just
        # exited (a Ctrl-C reaches both): then a second wait yields its real status; 127
        # means the first wait had already collected it.
        if ((rc > 128)) && [[ -n $signal ]]; then
            kill -0 "$child" 2>/dev/null && continue
            local again
            wait "$child"
            again=$?
            ((again == 127)) || rc=$again
        fi
        break
    done
    child=
    kill_at=
    return "$rc"
}

trap finish EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

if ! run bash "$STACK" start "$DIR"; then
    [[ -n $signal ]] && exit $((128 + $(kill -l "$signal")))
    log "the test stack did not start"
    exit 125
fi
[[ -z $signal ]] || exit $((128 + $(kill -l "$signal")))

# shellcheck disable=SC1091
source "$DIR/env"
# Settings from the caller's shell that would send CMD elsewhere or break request signing.
unset AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_DEFAULT_REGION \
    PGSERVICE PGSERVICEFILE PGSSLMODE PGOPTIONS PGHOSTADDR PGPASSFILE

run "$@"
rc=$?
if ((rc == 0)) && [[ -n $signal ]]; then
    rc=$((128 + $(kill -l "$signal")))
fi
exit "$rc"
