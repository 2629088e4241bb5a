#!/usr/bin/env bash
# Sign-in bench: sign-ins per second with the real argon2id parameters against the machine's
# limit, and the p99 of a cheap authenticated request (GET /api/v1/me) while sign-ins run flat
# out (target: under 10 ms). Builds the release binaries, sets up a throwaway data folder with
# organisations and users, starts the server on a free port, runs bench/src/bin/signin.rs
# against it, prints its results and stops the server.
#
# Environment:
#   CARGO_TARGET_DIR  build directory (default $HOME/.cache/nca-portal-target)
#   SECS              seconds of load measured (default 20)
#   CONCURRENCY       sign-in requests in flight (default 16)
#   USERS             bench users to create and rotate through (default 40)
#   NCA_AUTH__HASH_THREADS  passed to the server: threads hashing at once (default: cores - 1)
#   KEEP=1            keep the data folder (printed) instead of deleting it
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nca-portal-target}"
SECS="${SECS:-20}"
CONCURRENCY="${CONCURRENCY:-16}"
USERS="${USERS:-40}"
PASSWORD='Tr0ubadour&Bells-42'

cargo build --release -p nca-portal -p nca-bench
PORTAL="$CARGO_TARGET_DIR/release/nca-portal"
BENCH="$CARGO_TARGET_DIR/release/signin"

DATA="$(mktemp -d "${TMPDIR:-/tmp}/nca-signin-bench.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -INT "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "data folder kept: $DATA"
    else
        rm -rf "$DATA"
    fi
}
trap cleanup EXIT

# Configuration layers are read from config/ beside the working directory; run from the
# workspace root so the checked-in base.toml applies, with only the overrides below.
"$PORTAL" orgs import data-pipeline/tests/fixtures/rules --data-dir "$DATA"

# Bench users: a school allows at most 7, so most go in the LA (no limit).
EMAILS="$DATA/emails.txt"
: > "$EMAILS"
add_user() { # email org role
    "$PORTAL" users add --email "$1" --org "$2" --role "$3" --password "$PASSWORD" --data-dir "$DATA" > /dev/null
    echo "$1" >> "$EMAILS"
}
school_users=$(( USERS >= 20 ? 5 : 0 ))
la_users=$(( USERS - 2 * school_users ))
start=$(date +%s.%N)
for i in $(seq 1 "$la_users"); do add_user "la-bench-$i@testshire.gov.uk" 999 la-general-user; done
for i in $(seq 1 "$school_users"); do add_user "bench-$i@rules-primary.sch.uk" 9992001 general-user; done
for i in $(seq 1 "$school_users"); do add_user "bench-$i@st-annes.sch.uk" 9992002 general-user; done
end=$(date +%s.%N)
awk -v n="$USERS" -v s="$start" -v e="$end" 'BEGIN { printf "%d users created in %.1f s\n", n, e - s }'

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="https://127.0.0.1:$PORT"
echo "server: $URL (hash threads: ${NCA_AUTH__HASH_THREADS:-default, cores - 1}); log $DATA/server.log"
NCA_ADMIN__LISTEN= NCA_AUTH__IP_ATTEMPTS_PER_MINUTE=1000000 \
    "$PORTAL" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" > "$DATA/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 100); do
    if curl -ksf "$URL/healthz" > /dev/null; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "server exited:"; cat "$DATA/server.log"; exit 1
    fi
    sleep 0.1
done
curl -ksf "$URL/healthz" > /dev/null || { echo "server not healthy after 10 s"; cat "$DATA/server.log"; exit 1; }

CMD=("$BENCH" --url "$URL" --users "$USERS" --secs "$SECS" --concurrency "$CONCURRENCY"
    --password "$PASSWORD" --emails-file "$EMAILS" --outbox "$DATA/outbox" --server-pid "$SERVER_PID")
echo "+ ${CMD[*]}"
"${CMD[@]}"

if grep -qiE '"level":"(ERROR|WARN)"|\b(ERROR|WARN)\b' "$DATA/server.log"; then
    echo "server log warnings/errors:"
    grep -iE '"level":"(ERROR|WARN)"|\b(ERROR|WARN)\b' "$DATA/server.log" | tail -20
fi
