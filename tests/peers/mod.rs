//! Real, independent peers for integration tests: a mosquitto broker, an nginx-rtmp media
//! server, SIPp as a GB/T 28181 platform, a GStreamer PS receiver, ffprobe, a cloud-side MQTT
//! client, and the dockcast daemon itself as a process.
//!
//! Every peer listens on 127.0.0.1 only, on a port chosen here, keeps its files in its own
//! temporary directory and is killed when dropped, so a failing test leaves nothing running.
//! The one exception is Janus, whose ICE library will not use loopback: it runs in network
//! namespaces the test makes and deletes (`janus.rs`).
//! Each test binary uses only some of these helpers, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod daemon;
pub mod gst;
pub mod janus;
pub mod mosquitto;
pub mod mqtt;
pub mod nginx;
pub mod nms;
pub mod probe;
pub mod sipp;
pub mod whip;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before.
///
/// Tests in one binary run in parallel threads; remembering the ports already given out keeps
/// two peers of the same run from being told the same port (the kernel may hand a just-closed
/// ephemeral port out again).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
    panic!("no fresh free port on 127.0.0.1 after 100 attempts");
}

/// True when something accepts TCP connections on 127.0.0.1:`port` right now.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// True when a socket of `proto` ("tcp" listening, or "udp" bound) holds `port`, read from
/// /proc/net so that checking never connects (tcpserversrc, for one, serves exactly one
/// client and would take a probe connection for it).
pub fn socket_bound(proto: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    // /proc/net/tcp state 0A = LISTEN; a bound UDP socket shows state 07.
    let state = if proto == "tcp" { "0A" } else { "07" };
    [format!("/proc/net/{proto}"), format!("/proc/net/{proto}6")]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .any(|table| {
            table.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let st = cols.nth(1).unwrap_or("");
                local.ends_with(&want) && st == state
            })
        })
}

/// Polls `cond` every 50 ms until it holds or `timeout` has passed; returns whether it held.
///
/// The one bounded wait loop the helpers share, so that no test can hang on a peer.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serialises the tests that hold this guard.
///
/// The end-to-end tests measure frame counts against wall-clock time; several encoders and
/// media servers competing for two CPU cores would make those measurements lie.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A per-peer temporary directory, removed on drop.
///
/// Kept (and its path printed) when the test is panicking or `DOCKCAST_KEEP_TEST_DIRS` is set,
/// because the peer logs inside are what one reads after a failure.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates `$TMPDIR/dockcast-tests/<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TestDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir()
            .join("dockcast-tests")
            .join(format!("{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("DOCKCAST_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept test directory {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Sends `signal` (e.g. "TERM", "KILL") to process `pid` with the system `kill` command.
///
/// std has no way to send anything but SIGKILL, and the crate has no libc/nix dev-dependency.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// True when this process runs as root (uid 0), read from /proc so no libc is needed.
///
/// mosquitto drops root privileges to its own user unless its config says `user root`.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}
