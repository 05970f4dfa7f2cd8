#!/usr/bin/env bash
# Builds ringmesh, starts two echo backends and the gateway on the quick-start
# config. Then, from another terminal: curl -i localhost:8080/  and  curl localhost:8080/v2
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p ringmesh-gateway -p ringmesh-bench
bin=target/release
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
"$bin/bench" echo --port 3001 --name echo-v1 --namespace default >/dev/null &
"$bin/bench" echo --port 3002 --name echo-v2 --namespace default >/dev/null &
echo "gateway on http://localhost:8080 (admin 127.0.0.1:15000, metrics :15020, ready :15021)" >&2
"$bin/gateway" --config examples/quickstart "$@"
