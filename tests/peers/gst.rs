//! GStreamer standing in for the GB media server (ZLMediaKit): receives PS over RTP, demuxes it
//! with `mpegpsdemux` (which needs the PSM to expose H.264) and writes the H.264 elementary
//! stream for ffprobe to count. The pipelines are the ones verified in the GB28181 notes.

use super::TestDir;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SETUP_HINT: &str = "run scripts/setup-deps.sh (installs gstreamer1.0-tools and plugins)";

/// How the receiver gets the RTP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `udpsrc` on the port (offer `RTP/AVP`).
    Udp,
    /// `tcpserversrc` listening on the port (offer `TCP/RTP/AVP` + `a=setup:passive`).
    TcpListen,
    /// `tcpclientsrc` dialling the device's media port (offer `TCP/RTP/AVP` + `a=setup:active`).
    TcpDial,
}

/// A running receiver; stopped with EOS so the output file is complete.
pub struct PsReceiver {
    child: Option<Child>,
    dir: TestDir,
}

const CAPS: &str =
    "media=(string)video,clock-rate=(int)90000,encoding-name=(string)MP1S,payload=(int)96";
const TAIL: &str = "capssetter caps=\"video/mpeg,mpegversion=(int)2,systemstream=(boolean)true\" ! mpegpsdemux ! h264parse ! video/x-h264,stream-format=byte-stream ! filesink buffer-mode=unbuffered";

impl PsReceiver {
    /// Starts a receiver on 127.0.0.1:`port` (for [`Mode::TcpDial`]: the port it dials).
    pub fn start(mode: Mode, port: u16) -> PsReceiver {
        let found = Command::new("gst-launch-1.0")
            .arg("--version")
            .output()
            .is_ok();
        assert!(found, "gst-launch-1.0 not found; {SETUP_HINT}");
        let dir = TestDir::new("gst-ps");
        let out = dir.path().join("out.h264");
        let head = match mode {
            Mode::Udp => format!(
                "udpsrc address=127.0.0.1 port={port} caps=\"application/x-rtp,{CAPS}\" ! rtpjitterbuffer latency=200 ! rtpmp1sdepay"
            ),
            Mode::TcpListen => format!(
                "tcpserversrc host=127.0.0.1 port={port} ! \"application/x-rtp-stream,{CAPS}\" ! rtpstreamdepay ! rtpmp1sdepay"
            ),
            Mode::TcpDial => format!(
                "tcpclientsrc host=127.0.0.1 port={port} ! \"application/x-rtp-stream,{CAPS}\" ! rtpstreamdepay ! rtpmp1sdepay"
            ),
        };
        let pipeline = format!("{head} ! {TAIL} location={}", out.display());
        let log = std::fs::File::create(dir.path().join("gst.log")).expect("gst log");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec gst-launch-1.0 -e {pipeline}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start gst-launch-1.0: {e}; {SETUP_HINT}"));
        let receiver = PsReceiver {
            child: Some(child),
            dir,
        };
        if mode == Mode::TcpListen {
            // Not a probe connection: tcpserversrc serves exactly one client and would take the
            // probe for it.
            assert!(
                super::wait_until(Duration::from_secs(5), || super::socket_bound("tcp", port)),
                "tcpserversrc did not listen: {}",
                receiver.log()
            );
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
        receiver
    }

    /// The demuxed H.264 written so far.
    pub fn output(&self) -> PathBuf {
        self.dir.path().join("out.h264")
    }

    /// Bytes written so far.
    pub fn output_len(&self) -> u64 {
        std::fs::metadata(self.output())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// GStreamer's messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gst.log")).unwrap_or_default()
    }

    /// Sends EOS (SIGINT with `-e`) and waits at most 5 s for the pipeline to finish.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        super::send_signal(child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PsReceiver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gstreamer log ---\n{}", self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
