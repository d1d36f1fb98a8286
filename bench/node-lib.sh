# Shared by the bench/*-vm.sh scripts (source it): build the release node and load generator,
# and run one node at a time on a fresh data directory, ended by its pid.
#
# After `bench_build`: $BOLIDE and $BENCH are the binaries. `start_node DIR ARGS...` starts
# `bolide serve ARGS...` in DIR (log: DIR/node.log), sets $node_pid and $data_dir, and waits
# until 127.0.0.1:$PORT accepts; `stop_node` sends SIGTERM, waits, and removes $data_dir (it
# is also the EXIT trap).

bench_build() {
  cargo build --release --locked -p bolide-node --bin bolide -p bolide-bench --bin bolide-bench
  local target=${CARGO_TARGET_DIR:-target}
  BOLIDE=$(realpath "$target/release/bolide")
  BENCH=$(realpath "$target/release/bolide-bench")
}

node_pid=""
data_dir=""
stop_node() {
  if [[ -n "$node_pid" ]]; then
    kill -TERM "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
    node_pid=""
  fi
  if [[ -n "$data_dir" ]]; then
    rm -rf "$data_dir"
    data_dir=""
  fi
}
trap stop_node EXIT

start_node() {
  data_dir=$1
  shift
  (cd "$data_dir" && exec "$BOLIDE" serve "$@" 2> node.log) &
  node_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "node did not start listening on 127.0.0.1:$PORT; log:" >&2
  cat "$data_dir/node.log" >&2
  return 1
}
