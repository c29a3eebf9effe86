//! The dockcast binary under test, run as a separate process with a config file written here.

use super::{send_signal, wait_until, TestDir};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// One rung of the quality ladder written into the test config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Target bitrate.
    pub bitrate_kbps: u32,
}

/// The small ladder the tests configure: encoding at 1080p on a two-core CI machine would make
/// every test slow and the frame-rate measurements noisy. Index = DJI `video_quality` (1..=4).
pub const TEST_LADDER: [(&str, Rung); 4] = [
    (
        "smooth",
        Rung {
            width: 320,
            height: 180,
            fps: 30,
            bitrate_kbps: 300,
        },
    ),
    (
        "standard",
        Rung {
            width: 640,
            height: 360,
            fps: 30,
            bitrate_kbps: 600,
        },
    ),
    (
        "high",
        Rung {
            width: 854,
            height: 480,
            fps: 30,
            bitrate_kbps: 900,
        },
    ),
    (
        "ultra_high",
        Rung {
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 1500,
        },
    ),
];

/// The rung the test config assigns to DJI `video_quality` 1..=4.
pub fn rung_for_quality(quality: u8) -> Rung {
    assert!(
        (1..=4).contains(&quality),
        "video_quality {quality} has no fixed rung"
    );
    TEST_LADDER[usize::from(quality) - 1].1
}

/// What goes into the daemon's TOML config for a test.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Gateway (dock) serial; also the one device's serial.
    pub gateway_sn: String,
    /// Broker URL, `mqtt://127.0.0.1:<port>`.
    pub mqtt_url: String,
    /// MQTT client id.
    pub client_id: String,
    /// MQTT username and password, for brokers started `with_password`.
    pub credentials: Option<(String, String)>,
    /// `gateway.max_streams`.
    pub max_streams: u32,
    /// Camera index of the one configured camera.
    pub camera_index: String,
    /// Video index of its one video.
    pub video_index: String,
    /// `--source URI` for `dockcast run`, feeding every lens from one source.
    pub source: Option<String>,
    /// More config sections, appended as they are (e.g. `[gb28181]`, `[adapters.x]`).
    pub extra_toml: String,
    /// Source per lens written into the config (`(lens, uri)`); empty: the pattern on all four.
    pub lens_sources: Vec<(String, String)>,
}

impl DaemonConfig {
    /// The configuration the end-to-end tests share: gateway `DOCKCAST0000001`, one dock camera
    /// `165-0-7` with video `normal-0` fed by the test pattern on all four lenses.
    pub fn new(mqtt_url: &str) -> DaemonConfig {
        DaemonConfig {
            gateway_sn: "DOCKCAST0000001".to_string(),
            mqtt_url: mqtt_url.to_string(),
            client_id: format!("dockcast-test-{}", uuid::Uuid::new_v4().simple()),
            credentials: None,
            max_streams: 2,
            camera_index: "165-0-7".to_string(),
            video_index: "normal-0".to_string(),
            source: None,
            extra_toml: String::new(),
            lens_sources: Vec::new(),
        }
    }

    /// Sets the MQTT username and password.
    pub fn with_credentials(mut self, user: &str, pass: &str) -> DaemonConfig {
        self.credentials = Some((user.to_string(), pass.to_string()));
        self
    }

    /// `{gateway_sn}/{camera_index}/{video_index}` of the configured video.
    pub fn video_id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.gateway_sn, self.camera_index, self.video_index
        )
    }

    /// The config file text in the daemon's TOML schema.
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        t.push_str(&format!(
            "[gateway]\nsn = {}\nmax_streams = {}\n\n",
            toml_str(&self.gateway_sn),
            self.max_streams
        ));
        t.push_str(&format!(
            "[mqtt]\nurl = {}\nclient_id = {}\n",
            toml_str(&self.mqtt_url),
            toml_str(&self.client_id)
        ));
        if let Some((user, pass)) = &self.credentials {
            t.push_str(&format!(
                "username = {}\npassword = {}\n",
                toml_str(user),
                toml_str(pass)
            ));
        }
        t.push('\n');
        for (name, r) in TEST_LADDER {
            t.push_str(&format!(
                "[quality.{name}]\nwidth = {}\nheight = {}\nfps = {}\nbitrate_kbps = {}\n\n",
                r.width, r.height, r.fps, r.bitrate_kbps
            ));
        }
        t.push_str(&self.extra_toml);
        t.push('\n');
        let sources = if self.lens_sources.is_empty() {
            "normal = \"pattern\", wide = \"pattern\", zoom = \"pattern\", ir = \"pattern\""
                .to_string()
        } else {
            self.lens_sources
                .iter()
                .map(|(lens, uri)| format!("{lens} = {}", toml_str(uri)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        t.push_str(&format!(
            "[[device]]\nsn = {}\n\n[[device.camera]]\nindex = {}\n\n[[device.camera.video]]\nindex = {}\nlens = \"normal\"\nsources = {{ {sources} }}\n",
            toml_str(&self.gateway_sn),
            toml_str(&self.camera_index),
            toml_str(&self.video_index)
        ));
        t
    }
}

/// A TOML basic string (the values here are plain ASCII; quotes and backslashes escaped anyway).
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The command that runs the daemon: the binary cargo built for these tests, or
/// `$DOCKCAST_BIN` (e.g. a cross-built aarch64 binary) run through `$DOCKCAST_RUNNER`
/// (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`) when those are set.
pub fn daemon_command() -> Command {
    let bin = std::env::var("DOCKCAST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_dockcast").to_string());
    match runner() {
        Some(runner) => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().unwrap_or("env"));
            cmd.args(parts).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// `$DOCKCAST_RUNNER` when set and not blank: the daemon then runs through it (under
/// emulation), not natively.
pub fn runner() -> Option<String> {
    std::env::var("DOCKCAST_RUNNER")
        .ok()
        .filter(|r| !r.trim().is_empty())
}

/// The `dockcast run` process.
///
/// stdout and stderr go to one file so a test can read everything the daemon logged (to check,
/// for example, that no secret ever appears there); the process is killed when dropped.
pub struct Daemon {
    dir: TestDir,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    log_path: PathBuf,
    config_path: PathBuf,
}

impl Daemon {
    /// Writes `config` to `<tmp>/dockcast.toml` and spawns
    /// `dockcast run --config <tmp>/dockcast.toml` with `RUST_LOG=debug`.
    pub fn start(config: &DaemonConfig) -> Daemon {
        let dir = TestDir::new("dockcast");
        let config_path = dir.path().join("dockcast.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write dockcast.toml");
        let log_path = dir.path().join("dockcast.log");
        let log = File::create(&log_path).expect("create daemon log");
        let mut cmd = daemon_command();
        cmd.arg("run").arg("--config").arg(&config_path);
        if let Some(source) = &config.source {
            cmd.arg("--source").arg(source);
        }
        let child = cmd
            .env("RUST_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn the dockcast binary");
        Daemon {
            dir,
            child: Some(child),
            exit: None,
            log_path,
            config_path,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Path of the config file the daemon was started with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Sends a signal by name ("TERM", "INT", "HUP", "KILL"); returns whether `kill` succeeded.
    pub fn send_signal(&self, signal: &str) -> bool {
        match &self.child {
            Some(child) => send_signal(child.id(), signal),
            None => false,
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let child = self.child.as_mut()?;
            let mut status = None;
            wait_until(timeout, || {
                status = child.try_wait().ok().flatten();
                status.is_some()
            });
            self.exit = status;
        }
        self.exit
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                self.exit = Some(status);
                false
            }
            _ => false,
        }
    }

    /// "running" or "exited with <status>", for assertion messages.
    pub fn state(&mut self) -> String {
        if self.is_running() {
            "running".to_string()
        } else {
            match self.exit {
                Some(status) => format!("exited with {status}"),
                None => "not started".to_string(),
            }
        }
    }

    /// The process's open descriptors, each as what it points at (`socket:[…]`, a path),
    /// sorted; empty once it has exited. Under `$DOCKCAST_RUNNER` these are the emulator's.
    pub fn open_fds(&self) -> Vec<String> {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        fds.sort();
        fds
    }

    /// The process's thread count (`Threads:` in `/proc/PID/status`; 0 once it has exited).
    pub fn threads(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// What the daemon holds once its first push has come and gone: the baseline later pushes
    /// must return it to. Waits a moment first, as stopping is announced before every socket
    /// is closed; checks that `/proc` shows the daemon at all, or every comparison would pass.
    pub fn held_after_first_push(&self) -> Held {
        std::thread::sleep(Duration::from_millis(500));
        let held = Held {
            fds: self.open_fds(),
            threads: self.threads(),
        };
        assert!(
            held.fds.iter().any(|f| f.starts_with("socket:")) && held.threads > 1,
            "cannot see the daemon's descriptors or threads: {:?}, {} threads",
            held.fds,
            held.threads
        );
        eprintln!(
            "after one push: {} descriptors, {} threads",
            held.fds.len(),
            held.threads
        );
        held
    }

    /// Requires the daemon, still running, to come back to no more descriptors and threads
    /// than `baseline` (`after` says after what, for the message).
    pub fn assert_holds_no_more_than(&mut self, baseline: &Held, after: &str) {
        let settled = wait_until(Duration::from_secs(5), || {
            self.open_fds().len() <= baseline.fds.len()
        });
        assert!(
            settled,
            "descriptors {after}: {:?}\nafter the first push: {:?}",
            self.open_fds(),
            baseline.fds
        );
        // Idle blocking-pool threads end 10 s after their last job.
        let settled = wait_until(Duration::from_secs(12), || {
            self.threads() <= baseline.threads
        });
        assert!(
            settled,
            "{} threads {after}, {} after the first push",
            self.threads(),
            baseline.threads
        );
        // An exited daemon has no descriptors or threads at all.
        assert!(self.is_running(), "{}", self.log_tail(40));
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines of the logs, for assertion messages.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// What a daemon holds, as [`Daemon::held_after_first_push`] found it.
pub struct Held {
    /// Its open descriptors, as [`Daemon::open_fds`] lists them.
    pub fds: Vec<String>,
    /// Its thread count.
    pub threads: usize,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
