#!/usr/bin/env bash
# Builds ringmesh, starts two echo pods (127.0.0.2 = reviews v1, 127.0.0.3 = v2) and the gateway
# on this folder. Then, from another terminal:
#   for i in $(seq 20); do curl -s -H 'host: reviews.example.com' localhost:8080/ | grep -o 'reviews-v[12]'; done | sort | uniq -c
#   curl -i -H 'host: reviews.example.com' localhost:8080/fault      # 503 "fault filter abort" half of the time
#   curl -s 127.0.0.1:15000/status                                   # the VirtualService's conditions
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p ringmesh-gateway -p ringmesh-bench
bin=target/release
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
"$bin/bench" echo --bind 127.0.0.2 --port 9080 --name reviews-v1 --namespace shop >/dev/null &
"$bin/bench" echo --bind 127.0.0.3 --port 9080 --name reviews-v2 --namespace shop >/dev/null &
echo "gateway on http://localhost:8080 (admin 127.0.0.1:15000)" >&2
"$bin/gateway" --config examples/virtual-service "$@"
