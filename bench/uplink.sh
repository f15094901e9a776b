#!/usr/bin/env bash
# Multi-cluster path: parent data plane → mutual-TLS QUIC uplink → child agent → backend,
# against, in the same run:
#   - the single-hop `atrium gateway` in front of the same backend;
#   - nginx → nginx over HTTPS with upstream keep-alive (the two-hop chain atrium replaces).
# Then failover: a second child joins (the parent's values are edited live), the first is
# `kill -9`'d under load (how long until it gets no more requests, the slowest request, the
# failures), and the time from the last child's `kill -9` until the parent answers 503.
#
#   bash bench/uplink.sh                    # 3 interleaved rounds of 5 s per target
#                                           # (req/s, p50, p99, CPU per request, failover)
#   DURATION=10 ROUNDS=5 bash bench/uplink.sh
#   HOLD=600 bash bench/uplink.sh           # start everything and keep it up, for profiling
#   PARENT_WORKERS=2 CONNECTIONS=shared bash bench/uplink.sh   # the parent's worker threads
#                                           # and --uplink-connections (per-worker, shared)
#
# Needs nginx and wrk (Debian: apt-get install nginx-light wrk). Everything listens on
# 127.0.0.1; every process is stopped at the end. Prints Markdown for BENCHMARKS.md.
# Every proxy runs one worker; wrk uses one thread and 32 connections.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
source bench/lib.sh

require nginx wrk curl python3
cargo build --release --quiet
ATRIUM=target/release/atrium

BACKEND=127.0.0.1:18281; GATEWAY=127.0.0.1:18282; PARENT=127.0.0.1:18283; UPLINK_PORT=18284
NGINX_FRONT=127.0.0.1:18285; NGINX_TLS=127.0.0.1:18286; GRPC=127.0.0.1:18287; UPLINK2_PORT=18288

# One CA for everything: atrium's components and nginx's TLS hop.
"$ATRIUM" certs init --dir "$WORK/pki" >/dev/null
for n in control-plane data-plane child child2 nginx; do "$ATRIUM" certs issue --dir "$WORK/pki" --name "$n" >/dev/null; done

HEADERS='proxy_http_version 1.1; proxy_set_header Connection "";
    proxy_set_header Host $host; proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host; proxy_set_header X-Forwarded-Port $server_port;'

# /hc is the uplink's health check: 200 while the file exists, 404 once it is removed.
echo ok > "$WORK/hc-ok"; chmod a+rx "$WORK"; chmod a+r "$WORK/hc-ok"
nginx_conf backend "server { listen $BACKEND; location / { return 200 'ok'; } location = /hc { alias $WORK/hc-ok; } }"
# The child-side nginx: TLS in, plain keep-alive to the backend.
nginx_conf child "upstream be { server $BACKEND; keepalive 64; }
  server { listen $NGINX_TLS ssl; ssl_certificate $WORK/pki/nginx.pem; ssl_certificate_key $WORK/pki/nginx-key.pem;
    location / { proxy_pass http://be; $HEADERS } }"
CHILD_NGINX=${PIDS[-1]}
# The parent-side nginx: plain in, HTTPS keep-alive (TLS sessions reused) to the child.
nginx_conf front "upstream child { server $NGINX_TLS; keepalive 64; }
  server { listen $NGINX_FRONT; location / { proxy_pass https://child; proxy_ssl_session_reuse on; $HEADERS } }"
FRONT_NGINX=${PIDS[-1]}

# The child: one Uplink whose router forwards everything to the backend.
uplink_topology_files "healthCheck: {path: /hc, interval: 250ms, timeout: 200ms}"
mkdir -p "$WORK/gateway"
# The second child (for failover under load): the same uplink on another port, its answers
# stamped so the load generator sees which child served.
mkdir -p "$WORK/child2"
sed "s/port: $UPLINK_PORT/port: $UPLINK2_PORT/" "$WORK/child/values.yaml" > "$WORK/child2/values.yaml"
sed 's/services: \[{name: backend, port: 80}\]/middlewares: [{name: stamp}]\n      services: [{name: backend, port: 80}]/' \
  "$WORK/child/manifests.yaml" > "$WORK/child2/manifests.yaml"
cat >> "$WORK/child2/manifests.yaml" <<YAML
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: stamp, namespace: bench}
spec: {headers: {customResponseHeaders: {X-Child: child2}}}
YAML
sed -n '/^---$/,$p' "$WORK/child/manifests.yaml" | sed '1d' > "$WORK/gateway/manifests.yaml"
sed -i "s/, annotations: {hub.traefik.io\\/router.uplinks: bench}//" "$WORK/gateway/manifests.yaml"

"$ATRIUM" agent --cluster child --manifests "$WORK/child/manifests.yaml" --values "$WORK/child/values.yaml" \
  --tls-dir "$WORK/pki" --tls-name child --state-dir "$WORK/child/state" --bind-ip 127.0.0.1 \
  --entrypoint web=127.0.0.1:0 --entrypoint websecure=off --workers 1 2>"$WORK/child/log" &
CHILD_PID=$!; PIDS+=($CHILD_PID)
"$ATRIUM" control-plane --manifests "$WORK/parent/manifests.yaml" --values "$WORK/parent/values.yaml" \
  --tls-dir "$WORK/pki" --state-dir "$WORK/parent/state" --grpc "$GRPC" \
  --entrypoint "web=$PARENT" --entrypoint websecure=off --workers "${PARENT_WORKERS:-1}" \
  --uplink-connections "${CONNECTIONS:-per-worker}" 2>"$WORK/parent/log" &
PARENT_PID=$!; PIDS+=($PARENT_PID)
"$ATRIUM" gateway --manifests "$WORK/gateway/manifests.yaml" --workers 1 --entrypoint "web=$GATEWAY" \
  --entrypoint websecure=off 2>"$WORK/gateway/log" &
GATEWAY_PID=$!; PIDS+=($GATEWAY_PID)

for target in "$BACKEND" "$GATEWAY" "$PARENT" "$NGINX_FRONT"; do
  ok=
  for _ in $(seq 100); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test' "http://$target/")" = 200 ]; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "$target is not answering 200; logs in $WORK" >&2; tail -n 5 "$WORK"/*/log >&2; exit 1; }
done

if [ -n "${HOLD:-}" ]; then
  # For profiling: everything stays up until Ctrl-C (or HOLD seconds).
  echo "parent $PARENT (Host: bench.test), gateway $GATEWAY, nginx chain $NGINX_FRONT, backend $BACKEND" >&2
  echo "pids: child $CHILD_PID, all ${PIDS[*]}" >&2
  sleep "$HOLD"; exit 0
fi

measure() { # $1 = addr -> "rps p50 p99"
  local out
  out=$(wrk -t1 -c32 -d"${DURATION}s" --latency -H "Host: bench.test" "http://$1/")
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(awk '$1=="50%" {print $2}' <<<"$out") $(awk '$1=="99%" {print $2}' <<<"$out")"
}

# CPU per request of every proxy process on each path (the backend's is the same for all):
# the two nginx workers of the chain; the parent (control plane and its data plane) and the
# child agent of the uplink path.
declare -A PROC=([gateway]="$GATEWAY_PID" [chain]="$(pgrep -P "$FRONT_NGINX") $(pgrep -P "$CHILD_NGINX")"
  [uplink]="$PARENT_PID $CHILD_PID")
echo "measuring ${DURATION}s × ${ROUNDS} rounds, targets interleaved ..." >&2
declare -A RPS P50 P99 USR SYS
for round in $(seq "$ROUNDS"); do
  for t in direct gateway chain uplink; do
    pids=${PROC[$t]:-}
    # shellcheck disable=SC2086 # a list of pids
    [ -n "$pids" ] && read -r u0 s0 < <(cpu_ticks $pids)
    case $t in
      direct) out=$(measure "$BACKEND") ;;
      gateway) out=$(measure "$GATEWAY") ;;
      chain) out=$(measure "$NGINX_FRONT") ;;
      uplink) out=$(measure "$PARENT") ;;
    esac
    read -r r a b <<<"$out"
    RPS[$t]+="$r "; P50[$t]+="$a "; P99[$t]+="$b "
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      read -r u1 s1 < <(cpu_ticks $pids)
      USR[$t]+="$(us_per_request $((u1 - u0)) "$r") "; SYS[$t]+="$(us_per_request $((s1 - s0)) "$r") "
    fi
  done
done
cpu_row() { echo "| $2 | $(median <<<"${USR[$1]}") µs | $(median <<<"${SYS[$1]}") µs |"; }
row() { # $1 = key, $2 = label
  local r; r=$(median <<<"${RPS[$1]}")
  echo "| $2 | $r | $(median_lat <<<"${P50[$1]}") | $(median_lat <<<"${P99[$1]}") | $(ratio "$r" "$(median <<<"${RPS[chain]}")")× |"
}

# Failover, polling the parent every 10 ms until it stops routing to the child (503):
# the uplink's health check starts failing (its check interval is 250 ms), then passes again.
python3 - "$PARENT" "$WORK/hc-ok" > "$WORK/failover" <<'PY'
import os, sys, time, http.client
host, port = sys.argv[1].split(":"); hc = sys.argv[2]
def status():
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    c.request("GET", "/", headers={"Host": "bench.test"})
    s = c.getresponse().status; c.close(); return s
def until(want):
    t0 = time.monotonic()
    for _ in range(1000):
        if status() == want:
            return f"{(time.monotonic() - t0) * 1000:.0f}"
        time.sleep(0.01)
    return "never"
assert status() == 200
os.remove(hc); health = until(503)
with open(hc, "w") as f: f.write("ok")
back = until(200)
print(health, back)
PY
read -r HEALTH_MS BACK_MS < "$WORK/failover"

# A second child joins: started, then added to the parent's values (followed live).
"$ATRIUM" agent --cluster child2 --manifests "$WORK/child2/manifests.yaml" --values "$WORK/child2/values.yaml" \
  --tls-dir "$WORK/pki" --tls-name child2 --state-dir "$WORK/child2/state" --bind-ip 127.0.0.1 \
  --entrypoint web=127.0.0.1:0 --entrypoint websecure=off --workers 1 2>"$WORK/child2/log" &
CHILD2_PID=$!; PIDS+=($CHILD2_PID)
cat >> "$WORK/parent/values.yaml" <<YAML
        child2:
          address: "https://127.0.0.1:$UPLINK2_PORT"
YAML
# Under load (8 keep-alive clients), the first child is kill -9'd: how long until no request
# goes to it (a request sent to it waits for its connection to be found dead, then is
# replayed on child2), the slowest request, and the failures.
python3 - "$PARENT" "$CHILD_PID" "$CHILD2_PID" > "$WORK/underload" <<'PY'
import os, signal, sys, threading, time, http.client
host, port = sys.argv[1].split(":"); first, second = int(sys.argv[2]), int(sys.argv[3])
def get(c):
    c.request("GET", "/", headers={"Host": "bench.test"})
    r = c.getresponse(); r.read(); return r.status, r.getheader("X-Child") or "child"
c = http.client.HTTPConnection(host, int(port), timeout=10)
for _ in range(1000):  # until both children serve
    if {get(c)[1] for _ in range(8)} == {"child", "child2"}:
        break
    time.sleep(0.02)
c.close()
killed = [None]; samples = []; lock = threading.Lock(); stop = time.monotonic() + 5.0
def client():
    c = http.client.HTTPConnection(host, int(port), timeout=10); mine = []
    for _ in range(200000):
        t0 = time.monotonic()
        if t0 > stop: break
        try: status, child = get(c)
        except Exception:
            status, child = 0, ""; c.close(); c = http.client.HTTPConnection(host, int(port), timeout=10)
        mine.append((t0, time.monotonic() - t0, status, child))
    with lock: samples.extend(mine)
threads = [threading.Thread(target=client) for _ in range(8)]
for t in threads: t.start()
time.sleep(1.5); os.kill(first, signal.SIGKILL); killed[0] = time.monotonic()
for t in threads: t.join()
k = killed[0]
failed = sum(1 for s in samples if s[2] != 200)
worst = max(s[1] for s in samples)
# A request routed to the dead child waits until its connection is found dead; the last
# such request (started after the kill) says when routing left the child.
slow_after = [s[0] - k for s in samples if s[0] >= k and s[1] > 0.2]
stopped = max(slow_after) * 1000 if slow_after else 0.0
# With child2 alone left, the time until the parent answers 503 once it is kill -9'd too.
os.kill(second, signal.SIGKILL); t0 = time.monotonic(); last = "never"
c = http.client.HTTPConnection(host, int(port), timeout=10)
for _ in range(1000):
    try: status = get(c)[0]
    except Exception:
        c.close(); c = http.client.HTTPConnection(host, int(port), timeout=10); continue
    if status == 503:
        last = f"{(time.monotonic() - t0) * 1000:.0f}"; break
    time.sleep(0.01)
print(f"{stopped:.0f} {worst * 1000:.0f} {failed} {len(samples)} {last}")
PY
read -r STOPPED_MS WORST_MS FAILED TOTAL KILL_MS < "$WORK/underload"

cat <<TABLE
| target (median of $ROUNDS interleaved rounds) | req/s | p50 | p99 | ratio to nginx chain |
|---|---|---|---|---|
$(row direct "backend direct (nginx, 1 worker)")
$(row chain "nginx → HTTPS keep-alive → nginx → backend (1 worker each)")
$(row gateway "atrium gateway → backend (single hop, --workers 1)")
$(row uplink "parent data plane → QUIC uplink → agent → backend (parent --workers ${PARENT_WORKERS:-1}, ${CONNECTIONS:-per-worker} connections; agent --workers 1)")

| CPU per request of the proxies on the path (median) | user | kernel |
|---|---|---|
$(cpu_row chain "nginx → HTTPS → nginx (both workers)")
$(cpu_row gateway "atrium gateway (single hop)")
$(cpu_row uplink "parent + child agent (QUIC uplink)")

A child kill -9'd under load (8 keep-alive clients, two children serving the uplink; goal:
no request fails, the dead child gets no request after 1.0 s, none waits more than ~1 s):
- $TOTAL requests, $FAILED failed; the slowest took $WORST_MS ms;
- the dead child got its last request $STOPPED_MS ms after the kill.

Time until the parent answers 503 instead of routing to a child (goal ≤ 1000 ms; Traefik Hub polls every 5 s):
- the last child is kill -9'd: $KILL_MS ms;
- the uplink's health check starts failing (check interval 250 ms): $HEALTH_MS ms from the failure (routing came back $BACK_MS ms after it passed again).
TABLE
