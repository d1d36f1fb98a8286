//! EAL initialisation and one port's set-up: a queue pair and an mbuf pool per worker, RSS
//! over the queues, no offloads (DPDK 22.11 `rte_eal.h`, `rte_ethdev.h`, `rte_mbuf.h`).
//!
//! Unsafe is allowed here: this module calls DPDK through `bolide-dpdk-sys`; every block says why
//! it is sound.
#![allow(unsafe_code)]

use super::DpdkConfig;
use crate::net::NetError;
use bolide_dpdk_sys as sys;
use std::ffi::{CStr, CString};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// What EAL said at the first `rte_eal_init` of this process (it cannot run twice).
static EAL: Mutex<Option<Result<String, NetError>>> = Mutex::new(None);

fn dpdk_error(op: impl Into<String>, rc: i32) -> NetError {
    let errno = if rc < 0 { -rc } else { rc };
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    let detail = unsafe { CStr::from_ptr(sys::rte_strerror(errno)) }.to_string_lossy().into_owned();
    NetError {
        op: op.into(),
        errno: Some(errno),
        detail,
    }
}

/// Initialises EAL with `cfg`'s arguments, once per process. A later call with another
/// configuration reuses the first (EAL cannot be initialised twice): it fails if the port
/// differs from the one EAL was started with.
fn eal_init(cfg: &DpdkConfig) -> Result<(), NetError> {
    let mut g = EAL.lock().expect("EAL lock");
    if let Some(r) = g.as_ref() {
        return match r {
            Ok(port) if *port == cfg.port => Ok(()),
            Ok(port) => Err(NetError::other(
                "rte_eal_init",
                format!("EAL already runs with port {port:?} in this process; cannot add {:?}", cfg.port),
            )),
            Err(e) => Err(e.clone()),
        };
    }
    let argv: Vec<CString> = cfg
        .eal_argv()
        .into_iter()
        .map(|a| CString::new(a).expect("EAL argument without NUL"))
        .collect();
    let mut ptrs: Vec<*mut std::os::raw::c_char> = argv.iter().map(|a| a.as_ptr() as *mut _).collect();
    ptrs.push(std::ptr::null_mut());
    // EAL pins the calling thread to its main lcore; Bolide pins its workers itself, so the
    // caller's affinity (inherited by every thread it starts later) is put back afterwards.
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread (pid 0).
    let mut affinity: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: affinity is a valid cpu_set_t of the size passed.
    let saved = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut affinity) } == 0;
    // SAFETY: argv is a NULL-terminated array of NUL-terminated strings that outlive the call;
    // EAL may permute the pointers (it does not write the strings). The CStrings are leaked
    // below because EAL may keep pointers into them.
    let rc = unsafe { sys::rte_eal_init((ptrs.len() - 1) as i32, ptrs.as_mut_ptr()) };
    if saved {
        // SAFETY: affinity is the set read above.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &affinity) };
    }
    let r = if rc < 0 {
        // SAFETY: reads this thread's rte_errno, set by the failed rte_eal_init.
        let errno = unsafe { sys::bolide_errno() };
        Err(dpdk_error(format!("rte_eal_init {:?}", cfg.eal_argv()), errno))
    } else {
        std::mem::forget(argv);
        Ok(cfg.port.clone())
    };
    *g = Some(r.clone());
    r.map(|_| ())
}

/// One started port and its per-queue mbuf pools; shared by the workers' queues (each uses
/// only its own queue index and pool). Stopped and closed when the last queue drops it.
pub struct DpdkPort {
    pub(crate) port_id: u16,
    pub(crate) queues: u16,
    pub(crate) pools: Vec<Pool>,
    pub(crate) mac: [u8; 6],
    pub(crate) cfg: DpdkConfig,
    /// Per queue: a [`super::DpdkNet`] owns it now.
    pub(crate) taken: Vec<AtomicBool>,
}

/// An mbuf pool (owned; freed when the port drops).
pub(crate) struct Pool(pub(crate) *mut sys::rte_mempool);

// SAFETY: a mempool is safe to use from several threads (DPDK's mempool ring is multi-producer
// multi-consumer by default); the pointer itself is only freed by DpdkPort's Drop, after the port
// is stopped, when no queue holds the port any more.
unsafe impl Send for Pool {}
// SAFETY: as above; shared references only hand the pointer to DPDK's thread-safe calls.
unsafe impl Sync for Pool {}

impl std::fmt::Debug for DpdkPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkPort")
            .field("port_id", &self.port_id)
            .field("queues", &self.queues)
            .field("mac", &self.mac)
            .field("port", &self.cfg.port)
            .finish()
    }
}

impl DpdkPort {
    /// Initialises EAL (once per process), then configures `cfg.port` with `queues` receive
    /// and transmit queues (RSS over IP and TCP when more than one), an mbuf pool per queue, and
    /// starts it.
    ///
    /// # Errors
    /// The configuration is invalid, EAL refused its arguments (no hugepages, another process
    /// with the same `--file-prefix`, ...), the port does not exist, or the device refused the
    /// queue layout. Each error names the DPDK call and `rte_strerror`'s text.
    pub fn open(cfg: &DpdkConfig, queues: u16) -> Result<Arc<DpdkPort>, NetError> {
        cfg.validate().map_err(|e| NetError::other("dpdk config", e))?;
        assert!(queues > 0, "a port needs at least one queue");
        eal_init(cfg)?;
        let name = CString::new(cfg.device_name()).expect("port name without NUL");
        let mut port_id = 0u16;
        // SAFETY: name is NUL-terminated; port_id is a valid out-pointer.
        let rc = unsafe { sys::rte_eth_dev_get_port_by_name(name.as_ptr(), &mut port_id) };
        if rc != 0 {
            return Err(dpdk_error(format!("rte_eth_dev_get_port_by_name {}", cfg.device_name()), rc));
        }
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: port_id is a valid port; info is a valid out-pointer.
        let rc = unsafe { sys::rte_eth_dev_info_get(port_id, &mut info) };
        if rc != 0 {
            return Err(dpdk_error("rte_eth_dev_info_get", rc));
        }
        if info.max_rx_queues < queues || info.max_tx_queues < queues {
            return Err(NetError::other(
                "rte_eth_dev_configure",
                format!(
                    "port {} has {} receive and {} transmit queues; {queues} workers need one pair each \
                     (net_af_packet: add qpairs={queues} to the vdev)",
                    cfg.port, info.max_rx_queues, info.max_tx_queues
                ),
            ));
        }
        let mut conf = sys::rte_eth_conf::default();
        if queues > 1 {
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            // SAFETY: a pure function of constants.
            let hf = unsafe { sys::bolide_rss_hf_ip_tcp() };
            conf.rx_adv_conf.rss_conf.rss_hf = hf & info.flow_type_rss_offloads;
        }
        // SAFETY: port_id is valid and stopped; conf is a valid configuration (offloads off).
        let rc = unsafe { sys::rte_eth_dev_configure(port_id, queues, queues, &conf) };
        if rc != 0 {
            return Err(dpdk_error(format!("rte_eth_dev_configure {} ({queues} queues)", cfg.port), rc));
        }
        let mut rxd = cfg.rx_descriptors;
        let mut txd = cfg.tx_descriptors;
        // SAFETY: port_id is valid; rxd and txd are valid in/out pointers.
        let rc = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &mut rxd, &mut txd) };
        if rc != 0 {
            return Err(dpdk_error("rte_eth_dev_adjust_nb_rx_tx_desc", rc));
        }
        // SAFETY: port_id is valid.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port_id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        let mut port = DpdkPort {
            port_id,
            queues,
            pools: Vec::with_capacity(queues as usize),
            mac: [0; 6],
            cfg: cfg.clone(),
            taken: (0..queues).map(|_| AtomicBool::new(false)).collect(),
        };
        for q in 0..queues {
            let pname = CString::new(format!("bolide_p{port_id}_q{q}")).expect("pool name");
            // SAFETY: pname is NUL-terminated; the sizes are in range (validated config).
            let pool = unsafe {
                sys::rte_pktmbuf_pool_create(
                    pname.as_ptr(),
                    cfg.mbufs_per_queue,
                    256,
                    0,
                    sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                    socket as i32,
                )
            };
            if pool.is_null() {
                // SAFETY: reads this thread's rte_errno.
                let e = unsafe { sys::bolide_errno() };
                return Err(dpdk_error(format!("rte_pktmbuf_pool_create {} mbufs", cfg.mbufs_per_queue), e));
            }
            port.pools.push(Pool(pool));
            // SAFETY: the port is configured; the pool outlives the port (freed after stop).
            let rc = unsafe { sys::rte_eth_rx_queue_setup(port_id, q, rxd, socket, std::ptr::null(), pool) };
            if rc != 0 {
                return Err(dpdk_error(format!("rte_eth_rx_queue_setup queue {q}"), rc));
            }
            // SAFETY: the port is configured; a NULL txconf takes the device's defaults.
            let rc = unsafe { sys::rte_eth_tx_queue_setup(port_id, q, txd, socket, std::ptr::null()) };
            if rc != 0 {
                return Err(dpdk_error(format!("rte_eth_tx_queue_setup queue {q}"), rc));
            }
        }
        // SAFETY: every queue is set up.
        let rc = unsafe { sys::rte_eth_dev_start(port_id) };
        if rc != 0 {
            return Err(dpdk_error(format!("rte_eth_dev_start {}", cfg.port), rc));
        }
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: mac is a valid out-pointer.
        let rc = unsafe { sys::rte_eth_macaddr_get(port_id, &mut mac) };
        if rc != 0 {
            return Err(dpdk_error("rte_eth_macaddr_get", rc));
        }
        port.mac = mac.addr_bytes;
        // Promiscuous mode is best effort (virtual devices may not support it).
        // SAFETY: the port is started.
        let _ = unsafe { sys::rte_eth_promiscuous_enable(port_id) };
        tracing::info!(
            port = %cfg.port, port_id, queues, rx_descriptors = rxd, tx_descriptors = txd,
            mac = %format_mac(&port.mac), "DPDK port started"
        );
        Ok(Arc::new(port))
    }

    /// The port's Ethernet address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Queue pairs configured.
    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// The port's counters: (packets received, packets sent, received packets dropped for want
    /// of descriptors or mbufs).
    pub fn counters(&self) -> (u64, u64, u64) {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: the port is valid; s is a valid out-pointer.
        let rc = unsafe { sys::rte_eth_stats_get(self.port_id, &mut s) };
        if rc != 0 {
            return (0, 0, 0);
        }
        (s.ipackets, s.opackets, s.imissed + s.rx_nombuf)
    }
}

impl Drop for DpdkPort {
    fn drop(&mut self) {
        // SAFETY: no queue uses the port any more (they hold the Arc); stop then close it, then
        // free the pools whose mbufs the port no longer references.
        unsafe {
            sys::rte_eth_dev_stop(self.port_id);
            sys::rte_eth_dev_close(self.port_id);
        }
        for p in &self.pools {
            // SAFETY: the port is closed: nothing references the pool's mbufs.
            unsafe { sys::rte_mempool_free(p.0) };
        }
    }
}

pub(crate) fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}
