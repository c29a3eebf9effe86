//! nginx with the RTMP module, recording every published stream, on a private prefix.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NGINX: &str = "/usr/sbin/nginx";
const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
const SETUP_HINT: &str =
    "run scripts/setup-deps.sh (installs nginx-light, libnginx-mod-rtmp, ffmpeg)";

/// A running nginx-rtmp on 127.0.0.1 with `application live` recording into its temp dir.
/// Killed and its directory removed on drop.
pub struct Nginx {
    dir: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
}

/// A certificate authority and a server certificate it signed for 127.0.0.1 and localhost,
/// made with `openssl` in a directory of the test's.
pub struct TestPki {
    /// The CA certificate (PEM), what a client must trust.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server key (PEM).
    pub key: PathBuf,
}

impl TestPki {
    /// Creates `<dir>/<name>-ca.pem`, `<name>-cert.pem` and `<name>-key.pem` (P-256 keys,
    /// valid two days).
    pub fn create(dir: &Path, name: &str) -> TestPki {
        let f = |suffix: &str| dir.join(format!("{name}-{suffix}"));
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (ca, ca_key, cert, key, csr, ext) = (
            f("ca.pem"),
            f("ca-key.pem"),
            f("cert.pem"),
            f("key.pem"),
            f("csr.pem"),
            f("ext.cnf"),
        );
        let s = |p: &PathBuf| p.display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
            "-days",
            "2",
            "-subj",
            &format!("/CN=dockcast test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
        )
        .expect("write ext.cnf");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-out",
            &s(&cert),
            "-days",
            "2",
            "-extfile",
            &s(&ext),
        ]);
        TestPki { ca, cert, key }
    }
}

impl Nginx {
    /// Starts nginx on `port` (see `super::free_port`), recording each stream into
    /// `<stream key>.flv`, and waits until it accepts connections.
    pub fn start(port: u16) -> Self {
        Self::start_with(port, false, None)
    }

    /// Like [`start`](Self::start), plus RTMPS on `tls_port`: nginx's `stream` module
    /// terminates TLS with `cert`/`key` and passes the bytes on to the RTMP port.
    pub fn start_tls(port: u16, tls_port: u16, cert: &Path, key: &Path) -> Self {
        Self::start_with(port, false, Some((tls_port, cert, key)))
    }

    fn start_with(port: u16, unique: bool, tls: Option<(u16, &Path, &Path)>) -> Self {
        for path in [NGINX, RTMP_MODULE, STREAM_MODULE] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the RTMP tests need nginx with the RTMP module; {SETUP_HINT}"
            );
        }
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "dockcast-nginx-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("rec")).expect("create nginx temp dir");
        let (stream_module, stream_block) = match tls {
            Some((tls_port, cert, key)) => (
                format!("load_module {STREAM_MODULE};\n"),
                format!(
                    "stream {{ server {{ listen 127.0.0.1:{tls_port} ssl;\n\
                       ssl_certificate {}; ssl_certificate_key {};\n\
                       proxy_pass 127.0.0.1:{port}; }} }}\n",
                    cert.display(),
                    key.display()
                ),
            ),
            None => (String::new(), String::new()),
        };
        let conf = format!(
            "{stream_module}load_module {RTMP_MODULE};\n\
             daemon off;\nmaster_process off;\n\
             pid {dir}/nginx.pid;\nerror_log {dir}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
               application live {{ live on; record all; record_path {dir}/rec; record_unique {unique}; }} }} }}\n\
             {stream_block}",
            dir = dir.display(),
            unique = if unique { "on" } else { "off" }
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        let mut nginx = Self {
            dir,
            port,
            tls_port: tls.map(|t| t.0),
            child: None,
        };
        nginx.spawn();
        nginx
    }

    /// The RTMP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The RTMPS port, when started with [`start_tls`](Self::start_tls).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// Where `record all` writes `<stream key>.flv`.
    pub fn recording(&self, stream_key: &str) -> PathBuf {
        self.dir.join("rec").join(format!("{stream_key}.flv"))
    }

    /// The temp dir, for test artefacts that should be cleaned up with the server.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// nginx's error log, for assertion messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Stops the server (TERM, then KILL after 3 s), dropping every client connection.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops and starts again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("nginx.conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NGINX}: {e}; {SETUP_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tls_up = self
                .tls_port
                .is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok());
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && tls_up {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("nginx exited with {status}:\n{}", self.error_log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on 127.0.0.1:{} within 10 s:\n{}",
                self.port,
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx-rtmp on a free port of its own that records every publish into a file of its own
/// (`record_unique on`), so that a test counts publishes by counting files.
pub struct NginxRtmp(Nginx);

impl NginxRtmp {
    /// Starts it on a free port.
    pub fn start() -> Self {
        NginxRtmp(Nginx::start_with(super::free_port(), true, None))
    }

    /// The RTMP port.
    pub fn rtmp_port(&self) -> u16 {
        self.0.port()
    }

    /// Where the recordings (`<stream key>-<time>.flv`) go.
    pub fn record_dir(&self) -> PathBuf {
        self.0.dir().join("rec")
    }

    /// nginx's error log, for assertion messages.
    pub fn error_log(&self) -> String {
        self.0.error_log()
    }
}

/// Whether an FLV recording holds a keyframe video tag yet (frame type 1, AVC NALU packet, not
/// the sequence header): the moment a viewer could start decoding, which start-up and
/// re-publish timings wait for. Reads a file nginx may still be writing, so a tag cut short
/// ends the scan.
pub fn has_keyframe(recording: &Path) -> bool {
    let Ok(data) = std::fs::read(recording) else {
        return false;
    };
    let mut i = 13; // FLV header + PreviousTagSize0
    while i + 11 <= data.len() {
        let kind = data[i] & 0x1f;
        let size = u32::from_be_bytes([0, data[i + 1], data[i + 2], data[i + 3]]) as usize;
        let body = i + 11;
        if body + size > data.len() {
            return false;
        }
        if kind == 9 && size >= 2 && data[body] >> 4 == 1 && data[body + 1] == 1 {
            return true;
        }
        i = body + size + 4;
    }
    false
}
