//! node-media-server 4.4.3 (npm, installed by scripts/setup-deps.sh into .work/npm) recording
//! every publish, an `ffmpeg -listen 1` one-shot RTMP receiver, and PyAV to read recordings
//! Debian's ffprobe cannot (Enhanced RTMP HEVC).

use super::TestDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SETUP_HINT: &str = "run scripts/setup-deps.sh (installs node-media-server into .work/npm \
     and the PyAV venv into .work/venv), or point DOCKCAST_NPM / DOCKCAST_VENV at them";

fn nms_app() -> PathBuf {
    let prefix = std::env::var_os("DOCKCAST_NPM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".work/npm"));
    let app = prefix.join("node_modules/node-media-server/bin/app.js");
    assert!(app.exists(), "{} is missing; {SETUP_HINT}", app.display());
    app
}

/// A running node-media-server on 127.0.0.1 with auto-recording; killed on drop.
pub struct Nms {
    dir: TestDir,
    port: u16,
    other_ports: [u16; 3],
    child: Option<Child>,
}

impl Nms {
    /// Starts it on a free RTMP port and waits until it accepts connections.
    pub fn start() -> Nms {
        let mut nms = Nms {
            dir: TestDir::new("nms"),
            port: super::free_port(),
            other_ports: [super::free_port(), super::free_port(), super::free_port()],
            child: None,
        };
        nms.spawn();
        nms
    }

    /// The RTMP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test directory (inputs may go here too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Recordings of `live/<key>`, one per publish, oldest first.
    pub fn recordings(&self, key: &str) -> Vec<PathBuf> {
        let dir = self.dir.path().join("rec/live").join(key);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "flv"));
        files.sort();
        files
    }

    /// The server's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nms.log")).unwrap_or_default()
    }

    /// Kills the server (every client connection drops).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and starts again on the same ports and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nms.log"))
            .expect("open nms.log");
        let [rtmps, http, https] = self.other_ports;
        let child = Command::new("node")
            .arg(nms_app())
            .args(["-b", "127.0.0.1", "--no-admin", "--record-auto"])
            .args(["--rtmp-port", &self.port.to_string()])
            .args(["--rtmps-port", &rtmps.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(["--https-port", &https.to_string()])
            .args(["--data-path", "data", "--record-path", "rec"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node: {e}; {SETUP_HINT}"));
        self.child = Some(child);
        let port = self.port;
        assert!(
            super::wait_until(Duration::from_secs(15), || super::port_accepts(port)),
            "node-media-server did not listen on {port}:\n{}",
            self.log()
        );
    }
}

impl Drop for Nms {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ffmpeg -listen 1 -i rtmp://127.0.0.1:<port>/live/<key> -c copy out.flv`: takes exactly one
/// publish, then exits; a "restart" is a new process on the same port.
pub struct FfmpegListen {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl FfmpegListen {
    /// Starts it writing to `out` and waits until its port is in LISTEN state (a probe
    /// connection would be taken as the one publish, so /proc is read instead).
    pub fn start(port: u16, key: &str, out: &Path) -> FfmpegListen {
        let log_path = out.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("ffmpeg log");
        let child = Command::new("ffmpeg")
            .args([
                "-v",
                "verbose",
                "-y",
                "-analyzeduration",
                "500000",
                "-listen",
                "1",
                "-i",
            ])
            .arg(format!("rtmp://127.0.0.1:{port}/live/{key}"))
            .args(["-c", "copy", "-flush_packets", "1", "-f", "flv"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ffmpeg -listen");
        // A publisher retrying fast may be accepted between two polls, after which the one-shot
        // listener is gone: an established connection on the port counts as started too.
        assert!(
            super::wait_until(Duration::from_secs(10), || port_listening(port)
                || port_state(port, "01")),
            "ffmpeg -listen did not listen on {port}"
        );
        FfmpegListen {
            port,
            log: log_path,
            child: Some(child),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Frames ffmpeg reports having copied so far (its last `frame=` progress figure).
    pub fn frames(&self) -> u32 {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.rsplit("frame=")
            .next()
            .filter(|_| log.contains("frame="))
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Waits (bounded) for ffmpeg to finish writing after the publisher went away.
    pub fn wait_exit(&mut self, within: Duration) {
        if let Some(child) = self.child.as_mut() {
            super::wait_until(within, || matches!(child.try_wait(), Ok(Some(_))));
        }
        self.kill();
    }

    /// Kills it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for FfmpegListen {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when a socket on 127.0.0.1:`port` is in LISTEN state, read from /proc/net/tcp.
pub fn port_listening(port: u16) -> bool {
    port_state(port, "0A")
}

/// True when a socket bound locally to 127.0.0.1:`port` is in TCP state `state` (hex, as in
/// /proc/net/tcp: 0A listen, 01 established).
fn port_state(port: u16, state: &str) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let mut f = l.split_whitespace();
                f.nth(1) == Some(want.as_str()) && f.nth(1) == Some(state)
            })
        })
        .unwrap_or(false)
}

/// What PyAV decoded from a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Codec name (e.g. "hevc").
    pub codec: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames decoded without error.
    pub frames: u32,
    /// Packet pts in milliseconds, in file order.
    pub pts_ms: Vec<i64>,
}

/// Decodes every video frame of `path` with PyAV (the project venv's, bundled FFmpeg 8).
pub fn pyav_decode(path: &Path) -> Result<Decoded, String> {
    let python = super::whip::venv_python();
    let script = r#"
import sys, av
c = av.open(sys.argv[1])
s = c.streams.video[0]
frames = 0
pts = []
for p in c.demux(s):
    if p.pts is not None:
        pts.append(int(p.pts * p.time_base * 1000))
    for f in p.decode():
        frames += 1
print(s.codec_context.name, s.codec_context.width, s.codec_context.height, frames)
print(" ".join(map(str, pts)))
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .map_err(|e| format!("run python: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let num = |i: usize| head.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Decoded {
        codec: head.first().map(|s| s.to_string()).unwrap_or_default(),
        width: num(1),
        height: num(2),
        frames: num(3),
        pts_ms: lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect(),
    })
}
