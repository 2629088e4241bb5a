# Shared set-up of the side-by-side bench scripts (downloads.sh, instructions.sh,
# scripts.sh, idle-connections.sh, results-page.sh), sourced after `set -euo pipefail`:
#  - works from the repository's root, with CARGO_TARGET_DIR defaulting to a folder kept
#    outside the clone;
#  - `need TOOL...` installs the Debian packages named after the tools it lacks;
#  - `workdir NAME` makes the throwaway folder $W and a trap that, on exit, stops every
#    process in `pids` and the nginx whose pid file is in $W, then removes $W;
#  - `port` prints a free local TCP port;
#  - `server_and_bare` builds (unless NO_BUILD is set) the release server, pipeline and
#    bench/src/bin/bare.rs, and sets P, S and BARE to them;
#  - `largest_school_release` publishes a 100-school release (open now) into $W/data, imports
#    its organisations, sets CSV and LAESTAB to its largest school's file and code, and adds
#    the bench user there;
#  - `add_bench_user LAESTAB` adds bench@school.sch.uk (password $PW) to that school, and
#    `sign_in BASE_URL` signs it in (password, then the code from the outbox) and prints its
#    session cookie. A session is re-issued once it is a minute old (a browser takes the new
#    cookie; wrk keeps sending the old one, which would send every later request the long
#    way), so each wrk run should start with a fresh sign-in.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nca-portal-target}"

need() {
  local missing=()
  for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

pids=()
workdir() {
  W=$(mktemp -d "/tmp/nca-$1.XXXXXX")
  trap cleanup EXIT
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/nginx.pid" ] && kill "$(cat "$W/nginx.pid")" 2>/dev/null || true
  rm -rf "$W"
}

server_and_bare() {
  # (Two builds: `--bin bare` beside `-p nca-portal` would build only the binaries named bare.)
  if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -q -p nca-portal -p nca-pipeline
    cargo build --release -q -p nca-bench --bin bare
  fi
  P="$CARGO_TARGET_DIR/release/nca-pipeline"
  S="$CARGO_TARGET_DIR/release/nca-portal"
  BARE="$CARGO_TARGET_DIR/release/bare"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PW='Tr0ubadour&Bells-42'
add_bench_user() {
  "$S" users add --email bench@school.sch.uk --org "$1" --role general-user --password "$PW" --data-dir "$W/data" >/dev/null
}
sign_in() {
  local j="$W/cookies-$RANDOM"
  curl -sk -c "$j" -b "$j" -H 'content-type: application/json' \
    -d "{\"email\":\"bench@school.sch.uk\",\"password\":\"$PW\"}" "$1/api/v1/sign-in" >/dev/null
  local code
  code=$(grep -ho 'code is [0-9]\{6\}' $(ls -t "$W"/data/outbox/*.eml | head -1) | head -1 | awk '{print $3}')
  curl -sk -c "$j" -b "$j" -H 'content-type: application/json' \
    -d "{\"code\":\"$code\"}" "$1/api/v1/sign-in/mfa" >/dev/null
  echo "nca_session=$(awk '$6 == "nca_session" {print $7}' "$j")"
  rm -f "$j"
}
largest_school_release() {
  echo "setting up a 100-school release in $W"
  "$P" generate --out "$W/intake" --schools 100 --seed 1 >/dev/null
  "$P" publish "$W/intake" --store "$W/data/store" --opens-at now --ks3-opens-at now >/dev/null
  "$S" orgs import "$W/intake" --data-dir "$W/data" >/dev/null
  CSV=$(ls -S "$W"/data/store/releases/*/school/*.csv | grep -E "/[0-9]{7}\.csv$" | awk "NR == 1")
  LAESTAB=$(basename "$CSV" .csv)
  add_bench_user "$LAESTAB"
}
