#!/usr/bin/env bash
# What `options:qdisc_bypass=false` costs: TCP (iperf3, 5 s a run) between
# two namespaces through one bridge of AF_PACKET ports, transmitting past
# the qdisc (the default) and through it, and through a Linux bridge,
# alternated three times; then 64-byte UDP (iperf3 -u -l 18, 1 Gbit/s
# offered) the same way. As root, after `cargo build --release -p
# vswitch-ctl`. Recorded in docs/performance.md.
set -euo pipefail
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
A=qba; C=qbc; KA=qbka; KC=qbkc
cleanup() {
  pkill -f "vswitchd --db /tmp/qb" || true
  for n in $A $C $KA $KC; do ip netns del $n 2>/dev/null || true; done
  for l in qva qvc qvka qvkc qkbr; do ip link del $l 2>/dev/null || true; done
  rm -rf /tmp/qb
}
trap cleanup EXIT
cleanup
mkdir -p /tmp/qb
for n in $A $C $KA $KC; do ip netns add $n; ip -n $n link set lo up; done
for x in "$A qva 10.92.0.2" "$C qvc 10.92.0.3" "$KA qvka 10.93.0.2" "$KC qvkc 10.93.0.3"; do set -- $x
  ip link add $2 type veth peer name eth0 netns $1; ip link set $2 up
  ip -n $1 addr add $3/24 dev eth0; ip -n $1 link set eth0 up; done
ip link add qkbr type bridge; ip link set qkbr up; ip link set qvka master qkbr; ip link set qvkc master qkbr
$B/vswitchd --db /tmp/qb/conf.json --socket /tmp/qb/sock >/tmp/qb/log 2>&1 &
sleep 1
ctl() { $B/vswitch-ctl --socket /tmp/qb/sock "$@"; }
ctl add-br qb -- add-port qb qva -- add-port qb qvc
ip netns exec $C iperf3 -s -D -B 10.92.0.3 >/dev/null; ip netns exec $KC iperf3 -s -D -B 10.93.0.3 >/dev/null
sleep 1
bypass() { ctl set-port qva options:qdisc_bypass=$1; ctl set-port qvc options:qdisc_bypass=$1; sleep 0.5; }
tcp() { ip netns exec $1 iperf3 -c $2 -t 5 -J | python3 -c "import json,sys; print(round(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e9,2))"; }
udp() { ip netns exec $1 iperf3 -c $2 -u -l 18 -b 1G -t 5 -J | python3 -c "import json,sys; e=json.load(sys.stdin)['end']['sum']; print(round(e['packets']*(100-e['lost_percent'])/100/5/1e6,3))"; }
for i in 1 2 3; do
  bypass true; on=$(tcp $A 10.92.0.3)
  bypass false; off=$(tcp $A 10.92.0.3)
  kb=$(tcp $KA 10.93.0.3)
  echo "TCP round $i: qdisc bypassed $on Gbit/s | through the qdisc $off Gbit/s | Linux bridge $kb Gbit/s"
done
for i in 1 2 3; do
  bypass true; on=$(udp $A 10.92.0.3)
  bypass false; off=$(udp $A 10.92.0.3)
  kb=$(udp $KA 10.93.0.3)
  echo "64 B UDP round $i: qdisc bypassed $on Mpps | through the qdisc $off Mpps | Linux bridge $kb Mpps delivered"
done
