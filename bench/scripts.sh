#!/usr/bin/env bash
# Marked script pages, side by side in one run:
#  1. hot pages over HTTPS: nca-portal (signed in; every request checks the session,
#     authorisation, embargo and admission, and is audited) against nginx serving the same
#     PNG files statically with the same certificate; wrk rotates over one pupil's pages.
#     Prints pages/s and MB/s for each and the ratios.
#  2. one cold page asked for by 1,000 clients at once (plain HTTP, a fresh server): the
#     number of object-store reads it caused (target 1), from the server's metrics.
#
# Environment: CARGO_TARGET_DIR, NO_BUILD (use the binaries already built), SECS (default 10),
# CONNS (default 64).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SECS="${SECS:-10}"
CONNS="${CONNS:-64}"
need wrk nginx
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p nca-portal -p nca-pipeline -p nca-bench
P="$CARGO_TARGET_DIR/release/nca-pipeline"
S="$CARGO_TARGET_DIR/release/nca-portal"
COLD="$CARGO_TARGET_DIR/release/coldpage"
workdir scripts

echo "setting up a 20-school release with script pages in $W"
"$P" generate --out "$W/intake" --schools 20 --seed 1 --script-pupils 4 >/dev/null
"$P" publish "$W/intake" --store "$W/data/store" --opens-at now --ks3-opens-at now >/dev/null
"$S" orgs import "$W/intake" --data-dir "$W/data" >/dev/null
# The first pupil with pages, and their school.
read -r UPN PAPER < <(awk -F, 'NR == 2 {print $1, $2}' "$W/intake/scripts.csv")
LAESTAB=$(awk -F, -v u="$UPN" '$1 == u {print $2}' "$W/intake/pupils.csv")
NPAGES=$(awk -F, -v u="$UPN" -v p="$PAPER" '$1 == u && $2 == p' "$W/intake/scripts.csv" | wc -l)
add_bench_user "$LAESTAB"
mkdir -p "$W/static"
for n in $(seq 1 "$NPAGES"); do
  cp "$W/intake/pages/scripts/2025/$LAESTAB/$UPN/$PAPER/$(printf %02d "$n").png" "$W/static/$n.png"
done
BYTES=$(cat "$W"/static/*.png | wc -c)
echo "school $LAESTAB, pupil $UPN, paper $PAPER: $NPAGES pages, $((BYTES / NPAGES)) bytes a page on average"

export NCA_RATE_LIMITS__PER_USER_PER_MINUTE=1000000000 \
  NCA_RATE_LIMITS__PER_ORG_PER_MINUTE=1000000000 NCA_RATE_LIMITS__PER_IP_PER_MINUTE=1000000000 \
  RUST_LOG=warn
OURS=$(port)
NCA_ADMIN__LISTEN= "$S" serve --data-dir "$W/data" --listen "127.0.0.1:$OURS" >"$W/ours.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$OURS/healthz" >/dev/null && break; sleep 0.1; done

COOKIE=$(sign_in "https://127.0.0.1:$OURS")
PAGE="/scripts/$LAESTAB/$UPN/$PAPER/pages"
got=$(curl -sk -H "Cookie: $COOKIE" "https://127.0.0.1:$OURS$PAGE/1" | sha256sum)
want=$(sha256sum <"$W/static/1.png")
[ "$got" = "$want" ] || { echo "page 1 is not the scanned file" >&2; exit 1; }

NGINX=$(port)
cat >"$W/nginx.conf" <<CONF
worker_processes 2;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$NGINX ssl;
    ssl_certificate $W/data/tls/cert.pem;
    ssl_certificate_key $W/data/tls/key.pem;
    root $W/static;
  }
}
CONF
nginx -c "$W/nginx.conf" -p "$W" -g 'user root;'

# wrk rotates over the paper's pages; both servers are warmed by one pass first.
run() { # name host path-prefix suffix [cookie]: GET host + prefix + n + suffix, n rotating
  for n in $(seq 1 "$NPAGES"); do curl -sk ${5:+-H "Cookie: $5"} "$2$3$n$4" >/dev/null; done
  local out
  out=$(WRK_PREFIX="$3" WRK_SUFFIX="$4" wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$W/rotate.lua" \
    ${5:+-H "Cookie: $5"} "$2" 2>&1 || true)
  echo "$out" >"$W/$1.wrk"
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$1: some responses were not 2xx:" >&2; echo "$out" >&2; exit 1
  fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
cat >"$W/rotate.lua" <<LUA
local prefix, suffix = os.getenv("WRK_PREFIX"), os.getenv("WRK_SUFFIX")
local n, i = $NPAGES, 0
request = function()
  i = i % n + 1
  return wrk.format("GET", prefix .. i .. suffix)
end
LUA
echo "wrk: 2 threads, $CONNS connections, ${SECS} s each, one after another"
n_rps=$(run nginx "https://127.0.0.1:$NGINX" / .png)
o_rps=$(run ours "https://127.0.0.1:$OURS" "$PAGE/" "" "$COOKIE")
avg=$((BYTES / NPAGES))
awk -v o="$o_rps" -v n="$n_rps" -v b="$avg" 'BEGIN {
  printf "nginx HTTPS (static)   %8.0f pages/s %8.1f MB/s\n", n, n * b / 1e6
  printf "nca-portal HTTPS       %8.0f pages/s %8.1f MB/s\n", o, o * b / 1e6
  printf "hot pages: ours / nginx = %.2f\n", o / n
}'

# 2. A cold page and 1,000 clients at once, on a fresh server (plain HTTP, metrics on).
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
HTTP=$(port)
ADMIN=$(port)
NCA_SERVER__TLS=false NCA_ADMIN__LISTEN="127.0.0.1:$ADMIN" NCA_SERVER__MAX_CONNECTIONS=4096 \
  "$S" serve --data-dir "$W/data" --listen "127.0.0.1:$HTTP" >"$W/cold.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HTTP/healthz" >/dev/null && break; sleep 0.1; done
COOKIE=$(sign_in "http://127.0.0.1:$HTTP")
# Load the school's page list (not the page) so only the page itself is cold.
curl -s -H "Cookie: $COOKIE" "http://127.0.0.1:$HTTP/scripts/$LAESTAB/$UPN/$PAPER" >/dev/null
ulimit -n 65536 2>/dev/null || true
"$COLD" --url "http://127.0.0.1:$HTTP$PAGE/$NPAGES" --cookie "$COOKIE" \
  --metrics "http://127.0.0.1:$ADMIN/metrics" --requests 1000
