#!/usr/bin/env bash
# A school's results page as the 7:30 burst asks for it: requests/s of the largest school's
# `/results` over HTTPS, signed in, sent gzip-compressed (what every browser asks for:
# `Accept-Encoding: gzip, deflate, br, zstd`) against the same page sent as it is
# (`identity`), side by side in one run. With BASE (the path of another nca-portal binary,
# such as one built before a change) the same two for it too, taking turns. Client: wrk,
# HTTP/1.1 keep-alive. Prints each run, the bytes each page is sent in, and the ratios.
#
# Environment: CARGO_TARGET_DIR, NO_BUILD (use the binaries already built), SECS (default 5),
# CONNS (default 16), ROUNDS (default 3), BASE.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SECS="${SECS:-5}"
CONNS="${CONNS:-16}"
ROUNDS="${ROUNDS:-3}"
need wrk
[ -z "${NO_BUILD:-}" ] && cargo build --release -q -p nca-portal -p nca-pipeline
P="$CARGO_TARGET_DIR/release/nca-pipeline"
S="$CARGO_TARGET_DIR/release/nca-portal"
workdir results-page

# The largest school: its page is the largest.
largest_school_release

export NCA_ADMIN__LISTEN= NCA_RATE_LIMITS__PER_USER_PER_MINUTE=1000000000 \
  NCA_RATE_LIMITS__PER_ORG_PER_MINUTE=1000000000 NCA_RATE_LIMITS__PER_IP_PER_MINUTE=1000000000 \
  RUST_LOG=warn
servers=("ours=$S")
[ -n "${BASE:-}" ] && servers+=("base=$BASE")
declare -A URL
for sv in "${servers[@]}"; do
  name=${sv%%=*}
  p=$(port)
  "${sv#*=}" serve --data-dir "$W/data" --listen "127.0.0.1:$p" >"$W/$name.log" 2>&1 &
  pids+=($!)
  URL[$name]="https://127.0.0.1:$p"
  for _ in $(seq 100); do curl -skf "${URL[$name]}/healthz" >/dev/null && break; sleep 0.1; done
done

GZ="gzip, deflate, br, zstd"
# Every server sends the school's results, and a gzip-compressed page inflates to the page.
for sv in "${servers[@]}"; do
  name=${sv%%=*}
  cookie=$(sign_in "${URL[$name]}")
  curl -sk -H "Cookie: $cookie" -H "Accept-Encoding: identity" "${URL[$name]}/results" -o "$W/$name.html"
  curl -sk -H "Cookie: $cookie" -H "Accept-Encoding: $GZ" -D "$W/$name.h" "${URL[$name]}/results" -o "$W/$name.body"
  grep -q "pupils. Test results" "$W/$name.html" || { echo "$name: /results is not the school's results" >&2; exit 1; }
  if grep -qi '^content-encoding: gzip' "$W/$name.h"; then
    gunzip -c <"$W/$name.body" | cmp -s - "$W/$name.html" || { echo "$name: the gzip page is not the page" >&2; exit 1; }
  fi
  echo "$name: the page is $(stat -c %s "$W/$name.html") bytes as it is, sent in $(stat -c %s "$W/$name.body") when gzip is accepted"
done

run() { # server encoding: prints requests/s
  local cookie out
  cookie=$(sign_in "${URL[$1]}")
  out=$(wrk -t1 -c"$CONNS" -d"${SECS}s" -H "Cookie: $cookie" -H "Accept-Encoding: $2" "${URL[$1]}/results")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$1 ($2): some responses were not 2xx:" >&2
    echo "$out" >&2
    exit 1
  fi
  local rps
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  printf '  %-6s %-26s %9.0f req/s\n' "$1" "$2" "$rps" >&2
  echo "$rps"
}
echo "wrk: 1 thread, $CONNS connections, ${SECS} s a run; $ROUNDS rounds"
R="$W/ratios"
for r in $(seq "$ROUNDS"); do
  echo "round $r" >&2
  o_id=$(run ours identity)
  o_gz=$(run ours "$GZ")
  if [ -n "${BASE:-}" ]; then
    b_id=$(run base identity)
    b_gz=$(run base "$GZ")
  else
    b_id=$o_id b_gz=$o_gz
  fi
  echo "$o_gz $o_id $b_gz $b_id" | awk '{ printf "%.3f %.3f %.3f\n", $1 / $2, $3 / $4, $1 / $3 }' | tee -a "$R" |
    awk -v base="${BASE:+1}" '{ printf "  ratios: ours gzip/identity %.2f", $1
      if (base) printf "; base gzip/identity %.2f; gzip, ours/base %.2f", $2, $3; print "" }' >&2
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
echo "median of the rounds: ours gzip / identity = $(awk '{print $1}' "$R" | median)"
if [ -n "${BASE:-}" ]; then
  echo "                      base gzip / identity = $(awk '{print $2}' "$R" | median); as browsers ask (gzip), ours / base = $(awk '{print $3}' "$R" | median)"
fi
