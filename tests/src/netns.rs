//! Network namespaces and veth pairs for the DPDK tests (issue 15): the DPDK side's veth end in
//! one namespace (no IP on it, so the kernel there stays out of the way), its peer in another
//! with an IPv4 address, offloads off on both (DPDK's `net_af_packet` sees frames as the wire
//! would, with full checksums). Everything is made by the `ip` and `ethtool` commands and
//! removed on drop.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A pair of namespaces joined by a veth pair.
pub struct VethPair {
    /// The DPDK side's namespace and interface (no address).
    pub ns_dpdk: String,
    pub if_dpdk: String,
    /// The client side's namespace, interface and address.
    pub ns_client: String,
    pub if_client: String,
    pub client_ip: Ipv4Addr,
    /// The address for the DPDK side (same /24 as the client).
    pub dpdk_ip: Ipv4Addr,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// Why the machine cannot run the namespace tests, or `None` when it can: creates and removes
/// a namespace (needs root or CAP_SYS_ADMIN and the `ip` command).
pub fn cannot_make_namespaces() -> Option<String> {
    let name = format!("bolide-probe-{}", std::process::id());
    match run(&["ip", "netns", "add", &name]) {
        Ok(()) => {
            let _ = run(&["ip", "netns", "del", &name]);
            None
        }
        Err(e) => Some(e),
    }
}

impl VethPair {
    /// Makes both namespaces and the veth pair between them; subnet `10.77.<n>.0/24` with a
    /// per-process, per-call `n`.
    ///
    /// # Panics
    /// If a command fails (the caller checked [`cannot_make_namespaces`] first).
    pub fn new(tag: &str) -> VethPair {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let subnet = ((std::process::id() + n) % 200 + 20) as u8;
        let p = VethPair {
            ns_dpdk: format!("bolide-{tag}-d{id}"),
            if_dpdk: format!("bd{id}"),
            ns_client: format!("bolide-{tag}-c{id}"),
            if_client: format!("bc{id}"),
            client_ip: Ipv4Addr::new(10, 77, subnet, 2),
            dpdk_ip: Ipv4Addr::new(10, 77, subnet, 1),
        };
        p.setup().unwrap_or_else(|e| panic!("setting up the veth pair: {e}"));
        p
    }

    fn setup(&self) -> Result<(), String> {
        let (nd, nc, id, ic) = (&self.ns_dpdk, &self.ns_client, &self.if_dpdk, &self.if_client);
        run(&["ip", "netns", "add", nd])?;
        run(&["ip", "netns", "add", nc])?;
        run(&["ip", "link", "add", id, "type", "veth", "peer", "name", ic])?;
        run(&["ip", "link", "set", id, "netns", nd])?;
        run(&["ip", "link", "set", ic, "netns", nc])?;
        let addr = format!("{}/24", self.client_ip);
        for (ns, dev) in [(nd, id), (nc, ic)] {
            run(&["ip", "netns", "exec", ns, "sysctl", "-qw", &format!("net.ipv6.conf.{dev}.disable_ipv6=1")])?;
            run(&["ip", "netns", "exec", ns, "ethtool", "-K", dev, "rx", "off", "tx", "off", "tso", "off", "gso", "off", "gro", "off"])?;
            run(&["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"])?;
            run(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])?;
        }
        run(&["ip", "netns", "exec", nc, "ip", "addr", "add", &addr, "dev", ic])?;
        Ok(())
    }

    /// The DPDK vdev for the DPDK side's interface (`net_af_packet`, `qpairs` queue pairs).
    pub fn af_packet_vdev(&self, qpairs: u16) -> String {
        format!("net_af_packet0,iface={},qpairs={qpairs}", self.if_dpdk)
    }

    /// Moves the calling thread into `ns` (sockets it makes from now on live there).
    ///
    /// # Panics
    /// If the namespace cannot be entered.
    pub fn enter(ns: &str) {
        let f = File::open(format!("/var/run/netns/{ns}")).unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&f),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
    }

    /// A non-blocking TCP connection to `addr` started from the client namespace (the
    /// handshake finishes when the server side answers).
    pub fn connect_from_client(&self, addr: SocketAddr) -> std::net::TcpStream {
        let ns = self.ns_client.clone();
        std::thread::spawn(move || {
            VethPair::enter(&ns);
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            s.set_nodelay(true).expect("nodelay");
            match s.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => panic!("connect {addr}: {e}"),
            }
            std::net::TcpStream::from(s)
        })
        .join()
        .expect("connect thread")
    }

    /// Runs `cmd` inside the client namespace (`ip netns exec`).
    pub fn client_command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_client, program]);
        c
    }

    /// Runs `cmd` inside the DPDK side's namespace.
    pub fn dpdk_command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_dpdk]).arg(program);
        c
    }

    /// Pings the DPDK side from the client namespace: `count` echo requests, true if all
    /// were answered.
    pub fn ping(&self, count: u32, timeout: Duration) -> Result<String, String> {
        let out = self
            .client_command("ping")
            .args(["-c", &count.to_string(), "-W", &timeout.as_secs().max(1).to_string(), "-i", "0.2"])
            .arg(self.dpdk_ip.to_string())
            .output()
            .map_err(|e| format!("ping: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(text)
        } else {
            Err(text + &String::from_utf8_lossy(&out.stderr))
        }
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the peer.
        let _ = run(&["ip", "netns", "del", &self.ns_dpdk]);
        let _ = run(&["ip", "netns", "del", &self.ns_client]);
    }
}

/// Removes EAL's runtime directory of `prefix` (`/var/run/dpdk/<prefix>`).
pub fn remove_eal_runtime(prefix: &str) {
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
}
