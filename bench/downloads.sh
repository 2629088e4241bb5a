#!/usr/bin/env bash
# Authenticated school-CSV downloads from nca-portal against nginx serving the same file
# statically, side by side in one run, over HTTPS (same certificate) and over plain HTTP
# (nca-portal behind a TLS-terminating balancer: server.tls = false). Client: wrk, HTTP/1.1
# keep-alive, identity encoding so both send the same bytes. Every nca-portal request checks
# the session, authorisation, embargo, the rate limiters (raised so they never refuse) and is
# audited. Beside them, bench/src/bin/bare.rs: hyper + rustls serving the file from memory and
# nothing else, the ceiling. Prints requests/s for each and the ratios to nginx.
# For context (not the target's figure), two more servers send the headers our download sends
# (copied from a real one: disposition, ETag, caching, security headers, request id), so the
# cost of those headers alone shows apart from the cost of the checks: bare hyper with them,
# and nginx with them (add_header).
#
# With BASE (the path of another nca-portal binary, an earlier build say), that binary serves
# the same data too and runs in every round right beside ours (after it in odd rounds, before
# it in even ones), and ours/base is reported: an A/B of two builds with the same anchors,
# seconds apart.
#
# Environment: CARGO_TARGET_DIR, NO_BUILD (use the binaries already built), SECS (default 10), CONNS (default 64),
# ROUNDS (default 3), BASE, PERF (a file: record a
# perf profile of our server during its run), PERF_ON (https, the default, or http).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SECS="${SECS:-10}"
CONNS="${CONNS:-64}"
need wrk nginx
server_and_bare
workdir downloads

# The largest school: its file is near the 16 KiB of the brief's anchor.
largest_school_release
mkdir -p "$W/static"
cp "$CSV" "$W/static/school.csv"
echo "school $LAESTAB, CSV of $(stat -c %s "$CSV") bytes"

export NCA_ADMIN__LISTEN= NCA_RATE_LIMITS__PER_USER_PER_MINUTE=1000000000 \
  NCA_RATE_LIMITS__PER_ORG_PER_MINUTE=1000000000 NCA_RATE_LIMITS__PER_IP_PER_MINUTE=1000000000 \
  RUST_LOG=warn
OURS_TLS=$(port)
"$S" serve --data-dir "$W/data" --listen "127.0.0.1:$OURS_TLS" >"$W/ours-tls.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$OURS_TLS/healthz" >/dev/null && break; sleep 0.1; done
OURS_HTTP=$(port)
NCA_SERVER__TLS=false "$S" serve --data-dir "$W/data" --listen "127.0.0.1:$OURS_HTTP" >"$W/ours-http.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$OURS_HTTP/healthz" >/dev/null && break; sleep 0.1; done

if [ -n "${BASE:-}" ]; then
  BASE_TLS=$(port)
  "$BASE" serve --data-dir "$W/data" --listen "127.0.0.1:$BASE_TLS" >"$W/base-tls.log" 2>&1 &
  pids+=($!)
  BASE_HTTP=$(port)
  NCA_SERVER__TLS=false "$BASE" serve --data-dir "$W/data" --listen "127.0.0.1:$BASE_HTTP" >"$W/base-http.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -skf "https://127.0.0.1:$BASE_TLS/healthz" >/dev/null && curl -sf "http://127.0.0.1:$BASE_HTTP/healthz" >/dev/null && break
    sleep 0.1
  done
fi
# (A fresh sign-in for each of our runs: see common.sh.)
COOKIE=$(sign_in "https://127.0.0.1:$OURS_TLS")
ROUTE="/api/v1/results/school/$LAESTAB.csv"
got=$(curl -sk -H "Cookie: $COOKIE" "https://127.0.0.1:$OURS_TLS$ROUTE" | sha256sum)
want=$(sha256sum <"$CSV")
[ "$got" = "$want" ] || { echo "the download is not the published file" >&2; exit 1; }
# Our download's headers, but those every server writes itself.
curl -sk -D "$W/headers" -o /dev/null -H "Cookie: $COOKIE" "https://127.0.0.1:$OURS_TLS$ROUTE"
tr -d '\r' <"$W/headers" | grep -viE '^(HTTP/|content-type:|content-length:|date:|$)' >"$W/portal-headers"
echo "our download's own headers: $(cut -d: -f1 "$W/portal-headers" | paste -sd' ')"

NGINX_TLS=$(port)
NGINX_HTTP=$(port)
NGINX_H_TLS=$(port)
NGINX_H_HTTP=$(port)
# nginx's add_header lines for those headers (ETag replaces nginx's own).
awk '{ n = index($0, ":"); v = substr($0, n + 2); gsub(/["\\]/, "\\\\&", v); printf "    add_header %s \"%s\" always;\n", substr($0, 1, n - 1), v }' \
  "$W/portal-headers" >"$W/nginx-headers.conf"
cat >"$W/nginx.conf" <<EOF
worker_processes 2;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$NGINX_TLS ssl;
    ssl_certificate $W/data/tls/cert.pem;
    ssl_certificate_key $W/data/tls/key.pem;
    root $W/static;
  }
  server {
    listen 127.0.0.1:$NGINX_HTTP;
    root $W/static;
  }
  server {
    listen 127.0.0.1:$NGINX_H_TLS ssl;
    ssl_certificate $W/data/tls/cert.pem;
    ssl_certificate_key $W/data/tls/key.pem;
    root $W/static;
    etag off;
    location / {
$(cat "$W/nginx-headers.conf")
    }
  }
  server {
    listen 127.0.0.1:$NGINX_H_HTTP;
    root $W/static;
    etag off;
    location / {
$(cat "$W/nginx-headers.conf")
    }
  }
}
EOF
nginx -c "$W/nginx.conf" -p "$W" -g 'user root;'

BARE_TLS=$(port)
"$BARE" --listen "127.0.0.1:$BARE_TLS" --file "$CSV" --cert "$W/data/tls/cert.pem" --key "$W/data/tls/key.pem" &
pids+=($!)
BARE_HTTP=$(port)
"$BARE" --listen "127.0.0.1:$BARE_HTTP" --file "$CSV" &
pids+=($!)
mapfile -t HEADER_ARGS < <(sed 's/^/--header=/' "$W/portal-headers")
BARE_H_TLS=$(port)
"$BARE" --listen "127.0.0.1:$BARE_H_TLS" --file "$CSV" --cert "$W/data/tls/cert.pem" --key "$W/data/tls/key.pem" "${HEADER_ARGS[@]}" &
pids+=($!)
BARE_H_HTTP=$(port)
"$BARE" --listen "127.0.0.1:$BARE_H_HTTP" --file "$CSV" "${HEADER_ARGS[@]}" &
pids+=($!)
for _ in $(seq 100); do
  curl -skf "https://127.0.0.1:$BARE_TLS/" >/dev/null && curl -sf "http://127.0.0.1:$BARE_HTTP/" >/dev/null &&
    curl -skf "https://127.0.0.1:$BARE_H_TLS/" >/dev/null && curl -sf "http://127.0.0.1:$BARE_H_HTTP/" >/dev/null && break
  sleep 0.1
done
# The servers with our headers must send each of them as we do.
for url in "https://127.0.0.1:$BARE_H_TLS/" "https://127.0.0.1:$NGINX_H_TLS/school.csv"; do
  curl -sk -D "$W/their-headers" -o /dev/null "$url"
  while IFS= read -r h; do
    tr -d '\r' <"$W/their-headers" | grep -qixF -- "$h" || { echo "$url does not send: $h" >&2; exit 1; }
  done <"$W/portal-headers"
done

run() { # name url [cookie]: prints requests/s
  local out
  out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" ${3:+-H "Cookie: $3"} "$2")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$1: some responses were not 2xx:" >&2
    echo "$out" >&2
    exit 1
  fi
  local rps lat
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  lat=$(awk '/Latency/ && !done {print $2; done=1}' <<<"$out")
  printf '  %-24s %10.0f req/s  (mean latency %s)\n' "$1" "$rps" "$lat" >&2
  echo "$rps"
}
profile() { # which: record a perf profile of that server during its run, when PERF is set
  if [ -n "${PERF:-}" ] && [ "${PERF_ON:-https}" = "$1" ] && [ ! -e "$PERF" ]; then
    local pid="${pids[0]}"
    [ "$1" = http ] && pid="${pids[1]}"
    perf record -F 499 --call-graph ${PERF_GRAPH:-fp} -o "$PERF" -p "$pid" -- sleep "$SECS" >/dev/null 2>&1 &
  fi
}
ours_and_base() { # https|http: our run and, with BASE, base's right beside it, base first in
  # even rounds and second in odd ones (the machine's speed drifts within seconds, and which
  # goes first would otherwise always be the same); sets O (ours) and B (base), requests/s
  local label url base_url
  label=$(tr a-z A-Z <<<"$1")
  if [ "$1" = https ]; then
    url="https://127.0.0.1:$OURS_TLS$ROUTE" base_url="https://127.0.0.1:${BASE_TLS:-}$ROUTE"
  else
    url="http://127.0.0.1:$OURS_HTTP$ROUTE" base_url="http://127.0.0.1:${BASE_HTTP:-}$ROUTE"
  fi
  B=
  base_turn() { # the base build's run, in the round's turn $1 (0: before ours, 1: after)
    if [ -n "${BASE:-}" ] && [ $((r % 2)) = "$1" ]; then
      COOKIE=$(sign_in "https://127.0.0.1:$OURS_TLS")
      B=$(run "base $label" "$base_url" "$COOKIE")
    fi
  }
  base_turn 0
  profile "$1"
  COOKIE=$(sign_in "https://127.0.0.1:$OURS_TLS")
  O=$(run "nca-portal $label" "$url" "$COOKIE")
  base_turn 1
}
# The machine is shared and noisy, so the servers take turns, ROUNDS times, and each
# round's ratio compares runs seconds apart; the figure reported is the median round.
ROUNDS="${ROUNDS:-3}"
echo "wrk: 2 threads, $CONNS connections, ${SECS} s a run; $ROUNDS rounds of nginx, nginx with our headers, bare hyper + rustls, bare with our headers, nca-portal"
R="$W/ratios"
for r in $(seq "$ROUNDS"); do
  echo "round $r" >&2
  n_tls=$(run "nginx HTTPS (static)" "https://127.0.0.1:$NGINX_TLS/school.csv")
  nh_tls=$(run "nginx+headers HTTPS" "https://127.0.0.1:$NGINX_H_TLS/school.csv")
  b_tls=$(run "bare hyper HTTPS" "https://127.0.0.1:$BARE_TLS/")
  bh_tls=$(run "bare+headers HTTPS" "https://127.0.0.1:$BARE_H_TLS/")
  ours_and_base https
  o_tls=$O base_tls=$B
  n_http=$(run "nginx HTTP (static)" "http://127.0.0.1:$NGINX_HTTP/school.csv")
  nh_http=$(run "nginx+headers HTTP" "http://127.0.0.1:$NGINX_H_HTTP/school.csv")
  b_http=$(run "bare hyper HTTP" "http://127.0.0.1:$BARE_HTTP/")
  bh_http=$(run "bare+headers HTTP" "http://127.0.0.1:$BARE_H_HTTP/")
  ours_and_base http
  o_http=$O base_http=$B
  if [ -n "${BASE:-}" ]; then
    echo "$o_tls $base_tls $o_http $base_http" | awk '{ printf "%.3f %.3f\n", $1 / $2, $3 / $4 }' | tee -a "$W/base-ratios" |
      awk '{ printf "  ratios: ours/base HTTPS %.2f, HTTP %.2f\n", $1, $2 }' >&2
  fi
  # Columns: for HTTPS then HTTP, ours/nginx, bare/nginx, bare+headers/nginx,
  # ours/(nginx+headers), ours/(bare+headers).
  echo "$o_tls $n_tls $b_tls $bh_tls $nh_tls $o_http $n_http $b_http $bh_http $nh_http" |
    awk '{ for (i = 0; i < 2; i++) { o = $(1 + 5 * i); n = $(2 + 5 * i); b = $(3 + 5 * i); bh = $(4 + 5 * i); nh = $(5 + 5 * i)
             printf "%.3f %.3f %.3f %.3f %.3f ", o / n, b / n, bh / n, o / nh, o / bh }; print "" }' | tee -a "$R" |
    awk '{ printf "  ratios: HTTPS ours/nginx %.2f (bare %.2f, bare+headers %.2f; ours/(nginx+headers) %.2f, ours/(bare+headers) %.2f)\n", $1, $2, $3, $4, $5
           printf "          HTTP  ours/nginx %.2f (bare %.2f, bare+headers %.2f; ours/(nginx+headers) %.2f, ours/(bare+headers) %.2f)\n", $6, $7, $8, $9, $10 }' >&2
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
m() { awk -v c="$1" '{print $c}' "$R" | median; }
for p in "HTTPS 0 1.3" "HTTP 5 1.0"; do
  set -- $p
  awk -v name="$1" -v t="$3" -v r="$(m $(($2 + 1)))" -v b="$(m $(($2 + 2)))" -v bh="$(m $(($2 + 3)))" -v onh="$(m $(($2 + 4)))" -v obh="$(m $(($2 + 5)))" \
    'BEGIN { printf "%-6s ours / nginx = %.3f, median of the rounds (target %.1f): %s; bare hyper / nginx = %.2f\n", name ":", r, t, (r >= t ? "met" : "NOT met"), b
             printf "       with our headers (context): bare+headers / nginx = %.2f; ours / (nginx+headers) = %.2f; ours / (bare+headers) = %.2f\n", bh, onh, obh }'
done
if [ -n "${BASE:-}" ]; then
  printf 'ours / base (%s), median of the rounds: HTTPS %.3f, HTTP %.3f\n' "$BASE" \
    "$(awk '{print $1}' "$W/base-ratios" | median)" "$(awk '{print $2}' "$W/base-ratios" | median)"
fi
