#!/usr/bin/env bash
# Memory per idle kept-alive HTTPS connection: nca-portal against nginx, side by side in one
# run. Opens N TLS connections to each (one request each, then they sit idle, as browsers
# waiting on the results countdown do) and reports the growth of the servers' resident memory
# divided by N, and the ratio. What keeping every waiting browser's connection through 7:30
# (server.keep_alive_secs above the countdown's reload) costs in memory.
#
# Environment: CARGO_TARGET_DIR, NO_BUILD (use the binaries already built), N (default 5000).
set -euo pipefail
source "$(dirname "$0")/common.sh"
N="${N:-5000}"
need nginx
[ -z "${NO_BUILD:-}" ] && cargo build --release -q -p nca-portal
S="$CARGO_TARGET_DIR/release/nca-portal"
workdir idle
# Both clients' connections and the servers' must fit in this shell's open-file limit.
ulimit -n "$(ulimit -Hn)"

OURS=$(port)
NCA_ADMIN__LISTEN= NCA_SERVER__KEEP_ALIVE_SECS=600 RUST_LOG=warn \
  "$S" serve --data-dir "$W/data" --listen "127.0.0.1:$OURS" >"$W/ours.log" 2>&1 &
pids+=($!)
OURS_PID=$!
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$OURS/healthz" >/dev/null && break; sleep 0.1; done

NGINX=$(port)
cat >"$W/nginx.conf" <<CONF
worker_processes 2;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections $((N + 1024)); }
worker_rlimit_nofile $((N + 2048));
http {
  access_log off;
  keepalive_timeout 600s;
  server {
    listen 127.0.0.1:$NGINX ssl;
    ssl_certificate $W/data/tls/cert.pem;
    ssl_certificate_key $W/data/tls/key.pem;
    location /healthz { return 200 "ok\n"; }
  }
}
CONF
nginx -c "$W/nginx.conf" -p "$W" -g 'user root;'
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$NGINX/healthz" >/dev/null && break; sleep 0.1; done

# Resident kB of a process and its children (nginx's workers).
rss() {
  local total=0
  for p in "$1" $(pgrep -P "$1"); do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}

# Open N idle TLS connections (each asks /healthz once), hold them while `rss` reads the
# server, then close them.
measure() {
  local name=$1 port=$2 pid=$3
  local before after
  before=$(rss "$pid")
  python3 - "$port" "$N" "$W/ready-$name" "$W/done-$name" <<'PY' &
import asyncio, os, ssl, sys
port, n, ready, done = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
async def one(sem, held):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        w.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        held.append((r, w))
async def main():
    sem, held = asyncio.Semaphore(64), []
    await asyncio.gather(*(one(sem, held) for _ in range(n)))
    open(ready, "w").write(str(len(held)))
    while not os.path.exists(done):
        await asyncio.sleep(0.2)
    for _, w in held:
        w.close()
asyncio.run(main())
PY
  local client=$!
  while [ ! -f "$W/ready-$name" ]; do
    kill -0 "$client" 2>/dev/null || { echo "$name: the client failed" >&2; exit 1; }
    sleep 0.2
  done
  sleep 2
  after=$(rss "$pid")
  touch "$W/done-$name"
  wait "$client"
  echo "$name $(cat "$W/ready-$name") $before $after"
}

echo "$N idle TLS connections to each server (one request each, then idle)"
read -r _ n1 b1 a1 < <(measure ours "$OURS" "$OURS_PID")
read -r _ n2 b2 a2 < <(measure nginx "$NGINX" "$(cat "$W/nginx.pid")")
python3 - "$n1" "$b1" "$a1" "$n2" "$b2" "$a2" <<'PY'
import sys
n1, b1, a1, n2, b2, a2 = map(int, sys.argv[1:])
ours, ngx = (a1 - b1) / n1, (a2 - b2) / n2
print(f"nca-portal: {n1} connections, RSS {b1} -> {a1} kB, {ours:.1f} kB a connection")
print(f"nginx:      {n2} connections, RSS {b2} -> {a2} kB, {ngx:.1f} kB a connection")
print(f"ours / nginx: {ours / ngx:.2f}")
print(f"at 21,647 waiting organisations (national): nca-portal {ours * 21647 / 1024:.0f} MB")
PY
