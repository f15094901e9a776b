# Shared by the bench scripts (sourced): a work directory and process list cleaned up on
# exit, an nginx launcher, and the median/ratio helpers. Expects `set -euo pipefail`.
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

require() { # tools...
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool is required (apt-get install nginx-light wrk curl python3)" >&2; exit 1; }
  done
}

nginx_conf() { # $1 = name, $2 = http-block content; starts nginx with one worker (on core $NGINX_CPU if set)
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  $2
}
CONF
  # shellcheck disable=SC2086
  ${NGINX_CPU:+taskset -c $NGINX_CPU} nginx -c "$WORK/$1/nginx.conf" -p "$WORK/$1" &
  PIDS+=($!)
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
# Median of wrk latencies with units (us, ms, s), printed as wrk wrote it.
median_lat() { tr ' ' '\n' | grep -v '^$' | python3 -c "
import sys
v=[]
for l in sys.stdin:
    l=l.strip(); n=float(l.rstrip('msu')); u=l[len(l.rstrip('msu')):]
    v.append((n*{'us':1e-3,'ms':1,'s':1e3}[u], l))
v.sort(); print(v[(len(v)-1)//2][1])"; }
ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
# User and kernel CPU ticks the given processes have used so far, summed.
cpu_ticks() { for p in "$@"; do cat "/proc/$p/stat"; done | awk '{u += $14; s += $15} END {print u, s}'; }
# µs of CPU per request: $1 = ticks used during a run, $2 = its req/s (DURATION seconds long).
us_per_request() { python3 -c "print(f'{$1 * 1e6 / $(getconf CLK_TCK) / ($2 * $DURATION):.2f}')"; }

ingress_route() { # $1 = the rule, $2 = its service (a YAML flow mapping); the IngressRoute `bench` on `web`
  cat <<YAML
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: bench, namespace: bench}
spec:
  entryPoints: [web]
  routes:
    - match: $1
      services: [$2]
YAML
}

route_manifests() { # $1 = the rule; the IngressRoute `bench` on `web` to the Service `backend`, and that Service
  ingress_route "$1" '{name: backend, port: 80}'
  backend_manifests
}

backend_manifests() { # the Service `backend` in namespace bench and its Endpoints at $BACKEND
  cat <<YAML
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: bench}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: backend, namespace: bench}
subsets: [{addresses: [{ip: 127.0.0.1}], ports: [{port: ${BACKEND##*:}}]}]
YAML
}

seed_child_route_manifests() { # the seed's child route: PathPrefix(`/crm`) on bench.test with stripPrefix and headers
  route_manifests 'Host(`bench.test`) && PathPrefix(`/crm`)' |
    sed 's/^      services: \[{name: backend, port: 80}\]$/      middlewares: [{name: strip}, {name: backend-headers}]\n&/'
  cat <<'YAML'
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: strip, namespace: bench}
spec: {stripPrefix: {prefixes: [/crm]}}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: backend-headers, namespace: bench}
spec: {headers: {customResponseHeaders: {X-Traefik-Backend: cluster-a}}}
YAML
}

uplink_topology_files() { # [$1 = more of the Uplink's spec]; writes $WORK/child and $WORK/parent
  # The child: one Uplink `bench` on $UPLINK_PORT whose router forwards everything to the
  # Service `backend`; the parent: a route for Host bench.test to bench@multicluster.
  mkdir -p "$WORK/child" "$WORK/parent"
  cat > "$WORK/child/values.yaml" <<YAML
ports:
  multicluster:
    port: $UPLINK_PORT
    uplink: true
additionalArguments:
  - --hub.uplinkEntryPoints.multicluster.http.tls=true
YAML
  cat > "$WORK/child/manifests.yaml" <<YAML
apiVersion: hub.traefik.io/v1alpha1
kind: Uplink
metadata: {name: bench, namespace: bench}
spec: {exposeName: bench, entryPoints: [multicluster]${1:+, $1}}
---
YAML
  route_manifests 'PathPrefix(`/`)' |
    sed 's/^metadata: {name: bench, namespace: bench}$/metadata: {name: bench, namespace: bench, annotations: {hub.traefik.io\/router.uplinks: bench}}/' \
    >> "$WORK/child/manifests.yaml"
  cat > "$WORK/parent/values.yaml" <<YAML
hub:
  providers:
    multicluster:
      enabled: true
      children:
        child:
          address: "https://127.0.0.1:$UPLINK_PORT"
YAML
  ingress_route 'Host(`bench.test`)' '{name: bench@multicluster, kind: TraefikService}' > "$WORK/parent/manifests.yaml"
}

# Waits up to 10 s for $2 (host:port) to answer `$1://bench.test/` (http or https, trusting
# the certificate $WORK/tls.crt); exits when it does not. A gateway serves its certificate
# for bench.test once its first configuration is in force.
until_answering() {
  local url="$1://bench.test:${2##*:}/" resolve="bench.test:${2##*:}:127.0.0.1"
  for _ in $(seq 50); do
    curl -fsS --cacert "$WORK/tls.crt" --resolve "$resolve" "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  curl -fsS --cacert "$WORK/tls.crt" --resolve "$resolve" "$url" >/dev/null || { echo "$url on $2 is not answering" >&2; exit 1; }
}

# The bench route for Host(`bench.test`) on the websecure entrypoint, served with the
# certificate $WORK/tls.crt (key $WORK/tls.key) from a kubernetes.io/tls Secret.
tls_route_manifests() {
  route_manifests 'Host(`bench.test`) && PathPrefix(`/`)' |
    sed 's/^  entryPoints: \[web\]$/  entryPoints: [websecure]\n  tls: {secretName: bench-tls}/'
  cat <<YAML
---
apiVersion: v1
kind: Secret
metadata: {name: bench-tls, namespace: bench}
type: kubernetes.io/tls
data: {tls.crt: $(base64 -w0 "$WORK/tls.crt"), tls.key: $(base64 -w0 "$WORK/tls.key")}
YAML
}
