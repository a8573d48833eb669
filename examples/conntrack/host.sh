#!/usr/bin/env bash
# docs/conntrack.md's container host, as root: two "containers" (c1
# 10.88.0.2, c2 10.88.0.3, gateway 10.88.0.1) and an "outside" host
# (192.0.2.50) on a vswitchd running examples/conntrack/host.flows in a
# "host" namespace. c1 reaches the outside masqueraded behind 192.0.2.1;
# the outside and c2 reach c1's port 80 at 192.0.2.1:8080; the outside
# cannot reach c1 otherwise. Everything is removed on exit.
#
#   sudo examples/conntrack/host.sh            # builds the binaries first
#   VSWITCH_BIN=target/debug sudo -E examples/conntrack/host.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "host.sh needs root (network namespaces)" >&2; exit 1; }
if [ -z "${VSWITCH_BIN:-}" ]; then
    cargo build --release -q -p vswitch-ctl --bins
    VSWITCH_BIN=target/release
fi

id=$$
work=$(mktemp -d)
host=cth-$id; c1=ctc1-$id; c2=ctc2-$id; ext=ctx-$id
pids=()
cleanup() {
    # Every process in the namespaces (vswitchd, the servers), then them.
    for sig in TERM KILL; do
        for ns in $host $c1 $c2 $ext; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -"$sig" 2>/dev/null || true; done
        sleep 0.3
    done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for ns in $host $c1 $c2 $ext; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
ctl() { echo "\$ vswitch-ctl $*" >&2; "$VSWITCH_BIN/vswitch-ctl" --socket "$work/sock" "$@"; }
# (Background processes are started with `ip netns exec` itself, which
# becomes them, so that cleanup can stop them by their pids.)
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

echo "== the host, two containers and an outside host"
for ns in $host $c1 $c2 $ext; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add vc1 netns $host type veth peer name eth0 netns $c1
ip link add vc2 netns $host type veth peer name eth0 netns $c2
ip link add vext netns $host type veth peer name eth0 netns $ext
ip -n $c1 link set eth0 address 02:88:00:00:00:02; ip -n $c1 addr add 10.88.0.2/24 dev eth0
ip -n $c2 link set eth0 address 02:88:00:00:00:03; ip -n $c2 addr add 10.88.0.3/24 dev eth0
ip -n $ext link set eth0 address 02:00:02:00:00:32; ip -n $ext addr add 192.0.2.50/24 dev eth0
for ns in $c1 $c2 $ext; do ip -n $ns link set eth0 up; done
for l in vc1 vc2 vext; do ip -n $host link set $l up; done
# The gateway and the host's outside address belong to the switch: their
# MAC is given to the namespaces (docs/conntrack.md).
for ns in $c1 $c2; do
    ip -n $ns neigh replace 10.88.0.1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent
    ip -n $ns route add default via 10.88.0.1
done
ip -n $ext neigh replace 192.0.2.1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent

echo "== vswitchd with the recipe's flows"
ip netns exec $host "$VSWITCH_BIN/vswitchd" --socket "$work/sock" --db "$work/conf.json" --log-level warn &
pids+=($!)
for _ in $(seq 50); do "$VSWITCH_BIN/vswitch-ctl" --socket "$work/sock" list-br >/dev/null 2>&1 && break; sleep 0.1; done
ctl add-br br0
ctl add-port br0 vc1 ofport_request=1
ctl add-port br0 vc2 ofport_request=2
ctl add-port br0 vext ofport_request=3
ctl del-flows br0
ctl add-flows br0 examples/conntrack/host.flows

echo "== masquerade: c1 to the outside"
ip netns exec $ext iperf3 -s -1 -B 192.0.2.50 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
nsx $c1 iperf3 -c 192.0.2.50 -t 2 | tail -3
ctl dump-conntrack zone=1 tcp | grep -q 'reply=(src=192.0.2.50,dst=192.0.2.1,' && echo "masquerade: ok"

echo "== the published port: 192.0.2.1:8080 is c1's port 80"
ip netns exec $c1 python3 -m http.server 80 --bind 10.88.0.2 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 150); do nsx $c1 ss -ltn | grep -q '10.88.0.2:80 ' && break; sleep 0.1; done
fetch() { nsx "$1" python3 -c "import sys, time, urllib.request
for _ in range(30):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2).read(); print('fetched'); break
    except OSError as e:
        err = e
        time.sleep(0.2)
else:
    print('failed', err, file=sys.stderr); print('failed')" "$2"; }
[ "$(fetch $ext http://192.0.2.1:8080/)" = fetched ] && echo "published port from outside: ok"
[ "$(fetch $c2 http://192.0.2.1:8080/)" = fetched ] && echo "hairpin from c2: ok"

echo "== the outside cannot start any other connection"
ip -n $ext route add 10.88.0.0/24 via 192.0.2.1
if nsx $ext python3 -c "import socket; socket.create_connection(('10.88.0.2', 80), timeout=2)" 2>/dev/null; then
    echo "an outside connection got through" >&2
    exit 1
fi
echo "outside blocked: ok"
ctl ct-stats
echo "conntrack ok"
