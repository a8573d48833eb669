#!/usr/bin/env bash
# TCP between containers on two hosts through the cluster network,
# against flannel's design built from kernel parts on two other hosts of
# the same underlay. BACKEND=vxlan (the default): a Linux bridge (cni0)
# for the containers, a vxlan device (flannel.1, VNI 1, port 8472, no
# learning) with the other host's VTEP in its neighbour and FDB tables, a
# route to the other host's subnet through it. BACKEND=host-gw: the same
# bridge, the route through the other host's underlay address. IP
# forwarding on. iperf3, 5 s a run, alternated three times. As root,
# after `cargo build --release -p vswitch-ctl -p vswitch-agent`.
# Recorded in docs/performance.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
P=vsbt
source "$here/setup.sh"
trap cluster_cleanup EXIT
cluster_cleanup
cluster_underlay
cluster_host 1; cluster_host 2
a=$(cluster_container 1 a); b=$(cluster_container 2 b)
# The kernel peer: hosts 3 and 4, subnets 10.240.3.0/24 and 10.240.4.0/24.
mac() { printf '02:fe:00:00:00:%02x' "$1"; }
for i in 3 4; do
  h=$P-h$i; ip netns add $h; ip -n $h link set lo up; cluster_link $h $i
  ip netns exec $h sysctl -qw net.ipv4.ip_forward=1
  ip -n $h link add cni0 type bridge; ip -n $h addr add 10.240.$i.1/24 dev cni0; ip -n $h link set cni0 up
  ip -n $h link add flannel.1 address "$(mac $i)" type vxlan id 1 local 10.99.0.$((10 + i)) dev k0 dstport 8472 nolearning
  ip -n $h link set flannel.1 mtu 1450 up; ip -n $h addr add 10.240.$i.0/32 dev flannel.1
  c=$P-k$i; ip netns add $c; ip -n $c link set lo up
  mtu=1450; [ "${BACKEND:-vxlan}" = host-gw ] && mtu=1500
  ip -n $h link add veth0 mtu $mtu type veth peer name eth0 netns $c
  ip -n $h link set veth0 master cni0 up
  ip -n $c link set eth0 mtu $mtu up; ip -n $c addr add 10.240.$i.2/24 dev eth0; ip -n $c route add default via 10.240.$i.1
done
for x in "3 4" "4 3"; do set -- $x
  h=$P-h$1
  if [ "${BACKEND:-vxlan}" = host-gw ]; then
    ip -n $h route add 10.240.$2.0/24 via 10.99.0.$((10 + $2)) dev k0
  else
    ip -n $h route add 10.240.$2.0/24 via 10.240.$2.0 dev flannel.1 onlink
    ip -n $h neigh add 10.240.$2.0 lladdr "$(mac $2)" dev flannel.1 nud permanent
    ip netns exec $h bridge fdb append "$(mac $2)" dev flannel.1 dst 10.99.0.$((10 + $2))
  fi
done
ip netns exec $P-b iperf3 -s -D -B "$b" >/dev/null; ip netns exec $P-k4 iperf3 -s -D -B 10.240.4.2 >/dev/null
sleep 1
ip netns exec $P-a ping -c 3 -i 0.2 -q "$b" >/dev/null && ip netns exec $P-k3 ping -c 3 -i 0.2 -q 10.240.4.2 >/dev/null
run() { ip netns exec $1 iperf3 -c $2 -t 5 -J | python3 -c "import json,sys; e=json.load(sys.stdin)['end']; print(round(e['sum_received']['bits_per_second']/1e9,2), e['sum_sent'].get('retransmits', 0))"; }
for i in 1 2 3; do
  read -r vs vr < <(run $P-a "$b")
  read -r ks kr < <(run $P-k3 10.240.4.2)
  echo "round $i (${BACKEND:-vxlan}): vswitch $vs Gbit/s ($vr retransmits) | kernel $ks Gbit/s ($kr retransmits)"
done
