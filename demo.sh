#!/usr/bin/env bash
# Runs the switch's main job the way an operator would.
#
# As root: starts vswitchd on a private socket and configuration file,
# builds a bridge with vswitch-ctl between two network namespaces and the
# host (an internal port), pings across it, blocks ICMP with a flow rule and
# lifts it again, prints show / fdb-show / dump-flows / stats, and stops the
# daemon. Everything it creates is removed on exit, even on failure.
#
# Without root (no namespaces): runs the in-process demo instead, two
# smoltcp TCP/IP hosts moving data through an embedded switch.
#
# VSWITCH_BIN=DIR uses already-built vswitchd and vswitch-ctl from DIR.
set -euo pipefail
cd "$(dirname "$0")"

in_process() {
    echo "== $1: running the in-process switch instead"
    exec cargo run --release --example tcp_transfer
}

[ "$(id -u)" = 0 ] || in_process "not root (namespaces need root)"

# What the kernel demo runs: ip (iproute2) and ping (iputils-ping). As
# root on a Debian-like machine, missing ones are installed; otherwise the
# demo says exactly what is missing and runs in process.
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v ping >/dev/null || missing+=(iputils-ping)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${missing[*]} (apt-get)"
    if DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        missing=()
    fi
fi
[ ${#missing[@]} -eq 0 ] || in_process "missing ${missing[*]} (install them for the kernel-port demo)"

if [ -z "${VSWITCH_BIN:-}" ]; then
    cargo build --release -q -p vswitch-ctl --bins
    VSWITCH_BIN=target/release
fi
VSWITCHD="$VSWITCH_BIN/vswitchd"
CTL="$VSWITCH_BIN/vswitch-ctl"

id=$$
work=$(mktemp -d)
ns0=vsdemo-a-$id ns1=vsdemo-b-$id
if0=vsd$((id % 100000))a if1=vsd$((id % 100000))b gw=vsd$((id % 100000))g
daemon=
cleanup() {
    [ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    ip netns del "$ns0" 2>/dev/null || true
    ip netns del "$ns1" 2>/dev/null || true
    ip link del "$if0" 2>/dev/null || true
    ip link del "$if1" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export VSWITCH_SOCKET="$work/vswitchd.sock"
ctl() { echo "\$ vswitch-ctl $*" >&2; "$CTL" "$@"; }

echo "== two 'containers' (network namespaces), each with a veth into the root namespace"
for i in 0 1; do
    ns=ns$i; ifc=if$i
    ip netns add "${!ns}"
    ip link add "${!ifc}" type veth peer name eth0 netns "${!ns}"
    ip -n "${!ns}" addr add "10.77.0.$((i + 1))/24" dev eth0
    ip -n "${!ns}" link set eth0 up
    ip link set "${!ifc}" up
done

echo "== vswitchd (socket and configuration in $work)"
"$VSWITCHD" --db "$work/conf.json" &
daemon=$!
for _ in $(seq 50); do "$CTL" list-br >/dev/null 2>&1 && break; sleep 0.1; done

ctl add-br br0 -- add-port br0 "$if0" -- add-port br0 "$if1" -- add-port br0 "$gw" type=internal
ip addr add 10.77.0.254/24 dev "$gw"
ip link set "$gw" up
ctl show

echo "== ping container a -> container b, and the host -> container b over the internal port"
ip netns exec "$ns0" ping -c 3 -i 0.2 -W 2 10.77.0.2
ping -c 3 -i 0.2 -W 2 10.77.0.2

echo "== a flow rule that drops ICMP: ping fails"
ctl add-flow br0 "priority=100,icmp,actions=drop"
if ip netns exec "$ns0" ping -c 2 -i 0.2 -W 1 10.77.0.2 >/dev/null; then
    echo "ICMP was not blocked" >&2
    exit 1
fi
echo "(no replies, as intended)"
ctl dump-flows br0
ctl del-flows br0 icmp
ip netns exec "$ns0" ping -c 2 -i 0.2 -W 2 10.77.0.2 >/dev/null && echo "== rule removed: ping works again"

ctl fdb-show br0
ctl dump-flows br0
ctl stats br0
echo "== the saved configuration: a snapshot ($work/conf.json) and the changes since ($work/conf.json.journal)"
cat "$work/conf.json"
cat "$work/conf.json.journal"
echo "== stopping vswitchd"
