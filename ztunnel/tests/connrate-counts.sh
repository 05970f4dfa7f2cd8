#!/bin/bash
# Deterministic per-connection costs of the two ztunnels (bench/README.md, hbone-connrate):
# builds the hbone bench's two-node topology (pods a and b captured) inside `unshare -Urnm`,
# starts two ztunnels (CPU 1) and `bench reftunnel sink` in pod b, warms the pooled HBONE
# connection up, then counts over DURATION of `bench reftunnel connrate` (pod a, CPU 0,
# CONC parallel, one new tunneled connection per 64-byte request):
#   strace     syscalls of each ztunnel's worker thread (strace -c attached after the warm-up)
#   callgrind  instructions of each ztunnel per thread (valgrind --tool=callgrind, zeroed after the
#              warm-up, dumped at the end); the ztunnels run on the epoll driver there,
#              because valgrind 3.19 holds its big lock across io_uring_enter
#   none       only runs; with READY_FILE set it writes the two pids there and waits for
#              GO_FILE (for a profiler attached from outside the user namespace)
# Divide by the connections in OUT/client.txt. Usage:
#   connrate-counts.sh ZTUNNEL_BIN BENCH_BIN strace|callgrind|none DURATION CONC OUT_DIR
set -e
if [ -z "$ZT_COUNTS_INNER" ]; then exec env ZT_COUNTS_INNER=1 unshare -Urnm -- "$0" "$@"; fi
ZT=$1; BENCH=$2; MODE=$3; DUR=$4; CONC=$5; OUT=$6
mkdir -p "$OUT"; DIR=$(mktemp -d)
mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns
ip link set lo up
for n in 1 2; do
  ip netns add hb-node$n; ip -n hb-node$n link set lo up
  nsenter --net=/run/netns/hb-node$n sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  ip -n hb-node$n link add br0 type bridge; ip -n hb-node$n addr add 10.0.$n.1/24 dev br0
  ip -n hb-node$n link set br0 up
done
ip link add wire1 netns hb-node1 type veth peer name wire2 netns hb-node2
ip -n hb-node1 addr add 192.168.0.1/24 dev wire1; ip -n hb-node2 addr add 192.168.0.2/24 dev wire2
ip -n hb-node1 link set wire1 up; ip -n hb-node2 link set wire2 up
ip -n hb-node1 route add 10.0.2.0/24 via 192.168.0.2; ip -n hb-node2 route add 10.0.1.0/24 via 192.168.0.1
for spec in a:1:10.0.1.2 b:2:10.0.2.2; do
  IFS=: read -r name node ip <<<"$spec"
  ip netns add hb-$name
  ip link add v-$name netns hb-node$node type veth peer name eth0 netns hb-$name
  ip -n hb-node$node link set v-$name master br0 up
  ip -n hb-$name link set lo up; ip -n hb-$name addr add $ip/24 dev eth0; ip -n hb-$name link set eth0 up
  ip -n hb-$name route add default via 10.0.$node.1
  ns="nsenter --net=/run/netns/hb-$name"
  $ns sh -c 'echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; echo 1024 65000 > /proc/sys/net/ipv4/ip_local_port_range'
  $ns iptables -t mangle -A PREROUTING -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
  $ns iptables -t mangle -A OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark
  $ns iptables -t nat -A OUTPUT -p tcp -m mark --mark 0x539/0xfff -j RETURN
  $ns iptables -t nat -A OUTPUT -p tcp -o lo -j RETURN
  $ns iptables -t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001
  $ns iptables -t nat -A PREROUTING -p tcp --dport 15008 -j RETURN
  $ns iptables -t nat -A PREROUTING -p tcp ! -i lo -j REDIRECT --to-ports 15006
  ip -n hb-$name rule add fwmark 0x111/0xfff pref 32764 lookup 100
  ip -n hb-$name route add local 0.0.0.0/0 dev lo table 100
done
pod() { printf 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: apps\n  labels: {app: %s}\n  annotations: {ringmesh.io/netns: /run/netns/hb-%s}\nspec: {nodeName: node%s, serviceAccountName: sa-%s, containers: []}\nstatus: {podIP: %s}\n' "$1" "$1" "$1" "$2" "$1" "$3"; }
{ pod a 1 10.0.1.2; echo ---; pod b 2 10.0.2.2; } > "$DIR/mesh.yaml"
taskset -c 0 nsenter --net=/run/netns/hb-b "$BENCH" reftunnel sink --listen 0.0.0.0:8080 >/dev/null &
SINK=$!
PIDS=()
for node in 1 2; do
  cmd=("$ZT" --config "$DIR/mesh.yaml" --node node$node --workers 1 --ca-dir "$DIR"
       --metrics-addr 127.0.0.1:15020 --ready-addr 127.0.0.1:15021 --admin-addr 127.0.0.1:15000)
  if [ "$MODE" = callgrind ]; then
    cmd=(valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$OUT/callgrind.node$node.%p" "${cmd[@]}" --io-driver epoll)
  fi
  RUST_LOG=warn taskset -c 1 nsenter --net=/run/netns/hb-node$node "${cmd[@]}" 2>"$OUT/ztunnel.node$node.log" &
  PIDS+=($!)
  for t in $(seq 600); do
    nsenter --net=/run/netns/hb-node$node curl -sf http://127.0.0.1:15021/healthz/ready >/dev/null && break
    [ "$t" = 600 ] && { echo "node$node never ready"; kill -9 "${PIDS[@]}" $SINK; exit 1; }
    sleep 0.2
  done
done
# Warm-up: the pooled HBONE connection and every lazily made thing, excluded from the counts.
for i in $(seq 20); do
  taskset -c 0 nsenter --net=/run/netns/hb-a "$BENCH" reftunnel blast --bytes 64 --connect 10.0.2.2:8080 >/dev/null
done
case "$MODE" in
  strace)
    TRACERS=()
    for i in 0 1; do
      # the worker thread only: the control thread's timers are not per connection
      TID=$(grep -l ringmesh-worker /proc/${PIDS[$i]}/task/*/comm | head -1 | cut -d/ -f5)
      strace -c -o "$OUT/strace.node$((i+1)).txt" -p "$TID" & TRACERS+=($!)
    done
    sleep 1 ;;
  callgrind) for p in "${PIDS[@]}"; do callgrind_control -z $p >/dev/null; done ;;
  none) if [ -n "$READY_FILE" ]; then echo "${PIDS[@]}" > "$READY_FILE"; while [ ! -e "$GO_FILE" ]; do sleep 0.1; done; fi ;;
esac
taskset -c 0 nsenter --net=/run/netns/hb-a "$BENCH" reftunnel connrate --connect 10.0.2.2:8080 \
  --duration "$DUR" --concurrency "$CONC" | tee "$OUT/client.txt"
case "$MODE" in
  strace) sleep 0.5; kill -INT "${TRACERS[@]}"; wait "${TRACERS[@]}" 2>/dev/null || true ;;
  callgrind) for p in "${PIDS[@]}"; do callgrind_control -d $p >/dev/null; done ;;
esac
kill -TERM "${PIDS[@]}" $SINK 2>/dev/null || true
wait 2>/dev/null || true
rm -rf "$DIR"
