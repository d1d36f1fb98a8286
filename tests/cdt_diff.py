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
    if args.json:
        json.dump({"identical": [c["id"] for c, _, _ in same],
                   "different": {c["id"]: bad for c, _, bad in different}}, open(args.json, "w"), indent=1)
    return 0 if not different else 1


if __name__ == "__main__":
    sys.exit(main())
