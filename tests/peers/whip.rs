//! The aiortc WHIP endpoint (`whip_server.py` beside this file) as a peer: started from the
//! project's Python venv on a free port, asked for its decode statistics over HTTP, killed on
//! drop.

use super::TestDir;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SETUP_HINT: &str =
    "run scripts/setup-deps.sh (creates .work/venv with aiortc + aiohttp), or point DOCKCAST_VENV at a venv that has them";

/// How the server misbehaves, to exercise the client's handling.
#[derive(Debug, Clone, Default)]
pub struct WhipServerOptions {
    /// Require `Authorization: Bearer <token>` on POST and DELETE.
    pub token: Option<String>,
    /// Answer the first POST with a 307 to `/whip-moved/<stream>`.
    pub redirect_first: bool,
    /// Answer the first (non-redirected) POST with 503 and this `Retry-After` in seconds.
    pub busy_once: Option<u32>,
    /// Also serve HTTPS on a second port, with a self-signed certificate no client trusts.
    pub tls: bool,
    /// Read the capture-time stamp (`pattern?clock=1`) of every decoded frame and keep its age
    /// per session (`stamp_ages_ms`, `stamp_misses` in the stats), for latency benchmarks.
    pub stamp: bool,
    /// Hold each 201 this long after the session is made (a slow uplink).
    pub answer_delay: Option<Duration>,
}

/// The venv's python: `$DOCKCAST_VENV/bin/python`, else `<repo>/.work/venv/bin/python`.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("DOCKCAST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".work/venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: {SETUP_HINT}",
        python.display()
    );
    python
}

/// A running aiortc WHIP endpoint on 127.0.0.1.
pub struct WhipServer {
    port: u16,
    tls_port: Option<u16>,
    opts: WhipServerOptions,
    dir: TestDir,
    child: Option<Child>,
    starts: u32,
}

impl WhipServer {
    /// Starts the server on a free port and waits until it accepts connections.
    pub fn start(opts: WhipServerOptions) -> Self {
        let mut s = WhipServer {
            port: super::free_port(),
            tls_port: opts.tls.then(super::free_port),
            opts,
            dir: TestDir::new("whip"),
            child: None,
            starts: 0,
        };
        s.spawn();
        s
    }

    /// The WHIP endpoint url for `stream` (SRS-style query included, to check it survives).
    pub fn url(&self, stream: &str) -> String {
        format!(
            "http://127.0.0.1:{}/whip/{stream}?app=live&stream={stream}",
            self.port
        )
    }

    /// The same endpoint over HTTPS (self-signed), when started with `tls`.
    pub fn https_url(&self, stream: &str) -> Option<String> {
        self.tls_port
            .map(|p| format!("https://127.0.0.1:{p}/whip/{stream}"))
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's stdout/stderr of every start so far, for assertion messages.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("server-{n}.log"))
    }

    /// `GET /stats` as JSON.
    pub fn stats(&self) -> Value {
        let body = http_get(self.port, "/stats")
            .unwrap_or_else(|e| panic!("GET /stats failed: {e}\n{}", self.log()));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /stats JSON {e}: {body}"))
    }

    /// The per-session stats objects, in creation order.
    pub fn sessions(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self.stats()["sessions"]
            .as_object()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| {
            a["created_at"]
                .as_f64()
                .partial_cmp(&b["created_at"].as_f64())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        v
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (fresh state).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/whip_server.py");
        let log = std::fs::File::create(self.log_path(self.starts)).expect("create server log");
        let log_err = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(venv_python());
        cmd.arg("-u")
            .arg(&script)
            .arg("--port")
            .arg(self.port.to_string());
        if let Some(t) = &self.opts.token {
            cmd.arg("--token").arg(t);
        }
        if self.opts.redirect_first {
            cmd.arg("--redirect-first");
        }
        if self.opts.stamp {
            cmd.arg("--stamp");
        }
        if let Some(tls_port) = self.tls_port {
            let (cert, key) = (
                self.dir.path().join("cert.pem"),
                self.dir.path().join("key.pem"),
            );
            if !cert.exists() {
                let ok = Command::new("openssl")
                    .args([
                        "req",
                        "-x509",
                        "-newkey",
                        "ec",
                        "-pkeyopt",
                        "ec_paramgen_curve:P-256",
                    ])
                    .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
                    .args(["-addext", "subjectAltName=IP:127.0.0.1"])
                    // A leaf, so the only thing wrong with it is that nobody vouches for it.
                    .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(ok, "openssl could not make a self-signed certificate");
            }
            cmd.arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key);
        }
        if let Some(delay) = self.opts.answer_delay {
            cmd.arg("--answer-delay")
                .arg(format!("{:.3}", delay.as_secs_f64()));
        }
        if let Some(secs) = self.opts.busy_once {
            cmd.arg("--busy-once")
                .arg("--retry-after")
                .arg(secs.to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the WHIP server: {e}; {SETUP_HINT}"));
        self.child = Some(child);
        // aiortc imports PyAV and friends: allow for a slow first start.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(self.port, "/stats").is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("WHIP server exited with {status}:\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "WHIP server did not answer on 127.0.0.1:{} within 30 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for WhipServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1 returning the body of a 200, with 2 s timeouts.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "status line: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_owned())
}
