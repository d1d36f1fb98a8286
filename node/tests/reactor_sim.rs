//! The whole reactor over the simulated device ([`SimDevice`]), the simulated network
//! ([`SimWorld`]), a hand-moved clock and simulated doorbells: no thread, no socket, no file.
//! Two workers are stepped turn by turn by this test, in both listener modes, with network
//! faults drawn from the seed (segments split and delayed, connections stalled); a client writes
//! records through one connection per worker address, reads them back, deletes some, and every
//! reply is checked against a model of what it must be. Routing across cores (the shared
//! listener, or a command sent to the wrong worker in per-core mode) goes through the rings.
//!
//! `BOLIDE_SIM_SEEDS=N` runs N seeds (default 8); `BOLIDE_SIM_SEED=S` runs only seed S.

mod common;

use bolide_drivers::net::sim::{SimClient, SimFaults, SimWorld};
use bolide_drivers::net::SimDoorbell;
use bolide_node::clock::ManualClock;
use bolide_node::digest::Digest;
use bolide_node::proto::msg::{field_type, info1, info2, MsgHeader, Reply, MSG_HEADER_BYTES};
use bolide_node::proto::{ProtoHeader, PROTO_HEADER_BYTES, PROTO_TYPE_MSG};
use bolide_node::server::reactor::Reactor;
use bolide_node::server::{build, ListenMode, ServerConfig};
use bolide_node::shard::Shard;
use common::{sim, small_cfg, whole, SimShard, START_CL_MS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

type SimReactor = Reactor<bolide_drivers::net::sim::SimNet, bolide_drivers::sim::SimDevice, ManualClock, SimDoorbell>;

const WORKERS: usize = 2;
const KEYS: u32 = 120;
const DEVICE_BYTES: u64 = 16 << 20;
/// Result codes (wire protocol spec §10).
const OK: u8 = 0;
const NOT_FOUND: u8 = 2;

struct Sim {
    world: SimWorld,
    clock: ManualClock,
    reactors: Vec<SimReactor>,
    addrs: Vec<SocketAddr>,
}

impl Sim {
    fn new(seed: u64, mode: ListenMode, faults: SimFaults) -> Sim {
        let world = SimWorld::new(seed, faults);
        let clock = ManualClock::new(START_CL_MS);
        let shards: Vec<SimShard> = (0..WORKERS)
            .map(|w| {
                let (s, _) = Shard::open(
                    sim(DEVICE_BYTES, seed * 10 + w as u64),
                    clock.clone(),
                    small_cfg(false),
                    w as u32,
                    whole(DEVICE_BYTES),
                )
                .expect("shard opens");
                s
            })
            .collect();
        let listen: SocketAddr = "10.0.0.1:3000".parse().unwrap();
        let mut cfg = ServerConfig::new(listen, "test", WORKERS);
        cfg.listen_mode = mode;
        let bells = (0..WORKERS).map(|_| SimDoorbell::new()).collect();
        let built = build(&cfg, shards, |_| Ok(world.queue()), bells).expect("server builds");
        let addrs = match mode {
            ListenMode::Shared => vec![listen],
            ListenMode::PerCore => (0..WORKERS)
                .map(|k| SocketAddr::new(listen.ip(), listen.port() + k as u16))
                .collect(),
        };
        Sim {
            world,
            clock,
            reactors: built.reactors,
            addrs,
        }
    }

    /// One step: the network's clock, then every reactor's turn, then 1 ms of node time.
    fn step(&mut self) {
        self.world.tick();
        for r in &mut self.reactors {
            r.turn(Duration::ZERO).expect("simulated poll never fails");
        }
        self.clock.advance_ms(1);
    }

    /// Sends `req` on `c` and steps until one whole reply proto arrived; returns its body.
    fn call(&mut self, c: &mut SimClient, req: &[u8]) -> Vec<u8> {
        c.write(req).expect("connection open");
        let mut got = Vec::new();
        for _ in 0..20_000 {
            self.step();
            assert!(c.read(&mut got), "the node closed the connection");
            if got.len() >= PROTO_HEADER_BYTES {
                let h = ProtoHeader::parse(got[..PROTO_HEADER_BYTES].try_into().unwrap()).expect("proto header");
                let total = PROTO_HEADER_BYTES + h.size as usize;
                if got.len() >= total {
                    assert_eq!(got.len(), total, "bytes after the one reply");
                    return got[PROTO_HEADER_BYTES..].to_vec();
                }
            }
        }
        panic!("no reply after 20 000 steps ({} bytes so far)", got.len());
    }
}

fn digest_of(k: u32) -> Digest {
    Digest::compute(b"demo", 1, &i64::from(k).to_be_bytes())
}

/// A single-record request (spec §3): namespace, set and digest fields, then `ops` as
/// (op type, particle type, bin name, value bytes).
fn request(info1: u8, info2: u8, d: &Digest, ops: &[(u8, u8, &[u8], Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let start = Reply::begin(&mut out);
    Reply::msg_header(
        &mut out,
        &MsgHeader {
            header_sz: MSG_HEADER_BYTES as u8,
            info1,
            info2,
            n_fields: 3,
            n_ops: ops.len() as u16,
            ..MsgHeader::default()
        },
    );
    Reply::write_field(&mut out, field_type::NAMESPACE, b"test");
    Reply::write_field(&mut out, field_type::SET, b"demo");
    Reply::write_field(&mut out, field_type::DIGEST, &d.0);
    for (op, pt, name, v) in ops {
        Reply::write_op(&mut out, *op, *pt, name, v);
    }
    Reply::finish(&mut out, start, PROTO_TYPE_MSG);
    out
}

const OP_WRITE: u8 = 2;
const PT_INTEGER: u8 = 1;
const PT_BLOB: u8 = 4;

fn put(k: u32, version: u32, pad: usize) -> Vec<u8> {
    request(
        0,
        info2::WRITE,
        &digest_of(k),
        &[
            (OP_WRITE, PT_INTEGER, b"v", i64::from(version).to_be_bytes().to_vec()),
            (OP_WRITE, PT_BLOB, b"pad", common::pad_bytes(k, version, pad)),
        ],
    )
}

fn get(k: u32) -> Vec<u8> {
    request(info1::READ | info1::GET_ALL, 0, &digest_of(k), &[])
}

fn delete(k: u32) -> Vec<u8> {
    request(0, info2::WRITE | info2::DELETE, &digest_of(k), &[])
}

/// Bin name -> (particle type, value bytes).
type Bins = BTreeMap<Vec<u8>, (u8, Vec<u8>)>;

/// A reply's result code and its bins.
fn parse_reply(body: &[u8]) -> (u8, Bins) {
    let h = MsgHeader::parse(body[..MSG_HEADER_BYTES].try_into().unwrap());
    let mut at = usize::from(h.header_sz);
    for _ in 0..h.n_fields {
        let len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
    }
    let mut bins = BTreeMap::new();
    for _ in 0..h.n_ops {
        let len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
        let pt = body[at + 5];
        let name_len = usize::from(body[at + 7]);
        let name = body[at + 8..at + 8 + name_len].to_vec();
        let value = body[at + 8 + name_len..at + 4 + len].to_vec();
        bins.insert(name, (pt, value));
        at += 4 + len;
    }
    assert_eq!(at, body.len(), "reply length matches its fields and ops");
    (h.result_code, bins)
}

fn run(seed: u64, mode: ListenMode) {
    let faults = SimFaults {
        max_delay_ticks: 3,
        split_probability: 0.3,
        stall_probability: 0.01,
        max_stall_ticks: 5,
        reset_probability: 0.0,
    };
    let mut s = Sim::new(seed, mode, faults);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut clients: Vec<SimClient> = s.addrs.iter().map(|a| s.world.connect(*a).expect("connects")).collect();
    // The model: key -> (version, padding length), or absent.
    let mut model: BTreeMap<u32, (u32, usize)> = BTreeMap::new();
    for round in 0..3u32 {
        for k in 0..KEYS {
            let pad = rng.gen_range(0..3000);
            let c = rng.gen_range(0..clients.len());
            let (code, _) = parse_reply(&s.call(&mut clients[c], &put(k, round, pad)));
            assert_eq!(code, OK, "seed {seed} {mode:?}: put of key {k} round {round}");
            model.insert(k, (round, pad));
        }
        for _ in 0..KEYS / 4 {
            let k = rng.gen_range(0..KEYS);
            let c = rng.gen_range(0..clients.len());
            let (code, _) = parse_reply(&s.call(&mut clients[c], &delete(k)));
            let want = if model.remove(&k).is_some() { OK } else { NOT_FOUND };
            assert_eq!(code, want, "seed {seed} {mode:?}: delete of key {k}");
        }
        for k in 0..KEYS {
            let c = rng.gen_range(0..clients.len());
            let (code, bins) = parse_reply(&s.call(&mut clients[c], &get(k)));
            match model.get(&k) {
                None => assert_eq!(code, NOT_FOUND, "seed {seed} {mode:?}: deleted key {k} read back"),
                Some(&(version, pad)) => {
                    assert_eq!(code, OK, "seed {seed} {mode:?}: get of key {k}");
                    assert_eq!(
                        bins.get(b"v".as_slice()),
                        Some(&(PT_INTEGER, i64::from(version).to_be_bytes().to_vec())),
                        "seed {seed} {mode:?}: key {k} version"
                    );
                    assert_eq!(
                        bins.get(b"pad".as_slice()),
                        Some(&(PT_BLOB, common::pad_bytes(k, version, pad))),
                        "seed {seed} {mode:?}: key {k} padding"
                    );
                }
            }
        }
    }
    // Commands crossed cores: in shared mode connections land on either worker, in per-core mode
    // the client above ignores the partition map, so about half its commands are misrouted.
    let sent: u64 = s.reactors.iter().map(Reactor::messages_sent).sum();
    assert!(sent > 0, "seed {seed} {mode:?}: no command crossed cores");
    let requests: u64 = s.reactors.iter().map(|r| r.counters().requests).sum();
    assert!(requests >= u64::from(KEYS) * 6, "seed {seed} {mode:?}: {requests} requests counted");
    // A client that goes away is forgotten by the node.
    for c in &mut clients {
        c.close();
    }
    for _ in 0..50 {
        s.step();
    }
    let open: u64 = s.reactors.iter().map(|r| bolide_drivers::net::NetQueue::stats(r.net()).open).sum();
    assert_eq!(open, 0, "seed {seed} {mode:?}: connections left open after the clients closed");
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("BOLIDE_SIM_SEED") {
        return vec![s.parse().expect("BOLIDE_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("BOLIDE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
        .min(64);
    (0..n).collect()
}

#[test]
fn reactor_over_sim_shared_listener() {
    for seed in seeds() {
        run(seed, ListenMode::Shared);
    }
}

#[test]
fn reactor_over_sim_per_core_listeners() {
    for seed in seeds() {
        run(seed, ListenMode::PerCore);
    }
}
