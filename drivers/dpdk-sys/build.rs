//! Finds Debian's libdpdk 22.11 with pkg-config, generates the bindings (bindgen, allowlist
//! only) and compiles the C shim for DPDK's static-inline fast path. Does nothing without the
//! `link` feature, so the workspace builds on machines without libdpdk.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-changed=src/shim.h");
    #[cfg(feature = "link")]
    link::run();
}

#[cfg(feature = "link")]
mod link {
    use std::path::PathBuf;

    pub fn run() {
        let lib = pkg_config::Config::new()
            .atleast_version("22.11")
            .probe("libdpdk")
            .unwrap_or_else(|e| {
                panic!(
                    "the `dpdk` feature needs DPDK 22.11 or newer found by pkg-config \
                     (on Debian bookworm: apt-get install libdpdk-dev libclang-dev pkg-config): {e}"
                )
            });
        // pkg-config's cflags carry `-include rte_config.h` and `-march=...`: both matter to
        // the headers (the mbuf layout depends on rte_config.h).
        let mut extra: Vec<String> = Vec::new();
        let out = std::process::Command::new("pkg-config")
            .args(["--cflags", "libdpdk"])
            .output()
            .expect("pkg-config --cflags libdpdk");
        let flags = String::from_utf8_lossy(&out.stdout).to_string();
        let mut it = flags.split_whitespace().peekable();
        while let Some(f) = it.next() {
            if f == "-include" {
                if let Some(h) = it.next() {
                    extra.push("-include".into());
                    extra.push(h.into());
                }
            } else if f.starts_with("-I") || f.starts_with("-D") || f.starts_with("-march") || f.starts_with("-m") {
                extra.push(f.into());
            }
        }

        let mut cc = cc::Build::new();
        cc.file("src/shim.c").opt_level(2).warnings(true);
        for p in &lib.include_paths {
            cc.include(p);
        }
        for f in &extra {
            if !f.starts_with("-I") {
                cc.flag(f);
            }
        }
        cc.compile("bolide_dpdk_shim");

        let bindings = bindgen::Builder::default()
            .header("src/shim.h")
            .clang_args(extra.iter())
            .allowlist_function("rte_eal_init")
            .allowlist_function("rte_eal_cleanup")
            .allowlist_function("rte_strerror")
            .allowlist_function("rte_socket_id")
            .allowlist_function("rte_eth_dev_count_avail")
            .allowlist_function("rte_eth_dev_get_port_by_name")
            .allowlist_function("rte_eth_dev_info_get")
            .allowlist_function("rte_eth_dev_configure")
            .allowlist_function("rte_eth_dev_adjust_nb_rx_tx_desc")
            .allowlist_function("rte_eth_rx_queue_setup")
            .allowlist_function("rte_eth_tx_queue_setup")
            .allowlist_function("rte_eth_dev_start")
            .allowlist_function("rte_eth_dev_stop")
            .allowlist_function("rte_eth_dev_close")
            .allowlist_function("rte_eth_dev_socket_id")
            .allowlist_function("rte_eth_macaddr_get")
            .allowlist_function("rte_eth_promiscuous_enable")
            .allowlist_function("rte_eth_stats_get")
            .allowlist_function("rte_eth_link_get_nowait")
            .allowlist_function("rte_pktmbuf_pool_create")
            .allowlist_function("rte_mempool_free")
            .allowlist_function("rte_mempool_avail_count")
            .allowlist_function("bolide_.*")
            .allowlist_type("rte_eth_conf")
            .allowlist_type("rte_eth_dev_info")
            .allowlist_type("rte_eth_stats")
            .allowlist_type("rte_eth_link")
            .allowlist_type("rte_ether_addr")
            .allowlist_var("RTE_ETH_.*")
            .allowlist_var("RTE_MBUF_DEFAULT_BUF_SIZE")
            .allowlist_var("RTE_PKTMBUF_HEADROOM")
            .allowlist_var("RTE_MAX_ETHPORTS")
            .opaque_type("rte_mbuf")
            .opaque_type("rte_mempool")
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .generate()
            .expect("bindgen could not generate the DPDK bindings (is libclang-dev installed?)");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        bindings.write_to_file(out.join("bindings.rs")).expect("write bindings.rs");
    }
}
