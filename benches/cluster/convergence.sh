#!/usr/bin/env bash
# Convergence of the cluster network: three real hosts (vswitchd +
# vswitch-agent, VXLAN) on one etcd; the benchmark writes other hosts'
# leases straight into etcd (10, 100, 1000 of them) and times, from the
# write's reply to the moment every host's vswitchd has the route's flow
# in table 240 (polled over each control socket every millisecond):
# the bulk (all N leases in transactions of 100) and single leases
# added to N existing ones. As root, after
# `cargo build --release -p vswitch-ctl -p vswitch-agent`.
# Recorded in docs/performance.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
P=vsbc
source "$here/setup.sh"
trap cluster_cleanup EXIT
cluster_cleanup
cluster_underlay
for i in 1 2 3; do cluster_host $i; done
ip netns exec $UL python3 "$here/convergence.py" --etcd http://10.99.0.251:2379 \
  --sockets $W/h1/sock,$W/h2/sock,$W/h3/sock --counts "${COUNTS:-10,100,1000}" --samples "${SAMPLES:-10}"
