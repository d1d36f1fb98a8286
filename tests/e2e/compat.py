"""Differential checks of the answers a client can see (issue 17), with the official Python
client (aerospike 19.3.0).

    compat.py PORT                      Bolide on 127.0.0.1:PORT against the recorded answers
    compat.py PORT --against HOST:PORT  the same requests to Bolide and to a real Aerospike
                                        server; prints every difference in result code, bins,
                                        generation and TTL (and info text), then checks Bolide
                                        against the recorded answers as well

Each case sends the same requests and returns a dict of what came back: result codes, bins,
generations, TTLs (as a range where the clock makes them vary) and info values. The recorded
answers (EXPECTED) are Aerospike CE 8.1.2.0's, taken with --against, except where a case says
Bolide answers differently on purpose (SAME_AS_AEROSPIKE false: Bolide has no UDFs or secondary
indexes, and names itself in version/edition). Exit status 0: Bolide matched every recorded
answer.
"""
import socket
import struct
import sys
import time

import aerospike
from aerospike import exception as ex
from aerospike_helpers.operations import operations as op

NS, SET = "test", "compat"


def info(port, command, host="127.0.0.1"):
    """One info command over a raw socket (proto type 1); the value after the TAB."""
    s = socket.create_connection((host, port), timeout=10)
    body = (command + "\n").encode()
    s.sendall(struct.pack(">Q", (2 << 56) | (1 << 48) | len(body)) + body)
    hdr = b""
    while len(hdr) < 8:
        chunk = s.recv(8 - len(hdr))
        if not chunk:
            raise ConnectionError("closed before the info reply")
        hdr += chunk
    n = struct.unpack(">Q", hdr)[0] & ((1 << 48) - 1)
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed inside the info reply")
        data += chunk
    s.close()
    line = data.decode().split("\n", 1)[0]
    return line.split("\t", 1)[1] if "\t" in line else ""


def code_of(fn):
    """0 when fn() succeeds, else the server's (or client's) result code."""
    try:
        fn()
        return 0
    except ex.AerospikeError as e:
        return e.code


def config(port, ns=None):
    ctx = f"context=namespace;id={ns}" if ns else "context=service"
    value = info(port, f"get-config:{ctx}")
    return dict(kv.split("=", 1) for kv in value.split(";") if "=" in kv)


class Target:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.client = aerospike.client({"hosts": [(host, port)]}).connect()
        self.run_id = f"{int(time.time() * 1000) % 100000000}"

    def key(self, case, k):
        return (NS, SET, f"{case}-{k}-{self.run_id}")

    def info(self, command):
        return info(self.port, command, self.host)


# ----- the cases: each returns what the server answered -----


def case_modify_types(t):
    """Item 1: incr/append/prepend on a bin of another type answers 12; on a missing bin they
    create it with the operand, whatever its type."""
    c, k = t.client, t.key("modify", 1)
    c.put(k, {"i": 1, "s": "a", "f": 1.5})
    out = {
        "append_to_int": code_of(lambda: c.append(k, "i", "x")),
        "prepend_to_int": code_of(lambda: c.prepend(k, "i", "x")),
        "incr_string": code_of(lambda: c.increment(k, "s", 1)),
        "incr_float_by_int": code_of(lambda: c.increment(k, "f", 1)),
        "incr_int_by_float": code_of(lambda: c.increment(k, "i", 1.5)),
        "append_missing_bin": code_of(lambda: c.append(k, "new_s", "x")),
        "incr_missing_bin": code_of(lambda: c.increment(k, "new_i", 5)),
    }
    _, meta, bins = c.get(k)
    out["bins"] = sorted(bins.items())
    out["gen"] = meta["gen"]
    # A missing record: the op creates it.
    k2 = t.key("modify", 2)
    out["append_missing_record"] = code_of(lambda: c.append(k2, "s", "x"))
    out["missing_record_bins"] = sorted(c.get(k2)[2].items())
    return out


def case_select_no_bins(t):
    """Item 5: select(key, []) answers 4 (bin ops expected)."""
    c, k = t.client, t.key("select", 1)
    c.put(k, {"a": 1})
    return {
        "select_none": code_of(lambda: c.select(k, [])),
        "select_missing_record": code_of(lambda: c.select(t.key("select", 2), [])),
        "select_one": sorted(c.select(k, ["a"])[2].items()),
    }


def case_write_without_bins(t):
    """Item 6: a write that leaves no bin on a record that does not exist answers 2."""
    c = t.client
    k = t.key("nobins", 1)
    out = {
        "delete_all_missing": code_of(lambda: c.operate(k, [op.delete()])),
        "nil_bin_missing": code_of(lambda: c.put(k, {"a": None})),
        "exists_after": code_of(lambda: c.get(k)),
    }
    c.put(k, {"a": 1})
    out["delete_all_existing"] = code_of(lambda: c.operate(k, [op.delete()]))
    out["get_after_delete_all"] = code_of(lambda: c.get(k))
    return out


def case_touch_then_header(t):
    """Item 7 (the Python form): touch and a read of no bin in one operate."""
    c, k = t.client, t.key("touch", 1)
    c.put(k, {"a": 1, "b": "x"})
    _, meta, bins = c.operate(k, [op.touch(100)])
    return {"bins": sorted((bins or {}).items()), "gen": meta["gen"], "ttl": ttl_range(meta["ttl"], 100)}


def ttl_range(ttl, want):
    """A TTL as the bucket it falls in around `want` (the clock moves while a case runs)."""
    if ttl in (-1, 0xFFFFFFFF):
        return "never"
    return "ok" if want - 2 <= ttl <= want else f"off ({ttl}, wanted about {want})"


def case_ttl_expiry(t):
    """Item 8: a record with a 2 s TTL is kept until void_time < now: at least 2 s."""
    c, k = t.client, t.key("ttl", 1)
    # Write late in a second (s + 0.9): void_time = s + 2, so the record must live until
    # s + 3 (2.1 s); expiring at void_time <= now would end it at s + 2 (1.1 s).
    time.sleep((1.9 - (time.time() % 1.0)) % 1.0)
    c.put(k, {"a": 1}, meta={"ttl": 2})
    time.sleep(1.3)
    alive = code_of(lambda: c.get(k))
    time.sleep(2.1)
    gone = code_of(lambda: c.get(k))
    return {"at_1_3_s": alive, "at_3_4_s": gone}


def case_read_touch(t):
    """Item 2: read_touch_ttl_percent resets the TTL on a read once the TTL left is within
    that share of the TTL last written; the generation stays."""
    c = t.client
    ks = [t.key("rtouch", i) for i in range(5)]
    for k in ks:
        c.put(k, {"a": 1}, meta={"ttl": 6})
    time.sleep(2.2)
    c.get(ks[0], policy={"read_touch_ttl_percent": 30})  # 3.8 s of 6 left, over 30 %: no touch
    c.get(ks[1], policy={"read_touch_ttl_percent": 90})  # within 90 %: touch
    c.get(ks[2], policy={"read_touch_ttl_percent": -1})  # never
    c.get(ks[3])  # the namespace default: 0, never
    before = config(t.port, NS).get("default-read-touch-ttl-pct", "0")
    out0 = t.info(f"set-config:context=namespace;id={NS};default-read-touch-ttl-pct=90")
    try:
        c.get(ks[4])  # the namespace default, now 90 %: touch
    finally:
        t.info(f"set-config:context=namespace;id={NS};default-read-touch-ttl-pct={before}")
    time.sleep(0.3)
    out = {}
    for i, k in enumerate(ks):
        _, meta, _ = c.get(k, policy={"read_touch_ttl_percent": -1})
        out[f"k{i}"] = {"gen": meta["gen"], "touched": meta["ttl"] >= 5}
    out["bad_pct"] = code_of(lambda: c.get(ks[1], policy={"read_touch_ttl_percent": 101}))
    out["set_default_pct"] = out0
    return out


def case_truncate(t):
    """Item 4: truncate with a cut-off before 2010 or in the future answers 4; an unknown
    namespace answers ok."""
    c = t.client
    future = (int(time.time()) + 3600) * 1_000_000_000
    return {
        "future": code_of(lambda: c.truncate(NS, SET, future)),
        "before_2010": code_of(lambda: c.truncate(NS, SET, 1_000_000_000)),
        "unknown_ns": code_of(lambda: c.truncate("nosuchns", SET, 0)),
        "info_future": t.info(f"truncate:namespace={NS};set={SET};lut={future}"),
        "info_zero": t.info(f"truncate-namespace:namespace={NS};lut=1"),
        "info_unknown_ns": t.info(f"truncate:namespace=nosuchns;set={SET}"),
        "info_missing_set": t.info(f"truncate:namespace={NS}"),
    }


def case_config(t):
    """Item 9: get-config and set-config for the keys the clients' test harnesses set."""
    ns0 = config(t.port, NS)
    svc0 = config(t.port)
    keys = ["default-ttl", "nsup-period", "allow-ttl-without-nsup", "default-read-touch-ttl-pct"]
    out = {"ns_keys": [k for k in keys if k in ns0], "service_keys": [k for k in ["proto-fd-idle-ms", "query-max-done", "proto-fd-max"] if k in svc0]}
    setc = lambda rest: t.info(f"set-config:{rest}")
    try:
        out["set_default_ttl"] = setc(f"context=namespace;id={NS};default-ttl=100")
        out["default_ttl_now"] = config(t.port, NS).get("default-ttl")
        k = t.key("config", 1)
        t.client.put(k, {"a": 1})  # TTL 0: the namespace default
        out["default_ttl_applied"] = ttl_range(t.client.get(k)[1]["ttl"], 100)
        out["set_default_ttl_bad"] = setc(f"context=namespace;id={NS};default-ttl=abc")
        out["set_nsup_zero"] = setc(f"context=namespace;id={NS};nsup-period=0")
        out["set_default_ttl_without_nsup"] = setc(f"context=namespace;id={NS};default-ttl=50")
        out["set_default_ttl_zero"] = setc(f"context=namespace;id={NS};default-ttl=0")
        out["ttl_write_without_nsup"] = code_of(lambda: t.client.put(t.key("config", 2), {"a": 1}, meta={"ttl": 30}))
        out["set_allow_ttl"] = setc(f"context=namespace;id={NS};allow-ttl-without-nsup=true")
        out["ttl_write_allowed"] = code_of(lambda: t.client.put(t.key("config", 3), {"a": 1}, meta={"ttl": 30}))
        out["set_allow_bad"] = setc(f"context=namespace;id={NS};allow-ttl-without-nsup=maybe")
        out["set_nsup"] = setc(f"context=namespace;id={NS};nsup-period=120")
        out["nsup_now"] = config(t.port, NS).get("nsup-period")
        out["set_rt_pct"] = setc(f"context=namespace;id={NS};default-read-touch-ttl-pct=101")
        out["set_query_max_done"] = setc("context=service;query-max-done=50")
        out["query_max_done_now"] = config(t.port).get("query-max-done")
        out["set_query_max_done_bad"] = setc("context=service;query-max-done=10001")
        out["set_unknown"] = setc("context=service;no-such-key=1")
        out["set_bad_context"] = setc("context=nope;x=1")
        out["set_unknown_ns"] = setc("context=namespace;id=nosuchns;default-ttl=1")
        out["get_bad_context"] = t.info("get-config:context=nope")
        out["get_unknown_ns"] = t.info("get-config:context=namespace;id=nosuchns")
    finally:
        for key in keys:
            if key in ns0:
                setc(f"context=namespace;id={NS};{key}={ns0[key]}")
        if "query-max-done" in svc0:
            setc(f"context=service;query-max-done={svc0['query-max-done']}")
    return out


def case_udf_sindex(t):
    """Item 10: each of these answers in the server's form; none fails the connection."""
    out = {}
    for cmd in ["udf-list", "udf-get:filename=nosuch.lua", "sindex-list", f"sindex/{NS}", "sindex/nosuchns",
                f"sindex-exists:ns={NS};indexname=nosuch", f"sindex-delete:ns={NS};indexname=nosuch",
                "udf-remove:filename=nosuch.lua"]:
        out[cmd] = t.info(cmd)
    out["logs_has_sink"] = t.info("logs").startswith("0:")
    # The client call fails with an error, the client goes on.
    out["after"] = code_of(lambda: t.client.put(t.key("udf", 1), {"a": 1}))
    return out


def case_bolide_only_udf_sindex(t):
    """Item 10, where Bolide must differ: no UDF runs, no index is made."""
    return {
        "index_create": code_of(lambda: t.client.index_integer_create(NS, SET, "a", "compat_idx")),
        "udf_put": t.info("udf-put:filename=x.lua;content=eA==;content-len=4;udf-type=LUA").split(";")[0],
        "after": code_of(lambda: t.client.put(t.key("udf", 2), {"a": 1})),
    }


def case_version(t):
    """Item 11: the build clients gate on, and a name a person reads."""
    build = t.info("build")
    return {
        "build": build,
        "version_names_bolide": t.info("version").startswith("Bolide "),
        "version_ends_with_build": t.info("version").endswith(f" build {build}"),
        "edition_names_bolide": t.info("edition").startswith("Bolide "),
        "edition_not_enterprise": "Enterprise" not in t.info("edition"),
    }


def case_idle_close(t):
    """Item 12: proto-fd-idle-ms closes idle connections, read live by the sweep."""
    before = config(t.port).get("proto-fd-idle-ms", "0")
    out = {"set": t.info("set-config:context=service;proto-fd-idle-ms=300")}
    try:
        s = socket.create_connection((t.host, t.port), timeout=10)
        time.sleep(2.5)
        s.settimeout(5)
        try:
            closed = s.recv(1) == b""
        except (ConnectionResetError, socket.timeout) as e:
            closed = isinstance(e, ConnectionResetError)
        out["idle_closed"] = closed
        # A connection that keeps talking stays open.
        live = socket.create_connection((t.host, t.port), timeout=10)
        ok = True
        for _ in range(6):
            time.sleep(0.15)
            body = b"build\n"
            live.sendall(struct.pack(">Q", (2 << 56) | (1 << 48) | len(body)) + body)
            if not live.recv(64):
                ok = False
                break
        out["active_kept"] = ok
    finally:
        t.info(f"set-config:context=service;proto-fd-idle-ms={before}")
    return out


CASES = [
    ("modify_types", case_modify_types, True),
    ("select_no_bins", case_select_no_bins, True),
    ("write_without_bins", case_write_without_bins, True),
    ("touch_then_header", case_touch_then_header, True),
    ("truncate", case_truncate, True),
    ("config", case_config, True),
    ("udf_sindex", case_udf_sindex, True),
    ("read_touch", case_read_touch, True),
    ("ttl_expiry", case_ttl_expiry, True),
    ("idle_close", case_idle_close, True),
    ("bolide_only_udf_sindex", case_bolide_only_udf_sindex, False),
    ("version", case_version, False),
]

EXPECTED = {'modify_types': {'append_to_int': 12,
                  'prepend_to_int': 12,
                  'incr_string': 12,
                  'incr_float_by_int': 12,
                  'incr_int_by_float': 12,
                  'append_missing_bin': 0,
                  'incr_missing_bin': 0,
                  'bins': [('f', 1.5), ('i', 1), ('new_i', 5), ('new_s', 'x'), ('s', 'a')],
                  'gen': 3,
                  'append_missing_record': 0,
                  'missing_record_bins': [('s', 'x')]},
 'select_no_bins': {'select_none': 4, 'select_missing_record': 2, 'select_one': [('a', 1)]},
 'write_without_bins': {'delete_all_missing': 2,
                        'nil_bin_missing': 2,
                        'exists_after': 2,
                        'delete_all_existing': 0,
                        'get_after_delete_all': 2},
 'touch_then_header': {'bins': [], 'gen': 2, 'ttl': 'ok'},
 'truncate': {'future': 4,
              'before_2010': 4,
              'unknown_ns': 0,
              'info_future': 'ERROR:4:would truncate in the future',
              'info_zero': 'ERROR:4:would truncate to 0',
              'info_unknown_ns': 'ok',
              'info_missing_set': "ERROR:4:missing 'set'"},
 'config': {'ns_keys': ['default-ttl',
                        'nsup-period',
                        'allow-ttl-without-nsup',
                        'default-read-touch-ttl-pct'],
            'service_keys': ['proto-fd-idle-ms', 'query-max-done', 'proto-fd-max'],
            'set_default_ttl': 'ok',
            'default_ttl_now': '100',
            'default_ttl_applied': 'ok',
            'set_default_ttl_bad': 'ERROR:4:invalid set-config parameter',
            'set_nsup_zero': 'ok',
            'set_default_ttl_without_nsup': 'ERROR:4:invalid set-config parameter',
            'set_default_ttl_zero': 'ok',
            'ttl_write_without_nsup': 22,
            'set_allow_ttl': 'ok',
            'ttl_write_allowed': 0,
            'set_allow_bad': 'ERROR:4:invalid set-config parameter',
            'set_nsup': 'ok',
            'nsup_now': '120',
            'set_rt_pct': 'ERROR:4:invalid set-config parameter',
            'set_query_max_done': 'ok',
            'query_max_done_now': '50',
            'set_query_max_done_bad': 'ERROR:4:invalid set-config parameter',
            'set_unknown': 'ERROR:4:invalid set-config parameter',
            'set_bad_context': 'ERROR:4:invalid context',
            'set_unknown_ns': 'ERROR:20:namespace not found on node',
            'get_bad_context': 'ERROR:4:invalid context',
            'get_unknown_ns': 'ERROR:20:namespace not found on node'},
 'udf_sindex': {'udf-list': '',
                'udf-get:filename=nosuch.lua': 'error=not_found',
                'sindex-list': '',
                'sindex/test': '',
                'sindex/nosuchns': 'ns_type=unknown',
                'sindex-exists:ns=test;indexname=nosuch': 'false',
                'sindex-delete:ns=test;indexname=nosuch': 'ok',
                'udf-remove:filename=nosuch.lua': 'ok',
                'logs_has_sink': True,
                'after': 0},
 'read_touch': {'k0': {'gen': 1, 'touched': False},
                'k1': {'gen': 1, 'touched': True},
                'k2': {'gen': 1, 'touched': False},
                'k3': {'gen': 1, 'touched': False},
                'k4': {'gen': 1, 'touched': True},
                'bad_pct': 4,
                'set_default_pct': 'ok'},
 'ttl_expiry': {'at_1_3_s': 0, 'at_3_4_s': 2},
 'idle_close': {'set': 'ok', 'idle_closed': True, 'active_kept': True},
 'bolide_only_udf_sindex': {'index_create': 16, 'udf_put': 'error=unsupported_feature', 'after': 0},
 'version': {'build': '8.0.0.0',
             'version_names_bolide': True,
             'version_ends_with_build': True,
             'edition_names_bolide': True,
             'edition_not_enterprise': True}}


def diff(a, b, path=""):
    """Every difference between two answers, as (path, left, right)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [(path, a, b)]


def main():
    port = int(sys.argv[1])
    against = None
    if len(sys.argv) > 3 and sys.argv[2] == "--against":
        host, p = sys.argv[3].rsplit(":", 1)
        against = Target(host, int(p))
    only = [a for a in sys.argv[2:] if a.startswith("case=")]
    bolide = Target("127.0.0.1", port)
    failures = ran = 0
    for name, case, same in CASES:
        if only and f"case={name}" not in only:
            continue
        ran += 1
        got = case(bolide)
        if against is not None:
            theirs = case(against)
            if same:
                for path, mine, real in diff(got, theirs):
                    print(f"DIFF {name}.{path}: bolide={mine!r} aerospike={real!r}")
            print(f"AEROSPIKE {name} = {theirs!r}")
        want = EXPECTED.get(name)
        if want is None:
            print(f"NO-RECORD {name} = {got!r}")
            failures += 1
            continue
        problems = diff(got, want)
        for path, mine, rec in problems:
            print(f"FAILED {name}.{path}: bolide={mine!r} recorded={rec!r}", file=sys.stderr)
        failures += bool(problems)
        if not problems:
            print(f"ok {name}")
    print(f"{ran - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
