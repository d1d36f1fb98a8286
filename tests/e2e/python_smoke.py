"""Drives a Bolide node with the official Python client (aerospike 19.3.0) through the
single-record API and checks every answer. Exit status 0 = all good.

Usage: python_smoke.py PORT
"""
import os
import sys
import time

import aerospike
from aerospike import exception as ex
from aerospike_helpers.operations import operations as op

port = int(sys.argv[1])
# The node's address: loopback, or the DPDK port's address seen from another namespace.
HOST = os.environ.get("BOLIDE_HOST", "127.0.0.1")
client = aerospike.client({"hosts": [(HOST, port)]}).connect()
ns, st = "test", "demo"


def key(k):
    return (ns, st, k)


checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


# put / get / select / exists
client.put(key("k1"), {"a": 1, "s": "hello", "f": 1.5, "b": bytearray(b"\x00\x01"), "l": [1, "x"], "m": {"k": 2}})
_, meta, bins = client.get(key("k1"))
check(meta["gen"] == 1, f"generation 1 after create, got {meta}")
check(bins == {"a": 1, "s": "hello", "f": 1.5, "b": b"\x00\x01", "l": [1, "x"], "m": {"k": 2}}, f"get returned {bins}")
_, _, sel = client.select(key("k1"), ["s", "missing"])
check(sel == {"s": "hello"}, f"select returned {sel}")
_, meta = client.exists(key("k1"))
check(meta is not None and meta["gen"] == 1, f"exists returned {meta}")
_, meta = client.exists(key("nope"))
check(meta is None, "exists of a missing key")
try:
    client.get(key("nope"))
    check(False, "get of a missing key must raise")
except ex.RecordNotFound:
    check(True, "")

# update merges bins, generation bumps
client.put(key("k1"), {"a": 2})
_, meta, bins = client.get(key("k1"))
check(meta["gen"] == 2 and bins["a"] == 2 and bins["s"] == "hello", f"merge: {meta} {bins}")

# policies
try:
    client.put(key("k1"), {"a": 3}, policy={"exists": aerospike.POLICY_EXISTS_CREATE})
    check(False, "create-only on an existing record must fail")
except ex.RecordExistsError:
    check(True, "")
try:
    client.put(key("k1"), {"a": 3}, meta={"gen": 1}, policy={"gen": aerospike.POLICY_GEN_EQ})
    check(False, "generation mismatch must fail")
except ex.RecordGenerationError:
    check(True, "")
client.put(key("k1"), {"z": 9}, policy={"exists": aerospike.POLICY_EXISTS_REPLACE})
_, _, bins = client.get(key("k1"))
check(bins == {"z": 9}, f"replace: {bins}")

# increment / append / prepend / touch / operate
client.increment(key("k1"), "z", 5)
client.append(key("k2"), "t", "b")
client.prepend(key("k2"), "t", "a")
_, _, bins = client.get(key("k1"))
check(bins["z"] == 14, f"increment: {bins}")
_, _, bins = client.get(key("k2"))
check(bins["t"] == "ab", f"append/prepend: {bins}")
client.touch(key("k1"), 100)
_, meta = client.exists(key("k1"))
check(0 < meta["ttl"] <= 100, f"touch ttl: {meta}")
_, _, bins = client.operate(key("k1"), [op.increment("z", 1), op.read("z"), op.write("w", "v")])
check(bins == {"z": 15}, f"operate: {bins}")

# ttl: never-expiring reports 4294967295; a short TTL expires
client.put(key("t1"), {"a": 1}, meta={"ttl": aerospike.TTL_NEVER_EXPIRE})
_, meta = client.exists(key("t1"))
check(meta["ttl"] == 4294967295, f"never-expire ttl: {meta}")
client.put(key("t2"), {"a": 1}, meta={"ttl": 1})
time.sleep(2.2)
_, meta = client.exists(key("t2"))
check(meta is None, "a record past its TTL is gone")

# remove
client.remove(key("k1"))
_, meta = client.exists(key("k1"))
check(meta is None, "removed")
try:
    client.remove(key("k1"))
    check(False, "remove of a missing record must raise")
except ex.RecordNotFound:
    check(True, "")

# unknown namespace
try:
    client.put(("nosuchns", st, "x"), {"a": 1})
    check(False, "unknown namespace must fail")
except (ex.NamespaceNotFound, ex.ClientError, ex.AerospikeError):
    check(True, "")

# integer and bytes keys, many keys across partitions and cores
for i in range(500):
    client.put(key(i), {"i": i})
for i in range(500):
    _, _, bins = client.get(key(i))
    check(bins == {"i": i}, f"key {i}: {bins}")
client.put((ns, st, bytearray(b"\x01\x02")), {"x": 1})
check(client.get((ns, st, bytearray(b"\x01\x02")))[2] == {"x": 1}, "bytes key")

client.close()
print(f"{checks} checks passed")
