# Shared set-up of the side-by-side bench scripts (downloads.sh, scripts.sh,
# idle-connections.sh), sourced after `set -euo pipefail`:
#  - works from the repository's root, with CARGO_TARGET_DIR defaulting to a folder kept
#    outside the clone;
#  - `need TOOL...` installs the Debian packages named after the tools it lacks;
#  - `workdir NAME` makes the throwaway folder $W and a trap that, on exit, stops every
#    process in `pids` and the nginx whose pid file is in $W, then removes $W;
#  - `port` prints a free local TCP port.
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

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
