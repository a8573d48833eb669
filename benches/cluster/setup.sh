# Sourced by the cluster benchmarks: an underlay namespace ($UL) with a
# Linux bridge and one etcd member at 10.99.0.251, and hosts $P-h1.. each
# with a kernel link (10.99.0.1N, the VXLAN endpoint) and an uplink into
# the bridge, running vswitchd and vswitch-agent ($BACKEND: vxlan, the
# default, or host-gw). Everything is removed by cluster_cleanup (set as the trap).
P=${P:-vsb}
UL=$P-ul
W=/tmp/$P
B=${B:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release}
cluster_cleanup() {
  pkill -f "$W/" 2>/dev/null || true
  sleep 0.5
  for n in $(ip netns list | awk '{print $1}' | grep "^$P-"); do ip netns del "$n"; done
  rm -rf "$W"
}
cluster_underlay() {
  mkdir -p $W
  ip netns add $UL; ip -n $UL link set lo up
  ip -n $UL link add br0 type bridge; ip -n $UL addr add 10.99.0.251/24 dev br0; ip -n $UL link set br0 up
  ip netns exec $UL etcd --name m0 --data-dir $W/etcd --listen-client-urls http://10.99.0.251:2379 \
    --advertise-client-urls http://10.99.0.251:2379 --listen-peer-urls http://10.99.0.251:2380 \
    --initial-advertise-peer-urls http://10.99.0.251:2380 --initial-cluster m0=http://10.99.0.251:2380 \
    >$W/etcd.log 2>&1 &
  for _ in $(seq 50); do ip netns exec $UL etcdctl --endpoints http://10.99.0.251:2379 put /probe 1 >/dev/null 2>&1 && break; sleep 0.2; done
  local config='{"Network": "10.128.0.0/9", "SubnetMin": "10.128.1.0", "SubnetMax": "10.129.255.0", "Backend": {"Type": "'${BACKEND:-vxlan}'"}}'
  ip netns exec $UL etcdctl --endpoints http://10.99.0.251:2379 put /coreos.com/network/config "${CLUSTER_CONFIG:-$config}" >/dev/null
}
# cluster_link HOSTNS I: the host's kernel link k0 (10.99.0.(10+I)/24) and uplink u0 into the bridge
cluster_link() {
  local h=$1 i=$2
  ip link add k0 netns $h type veth peer name pk$i netns $UL
  ip link add u0 netns $h type veth peer name pu$i netns $UL
  ip -n $UL link set pk$i master br0 up; ip -n $UL link set pu$i master br0 up
  ip -n $h addr add 10.99.0.$((10 + i))/24 dev k0; ip -n $h link set k0 up; ip -n $h link set u0 up
}
# cluster_host I: host namespace $P-hI with vswitchd and vswitch-agent
cluster_host() {
  local i=$1 h=$P-h$1
  ip netns add $h; ip -n $h link set lo up
  cluster_link $h $i
  mkdir -p $W/h$i
  ip netns exec $h $B/vswitchd --socket $W/h$i/sock --db $W/h$i/conf.json >$W/h$i/vswitchd.log 2>&1 &
  for _ in $(seq 50); do [ -S $W/h$i/sock ] && break; sleep 0.1; done
  local endpoint=(--public-ip 10.99.0.$((10 + i)))
  [ "${BACKEND:-vxlan}" = host-gw ] && endpoint=(--uplink u0 --uplink-address 10.99.0.$((100 + i))/24)
  ip netns exec $h $B/vswitch-agent --etcd-endpoints http://10.99.0.251:2379 --socket $W/h$i/sock \
    --state-dir $W/h$i/agent "${endpoint[@]}" >$W/h$i/agent.log 2>&1 &
  for _ in $(seq 100); do
    $B/vswitch-ctl --socket $W/h$i/sock -f json cluster-show 2>/dev/null | grep -q '"lease":{' && return 0; sleep 0.1
  done
  echo "host $i did not join: $(tail -3 $W/h$i/agent.log)" >&2; return 1
}
# cluster_container HOST I NAME: a container namespace attached through vswitch-cni; prints its address
cluster_container() {
  local i=$1 c=$P-$2
  ip netns add $c
  echo '{"cniVersion":"1.0.0","name":"cluster","type":"vswitch","cluster":true,"socket":"'$W/h$i/sock'"}' |
    CNI_COMMAND=ADD CNI_CONTAINERID=$c CNI_NETNS=/var/run/netns/$c CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni $B/vswitch-cni |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])'
}
