"""Drives a Bolide node with the official Python client (aerospike 19.3.0) through the list, map,
context, bitwise and HyperLogLog operations and checks every answer value by value (the expected
values are what Aerospike CE 8.1.2.0 answers, CDT spec appendix A). Exit status 0 = all good.

Usage: cdt.py PORT
"""
import sys

import aerospike
from aerospike import exception as ex
from aerospike_helpers import cdt_ctx as ctx
from aerospike_helpers.operations import bitwise_operations as bit
from aerospike_helpers.operations import hll_operations as hll
from aerospike_helpers.operations import list_operations as lop
from aerospike_helpers.operations import map_operations as mop
from aerospike_helpers.operations import operations as op

port = int(sys.argv[1])
client = aerospike.client({"hosts": [("127.0.0.1", port)]}).connect()
checks = 0


def key(k):
    return ("test", "cdt", k)


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def fresh(k, bins):
    try:
        client.remove(key(k))
    except ex.RecordNotFound:
        pass
    if bins:
        client.put(key(k), bins)


def operate(k, ops):
    _, _, bins = client.operate(key(k), ops)
    return bins


def ordered(k, ops):
    _, _, res = client.operate_ordered(key(k), ops)
    return [v for (_, v) in res]


def fails(k, ops, exc, what):
    try:
        client.operate(key(k), ops)
    except exc:
        check(True, what)
        return
    except Exception as e:  # noqa: BLE001
        check(False, f"{what}: raised {e!r}")
    check(False, f"{what}: no error")


def get(k, b):
    return client.get(key(k))[2][b]


# ----------------------------------------------------------------- lists
fresh("l", None)
check(operate("l", [lop.list_append("l", 7)]) == {"l": 1}, "append to a missing bin creates the list")
check(operate("l", [lop.list_append_items("l", [3, 9, 1])]) == {"l": 4}, "append_items returns the size")
check(get("l", "l") == [7, 3, 9, 1], "unordered list keeps insertion order")
check(operate("l", [lop.list_insert("l", -1, "x")])["l"] == 5, "insert at -1")
check(get("l", "l") == [7, 3, 9, "x", 1], "insert -1 goes before the last element")
check(operate("l", [lop.list_insert("l", 7, "p")])["l"] == 8, "insert past the end pads")
check(get("l", "l") == [7, 3, 9, "x", 1, None, None, "p"], "nil padding")
check(operate("l", [lop.list_pop("l", 0)]) == {"l": 7}, "pop returns the element")
check(operate("l", [lop.list_remove_range("l", 4, 10)]) == {"l": 3}, "remove_range returns the count")
check(get("l", "l") == [3, 9, "x", 1], "after remove_range")
check(operate("l", [lop.list_get_range("l", -5, 3)]) == {"l": [3, 9]}, "get_range clips a negative start")
check(operate("l", [lop.list_size("l")]) == {"l": 4}, "size")
fails("l", [lop.list_get("l", 4)], ex.OpNotApplicable, "get out of range is 26")
fails("l", [lop.list_increment("l", 2, 1)], ex.InvalidRequest, "increment of a string is 4")
operate("l", [lop.list_set("l", 2, 5)])
check(operate("l", [lop.list_increment("l", 2, 2.7)]) == {"l": 7}, "int + double delta stays an int")
operate("l", [lop.list_sort("l", 0)])
check(get("l", "l") == [1, 3, 7, 9], "sorted ascending")
check(operate("l", [lop.list_trim("l", 1, 2)]) == {"l": 2}, "trim returns the number removed")
check(get("l", "l") == [3, 7], "after trim")
operate("l", [lop.list_clear("l")])
check(get("l", "l") == [], "clear leaves an empty list")

# return types, ranks, values, intervals
fresh("r", {"l": [4, 6, 1, 5, 3, 2]})
R = aerospike
check(operate("r", [lop.list_get_by_rank_range("l", 3, R.LIST_RETURN_VALUE, 3)]) == {"l": [4, 5, 6]},
      "rank range near the top: ascending")
check(operate("r", [lop.list_get_by_rank_range("l", 0, R.LIST_RETURN_INDEX, 3)]) == {"l": [2, 4, 5]},
      "rank range INDEX results in index order")
check(operate("r", [lop.list_get_by_value_range("l", R.LIST_RETURN_VALUE, 2, 5)]) == {"l": [4, 3, 2]},
      "value interval in storage order")
check(operate("r", [lop.list_get_by_value_range("l", R.LIST_RETURN_RANK, 2, 5)]) == {"l": [1, 2, 3]},
      "value interval ranks ascending")
check(operate("r", [lop.list_get_by_value("l", 6, R.LIST_RETURN_INDEX)]) == {"l": [1]}, "get_by_value INDEX")
check(operate("r", [lop.list_get_by_index("l", 0, R.LIST_RETURN_RANK)]) == {"l": 3}, "rank of element 0")
check(operate("r", [lop.list_get_by_index("l", 0, R.LIST_RETURN_REVERSE_INDEX)]) == {"l": 5}, "reverse index")
check(operate("r", [lop.list_get_by_index("l", 0, R.LIST_RETURN_EXISTS)]) == {"l": True}, "EXISTS is a bool")
check(operate("r", [lop.list_get_by_index_range("l", 1, R.LIST_RETURN_VALUE, 2, inverted=True)]) ==
      {"l": [4, 5, 3, 2]}, "inverted index range")
check(operate("r", [lop.list_get_by_value_list("l", [3, 1], R.LIST_RETURN_VALUE)]) == {"l": [1, 3]},
      "value list in storage order")
check(operate("r", [lop.list_get_by_value_rank_range_relative("l", 5, -1, R.LIST_RETURN_VALUE, 2)]) ==
      {"l": [4, 5]}, "relative rank range")
check(operate("r", [lop.list_remove_by_value_range("l", R.LIST_RETURN_COUNT, 4, 7, inverted=True)]) ==
      {"l": 3}, "inverted remove by value interval")
check(get("r", "l") == [4, 6, 5], "after inverted remove")
fails("r", [lop.list_get_by_index("l", 0, R.LIST_RETURN_VALUE | 0x10000)], ex.OpNotApplicable,
      "INVERTED on a single-result op is 26")

# ordered lists and write flags
fresh("o", {"l": [3, 1, 2]})
operate("o", [lop.list_set_order("l", R.LIST_ORDERED)])
check(get("o", "l") == [1, 2, 3], "set_order ORDERED sorts")
operate("o", [lop.list_append("l", 0)])
check(get("o", "l") == [0, 1, 2, 3], "append into an ordered list inserts in order")
fails("o", [lop.list_insert("l", 0, 5)], ex.OpNotApplicable, "insert into an ordered list is 26")
uniq = {"write_flags": R.LIST_WRITE_ADD_UNIQUE}
fails("o", [lop.list_append("l", 2, uniq)], ex.ElementExistsError, "ADD_UNIQUE duplicate is 24")
nofail = {"write_flags": R.LIST_WRITE_ADD_UNIQUE | R.LIST_WRITE_NO_FAIL | R.LIST_WRITE_PARTIAL}
check(operate("o", [lop.list_append_items("l", [3, 4, 4, 5], nofail)]) == {"l": 6}, "ADD_UNIQUE|NO_FAIL|PARTIAL")
check(get("o", "l") == [0, 1, 2, 3, 4, 5], "partial items applied")
fresh("o2", None)
operate("o2", [lop.list_append_items("l", [3, 1, 2], {"list_order": R.LIST_ORDERED})])
check(get("o2", "l") == [1, 2, 3], "order argument applies when the list is created")

# mixed-type order: nil < bool < int < string < list < map < bytes < double
fresh("t", {"l": [1.5, bytearray(b"x"), {"k": 1}, [1], "a", 5, -1, True, False, None]})
operate("t", [lop.list_sort("l", 0)])
check(get("t", "l") == [None, False, True, -1, 5, "a", [1], {"k": 1}, b"x", 1.5], "cross-type order")

# ----------------------------------------------------------------- maps
fresh("m", None)
check(operate("m", [mop.map_put("m", "b", 2)]) == {"m": 1}, "map put creates the map")
operate("m", [mop.map_put_items("m", {"c": 3, "a": 1})])
check(get("m", "m") == {"a": 1, "b": 2, "c": 3}, "put_items")
check(operate("m", [mop.map_increment("m", "a", 5)]) == {"m": 6}, "increment returns the new value")
check(operate("m", [mop.map_decrement("m", "z", 2)]) == {"m": -2}, "decrement creates the key")
check(operate("m", [mop.map_size("m")]) == {"m": 4}, "map size")
check(operate("m", [mop.map_get_by_key("m", "b", R.MAP_RETURN_VALUE)]) == {"m": 2}, "get_by_key VALUE")
check(operate("m", [mop.map_get_by_key("m", "nope", R.MAP_RETURN_INDEX)]) == {"m": -1}, "missing key INDEX -1")
check(operate("m", [mop.map_get_by_index("m", 0, R.MAP_RETURN_KEY)]) == {"m": "a"}, "index is key order")
check(operate("m", [mop.map_get_by_key_range("m", "b", "d", R.MAP_RETURN_KEY)]) == {"m": ["b", "c"]},
      "key interval")
check(operate("m", [mop.map_get_by_rank_range("m", 0, 2, R.MAP_RETURN_KEY)]) == {"m": ["z", "b"]},
      "rank range ascending by value")
check(operate("m", [mop.map_get_by_value_range("m", 2, 10, R.MAP_RETURN_KEY_VALUE)]) ==
      {"m": ["a", 6, "b", 2, "c", 3]}, "value interval KEY_VALUE (a flat list in Python)")
check(operate("m", [mop.map_get_by_key_list("m", ["c", "x", "a"], R.MAP_RETURN_VALUE)]) == {"m": [6, 3]},
      "key list in key order")
check(operate("m", [mop.map_get_by_value("m", 3, R.MAP_RETURN_EXISTS)]) == {"m": True}, "EXISTS")
check(operate("m", [mop.map_remove_by_key("m", "z", R.MAP_RETURN_VALUE)]) == {"m": -2}, "remove_by_key")
check(operate("m", [mop.map_remove_by_rank_range("m", 0, 1, R.MAP_RETURN_KEY, inverted=True)]) ==
      {"m": ["c", "a"]}, "inverted rank range remove (one rank range: rank order)")
fresh("mi", {"m": {"a": 6, "b": 2, "c": 3, "d": 1, "e": 0}})
check(operate("mi", [mop.map_get_by_rank_range("m", 2, 2, R.MAP_RETURN_KEY, inverted=True)]) == {"m": ["a", "d", "e"]},
      "inverted rank range in two pieces: key order")
check(get("m", "m") == {"b": 2}, "after removes")
create_only = {"map_write_flags": R.MAP_WRITE_FLAGS_CREATE_ONLY}
fails("m", [mop.map_put("m", "b", 9, create_only)], ex.ElementExistsError, "CREATE_ONLY existing key is 24")
update_only = {"map_write_flags": R.MAP_WRITE_FLAGS_UPDATE_ONLY}
fails("m", [mop.map_put("m", "q", 9, update_only)], ex.ElementNotFoundError, "UPDATE_ONLY missing key is 23")
nofail = {"map_write_flags": R.MAP_WRITE_FLAGS_CREATE_ONLY | R.MAP_WRITE_FLAGS_NO_FAIL}
check(operate("m", [mop.map_put("m", "b", 9, nofail)]) == {"m": 1}, "NO_FAIL refusal returns the size")
fails("m", [mop.map_put("m", 1.5, 1)], ex.InvalidRequest, "a double key is 4")
fresh("mk", None)
operate("mk", [mop.map_put("m", "b", 1, {"map_order": R.MAP_KEY_ORDERED})])
operate("mk", [mop.map_put("m", "a", 2)])
check(list(get("mk", "m").items()) == [("a", 2), ("b", 1)], "key-ordered map")
operate("mk", [mop.map_clear("m")])
check(get("mk", "m") == {}, "clear leaves an empty map")

# ----------------------------------------------------------------- contexts
fresh("c", {"l": [[1, 2], [3]], "m": {"a": {"x": [5]}}})
check(operate("c", [lop.list_append("l", 9, ctx=[ctx.cdt_ctx_list_index(1)])]) == {"l": 2}, "append in a nested list")
check(get("c", "l") == [[1, 2], [3, 9]], "nested list changed")
check(operate("c", [lop.list_get("l", -1, ctx=[ctx.cdt_ctx_list_index(0)])]) == {"l": 2}, "nested get")
check(operate("c", [lop.list_append("m", 6, ctx=[ctx.cdt_ctx_map_key("a"), ctx.cdt_ctx_map_key("x")])]) ==
      {"m": 2}, "list inside a map inside a map")
check(get("c", "m") == {"a": {"x": [5, 6]}}, "two levels deep")
fails("c", [lop.list_append("m", 6, ctx=[ctx.cdt_ctx_map_key("nope")])], ex.OpNotApplicable,
      "missing ctx element is 26")
operate("c", [mop.map_put("m", "k", 1, ctx=[ctx.cdt_ctx_map_key_create("new", R.MAP_KEY_ORDERED)])])
check(get("c", "m") == {"a": {"x": [5, 6]}, "new": {"k": 1}}, "ctx map key create")
fresh("c2", None)
operate("c2", [lop.list_append("l", "v", ctx=[ctx.cdt_ctx_list_index_create(2, R.LIST_UNORDERED, True)])])
check(get("c2", "l") == [None, None, ["v"]], "ctx list index create with padding")
fresh("c3", {"l": [[1], [5]]})
operate("c3", [lop.list_set_order("l", R.LIST_ORDERED)])
operate("c3", [lop.list_set("l", 0, 9, ctx=[ctx.cdt_ctx_list_index(0)])])
check(get("c3", "l") == [[5], [9]], "an ordered parent re-sorts after a nested change")

# atomicity: a failing op leaves everything unchanged
fresh("a", {"l": [1, 2, 3]})
gen = client.get(key("a"))[1]["gen"]
fails("a", [lop.list_append("l", 4), lop.list_get("l", 10)], ex.OpNotApplicable, "second op fails")
check(client.get(key("a"))[1]["gen"] == gen and get("a", "l") == [1, 2, 3], "nothing applied")

# ----------------------------------------------------------------- bitwise
fresh("b", None)
pol = {"bit_write_flags": aerospike.BIT_WRITE_DEFAULT}
operate("b", [bit.bit_resize("b", 4, policy=pol)])
check(get("b", "b") == b"\x00\x00\x00\x00", "resize creates a zero blob")
operate("b", [bit.bit_set("b", 4, 8, 1, bytearray(b"\xff"))])
check(get("b", "b") == b"\x0f\xf0\x00\x00", "set 8 bits at bit 4")
check(operate("b", [bit.bit_count("b", 0, 32)]) == {"b": 8}, "count")
check(operate("b", [bit.bit_get("b", 4, 12)]) == {"b": b"\xff\x00"}, "get left-aligned")
check(operate("b", [bit.bit_lscan("b", 0, 32, True)]) == {"b": 4}, "lscan")
check(operate("b", [bit.bit_rscan("b", 0, 32, True)]) == {"b": 11}, "rscan")
operate("b", [bit.bit_add("b", 24, 8, 250, False, aerospike.BIT_OVERFLOW_FAIL)])
operate("b", [bit.bit_add("b", 24, 8, 10, False, aerospike.BIT_OVERFLOW_SATURATE)])
check(get("b", "b")[3] == 0xff, "saturating add")
fails("b", [bit.bit_add("b", 24, 8, 1, False, aerospike.BIT_OVERFLOW_FAIL)], ex.OpNotApplicable, "overflow FAIL is 26")
check(operate("b", [bit.bit_get_int("b", 24, 8, True)]) == {"b": -1}, "signed get_int")
operate("b", [bit.bit_lshift("b", 0, 16, 4)])
check(get("b", "b")[:2] == b"\xff\x00", "lshift within the range")
operate("b", [bit.bit_not("b", 0, 8)])
check(get("b", "b")[0] == 0x00, "not")
operate("b", [bit.bit_remove("b", 0, 1)])
check(len(get("b", "b")) == 3, "remove a byte")
fails("b", [bit.bit_get("b", 0, 64)], ex.OpNotApplicable, "read past the end is 26")

# ----------------------------------------------------------------- HyperLogLog
fresh("h", None)
check(operate("h", [hll.hll_add("h", ["a", "b", "c"], 8)]) == {"h": 3}, "hll add creates and counts changes")
check(operate("h", [hll.hll_get_count("h")]) == {"h": 3}, "hll count")
check(operate("h", [hll.hll_describe("h")]) == {"h": [8, 0]}, "describe")
raw = bytes(get("h", "h"))
check(len(raw) == 11 + 192 and raw[:3] == b"\x00\x08\x00", "bin format: header and 2^8 x 6-bit registers")
fresh("h2", None)
operate("h2", [hll.hll_add("h", ["c", "d", "e", "f"], 8)])
other = get("h2", "h")
check(operate("h", [hll.hll_get_union_count("h", [other])]) == {"h": 6}, "union count")
check(operate("h", [hll.hll_get_intersect_count("h", [other])]) == {"h": 1}, "intersect count")
operate("h", [hll.hll_set_union("h", [other])])
check(operate("h", [hll.hll_refresh_count("h")]) == {"h": 6}, "refresh_count after set_union")
fails("h", [hll.hll_init("h", 8, 0, {"flags": aerospike.HLL_WRITE_CREATE_ONLY})], ex.BinExistsError,
      "CREATE_ONLY on an existing HLL is 6")
fails("h", [hll.hll_fold("h", 12)], ex.OpNotApplicable, "fold to more bits is 26")

print(f"cdt e2e: {checks} checks passed")
