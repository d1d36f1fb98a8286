"""Durability driver for the kill -9 test.

  durability.py write PORT SECONDS OUT   write keys 0,1,2,... (8 writer threads) until SECONDS pass or
                                         the node dies; append every acknowledged key to OUT
  durability.py verify PORT IN           every key in IN must read back with its value
"""
import sys
import threading
import time

import aerospike
from aerospike import exception as ex

mode, port = sys.argv[1], int(sys.argv[2])
cfg = {"hosts": [("127.0.0.1", port)], "policies": {"write": {"total_timeout": 2000}, "read": {"total_timeout": 2000}}}
client = aerospike.client(cfg).connect()
ns, st = "test", "dur"


def value(i):
    return {"i": i, "pad": "x" * (i % 700)}


if mode == "write":
    seconds, out = float(sys.argv[3]), open(sys.argv[4], "a")
    lock = threading.Lock()
    deadline = time.time() + seconds
    stop = threading.Event()

    def writer(t):
        i = t
        while time.time() < deadline and not stop.is_set():
            try:
                client.put((ns, st, i), value(i))
            except ex.AerospikeError:
                stop.set()
                return
            with lock:
                out.write(f"{i}\n")
                out.flush()
            i += 8

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
elif mode == "verify":
    keys = [int(line) for line in open(sys.argv[3]) if line.strip()]
    missing = []
    for i in keys:
        try:
            _, _, bins = client.get((ns, st, i))
            if bins != value(i):
                missing.append((i, "wrong value"))
        except ex.RecordNotFound:
            missing.append((i, "not found"))
    if missing:
        print(f"{len(missing)} of {len(keys)} acknowledged writes lost: {missing[:10]}", file=sys.stderr)
        sys.exit(1)
    print(f"all {len(keys)} acknowledged writes present")
client.close()
