#!/usr/bin/env bash
# Aerospike CE and Bolide side by side on this machine, the same client against both,
# interleaved. Builds nothing: give it the binaries.
#
#   bench/side-by-side.sh --asd PEERS/bin/asd --asbench PEERS/bin/asbench \
#       --bolide target/release/bolide [--mode full|soak|limits] [--machine vm2c] [options]
#   ... --client bolide-bench --bolide-bench target/release/bolide-bench    # drive bolide-bench instead
#
# asd and asbench: built from public source as ../shared/peers/README.md says; CE is started
# through ../shared/peers/aerospike-ctl.sh (--ctl) on the first free port block of 3100-3199,
# Bolide (`bolide serve`) on 127.0.0.1:3050 (--bolide-port), each with its own data under a
# new temp dir in /var/tmp (--work-dir), removed at the end (raw client logs are kept there).
#
# --mode full (default, ≈ 25 min with the defaults): machine limits (iperf3 / sockperf on
#   loopback, fio 4 KiB random read and write), then
#   unpinned: both servers up (Bolide one worker per core), each loaded with `-w I`, then
#     RU,50 and RU,95 and RU,50 at -g --fixed-rate (20000), --repeats (3) × --duration (30 s)
#     each, alternating CE and Bolide;
#   pinned: both servers confined to CPU 0 (Bolide with one worker), the client on CPU 1,
#     loaded again, RU,50 and RU,95 likewise.
# --mode soak: --soak-minutes (10) of RU,50 per server as one-minute runs back to back, the
#   node's `statistics` and `namespace/<ns>` after every minute.
# --mode limits: the machine limits only.
#
# Output: bench/results/<date>-<machine>/<mode>[-bolide-bench][<tag>].{json,md} (--out DIR).
# `python3 bench/side_by_side.py --help` lists every option (keys, object spec, threads,
# workloads, sections, Bolide config additions, ...).
set -euo pipefail
exec python3 "$(dirname "$0")/side_by_side.py" "$@"
