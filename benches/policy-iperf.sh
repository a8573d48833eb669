#!/usr/bin/env bash
# Container-to-container TCP (iperf3, 5 s a run) through a vswitch
# container network without and with a network policy on the receiver,
# and through a Linux bridge, alternated three times. As root, after
# `cargo build --release -p vswitch-ctl`. Recorded in docs/performance.md.
set -euo pipefail
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
H=pbh; A=pba; C=pbc; KA=pbka; KC=pbkc
cleanup() { pkill -f "vswitchd --db /tmp/pb" || true; for n in $H $A $C $KA $KC; do ip netns del $n 2>/dev/null || true; done; rm -rf /tmp/pb; }
trap cleanup EXIT
cleanup
mkdir -p /tmp/pb
for n in $H $A $C $KA $KC; do ip netns add $n; ip -n $n link set lo up; done
ip netns exec $H $B/vswitchd --db /tmp/pb/conf.json --socket /tmp/pb/sock >/tmp/pb/log 2>&1 &
sleep 1
ctl() { ip netns exec $H $B/vswitch-ctl --socket /tmp/pb/sock "$@"; }
ctl net-create pb --subnet 10.90.0.0/24 >/dev/null
ctl net-attach pb /var/run/netns/$A --label app=a >/dev/null
ctl net-attach pb /var/run/netns/$C --label app=c >/dev/null
# Linux bridge peer, in the same host namespace
ip -n $H link add kbr type bridge; ip -n $H link set kbr up
for x in "$KA 10.91.0.2" "$KC 10.91.0.3"; do set -- $x
  ip -n $H link add v$1 type veth peer name eth0 netns $1
  ip -n $H link set v$1 master kbr up; ip -n $1 addr add $2/24 dev eth0; ip -n $1 link set eth0 up; done
ip netns exec $C iperf3 -s -D -B 10.90.0.3 >/dev/null; ip netns exec $KC iperf3 -s -D -B 10.91.0.3 >/dev/null
sleep 1
run() { ip netns exec $1 iperf3 -c $2 -t 5 -J | python3 -c "import json,sys; print(round(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e9,2))"; }
cat > /tmp/pb/pol.json <<'JSON'
{"name": "c-in", "network": "pb", "podSelector": {"matchLabels": {"app": "c"}},
 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 5201}]}]}
JSON
for i in 1 2 3; do
  ctl policy-del c-in --if-exists >/dev/null
  np=$(run $A 10.90.0.3)
  ctl policy-add /tmp/pb/pol.json >/dev/null
  wp=$(run $A 10.90.0.3)
  kb=$(run $KA 10.91.0.3)
  echo "round $i: vswitch no policy $np Gbit/s | vswitch with policy $wp Gbit/s | Linux bridge $kb Gbit/s"
done
ctl policy-list | head -5
