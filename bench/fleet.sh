#!/usr/bin/env bash
# Connections at fleet scale: what one parent QUIC connection costs a child. Each data-plane
# worker thread dials each child it sends to, so a child holds (data planes × workers)
# connections. This starts one child agent, then a parent (control plane with its data
# plane) with 1, 2, 4 and 8 worker threads in turn; requests reach every worker; then, with
# the parent idle (QUIC keep-alives only), it reads from the child:
#   - the connections it holds (`atrium_agent_parents_connected`: the control plane's and
#     one per worker);
#   - its resident memory;
#   - its CPU over IDLE seconds (keep-alives: one every 250 ms each way, per connection).
# The slope over the worker counts is the cost of one connection. A stream is opened per
# request (pooled HTTP/1.1 streams are reused): its cost is in bench/uplink.sh's CPU per
# request.
#
#   bash bench/fleet.sh
#   IDLE=20 WORKERS="1 4 16" bash bench/fleet.sh
#   CONNECTIONS=shared bash bench/fleet.sh   # the parent's --uplink-connections shared
#
# Needs nginx and curl. Everything on 127.0.0.1; every process is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${IDLE:-10}
WORKERS=${WORKERS:-1 2 4 8}
CONNECTIONS=${CONNECTIONS:-per-worker}
source bench/lib.sh

require nginx curl python3
cargo build --release --quiet
ATRIUM=target/release/atrium

BACKEND=127.0.0.1:18581; PARENT=127.0.0.1:18582; UPLINK_PORT=18583; GRPC=127.0.0.1:18584; CHILD_ADMIN=127.0.0.1:18585

"$ATRIUM" certs init --dir "$WORK/pki" >/dev/null
for n in control-plane data-plane child; do "$ATRIUM" certs issue --dir "$WORK/pki" --name "$n" >/dev/null; done
nginx_conf backend "server { listen $BACKEND; location / { return 200 'ok'; } }"

uplink_topology_files

"$ATRIUM" agent --cluster child --manifests "$WORK/child/manifests.yaml" --values "$WORK/child/values.yaml" \
  --tls-dir "$WORK/pki" --tls-name child --state-dir "$WORK/child/state" --bind-ip 127.0.0.1 \
  --entrypoint web=127.0.0.1:0 --entrypoint websecure=off --workers 1 --admin "$CHILD_ADMIN" \
  --uplink-stream-idle-ms 1000 2>"$WORK/child/log" &
CHILD_PID=$!; PIDS+=($CHILD_PID)

connections() { curl -fsS "http://$CHILD_ADMIN/metrics" | awk '$1 == "atrium_agent_parents_connected" {print $2}'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

ROWS=""
for w in $WORKERS; do
  rm -rf "$WORK/parent/state"
  "$ATRIUM" control-plane --manifests "$WORK/parent/manifests.yaml" --values "$WORK/parent/values.yaml" \
    --tls-dir "$WORK/pki" --state-dir "$WORK/parent/state" --grpc "$GRPC" \
    --entrypoint "web=$PARENT" --entrypoint websecure=off --workers "$w" --uplink-connections "$CONNECTIONS" \
    2>"$WORK/parent/log.$w" &
  parent=$!; PIDS+=($parent)
  ok=
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test' "http://$PARENT/")" = 200 ] && { ok=1; break; }
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "the parent with $w workers does not answer; logs in $WORK" >&2; tail -n 5 "$WORK/parent/log.$w" >&2; exit 1; }
  # One request per client connection, one at a time (so each parent worker holds at most
  # one stream), until the kernel (SO_REUSEPORT) has handed one to every worker and each
  # has dialled the child: the control plane's connection plus one per worker. Bounded.
  # Shared: one connection whichever workers send, so a fixed number of requests.
  for _ in $(seq $((w * 60))); do
    curl -s -o /dev/null -H 'Host: bench.test' "http://$PARENT/"
    [ "$CONNECTIONS" = per-worker ] && [ "$(connections)" -gt "$w" ] && break
  done
  held=$(connections)
  # Streams idle for a second are closed (--uplink-stream-idle-ms): only connections stay.
  sleep 3
  read -r u0 s0 < <(cpu_ticks "$CHILD_PID")
  sleep "$IDLE"
  read -r u1 s1 < <(cpu_ticks "$CHILD_PID")
  rss=$(rss_kib "$CHILD_PID")
  cpu=$(python3 -c "print(f'{($u1 - $u0 + $s1 - $s0) * 1000 / $(getconf CLK_TCK) / $IDLE:.1f}')")
  ROWS+="$w $held $rss $cpu"$'\n'
  echo "workers $w: $held connections, child RSS $rss KiB, idle CPU $cpu ms/s" >&2
  kill "$parent"; wait "$parent" 2>/dev/null || true
  # The child notices the parent gone (idle timeout 900 ms) before the next count.
  for _ in $(seq 50); do [ "$(connections)" = 0 ] && break; sleep 0.1; done
done

python3 - "$ROWS" <<'PY'
import sys
rows = [tuple(float(x) for x in l.split()) for l in sys.argv[1].strip().splitlines()]
print("| parent worker threads | child's QUIC connections | child resident memory | child CPU while idle |")
print("|---|---|---|---|")
for w, c, rss, cpu in rows:
    print(f"| {int(w)} | {int(c)} | {rss / 1024:.1f} MiB | {cpu:.1f} ms/s |")
(w0, c0, r0, p0), (w1, c1, r1, p1) = rows[0], rows[-1]
if c1 > c0:
    print(f"\nPer connection (from {int(c0)} to {int(c1)}): {(r1 - r0) / (c1 - c0):.0f} KiB resident, "
          f"{(p1 - p0) / (c1 - c0):.2f} ms of CPU per second while idle, at the child.")
PY
