//! SIPp playing a GB/T 28181 platform: a UAS answering REGISTER (digest checked by SIPp's
//! `verifyauth`) and MESSAGE, and one-shot UAC runs that send the platform's own requests
//! (queries, INVITE/ACK/BYE). Scenarios live in `tests/peers/sipp/`.

use super::TestDir;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SETUP_HINT: &str = "run scripts/setup-deps.sh (installs sip-tester, which provides sipp)";

/// Path of a scenario shipped with the tests.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/sipp")
        .join(name)
}

fn require_sipp() {
    let found = Command::new("sipp").arg("-v").output().is_ok();
    assert!(found, "sipp not found; {SETUP_HINT}");
}

/// The platform UAS (`platform_uas.xml`) listening on 127.0.0.1:`port`; killed on drop.
pub struct PlatformUas {
    child: Option<Child>,
    dir: TestDir,
    port: u16,
}

impl PlatformUas {
    /// Starts SIPp as the platform on UDP 127.0.0.1:`port`, challenging with `qop="auth"`.
    pub fn start(port: u16) -> PlatformUas {
        Self::start_with(port, true, false)
    }

    /// Like [`PlatformUas::start`]; `qop: false` sends an RFC 2069 challenge without `qop`, as
    /// some platforms do; `tcp: true` listens on TCP instead of UDP (`-t t1`).
    pub fn start_with(port: u16, qop: bool, tcp: bool) -> PlatformUas {
        require_sipp();
        let dir = TestDir::new("sipp-uas");
        let mut xml = std::fs::read_to_string(scenario("platform_uas.xml")).expect("scenario");
        if !qop {
            xml = xml.replace(",qop=\"auth\"", "");
            assert!(!xml.contains("qop"), "scenario still has qop");
        }
        let scenario_path = dir.path().join("platform_uas.xml");
        std::fs::write(&scenario_path, xml).expect("write scenario");
        let out = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout log");
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(&scenario_path)
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin"])
            .args(["-t", if tcp { "t1" } else { "u1" }])
            // Calls end at once; keeping their Call-IDs as "dead" would swallow the unregister,
            // which reuses the registration's Call-ID.
            .args(["-deadcall_wait", "0"])
            .args(["-trace_logs", "-trace_msg", "-trace_err"])
            .arg("-log_file")
            .arg(dir.path().join("logs.log"))
            .arg("-message_file")
            .arg(dir.path().join("messages.log"))
            .arg("-error_file")
            .arg(dir.path().join("errors.log"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sipp: {e}; {SETUP_HINT}"));
        let uas = PlatformUas {
            child: Some(child),
            dir,
            port,
        };
        let proto = if tcp { "tcp" } else { "udp" };
        assert!(
            super::wait_until(Duration::from_secs(10), || super::socket_bound(proto, port)),
            "SIPp did not bind {proto} port {port}: {}",
            std::fs::read_to_string(uas.dir.path().join("stdout.log")).unwrap_or_default()
        );
        uas
    }

    /// The platform's SIP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `<log>` lines of every call so far (REGISTERED, UNREGISTERED, AUTH_BAD, MESSAGE ...).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs.log")).unwrap_or_default()
    }

    /// Every SIP message SIPp sent and received, for failure reports and header checks.
    pub fn messages(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("messages.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the log has a line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.log().contains(needle))
    }

    /// Kills SIPp now (a platform outage).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PlatformUas {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sipp platform log ---\n{}", self.log());
        }
        self.kill();
    }
}

/// What a UAC run left behind.
pub struct UacRun {
    /// SIPp's exit status: success means every step of the scenario passed.
    pub status: ExitStatus,
    /// Its `<log>` lines.
    pub log: String,
    /// Messages sent and received.
    pub messages: String,
}

/// A UAC scenario started in the background; [`UacProcess::wait`] collects it.
pub struct UacProcess {
    child: Option<Child>,
    dir: TestDir,
}

/// Starts `scenario` once against `remote` from 127.0.0.1:`local_port` over UDP, with `-set`
/// variables.
pub fn start_uac(
    name: &str,
    remote: SocketAddr,
    local_port: u16,
    vars: &[(&str, &str)],
) -> UacProcess {
    start_uac_over(false, name, remote, local_port, vars)
}

/// Like [`start_uac`], over TCP when `tcp` (SIPp `-t t1`: one connection to the device).
pub fn start_uac_over(
    tcp: bool,
    name: &str,
    remote: SocketAddr,
    local_port: u16,
    vars: &[(&str, &str)],
) -> UacProcess {
    require_sipp();
    let dir = TestDir::new("sipp-uac");
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(scenario(name))
        .arg(remote.to_string())
        .args(["-i", "127.0.0.1", "-p", &local_port.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "30", "-timeout_error"])
        .args(["-t", if tcp { "t1" } else { "u1" }])
        .args(["-trace_logs", "-trace_msg"])
        .arg("-log_file")
        .arg(dir.path().join("logs.log"))
        .arg("-message_file")
        .arg(dir.path().join("messages.log"));
    for (k, v) in vars {
        cmd.args(["-set", k, v]);
    }
    let child = cmd
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start sipp: {e}; {SETUP_HINT}"));
    UacProcess {
        child: Some(child),
        dir,
    }
}

impl UacProcess {
    /// True once SIPp has exited.
    pub fn finished(&mut self) -> bool {
        self.child
            .as_mut()
            .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(true)
    }

    /// Waits at most `timeout` for SIPp to finish (killing it after that).
    pub fn wait(mut self, timeout: Duration) -> UacRun {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                break child.wait().expect("wait sipp");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        UacRun {
            status,
            log: std::fs::read_to_string(self.dir.path().join("logs.log")).unwrap_or_default(),
            messages: std::fs::read_to_string(self.dir.path().join("messages.log"))
                .unwrap_or_default(),
        }
    }
}

impl Drop for UacProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
