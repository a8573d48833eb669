#!/usr/bin/env python3
"""Times how long a lease written to etcd takes to become flows on every
host (run by convergence.sh, inside the underlay namespace, which reaches
etcd; the hosts' vswitchd control sockets are files, reachable from any
namespace).

Leases are written through etcd's v3 JSON gateway (one HTTP request: the
clock starts when etcd has replied, the write committed); each host is
polled over its control socket with `flow.dump` filtered on the new
subnet's route (`net.cluster` for the bulk case), every millisecond.
"""

import argparse
import base64
import json
import socket
import statistics
import time
import urllib.request

PREFIX = "/coreos.com/network/subnets/"


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Etcd:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def call(self, path, body):
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def grant(self, ttl):
        return self.call("/v3/lease/grant", {"TTL": ttl})["ID"]

    def put_many(self, kvs, lease):
        ops = [{"requestPut": {"key": b64(k), "value": b64(v), "lease": lease}} for k, v in kvs]
        for i in range(0, len(ops), 100):
            self.call("/v3/kv/txn", {"success": ops[i : i + 100]})

    def delete_prefix(self, prefix, end):
        self.call("/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(end)})

    def keys(self, prefix):
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        r = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end), "keys_only": True})
        return [base64.b64decode(kv["key"]).decode() for kv in r.get("kvs", [])]


class Switch:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rb")
        self.id = 0

    def call(self, method, params):
        self.id += 1
        self.s.sendall((json.dumps({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params}) + "\n").encode())
        r = json.loads(self.f.readline())
        if "error" in r:
            raise RuntimeError(r["error"])
        return r["result"]

    def has_route(self, subnet):
        return len(self.call("flow.dump", {"bridge": "vsc0", "filter": f"table=240,ip,nw_dst={subnet}"})) > 0

    def routes(self):
        return len(self.call("net.cluster", {"network": "cluster"})[0]["routes"])


def fake(i):
    """The i-th benchmark host: its subnet (in 10.200.0.0/13) and record."""
    subnet = f"10.{200 + i // 256}.{i % 256}.0/24"
    mac = "02:42:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255)
    rec = {"PublicIP": f"10.99.{1 + i // 250}.{1 + i % 250}", "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": mac}}
    return subnet, PREFIX + subnet.replace("/", "-"), json.dumps(rec)


def wait(pred, within=120.0):
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > within:
            raise SystemExit("not converged within %.0f s" % within)
        time.sleep(0.001)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--etcd", required=True)
    ap.add_argument("--sockets", required=True)
    ap.add_argument("--counts", default="10,100,1000")
    ap.add_argument("--samples", type=int, default=10)
    a = ap.parse_args()
    etcd = Etcd(a.etcd)
    hosts = [Switch(p) for p in a.sockets.split(",")]
    real = len(hosts) - 1
    lease = etcd.grant(3600)
    fakes_end = PREFIX + "10.2" + chr(ord("0") + 8)  # the 10.200-10.207 keys
    print("hosts: %d real (vswitchd + vswitch-agent), VXLAN; times from etcd's reply to every host's flow" % len(hosts))
    print("| leases | all N at once | median add (N+1th) | min | max | samples |")
    print("|---|---|---|---|---|---|")
    for n in [int(x) for x in a.counts.split(",")]:
        etcd.delete_prefix(PREFIX + "10.20", fakes_end)
        wait(lambda: all(h.routes() == real for h in hosts))
        kvs = [fake(i)[1:] for i in range(n)]
        t0 = time.monotonic()
        etcd.put_many(kvs, lease)
        t1 = time.monotonic()
        wait(lambda: all(h.routes() == real + n for h in hosts))
        bulk = time.monotonic() - t1
        times = []
        for k in range(a.samples):
            subnet, key, rec = fake(n + k)
            etcd.call("/v3/kv/put", {"key": b64(key), "value": b64(rec), "lease": lease})
            t = time.monotonic()
            pending = list(hosts)
            while pending:
                pending = [h for h in pending if not h.has_route(subnet)]
                if time.monotonic() - t > 60:
                    raise SystemExit("lease %s not programmed within 60 s" % subnet)
                if pending:
                    time.sleep(0.001)
            times.append(time.monotonic() - t)
        ms = sorted(x * 1000 for x in times)
        print(
            "| %d | %.0f ms (writes took %.0f ms) | %.1f ms | %.1f ms | %.1f ms | %d |"
            % (n, bulk * 1000, (t1 - t0) * 1000, statistics.median(ms), ms[0], ms[-1], len(ms))
        )
    etcd.delete_prefix(PREFIX + "10.20", fakes_end)


if __name__ == "__main__":
    main()
