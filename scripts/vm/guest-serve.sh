# Sourced by the guest's /init (scripts/vm/nvme-vm.sh): `bolide serve` on the emulated controller
# through the user-space NVMe driver (two workers, one queue pair each, commit_to_device = FUA
# writes), loaded by the official Aerospike Rust client (bolide-bench); then a clean restart and a
# kill -9 followed by a cold start must both find every acknowledged record.
keys=${BOLIDE_SERVE_KEYS:-2000}
cat > /tmp/vm-nvme.toml <<PROFILE
name = "vm-nvme"
description = "emulated machine: 2 workers on one emulated NVMe controller through VFIO"
[cpu]
cores = [0, 1]
[[device]]
driver = "nvme"
pci_address = "$BOLIDE_NVME_PCI"
nsid = 2
queue_depth = 64
[storage]
wblock_size_bytes = 131072
max_record_bytes = 131008
commit_to_device = true
PROFILE
printf 'listen = "127.0.0.1:3400"\n' > /tmp/vm-nvme-config.toml
serve_rc=0
start_node() { # start_node LOG
    bolide serve --profile /tmp/vm-nvme.toml --config /tmp/vm-nvme-config.toml > $1 2>&1 &
    node=$!
    for i in $(seq 1 600); do grep -q " serving" $1 2>/dev/null && return 0; kill -0 $node 2>/dev/null || break; sleep 0.2; done
    echo "SERVE: the node did not start"; cat $1; return 1
}
records() { # records LOG: sum of records=N over the "shard ready" lines
    grep "shard ready" $1 | sed -n 's/.*records=\([0-9]*\).*/\1/p' | awk '{s+=$1} END{print s+0}'
}
check_records() { # check_records LOG WHAT
    n=$(records $1)
    if [ "$n" = "$keys" ]; then echo "SERVE ok: $2: $n records"; else echo "SERVE FAILED: $2: $n records, want $keys"; serve_rc=1; grep -i "shard ready\|error" $1; fi
}
bench() { timeout 180 bolide-bench -h 127.0.0.1 -p 3400 -k $keys -o B1024 --quiet "$@" > /tmp/bench.out 2>&1 || { echo "SERVE FAILED: bolide-bench $*"; cat /tmp/bench.out; serve_rc=1; }; }

if start_node /tmp/node1.log; then
    bench -w I
    bench -w RU,100 -t 1
    kill -TERM $node; wait $node || { echo "SERVE FAILED: clean stop"; serve_rc=1; }
    grep -q "shard ready" /tmp/node1.log && echo "SERVE ok: served $keys inserts and 1 s of reads through nvme"
    if start_node /tmp/node2.log; then
        check_records /tmp/node2.log "clean restart"
        grep "shard ready" /tmp/node2.log | grep -q "mode=FastRestart" || { echo "SERVE FAILED: no fast restart after a clean stop"; serve_rc=1; }
        kill -9 $node; wait $node 2>/dev/null
        if start_node /tmp/node3.log; then
            check_records /tmp/node3.log "cold start after kill -9"
            if grep "shard ready" /tmp/node3.log | grep -q "mode=ColdStart"; then echo "SERVE ok: cold start (index rebuilt by scanning)"; else echo "SERVE FAILED: no cold start after kill -9"; serve_rc=1; fi
            bench -w RU,100 -t 1
            kill -TERM $node; wait $node
        else serve_rc=1; fi
    else serve_rc=1; fi
else serve_rc=1; fi
tail -3 /tmp/bench.out
[ $serve_rc = 0 ]
