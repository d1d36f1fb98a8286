"""Drives a Bolide node with the official Python client (aerospike 19.3.0) through expressions:
EXP_READ / EXP_MODIFY ops (expression_read / expression_write), filter expressions (field 43)
with list, map, bit and HLL calls, and the base ops (arithmetic, cond, let/def/var). Every answer
is checked value by value; the expected values are CE 8.1.2.0's (CDT spec §9, appendix A.5):
the script passes unchanged against a real CE 8.1.2.0 (`exp.py 3100`, checked 2026-12-03).
Exit status 0 = all good.

Usage: exp.py PORT
"""
import sys

import aerospike
from aerospike import exception as ex
from aerospike_helpers import cdt_ctx
from aerospike_helpers import expressions as e
from aerospike_helpers.operations import expression_operations as eo
from aerospike_helpers.operations import hll_operations as hll
from aerospike_helpers.operations import operations as op

port = int(sys.argv[1])
client = aerospike.client({"hosts": [("127.0.0.1", port)]}).connect()
checks = 0
failures = []
K = ("test", "exp", "r")


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        failures.append(what)


class Raised:
    """What read() gives back when the operate call raised: equal to nothing, printed with the error."""

    def __init__(self, err):
        self.err = err

    def __eq__(self, other):
        return False

    def __repr__(self):
        return f"raised {type(self.err).__name__} {self.err}"


def read(expr, flags=0):
    try:
        _, _, bins = client.operate(K, [eo.expression_read("r", expr.compile(), flags)])
    except ex.AerospikeError as err:
        return Raised(err)
    return bins.get("r")


def fails(ops, exc, what, policy=None):
    try:
        client.operate(K, ops, policy=policy)
    except exc:
        check(True, what)
        return
    except Exception as err:  # noqa: BLE001
        check(False, f"{what}: raised {type(err).__name__} {err}")
        return
    check(False, f"{what}: no error")


try:
    client.remove(K)
except ex.RecordNotFound:
    pass
client.put(K, {"i": 7, "f": 3.5, "s": "Hello", "l": [1, 2, 3], "m": {"a": 1, "b": 2},
               "n": [[1, 2], [3]], "b": bytearray(b"\x0f\x00\xf0\x81")})
client.operate(K, [hll.hll_add("h", ["a", "b", "c"], 8)])

# ----------------------------------------------------------------- base ops through EXP_READ
check(read(e.Add(e.IntBin("i"), 3, 5)) == 15, "add")
check(read(e.Sub(e.IntBin("i"), 10)) == -3, "sub")
check(read(e.Mul(2, 3, 4)) == 24, "mul")
check(read(e.Div(e.IntBin("i"), 2)) == 3, "integer division truncates")
check(read(e.Div(7.0, 2.0)) == 3.5, "float division")
check(read(e.Mod(-7, 3)) == -1, "mod has the dividend's sign")
check(read(e.Pow(2.0, 10.0)) == 1024.0, "pow")
check(read(e.Log(8.0, 2.0)) == 3.0, "log")
check(read(e.Abs(-5)) == 5, "abs")
check(read(e.Floor(-2.5)) == -3.0, "floor")
check(read(e.Ceil(2.1)) == 3.0, "ceil")
check(read(e.Min(3, 1, 2)) == 1, "min")
check(read(e.Max(3.5, 1.5)) == 3.5, "max")
check(read(e.IntAnd(12, 10)) == 8, "int and")
check(read(e.IntOr(12, 10)) == 14, "int or")
check(read(e.IntXOr(12, 10)) == 6, "int xor")
check(read(e.IntNot(0)) == -1, "int not")
check(read(e.IntLeftShift(1, 4)) == 16, "left shift")
check(read(e.IntRightShift(-16, 2)) == 4611686018427387900, "logical right shift")
check(read(e.IntArithmeticRightShift(-16, 2)) == -4, "arithmetic right shift")
check(read(e.IntCount(255)) == 8, "popcount")
check(read(e.IntLeftScan(1, True)) == 63, "left scan")
check(read(e.IntRightScan(1, True)) == 63, "right scan")
check(read(e.Add(e.FloatBin("f"), 1.0)) == 4.5, "float bin")
check(read(e.Cond(e.Eq(1, 2), "a", e.Eq(1, 1), "b", "c")) == "b", "cond picks the first true")
check(read(e.Let(e.Def("x", 5), e.Add(e.Var("x"), 1))) == 6, "let/var")
check(read(e.Let(e.Def("x", e.IntBin("i")), e.Def("y", e.Mul(e.Var("x"), 2)),
                 e.Sub(e.Var("y"), e.Var("x")))) == 7, "let: later definitions see earlier ones")
check(read(e.Eq(e.StrBin("s"), "Hello")) is True, "string compare")
check(read(e.InList(2, e.ListBin("l"))) is True, "in_list")
check(read(e.NE(e.ListBin("l"), [1, 2])) is True, "list compare (quoted literal)")
check(read(e.MapGetKeys(e.MapBin("m"))) == ["a", "b"], "map keys")
check(read(e.MapGetValues(e.MapBin("m"))) == [1, 2], "map values")
check(read(e.BinType("s")) == 3, "bin type")
check(read(e.SetName()) == "exp", "set name")
check(read(e.TTL()) == -1, "ttl of a record that never expires")
check(read(e.ToInt(-3.9)) == -3, "to_int truncates toward 0")
check(read(e.ToFloat(3)) == 3.0, "to_float")
check(read(e.Exclusive(e.Eq(1, 1), e.Eq(1, 2))) is True, "exclusive: exactly one true")
check(read(e.KeyExists()) is False, "key_exists without a stored key")
check(read(e.IsTombstone()) is False, "is_tombstone of a live record")
check(read(e.BinExists("s")) is True and read(e.BinExists("zz")) is False, "bin_exists")
check(read(e.VoidTime()) == -1, "void_time of a record that never expires")
check(read(e.GT(e.RecordSize(), 0)) is True, "record_size is positive")
check(read(e.GE(e.SinceUpdateTime(), 0)) is True, "since_update is not negative")
check(read(e.Val(None)) is None, "nil literal")
fails([eo.expression_read("r", e.Div(7, 0).compile())], ex.OpNotApplicable, "integer division by 0 is unknown: 26")
fails([eo.expression_read("r", e.IntBin("zz").compile())], ex.OpNotApplicable, "missing bin is unknown: 26")
check(read(e.IntBin("zz"), aerospike.EXP_READ_EVAL_NO_FAIL) is None, "EVAL_NO_FAIL: unknown reads as nil")
fails([eo.expression_read("r", e.Add(1, 2.0).compile())], ex.InvalidRequest, "int + float does not build: 4")

# ----------------------------------------------------------------- CDT / bit / HLL calls
check(read(e.ListSize(None, e.ListBin("l"))) == 3, "list size")
check(read(e.ListGetByIndex(None, aerospike.LIST_RETURN_VALUE, e.ResultType.INTEGER, 1, e.ListBin("l"))) == 2,
      "list get by index")
check(read(e.ListGetByValueList(None, aerospike.LIST_RETURN_VALUE, [1, 3], e.ListBin("l"))) == [1, 3],
      "list get by value list (quoted list parameter)")
check(read(e.ListGetByIndex(None, aerospike.LIST_RETURN_VALUE, e.ResultType.INTEGER,
                            e.Sub(e.IntBin("i"), 6), e.ListBin("l"))) == 2, "parameter computed by a sub-expression")
check(read(e.MapGetByKey(None, aerospike.MAP_RETURN_VALUE, e.ResultType.INTEGER, "b", e.MapBin("m"))) == 2,
      "map get by key")
check(read(e.MapSize(None, e.MapBin("m"))) == 2, "map size")
check(read(e.ListAppend(None, None, 9, e.ListBin("l"))) == [1, 2, 3, 9], "modify-local append returns the list")
check(read(e.ListSize(None, e.ListAppend(None, None, 9, e.ListBin("l")))) == 4, "a call on a call")
check(read(e.MapPut(None, None, "c", 3, e.MapBin("m"))) == {"a": 1, "b": 2, "c": 3}, "modify-local map put")
check(read(e.BitCount(0, 8, e.BlobBin("b"))) == 4, "bit count")
check(read(e.BitGetInt(16, 8, True, e.BlobBin("b"))) == -16, "bit get_int signed")
check(read(e.HLLGetCount(e.HLLBin("h"))) == 3, "hll count")
check(read(e.ListGetByRankRange(None, aerospike.LIST_RETURN_VALUE, 1, 2, e.ListBin("l"))) == [2, 3],
      "list get by rank range")
check(read(e.ListGetByIndex([cdt_ctx.cdt_ctx_list_index(0)], aerospike.LIST_RETURN_VALUE, e.ResultType.INTEGER, 1,
                            e.ListBin("n"))) == 2, "list call with a ctx")
check(read(e.MapGetByValueRelRankRangeToEnd(None, aerospike.MAP_RETURN_KEY, 1, 0, e.MapBin("m"))) == ["a", "b"],
      "map get by value relative rank range to end")
check(read(e.BitResize(None, 6, 0, e.BlobBin("b"))) == b"\x0f\x00\xf0\x81\x00\x00", "modify-local bit resize")
check(read(e.HLLDescribe(e.HLLBin("h"))) == [8, 0], "hll describe")
check(read(e.HLLMayContain(["a"], e.HLLBin("h"))) == 1, "hll may contain")
fails([eo.expression_read("r", e.MapSize(None, e.MapBin("l")).compile())], ex.OpNotApplicable,
      "a map call on a list bin is unknown: 26")
_, _, bins = client.get(K)
check(bins["l"] == [1, 2, 3] and bins["m"] == {"a": 1, "b": 2}, "modify-local calls change nothing stored")

# ----------------------------------------------------------------- filters (field 43) with calls
pol = {"expressions": e.GT(e.ListSize(None, e.ListBin("l")), 2).compile()}
check(client.get(K, policy=pol)[2]["i"] == 7, "filter on list size passes")
try:
    client.get(K, policy={"expressions": e.GT(e.ListSize(None, e.ListBin("l")), 5).compile()})
    check(False, "filter on list size should filter out")
except ex.FilteredOut:
    check(True, "filter on list size filters out")
pol = {"expressions": e.Eq(e.MapGetByKey(None, aerospike.MAP_RETURN_VALUE, e.ResultType.INTEGER, "a",
                                        e.MapBin("m")), 1).compile()}
client.put(K, {"i": 8}, policy=pol)
check(client.get(K)[2]["i"] == 8, "a write under a map filter applies")
try:
    client.put(K, {"i": 9}, policy={"expressions": e.Eq(e.HLLGetCount(e.HLLBin("h")), 99).compile()})
    check(False, "hll filter should filter out the write")
except ex.FilteredOut:
    check(client.get(K)[2]["i"] == 8, "a filtered-out write changes nothing")

# ----------------------------------------------------------------- EXP_MODIFY
client.operate(K, [eo.expression_write("n2", e.ListAppend(None, None, 9, e.ListBin("l")).compile())])
bins = client.get(K)[2]
check(bins["n2"] == [1, 2, 3, 9] and bins["l"] == [1, 2, 3], "expression_write stores the modified copy")
client.operate(K, [eo.expression_write("i", e.Add(e.IntBin("i"), 10).compile())])
check(client.get(K)[2]["i"] == 18, "expression_write of an arithmetic result")
fails([eo.expression_write("i", e.Add(e.IntBin("i"), 1).compile(), aerospike.EXP_WRITE_CREATE_ONLY)],
      ex.BinExistsError, "CREATE_ONLY on an existing bin: 6")
client.operate(K, [eo.expression_write("i", e.Add(e.IntBin("i"), 1).compile(),
                                       aerospike.EXP_WRITE_CREATE_ONLY | aerospike.EXP_WRITE_POLICY_NO_FAIL)])
check(client.get(K)[2]["i"] == 18, "CREATE_ONLY | POLICY_NO_FAIL keeps the bin")
fails([eo.expression_write("zz", e.Add(e.IntBin("i"), 1).compile(), aerospike.EXP_WRITE_UPDATE_ONLY)],
      ex.BinNotFound, "UPDATE_ONLY on a missing bin: 17")
fails([eo.expression_write("i", e.IntBin("zz").compile())], ex.OpNotApplicable, "unknown result: 26")
fails([eo.expression_write("i", e.Val(None).compile())], ex.OpNotApplicable, "a nil result without ALLOW_DELETE: 26")
client.operate(K, [eo.expression_write("i", e.IntBin("zz").compile(), aerospike.EXP_WRITE_EVAL_NO_FAIL)])
check(client.get(K)[2]["i"] == 18, "EVAL_NO_FAIL: unknown is a no-op")
client.operate(K, [op.write("gone", 1)])
client.operate(K, [eo.expression_write("gone", e.Val(None).compile(),
                                       aerospike.EXP_WRITE_ALLOW_DELETE)])
check("gone" not in client.get(K)[2], "ALLOW_DELETE: a nil result deletes the bin")
# Atomicity: a failing op after an expression write leaves the record unchanged.
fails([eo.expression_write("i", e.Add(e.IntBin("i"), 100).compile()),
       eo.expression_read("r", e.IntBin("zz").compile())], ex.OpNotApplicable, "second op fails")
check(client.get(K)[2]["i"] == 18, "nothing applied when a later op fails")

if failures:
    print(f"exp e2e: {len(failures)} of {checks} checks failed", file=sys.stderr)
    sys.exit(1)
print(f"exp e2e: {checks} checks passed")
