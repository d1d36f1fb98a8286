#!/usr/bin/env bash
# Device figures on this machine, all on one scratch file: `bolide probe` next to fio with the
# same patterns, then the ACT-style test at 1x and with --find-max. The scratch files are
# deleted at the end.
#
# Writes to $OUT (default bench/results/<date>-<hostname>/):
#   probe$TAG.txt / .json                 bolide probe (text, JSON)
#   fio$TAG.txt, fio-<job>$TAG.json       fio per job, and a table: fio next to probe
#   act-1x$TAG.txt / .json / .svg         ACT at 1x
#   act-find-max$TAG.txt / .json / .svg   ACT --find-max
#
# Environment: CARGO_TARGET_DIR, OUT, SCRATCH (/work/bench-scratch: must be on the disk to
# measure), SIZE (2G: probe and fio file), ACT_SIZE (4G), FIO_RUNTIME (10 s per fio job),
# ACT_DURATION (60 s) / ACT_SLICE (10 s) for 1x, MAX_DURATION (30 s) / MAX_SLICE (10 s) per
# --find-max step, PROBE_STEP_S (2 s per probe step), TAG (appended to every file name, e.g.
# -run2), STEPS ("probe fio act1 actmax": which parts to run).
#
# fio reports its percentiles of the total latency (submission + completion, --lat_percentiles),
# which is what probe measures (submit to reap).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/results/$(date -u +%F)-$(hostname)}
SCRATCH=${SCRATCH:-/work/bench-scratch}
SIZE=${SIZE:-2G}
ACT_SIZE=${ACT_SIZE:-4G}
FIO_RUNTIME=${FIO_RUNTIME:-10}
ACT_DURATION=${ACT_DURATION:-60}
ACT_SLICE=${ACT_SLICE:-10}
MAX_DURATION=${MAX_DURATION:-30}
MAX_SLICE=${MAX_SLICE:-10}
STEPS=${STEPS:-"probe fio act1 actmax"}
PROBE_STEP_S=${PROBE_STEP_S:-2}
TAG=${TAG:-}

command -v fio >/dev/null || apt-get install -y fio
nice -n 5 cargo build --release --locked -p bolide-node --bin bolide -p bolide-bench --bin bolide-bench --bin bolide-probe
TARGET=${CARGO_TARGET_DIR:-target}
BOLIDE=$(realpath "$TARGET/release/bolide")
BENCH=$(realpath "$TARGET/release/bolide-bench")
mkdir -p "$OUT" "$SCRATCH"
PROBE_FILE=$SCRATCH/probe.dat
ACT_FILE=$SCRATCH/act.dat
trap 'rm -f "$PROBE_FILE" "$ACT_FILE"' EXIT

note() { echo "# $(date -u +%FT%TZ) load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }

if [[ " $STEPS " == *" probe "* ]]; then
  cmd=("$BOLIDE" probe "$PROBE_FILE" --size "$SIZE" --step-s "$PROBE_STEP_S" --json "$OUT/probe$TAG.json")
  { note; echo "\$ ${cmd[*]}"; "${cmd[@]}"; note; } 2>&1 | tee "$OUT/probe$TAG.txt"
fi

if [[ " $STEPS " == *" fio "* ]]; then
  # The same patterns as probe, on the same (already filled) file.
  jobs=("seq-read-1m-qd8:read:1m:8" "seq-write-1m-qd8:write:1m:8"
        "rand-read-4k-qd1:randread:4k:1" "rand-read-4k-qd32:randread:4k:32"
        "rand-write-4k-qd1:randwrite:4k:1" "rand-write-4k-qd32:randwrite:4k:32")
  [[ -f "$PROBE_FILE" ]] || "$BOLIDE" probe "$PROBE_FILE" --size "$SIZE" --step-s 0.1 >/dev/null
  { note; for j in "${jobs[@]}"; do
      IFS=: read -r name rw bs qd <<<"$j"
      cmd=(fio --name="$name" --filename="$PROBE_FILE" --size="$SIZE" --rw="$rw" --bs="$bs" --iodepth="$qd"
           --direct=1 --ioengine=io_uring --time_based --runtime="$FIO_RUNTIME" --randrepeat=0 --norandommap
           --lat_percentiles=1 --output-format=json --output="$OUT/fio-$name$TAG.json")
      echo "\$ ${cmd[*]}"
      "${cmd[@]}"
    done; note; } 2>&1 | tee "$OUT/fio$TAG.txt"
  python3 - "$OUT" "$TAG" >>"$OUT/fio$TAG.txt" <<'EOF'
import json, sys, os
out, tag = sys.argv[1], sys.argv[2]
def fio(name):
    j = json.load(open(os.path.join(out, f"fio-{name}{tag}.json")))["jobs"][0]
    side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    pct = side["lat_ns"].get("percentile") or side["clat_ns"].get("percentile", {})
    return {"iops": side["iops"], "mbps": side["bw_bytes"] / 1e6,
            "p50_us": pct.get("50.000000", 0) / 1e3, "p99_us": pct.get("99.000000", 0) / 1e3}
pj = os.path.join(out, f"probe{tag}.json")
p = json.load(open(pj))["result"] if os.path.exists(pj) else None
def probe(kind, qd):
    if not p: return None
    return next((s for s in p[kind] if s["queue_depth"] == qd), None)
rows = [("seq read 1 MiB QD8", "seq-read-1m-qd8", "seq_read", 8, "mbps"),
        ("seq write 1 MiB QD8", "seq-write-1m-qd8", "seq_write", 8, "mbps"),
        ("rand read 4 KiB QD1", "rand-read-4k-qd1", "rand_read", 1, "iops"),
        ("rand read 4 KiB QD32", "rand-read-4k-qd32", "rand_read", 32, "iops"),
        ("rand write 4 KiB QD1", "rand-write-4k-qd1", "rand_write", 1, "iops"),
        ("rand write 4 KiB QD32", "rand-write-4k-qd32", "rand_write", 32, "iops")]
print("\n| pattern | fio | bolide probe | fio p50 / p99 us | probe p50 / p99 us |")
print("|---|---|---|---|---|")
for label, job, kind, qd, unit in rows:
    f = fio(job); b = probe(kind, qd)
    fmt = (lambda v: f"{v:,.0f} MB/s") if unit == "mbps" else (lambda v: f"{v:,.0f} IOPS")
    bs = fmt(b[unit]) if b else "-"
    bl = f"{b['p50_us']:.1f} / {b['p99_us']:.1f}" if b else "-"
    print(f"| {label} | {fmt(f[unit])} | {bs} | {f['p50_us']:.1f} / {f['p99_us']:.1f} | {bl} |")
EOF
  tail -9 "$OUT/fio$TAG.txt"
fi
rm -f "$PROBE_FILE"

if [[ " $STEPS " == *" act1 "* ]]; then
  cmd=("$BENCH" act --device "$ACT_FILE" --device-bytes "$ACT_SIZE" --load 1 --duration-s "$ACT_DURATION"
       --slice-s "$ACT_SLICE" --json "$OUT/act-1x$TAG.json" --plot "$OUT/act-1x$TAG.svg")
  { note; echo "\$ ${cmd[*]}"; "${cmd[@]}" || echo "exit code $?"; note; } 2>&1 | tee "$OUT/act-1x$TAG.txt"
fi

if [[ " $STEPS " == *" actmax "* ]]; then
  cmd=("$BENCH" act --device "$ACT_FILE" --device-bytes "$ACT_SIZE" --find-max --duration-s "$MAX_DURATION"
       --slice-s "$MAX_SLICE" --json "$OUT/act-find-max$TAG.json" --plot "$OUT/act-find-max$TAG.svg")
  { note; echo "\$ ${cmd[*]}"; "${cmd[@]}" || echo "exit code $?"; note; } 2>&1 | tee "$OUT/act-find-max$TAG.txt"
fi
