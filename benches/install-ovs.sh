#!/usr/bin/env bash
# Installs Debian's Open vSwitch so vswitch-bench can measure it beside
# this switch. vswitch-bench runs its own ovsdb-server and ovs-vswitchd
# from a private directory (OVS_RUNDIR etc.), with the userspace (netdev)
# datapath, so the system service is stopped and not needed.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends openvswitch-switch
# The package may start the system daemons; the benchmark uses its own.
/usr/share/openvswitch/scripts/ovs-ctl stop >/dev/null 2>&1 || true
ovs-vswitchd --version | head -1
