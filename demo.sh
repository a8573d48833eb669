#!/usr/bin/env bash
# Runs the switch's main job the way an operator would.
#
# As root: starts vswitchd on a private socket and configuration file,
# builds a bridge with vswitch-ctl between two network namespaces and the
# host (an internal port), pings across it, blocks ICMP with a flow rule and
# lifts it again, prints show / fdb-show / dump-flows / stats; then builds
# a container network with vswitch-ctl net-create / net-attach: two
# containers, masquerade to an "outside" namespace through an uplink, a
# published port reached from outside, a network policy letting only the
# outside in; and stops the daemon. Everything
# it creates is removed on exit, even on failure.
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

# What the kernel demo runs: ip (iproute2), ping (iputils-ping) and, for
# the container network's web server and client, python3. As
# root on a Debian-like machine, missing ones are installed; otherwise the
# demo says exactly what is missing and runs in process.
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v ping >/dev/null || missing+=(iputils-ping)
command -v python3 >/dev/null || missing+=(python3)
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
c1=vsdemo-c1-$id c2=vsdemo-c2-$id out=vsdemo-out-$id up=vsd$((id % 100000))u net=vsn$((id % 100000))
daemon=
cleanup() {
    for ns in "$c1" "$c2" "$out"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
    [ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    for ns in "$ns0" "$ns1" "$c1" "$c2" "$out"; do ip netns del "$ns" 2>/dev/null || true; done
    ip link del "$up" 2>/dev/null || true
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
echo "== a container network: c1 and c2 on $net (10.78.0.0/24, gateway 10.78.0.1 on the host),"
echo "   masquerading through uplink $up as 192.0.2.1 to an 'outside' namespace (192.0.2.50); c1's port 80 published as 8080"
for ns in "$c1" "$c2" "$out"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add "$up" type veth peer name eth0 netns "$out"
ip -n "$out" addr add 192.0.2.50/24 dev eth0
ip -n "$out" link set eth0 up
ip link set "$up" up
ctl net-create "$net" --subnet 10.78.0.0/24 --masquerade "$up" --uplink-address 192.0.2.1/24 --macspoofchk
ctl net-attach "$net" "$c1" --publish 8080:80/tcp --label app=web
ctl net-attach "$net" "$c2" --label app=client
ctl net-list
ip netns exec "$c1" ping -c 2 -i 0.2 -W 2 10.78.0.3
echo "== c1 -> the outside, masqueraded (the outside sees 192.0.2.1)"
ip netns exec "$c1" ping -c 2 -i 0.2 -W 2 192.0.2.50
ctl dump-conntrack ct_nw_src=10.78.0.2
echo "== the outside -> 192.0.2.1:8080, published to c1's port 80"
ip netns exec "$c1" python3 -m http.server 80 --bind 10.78.0.2 >/dev/null 2>&1 &
for _ in $(seq 100); do ip netns exec "$c1" ss -ltn | grep -q '10.78.0.2:80 ' && break; sleep 0.1; done
ip netns exec "$out" python3 -c "import urllib.request
print('fetched', len(urllib.request.urlopen('http://192.0.2.1:8080/', timeout=5).read()), 'bytes from c1 through the published port')"
echo "== a network policy: app=web takes TCP 80 from 192.0.2.0/24 only (c2 is not in it)"
cat > "$work/web-in.json" <<'JSON'
{"name": "web-in", "podSelector": {"matchLabels": {"app": "web"}},
 "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"protocol": "TCP", "port": 80}]}]}
JSON
ctl policy-add "$work/web-in.json" --network "$net"
ip netns exec "$out" python3 -c "import urllib.request
print('the outside: fetched', len(urllib.request.urlopen('http://192.0.2.1:8080/', timeout=5).read()), 'bytes (allowed)')"
if ip netns exec "$c2" python3 -c "import urllib.request; urllib.request.urlopen('http://192.0.2.1:8080/', timeout=2)" 2>/dev/null; then
    echo "c2 was not denied" >&2
    exit 1
fi
echo "c2: no answer (denied by web-in)"
ctl policy-list

echo "== the saved configuration: a snapshot ($work/conf.json) and the changes since ($work/conf.json.journal)"
cat "$work/conf.json"
cat "$work/conf.json.journal"
echo "== stopping vswitchd"
