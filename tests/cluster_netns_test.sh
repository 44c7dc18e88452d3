#!/usr/bin/env bash
# A cluster of separate processes, each in its own network namespace: an ingress and
# executor nodes (`tutti serve --role ...`) that talk over veth links on addresses this script
# makes (10.77.N.0/24, one link per executor, nothing else routed), and the client
# (tests/cluster_netns_driver.cpp) beside the ingress. The namespaces, links and processes are
# made here and removed on exit. Skipped (77) where namespaces cannot be made.
#
#   ingress ns: the ingress (HTTP :8080, cluster :7070) and the client
#     ├─ veth 10.77.1.0/24 ─ ex1 ns: executor node ex1 (its own HTTP :8081)
#     ├─ veth 10.77.2.0/24 ─ ex2 ns: executor node ex2
#     ├─ veth 10.77.3.0/24 ─ ex3 ns: ex3, started mid-load by the client
#     └─ veth 10.77.4.0/24 ─ bad ns: a node with the wrong secret
set -uo pipefail
TUTTI=${1:?usage: cluster_netns_test.sh TUTTI DRIVER WORKDIR}
DRIVER=${2:?}
WORK=${3:?}
HEARTBEAT=2

skip() { echo "skipped: $*"; exit 77; }
command -v ip >/dev/null || skip "no ip command (iproute2)"
[ "$(id -u)" -eq 0 ] || skip "network namespaces need root"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
tag="tt$$"
ING="$tag-ing"
namespaces=()
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  # The late node was started by the client: whatever runs in the namespaces goes too.
  for ns in "${namespaces[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  sleep 0.2
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null; done
}
trap cleanup EXIT

ip netns add "$ING" 2>"$WORK/netns.err" || skip "cannot make a network namespace: $(cat "$WORK/netns.err")"
namespaces+=("$ING")
ip -n "$ING" link set lo up
for i in 1 2 3 4; do
  ns="$tag-e$i"
  ip netns add "$ns" || exit 1
  namespaces+=("$ns")
  ip link add "ing$i" netns "$ING" type veth peer name eth0 netns "$ns" || skip "cannot make veth links"
  ip -n "$ING" addr add "10.77.$i.1/24" dev "ing$i"
  ip -n "$ING" link set "ing$i" up
  ip -n "$ns" addr add "10.77.$i.2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done

# Test data of its own: the default model and a secret.
[ -f "$WORK/m.gguf" ] || "$TUTTI" model init --out "$WORK/m.gguf" >/dev/null 2>&1 || { echo "model init failed"; exit 1; }
echo "netns-test-secret-$$" > "$WORK/secret"
echo "not-the-secret" > "$WORK/wrong"
cat > "$WORK/cluster.toml" <<EOF
[cluster]
heartbeat = $HEARTBEAT
[admission]
enabled = false        # a 2-core machine under four processes: no refusals from measured step times
[health]
canary_interval_s = 0
[kv_cache]
size_mb = 64
EOF
rm -f "$WORK"/ing.db*

ip netns exec "$ING" "$TUTTI" serve --role ingress --config "$WORK/cluster.toml" --cluster-host 0.0.0.0 --cluster-port 7070 \
  --cluster-secret-file "$WORK/secret" --host 0.0.0.0 --port 8080 --ledger "$WORK/ing.db" >"$WORK/ingress.log" 2>&1 &
pids+=($!)
disown $!  # killed on purpose: no job notices
# An executor node in namespace i, in the background; `ip netns exec` execs the server, so $!
# is the server's own pid (the client sends it SIGSTOP and SIGKILL).
node_args() {  # i name secret-file
  echo "serve --role executor --config $WORK/cluster.toml --join 10.77.$1.1:7070 --cluster-secret-file $3 --model $WORK/m.gguf --name $2 --host 0.0.0.0 --port 8081 --threads 1 --ledger="
}
declare -A node_pid
for i in 1 2; do
  # shellcheck disable=SC2046
  ip netns exec "$tag-e$i" "$TUTTI" $(node_args $i ex$i "$WORK/secret") >"$WORK/ex$i.log" 2>&1 &
  node_pid[$i]=$!
  pids+=($!)
  disown $!
done

# The ingress opens its HTTP port once a node has joined.
for _ in $(seq 1 300); do
  ip netns exec "$ING" bash -c "exec 3<>/dev/tcp/10.77.1.1/8080" 2>/dev/null && break
  sleep 0.1
done

status=0
export TUTTI_INGRESS="10.77.1.1:8080"
export TUTTI_LEDGER="$WORK/ing.db"
export TUTTI_HEARTBEAT="$HEARTBEAT"
export TUTTI_NODES="ex1=10.77.1.2:8081:${node_pid[1]},ex2=10.77.2.2:8081:${node_pid[2]}"
export TUTTI_LATE_NODE="ex3=10.77.3.2:8081"
export TUTTI_LATE_CMD="ip netns exec $tag-e3 $TUTTI $(node_args 3 ex3 "$WORK/secret") >$WORK/ex3.log 2>&1 &"
run() { ip netns exec "$ING" "$DRIVER" --gtest_filter="$1" || status=1; }
run 'Netns.EveryKindReachesEachExecutorWithAffinityAndStickiness'
run 'Netns.AHungExecutorIsDroppedAndRejoinsWhenItResumes'
run 'Netns.KillNineUnderLoadLosesNothingFromTheLedger'
run 'Netns.ANodeJoiningMidLoadGetsTraffic'

# A node with the wrong secret is refused, says so and stops; the ingress logs the refusal.
# shellcheck disable=SC2046
timeout 60 ip netns exec "$tag-e4" "$TUTTI" $(node_args 4 intruder "$WORK/wrong") >"$WORK/intruder.log" 2>&1
rc=$?
if [ $rc -ne 1 ] || ! grep -q "refused this node (wrong cluster secret)" "$WORK/intruder.log" ||
   ! grep -q "node intruder refused: wrong cluster secret" "$WORK/ingress.log"; then
  echo "FAIL: the node with the wrong secret (exit $rc):"; tail -5 "$WORK/intruder.log"; status=1
fi

# The operator's view.
if ! ip netns exec "$ING" "$TUTTI" cluster status --url http://10.77.1.1:8080 >"$WORK/status.txt" 2>&1 ||
   ! grep -q "ex2" "$WORK/status.txt" || ! grep -q "ex3" "$WORK/status.txt" || ! grep -q "http://10.77.3.2:8081/metrics" "$WORK/status.txt"; then
  echo "FAIL: tutti cluster status"; cat "$WORK/status.txt"; status=1
fi
cat "$WORK/status.txt"

# SIGTERM on a node: it drains, leaves, and the ingress says so.
kill -TERM "${node_pid[2]}"
for _ in $(seq 1 100); do kill -0 "${node_pid[2]}" 2>/dev/null || break; sleep 0.1; done
if kill -0 "${node_pid[2]}" 2>/dev/null || ! grep -q "node ex2 dropped (it left)" "$WORK/ingress.log"; then
  echo "FAIL: ex2 did not leave cleanly on SIGTERM"; tail -5 "$WORK/ex2.log"; status=1
fi

if [ $status -ne 0 ]; then
  echo "--- ingress log"; tail -40 "$WORK/ingress.log"
  for f in ex1 ex2 ex3; do echo "--- $f log"; tail -15 "$WORK/$f.log" 2>/dev/null; done
fi
exit $status
