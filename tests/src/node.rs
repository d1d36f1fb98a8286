//! Running a real `bolide` process for end-to-end tests: a fresh data directory, a free
//! loopback port, a config file, start, wait until it accepts, stop with SIGTERM (by pid).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `bolide` binary of this build (built by `cargo build --workspace` before the tests);
/// `BOLIDE_BIN` overrides it. `target_tmp` is the test's `CARGO_TARGET_TMPDIR` (`<target>/tmp`).
pub fn bolide_bin(target_tmp: &str) -> PathBuf {
    if let Ok(p) = std::env::var("BOLIDE_BIN") {
        return PathBuf::from(p);
    }
    let target = PathBuf::from(target_tmp).parent().expect("target dir").to_path_buf();
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("bolide");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "no bolide binary under {}: run `cargo build -p bolide-node` first",
        target.display()
    );
}

/// The virtualenv python with the official client (created on first use).
pub fn python_client() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/python-client.sh");
    let out = Command::new("bash").arg(script).output().expect("run python-client.sh");
    assert!(
        out.status.success(),
        "python-client.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("utf8").trim())
}

/// A running node.
pub struct Node {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    target_tmp: String,
}

/// A free loopback port followed by 7 more free ones (per-core mode puts worker `k` on
/// port + `k`).
fn free_port() -> u16 {
    for _ in 0..100 {
        let p = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if p < 65_000 && (1..8).all(|k| TcpListener::bind(("127.0.0.1", p + k)).is_ok()) {
            return p;
        }
    }
    panic!("no run of 8 free loopback ports");
}

/// Config lines the environment asks every test node to use: `BOLIDE_TEST_LISTEN_MODE`
/// (`shared`, `per-core`) and `BOLIDE_TEST_NETWORK` (`io_uring`, `epoll`), so that the whole
/// suite runs against each listener mode and network backend (scripts/test.sh). A key the test
/// sets itself wins.
fn env_config(text: &str) -> String {
    let mut extra = String::new();
    for (var, key) in [("BOLIDE_TEST_LISTEN_MODE", "listen_mode"), ("BOLIDE_TEST_NETWORK", "network_driver")] {
        if let Ok(v) = std::env::var(var) {
            let set = text.lines().any(|l| l.trim_start().starts_with(key));
            if !v.is_empty() && !set {
                extra.push_str(&format!("{key} = \"{v}\"\n"));
            }
        }
    }
    extra
}

/// Whether the test nodes run every core as its own node (`BOLIDE_TEST_LISTEN_MODE=per-core`):
/// then per-node figures (`objects`) must be summed over the workers' ports.
pub fn per_core_mode() -> bool {
    std::env::var("BOLIDE_TEST_LISTEN_MODE").is_ok_and(|v| v == "per-core")
}

impl Node {
    /// Starts a node with two workers on small files under `target_tmp` (the test's
    /// `CARGO_TARGET_TMPDIR`); `extra` lines are appended to the config (top-level keys before
    /// any `[storage]` line).
    pub fn start(target_tmp: &str, extra: &[&str]) -> Node {
        let dir = crate::scratch_dir(target_tmp);
        Node::start_in(target_tmp, dir, extra)
    }

    /// Starts a node on an existing data directory (restarts).
    pub fn start_in(target_tmp: &str, dir: tempfile::TempDir, extra: &[&str]) -> Node {
        let port = free_port();
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nworkers = 2\nshard_file_bytes = 134217728\n",
            dir.path().join("data").display()
        );
        for l in extra {
            text.push_str(l);
            text.push('\n');
        }
        Node::spawn(target_tmp, dir, port, &text, None)
    }

    /// Starts a node whose devices come from a hardware profile: `profile` is the profile's
    /// TOML text (written to `<dir>/profile.toml`; `{dir}` in it is replaced by the data
    /// directory's path), `config` the config file's lines (`listen` is added).
    pub fn start_with_profile(target_tmp: &str, dir: tempfile::TempDir, profile: &str, config: &[&str]) -> Node {
        let port = free_port();
        let prof = dir.path().join("profile.toml");
        std::fs::write(&prof, profile.replace("{dir}", &dir.path().display().to_string())).expect("write profile");
        let mut text = format!("listen = \"127.0.0.1:{port}\"\n");
        for l in config {
            text.push_str(l);
            text.push('\n');
        }
        Node::spawn(target_tmp, dir, port, &text, Some(&prof))
    }

    fn spawn(
        target_tmp: &str,
        dir: tempfile::TempDir,
        port: u16,
        config: &str,
        profile: Option<&std::path::Path>,
    ) -> Node {
        let cfg = dir.path().join("bolide.toml");
        // Top-level keys must come before any [table] line.
        let config = format!("{}{config}", env_config(config));
        std::fs::write(&cfg, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("node.log")).expect("log file");
        let mut cmd = Command::new(bolide_bin(target_tmp));
        cmd.arg("serve").arg("--config").arg(&cfg);
        if let Some(p) = profile {
            cmd.arg("--profile").arg(p);
        }
        // Relative paths (the default data_dir, which holds the truncate table) land in the
        // test's directory, not the source tree.
        let child = cmd
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bolide");
        let node = Node {
            port,
            dir,
            child: Some(child),
            target_tmp: target_tmp.to_string(),
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&self) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("bolide did not start listening; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        let path = self.dir.path().join("node.log");
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", path.display()),
        }
    }

    /// Sends one info command (spec §2.1) and returns the value of its answer line.
    pub fn info(&self, command: &str) -> String {
        info(self.port, command)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM (clean shutdown), wait, and return the data directory and the log.
    pub fn stop(mut self) -> (tempfile::TempDir, String) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = self.log();
        let dir = std::mem::replace(&mut self.dir, crate::scratch_dir(&self.target_tmp));
        (dir, log)
    }

    /// Stops cleanly and returns the log.
    pub fn stop_and_log(self) -> String {
        self.stop().1
    }

    /// SIGKILL: a crash.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        std::mem::replace(&mut self.dir, crate::scratch_dir(&self.target_tmp))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends one info command to the node on `port` (a type-1 proto, spec §2.1) and returns the
/// value of its answer line (after the TAB).
pub fn info(port: u16, command: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect for info");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let body = format!("{command}\n");
    let hdr = (2u64 << 56) | (1u64 << 48) | body.len() as u64;
    s.write_all(&hdr.to_be_bytes()).expect("send");
    s.write_all(body.as_bytes()).expect("send");
    let mut h = [0u8; 8];
    s.read_exact(&mut h).expect("info header");
    let len = (u64::from_be_bytes(h) & ((1 << 48) - 1)) as usize;
    let mut reply = vec![0u8; len];
    s.read_exact(&mut reply).expect("info body");
    let text = String::from_utf8_lossy(&reply).into_owned();
    let line = text.lines().next().unwrap_or_default();
    line.split_once('\t').map_or(String::new(), |(_, v)| v.to_string())
}

/// One `key=value` of a `;`-separated info answer (`statistics`, `namespace/<ns>`).
pub fn info_field(answer: &str, key: &str) -> Option<String> {
    answer.split(';').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    })
}
