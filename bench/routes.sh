#!/usr/bin/env bash
# Scale with many routes: resident memory per route, time to serve at start, and how long
# a one-route edit takes from file write to first answer, for `atrium gateway --workers 1`.
#
#   bash bench/routes.sh                 # 10,000 routes (1,000 hosts × 10 prefixes)
#   HOSTS=100 bash bench/routes.sh       # 1,000 routes
#   ATRIUM=/path/to/atrium bash bench/routes.sh   # another build, for before/after
#
# Needs python3 and curl. Everything on 127.0.0.1 (no backend runs: a routed request
# answers 502, an unrouted one 404).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
HOSTS=${HOSTS:-1000}
require python3 curl
if [ -z "${ATRIUM:-}" ]; then
  cargo build --release --quiet
  ATRIUM=target/release/atrium
fi
GW=127.0.0.1:18381

routes() { # $1 = directory, $2 = hosts
  mkdir -p "$1"
  python3 - "$1/routes.yaml" "$2" <<'PY'
import sys
path, hosts = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.write("apiVersion: v1\nkind: Service\nmetadata: {name: backend, namespace: bench}\nspec: {ports: [{port: 80}]}\n"
            "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: backend, namespace: bench}\n"
            "subsets: [{addresses: [{ip: 127.0.0.1}], ports: [{port: 9}]}]\n")
    for h in range(hosts):
        for p in range(10 if hosts > 0 else 0):
            f.write(f"---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {{name: r{h}-{p}, namespace: bench}}\n"
                    f"spec:\n  entryPoints: [web]\n  routes:\n    - match: Host(`h{h}.test`) && PathPrefix(`/p{p}`)\n"
                    f"      services: [{{name: backend, port: 80}}]\n")
PY
}
status() { curl -s -o /dev/null -w '%{http_code}' -H "Host: $1" "http://$GW$2" || true; }
now_ms() { date +%s%3N; }

# Starts a gateway on $1 and waits until $2 (its last host) is routed; sets READY_MS, RSS
# (KiB, once the watch's first look is over) and PID.
start() {
  local t0
  t0=$(now_ms)
  "$ATRIUM" gateway --manifests "$1" --workers 1 --entrypoint "web=$GW" --entrypoint websecure=off 2>"$1.log" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 3000); do [ "$(status "$2" /p9)" = 502 ] && break; sleep 0.01; done
  [ "$(status "$2" /p9)" = 502 ] || { echo "the gateway on $1 does not route" >&2; exit 1; }
  READY_MS=$(( $(now_ms) - t0 ))
  sleep 3
  RSS=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
}
# Files older than the fingerprint's 2 s: as a gateway finds them after a restart.
routes "$WORK/one" 1
routes "$WORK/many" "$HOSTS"
sleep 2.5
start "$WORK/one" h0.test
one_rss=$RSS
kill "$PID"; wait "$PID" 2>/dev/null || true
start "$WORK/many" "h$((HOSTS - 1)).test"
many_ms=$READY_MS; many_rss=$RSS; many_pid=$PID
n=$((HOSTS * 10))

# A one-route edit: a new file with one more route; time from the write to its first answer.
edits=""
for i in 1 2 3; do
  t0=$(now_ms)
  printf 'apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: edit-%s, namespace: bench}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: Host(`edit%s.test`)\n      services: [{name: backend, port: 80}]\n' "$i" "$i" > "$WORK/many/edit-$i.yaml"
  for _ in $(seq 2000); do [ "$(status "edit$i.test" /p9)" = 502 ] && break; sleep 0.002; done
  edits+="$(( $(now_ms) - t0 )) "
  sleep 1
done
after_rss=$(awk '/VmRSS/ {print $2}' "/proc/$many_pid/status")
per_route=$(python3 -c "print(f'{($many_rss - $one_rss) / $n:.2f}')")
cat <<TABLE
| atrium gateway (--workers 1) | value |
|---|---|
| resident memory, 1 route | $((one_rss / 1024)) MiB |
| resident memory, $n routes | $((many_rss / 1024)) MiB |
| per route | $per_route KiB |
| start to serving, $n routes | $many_ms ms |
| one-route edit, file write to first answer (3 edits) | $edits ms |
| resident memory after the 3 edits | $((after_rss / 1024)) MiB |
TABLE
