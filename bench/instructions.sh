#!/usr/bin/env bash
# Instructions per authenticated school-CSV download over HTTPS: nca-portal against bare
# hyper + rustls sending the same headers (bench/src/bin/bare.rs with --header), both under
# valgrind's callgrind. Counts instructions, not seconds, so unlike bench/downloads.sh it gives
# the same figure run after run on a busy shared machine: the place to see what the portal's
# checks (session, authorisation, embargo, rate limits, audit, metrics) cost per request, and
# whether a change made that smaller. It is not the target's figure (that is requests per
# second beside nginx, downloads.sh); it is the instrument for moving it.
#
# One keep-alive HTTP/1.1 connection, as wrk makes (curl --http1.1: curl would take HTTP/2
# from our ALPN, which bare does not offer; N requests one after another). Each server is warmed with
# a first batch, its counters are zeroed, the measured batch runs, and the counters are dumped,
# so start-up, the handshake and the warm-up are not counted. Prints instructions per request
# for each, their ratio, and the portal's inclusive cost by function (callgrind_annotate) for
# the functions that are ours, so the checks' share shows by name.
#
# Environment: CARGO_TARGET_DIR, NO_BUILD (use the binaries already built), N (requests
# measured, default 2000), KEEP (a folder: keep the callgrind files there).
set -euo pipefail
source "$(dirname "$0")/common.sh"
N="${N:-2000}"
WARM=200
need valgrind curl
server_and_bare
workdir instructions
largest_school_release
echo "school $LAESTAB, CSV of $(stat -c %s "$CSV") bytes; $N requests measured on one connection"

export NCA_ADMIN__LISTEN= NCA_RATE_LIMITS__PER_USER_PER_MINUTE=1000000000 \
  NCA_RATE_LIMITS__PER_ORG_PER_MINUTE=1000000000 NCA_RATE_LIMITS__PER_IP_PER_MINUTE=1000000000 \
  RUST_LOG=warn
callgrind() { # out-file command...: start it under callgrind, in the background
  local out="$1"
  shift
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >>"$W/valgrind.log" 2>&1 &
  pids+=($!)
}
up() { # url: wait (valgrind starts slowly) until it answers
  for _ in $(seq 600); do curl -skf -o /dev/null "$1" && return; sleep 0.2; done
  echo "$1 did not start: see $W/valgrind.log" >&2
  cat "$W/valgrind.log" >&2
  exit 1
}
requests() { # n url [cookie]: n GETs on one connection; fails unless every one is 200
  local list="$W/list-$RANDOM"
  for _ in $(seq "$1"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$2"; done >"$list"
  local codes
  codes=$(curl -sk --http1.1 ${3:+-H "Cookie: $3"} -w '%{http_code}\n' -K "$list" | sort | uniq -c)
  rm -f "$list"
  [ "$(awk '{print $2}' <<<"$codes")" = 200 ] || { echo "$2: not every answer was 200: $codes" >&2; exit 1; }
}
measure() { # name out-file url [cookie]: prints instructions per request
  local pid
  pid=$(pgrep -f -- "--callgrind-out-file=$2" | head -1)
  requests "$WARM" "$3" "${4:-}"
  callgrind_control -z "$pid" >/dev/null
  requests "$N" "$3" "${4:-}"
  callgrind_control -d "$pid" >/dev/null
  # (The first dump on request is numbered .1; the one at exit would be the bare name.)
  cp "$2.1" "$W/$1.measured"
  awk -v n="$N" '/^(summary|totals):/ { printf "%.0f\n", $2 / n; exit }' "$2.1"
}

OURS=$(port)
callgrind "$W/ours.cg" "$S" serve --data-dir "$W/data" --listen "127.0.0.1:$OURS"
up "https://127.0.0.1:$OURS/healthz"
ROUTE="/api/v1/results/school/$LAESTAB.csv"
COOKIE=$(sign_in "https://127.0.0.1:$OURS")
curl -sk -D "$W/headers" -o "$W/got.csv" -H "Cookie: $COOKIE" "https://127.0.0.1:$OURS$ROUTE"
cmp -s "$W/got.csv" "$CSV" || { echo "the download is not the published file" >&2; exit 1; }
tr -d '\r' <"$W/headers" | grep -viE '^(HTTP/|content-type:|content-length:|date:|$)' >"$W/portal-headers"
mapfile -t HEADER_ARGS < <(sed 's/^/--header=/' "$W/portal-headers")
BH=$(port)
callgrind "$W/bare.cg" "$BARE" --listen "127.0.0.1:$BH" --file "$CSV" \
  --cert "$W/data/tls/cert.pem" --key "$W/data/tls/key.pem" "${HEADER_ARGS[@]}"
up "https://127.0.0.1:$BH/"

# (A fresh sign-in just before: a session a minute old is re-issued, and curl would keep
# sending the old cookie the long way.)
COOKIE=$(sign_in "https://127.0.0.1:$OURS")
ours=$(measure ours "$W/ours.cg" "https://127.0.0.1:$OURS$ROUTE" "$COOKIE")
bare=$(measure bare "$W/bare.cg" "https://127.0.0.1:$BH/")
# Both dumps are taken: stop the servers (each writes a last dump as it exits) before reading.
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
if [ -n "${KEEP:-}" ]; then
  mkdir -p "$KEEP"
  cp "$W/ours.measured" "$W/bare.measured" "$KEEP/"
fi
awk -v o="$ours" -v b="$bare" 'BEGIN {
  printf "instructions per request: nca-portal %d, bare+headers %d; ours / bare+headers = %.3f (the checks: %d a request)\n", o, b, o / b, o - b }'
# Inclusive cost by function, per request, summed over the files its inlined code came
# from; then the functions where ours spends more than bare (TLS and hyper's own entries
# show too: the request is larger by its cookie, and hyper arms a header-read timer).
incl() {
  callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$W/$1.measured" 2>/dev/null |
    awk -v n="$N" '$1 ~ /^[0-9,]+$/ { c = $1; gsub(",", "", c); f = $0; sub(/^ *[0-9,]+ +\([^)]*\) +/, "", f); sub(/ \[[^]]*\]$/, "", f)
      s[substr(f, index(f, ":") + 1)] += c } END { for (k in s) print int(s[k] / n) "\t" k }'
}
incl ours >"$W/ours.incl"
incl bare >"$W/bare.incl"
echo "where nca-portal spends more than bare+headers (inclusive instructions per request: ours - bare, ours, bare):"
awk -F'\t' 'NR == FNR { b[$2] = $1; next } { d = $1 - b[$2]; if (d >= 200) printf "%6d %6d %6d  %s\n", d, $1, b[$2], $2 }' \
  "$W/bare.incl" "$W/ours.incl" | sort -rn | grep -vE ' (std::|core::|tokio::runtime|alloc::|<?std::|__rust_begin)' |
  head -40 | cut -c1-200
