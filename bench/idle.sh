#!/usr/bin/env bash
# Memory per idle keep-alive connection: atrium gateway vs nginx, in one run.
#
#   bash bench/idle.sh                 # 5,000 connections each
#   CONNS=20000 bash bench/idle.sh
#
# Each proxy runs one worker in front of the same backend. A client opens CONNS
# connections, sends one request on each (so every connection has served a request and
# waits for the next, as keep-alive clients do), and holds them. The proxy's resident
# memory (VmRSS) before and after, divided by CONNS, is its memory per idle connection.
# Needs nginx and python3 (Debian: apt-get install nginx-light). Everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
CONNS=${CONNS:-5000}
# burst: every connection's request is sent before any answer is read, so up to CONNS
# requests are in flight at once and the proxy's memory keeps that high-water mark.
# steady: one request in flight at a time, so what is measured is only what idle
# connections hold.
MODE=${MODE:-burst}
# TLS=1: the connections are HTTPS (TLS 1.3, keep-alive) to nginx's `listen ssl` and to a TLS
# entrypoint, both with the same P-256 certificate.
TLS=${TLS:-0}
require nginx python3 curl openssl
# ATRIUM=path/to/atrium measures another build (for a before/after comparison).
if [ -z "${ATRIUM:-}" ]; then
  cargo build --release --quiet
  ATRIUM=target/release/atrium
fi
BACKEND=127.0.0.1:18281; NGINX=127.0.0.1:18282; GW=127.0.0.1:18283
ulimit -n $((CONNS * 2 + 1024))

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
LISTEN_SSL=$([ "$TLS" = 1 ] && echo "ssl; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key; ssl_protocols TLSv1.3" || true)
nginx_conf backend "server { listen $BACKEND; location / { return 200 'ok'; } }"
nginx_conf proxy "upstream be { server $BACKEND; keepalive 64; }
  server { listen $NGINX $LISTEN_SSL; keepalive_timeout 300s; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
NGINX_MASTER=${PIDS[-1]}
mkdir -p "$WORK/one"
if [ "$TLS" = 1 ]; then
  tls_route_manifests > "$WORK/one/route.yaml"
  ENTRYPOINTS=(--entrypoint web=off --entrypoint "websecure=$GW")
  SCHEME=https
else
  route_manifests 'PathPrefix(`/`)' > "$WORK/one/route.yaml"
  ENTRYPOINTS=(--entrypoint "web=$GW" --entrypoint websecure=off)
  SCHEME=http
fi
"$ATRIUM" gateway --manifests "$WORK/one" --workers 1 "${ENTRYPOINTS[@]}" \
  --idle-timeout 300 --max-connections $((CONNS * 2)) 2>"$WORK/gw.log" &
PIDS+=($!)
GW_PID=$!
sleep 2
for t in "$NGINX" "$GW"; do until_answering "$SCHEME" "$t"; done
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -n1)

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hold() { # $1 = addr, $2 = pid of the proxy; prints KiB per connection
  local before after
  before=$(rss "$2")
  python3 - "$1" "$CONNS" "$WORK/held.$2" "$MODE" "$TLS" "$WORK/tls.crt" <<'PY' &
import socket, sys, time, os
host, port = sys.argv[1].split(":"); n = int(sys.argv[2]); ready = sys.argv[3]
steady = sys.argv[4] == "steady"
tls = None
if sys.argv[5] == "1":
    import ssl
    tls = ssl.create_default_context(cafile=sys.argv[6])
socks = []
def answer(s):
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed")
        data += chunk
for i in range(n):
    s = socket.create_connection((host, int(port)))
    if tls:
        s = tls.wrap_socket(s, server_hostname="bench.test")
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
    socks.append(s)
    if steady:
        answer(s)
if not steady:
    for s in socks:
        answer(s)
open(ready, "w").close()
time.sleep(600)
PY
  local client=$!
  for _ in $(seq 600); do [ -e "$WORK/held.$2" ] && break; sleep 0.1; done
  [ -e "$WORK/held.$2" ] || { echo "the client did not get its answers" >&2; exit 1; }
  sleep 1
  after=$(rss "$2")
  kill "$client"; wait "$client" 2>/dev/null || true
  python3 -c "print(f'{($after - $before) / $CONNS:.2f}')"
}
echo "holding $CONNS idle keep-alive connections on each proxy ..." >&2
nginx_kib=$(hold "$NGINX" "$NGINX_WORKER")
gw_kib=$(hold "$GW" "$GW_PID")
cat <<TABLE
| proxy ($CONNS idle keep-alive $SCHEME connections, each after one request, $MODE) | resident memory per connection |
|---|---|
| nginx (1 worker) | $nginx_kib KiB |
| atrium gateway (--workers 1) | $gw_kib KiB |
TABLE
