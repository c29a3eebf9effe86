//! Placeholder nginx-rtmp peer, only so the end-to-end tests compile on this branch; the full
//! helper lives on its own branch and replaces this file when the branches meet.
//!
//! nginx with the Debian RTMP module on 127.0.0.1, `live on`, `record all` into a temporary
//! directory with `record_unique on` (one file per publish, so a test can count publishes).

use super::{free_port, port_accepts, wait_until, TestDir};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An nginx-rtmp media server recording every publish to FLV.
pub struct NginxRtmp {
    dir: TestDir,
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl NginxRtmp {
    /// Starts nginx-rtmp on a free port; panics if it does not accept within 10 s.
    pub fn start() -> NginxRtmp {
        let dir = TestDir::new("nginx");
        let port = free_port();
        for sub in ["logs", "rec", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create nginx dirs");
        }
        let d = dir.path().display();
        let conf_text = format!(
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
             daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
               application live {{ live on; record all; record_path {d}/rec; record_unique on; }} }} }}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, conf_text).expect("write nginx.conf");
        let mut n = NginxRtmp {
            dir,
            port,
            conf,
            child: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = File::create(d.join("logs/stderr.log")).expect("create nginx log");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("logs/error.log"))
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn nginx (apt-get install nginx-light libnginx-mod-rtmp)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || port_accepts(port)),
            "nginx-rtmp did not accept on 127.0.0.1:{port}"
        );
    }

    /// The RTMP port on 127.0.0.1.
    pub fn rtmp_port(&self) -> u16 {
        self.port
    }

    /// Where recordings land (`<stream>-<unix time>.flv`).
    pub fn record_dir(&self) -> PathBuf {
        self.dir.path().join("rec")
    }

    /// Kills and starts nginx again on the same port.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// The nginx error log (info level: one line per publish).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }

    /// The temp directory (for messages).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NginxRtmp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
