//! The info protocol: text requests and responses in proto type 1 (wire spec §2).
//!
//! This module is pure: no I/O, no clock, no globals. [`respond`] turns a request body into a
//! response body; the caller reads and writes the 8-byte proto header (type
//! [`super::PROTO_TYPE_INFO`]). Node state comes from an [`InfoSource`] the server implements.
//!
//! # Format (spec §2.1)
//!
//! A request is one command per `\n`-terminated line: a name, optionally followed by arguments,
//! `name:key=val;key=val` or `name/arg/arg` (`namespace/test`, `sets/test/demo`). As in the real
//! server the name ends at the first `/`, `:` or `;`. The response has, for every request line and
//! in request order, `<the line exactly as received>\t<value>\n`. The C client fails a whole
//! multi-command call when any value starts with `ERROR:`, `FAIL:` or `error=` (spec §2.1,
//! §10.10 item 1), so no command in [`TEND_COMMANDS`] ever answers an error, whatever its
//! arguments.
//!
//! # Formats checked against the server source
//!
//! Beyond the spec, these were read in the Aerospike CE 8.x server source (`as/src/base/
//! thr_info.c`, `namespace.c`, `truncate.c`, `cf/src/hist.c`): the name/argument split, the
//! `features` list, `sets` (the 7.0+ keys with `data_used_bytes`, a trailing `;` after every set,
//! bare properties for `sets/<ns>/<set>`, `ns_type=unknown` for an unknown namespace),
//! `namespace/<unknown>` = `type=unknown`, the `latencies:` format (see [`LatencyHist`]), the
//! `truncate` parameter checks and their error texts, `version` = `<edition> build <build>`.
//!
//! # Deliberate differences from the real server
//!
//! * Empty request lines are skipped (the server would answer them with an error line); a last
//!   line without its `\n` is still answered (the server ignores it). Clients never send either.
//! * A `\r` at the end of a line is ignored when the name is parsed (for `telnet` users) but is
//!   still echoed.
//! * At most [`MAX_COMMANDS`] lines are answered; the rest are dropped unanswered. A line over
//!   [`MAX_LINE_BYTES`] is answered `ERROR:4:command too long`.
//! * `user-agent-set` always answers `ok`; the server rejects bad base64 and a second call on the
//!   same connection. Clients send it once, and only to builds ≥ 8.1 (spec §2.5).
//! * `rack-ids` answers `<ns>:0` per namespace; CE 8.x answers `ERROR:25:enterprise only`. Only
//!   rack-aware clients ask, and an error would fail their tend (spec §2.6).

use std::io::Write as _;
use std::net::SocketAddr;

use base64::Engine as _;

use crate::digest::N_PARTITIONS;
use crate::proto::result_code;

/// Most request lines answered per request; later lines are dropped unanswered. Tend requests
/// carry at most five (spec §2.3).
pub const MAX_COMMANDS: usize = 256;

/// Longest request line parsed, bytes. A longer line is echoed and answered
/// `ERROR:4:command too long`.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The build reported when the source does not override [`InfoSource::build`]: the spec §2.5
/// advice. Four numeric parts (Rust 3.0 needs four), ≥ 6.0 for the modern batch and query paths,
/// below 8.1 so clients skip `user-agent-set` and the 8.1+/8.2+ extensions.
///
/// The gates this value trips, read in the clients' sources: the Rust client 3.0
/// (`version_parser.rs`) turns on partition scans (≥ 4.9.0.3), query-show (≥ 5.7), blob
/// indexes (≥ 7.0), batch-any and partition queries (≥ 6.0) and transactions (≥ 8.0); it
/// would send `user-agent-set` and the new `sindex-create:namespace=` form at ≥ 8.1, path
/// expressions at ≥ 8.1.1, the 8.1.2 expression and set-index APIs, and string operations,
/// integer indexes, error details and server-compiled expressions at ≥ 8.2 (none of which
/// Bolide serves). The Python client 19.3.0 sends `user-agent-set` at ≥ 8.1 and path
/// expressions at ≥ 8.1.1.
pub const DEFAULT_BUILD: &str = "8.0.0.0";

/// The `edition` value (spec §2.2); `version` is `<EDITION> build <build>`, the server's
/// format. Bolide names itself where a person reads it, and keeps "Community Edition" in the
/// text because tools tell the editions apart by it (an "Enterprise" edition turns on features
/// Bolide does not have). Clients gate features on [`DEFAULT_BUILD`] alone.
pub const EDITION: &str = concat!(
    "Bolide ",
    env!("CARGO_PKG_VERSION"),
    " (Aerospike Community Edition compatible)"
);

/// The `features` value: the list the CE server prints (spec §2.5; `thr_info.c` `cmd_features`),
/// without build-specific extras.
pub const FEATURES: &str = "batch-any;batch-index;blob-bits;cdt-index;cdt-list;cdt-map;cluster-stable;float;geo;\
sindex-exists;peers;pipelining;pquery;pscans;query-show;relaxed-sc;replicas;replicas-all;replicas-master;\
replicas-max;truncate-namespace;udf";

/// Bytes of a partition bitmap: one bit per partition (spec §2.4).
pub const PARTITION_BITMAP_BYTES: usize = N_PARTITIONS / 8;

/// Length of a base64 partition bitmap: `4 * ceil(512 / 3)` = 684 characters, padded. The C client
/// rejects any other length (spec §2.4, §10.10 item 4).
pub const PARTITION_BITMAP_B64_LEN: usize = PARTITION_BITMAP_BYTES.div_ceil(3) * 4;
const _: () = assert!(PARTITION_BITMAP_B64_LEN == 684);
const _: () = assert!(N_PARTITIONS.is_multiple_of(8));

/// Threshold columns of a `latencies:` histogram: ops over 2^0 .. 2^16 units (`hist.c`
/// `N_LATENCY_COLS`).
pub const LATENCY_COLUMNS: usize = 17;

/// Commands the official clients send while connecting and tending (spec §2.3, §2.6), plus the
/// older discovery forms. [`respond`] never answers one of these with an error value, whatever
/// its arguments: one error fails the client's whole tend request (spec §2.1).
pub const TEND_COMMANDS: &[&str] = &[
    "node",
    "build",
    "partition-generation",
    "peers-generation",
    "rebalance-generation",
    "cluster-name",
    "peers-clear-std",
    "peers-clear-alt",
    "peers-tls-std",
    "peers-tls-alt",
    "alumni-clear-std",
    "alumni-clear-alt",
    "alumni-tls-std",
    "alumni-tls-alt",
    "replicas",
    "replicas-all",
    "replicas-master",
    "partitions",
    "rack-ids",
    "service",
    "service-clear-std",
    "service-clear-alt",
    "service-tls-std",
    "service-tls-alt",
    "services",
    "services-alumni",
    "services-alternate",
    "user-agent-set",
    "features",
];

/// Seconds from the Unix epoch to the Citrusleaf epoch, 2010-01-01T00:00:00Z (spec §10.5).
const CITRUSLEAF_EPOCH_SECS: u64 = 1_262_304_000;

/// One request line (spec §2.1), borrowed from the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoCommand<'a> {
    /// The line exactly as received, without its `\n`: echoed back before the TAB.
    pub line: &'a [u8],
    /// The command name: the text before the first `/`, `:` or `;`. Empty when the line is not
    /// UTF-8 or is longer than [`MAX_LINE_BYTES`], so that it matches no command.
    pub name: &'a str,
    /// Everything after the character that ended the name (`test/demo` for `sets/test/demo`,
    /// `namespace=test;set=demo` for `truncate:namespace=test;set=demo`); empty if none.
    pub args: &'a str,
}

impl<'a> InfoCommand<'a> {
    /// Parses one request line (without its `\n`). Never fails: a line that cannot be a command
    /// gets an empty [`name`](Self::name).
    pub fn parse(line: &'a [u8]) -> InfoCommand<'a> {
        let unparsed = InfoCommand {
            line,
            name: "",
            args: "",
        };
        if line.len() > MAX_LINE_BYTES {
            return unparsed;
        }
        let Ok(text) = std::str::from_utf8(line.strip_suffix(b"\r").unwrap_or(line)) else {
            return unparsed;
        };
        match text.find(['/', ':', ';']) {
            // The separators are ASCII, so `at + 1` is a char boundary.
            Some(at) => InfoCommand {
                line,
                name: &text[..at],
                args: &text[at + 1..],
            },
            None => InfoCommand {
                line,
                name: text,
                args: "",
            },
        }
    }

    /// The value of the first `key=value` parameter in [`args`](Self::args) (`;`-separated), as
    /// the server's `as_info_parameter_get`. `Some("")` when the key is present with no value.
    pub fn param(&self, key: &str) -> Option<&'a str> {
        self.params().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every `key=value` parameter in [`args`](Self::args), in order; pieces without `=` are
    /// skipped.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        self.args.split(';').filter_map(|piece| piece.split_once('='))
    }

    /// The `/`-separated arguments (`["test", "demo"]` for `sets/test/demo`); none when
    /// [`args`](Self::args) is empty.
    pub fn path(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let args = self.args;
        (!args.is_empty()).then(|| args.split('/')).into_iter().flatten()
    }
}

/// The request lines of an info body, in order (spec §2.1): split on `\n`, empty lines skipped,
/// at most [`MAX_COMMANDS`]. Never panics.
pub fn commands(body: &[u8]) -> impl Iterator<Item = InfoCommand<'_>> {
    body.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .take(MAX_COMMANDS)
        .map(InfoCommand::parse)
}

/// [`commands`], collected.
pub fn parse_request(body: &[u8]) -> Vec<InfoCommand<'_>> {
    commands(body).collect()
}

/// Per-namespace numbers for `namespace/<ns>` (spec §2.2). The module adds the single-node facts
/// (`ns_cluster_size=1`, `effective_replication_factor=1`, master/prole splits,
/// `replication-factor=1`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceStats {
    /// Live records.
    pub objects: u64,
    /// Tombstones (durable deletes).
    pub tombstones: u64,
    /// Bytes of record data on the storage engine.
    pub data_used_bytes: u64,
    /// Storage capacity, bytes; `data_used_pct` is printed only when this is not 0.
    pub data_total_bytes: u64,
    /// Further `key=value` stats and config (`default-ttl`, `storage-engine`, ...), printed in
    /// order after the fixed ones. Must not repeat a key the module prints.
    pub extra: Vec<(String, String)>,
}

/// One set, for `sets` (spec §2.2; 7.0+ server format, see [`respond`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetStats {
    /// The set name.
    pub name: String,
    /// Live records in the set.
    pub objects: u64,
    /// Tombstones in the set.
    pub tombstones: u64,
    /// Bytes of record data of the set.
    pub data_used_bytes: u64,
    /// The set's truncate cut-off, milliseconds since the Citrusleaf epoch (spec §10.5); 0 when
    /// never truncated.
    pub truncate_lut: u64,
    /// A truncate is still deleting records.
    pub truncating: bool,
    /// The set's default TTL, seconds; 0 means the namespace default.
    pub default_ttl: u32,
    /// Record count at which writes to the set stop; 0 means no limit.
    pub stop_writes_count: u64,
    /// Data size at which writes to the set stop, bytes; 0 means no limit.
    pub stop_writes_size: u64,
}

/// Units of a latency histogram, printed as its first column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyUnits {
    /// Milliseconds (`msec`): the transaction histograms.
    Msec,
    /// Microseconds (`usec`).
    Usec,
}

impl LatencyUnits {
    fn tag(self) -> &'static str {
        match self {
            LatencyUnits::Msec => "msec",
            LatencyUnits::Usec => "usec",
        }
    }
}

/// The counts of one time slice of a latency histogram: the server's ticker closes a slice every
/// `ticker-interval` (10 s by default) and `latencies:` reports the last closed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencySlice {
    /// Length of the slice, milliseconds.
    pub elapsed_ms: u64,
    /// Operations completed in the slice.
    pub ops: u64,
    /// `over[i]`: operations in the slice that took at least 2^i units (1, 2, 4 ... 65536).
    /// Non-increasing, each at most [`ops`](Self::ops).
    pub over: [u64; LATENCY_COLUMNS],
}

impl LatencySlice {
    /// A slice from log2 bucket counts as the server keeps them (`hist.c`): `buckets[0]` counts
    /// operations under 1 unit, `buckets[b]` those in `[2^(b-1), 2^b)`. Buckets past the last
    /// column only add to [`ops`](Self::ops).
    pub fn from_log2_buckets(elapsed_ms: u64, buckets: &[u64]) -> LatencySlice {
        let ops = buckets.iter().fold(0u64, |sum, &n| sum.saturating_add(n));
        let mut over = [0; LATENCY_COLUMNS];
        let mut at_most = 0u64;
        for (i, slot) in over.iter_mut().enumerate() {
            at_most = at_most.saturating_add(buckets.get(i).copied().unwrap_or(0));
            *slot = ops - at_most.min(ops);
        }
        LatencySlice { elapsed_ms, ops, over }
    }
}

/// One latency histogram for `latencies:` (server 5.1+ format, read in `hist.c` and `thr_info.c`
/// `cmd_latencies`):
///
/// `<name>:<units>,<ops/sec>,<pct over 1>,<pct over 2>,...,<pct over 65536>`: ops/sec with one
/// decimal, then [`LATENCY_COLUMNS`] percentages with two decimals; just `<name>:` before the
/// first slice closes. Histograms are joined with `;`, no trailing `;`, e.g.
/// `batch-index:;{test}-read:msec,120.0,0.40,0.10,0.00,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHist {
    /// The server's histogram name: `batch-index`, `{<ns>}-read`, `{<ns>}-write`, `{<ns>}-udf`,
    /// `{<ns>}-batch-sub-read`, `{<ns>}-pi-query`, ...
    pub name: String,
    /// Units of the thresholds.
    pub units: LatencyUnits,
    /// The last closed slice; `None` until one has closed.
    pub slice: Option<LatencySlice>,
}

/// Which settings `get-config` and `set-config` address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigContext<'a> {
    /// `context=service`.
    Service,
    /// `context=namespace;id=<ns>`: a namespace the source serves.
    Namespace(&'a str),
}

/// Why a truncate was refused (spec §2.2 `truncate`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TruncateError {
    /// The node has no such namespace: `ERROR:20:namespace not found on node`.
    #[error("namespace not found on node")]
    UnknownNamespace,
    /// The cut-off is later than the node's clock: `ERROR::would-truncate-in-the-future`, as the
    /// server.
    #[error("would-truncate-in-the-future")]
    LutInFuture,
    /// Any other failure, answered `ERROR::<message>`.
    #[error("{0}")]
    Failed(String),
}

/// The node state behind the info commands. The server implements it; tests use a fake.
///
/// Returned strings go on the wire as they are, except that TAB and `\n` are replaced by spaces
/// (spec §2.1). Names should also avoid `;`, `:` and `=`, which the clients use as separators
/// inside values.
pub trait InfoSource {
    /// `node`: the node name, non-empty, at most 19 characters, constant for the life of the
    /// process; the real server prints its 64-bit node id in uppercase hex (spec §2.2).
    fn node_name(&self) -> &str;

    /// `cluster-name`: the configured cluster name (spec §2.2). Clients with a configured name
    /// reject a node whose name differs.
    fn cluster_name(&self) -> &str;

    /// `build`: `major.minor.patch.build`, four numeric parts, ≥ 4.9.0.3 (spec §2.2, §2.5).
    fn build(&self) -> &str {
        DEFAULT_BUILD
    }

    /// The address clients use to reach this node (`service*` commands); its port is the default
    /// port in the `peers-*` values (spec §2.2).
    fn service_endpoint(&self) -> SocketAddr;

    /// `partition-generation`: changes whenever partition ownership changes; never -1, which the
    /// clients read as "not ready" (spec §2.2).
    fn partition_generation(&self) -> u32 {
        1
    }

    /// The other nodes of the cluster for `peers-*`: (node name, service address). Default
    /// none (a single node).
    fn peers(&self) -> Vec<(String, SocketAddr)> {
        Vec::new()
    }

    /// The `replicas` columns of this node: for each copy (master first) the 512-byte bitmap
    /// of the partitions it holds (spec §2.4). Default: one column, every partition.
    fn replica_bitmaps(&self) -> Vec<[u8; PARTITION_BITMAP_BYTES]> {
        vec![[0xFF; PARTITION_BITMAP_BYTES]]
    }

    /// `peers-generation`, also the first field of the `peers-*` values (spec §2.2).
    fn peers_generation(&self) -> u32 {
        1
    }

    /// `rebalance-generation` (spec §2.2; rack-aware clients only).
    fn rebalance_generation(&self) -> u32 {
        1
    }

    /// `namespaces`: the configured namespaces, in configuration order. At least one, each 1..31
    /// bytes; the C client keeps at most 32 (spec §2.4).
    fn namespaces(&self) -> Vec<String>;

    /// `namespace/<ns>`: the namespace's numbers, `None` for an unknown namespace.
    fn namespace_stats(&self, ns: &str) -> Option<NamespaceStats>;

    /// `statistics`: node-wide `key=value` pairs (`uptime`, `client_connections`, ...), printed
    /// after the module's `cluster_size=1;cluster_integrity=true;cluster_is_member=true`.
    fn statistics(&self) -> Vec<(String, String)>;

    /// `sets`: the sets of a known namespace, in a stable order.
    fn sets(&self, ns: &str) -> Vec<SetStats>;

    /// `truncate` / `truncate-namespace`: deletes the records of `ns` (of `set` only, if given)
    /// last updated before `lut_nanos` (Unix-epoch nanoseconds), or before now when `None`.
    /// The module has already checked that `lut_nanos` is after the Citrusleaf epoch; the source
    /// must refuse a cut-off later than its clock.
    ///
    /// # Errors
    /// [`TruncateError`], answered as the server words it.
    fn truncate(&mut self, ns: &str, set: Option<&str>, lut_nanos: Option<u64>) -> Result<(), TruncateError>;

    /// `latencies:`: the histograms, in the server's order (`batch-index`, then per namespace
    /// `read`, `write`, `udf`, `batch-sub-read`, `batch-sub-write`, `batch-sub-udf`, `pi-query`,
    /// `si-query`).
    fn latencies(&self) -> Vec<LatencyHist>;

    /// `get-config:context=service` (`Service`) or `get-config:context=namespace;id=<ns>`
    /// (`Namespace`, a known namespace): the settings as `(key, value)` in the server's
    /// spelling (`nsup-period`, `storage-engine.flush-max-ms`). Default: none.
    fn config(&self, context: ConfigContext<'_>) -> Vec<(String, String)> {
        let _ = context;
        Vec::new()
    }

    /// `set-config:context=..;[id=<ns>;]<key>=<value>`: changes one setting at run time.
    ///
    /// # Errors
    /// `Err(())` when `key` cannot change at run time or `value` is not valid for it: answered
    /// as the server, `ERROR:4:invalid set-config parameter`. Default: every key refused.
    #[allow(clippy::result_unit_err)]
    fn set_config(&mut self, context: ConfigContext<'_>, key: &str, value: &str) -> Result<(), ()> {
        let _ = (context, key, value);
        Err(())
    }

    /// `fail-device:worker=N` or `fail-device:device=D` (Bolide, tests and drills): fails
    /// worker `N`'s device, or device `D` under every worker that uses it, as if it died. The
    /// default refuses: only a node configured with `fault_injection` allows it.
    ///
    /// # Errors
    /// The reason, answered as `ERROR:4:<reason>`.
    fn fail_device(&mut self, worker: Option<&str>, device: Option<&str>) -> Result<(), String> {
        let _ = (worker, device);
        Err("fault injection is disabled (config key fault_injection)".into())
    }
}

/// Writes the response body for an info request body (spec §2.1): for each request line from
/// [`commands`], `<line>\t<value>\n`. The caller adds the proto header (type 1).
///
/// Values (spec §2.2 unless noted):
///
/// | command | value |
/// |---|---|
/// | `node`, `build`, `cluster-name` | from the source |
/// | `version`, `edition` | `<EDITION> build <build>`, [`EDITION`] (Bolide, "Aerospike Community Edition compatible") |
/// | `partition-generation`, `peers-generation`, `rebalance-generation` | from the source |
/// | `peers-{clear,tls}-{std,alt}`, `alumni-*` | `<peers-generation>,<port>,[]`: no peers |
/// | `replicas` | `<ns>:0,1,<684-char bitmap, every partition>` per namespace, `;`-joined (§2.4) |
/// | `replicas-all`, `replicas-master` | `<ns>:1,<bitmap>`, `<ns>:<bitmap>`, `;`-joined |
/// | `partitions` | `4096` |
/// | `service`, `service-clear-std`, `service-clear-alt` | `<host>:<port>` |
/// | `service-tls-*`, `services`, `services-alumni`, `services-alternate` | empty |
/// | `namespaces` | `;`-joined names |
/// | `namespace/<ns>` | `key=value;...`, or `type=unknown` |
/// | `sets`, `sets/<ns>` | `ns=<ns>:set=<set>:objects=..:...;` per set |
/// | `sets/<ns>/<set>` | that set's properties alone, `objects=..:...;` |
/// | `statistics` | `key=value;...` |
/// | `features` | [`FEATURES`] |
/// | `rack-ids` | `<ns>:0;...` |
/// | `truncate:namespace=..;set=..[;lut=..]`, `truncate-namespace:namespace=..[;lut=..]` | `ok` (also for an unknown namespace, as the server), or `ERROR:4:would truncate ..` |
/// | `user-agent-set:value=..`, `status` | `ok` |
/// | `latencies:[hist=<name>]` | see [`LatencyHist`] |
/// | `get-config[:context=service]`, `get-config:context=namespace;id=<ns>` | `key=value;...` from [`InfoSource::config`] |
/// | `set-config:context=..;[id=<ns>;]<key>=<value>` | `ok`, or `ERROR:4:invalid set-config parameter` |
/// | `udf-list`, `udf-get`, `udf-remove`, `udf-put` | empty, `error=not_found`, `ok`, `error=unsupported_feature;..` (no UDFs) |
/// | `sindex-list`, `sindex[/<ns>]`, `sindex-exists`, `sindex-delete`, `sindex-create` | empty, empty, `false`, `ok`, `ERROR:16:..` (no secondary indexes) |
/// | `logs` | `0:stderr` |
/// | `fail-device:worker=N`, `fail-device:device=D` | `ok`, or `ERROR:4:..` unless fault injection is on (Bolide) |
/// | anything else | `ERROR:4:unrecognized command` |
///
/// Never panics on any input; TAB and `\n` inside a value become spaces.
pub fn respond(body: &[u8], src: &mut dyn InfoSource, out: &mut Vec<u8>) {
    for cmd in commands(body) {
        out.extend_from_slice(cmd.line);
        out.push(b'\t');
        let value_start = out.len();
        answer(&cmd, src, out);
        sanitize(&mut out[value_start..]);
        out.push(b'\n');
    }
}

/// Replaces the response framing characters (spec §2.1) inside a value. UTF-8 continuation bytes
/// are ≥ 0x80, so this never splits a character.
fn sanitize(value: &mut [u8]) {
    for b in value.iter_mut().filter(|b| matches!(**b, b'\t' | b'\n')) {
        *b = b' ';
    }
}

fn put(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    out.write_fmt(args).expect("writing to a Vec<u8> cannot fail");
}

/// `ERROR:<code>:<message>`; the code is left out when it is 1 (spec §2.1).
fn error(out: &mut Vec<u8>, code: u8, message: &str) {
    if code == result_code::SERVER_ERROR {
        put(out, format_args!("ERROR::{message}"));
    } else {
        put(out, format_args!("ERROR:{code}:{message}"));
    }
}

/// Writes `items` separated by `sep`, each through `item`.
fn join<T>(out: &mut Vec<u8>, items: &[T], sep: u8, mut item: impl FnMut(&mut Vec<u8>, &T)) {
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        item(out, x);
    }
}

fn answer(cmd: &InfoCommand<'_>, src: &mut dyn InfoSource, out: &mut Vec<u8>) {
    match cmd.name {
        "node" => out.extend_from_slice(src.node_name().as_bytes()),
        "build" => out.extend_from_slice(src.build().as_bytes()),
        "version" => put(out, format_args!("{EDITION} build {}", src.build())),
        "edition" => out.extend_from_slice(EDITION.as_bytes()),
        "partition-generation" => put(out, format_args!("{}", src.partition_generation())),
        "peers-generation" => put(out, format_args!("{}", src.peers_generation())),
        "rebalance-generation" => put(out, format_args!("{}", src.rebalance_generation())),
        "cluster-name" => out.extend_from_slice(src.cluster_name().as_bytes()),
        "peers-clear-std" | "peers-clear-alt" | "peers-tls-std" | "peers-tls-alt" | "alumni-clear-std"
        | "alumni-clear-alt" | "alumni-tls-std" | "alumni-tls-alt" => {
            // `<gen>,<default-port>,[[<node>,<tls-name>,[<host>:<port>]],...]` (spec §2.2); a
            // single node has no peers: `<gen>,<port>,[]`. TLS and alumni lists are empty.
            let port = src.service_endpoint().port();
            put(out, format_args!("{},{},[", src.peers_generation(), port));
            if matches!(cmd.name, "peers-clear-std" | "peers-clear-alt") {
                let peers = src.peers();
                join(out, &peers, b',', |out, (name, addr)| {
                    put(out, format_args!("[{name},,[{addr}]]"))
                });
            }
            out.push(b']');
        }
        "replicas" => replicas(out, &src.namespaces(), &src.replica_bitmaps(), true, true),
        "replicas-all" => replicas(out, &src.namespaces(), &src.replica_bitmaps(), false, true),
        "replicas-master" => replicas(out, &src.namespaces(), &src.replica_bitmaps()[..1], false, false),
        "partitions" => put(out, format_args!("{N_PARTITIONS}")),
        // `SocketAddr` prints IPv6 in brackets, as the clients expect (spec §2.2).
        "service" | "service-clear-std" | "service-clear-alt" => put(out, format_args!("{}", src.service_endpoint())),
        // No TLS service, no other nodes: empty, which the C client accepts (spec §2.2).
        "service-tls-std" | "service-tls-alt" | "services" | "services-alumni" | "services-alternate" => {}
        "namespaces" => join(out, &src.namespaces(), b';', |out, ns| {
            out.extend_from_slice(ns.as_bytes())
        }),
        "namespace" => namespace(out, src, cmd.args),
        "sets" => sets(out, src, cmd),
        "statistics" => statistics(out, src),
        "features" => out.extend_from_slice(FEATURES.as_bytes()),
        "rack-ids" => join(out, &src.namespaces(), b';', |out, ns| put(out, format_args!("{ns}:0"))),
        "get-config" | "config-get" => get_config(out, src, cmd),
        "set-config" | "config-set" => set_config(out, src, cmd),
        // No UDFs: `udf-list` lists none, `udf-get` finds none, `udf-remove` of a module that
        // is not there is `ok` (the server's SMD delete), and `udf-put` fails in the server's
        // `error=` form, which the clients turn into a failed register call.
        "udf-list" => {}
        "udf-get" => out.extend_from_slice(b"error=not_found"),
        "udf-remove" => match cmd.param("filename") {
            Some(f) if !f.is_empty() => out.extend_from_slice(b"ok"),
            _ => out.extend_from_slice(b"error=invalid_filename"),
        },
        "udf-put" => out.extend_from_slice(b"error=unsupported_feature;message=Bolide does not run UDFs"),
        // No secondary indexes: none listed, none exists, deleting one that is not there is
        // `ok` (as the server), and creating one fails with code 16 (unsupported feature).
        "sindex-list" => {}
        "sindex-exists" => out.extend_from_slice(b"false"),
        "sindex-delete" => sindex_delete(out, cmd),
        "sindex-create" => error(
            out,
            result_code::UNSUPPORTED_FEATURE,
            "secondary indexes are not supported",
        ),
        "sindex" => sindex(out, src, cmd),
        // The log sinks (`cf_log_get_sinks`): Bolide logs to stderr only.
        "logs" => out.extend_from_slice(b"0:stderr"),
        "truncate" => truncate(out, src, cmd, true),
        "truncate-namespace" => truncate(out, src, cmd, false),
        "user-agent-set" | "status" => out.extend_from_slice(b"ok"),
        "latencies" => latencies(out, src, cmd),
        "fail-device" => match src.fail_device(cmd.param("worker"), cmd.param("device")) {
            Ok(()) => out.extend_from_slice(b"ok"),
            Err(e) => error(out, result_code::PARAMETER, &e),
        },
        _ if cmd.line.len() > MAX_LINE_BYTES => error(out, result_code::PARAMETER, "command too long"),
        _ => error(out, result_code::PARAMETER, "unrecognized command"),
    }
}

/// The `replicas` family (spec §2.4): `<ns>:[<regime>,]<n>,<b64>,...` per namespace, joined
/// with `;` (no trailing `;`). `replicas-master` passes one column and no count.
fn replicas(
    out: &mut Vec<u8>,
    namespaces: &[String],
    columns: &[[u8; PARTITION_BITMAP_BYTES]],
    regime: bool,
    count: bool,
) {
    let encoded: Vec<String> = columns
        .iter()
        .map(|c| {
            let b = base64::engine::general_purpose::STANDARD.encode(c);
            debug_assert_eq!(b.len(), PARTITION_BITMAP_B64_LEN);
            b
        })
        .collect();
    join(out, namespaces, b';', |out, ns| {
        put(out, format_args!("{ns}:"));
        if regime {
            out.extend_from_slice(b"0,");
        }
        if count {
            put(out, format_args!("{},", encoded.len()));
        }
        join(out, &encoded, b',', |out, b| out.extend_from_slice(b.as_bytes()));
    });
}

fn pairs(out: &mut Vec<u8>, pairs: &[(String, String)]) {
    join(out, pairs, b';', |out, (k, v)| put(out, format_args!("{k}={v}")));
}

/// `namespace/<ns>`; `type=unknown` for an unknown namespace, as the server (clients do not expect
/// an error here).
fn namespace(out: &mut Vec<u8>, src: &dyn InfoSource, ns: &str) {
    let Some(s) = src.namespace_stats(ns) else {
        out.extend_from_slice(b"type=unknown");
        return;
    };
    put(
        out,
        format_args!(
            "ns_cluster_size=1;effective_replication_factor=1;objects={o};tombstones={t};master_objects={o};\
             master_tombstones={t};prole_objects=0;prole_tombstones=0;non_replica_objects=0;\
             non_replica_tombstones=0;dead_partitions=0;unavailable_partitions=0;data_used_bytes={u}",
            o = s.objects,
            t = s.tombstones,
            u = s.data_used_bytes,
        ),
    );
    if s.data_total_bytes != 0 {
        let pct = u128::from(s.data_used_bytes) * 100 / u128::from(s.data_total_bytes);
        put(
            out,
            format_args!(";data_total_bytes={};data_used_pct={pct}", s.data_total_bytes),
        );
    }
    if !s.extra.is_empty() {
        out.push(b';');
        pairs(out, &s.extra);
    }
    out.extend_from_slice(b";replication-factor=1");
}

/// `sets`, `sets/<ns>`, `sets/<ns>/<set>` (`thr_info.c` `cmd_sets`, `namespace.c`
/// `as_namespace_get_set_info`).
fn sets(out: &mut Vec<u8>, src: &dyn InfoSource, cmd: &InfoCommand<'_>) {
    let ns = cmd.path().next();
    let set = cmd.args.split_once('/').map(|(_, set)| set);
    let namespaces = src.namespaces();
    match ns {
        None => {
            for ns in &namespaces {
                for s in src.sets(ns) {
                    set_line(out, ns, &s);
                }
            }
        }
        Some(ns) if !namespaces.iter().any(|n| n == ns) => out.extend_from_slice(b"ns_type=unknown"),
        Some(ns) => match set {
            None => {
                for s in src.sets(ns) {
                    set_line(out, ns, &s);
                }
            }
            // One set: its bare properties, or nothing when the set does not exist.
            Some(set) => {
                if let Some(s) = src.sets(ns).iter().find(|s| s.name == set) {
                    set_props(out, s);
                }
            }
        },
    }
}

fn set_line(out: &mut Vec<u8>, ns: &str, s: &SetStats) {
    put(out, format_args!("ns={ns}:set={}:", s.name));
    set_props(out, s);
}

/// The properties of one set, in the 7.0+ server's order, ending with `;` (`namespace.c`
/// `append_set_props`).
fn set_props(out: &mut Vec<u8>, s: &SetStats) {
    put(
        out,
        format_args!(
            "objects={}:tombstones={}:data_used_bytes={}:truncate_lut={}:sindexes=0:index_populating=false:\
             truncating={}:default-read-touch-ttl-pct=0:default-ttl={}:disable-eviction=false:enable-index=false:\
             stop-writes-count={}:stop-writes-size={};",
            s.objects,
            s.tombstones,
            s.data_used_bytes,
            s.truncate_lut,
            s.truncating,
            s.default_ttl,
            s.stop_writes_count,
            s.stop_writes_size,
        ),
    );
}

fn statistics(out: &mut Vec<u8>, src: &dyn InfoSource) {
    out.extend_from_slice(b"cluster_size=1;cluster_integrity=true;cluster_is_member=true");
    let stats = src.statistics();
    if !stats.is_empty() {
        out.push(b';');
        pairs(out, &stats);
    }
}

/// A parameter as the server's `as_info_parameter_get` into a `cap`-byte buffer, checked as
/// its `as_info_optional_param_is_ok`: `Ok(None)` when absent; an error answer
/// (`missing '<key>' value`, `'<key>' value too long`; code 20 for `namespace`, else 4) when
/// empty or at least `cap` bytes.
fn bounded_param<'a>(cmd: &InfoCommand<'a>, key: &str, cap: usize) -> Result<Option<&'a str>, (u8, String)> {
    let code = if key == "namespace" {
        result_code::NAMESPACE_NOT_FOUND
    } else {
        result_code::PARAMETER
    };
    match cmd.param(key) {
        None => Ok(None),
        Some("") => Err((code, format!("missing '{key}' value"))),
        Some(v) if v.len() >= cap => Err((code, format!("'{key}' value too long"))),
        Some(v) => Ok(Some(v)),
    }
}

/// [`bounded_param`] for a parameter the command needs: absent answers `missing '<key>'`.
fn required_param<'a>(cmd: &InfoCommand<'a>, key: &str, cap: usize) -> Result<&'a str, (u8, String)> {
    bounded_param(cmd, key, cap)?.ok_or_else(|| {
        let code = if key == "namespace" {
            result_code::NAMESPACE_NOT_FOUND
        } else {
            result_code::PARAMETER
        };
        (code, format!("missing '{key}'"))
    })
}

/// Buffer sizes of the server's parameter reads: `AS_ID_NAMESPACE_SZ`, `AS_SET_NAME_MAX_SIZE`,
/// and the truncate `lut` string.
const NAMESPACE_PARAM_CAP: usize = 32;
const SET_PARAM_CAP: usize = 64;
const LUT_PARAM_CAP: usize = 24;

/// `truncate` (`with_set`) and `truncate-namespace`, with the server's parameter checks and
/// texts (`thr_info.c` `cmd_truncate*`, `truncate.c` `as_truncate_cmd`). As the server, a
/// namespace this node does not have is answered `ok`: the server hands the command to the
/// cluster's metadata store without looking the namespace up.
fn truncate(out: &mut Vec<u8>, src: &mut dyn InfoSource, cmd: &InfoCommand<'_>, with_set: bool) {
    /// (namespace, set, cut-off in Unix ns), or the error answer (code, message).
    type Checked<'a> = Result<(&'a str, Option<&'a str>, Option<u64>), (u8, String)>;
    let checked = || -> Checked<'_> {
        let ns = required_param(cmd, "namespace", NAMESPACE_PARAM_CAP)?;
        let set = if with_set {
            Some(required_param(cmd, "set", SET_PARAM_CAP)?)
        } else if cmd.param("set").is_some() {
            return Err((result_code::PARAMETER, "unexpected set name".into()));
        } else {
            None
        };
        let lut_nanos = match bounded_param(cmd, "lut", LUT_PARAM_CAP)? {
            None => None,
            Some(lut) => {
                let nanos = parse_c_ulong(lut);
                // The server converts to Citrusleaf-epoch milliseconds and refuses 0
                // (`cf_clepoch_ms_from_utc_ns`, spec §10.5).
                if nanos / 1_000_000 <= CITRUSLEAF_EPOCH_SECS * 1000 {
                    return Err((result_code::PARAMETER, "would truncate to 0".into()));
                }
                Some(nanos)
            }
        };
        Ok((ns, set, lut_nanos))
    };
    let (ns, set, lut_nanos) = match checked() {
        Ok(v) => v,
        Err((code, message)) => return error(out, code, &message),
    };
    match src.truncate(ns, set, lut_nanos) {
        Ok(()) | Err(TruncateError::UnknownNamespace) => out.extend_from_slice(b"ok"),
        Err(TruncateError::LutInFuture) => error(out, result_code::PARAMETER, "would truncate in the future"),
        Err(e) => error(out, result_code::SERVER_ERROR, &e.to_string()),
    }
}

/// The `context` and, for `namespace`, the `id` of a get-config or set-config request, checked
/// as the server (`cfg_info.c`): `missing 'context'` and `invalid context` (4), `missing
/// 'namespace'` and `namespace not found on node` (20).
fn config_context<'a>(src: &dyn InfoSource, cmd: &InfoCommand<'a>) -> Result<ConfigContext<'a>, (u8, String)> {
    match required_param(cmd, "context", 1024)? {
        "service" => Ok(ConfigContext::Service),
        "namespace" => {
            let ns = match bounded_param(cmd, "id", NAMESPACE_PARAM_CAP) {
                Ok(Some(ns)) => ns,
                Ok(None) => return Err((result_code::NAMESPACE_NOT_FOUND, "missing 'namespace'".into())),
                Err((_, m)) => {
                    return Err((result_code::NAMESPACE_NOT_FOUND, m.replace("'id'", "'namespace'")));
                }
            };
            if src.namespaces().iter().any(|n| n == ns) {
                Ok(ConfigContext::Namespace(ns))
            } else {
                Err((result_code::NAMESPACE_NOT_FOUND, "namespace not found on node".into()))
            }
        }
        _ => Err((result_code::PARAMETER, "invalid context".into())),
    }
}

/// `get-config` (`as_cfg_info_cmd_get_config`): without parameters the service settings, with
/// `context=service` or `context=namespace;id=<ns>` that context's; `key=value;...` without a
/// trailing `;`.
fn get_config(out: &mut Vec<u8>, src: &dyn InfoSource, cmd: &InfoCommand<'_>) {
    let context = if cmd.args.is_empty() {
        ConfigContext::Service
    } else {
        match config_context(src, cmd) {
            Ok(c) => c,
            Err((code, message)) => return error(out, code, &message),
        }
    };
    pairs(out, &src.config(context));
}

/// `set-config:context=..;[id=<ns>;]<key>=<value>` (`cfg_info.c` `cfg_set`): `ok`, or the
/// server's `ERROR:4:invalid set-config parameter` for a key that cannot change (or a bad
/// value).
fn set_config(out: &mut Vec<u8>, src: &mut dyn InfoSource, cmd: &InfoCommand<'_>) {
    let context = match config_context(src, cmd) {
        Ok(c) => c,
        Err((code, message)) => return error(out, code, &message),
    };
    let setting = cmd.params().find(|(k, _)| !matches!(*k, "context" | "id"));
    let applied = match setting {
        Some((key, value)) => src.set_config(context, key, value),
        None => Err(()),
    };
    match applied {
        Ok(()) => out.extend_from_slice(b"ok"),
        Err(()) => error(out, result_code::PARAMETER, "invalid set-config parameter"),
    }
}

/// `sindex-delete:ns=<ns>;indexname=<name>` (`as_sindex_manager_sindex_delete`): there are no
/// secondary indexes, so every well-formed request deletes nothing and answers `ok`.
fn sindex_delete(out: &mut Vec<u8>, cmd: &InfoCommand<'_>) {
    let name = bounded_param(cmd, "indexname", 64)
        .and_then(|v| v.ok_or((result_code::PARAMETER, "missing 'indexname'".into())));
    if let Err((code, message)) = name {
        return error(out, code, &message);
    }
    let ns = cmd.param("namespace").or_else(|| cmd.param("ns"));
    match ns {
        None => error(out, result_code::NAMESPACE_NOT_FOUND, "missing 'namespace'"),
        Some("") => error(out, result_code::NAMESPACE_NOT_FOUND, "missing 'namespace' value"),
        Some(_) => out.extend_from_slice(b"ok"),
    }
}

/// `sindex`, `sindex/<ns>`, `sindex/<ns>/<index>` (`thr_info.c` `cmd_sindex`): no indexes to
/// list; `ns_type=unknown` for an unknown namespace, `ERROR:201:no index` for a named index.
fn sindex(out: &mut Vec<u8>, src: &dyn InfoSource, cmd: &InfoCommand<'_>) {
    if cmd.args.is_empty() {
        return;
    }
    let (ns, index) = match cmd.args.split_once('/') {
        Some((ns, index)) => (ns, Some(index)),
        None => (cmd.args, None),
    };
    if !src.namespaces().iter().any(|n| n == ns) {
        out.extend_from_slice(b"ns_type=unknown");
    } else if index.is_some() {
        error(out, result_code::SINDEX_NOT_FOUND, "no index");
    }
}

/// Reads a number as C `strtoul(s, NULL, 0)`: `0x` hex, leading-`0` octal or decimal, the longest
/// valid prefix, 0 when there is none, saturating at `u64::MAX`.
fn parse_c_ulong(s: &str) -> u64 {
    let s = s.trim_start();
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    let mut n = 0u64;
    for d in digits.chars().map_while(|c| c.to_digit(radix)) {
        n = n.saturating_mul(u64::from(radix)).saturating_add(u64::from(d));
    }
    n
}

/// `latencies:` and `latencies:hist=<name>` (`thr_info.c` `cmd_latencies`).
fn latencies(out: &mut Vec<u8>, src: &dyn InfoSource, cmd: &InfoCommand<'_>) {
    let hists = src.latencies();
    match cmd.param("hist") {
        None => join(out, &hists, b';', latency_hist),
        Some("") => error(out, result_code::PARAMETER, "missing 'hist' value"),
        Some(name) => match hists.iter().find(|h| h.name == name) {
            Some(h) => latency_hist(out, h),
            None => error(out, result_code::PARAMETER, "bad hist name"),
        },
    }
}

fn latency_hist(out: &mut Vec<u8>, h: &LatencyHist) {
    put(out, format_args!("{}:", h.name));
    let Some(slice) = h.slice else {
        return;
    };
    let ops_per_sec = if slice.elapsed_ms == 0 {
        0.0
    } else {
        slice.ops as f64 * 1000.0 / slice.elapsed_ms as f64
    };
    put(out, format_args!("{},{ops_per_sec:.1}", h.units.tag()));
    for over in slice.over {
        debug_assert!(
            over <= slice.ops,
            "histogram {}: over {over} > ops {}",
            h.name,
            slice.ops
        );
        let pct = if slice.ops == 0 {
            0.0
        } else {
            over.min(slice.ops) as f64 * 100.0 / slice.ops as f64
        };
        put(out, format_args!(",{pct:.2}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NODE: &str = "BB9020011AC4202";
    const BITMAP: &str = concat!(
        "////////////////////////////////////////////////////////////////////////////////////////////////////",
        "////////////////////////////////////////////////////////////////////////////////////////////////////",
        "////////////////////////////////////////////////////////////////////////////////////////////////////",
        "////////////////////////////////////////////////////////////////////////////////////////////////////",
        "////////////////////////////////////////////////////////////////////////////////////////////////////",
        "////////////////////////////////////////////////////////////////////////////////////////////////////",
        "////////////////////////////////////////////////////////////////////////////////",
        "//8=",
    );

    /// A source with fixed answers that records truncate calls.
    struct Fake {
        name: String,
        namespaces: Vec<String>,
        truncates: Vec<(String, Option<String>, Option<u64>)>,
        truncate_result: Result<(), TruncateError>,
        hists: Vec<LatencyHist>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                name: NODE.into(),
                namespaces: vec!["test".into()],
                truncates: Vec::new(),
                truncate_result: Ok(()),
                hists: Vec::new(),
            }
        }
    }

    impl InfoSource for Fake {
        fn node_name(&self) -> &str {
            &self.name
        }
        fn cluster_name(&self) -> &str {
            "bolide"
        }
        fn service_endpoint(&self) -> SocketAddr {
            "127.0.0.1:3000".parse().unwrap()
        }
        fn namespaces(&self) -> Vec<String> {
            self.namespaces.clone()
        }
        fn namespace_stats(&self, ns: &str) -> Option<NamespaceStats> {
            self.namespaces.iter().any(|n| n == ns).then(|| NamespaceStats {
                objects: 7,
                tombstones: 1,
                data_used_bytes: 4096,
                data_total_bytes: 16384,
                extra: vec![
                    ("default-ttl".into(), "0".into()),
                    ("storage-engine".into(), "device".into()),
                ],
            })
        }
        fn statistics(&self) -> Vec<(String, String)> {
            vec![("objects".into(), "7".into()), ("uptime".into(), "12".into())]
        }
        fn sets(&self, ns: &str) -> Vec<SetStats> {
            if ns != "test" {
                return Vec::new();
            }
            vec![
                SetStats {
                    name: "demo".into(),
                    objects: 5,
                    data_used_bytes: 640,
                    ..SetStats::default()
                },
                SetStats {
                    name: "users".into(),
                    objects: 2,
                    tombstones: 1,
                    truncate_lut: 99,
                    ..SetStats::default()
                },
            ]
        }
        fn truncate(&mut self, ns: &str, set: Option<&str>, lut: Option<u64>) -> Result<(), TruncateError> {
            self.truncates.push((ns.into(), set.map(Into::into), lut));
            self.truncate_result.clone()
        }
        fn latencies(&self) -> Vec<LatencyHist> {
            self.hists.clone()
        }
    }

    fn ask(src: &mut Fake, body: &str) -> String {
        let mut out = Vec::new();
        respond(body.as_bytes(), src, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The C client's `as_info_validate` (spec §2.1): would this response fail the call?
    fn c_client_rejects(response: &str) -> bool {
        response.starts_with("ERROR:") || ["\tERROR:", "\tFAIL:", "\terror="].iter().any(|p| response.contains(p))
    }

    #[test]
    fn python_client_tend_sequence() {
        // Spec §2.3, Python 19.3.0 steps 1, 3, 4, 5.
        let mut src = Fake::new();
        assert_eq!(
            ask(&mut src, "node\npartition-generation\nbuild\n"),
            format!("node\t{NODE}\npartition-generation\t1\nbuild\t8.0.0.0\n")
        );
        assert_eq!(ask(&mut src, "peers-clear-std\n"), "peers-clear-std\t1,3000,[]\n");
        assert_eq!(
            ask(&mut src, "partition-generation\nreplicas\n"),
            format!("partition-generation\t1\nreplicas\ttest:0,1,{BITMAP}\n")
        );
        assert_eq!(
            ask(&mut src, "node\npeers-generation\npartition-generation\n"),
            format!("node\t{NODE}\npeers-generation\t1\npartition-generation\t1\n")
        );
        // With a configured cluster name, a rack-aware client and a non-local seed.
        assert_eq!(
            ask(
                &mut src,
                "node\npartition-generation\nbuild\ncluster-name\nservice-clear-std\n"
            ),
            format!(
                "node\t{NODE}\npartition-generation\t1\nbuild\t8.0.0.0\ncluster-name\tbolide\n\
                 service-clear-std\t127.0.0.1:3000\n"
            )
        );
        assert_eq!(
            ask(
                &mut src,
                "node\npeers-generation\npartition-generation\nrebalance-generation\n"
            ),
            format!("node\t{NODE}\npeers-generation\t1\npartition-generation\t1\nrebalance-generation\t1\n")
        );
        assert_eq!(ask(&mut src, "rack-ids\n"), "rack-ids\ttest:0\n");
    }

    #[test]
    fn rust_client_tend_sequence() {
        // Spec §2.3, Rust 3.0.0 steps 1, 3, 4, 5.
        let mut src = Fake::new();
        assert_eq!(
            ask(&mut src, "node\ncluster-name\nbuild\npartition-generation\n"),
            format!("node\t{NODE}\ncluster-name\tbolide\nbuild\t8.0.0.0\npartition-generation\t1\n")
        );
        assert_eq!(ask(&mut src, "peers-clear-std\n"), "peers-clear-std\t1,3000,[]\n");
        assert_eq!(
            ask(&mut src, "replicas\npartition-generation\n"),
            format!("replicas\ttest:0,1,{BITMAP}\npartition-generation\t1\n")
        );
        assert_eq!(
            ask(&mut src, "node\ncluster-name\npeers-generation\npartition-generation\n"),
            format!("node\t{NODE}\ncluster-name\tbolide\npeers-generation\t1\npartition-generation\t1\n")
        );
        // A build ≥ 8.1 would make both clients send this once (spec §2.3 step 2).
        let ua = "user-agent-set:value=MSxydXN0LTMuMC4wLG5vdC1zZXQ=";
        assert_eq!(ask(&mut src, &format!("{ua}\n")), format!("{ua}\tok\n"));
    }

    #[test]
    fn replicas_bitmap_format() {
        let mut src = Fake::new();
        assert_eq!(BITMAP.len(), PARTITION_BITMAP_B64_LEN);
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode([0xFF; PARTITION_BITMAP_BYTES]),
            BITMAP
        );
        assert!(BITMAP.ends_with("8=") && !BITMAP.ends_with("=="));
        let decoded = base64::engine::general_purpose::STANDARD.decode(BITMAP).unwrap();
        assert_eq!(decoded, vec![0xFF; 512]);
        // Every partition p is owned: bitmap[p >> 3] & (0x80 >> (p & 7)) (spec §2.4).
        assert!((0..N_PARTITIONS).all(|p| decoded[p >> 3] & (0x80 >> (p & 7)) != 0));

        src.namespaces = vec!["test".into(), "bar".into()];
        let value = ask(&mut src, "replicas\n");
        let value = value.strip_prefix("replicas\t").unwrap().strip_suffix('\n').unwrap();
        assert_eq!(value, format!("test:0,1,{BITMAP};bar:0,1,{BITMAP}"));
        assert!(!value.ends_with(';'));
        for part in value.split(';') {
            let (_, cols) = part.split_once(':').unwrap();
            let cols: Vec<&str> = cols.split(',').collect();
            assert_eq!(cols.len(), 3);
            assert_eq!((cols[0], cols[1], cols[2].len()), ("0", "1", 684));
        }
        assert_eq!(
            ask(&mut src, "replicas-all\nreplicas-master\n"),
            format!("replicas-all\ttest:1,{BITMAP};bar:1,{BITMAP}\nreplicas-master\ttest:{BITMAP};bar:{BITMAP}\n")
        );
    }

    #[test]
    fn peers_and_services() {
        let mut src = Fake::new();
        for name in [
            "peers-clear-std",
            "peers-clear-alt",
            "peers-tls-std",
            "peers-tls-alt",
            "alumni-clear-std",
        ] {
            assert_eq!(ask(&mut src, &format!("{name}\n")), format!("{name}\t1,3000,[]\n"));
        }
        assert_eq!(ask(&mut src, "service\n"), "service\t127.0.0.1:3000\n");
        assert_eq!(
            ask(&mut src, "services\nservices-alumni\n"),
            "services\t\nservices-alumni\t\n"
        );
        assert_eq!(ask(&mut src, "service-tls-std\n"), "service-tls-std\t\n");
        assert_eq!(ask(&mut src, "partitions\n"), "partitions\t4096\n");
    }

    /// A source with other generations, an IPv6 endpoint and a custom build.
    struct V6(Fake);

    impl InfoSource for V6 {
        fn node_name(&self) -> &str {
            self.0.node_name()
        }
        fn cluster_name(&self) -> &str {
            ""
        }
        fn build(&self) -> &str {
            "8.0.0.0-bolide"
        }
        fn service_endpoint(&self) -> SocketAddr {
            "[::1]:3100".parse().unwrap()
        }
        fn partition_generation(&self) -> u32 {
            5
        }
        fn peers_generation(&self) -> u32 {
            3
        }
        fn namespaces(&self) -> Vec<String> {
            self.0.namespaces()
        }
        fn namespace_stats(&self, ns: &str) -> Option<NamespaceStats> {
            self.0.namespace_stats(ns)
        }
        fn statistics(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn sets(&self, ns: &str) -> Vec<SetStats> {
            self.0.sets(ns)
        }
        fn truncate(&mut self, ns: &str, set: Option<&str>, lut: Option<u64>) -> Result<(), TruncateError> {
            self.0.truncate(ns, set, lut)
        }
        fn latencies(&self) -> Vec<LatencyHist> {
            Vec::new()
        }
    }

    #[test]
    fn source_overrides() {
        let mut src = V6(Fake::new());
        let mut out = Vec::new();
        respond(
            b"peers-generation\npeers-clear-std\nservice-clear-std\npartition-generation\nbuild\nversion\n\
              cluster-name\nstatistics\n",
            &mut src,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "peers-generation\t3\npeers-clear-std\t3,3100,[]\nservice-clear-std\t[::1]:3100\n\
             partition-generation\t5\nbuild\t8.0.0.0-bolide\n\
             version\t{EDITION} build 8.0.0.0-bolide\ncluster-name\t\n\
             statistics\tcluster_size=1;cluster_integrity=true;cluster_is_member=true\n"
            )
        );
    }

    #[test]
    fn lines_echoed_verbatim() {
        let mut src = Fake::new();
        assert_eq!(
            ask(&mut src, "namespace/test\nsets/test/demo\nlatencies:\nfeatures\n"),
            format!(
                "namespace/test\tns_cluster_size=1;effective_replication_factor=1;objects=7;tombstones=1;\
                 master_objects=7;master_tombstones=1;prole_objects=0;prole_tombstones=0;non_replica_objects=0;\
                 non_replica_tombstones=0;dead_partitions=0;unavailable_partitions=0;data_used_bytes=4096;\
                 data_total_bytes=16384;data_used_pct=25;default-ttl=0;storage-engine=device;replication-factor=1\n\
                 sets/test/demo\tobjects=5:tombstones=0:data_used_bytes=640:truncate_lut=0:sindexes=0:\
                 index_populating=false:truncating=false:default-read-touch-ttl-pct=0:default-ttl=0:\
                 disable-eviction=false:enable-index=false:stop-writes-count=0:stop-writes-size=0;\n\
                 latencies:\t\nfeatures\t{FEATURES}\n"
            )
        );
        // Parameters and odd spellings come back exactly as sent, the `\r` included.
        let lines = [
            "truncate:namespace=test;set=demo;lut=1700000000000000000",
            "node\r",
            "replicas:max=2;",
        ];
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let response = ask(&mut src, &body);
        let echoed: Vec<&str> = response.lines().map(|l| l.split_once('\t').unwrap().0).collect();
        assert_eq!(echoed, lines);
        assert_eq!(
            src.truncates,
            vec![("test".into(), Some("demo".into()), Some(1_700_000_000_000_000_000))]
        );
    }

    #[test]
    fn namespaces_and_statistics() {
        let mut src = Fake::new();
        src.namespaces = vec!["test".into(), "bar".into()];
        assert_eq!(ask(&mut src, "namespaces\n"), "namespaces\ttest;bar\n");
        assert_eq!(ask(&mut src, "rack-ids\n"), "rack-ids\ttest:0;bar:0\n");
        assert_eq!(
            ask(&mut src, "namespace/nope\nnamespace\n"),
            "namespace/nope\ttype=unknown\nnamespace\ttype=unknown\n"
        );
        assert_eq!(
            ask(&mut src, "statistics\n"),
            "statistics\tcluster_size=1;cluster_integrity=true;cluster_is_member=true;objects=7;uptime=12\n"
        );
        assert_eq!(
            ask(&mut src, "edition\nversion\n"),
            format!("edition\t{EDITION}\nversion\t{EDITION} build 8.0.0.0\n")
        );
        assert!(EDITION.starts_with("Bolide ") && EDITION.contains("Community Edition"));
        assert!(!EDITION.contains("Enterprise"));
    }

    #[test]
    fn sets_formats() {
        let mut src = Fake::new();
        src.namespaces = vec!["test".into(), "bar".into()];
        let demo = "ns=test:set=demo:objects=5:tombstones=0:data_used_bytes=640:truncate_lut=0:sindexes=0:\
                    index_populating=false:truncating=false:default-read-touch-ttl-pct=0:default-ttl=0:\
                    disable-eviction=false:enable-index=false:stop-writes-count=0:stop-writes-size=0;";
        let users = "ns=test:set=users:objects=2:tombstones=1:data_used_bytes=0:truncate_lut=99:sindexes=0:\
                     index_populating=false:truncating=false:default-read-touch-ttl-pct=0:default-ttl=0:\
                     disable-eviction=false:enable-index=false:stop-writes-count=0:stop-writes-size=0;";
        assert_eq!(ask(&mut src, "sets\n"), format!("sets\t{demo}{users}\n"));
        assert_eq!(ask(&mut src, "sets/test\n"), format!("sets/test\t{demo}{users}\n"));
        assert_eq!(ask(&mut src, "sets/bar\n"), "sets/bar\t\n");
        assert_eq!(ask(&mut src, "sets/nope\n"), "sets/nope\tns_type=unknown\n");
        assert_eq!(
            ask(&mut src, "sets/test/nope\nsets/test/\n"),
            "sets/test/nope\t\nsets/test/\t\n"
        );
        let props = users.strip_prefix("ns=test:set=users:").unwrap();
        assert_eq!(
            ask(&mut src, "sets/test/users\n"),
            format!("sets/test/users\t{props}\n")
        );
    }

    #[test]
    fn unknown_commands() {
        let mut src = Fake::new();
        assert_eq!(ask(&mut src, "bogus\n"), "bogus\tERROR:4:unrecognized command\n");
        // One bad name among good ones: only its own line is an error, in request order.
        assert_eq!(
            ask(&mut src, "node\nsindex-stat\nbuild\n"),
            format!("node\t{NODE}\nsindex-stat\tERROR:4:unrecognized command\nbuild\t8.0.0.0\n")
        );
        // Names are case-sensitive; a name ends at the first '/', ':' or ';'.
        assert_eq!(ask(&mut src, "NODE\n"), "NODE\tERROR:4:unrecognized command\n");
        assert_eq!(
            ask(&mut src, "node;\nnode:x=1\n"),
            format!("node;\t{NODE}\nnode:x=1\t{NODE}\n")
        );
        let long = format!("node:{}", "x".repeat(MAX_LINE_BYTES));
        assert_eq!(
            ask(&mut src, &format!("{long}\n")),
            format!("{long}\tERROR:4:command too long\n")
        );
        let mut out = Vec::new();
        respond(b"no\xffde\n", &mut src, &mut out);
        assert_eq!(out, b"no\xffde\tERROR:4:unrecognized command\n");
    }

    #[test]
    fn tend_commands_never_error() {
        let mut src = Fake::new();
        let suffixes = ["", ":", ";", "/", ":max=abc", ":value=not base64!", "/x/y", ":a=;=b;;"];
        for name in TEND_COMMANDS {
            for suffix in suffixes {
                let response = ask(&mut src, &format!("{name}{suffix}\n"));
                assert!(!c_client_rejects(&response), "{name}{suffix}: {response:?}");
                assert_eq!(response.matches('\n').count(), 1);
                assert_eq!(response.matches('\t').count(), 1, "{response:?}");
            }
        }
        let all: String = TEND_COMMANDS.iter().map(|n| format!("{n}\n")).collect();
        let response = ask(&mut src, &all);
        assert!(!c_client_rejects(&response));
        assert_eq!(response.lines().count(), TEND_COMMANDS.len());
    }

    #[test]
    fn values_are_sanitized() {
        let mut src = Fake::new();
        src.name = "A\tB\nC".into();
        assert_eq!(ask(&mut src, "node\n"), "node\tA B C\n");
    }

    #[test]
    fn request_splitting() {
        let mut src = Fake::new();
        // Empty lines are skipped; an unterminated last line is still answered.
        assert_eq!(
            ask(&mut src, "\n\nnode\n\nbuild"),
            format!("node\t{NODE}\nbuild\t8.0.0.0\n")
        );
        assert_eq!(ask(&mut src, ""), "");
        let many = "node\n".repeat(MAX_COMMANDS + 10);
        assert_eq!(ask(&mut src, &many).lines().count(), MAX_COMMANDS);

        let cmd = InfoCommand::parse(b"truncate:namespace=test;set=demo;lut=5;junk;k=v=w");
        assert_eq!(
            (cmd.name, cmd.param("namespace"), cmd.param("set")),
            ("truncate", Some("test"), Some("demo"))
        );
        assert_eq!(
            (cmd.param("lut"), cmd.param("junk"), cmd.param("k")),
            (Some("5"), None, Some("v=w"))
        );
        assert_eq!(cmd.params().count(), 4);
        let cmd = InfoCommand::parse(b"sets/test/demo");
        assert_eq!((cmd.name, cmd.args), ("sets", "test/demo"));
        assert_eq!(cmd.path().collect::<Vec<_>>(), ["test", "demo"]);
        assert_eq!(InfoCommand::parse(b"sets").path().count(), 0);
        assert_eq!(
            parse_request(b"a\nb:c\n\nd/e")
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>(),
            ["a", "b", "d"]
        );
    }

    #[test]
    fn truncate_commands() {
        let mut src = Fake::new();
        assert_eq!(
            ask(&mut src, "truncate:namespace=test;set=demo\n"),
            "truncate:namespace=test;set=demo\tok\n"
        );
        assert_eq!(
            ask(&mut src, "truncate-namespace:namespace=test\n"),
            "truncate-namespace:namespace=test\tok\n"
        );
        assert_eq!(
            ask(&mut src, "truncate-namespace:namespace=test;lut=0x17979cfe362a0000\n"),
            "truncate-namespace:namespace=test;lut=0x17979cfe362a0000\tok\n"
        );
        assert_eq!(
            src.truncates,
            vec![
                ("test".into(), Some("demo".into()), None),
                ("test".into(), None, None),
                ("test".into(), None, Some(0x1797_9cfe_362a_0000)),
            ]
        );
        src.truncates.clear();
        let refused = [
            ("truncate:set=demo", "ERROR:20:missing 'namespace'"),
            ("truncate:namespace=;set=demo", "ERROR:20:missing 'namespace' value"),
            ("truncate:namespace=test", "ERROR:4:missing 'set'"),
            ("truncate:namespace=test;set=", "ERROR:4:missing 'set' value"),
            (
                "truncate-namespace:namespace=test;set=demo",
                "ERROR:4:unexpected set name",
            ),
            ("truncate-namespace:namespace=test;lut=", "ERROR:4:missing 'lut' value"),
            (
                "truncate-namespace:namespace=test;lut=garbage",
                "ERROR:4:would truncate to 0",
            ),
            (
                "truncate-namespace:namespace=test;lut=1262304000000000000",
                "ERROR:4:would truncate to 0",
            ),
            (
                "truncate:namespace=0123456789012345678901234567890123;set=demo",
                "ERROR:20:'namespace' value too long",
            ),
            (
                "truncate-namespace:namespace=test;lut=0000000000000000000000001",
                "ERROR:4:'lut' value too long",
            ),
        ];
        for (line, value) in refused {
            assert_eq!(ask(&mut src, &format!("{line}\n")), format!("{line}\t{value}\n"));
        }
        assert!(src.truncates.is_empty(), "refused commands must not reach the source");

        for (err, value) in [
            (TruncateError::LutInFuture, "ERROR:4:would truncate in the future"),
            (TruncateError::UnknownNamespace, "ok"),
            (TruncateError::Failed("busy".into()), "ERROR::busy"),
        ] {
            src.truncate_result = Err(err);
            assert_eq!(
                ask(&mut src, "truncate-namespace:namespace=x\n"),
                format!("truncate-namespace:namespace=x\t{value}\n")
            );
        }
    }

    /// A source with settings for get-config / set-config.
    struct Configurable {
        inner: Fake,
        ttl: u32,
    }
    impl InfoSource for Configurable {
        fn node_name(&self) -> &str {
            self.inner.node_name()
        }
        fn cluster_name(&self) -> &str {
            "bolide"
        }
        fn service_endpoint(&self) -> SocketAddr {
            self.inner.service_endpoint()
        }
        fn namespaces(&self) -> Vec<String> {
            self.inner.namespaces()
        }
        fn namespace_stats(&self, ns: &str) -> Option<NamespaceStats> {
            self.inner.namespace_stats(ns)
        }
        fn statistics(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn sets(&self, ns: &str) -> Vec<SetStats> {
            self.inner.sets(ns)
        }
        fn truncate(&mut self, ns: &str, set: Option<&str>, lut: Option<u64>) -> Result<(), TruncateError> {
            self.inner.truncate(ns, set, lut)
        }
        fn latencies(&self) -> Vec<LatencyHist> {
            Vec::new()
        }
        fn config(&self, context: ConfigContext<'_>) -> Vec<(String, String)> {
            match context {
                ConfigContext::Service => vec![("proto-fd-max".into(), "10000".into())],
                ConfigContext::Namespace(ns) => {
                    vec![("ns".into(), ns.into()), ("default-ttl".into(), self.ttl.to_string())]
                }
            }
        }
        fn set_config(&mut self, context: ConfigContext<'_>, key: &str, value: &str) -> Result<(), ()> {
            match (context, key) {
                (ConfigContext::Namespace("test"), "default-ttl") => {
                    self.ttl = value.parse().map_err(|_| ())?;
                    Ok(())
                }
                _ => Err(()),
            }
        }
    }

    #[test]
    fn get_and_set_config() {
        let mut src = Configurable {
            inner: Fake::new(),
            ttl: 0,
        };
        let mut ask = |body: &str| {
            let mut out = Vec::new();
            respond(body.as_bytes(), &mut src, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(ask("get-config\n"), "get-config\tproto-fd-max=10000\n");
        assert_eq!(
            ask("get-config:context=service\n"),
            "get-config:context=service\tproto-fd-max=10000\n"
        );
        assert_eq!(
            ask("get-config:context=namespace;id=test\n"),
            "get-config:context=namespace;id=test\tns=test;default-ttl=0\n"
        );
        for (line, value) in [
            (
                "get-config:context=namespace;id=nope",
                "ERROR:20:namespace not found on node",
            ),
            ("get-config:context=namespace", "ERROR:20:missing 'namespace'"),
            ("get-config:context=bogus", "ERROR:4:invalid context"),
            ("get-config:x=1", "ERROR:4:missing 'context'"),
            ("set-config:context=namespace;id=test;default-ttl=60", "ok"),
            (
                "set-config:context=namespace;id=test;default-ttl=x",
                "ERROR:4:invalid set-config parameter",
            ),
            (
                "set-config:context=namespace;id=test;storage-engine.flush-max-ms=5",
                "ERROR:4:invalid set-config parameter",
            ),
            (
                "set-config:context=namespace;id=test",
                "ERROR:4:invalid set-config parameter",
            ),
            (
                "set-config:context=namespace;id=nope;default-ttl=1",
                "ERROR:20:namespace not found on node",
            ),
            ("set-config:context=network;x=1", "ERROR:4:invalid context"),
        ] {
            assert_eq!(ask(&format!("{line}\n")), format!("{line}\t{value}\n"));
        }
        assert_eq!(
            ask("get-config:context=namespace;id=test\n"),
            "get-config:context=namespace;id=test\tns=test;default-ttl=60\n",
            "the accepted set-config changed the setting, the refused ones did not"
        );
    }

    #[test]
    fn udf_and_sindex_commands_answer_without_failing_the_request() {
        let mut src = Fake::new();
        let cases = [
            ("udf-list", ""),
            ("udf-get:filename=x.lua", "error=not_found"),
            ("udf-remove:filename=x.lua", "ok"),
            ("udf-remove", "error=invalid_filename"),
            (
                "udf-put:filename=x.lua;content=YQ==;content-len=4;udf-type=LUA",
                "error=unsupported_feature;message=Bolide does not run UDFs",
            ),
            ("sindex-list", ""),
            ("sindex-list:ns=test", ""),
            ("sindex", ""),
            ("sindex/test", ""),
            ("sindex/nope", "ns_type=unknown"),
            ("sindex/test/idx", "ERROR:201:no index"),
            ("sindex-exists:ns=test;indexname=idx", "false"),
            ("sindex-delete:ns=test;indexname=idx", "ok"),
            ("sindex-delete:namespace=test;indexname=idx", "ok"),
            ("sindex-delete:ns=test", "ERROR:4:missing 'indexname'"),
            (
                "sindex-create:ns=test;indexname=idx;indexdata=a,numeric",
                "ERROR:16:secondary indexes are not supported",
            ),
            ("logs", "0:stderr"),
        ];
        let body: String = cases.iter().map(|(l, _)| format!("{l}\n")).collect();
        let want: String = cases.iter().map(|(l, v)| format!("{l}\t{v}\n")).collect();
        assert_eq!(ask(&mut src, &body), want);
    }

    #[test]
    fn c_ulong_parsing() {
        assert_eq!(parse_c_ulong("1700000000000000000"), 1_700_000_000_000_000_000);
        assert_eq!(parse_c_ulong("0x1F"), 31);
        assert_eq!(parse_c_ulong("017"), 15);
        assert_eq!(parse_c_ulong("0"), 0);
        assert_eq!(parse_c_ulong(" +12abc"), 12);
        assert_eq!(parse_c_ulong("x"), 0);
        assert_eq!(parse_c_ulong("99999999999999999999999"), u64::MAX);
    }

    #[test]
    fn latencies_format() {
        let mut src = Fake::new();
        // 10 s slice, 1200 ops: 1000 under 1 ms, 150 in [1,2), 40 in [8,16), 10 in [64,128).
        let mut buckets = [0u64; 8];
        (buckets[0], buckets[1], buckets[4], buckets[7]) = (1000, 150, 40, 10);
        let slice = LatencySlice::from_log2_buckets(10_000, &buckets);
        assert_eq!(slice.ops, 1200);
        assert_eq!(&slice.over[..8], &[200, 50, 50, 50, 10, 10, 10, 0]);
        src.hists = vec![
            LatencyHist {
                name: "batch-index".into(),
                units: LatencyUnits::Msec,
                slice: None,
            },
            LatencyHist {
                name: "{test}-read".into(),
                units: LatencyUnits::Msec,
                slice: Some(slice),
            },
            LatencyHist {
                name: "{test}-write".into(),
                units: LatencyUnits::Msec,
                slice: Some(LatencySlice::from_log2_buckets(0, &[])),
            },
        ];
        let zeros = ",0.00".repeat(10);
        let read = format!("{{test}}-read:msec,120.0,16.67,4.17,4.17,4.17,0.83,0.83,0.83{zeros}");
        let write = format!("{{test}}-write:msec,0.0{}", ",0.00".repeat(LATENCY_COLUMNS));
        assert_eq!(
            ask(&mut src, "latencies:\n"),
            format!("latencies:\tbatch-index:;{read};{write}\n")
        );
        assert_eq!(
            ask(&mut src, "latencies\n"),
            format!("latencies\tbatch-index:;{read};{write}\n")
        );
        assert_eq!(
            ask(&mut src, "latencies:hist={test}-read\n"),
            format!("latencies:hist={{test}}-read\t{read}\n")
        );
        assert_eq!(
            ask(&mut src, "latencies:hist=batch-index\n"),
            "latencies:hist=batch-index\tbatch-index:\n"
        );
        assert_eq!(
            ask(&mut src, "latencies:hist={x}-read\n"),
            "latencies:hist={x}-read\tERROR:4:bad hist name\n"
        );
        assert_eq!(
            ask(&mut src, "latencies:hist=\n"),
            "latencies:hist=\tERROR:4:missing 'hist' value\n"
        );
        // 17 percentage columns after the ops/sec column.
        assert_eq!(read.split(',').count(), 2 + LATENCY_COLUMNS);
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_frames_hold(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut src = Fake::new();
            let mut out = Vec::new();
            respond(&body, &mut src, &mut out);
            let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
            prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), lines.len().min(MAX_COMMANDS));
            // Each response line is the request line, a TAB, then a value with no TAB.
            for (line, request) in out.split(|&b| b == b'\n').zip(&lines) {
                prop_assert!(line.starts_with(request));
                prop_assert_eq!(line[request.len()], b'\t');
                prop_assert!(!line[request.len() + 1..].contains(&b'\t'));
            }
        }

        #[test]
        fn text_commands_never_panic(
            lines in proptest::collection::vec("[a-z/:;=_{}.0-9-]{0,40}", 0..20),
        ) {
            let mut src = Fake::new();
            let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let mut out = Vec::new();
            respond(body.as_bytes(), &mut src, &mut out);
            let expected = lines.iter().filter(|l| !l.is_empty()).count();
            prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), expected);
        }
    }
}
