#!/bin/bash
# TCP between a container namespace and its host, both ways, through
# vswitchd's internal port (MODE vswitch: a veth port and an internal port
# holding the host's address) or through a Linux bridge holding it (MODE
# kernel), in a private "host" namespace. BIN: where vswitchd and
# vswitch-ctl are (target/release). Run as root:
#   benches/internal-iperf.sh target/release vswitch; benches/internal-iperf.sh target/release kernel
set -u
BIN=$1; MODE=$2
h=ih$$; c=ic$$
ip netns add $h; ip netns add $c
trap 'kill $pid 2>/dev/null; ip netns del $h; ip netns del $c; rm -rf $d' EXIT
d=$(mktemp -d)
ip link add hv netns $h type veth peer name cv netns $c
ip -n $h link set hv up; ip -n $c link set cv up; ip -n $c addr add 10.93.0.1/24 dev cv; ip -n $c link set lo up; ip -n $h link set lo up
if [ $MODE = vswitch ]; then
  ip netns exec $h $BIN/vswitchd --socket $d/s --db $d/c.json >$d/log 2>&1 & pid=$!
  sleep 0.5
  ip netns exec $h $BIN/vswitch-ctl --socket $d/s add-br br0 -- add-port br0 hv -- add-port br0 gw type=internal
  dev=gw
else
  ip -n $h link add br0 type bridge; ip -n $h link set hv master br0; dev=br0; pid=
fi
ip -n $h addr add 10.93.0.254/24 dev $dev; ip -n $h link set $dev up
for i in $(seq 1 50); do ip netns exec $c ping -c1 -W1 10.93.0.254 >/dev/null && break; done
ip netns exec $h iperf3 -s -D -B 10.93.0.254 ; ip netns exec $c iperf3 -s -D -B 10.93.0.1; sleep 0.5
up=$(ip netns exec $c iperf3 -c 10.93.0.254 -t 3 -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))')
down=$(ip netns exec $h iperf3 -c 10.93.0.1 -t 3 -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))')
echo "$MODE: to host $up Gbit/s, from host $down Gbit/s"
pkill -f "iperf3 -s -D -B 10.93.0" || true
