#!/usr/bin/env bash
# Write throughput and latency with replication_factor 1 vs 2 on two file devices (one per
# worker), side by side in one run: a fresh release node per case, 1 KiB records, 100 k keys
# loaded first, then 100 % updates (RU,0), closed loop. Cases alternate factor 1 and 2, with
# commit_to_device off and on.
#
# Writes replication-f<factor>-commit<0|1>.json / .txt to $OUT (default
# bench/results/<date>-<hostname>/).
#
# Environment: CARGO_TARGET_DIR, OUT, PORT (3139), KEYS (100000), DURATION (20 s measured),
# WARMUP (5 s), IN_FLIGHT (16), DATA_PARENT (/var/tmp), CASES (space-separated
# factor:commit pairs, default "1:0 2:0 1:1 2:1").
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/results/$(date -u +%F)-$(hostname)}
PORT=${PORT:-3139}
KEYS=${KEYS:-100000}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
IN_FLIGHT=${IN_FLIGHT:-16}
DATA_PARENT=${DATA_PARENT:-/var/tmp}
CASES=${CASES:-"1:0 2:0 1:1 2:1"}

. bench/node-lib.sh
bench_build
mkdir -p "$OUT"

for c in $CASES; do
  factor=${c%%:*}
  commit=${c#*:}
  commit_toml=false
  [[ "$commit" == 1 ]] && commit_toml=true
  name=replication-f$factor-commit$commit
  data_dir=$(mktemp -d "$DATA_PARENT/bolide-repl.XXXXXX")
  cat > "$data_dir/profile.toml" <<PROFILE
name = "bench-two-files"
description = "two file devices, one per worker"
[cpu]
cores = [0, 1]
[[device]]
driver = "uring"
path = "$data_dir/dev0"
shard_file_bytes = 1073741824
queue_depth = 64
[[device]]
driver = "uring"
path = "$data_dir/dev1"
shard_file_bytes = 1073741824
queue_depth = 64
[storage]
commit_to_device = $commit_toml
[network]
driver = "kernel"
polling = "interrupt"
PROFILE
  printf 'listen = "127.0.0.1:%s"\nreplication_factor = %s\n' "$PORT" "$factor" > "$data_dir/bolide.toml"
  start_node "$data_dir" --config bolide.toml --profile profile.toml
  cmd=("$BENCH" -h "127.0.0.1:$PORT" -n test -s testset -k "$KEYS" -o B1024 -w RU,0 --key-dist uniform
       --load -t "$DURATION" --warmup "$WARMUP" -c "$IN_FLIGHT" --server-pid "$node_pid"
       --output-json "$OUT/$name.json")
  { echo "== $name (replication_factor $factor, commit_to_device $commit_toml): ${cmd[*]}"; uptime; } | tee "$OUT/$name.txt"
  "${cmd[@]}" 2>&1 | tee -a "$OUT/$name.txt" || echo "bolide-bench exit code $?" | tee -a "$OUT/$name.txt"
  grep -iE "warn|error" "$data_dir/node.log" | head -20 | sed 's/^/node log: /' | tee -a "$OUT/$name.txt" || true
  stop_node
done
