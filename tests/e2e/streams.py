"""Drives a Bolide node with the official Python client (aerospike 19.3.0) through the
multi-record APIs: batch reads and writes, scans/queries over partitions, and truncate. Every
answer is checked; exit status 0 = all good.

Usage:
  streams.py batch PORT
  streams.py scan PORT
  streams.py truncate-sets PORT       writes, truncates sets, checks (fresh node)
  streams.py truncate-ns PORT ROUND   truncates the namespace, checks (after truncate-sets)
  streams.py verify-sets PORT ROUND   checks the state truncate-sets left (after restarts)
  streams.py verify-ns PORT ROUND     checks the state truncate-ns left (after restarts)
ROUND counts the verify rounds before this one (each writes one record after the truncates).
"""
import sys
import threading
import time

import aerospike
from aerospike import exception as ex
from aerospike_helpers import expressions as exp
from aerospike_helpers.batch import records as br
from aerospike_helpers.operations import operations as op

mode, port = sys.argv[1], int(sys.argv[2])
# Generous timeouts: a busy machine (CI, parallel tests) can take longer than the default 1 s.
slow = {"total_timeout": 20000}
client = aerospike.client({
    "hosts": [("127.0.0.1", port)],
    "policies": {"write": slow, "read": slow, "batch": slow, "query": slow, "scan": slow,
                 "operate": slow, "remove": slow, "info": {"timeout": 20000}},
}).connect()
INFO = {"timeout": 20000}  # truncate's info policy
NS = "test"
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        client.close()
        sys.exit(1)


def key(st, k):
    return (NS, st, k)


def digest(st, k):
    return bytes(aerospike.calc_digest(NS, st, k))


def pid(st, k):
    return client.get_key_partition_id(NS, st, k)


def ids(records, bin_name="i"):
    """The `i` bins of scan results, checking each record appears once and has its digest."""
    seen = []
    for k, meta, bins in records:
        seen.append(bins[bin_name])
        check(k[0] == NS and len(k[3]) == 20, f"scan record key {k}")
        check(meta["gen"] >= 1, f"scan record meta {meta}")
    return seen


def exactly(records, expected, what, st=None):
    """The scan returned each expected `i` exactly once and nothing else."""
    got = ids(records)
    check(len(got) == len(set(got)), f"{what}: duplicates in {sorted(got)}")
    check(sorted(got) == sorted(expected), f"{what}: got {len(got)} records, expected {len(expected)}: "
          f"missing {sorted(set(expected) - set(got))[:20]} extra {sorted(set(got) - set(expected))[:20]}")
    if st is not None:
        for k, _, bins in records:
            check(bytes(k[3]) == digest(st, bins["i"]), f"{what}: digest of record {bins['i']}")


# ---------------------------------------------------------------------------------------------
def run_batch():
    st = "b"
    n_present, n_keys = 150, 200
    for i in range(n_present):
        client.put(key(st, i), {"i": i, "s": f"v{i}", "l": [i, "x"]})
    # A permutation so the missing keys sit among the present ones and the rows span partitions.
    order = [(i * 73) % n_keys for i in range(n_keys)]
    check(len(set(order)) == n_keys, "permutation")
    keys = [key(st, i) for i in order]
    check(len({pid(st, i) for i in order}) > 150, "keys spread over partitions")

    # all bins
    res = client.batch_read(keys)
    check(res.result == 0, f"batch_read overall result {res.result}")
    check(len(res.batch_records) == n_keys, f"one row per key: {len(res.batch_records)}")
    for i, row in zip(order, res.batch_records):
        check(tuple(row.key[:3]) == key(st, i), f"row key {row.key} for {i}")
        if i < n_present:
            check(row.result == 0, f"row {i}: result {row.result}")
            check(row.record is not None, f"row {i}: record")
            _, meta, bins = row.record
            check(bins == {"i": i, "s": f"v{i}", "l": [i, "x"]}, f"row {i}: bins {bins}")
            check(meta["gen"] == 1, f"row {i}: meta {meta}")
        else:
            check(row.result == 2, f"missing row {i}: result {row.result}")
            check(row.record is None, f"missing row {i}: record {row.record}")

    # selected bins (a missing bin name is simply absent)
    res = client.batch_read(keys, ["s", "nope"])
    check(res.result == 0, f"batch_read bins overall result {res.result}")
    for i, row in zip(order, res.batch_records):
        if i < n_present:
            check(row.result == 0 and row.record[2] == {"s": f"v{i}"}, f"select row {i}: {row.result} {row.record}")
        else:
            check(row.result == 2 and row.record is None, f"select missing row {i}: {row.result} {row.record}")

    # exists: header only
    res = client.batch_read(keys, [])
    check(res.result == 0, f"batch_read header overall result {res.result}")
    for i, row in zip(order, res.batch_records):
        if i < n_present:
            check(row.result == 0 and row.record[1]["gen"] == 1 and (len(row.record) == 2 or not row.record[2]),
                  f"header row {i}: {row.result} {row.record}")
        else:
            check(row.result == 2 and row.record is None, f"header missing row {i}: {row.result} {row.record}")

    # a filter expression in the batch policy: rows it rejects report 27 (filtered out)
    fkeys = [key(st, i) for i in (1, 120, 149, 199, 60)]
    res = client.batch_read(fkeys, policy={"expressions": exp.GT(exp.IntBin("i"), 100).compile()})
    codes = [r.result for r in res.batch_records]
    check(codes == [27, 0, 0, 2, 27], f"batch read with a filter: {codes}")
    check(res.batch_records[1].record[2]["i"] == 120, "filtered batch row read")

    # large records: the reply spans several protos
    blob = bytes(range(256)) * 64  # 16 KiB
    for i in range(100):
        client.put(key("bigrec", i), {"i": i, "b": blob + i.to_bytes(4, "big")})
    res = client.batch_read([key("bigrec", i) for i in range(100)])
    check(all(r.result == 0 and r.record[2]["b"] == blob + i.to_bytes(4, "big")
              for i, r in enumerate(res.batch_records)), "100 x 16 KiB batch read")

    # the same key twice, and a single present key
    res = client.batch_read([key(st, 3), key(st, 3), key(st, 199)])
    rows = res.batch_records
    check([r.result for r in rows] == [0, 0, 2], f"duplicate keys: {[r.result for r in rows]}")
    check(rows[0].record[2]["i"] == 3 and rows[1].record[2]["i"] == 3, "duplicate keys: both rows read")

    # a key in a namespace the node does not serve: that row fails, the others are read
    try:
        res = client.batch_read([key(st, 1), ("nosuchns", st, 1), key(st, 2)])
        rows = res.batch_records
        check(rows[0].result == 0 and rows[0].record[2]["i"] == 1, f"unknown ns batch row 0: {rows[0].result}")
        check(rows[1].result not in (0, 2) and rows[1].record is None, f"unknown ns row: {rows[1].result}")
        check(rows[2].result == 0 and rows[2].record[2]["i"] == 2, f"unknown ns batch row 2: {rows[2].result}")
    except (ex.NamespaceNotFound, ex.ClientError, ex.InvalidRequest) as e:
        check(False, f"a batch with one unknown-namespace key failed as a whole: {e!r}")

    # batch_write: mixed writes, reads and removes, one result per row
    client.put(key(st, "exists"), {"a": 1})
    recs = br.BatchRecords([
        br.Write(key(st, "w1"), [op.write("a", 10), op.read("a")]),
        br.Write(key(st, "exists"), [op.write("a", 2)], policy={"exists": aerospike.POLICY_EXISTS_CREATE}),
        br.Write(key(st, "w2"), [op.write("a", 20)], policy={"exists": aerospike.POLICY_EXISTS_CREATE}),
        br.Read(key(st, 5), [op.read("s")]),
        br.Read(key(st, 6), None, read_all_bins=True),
        br.Read(key(st, "nope"), [op.read("s")]),
        br.Remove(key(st, 7)),
        br.Remove(key(st, "nope")),
        br.Write(key(st, "exists"), [op.increment("a", 5), op.read("a")]),
        br.Write(key(st, 8), [op.write("s", "x")], meta={"gen": 99}, policy={"gen": aerospike.POLICY_GEN_EQ}),
        br.Write(key(st, "nope2"), [op.write("a", 1)], policy={"exists": aerospike.POLICY_EXISTS_UPDATE}),
    ])
    out = client.batch_write(recs)
    rows = out.batch_records
    codes = [r.result for r in rows]
    check(codes == [0, 5, 0, 0, 0, 2, 0, 2, 0, 3, 2], f"batch_write per-row results {codes}")
    check(rows[0].record is not None and rows[0].record[2] == {"a": 10}, f"write+read row: {rows[0].record}")
    check(rows[3].record[2] == {"s": "v5"}, f"read row: {rows[3].record}")
    check(rows[4].record[2] == {"i": 6, "s": "v6", "l": [6, "x"]}, f"read all row: {rows[4].record}")
    check(rows[8].record[2] == {"a": 6}, f"increment row: {rows[8].record}")
    check(out.result in (0, -16), f"batch_write overall result {out.result} (-16: some rows failed)")
    # and the writes took effect, the failed rows changed nothing
    check(client.get(key(st, "w1"))[2] == {"a": 10}, "w1 written")
    check(client.get(key(st, "w2"))[2] == {"a": 20}, "w2 written")
    _, meta, bins = client.get(key(st, "exists"))
    check(bins == {"a": 6} and meta["gen"] == 2, f"create-only row changed nothing: {meta} {bins}")
    check(client.exists(key(st, 7))[1] is None, "batch remove removed 7")
    check(client.get(key(st, 8))[2]["s"] == "v8", "generation-mismatch row changed nothing")
    check(client.exists(key(st, "nope2"))[1] is None, "update-only row created nothing")

    # more write rows: replace, touch with a TTL, a delete op, a type error; keys in other sets
    # and without a set in the same batch (no REPEAT rows); send-key rows
    client.put(key("b2", 1), {"i": 1001})
    client.put((NS, None, "noset"), {"i": 1002})
    out = client.batch_write(br.BatchRecords([
        br.Write(key(st, 20), [op.write("z", 1)], policy={"exists": aerospike.POLICY_EXISTS_REPLACE}),
        br.Write(key(st, 21), [op.touch()], meta={"ttl": 500}),
        br.Write(key(st, 22), [op.delete()]),
        br.Write(key(st, 23), [op.increment("s", 1)]),
        br.Read(key("b2", 1), [op.read("i")]),
        br.Read((NS, None, "noset"), None, read_all_bins=True),
        br.Write(key("sk", "k1"), [op.write("a", 1)], policy={"key": aerospike.POLICY_KEY_SEND}),
        br.Remove(key(st, 24), policy={"gen": aerospike.POLICY_GEN_EQ, "generation": 7}),
    ]))
    rows = out.batch_records
    codes = [r.result for r in rows]
    check(codes == [0, 0, 0, 12, 0, 0, 0, 3], f"more write rows: {codes}")
    check(client.get(key(st, 20))[2] == {"z": 1}, "replace row")
    check(0 < client.exists(key(st, 21))[1]["ttl"] <= 500, "touch row sets the TTL")
    check(client.exists(key(st, 22))[1] is None, "delete-op row")
    check(client.get(key(st, 23))[2]["s"] == "v23", "type-error row changed nothing")
    check(rows[4].record[2] == {"i": 1001} and rows[5].record[2] == {"i": 1002}, "other-set rows")
    check(client.exists(key(st, 24))[1] is not None, "generation-mismatch remove kept 24")
    recs = client.query(NS, "sk").results()
    check([r[0][2] for r in recs] == ["k1"], f"send-key row stored its key: {[r[0] for r in recs]}")
    # per-row read policy with a filter
    out = client.batch_write(br.BatchRecords([
        br.Read(key(st, i), [op.read("i")], policy={"expressions": exp.GT(exp.IntBin("i"), 5).compile()})
        for i in range(4, 8)
    ]))
    codes = [r.result for r in out.batch_records]
    check(codes == [27, 27, 0, 2], f"per-row filter (7 was removed above): {codes}")

    # batch_operate: the same ops on many keys (some missing: an increment creates them)
    op_keys = [key(st, i) for i in range(100, 160)]
    out = client.batch_operate(op_keys, [op.increment("i", 1000), op.read("i")])
    rows = out.batch_records
    check(len(rows) == 60, f"batch_operate rows {len(rows)}")
    for i, row in zip(range(100, 160), rows):
        check(row.result == 0, f"operate row {i}: {row.result}")
        want = i + 1000 if i < n_present else 1000
        check(row.record is not None and row.record[2] == {"i": want}, f"operate row {i}: {row.record}")
    check(client.get(key(st, 120))[2]["i"] == 1120, "batch_operate applied")

    # batch_operate with a create-only write policy: the existing keys fail with 5, new ones succeed
    out = client.batch_operate([key(st, 1), key(st, "new-op"), key(st, 2)], [op.write("z", 1)],
                               policy_batch_write={"exists": aerospike.POLICY_EXISTS_CREATE})
    codes = [r.result for r in out.batch_records]
    check(codes == [5, 0, 5], f"batch_operate create-only rows {codes}")
    check("z" not in client.get(key(st, 1))[2], "create-only operate changed nothing")

    # batch_remove: present keys go, missing keys report 2
    rm_keys = [key(st, i) for i in (10, 11, 12, 190, 13)]
    out = client.batch_remove(rm_keys)
    codes = [r.result for r in out.batch_records]
    check(codes == [0, 0, 0, 2, 0], f"batch_remove rows {codes}")
    for i in (10, 11, 12, 13):
        check(client.exists(key(st, i))[1] is None, f"batch_remove removed {i}")
    check(client.exists(key(st, 14))[1] is not None, "batch_remove left 14")

    # a record past its TTL reads as not found in a batch
    client.put(key(st, "short"), {"a": 1}, policy={"ttl": 1})
    client.put(key(st, "long"), {"a": 1}, policy={"ttl": 1000})
    time.sleep(2.2)
    res = client.batch_read([key(st, "short"), key(st, "long")])
    codes = [r.result for r in res.batch_records]
    check(codes == [2, 0], f"expired record in a batch: {codes}")

    # a larger batch: 1000 keys, all present
    big = [key(st, f"big{i}") for i in range(1000)]
    for i, k in enumerate(big):
        client.put(k, {"i": i})
    res = client.batch_read(big)
    check(all(r.result == 0 and r.record[2] == {"i": i} for i, r in enumerate(res.batch_records)),
          "1000-key batch placed by index")


# ---------------------------------------------------------------------------------------------
N_Q = 300


def run_scan():
    st = "q"
    # records that expire before the scans
    for i in range(10):
        client.put(key(st, 10_000 + i), {"i": 10_000 + i, "n": 99}, policy={"ttl": 1})
    for i in range(N_Q):
        client.put(key(st, i), {"i": i, "s": f"v{i}", "n": i % 100})
    for i in range(50):
        client.put(key("other", 1000 + i), {"i": 1000 + i, "n": 0})
    for i in range(20):
        client.put((NS, None, 2000 + i), {"i": 2000 + i, "n": 0})
    all_q = list(range(N_Q))
    time.sleep(2.2)  # the TTL 1 records are now past their void time

    # query(ns, set).results(): each live record of the set once, all bins, its digest
    recs = client.query(NS, st).results()
    exactly(recs, all_q, "query(test, q).results()", st)
    for _, _, bins in recs:
        i = bins["i"]
        check(bins == {"i": i, "s": f"v{i}", "n": i % 100}, f"query bins {bins}")

    # foreach
    got = []
    client.query(NS, st).foreach(lambda rec: got.append(rec))
    exactly(got, all_q, "query foreach", st)

    # records_per_second: the node holds the stream back to the rate (a lower bound on the time,
    # so a slow machine cannot fail it; chunks of 0.1 s of the rate go out before the rate is
    # checked); the records are still all there, once each
    rate = N_Q
    q = client.query(NS, st)
    q.records_per_second = rate
    t0 = time.monotonic()
    recs = q.results({"total_timeout": 20000})
    took = time.monotonic() - t0
    exactly(recs, all_q, "query with records_per_second", st)
    # each node holds its own stream to the rate (as Aerospike does): per-core mode shows
    # every worker as a node
    nodes = len(client.get_nodes())
    check(took >= 0.5 / nodes,
          f"{N_Q} records at {rate}/s per node on {nodes} node(s) took {took:.3f} s "
          f"(about {1 / nodes:.1f} s expected)")

    # large records: the scan reply spans several protos
    blob = bytes(range(256)) * 64  # 16 KiB
    big_ids = list(range(5000, 5100))
    for i in big_ids:
        client.put(key("bigrec", i), {"i": i, "b": blob + i.to_bytes(4, "big")})
    recs = client.query(NS, "bigrec").results()
    exactly(recs, big_ids, "scan of 100 x 16 KiB records", "bigrec")
    check(all(b["b"] == blob + b["i"].to_bytes(4, "big") for _, _, b in recs), "16 KiB bins intact")

    # select
    q = client.query(NS, st)
    q.select("s", "i", "missing")
    recs = q.results()
    exactly(recs, all_q, "query select")
    check(all(set(b) == {"s", "i"} and b["s"] == f"v{b['i']}" for _, _, b in recs), "query select bins")

    # read ops as the projection; a short query
    q = client.query(NS, st)
    q.add_ops([op.read("s")])
    recs = q.results()
    check(sorted(b["s"] for _, _, b in recs) == sorted(f"v{i}" for i in all_q) and all(len(b) == 1 for _, _, b in recs),
          "query with read ops")
    recs = client.query(NS, st).results({"expected_duration": aerospike.QUERY_DURATION_SHORT})
    exactly(recs, all_q, "short query", st)

    # the Scan API
    recs = client.scan(NS, st).results()
    exactly(recs, all_q, "scan(test, q).results()", st)
    s = client.scan(NS, st)
    s.select("n")
    got = []
    s.foreach(lambda *a: got.append(a[-1]))
    check(len(got) == N_Q and all(set(b) == {"n"} for _, _, b in got), "scan select foreach")

    # whole namespace (set None) vs a set
    recs = client.scan(NS).results()
    exactly(recs, all_q + list(range(1000, 1050)) + list(range(2000, 2020)) + big_ids, "scan(test) whole namespace")
    recs = client.query(NS, "other").results()
    exactly(recs, list(range(1000, 1050)), "query(test, other)", "other")
    check(client.query(NS, "nosuchset").results() == [], "a set with no records")

    # partition filter by id: exactly the records of that partition
    by_pid = {}
    for i in all_q:
        by_pid.setdefault(pid(st, i), []).append(i)
    busiest = max(by_pid, key=lambda p: len(by_pid[p]))
    for p in [busiest, min(by_pid), max(by_pid)]:
        recs = client.query(NS, st).results({"partition_filter": {"begin": p, "count": 1}})
        exactly(recs, by_pid[p], f"partition {p}", st)
    empty_pid = next(p for p in range(4096) if p not in by_pid)
    check(client.query(NS, st).results({"partition_filter": {"begin": empty_pid, "count": 1}}) == [],
          "an empty partition")
    # by range
    for begin, count in [(0, 2048), (2048, 2048), (1000, 500), (4095, 1), (0, 4096)]:
        want = [i for i in all_q if begin <= pid(st, i) < begin + count]
        recs = client.query(NS, st).results({"partition_filter": {"begin": begin, "count": count}})
        exactly(recs, want, f"partition range {begin}+{count}", st)
        got = []
        client.scan(NS, st).foreach(lambda *a: got.append(a[-1]), {"partition_filter": {"begin": begin, "count": count}})
        exactly(got, want, f"scan partition range {begin}+{count}", st)

    # pagination: pages of max_records until is_done; the union is every record exactly once
    for page_size, pf in [(37, None), (1, {"begin": 1000, "count": 500}), (299, None), (300, None), (1000, None)]:
        q = client.query(NS, st)
        q.max_records = page_size
        q.paginate()
        pages = []
        policy = {"partition_filter": pf} if pf else {}
        rounds = 0
        while not q.is_done():
            rounds += 1
            check(rounds <= N_Q + 2, f"pagination by {page_size} does not end")
            page = q.results(policy)
            check(len(page) <= page_size, f"page of {len(page)} > max_records {page_size}")
            pages.append(page)
        union = [r for p in pages for r in p]
        want = all_q if pf is None else [i for i in all_q if 1000 <= pid(st, i) < 1500]
        exactly(union, want, f"pagination by {page_size} over {pf}", st)
        full = [p for p in pages if len(p) == page_size]
        # with several nodes (per-core mode) the client splits each page over them, so a page
        # near the end may come up short on one node
        short_ok = len(client.get_nodes()) - 1
        check(len(full) >= len(want) // page_size - short_ok,
              f"pagination by {page_size}: page sizes {[len(p) for p in pages]}")

    # the Scan API paginates too
    s = client.scan(NS, st)
    s.paginate()
    union = []
    rounds = 0
    while not s.is_done():
        rounds += 1
        check(rounds < 100, "scan pagination does not end")
        page = s.results({"max_records": 50})
        check(len(page) <= 50, f"scan page of {len(page)}")
        union += page
    exactly(union, all_q, "scan pagination by 50", st)

    # resume from a partition status after a stopped foreach
    stop_after = 40
    got = []

    def first(*a):
        if len(got) == stop_after:
            return False
        got.append(a[-1])

    s = client.scan(NS, st)
    s.foreach(first, {"partition_filter": {"begin": 0, "count": 4096}})
    check(len(got) == stop_after, f"stopped foreach got {len(got)}")
    status = s.get_partitions_status()
    rest = []
    s2 = client.scan(NS, st)
    s2.foreach(lambda *a: rest.append(a[-1]),
               {"partition_filter": {"begin": 0, "count": 4096, "partition_status": status}})
    exactly(got + rest, all_q, "scan resumed from partition status", st)

    # expression filters in the policy
    recs = client.query(NS, st).results({"expressions": exp.GT(exp.IntBin("n"), 50).compile()})
    exactly(recs, [i for i in all_q if i % 100 > 50], "filter n > 50", st)
    recs = client.scan(NS, st).results({"expressions": exp.Eq(exp.IntBin("n"), 7).compile()})
    exactly(recs, [i for i in all_q if i % 100 == 7], "scan filter n == 7", st)
    recs = client.query(NS, st).results({"expressions": exp.GT(exp.IntBin("n"), 1000).compile()})
    check(recs == [], "filter matching nothing")
    t = time.time_ns()
    time.sleep(0.05)
    touched = list(range(0, N_Q, 7))
    for i in touched:
        client.put(key(st, i), {"u": 1})
    recs = client.query(NS, st).results({"expressions": exp.GT(exp.LastUpdateTime(), t).compile()})
    exactly(recs, touched, "filter last-update > t", st)
    recs = client.query(NS, st).results({"expressions": exp.LE(exp.LastUpdateTime(), t).compile()})
    exactly(recs, [i for i in all_q if i not in touched], "filter last-update <= t", st)
    # a filter with pagination and a partition range together
    q = client.query(NS, st)
    q.max_records = 10
    q.paginate()
    union = []
    pol = {"expressions": exp.GT(exp.IntBin("n"), 50).compile(), "partition_filter": {"begin": 0, "count": 2048}}
    while not q.is_done():
        union += q.results(pol)
        check(len(union) <= N_Q, "filtered pagination does not end")
    exactly(union, [i for i in all_q if i % 100 > 50 and pid(st, i) < 2048], "filtered paginated range", st)

    # scans while another client keeps updating the same records: each record still once
    stop = threading.Event()
    updates = [0]

    def writer():
        w = aerospike.client({"hosts": [("127.0.0.1", port)], "policies": {"write": slow}}).connect()
        k = 0
        while not stop.is_set():
            w.put(key(st, k % N_Q), {"w": k})
            k += 1
        updates[0] = k
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        for r in range(3):
            exactly(client.query(NS, st).results(), all_q, f"scan {r} during updates", st)
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    check(updates[0] > 0, "the writer ran")

    # deleted records are not scanned
    for i in range(0, N_Q, 3):
        client.remove(key(st, i))
    live = [i for i in all_q if i % 3 != 0]
    exactly(client.query(NS, st).results(), live, "scan after deletes", st)

    # a namespace the node does not serve
    try:
        client.query("nosuchns", st).results()
        check(False, "query of an unknown namespace must fail")
    except ex.AerospikeError:
        check(True, "")


# ---------------------------------------------------------------------------------------------
# truncate: the data and the expected state after the set truncates
SETS_WANT = {
    "a": list(range(500, 510)),          # truncated, then 10 written after
    "b": list(range(100)),               # untouched
    "c": list(range(1050, 1100)),        # truncated with a lut between the old and new halves
    "d": [],                             # truncated, nothing after
    "f": [99],                           # truncated; a later truncate with an older lut keeps 99
    "x": [],                             # TTL 1: expired, and stays so over restarts
}


def count_set(st):
    return sorted(ids(client.query(NS, st).results()))


def verify_sets(round_no):
    """Checks the state after the set truncates; then writes one record into the truncated set d
    (round `round_no`'s), which must be visible at once and in later rounds: a write after a
    restart is newer than every truncate before it."""
    want_d = list(range(900, 900 + round_no))
    for st, want in SETS_WANT.items():
        want = want_d if st == "d" else want
        exactly(client.query(NS, st).results(), want, f"set {st} after set truncates (round {round_no})", st)
    for i in range(0, 100, 9):
        check(client.exists(key("a", i))[1] is None, f"truncated a/{i} is gone")
        try:
            client.get(key("a", i))
            check(False, f"get of truncated a/{i} must fail")
        except ex.RecordNotFound:
            check(True, "")
    res = client.batch_read([key("a", 1), key("a", 500), key("b", 1), key("d", 1)])
    codes = [r.result for r in res.batch_records]
    check(codes == [2, 0, 0, 2], f"batch read after truncate: {codes}")
    client.put(key("d", 900 + round_no), {"i": 900 + round_no})
    check(client.get(key("d", 900 + round_no))[2] == {"i": 900 + round_no}, "a write into a truncated set")
    check(count_set("d") == want_d + [900 + round_no], f"set d after round {round_no}: {count_set('d')}")


def run_truncate_sets():
    for i in range(20):
        client.put(key("x", i), {"i": i}, policy={"ttl": 1})
    time.sleep(2.1)  # void times are whole seconds
    for i in range(100):
        client.put(key("a", i), {"i": i})
        client.put(key("b", i), {"i": i})
        client.put(key("d", i), {"i": i})
    for i in range(1000, 1050):
        client.put(key("c", i), {"i": i})
    check(len(count_set("a")) == 100, "set a written")

    # set truncate, lut 0 = now
    check(client.truncate(NS, "a", 0, INFO) == 0, "truncate a")
    check(count_set("a") == [], f"set a empty after truncate: {count_set('a')}")
    check(count_set("b") == list(range(100)), "set b survives truncate of a")
    check(client.exists(key("a", 5))[1] is None, "a/5 gone")
    # writes after the truncate survive, including re-creating a truncated key
    for i in range(500, 510):
        client.put(key("a", i), {"i": i})
    check(count_set("a") == list(range(500, 510)), "writes after truncate survive")
    client.put(key("a", 7), {"i": 7})
    _, meta, bins = client.get(key("a", 7))
    check(bins == {"i": 7} and meta["gen"] >= 1, f"re-created a/7: {meta} {bins}")
    client.remove(key("a", 7))

    # truncate with a lut in the past: only the records written before it go
    time.sleep(0.05)
    cut = time.time_ns()
    time.sleep(0.05)
    for i in range(1050, 1100):
        client.put(key("c", i), {"i": i})
    check(len(count_set("c")) == 100, "set c has 100")
    check(client.truncate(NS, "c", cut, INFO) == 0, "truncate c with lut")
    check(count_set("c") == list(range(1050, 1100)), f"lut truncate kept only newer: {len(count_set('c'))}")

    # a truncate whose lut is older than the set's last one removes nothing newer
    before = time.time_ns()
    time.sleep(0.05)
    for i in range(10):
        client.put(key("f", i), {"i": i})
    time.sleep(0.05)
    check(client.truncate(NS, "f", 0, INFO) == 0, "truncate f")
    client.put(key("f", 99), {"i": 99})
    time.sleep(0.05)
    check(client.truncate(NS, "f", before, INFO) == 0, "truncate f with an older lut")
    check(count_set("f") == [99], f"older lut keeps the newer record: {count_set('f')}")

    # a lut in the future is refused (4, as Aerospike) and removes nothing; an unknown
    # namespace is answered ok and changes nothing, as Aerospike CE 8.1.2.0 does (issue 17)
    try:
        client.truncate(NS, "b", time.time_ns() + 3600 * 10**9, INFO)
        check(False, "a truncate lut in the future must be refused")
    except ex.AerospikeError as e:
        check(e.code == 4, f"a future lut answers 4, got {e.code}")
        check(count_set("b") == list(range(100)), "a refused truncate removes nothing")
    check(client.truncate("nosuchns", "b", 0, INFO) == 0, "truncate of an unknown namespace is ok")
    check(count_set("b") == list(range(100)), "truncate of another namespace removes nothing")

    # truncate of a set that has no records, then of d
    check(client.truncate(NS, "nosuchset", 0, INFO) == 0, "truncate of an empty set")
    check(client.truncate(NS, "d", 0, INFO) == 0, "truncate d")
    verify_sets(0)


def run_truncate_ns(round_no):
    verify_sets(round_no)
    # a namespace truncate with a lut: every set loses what is older, keeps what is newer
    for i in range(5):
        client.put(key("g", i), {"i": i})
    time.sleep(0.05)
    cut = time.time_ns()
    time.sleep(0.05)
    for i in range(5, 10):
        client.put(key("g", i), {"i": i})
    check(client.truncate(NS, None, cut, INFO) == 0, "truncate namespace with a lut")
    exactly(client.scan(NS).results(), list(range(5, 10)), "namespace truncate with a lut", "g")
    check(client.truncate(NS, None, 0, INFO) == 0, "truncate namespace")
    for st in SETS_WANT:
        check(count_set(st) == [], f"set {st} empty after namespace truncate")
    check(client.scan(NS).results() == [], "namespace empty after truncate")
    for i in range(30):
        client.put(key("e", i), {"i": i})
    verify_ns(0)


def verify_ns(round_no):
    """The namespace holds set e's 30 records and one more per earlier round; writes one more."""
    want = list(range(30)) + list(range(950, 950 + round_no))
    exactly(client.scan(NS).results(), want, f"namespace after its truncate (round {round_no})", "e")
    check(client.exists(key("b", 1))[1] is None, "b/1 gone after namespace truncate")
    client.put(key("e", 950 + round_no), {"i": 950 + round_no})
    check(count_set("e") == want + [950 + round_no], f"a write after the namespace truncate, round {round_no}")


modes = {
    "batch": run_batch,
    "scan": run_scan,
    "truncate-sets": run_truncate_sets,
    "truncate-ns": run_truncate_ns,
    "verify-sets": verify_sets,
    "verify-ns": verify_ns,
}
if mode in ("batch", "scan", "truncate-sets"):
    modes[mode]()
else:
    modes[mode](int(sys.argv[3]))
client.close()
print(f"{mode}: {checks} checks passed")
