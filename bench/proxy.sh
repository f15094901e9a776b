#!/usr/bin/env bash
# Proxy throughput: atrium gateway vs nginx, in front of the same backend, in one run.
#
#   bash bench/proxy.sh                     # 5 interleaved rounds of 5 s per target
#   DURATION=10 ROUNDS=7 bash bench/proxy.sh
#
# Needs nginx, wrk and redis-server (Debian: apt-get install nginx-light wrk redis-server). Everything listens on
# 127.0.0.1; every process is stopped at the end. Prints a Markdown table for
# BENCHMARKS.md. Both proxies run one worker; wrk uses one thread and 32 connections.
# nginx gets the usual reverse-proxy headers (Host, X-Real-IP, X-Forwarded-*), so both
# proxies do the same work per request. On a machine with two cores or more, every proxy
# is pinned to core $PROXY_CPU (default 0) and wrk and the backend to core $LOAD_CPU
# (default 1), so a proxy never shares its core with the load (PIN=0 turns it off).
# HTTPS rows: the same route on a TLS entrypoint, nginx with `listen ssl`, both with a
# P-256 certificate (wrk sends no SNI to an IP address: atrium answers with its generated
# default certificate, also P-256), TLS 1.3, keep-alive.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
source bench/lib.sh

require nginx wrk redis-server openssl
cargo build --release --quiet
ATRIUM=target/release/atrium
PIN=${PIN:-1}; PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
[ "$(nproc)" -ge 2 ] || PIN=0
# Replaces the (sub)shell it runs in with the command, on core $1 when pinning: called in
# `$(…)` or with `&` only, so a background start's $! is the command's own PID.
exec_pinned() { # $1 = core, then the command
  local cpu=$1; shift
  if [ "$PIN" = 1 ]; then exec taskset -c "$cpu" "$@"; else exec "$@"; fi
}

BACKEND=127.0.0.1:18181; NGINX=127.0.0.1:18182; ATRIUM1=127.0.0.1:18183; ATRIUM1000=127.0.0.1:18184
ATRIUMAPI=127.0.0.1:18185; APIKEY=bench-key-5c1f0a7e
ATRIUMREDIS=127.0.0.1:18186; REDIS_PORT=18190
# Tracing on: sampling at 0 % (no trace may start here), and at 100 % exporting over
# OTLP/HTTP to a sink (nginx answering 200 to every POST).
ATRIUMTRACE0=127.0.0.1:18187; ATRIUMTRACE100=127.0.0.1:18188; OTLP_SINK=127.0.0.1:18191
# The seed's child route (stripPrefix + headers); HTTPS through nginx and atrium.
ATRIUMMW=127.0.0.1:18189; NGINXTLS=127.0.0.1:18192; ATRIUMTLS=127.0.0.1:18193
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null

# Plan counters in Redis for the API route's Redis-mode target (no persistence).
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >/dev/null &
PIDS+=($!)
REDIS_PID=$!

NGINX_CPU=$([ "$PIN" = 1 ] && echo "$LOAD_CPU" || true) nginx_conf backend "server { listen $BACKEND; location / { return 200 'ok'; } }
  server { listen $OTLP_SINK; location / { client_max_body_size 16m; return 200; } }"
NGINX_MASTER_INDEX=${#PIDS[@]}
PROXY_LOCATION="location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$host; proxy_set_header X-Forwarded-Port \$server_port; }"
NGINX_CPU=$([ "$PIN" = 1 ] && echo "$PROXY_CPU" || true) nginx_conf proxy "upstream be { server $BACKEND; keepalive 64; }
  server { listen $NGINX; $PROXY_LOCATION }
  server { listen $NGINXTLS ssl; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:1m; $PROXY_LOCATION }"

mkdir -p "$WORK/one" "$WORK/many" "$WORK/api" "$WORK/mw" "$WORK/tls"
route_manifests 'Host(`bench.test`) && PathPrefix(`/`)' > "$WORK/one/route.yaml"
# The seed's child route: PathPrefix(`/crm`) with stripPrefix and a headers middleware.
seed_child_route_manifests > "$WORK/mw/route.yaml"
# The route on the TLS entrypoint, served with the same certificate as nginx's.
tls_route_manifests > "$WORK/tls/route.yaml"
cp "$WORK/one/route.yaml" "$WORK/many/route.yaml"
# The same route as a route of an API: a key check and a plan (limits far above the load).
sed 's/^metadata: {name: bench, namespace: bench}$/metadata: {name: bench, namespace: bench, annotations: {hub.traefik.io\/api: bench-api}}/' \
  "$WORK/one/route.yaml" > "$WORK/api/route.yaml"
cat >> "$WORK/api/route.yaml" <<YAML
---
apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {name: bench-api, namespace: bench}
spec: {}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {name: plan, namespace: bench}
spec: {title: Bench, rateLimit: {limit: 100000000, period: 1s}, quota: {limit: 1000000000, period: 1h}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {name: app, namespace: bench}
spec: {appId: app, owner: bench, apiKeys: [{value: $APIKEY}]}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {name: sub, namespace: bench}
spec: {apiPlan: {name: plan}, managedApplications: [{name: app}], apis: [{name: bench-api}]}
YAML
python3 - "$WORK/many/routes.yaml" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for h in range(100):
        for p in range(10):
            f.write(f"---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {{name: r{h}-{p}, namespace: bench}}\n"
                    f"spec:\n  entryPoints: [web]\n  routes:\n    - match: Host(`h{h}.test`) && PathPrefix(`/p{p}`)\n"
                    f"      services: [{{name: backend, port: 80}}]\n")
PY

start_atrium() { # $1 = manifests, $2 = addr, [$3 = values]; $TRACE_FLAGS, $ENTRYPOINTS and the environment apply
  # shellcheck disable=SC2086
  exec_pinned "$PROXY_CPU" "$ATRIUM" gateway --manifests "$1" ${3:+--values "$3"} --workers 1 \
    ${ENTRYPOINTS:---entrypoint web=$2 --entrypoint websecure=off} ${TRACE_FLAGS:-} 2>"$WORK/${2##*:}.log" &
  PIDS+=($!)
}
printf 'hub:\n  redis:\n    endpoints: "127.0.0.1:%s"\n' "$REDIS_PORT" > "$WORK/redis-values.yaml"
start_atrium "$WORK/one" "$ATRIUM1"
start_atrium "$WORK/many" "$ATRIUM1000"
start_atrium "$WORK/api" "$ATRIUMAPI"
start_atrium "$WORK/api" "$ATRIUMREDIS" "$WORK/redis-values.yaml"
OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0 \
  TRACE_FLAGS="--otlp-endpoint http://$OTLP_SINK --otlp-protocol http/protobuf" start_atrium "$WORK/one" "$ATRIUMTRACE0"
TRACE_FLAGS="--otlp-endpoint http://$OTLP_SINK --otlp-protocol http/protobuf" start_atrium "$WORK/one" "$ATRIUMTRACE100"
start_atrium "$WORK/mw" "$ATRIUMMW"
ENTRYPOINTS="--entrypoint web=off --entrypoint websecure=$ATRIUMTLS" start_atrium "$WORK/tls" "$ATRIUMTLS"
sleep 2
ATRIUM_PID=${PIDS[-8]}
ATRIUMAPI_PID=${PIDS[-6]}
ATRIUMREDIS_PID=${PIDS[-5]}
TRACE0_PID=${PIDS[-4]}
TRACE100_PID=${PIDS[-3]}
MW_PID=${PIDS[-2]}
TLS_PID=${PIDS[-1]}
IDLE_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$ATRIUM_PID/status")

grep -q "exporting traces over OTLP/HTTP" "$WORK/${ATRIUMTRACE0##*:}.log" || { echo "the traced gateway does not export" >&2; exit 1; }
for target in "$BACKEND" "$NGINX" "$ATRIUM1" "$ATRIUM1000" "$ATRIUMTRACE0" "$ATRIUMTRACE100"; do
  curl -fsS -H 'Host: bench.test' "http://$target/" >/dev/null || { echo "$target is not answering" >&2; exit 1; }
done
for target in "$ATRIUMAPI" "$ATRIUMREDIS"; do
  curl -fsS -H 'Host: bench.test' -H "Authorization: Bearer $APIKEY" "http://$target/" >/dev/null ||
    { echo "the API route on $target is not answering" >&2; exit 1; }
done
grep -q "plan counters in Redis" "$WORK/${ATRIUMREDIS##*:}.log" || { echo "the Redis-mode gateway does not use Redis" >&2; exit 1; }
curl -fsS -H 'Host: bench.test' "http://$ATRIUMMW/crm/x" -D - -o /dev/null | grep -qi '^x-traefik-backend: cluster-a' ||
  { echo "the middleware route on $ATRIUMMW is not answering with its header" >&2; exit 1; }
# Their certificate for bench.test (the gateways start together on one core: give it time).
for target in "$NGINXTLS" "$ATRIUMTLS"; do until_answering https "$target"; done
# CPU per request of each proxy process (less noisy than req/s on a shared machine).
NGINX_WORKER=$(pgrep -P "${PIDS[$NGINX_MASTER_INDEX]}" | head -n1)
ATRIUM1000_PID=${PIDS[-7]}
declare -A PROC=([nginx]=$NGINX_WORKER [one]=$ATRIUM_PID [many]=$ATRIUM1000_PID [api]=$ATRIUMAPI_PID [redis]=$ATRIUMREDIS_PID
  [trace0]=$TRACE0_PID [trace100]=$TRACE100_PID [mw]=$MW_PID [nginxtls]=$NGINX_WORKER [tls]=$TLS_PID)

measure() { # $1 = addr or https URL, $2 = host header, $3 = path, [$4 = another header] -> "rps p99"
  local out url
  case $1 in https://*) url=$1$3 ;; *) url=http://$1$3 ;; esac
  out=$(exec_pinned "$LOAD_CPU" wrk -t1 -c32 -d"${DURATION}s" --latency -H "Host: $2" ${4:+-H "$4"} "$url")
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $p99"
}

ROUNDS=${ROUNDS:-5}
echo "measuring ${DURATION}s × ${ROUNDS} rounds, targets interleaved ..." >&2
# The machine is shared by wrk, the backend and the proxy: interleave the targets and keep
# each one's median round, so a noisy moment does not decide a ratio.
declare -A RPS P99 USR SYS
REDIS_CPU=""
for round in $(seq "$ROUNDS"); do
  for t in direct nginx one mw many api redis trace0 trace100 nginxtls tls; do
    pid=${PROC[$t]:-}
    [ -n "$pid" ] && read -r u0 s0 < <(cpu_ticks "$pid")
    case $t in
      direct) out=$(measure "$BACKEND" bench.test /) ;;
      nginx) out=$(measure "$NGINX" bench.test /) ;;
      one) out=$(measure "$ATRIUM1" bench.test /) ;;
      mw) out=$(measure "$ATRIUMMW" bench.test /crm/x) ;;
      nginxtls) out=$(measure "https://$NGINXTLS" bench.test /) ;;
      tls) out=$(measure "https://$ATRIUMTLS" bench.test /) ;;
      many) out=$(measure "$ATRIUM1000" h77.test /p7/x) ;;
      api) out=$(measure "$ATRIUMAPI" bench.test / "Authorization: Bearer $APIKEY") ;;
      trace0) out=$(measure "$ATRIUMTRACE0" bench.test /) ;;
      trace100) out=$(measure "$ATRIUMTRACE100" bench.test /) ;;
      redis)
        read -r ru0 rs0 < <(cpu_ticks "$REDIS_PID")
        out=$(measure "$ATRIUMREDIS" bench.test / "Authorization: Bearer $APIKEY")
        read -r ru1 rs1 < <(cpu_ticks "$REDIS_PID")
        REDIS_CPU+="$(us_per_request $((ru1 - ru0 + rs1 - rs0)) "${out% *}") " ;;
    esac
    RPS[$t]+="${out% *} "
    P99[$t]+="${out#* } "
    if [ -n "$pid" ]; then
      read -r u1 s1 < <(cpu_ticks "$pid")
      USR[$t]+="$(us_per_request $((u1 - u0)) "${out% *}") "
      SYS[$t]+="$(us_per_request $((s1 - s0)) "${out% *}") "
    fi
  done
done
# User + kernel µs per request (median of each).
total_cpu() { python3 -c "print($(median <<<"${USR[$1]}") + $(median <<<"${SYS[$1]}"))"; }
direct_rps=$(median <<<"${RPS[direct]}"); direct_p99=$(median_lat <<<"${P99[direct]}")
nginx_rps=$(median <<<"${RPS[nginx]}"); nginx_p99=$(median_lat <<<"${P99[nginx]}")
one_rps=$(median <<<"${RPS[one]}"); one_p99=$(median_lat <<<"${P99[one]}")
many_rps=$(median <<<"${RPS[many]}"); many_p99=$(median_lat <<<"${P99[many]}")
api_rps=$(median <<<"${RPS[api]}"); api_p99=$(median_lat <<<"${P99[api]}")
redis_rps=$(median <<<"${RPS[redis]}"); redis_p99=$(median_lat <<<"${P99[redis]}")
trace0_rps=$(median <<<"${RPS[trace0]}"); trace0_p99=$(median_lat <<<"${P99[trace0]}")
trace100_rps=$(median <<<"${RPS[trace100]}"); trace100_p99=$(median_lat <<<"${P99[trace100]}")
mw_rps=$(median <<<"${RPS[mw]}"); mw_p99=$(median_lat <<<"${P99[mw]}")
nginxtls_rps=$(median <<<"${RPS[nginxtls]}"); nginxtls_p99=$(median_lat <<<"${P99[nginxtls]}")
tls_rps=$(median <<<"${RPS[tls]}"); tls_p99=$(median_lat <<<"${P99[tls]}")

cat <<TABLE
| target (median of $ROUNDS interleaved rounds) | req/s | p99 | ratio to nginx proxy |
|---|---|---|---|
| backend direct (nginx, 1 worker) | $direct_rps | $direct_p99 | $(ratio "$direct_rps" "$nginx_rps")× |
| nginx proxy (1 worker, keep-alive upstream) | $nginx_rps | $nginx_p99 | 1.00× |
| atrium gateway, 1 route (--workers 1) | $one_rps | $one_p99 | $(ratio "$one_rps" "$nginx_rps")× |
| atrium gateway, the seed's child route (stripPrefix + headers) | $mw_rps | $mw_p99 | $(ratio "$mw_rps" "$nginx_rps")× |
| atrium gateway, 1,001 host+path routes (--workers 1) | $many_rps | $many_p99 | $(ratio "$many_rps" "$nginx_rps")× |
| atrium gateway, the route as an API route (key + plan) | $api_rps | $api_p99 | $(ratio "$api_rps" "$nginx_rps")× |
| atrium gateway, API route, plan counters in Redis | $redis_rps | $redis_p99 | $(ratio "$redis_rps" "$nginx_rps")× |
| atrium gateway, 1 route, tracing on, sampling 0 % | $trace0_rps | $trace0_p99 | $(ratio "$trace0_rps" "$nginx_rps")× |
| atrium gateway, 1 route, tracing on, sampling 100 % (OTLP/HTTP) | $trace100_rps | $trace100_p99 | $(ratio "$trace100_rps" "$nginx_rps")× |
| **HTTPS** nginx proxy (listen ssl, TLS 1.3) | $nginxtls_rps | $nginxtls_p99 | $(ratio "$nginxtls_rps" "$nginx_rps")× (1.00× of nginx HTTPS) |
| **HTTPS** atrium gateway, 1 route on a TLS entrypoint | $tls_rps | $tls_p99 | $(ratio "$tls_rps" "$nginx_rps")× ($(ratio "$tls_rps" "$nginxtls_rps")× of nginx HTTPS) |

| CPU per request (median) | user | kernel |
|---|---|---|
| nginx proxy | $(median <<<"${USR[nginx]}") µs | $(median <<<"${SYS[nginx]}") µs |
| atrium gateway, 1 route | $(median <<<"${USR[one]}") µs | $(median <<<"${SYS[one]}") µs |
| atrium gateway, stripPrefix + headers | $(median <<<"${USR[mw]}") µs | $(median <<<"${SYS[mw]}") µs |
| nginx proxy, HTTPS | $(median <<<"${USR[nginxtls]}") µs | $(median <<<"${SYS[nginxtls]}") µs |
| atrium gateway, HTTPS | $(median <<<"${USR[tls]}") µs | $(median <<<"${SYS[tls]}") µs |
| atrium gateway, 1,001 routes | $(median <<<"${USR[many]}") µs | $(median <<<"${SYS[many]}") µs |
| atrium gateway, API route (key + plan) | $(median <<<"${USR[api]}") µs | $(median <<<"${SYS[api]}") µs |
| atrium gateway, API route, Redis mode (gateway only) | $(median <<<"${USR[redis]}") µs | $(median <<<"${SYS[redis]}") µs |
| atrium gateway, tracing on, sampling 0 % | $(median <<<"${USR[trace0]}") µs | $(median <<<"${SYS[trace0]}") µs |
| atrium gateway, tracing on, sampling 100 % | $(median <<<"${USR[trace100]}") µs | $(median <<<"${SYS[trace100]}") µs |
| redis-server, per request of the Redis-mode target (user + kernel) | $(median <<<"$REDIS_CPU") µs | |

atrium with 1,001 routes vs 1 route: $(ratio "$many_rps" "$one_rps")× the req/s, $(ratio "$(total_cpu one)" "$(total_cpu many)")× the requests per CPU second. Idle resident memory of the 1-route gateway: $((IDLE_RSS_KB / 1024)) MiB (${IDLE_RSS_KB} KiB).
The route as an API route (key check and plan, local counters) vs the same route without API management: $(ratio "$api_rps" "$one_rps")× the req/s, $(ratio "$(total_cpu one)" "$(total_cpu api)")× the requests per CPU second (goal ≥ 0.85×).
Tracing on with sampling at 0 % (metrics on, as always) vs tracing off: $(ratio "$trace0_rps" "$one_rps")× the req/s, $(ratio "$(total_cpu one)" "$(total_cpu trace0)")× the requests per CPU second (goal ≥ 0.95×). Every request sampled and exported: $(ratio "$trace100_rps" "$one_rps")× the req/s, $(ratio "$(total_cpu one)" "$(total_cpu trace100)")× per CPU second.
The seed's child route (stripPrefix + headers) vs a bare route: $(ratio "$mw_rps" "$one_rps")× the req/s, $(ratio "$(total_cpu one)" "$(total_cpu mw)")× the requests per CPU second (goal ≥ 0.90×).
HTTPS: atrium $(ratio "$tls_rps" "$nginxtls_rps")× nginx's req/s (p99 $tls_p99 vs $nginxtls_p99), $(ratio "$(total_cpu nginxtls)" "$(total_cpu tls)")× its requests per CPU second. Pinned: $([ "$PIN" = 1 ] && echo "proxies on core $PROXY_CPU, wrk and the backend on core $LOAD_CPU" || echo no).
Redis mode (one Lua script per request) vs local counters: $(ratio "$redis_rps" "$api_rps")× the req/s, $(ratio "$(total_cpu api)" "$(total_cpu redis)")× the gateway's requests per CPU second.
TABLE
