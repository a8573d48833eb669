#!/usr/bin/env bash
# A two-host VXLAN overlay built from scratch, as root: two "hosts"
# (network namespaces joined by an underlay link, 192.168.50.1 and .2),
# each running its own vswitchd, each with two "containers" behind it on
# one bridge, and a VXLAN port (VNI 5000) between the hosts. Every
# container pings every other; then both MAC tables show the far side's
# containers behind the tunnel port. Everything is removed on exit.
#
#   sudo examples/overlay.sh            # builds the binaries first
#   VSWITCH_BIN=target/debug sudo -E examples/overlay.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "overlay.sh needs root (network namespaces)" >&2; exit 1; }
if [ -z "${VSWITCH_BIN:-}" ]; then
    cargo build --release -q -p vswitch-ctl --bins
    VSWITCH_BIN=target/release
fi

id=$$
work=$(mktemp -d)
hosts=(ovh-a-$id ovh-b-$id)
containers=(ovc-1-$id ovc-2-$id ovc-3-$id ovc-4-$id)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for ns in "${hosts[@]}" "${containers[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
ctl() { local h=$1; shift; echo "[host $h] \$ vswitch-ctl $*" >&2; "$VSWITCH_BIN/vswitch-ctl" --socket "$work/$h.sock" "$@"; }

echo "== two hosts and their underlay link"
for ns in "${hosts[@]}" "${containers[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add underlay netns "${hosts[0]}" type veth peer name underlay netns "${hosts[1]}"
for i in 0 1; do
    ip -n "${hosts[$i]}" addr add "192.168.50.$((i + 1))/24" dev underlay
    ip -n "${hosts[$i]}" link set underlay up
done

echo "== four containers, two behind each host (MTU 1450: 1500 minus 50 bytes of VXLAN)"
for c in 0 1 2 3; do
    host=${hosts[$((c / 2))]}
    ip link add "port$c" netns "$host" type veth peer name eth0 netns "${containers[$c]}"
    ip -n "${containers[$c]}" addr add "10.50.0.$((c + 1))/24" dev eth0
    ip -n "${containers[$c]}" link set eth0 mtu 1450 up
    ip -n "$host" link set "port$c" up
done

echo "== a vswitchd on each host"
for i in 0 1; do
    ip netns exec "${hosts[$i]}" "$VSWITCH_BIN/vswitchd" --socket "$work/$i.sock" --db "$work/$i.json" --log-level warn &
    pids+=($!)
done
for i in 0 1; do
    for _ in $(seq 50); do "$VSWITCH_BIN/vswitch-ctl" --socket "$work/$i.sock" list-br >/dev/null 2>&1 && break; sleep 0.1; done
done
ctl 0 add-br br0 -- add-port br0 port0 -- add-port br0 port1 \
    -- add-port br0 vx0 type=vxlan options:remote_ip=192.168.50.2 options:key=5000
ctl 1 add-br br0 -- add-port br0 port2 -- add-port br0 port3 \
    -- add-port br0 vx0 type=vxlan options:remote_ip=192.168.50.1 options:key=5000
ctl 0 show

echo "== every container pings every other"
for from in 0 1 2 3; do
    for to in 0 1 2 3; do
        [ "$from" = "$to" ] && continue
        ip netns exec "${containers[$from]}" ping -c 1 -W 2 "10.50.0.$((to + 1))" >/dev/null
        echo "container $((from + 1)) -> container $((to + 1)): ok"
    done
done

echo "== the MAC tables: the far containers are behind vx0 (port 3)"
ctl 0 fdb-show br0
ctl 1 fdb-show br0
ctl 0 stats br0 vx0
echo "overlay ok"
