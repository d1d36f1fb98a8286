#!/usr/bin/env python3
"""Differential test of CDT / bit / HLL / expression ops: Bolide against a real Aerospike CE.

A dev tool (CI has no CE). It runs the ~244 hand-encoded cases of the spec's verification script
(`verify.py` in ../shared/spec/cdt-verify, CDT spec Appendix A) against two servers and prints
every case whose answers differ (result code, reply ops, stored bins, Python client read-back).

  # both live (Bolide on 3201, CE on 3200):
  python3 tests/cdt_diff.py --bolide 3201 --ce 3200
  # Bolide against the answers CE 8.1.2.0 gave when the spec was written:
  python3 tests/cdt_diff.py --bolide 3201 --ce-json ../shared/spec/cdt-verify/results.json
  # rewrite the unit-test fixture from a CE results file (node/src/cdt/testdata):
  python3 tests/cdt_diff.py --fixture ../shared/spec/cdt-verify/results.json

Needs `pip install aerospike==19.3.0`. Exit status 0 when every case is identical.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "node", "src", "cdt", "testdata", "ce-8.1.2.0.txt")
# Particle type of a plain WRITE in the "raw" cases, by bin name (verify.py's convention).
WRITE_PT = {"h": 18, "m": 19, "l": 20}
COMPARED = ("rc", "reply", "stored", "py")
# Cases that carry a filter expression (field 43), which the fixture format does not hold.
FILTER_CASES = {"e01", "e02", "e05", "e11"}


def run_verify(verify_dir, port, out):
    env = dict(os.environ, PORT=str(port))
    subprocess.run([sys.executable, os.path.join(verify_dir, "verify.py"), "--json", out],
                   cwd=verify_dir, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.load(open(out))["cases"]


def diff(a_cases, b_cases):
    b = {c["id"]: c for c in b_cases}
    same, different = [], []
    for c in a_cases:
        o = b.get(c["id"])
        if o is None:
            continue
        bad = [k for k in COMPARED if c.get(k) != o.get(k)]
        (different if bad else same).append((c, o, bad))
    return same, different


def random_ops(rng):
    """One random list or map operation through the official client's helpers."""
    import aerospike as A
    from aerospike_helpers.operations import list_operations as lop
    from aerospike_helpers.operations import map_operations as mop
    v = lambda: rng.choice([rng.randint(-5, 9), rng.choice(["a", "b", "zz"]), None, 1.5, [1, 2]])  # noqa: E731
    i = lambda: rng.randint(-7, 7)  # noqa: E731
    lrt = rng.choice([A.LIST_RETURN_NONE, A.LIST_RETURN_INDEX, A.LIST_RETURN_REVERSE_INDEX, A.LIST_RETURN_RANK,
                      A.LIST_RETURN_REVERSE_RANK, A.LIST_RETURN_COUNT, A.LIST_RETURN_VALUE, A.LIST_RETURN_EXISTS])
    mrt = rng.choice([A.MAP_RETURN_NONE, A.MAP_RETURN_INDEX, A.MAP_RETURN_RANK, A.MAP_RETURN_COUNT,
                      A.MAP_RETURN_KEY, A.MAP_RETURN_VALUE, A.MAP_RETURN_KEY_VALUE, A.MAP_RETURN_EXISTS,
                      A.MAP_RETURN_REVERSE_RANK, A.MAP_RETURN_ORDERED_MAP, A.MAP_RETURN_UNORDERED_MAP])
    inv = rng.random() < 0.3
    k = lambda: rng.choice(["a", "b", "c", "d", 1, 2])  # noqa: E731
    choices = [
        lambda: lop.list_append("l", v()),
        lambda: lop.list_append_items("l", [v(), v()]),
        lambda: lop.list_insert("l", i(), v()),
        lambda: lop.list_pop("l", i()),
        lambda: lop.list_remove_range("l", i(), rng.randint(0, 4)),
        lambda: lop.list_set("l", i(), v()),
        lambda: lop.list_increment("l", i(), rng.choice([1, 2.5, -3])),
        lambda: lop.list_sort("l", rng.choice([0, 1, 2])),
        lambda: lop.list_set_order("l", rng.choice([0, 1])),
        lambda: lop.list_trim("l", i(), rng.randint(0, 4)),
        lambda: lop.list_get_by_rank_range("l", i(), lrt, rng.randint(0, 4), inverted=inv),
        lambda: lop.list_get_by_index_range("l", i(), lrt, rng.randint(0, 4), inverted=inv),
        lambda: lop.list_get_by_value_range("l", lrt, v(), v(), inverted=inv),
        lambda: lop.list_get_by_value("l", v(), lrt, inverted=inv),
        lambda: lop.list_remove_by_value_list("l", [v(), v()], lrt, inverted=inv),
        lambda: lop.list_get_by_value_rank_range_relative("l", v(), i(), lrt, rng.randint(0, 4), inverted=inv),
        lambda: lop.list_remove_by_rank_range("l", i(), lrt, rng.randint(0, 4), inverted=inv),
        lambda: mop.map_put("m", k(), v()),
        lambda: mop.map_put_items("m", {k(): v(), k(): v()}),
        lambda: mop.map_increment("m", k(), rng.choice([1, 2.5])),
        lambda: mop.map_get_by_rank_range("m", i(), rng.randint(0, 4), mrt, inverted=inv),
        lambda: mop.map_get_by_index_range("m", i(), rng.randint(0, 4), mrt, inverted=inv),
        lambda: mop.map_get_by_key_range("m", k(), k(), mrt, inverted=inv),
        lambda: mop.map_get_by_value_range("m", v(), v(), mrt, inverted=inv),
        lambda: mop.map_remove_by_value("m", v(), mrt, inverted=inv),
        lambda: mop.map_get_by_key_list("m", [k(), k()], mrt, inverted=inv),
        lambda: mop.map_remove_by_key_index_range_relative("m", k(), i(), rng.randint(0, 4), mrt, inverted=inv),
        lambda: mop.map_get_by_value_rank_range_relative("m", v(), i(), rng.randint(0, 4), mrt, inverted=inv),
        lambda: mop.map_set_policy("m", {"map_order": rng.choice([0, 1, 3])}),
    ]
    return rng.choice(choices)()


def random_diff(ports, n, seed):
    """Random op sequences on both servers; returns (identical, different) op counts."""
    import random
    import aerospike
    clients = [aerospike.client({"hosts": [("127.0.0.1", p)]}).connect() for p in ports]
    rng = random.Random(seed)
    same = diff_n = 0
    for r in range(n // 10):
        key = ("test", "cdtrand", f"r{r}")
        start = {"l": [rng.randint(0, 5) for _ in range(rng.randint(0, 6))],
                 "m": {rng.choice("abcd"): rng.randint(0, 5) for _ in range(rng.randint(0, 4))}}
        for c in clients:
            c.put(key, start)
        for _ in range(10):
            o = random_ops(rng)
            out = []
            for c in clients:
                try:
                    res = ("ok", c.operate(key, [o])[2])
                except Exception as e:  # noqa: BLE001
                    res = ("err", getattr(e, "code", repr(e)))
                out.append((res, c.get(key)[2]))
            if out[0] == out[1]:
                same += 1
            else:
                diff_n += 1
                print(f"random op differs: {o}\n    bolide {out[0]}\n    ce     {out[1]}")
    return same, diff_n


def fixture(results, path):
    """One line per case: id|info1|info2|setup|request|rc|reply|stored (hex values)."""
    lines = ["# CE 8.1.2.0 answers to cdt-verify/verify.py (CDT spec appendix A); tests/cdt_diff.py --fixture"]
    for c in json.load(open(results))["cases"]:
        if c["id"] in FILTER_CASES:
            continue
        setup = ",".join(f"{n}={pt}:{v}" for n, (pt, v) in c["setup"].items())
        req = ";".join(
            f"{ot}:{n}:{(WRITE_PT[n] if ot == 2 else (4 if p else 0))}:{p}" for ot, n, p in c["request"])
        reply = ";".join(f"{ot}:{n}:{pt}:{v}" for ot, n, pt, v in c["reply"])
        stored = ",".join(f"{n}={pt}:{v}" for n, (pt, v) in c["stored"].items())
        lines.append("|".join([c["id"], str(c["info1"]), str(c["info2"]), setup, req, str(c["rc"]), reply, stored]))
    open(path, "w").write("\n".join(lines) + "\n")
    print(f"wrote {len(lines) - 1} cases to {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bolide", type=int, help="Bolide port")
    ap.add_argument("--ce", type=int, help="Aerospike CE port")
    ap.add_argument("--ce-json", help="CE answers recorded earlier (verify.py --json)")
    ap.add_argument("--verify-dir", default=os.path.join(HERE, "..", "..", "shared", "spec", "cdt-verify"))
    ap.add_argument("--fixture", metavar="RESULTS_JSON", help="write the unit-test fixture and exit")
    ap.add_argument("--json", help="write the per-case comparison here")
    ap.add_argument("--random", type=int, default=0, metavar="N",
                    help="also run N random list/map ops through the Python client on both (needs --ce)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.fixture:
        fixture(args.fixture, FIXTURE)
        return 0
    if not args.bolide or not (args.ce or args.ce_json):
        ap.error("need --bolide and one of --ce / --ce-json")
    tmp = tempfile.mkdtemp(prefix="cdt-diff-")
    ours = run_verify(args.verify_dir, args.bolide, os.path.join(tmp, "bolide.json"))
    theirs = (run_verify(args.verify_dir, args.ce, os.path.join(tmp, "ce.json")) if args.ce
              else json.load(open(args.ce_json))["cases"])
    same, different = diff(ours, theirs)
    for c, o, bad in different:
        print(f"{c['id']}: {c['title']}")
        for k in bad:
            print(f"    {k}: bolide {c.get(k)!r}\n    {' ' * len(k)}  ce     {o.get(k)!r}")
    print(f"identical {len(same)}, different {len(different)}, of {len(same) + len(different)} cases")
    rnd_diff = 0
    if args.random and args.ce:
        rs, rnd_diff = random_diff([args.bolide, args.ce], args.random, args.seed)
        print(f"random ops (seed {args.seed}): identical {rs}, different {rnd_diff}")
    if args.json:
        json.dump({"identical": [c["id"] for c, _, _ in same],
                   "different": {c["id"]: bad for c, _, bad in different}}, open(args.json, "w"), indent=1)
    return 0 if not different and not rnd_diff else 1


if __name__ == "__main__":
    sys.exit(main())
