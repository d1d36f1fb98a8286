//! A trivial in-process Aerospike responder, to measure the client's own ceiling: it answers the
//! info commands the official Rust client sends while tending (wire spec §2.3, §2.6) and every
//! AS_MSG with a canned reply (spec §3): a write gets `OK`, a read gets one fixed record built
//! from the object spec. No storage, no digest check, one tokio task per connection on the
//! benchmark's own runtime. Whatever throughput the generator reaches against it is the most the
//! client side can offer on this machine; a server result well below it was limited by the
//! server, one close to it by the client.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::workload::{BinSpec, ObjectSpec};

/// Proto version byte (spec §1).
const PROTO_VERSION: u8 = 2;
/// Proto type of info messages.
const PROTO_TYPE_INFO: u8 = 1;
/// Proto type of AS_MSG.
const PROTO_TYPE_MSG: u8 = 3;
/// AS_MSG header size (spec §3.1), also required in replies.
const MSG_HEADER_BYTES: usize = 22;
/// info1 READ bit.
const INFO1_READ: u8 = 0x01;
/// info1 GET_NOBINDATA bit (header-only read).
const INFO1_NOBINDATA: u8 = 0x20;
/// info2 WRITE bit.
const INFO2_WRITE: u8 = 0x01;
/// Largest request body accepted, bytes (the server's sanity limit is 128 MiB).
const MAX_BODY_BYTES: usize = 16 << 20;
/// Node name answered to `node` (hex, as the server prints its node id).
const NODE_NAME: &str = "BE0C11E4700000";
/// `build` answered: 4 parts for the Rust client, below 8.1 so no `user-agent-set` (spec §2.5).
const BUILD: &str = "8.0.0.0";

/// Canned replies of a responder.
#[derive(Clone, Debug)]
pub struct Replies {
    namespace: String,
    /// A whole proto (header included) answering a write: OK, generation 1.
    write_ok: Vec<u8>,
    /// A whole proto answering a read: OK, generation 1, one op per bin.
    read_record: Vec<u8>,
    /// A whole proto answering a header-only read.
    read_header: Vec<u8>,
}

fn proto(kind: u8, body: &[u8]) -> Vec<u8> {
    let header = (u64::from(PROTO_VERSION) << 56) | (u64::from(kind) << 48) | body.len() as u64;
    let mut v = header.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn msg_reply(result_code: u8, ops: &[(String, u8, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0u8; MSG_HEADER_BYTES];
    body[0] = MSG_HEADER_BYTES as u8;
    body[5] = result_code;
    body[6..10].copy_from_slice(&1u32.to_be_bytes()); // generation
    body[20..22].copy_from_slice(&(ops.len() as u16).to_be_bytes());
    for (name, particle, value) in ops {
        let size = 4 + name.len() + value.len();
        body.extend_from_slice(&(size as u32).to_be_bytes());
        body.extend_from_slice(&[1, *particle, 0, name.len() as u8]); // op READ, particle, flags, name length
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(value);
    }
    proto(PROTO_TYPE_MSG, &body)
}

impl Replies {
    /// Replies for `namespace`, reads returning one record of `spec` (largest sizes) with bins
    /// named `bin_names`.
    pub fn new(namespace: &str, spec: &ObjectSpec, bin_names: &[String]) -> Replies {
        let ops: Vec<(String, u8, Vec<u8>)> = spec
            .bins
            .iter()
            .zip(bin_names)
            .map(|(b, name)| {
                // Particle types (spec §3.5): 1 integer, 2 double, 3 string, 4 blob, 17 boolean.
                let (particle, value) = match *b {
                    BinSpec::Int { .. } => (1, 42i64.to_be_bytes().to_vec()),
                    BinSpec::Double => (2, 1.5f64.to_be_bytes().to_vec()),
                    BinSpec::Str { max_bytes, .. } => (3, vec![b'x'; max_bytes]),
                    BinSpec::Bytes { max_bytes, .. } => (4, vec![0x5a; max_bytes]),
                    BinSpec::Bool => (17, vec![1]),
                };
                (name.clone(), particle, value)
            })
            .collect();
        Replies {
            namespace: namespace.to_string(),
            write_ok: msg_reply(0, &[]),
            read_record: msg_reply(0, &ops),
            read_header: msg_reply(0, &[]),
        }
    }

    /// The answer to one info request body (spec §2.1): each request line echoed, a TAB, the
    /// value, a newline.
    pub fn info(&self, request: &str, port: u16) -> String {
        let mut out = String::new();
        for line in request.split('\n').filter(|l| !l.is_empty()) {
            let name = line.split(':').next().unwrap_or(line);
            let value = match name {
                "node" => NODE_NAME.to_string(),
                "cluster-name" => "bolide-bench-responder".to_string(),
                "build" => BUILD.to_string(),
                "partition-generation" | "peers-generation" | "rebalance-generation" => "1".to_string(),
                "peers-clear-std" | "peers-clear-alt" | "peers-tls-std" | "peers-tls-alt" => format!("1,{port},[]"),
                "service-clear-std" | "service-clear-alt" => format!("127.0.0.1:{port}"),
                "replicas" => format!("{}:0,1,{}", self.namespace, all_partitions_bitmap_b64()),
                "partitions" => "4096".to_string(),
                "namespaces" => self.namespace.clone(),
                "features" => "batch-index;float;peers;replicas".to_string(),
                _ => "ERROR:4:unrecognized command".to_string(),
            };
            out.push_str(line);
            out.push('\t');
            out.push_str(&value);
            out.push('\n');
        }
        out
    }

    /// The reply to one AS_MSG body (header, fields and ops), or `None` for a body too short
    /// to hold a header.
    pub fn msg(&self, body: &[u8]) -> Option<&[u8]> {
        if body.len() < MSG_HEADER_BYTES {
            return None;
        }
        let (info1, info2) = (body[1], body[2]);
        Some(if info2 & INFO2_WRITE != 0 {
            &self.write_ok
        } else if info1 & INFO1_READ != 0 && info1 & INFO1_NOBINDATA == 0 {
            &self.read_record
        } else if info1 & INFO1_READ != 0 {
            &self.read_header
        } else {
            &self.write_ok
        })
    }
}

/// Base64 of 512 bytes of 0xFF: every one of the 4096 partitions owned (spec §2.4; 684 chars).
pub fn all_partitions_bitmap_b64() -> String {
    // 510 bytes = 170 groups of 3 bytes, each "////"; the last 2 bytes 0xFF 0xFF give "//8=".
    let mut s = "/".repeat(680);
    s.push_str("//8=");
    s
}

/// Starts a responder on 127.0.0.1 (a free port) on the current tokio runtime; returns its
/// address. It serves until the runtime shuts down.
pub async fn start(replies: Replies) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let replies = std::sync::Arc::new(replies);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let replies = replies.clone();
            tokio::spawn(async move {
                // A connection error only ends that connection.
                let _ = serve(stream, &replies, addr.port()).await;
            });
        }
    });
    Ok(addr)
}

async fn serve(mut stream: TcpStream, replies: &Replies, port: u16) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; 8];
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let h = u64::from_be_bytes(header);
        let kind = (h >> 48) as u8;
        let len = (h & 0xFFFF_FFFF_FFFF) as usize;
        if header[0] != PROTO_VERSION || len > MAX_BODY_BYTES {
            return Ok(());
        }
        body.resize(len, 0);
        stream.read_exact(&mut body).await?;
        match kind {
            PROTO_TYPE_INFO => {
                let answer = replies.info(&String::from_utf8_lossy(&body), port);
                stream.write_all(&proto(PROTO_TYPE_INFO, answer.as_bytes())).await?;
            }
            PROTO_TYPE_MSG => match replies.msg(&body) {
                Some(reply) => stream.write_all(reply).await?,
                None => return Ok(()),
            },
            // Compressed, admin and anything else: not served.
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::workload::bin_names;

    fn replies() -> Replies {
        let spec = ObjectSpec::parse("B1024,I").unwrap();
        Replies::new("test", &spec, &bin_names("testbin", 2))
    }

    #[test]
    fn bitmap_is_684_chars_of_all_ones() {
        let b = all_partitions_bitmap_b64();
        assert_eq!(b.len(), 684);
        assert!(b.ends_with("//8=") && !b.ends_with(";"));
    }

    #[test]
    fn info_echoes_every_line_in_order() {
        let r = replies();
        let a = r.info(
            "node\ncluster-name\nbuild\npartition-generation\npeers-clear-std\nreplicas\nbogus:x=1\n",
            3999,
        );
        let lines: Vec<(&str, &str)> = a.lines().map(|l| l.split_once('\t').unwrap()).collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(lines[0], ("node", NODE_NAME));
        assert_eq!(lines[2], ("build", "8.0.0.0"));
        assert_eq!(lines[4], ("peers-clear-std", "1,3999,[]"));
        assert!(lines[5].1.starts_with("test:0,1,") && lines[5].1.len() == "test:0,1,".len() + 684);
        assert_eq!(lines[6].0, "bogus:x=1");
        assert!(lines[6].1.starts_with("ERROR:"));
    }

    #[test]
    fn reads_get_the_record_and_writes_ok() {
        let r = replies();
        let mut req = vec![0u8; MSG_HEADER_BYTES];
        req[0] = 22;
        req[1] = INFO1_READ | 0x02;
        let read = r.msg(&req).unwrap();
        // proto header: version 2, type 3, body = 22 + two ops (4+4+7+1024 and 4+4+9+8).
        assert_eq!(read[0], 2);
        assert_eq!(read[1], 3);
        let body_len = u64::from_be_bytes(read[..8].try_into().unwrap()) & 0xFFFF_FFFF_FFFF;
        assert_eq!(body_len as usize, 22 + (8 + 7 + 1024) + (8 + 9 + 8));
        assert_eq!(read[8], 22, "header_sz");
        assert_eq!(read[8 + 5], 0, "result OK");
        assert_eq!(u16::from_be_bytes([read[8 + 20], read[8 + 21]]), 2, "n_ops");
        req[1] = 0;
        req[2] = INFO2_WRITE;
        let write = r.msg(&req).unwrap();
        assert_eq!(write.len(), 8 + 22);
        assert_eq!(write[8 + 5], 0);
        assert!(r.msg(&req[..10]).is_none());
    }

    #[test]
    fn the_official_client_connects_puts_and_gets() {
        use aerospike::{as_bin, Bins, Client, ClientPolicy, Key, ReadPolicy, Value, WritePolicy};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let addr = start(replies()).await.unwrap();
            let client = Client::new(&ClientPolicy::default(), &addr.to_string())
                .await
                .expect("connect");
            assert!(client.partition_map_complete());
            let key = Key::new("test", "testset", Value::Int(7)).unwrap();
            client
                .put(&WritePolicy::default(), &key, &[as_bin!("testbin", 1)])
                .await
                .expect("put");
            let rec = client.get(&ReadPolicy::default(), &key, Bins::All).await.expect("get");
            assert!(matches!(rec.bins.get("testbin"), Some(Value::Blob(b)) if b.len() == 1024));
            assert_eq!(rec.bins.get("testbin_2"), Some(&Value::Int(42)));
            client.close().await.ok();
        });
    }
}
