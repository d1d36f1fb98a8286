#!/usr/bin/env bash
# bolide-bench against a fresh release Bolide node on this machine: 1 KiB records, 100 k keys
# loaded first, closed loop; RU,50 and RU,95 with uniform keys (YCSB-A-like and YCSB-B-like) and
# the YCSB-A and YCSB-B presets (zipfian keys). Each workload gets its own fresh node (new data
# directory, default config except the port), started here and stopped here by its pid (SIGTERM).
#
# Writes <name>.json (bolide-bench --output-json) and <name>.txt (its text report and progress
# lines) per workload to $OUT (default bench/results/<date>-<hostname>/).
#
# Environment: CARGO_TARGET_DIR, OUT, PORT (3137), KEYS (100000), DURATION (30 s measured),
# WARMUP (5 s), IN_FLIGHT (16), DATA_PARENT (/var/tmp: the node's data files go to a new
# directory under it, removed at the end), WORKLOADS (space-separated name=workload[:key-dist]),
# CEILING (name:workload of the client-ceiling run against --responder, "" for none), PLOT (1:
# also draw each run as <name>.svg with --plot).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/results/$(date -u +%F)-$(hostname)}
PORT=${PORT:-3137}
KEYS=${KEYS:-100000}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-5}
IN_FLIGHT=${IN_FLIGHT:-16}
DATA_PARENT=${DATA_PARENT:-/var/tmp}
CEILING=${CEILING-ru50:RU,50}
PLOT=${PLOT:-0}
WORKLOADS=${WORKLOADS:-"loadgen-ru50-uniform-1k=RU,50:uniform loadgen-ru95-uniform-1k=RU,95:uniform loadgen-ycsb-a-1k=YCSB-A loadgen-ycsb-b-1k=YCSB-B"}

. bench/node-lib.sh
bench_build
mkdir -p "$OUT"

for entry in $WORKLOADS; do
  name=${entry%%=*}
  spec=${entry#*=}
  workload=${spec%%:*}
  key_dist=()
  [[ "$spec" == *:* ]] && key_dist=(--key-dist "${spec#*:}")

  data_dir=$(mktemp -d "$DATA_PARENT/bolide-loadgen.XXXXXX")
  printf 'listen = "127.0.0.1:%s"\n' "$PORT" > "$data_dir/bolide.toml"
  start_node "$data_dir" --config bolide.toml

  cmd=("$BENCH" -h "127.0.0.1:$PORT" -n test -s testset -k "$KEYS" -o B1024 -w "$workload" "${key_dist[@]}"
       --load -t "$DURATION" --warmup "$WARMUP" -c "$IN_FLIGHT" --server-pid "$node_pid"
       --output-json "$OUT/$name.json")
  [[ "$PLOT" == 1 ]] && cmd+=(--plot "$OUT/$name.svg")
  echo "== $name: ${cmd[*]}" | tee "$OUT/$name.txt"
  # Exit code 3: the run completed with failed operations (they are in the report).
  "${cmd[@]}" 2>&1 | tee -a "$OUT/$name.txt" || echo "bolide-bench exit code $?" | tee -a "$OUT/$name.txt"
  grep -iE "warn|error" "$data_dir/node.log" | head -20 | sed 's/^/node log: /' | tee -a "$OUT/$name.txt" || true
  stop_node
done

# The client's ceiling: the same load against bolide-bench's in-process responder (no node).
if [[ -n "$CEILING" ]]; then
  name=loadgen-ceiling-${CEILING%%:*}-1k
  workload=${CEILING#*:}
  cmd=("$BENCH" --responder -k "$KEYS" -o B1024 -w "$workload" --key-dist uniform --load -t "$DURATION"
       --warmup "$WARMUP" -c "$IN_FLIGHT" --output-json "$OUT/$name.json")
  [[ "$PLOT" == 1 ]] && cmd+=(--plot "$OUT/$name.svg")
  echo "== $name: ${cmd[*]}" | tee "$OUT/$name.txt"
  "${cmd[@]}" 2>&1 | tee -a "$OUT/$name.txt" || echo "bolide-bench exit code $?" | tee -a "$OUT/$name.txt"
fi
