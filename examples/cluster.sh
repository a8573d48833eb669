#!/usr/bin/env bash
# A three-host cluster network through etcd, as root (docs/cluster.md
# walks through it): an underlay (a Linux bridge in a namespace of its
# own, where one etcd member runs), three "hosts" (network namespaces on
# it), each running vswitchd and vswitch-agent; the cluster's
# configuration written to etcd; two containers per host attached through
# vswitch-cni with "cluster": true. Every container pings every other,
# then cluster-show prints what host 1 knows. Everything is removed on
# exit.
#
#   sudo examples/cluster.sh              # VXLAN; builds the binaries first
#   sudo examples/cluster.sh host-gw      # direct routing on the underlay
#   VSWITCH_BIN=target/debug sudo -E examples/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "cluster.sh needs root (network namespaces)" >&2; exit 1; }
backend=${1:-vxlan}
case $backend in vxlan|host-gw) ;; *) echo "usage: $0 [vxlan|host-gw]" >&2; exit 2 ;; esac
for tool in etcd:etcd-server etcdctl:etcd-client python3:python3; do
    command -v "${tool%%:*}" >/dev/null || { echo "needs ${tool%%:*} (Debian: apt-get install ${tool#*:})" >&2; exit 1; }
done
if [ -z "${VSWITCH_BIN:-}" ]; then
    cargo build --release -q -p vswitch-ctl -p vswitch-agent
    VSWITCH_BIN=target/release
fi
B=$(cd "$VSWITCH_BIN" && pwd)

id=$$
work=$(mktemp -d)
ul=clu-$id
pids=()
namespaces=("$ul")
cleanup() {
    local rc=$?
    # Agents first (they revoke their leases in etcd), etcd last.
    for ((k = ${#pids[@]} - 1; k >= 0; k--)); do kill -TERM "${pids[k]}" 2>/dev/null && wait "${pids[k]}" 2>/dev/null || true; done
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
say() { echo "== $*" >&2; }

say "the underlay: a bridge (10.99.0.0/24) and etcd at 10.99.0.254:2379"
ip netns add "$ul"
ip -n "$ul" link set lo up
ip -n "$ul" link add br0 type bridge
ip -n "$ul" addr add 10.99.0.254/24 dev br0
ip -n "$ul" link set br0 up
ip netns exec "$ul" etcd --name m0 --data-dir "$work/etcd" \
    --listen-client-urls http://10.99.0.254:2379 --advertise-client-urls http://10.99.0.254:2379 \
    --listen-peer-urls http://10.99.0.254:2380 --initial-advertise-peer-urls http://10.99.0.254:2380 \
    --initial-cluster m0=http://10.99.0.254:2380 >"$work/etcd.log" 2>&1 &
pids+=($!)
etcdctl() { ip netns exec "$ul" /usr/bin/etcdctl --endpoints http://10.99.0.254:2379 "$@"; }
for _ in $(seq 100); do etcdctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done

say "the cluster's configuration (flannel's key and format)"
config="{\"Network\": \"10.244.0.0/16\", \"Backend\": {\"Type\": \"$backend\"}}"
echo "\$ etcdctl put /coreos.com/network/config '$config'" >&2
etcdctl put /coreos.com/network/config "$config" >/dev/null

for i in 1 2 3; do
    h=clh$i-$id
    namespaces+=("$h")
    say "host $i: its underlay address 10.99.0.1$i (kernel) and the switch's uplink (10.99.0.10$i)"
    ip netns add "$h"
    ip -n "$h" link set lo up
    ip link add k0 netns "$h" type veth peer name k$i netns "$ul"
    ip link add u0 netns "$h" type veth peer name u$i netns "$ul"
    for l in k$i u$i; do ip -n "$ul" link set "$l" master br0 up; done
    ip -n "$h" addr add 10.99.0.1$i/24 dev k0
    ip -n "$h" link set k0 up
    ip -n "$h" link set u0 up
    mkdir -p "$work/h$i"
    ip netns exec "$h" "$B/vswitchd" --socket "$work/h$i/sock" --db "$work/h$i/conf.json" >/dev/null 2>"$work/h$i/vswitchd.log" &
    pids+=($!)
    for _ in $(seq 100); do [ -S "$work/h$i/sock" ] && break; sleep 0.05; done
    args=(--etcd-endpoints http://10.99.0.254:2379 --socket "$work/h$i/sock" --state-dir "$work/h$i/agent"
          --uplink u0 --uplink-address 10.99.0.10$i/24)
    [ "$backend" = vxlan ] && args+=(--public-ip 10.99.0.1$i)
    echo "[host $i] \$ vswitch-agent ${args[*]}" >&2
    ip netns exec "$h" "$B/vswitch-agent" "${args[@]}" >/dev/null 2>"$work/h$i/agent.log" &
    pids+=($!)
done

for i in 1 2 3; do
    for _ in $(seq 100); do
        "$B/vswitch-ctl" --socket "$work/h$i/sock" -f json cluster-show 2>/dev/null | grep -q '"lease":{' && break
        sleep 0.1
    done
done

say "two containers per host, through vswitch-cni"
ips=()
for i in 1 2 3; do
    for j in 1 2; do
        c=clc$i$j-$id
        namespaces+=("$c")
        ip netns add "$c"
        conf="{\"cniVersion\": \"1.0.0\", \"name\": \"cluster\", \"type\": \"vswitch\", \"cluster\": true, \"socket\": \"$work/h$i/sock\"}"
        ip=$(echo "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID="$c" CNI_NETNS=/var/run/netns/"$c" CNI_IFNAME=eth0 \
            CNI_PATH=/usr/lib/cni "$B/vswitch-cni" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"])')
        echo "host $i container $j: $ip" >&2
        ips+=("$c=${ip%/*}")
    done
done

# The hosts learn each other through etcd's watch: give it a moment.
sleep 1
say "every container pings every other"
failed=0
for a in "${ips[@]}"; do
    for b in "${ips[@]}"; do
        [ "$a" = "$b" ] && continue
        if ip netns exec "${a%%=*}" ping -c 1 -W 2 -q "${b#*=}" >/dev/null; then
            echo "${a#*=} -> ${b#*=}: ok"
        else
            echo "${a#*=} -> ${b#*=}: FAILED"; failed=1
        fi
    done
done

say "what host 1 knows"
echo "[host 1] \$ vswitch-ctl cluster-show" >&2
"$B/vswitch-ctl" --socket "$work/h1/sock" cluster-show
echo "\$ etcdctl get --prefix /coreos.com/network/subnets" >&2
etcdctl get --prefix /coreos.com/network/subnets
exit $failed
