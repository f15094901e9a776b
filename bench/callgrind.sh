#!/usr/bin/env bash
# Instructions per request under valgrind's callgrind: counts that do not vary with machine
# noise. Each proxy runs under callgrind with one worker; after a warm-up, the counters are
# zeroed, N sequential keep-alive requests go through one client connection, and the
# counters are dumped: instructions (Ir) / N, user space only (the kernel is not counted).
#
#   bash bench/callgrind.sh          # N=2000
#   N=5000 bash bench/callgrind.sh
#   KEEP=/tmp/cg bash bench/callgrind.sh   # keep the dumps, for callgrind_annotate
#
# Targets: nginx as a reverse proxy (the baseline); atrium with a bare route; the seed's
# child route (stripPrefix + headers) on the direct lane; the same route made to take the
# general lane (a Header rule elsewhere in the table, which is how every router with a
# middleware went before the direct lane took them). Needs valgrind, nginx and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
source bench/lib.sh
require valgrind callgrind_control nginx curl python3
cargo build --release --quiet
ATRIUM=$PWD/target/release/atrium

BACKEND=127.0.0.1:18781; NGINX=127.0.0.1:18782; GW=127.0.0.1:18783
nginx_conf backend "server { listen $BACKEND; location / { return 200 'ok'; } }"

mkdir -p "$WORK/bare" "$WORK/mw" "$WORK/general"
route_manifests 'Host(`bench.test`) && PathPrefix(`/`)' > "$WORK/bare/route.yaml"
seed_child_route_manifests > "$WORK/mw/route.yaml"
cp "$WORK/mw/route.yaml" "$WORK/general/route.yaml"
cat >> "$WORK/general/route.yaml" <<'YAML'
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: by-header, namespace: bench}
spec:
  entryPoints: [web]
  routes:
    - match: Header(`X-Never`, `1`) && PathPrefix(`/never`)
      services: [{name: backend, port: 80}]
YAML

# $1 = label, $2 = path; the process under callgrind listens on $GW (or $NGINX for nginx).
# Prints "label Ir/request".
count() {
  local label=$1 addr=$2 path=$3 pid=$4 out
  local urls=()
  for _ in $(seq 50); do urls+=("http://$addr$path"); done
  curl -fsS -H "Host: bench.test" "${urls[@]}" >/dev/null # warm-up: pools, caches
  callgrind_control -z "$pid" >/dev/null 2>&1
  urls=()
  for _ in $(seq "$N"); do urls+=("http://$addr$path"); done
  # One curl: every request on the same keep-alive connection, one after the other.
  curl -fsS -H "Host: bench.test" "${urls[@]}" >/dev/null
  out="$WORK/$label.out"
  callgrind_control -d "$label" "$pid" >/dev/null 2>&1
  sleep 1
  local dump
  dump=$(ls -t "$WORK"/callgrind.out.* | head -n1)
  python3 - "$dump" "$N" "$label" <<'PY'
import sys
total = 0
for line in open(sys.argv[1]):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = int(line.split()[1])
print(f"{sys.argv[3]} {total / int(sys.argv[2]):.0f}")
PY
}

results=""
# nginx: one worker, no master, under callgrind.
mkdir -p "$WORK/proxy"
cat > "$WORK/proxy/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream be { server $BACKEND; keepalive 64; }
  server { listen $NGINX; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
    proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$host; proxy_set_header X-Forwarded-Port \$server_port; } }
}
CONF
(cd "$WORK" && exec valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p" \
  nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy" 2>"$WORK/proxy.vg") &
pid=$!; PIDS+=($pid)
for _ in $(seq 100); do curl -fsS -o /dev/null -H 'Host: bench.test' "http://$NGINX/" 2>/dev/null && break; sleep 0.2; done
results+="$(count nginx "$NGINX" / "$pid")"$'\n'
kill "$pid"; wait "$pid" 2>/dev/null || true

for t in bare mw general; do
  path=/; [ "$t" = bare ] || path=/crm/x
  (cd "$WORK" && exec valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p" \
    "$ATRIUM" gateway --manifests "$WORK/$t" --workers 1 --entrypoint "web=$GW" --entrypoint websecure=off \
    2>"$WORK/$t.vg") &
  pid=$!; PIDS+=($pid)
  for _ in $(seq 150); do curl -fsS -o /dev/null -H "Host: bench.test" "http://$GW$path" 2>/dev/null && break; sleep 0.2; done
  curl -fsS -o /dev/null -H "Host: bench.test" "http://$GW$path" || { echo "atrium ($t) does not answer:" >&2; tail -n 5 "$WORK/$t.vg" >&2; exit 1; }
  results+="$(count "$t" "$GW" "$path" "$pid")"$'\n'
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$WORK"/callgrind.out.*.1 "$KEEP"/; fi
python3 - "$results" <<'PY'
import sys
r = dict(l.split() for l in sys.argv[1].strip().splitlines())
n = float(r["nginx"])
rows = [("nginx proxy (1 worker)", "nginx"), ("atrium, bare route (direct lane)", "bare"),
        ("atrium, the seed's child route: stripPrefix + headers (direct lane)", "mw"),
        ("atrium, the same route on the general lane (as before)", "general")]
print("| target | instructions per request (user space) | ratio to nginx |")
print("|---|---|---|")
for label, k in rows:
    print(f"| {label} | {int(float(r[k])):,} | {float(r[k]) / n:.2f}× |")
print(f"\nThe child route on the direct lane vs the general lane: {float(r['mw']) / float(r['general']):.2f}× the instructions;"
      f" vs a bare route: {float(r['mw']) / float(r['bare']):.2f}×.")
PY
