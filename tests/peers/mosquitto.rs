//! A real mosquitto broker on 127.0.0.1, playing the cloud's MQTT broker.

use super::{free_port, port_accepts, running_as_root, wait_until, TestDir};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a broker may take to accept connections after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A mosquitto process started from its own config file in its own temporary directory.
///
/// Stopping and starting it again on the same port is what the broker-restart tests need;
/// the process is killed when this value is dropped.
pub struct Mosquitto {
    dir: TestDir,
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Mosquitto {
    /// Starts an anonymous broker (`allow_anonymous true`, `persistence false`) on a free port.
    pub fn start() -> Mosquitto {
        Self::start_with(None)
    }

    /// Starts a broker that accepts only `user`/`pass` (password file made with
    /// `mosquitto_passwd -b`), for tests of authenticated links and of secrets in logs.
    pub fn with_password(user: &str, pass: &str) -> Mosquitto {
        Self::start_with(Some((user, pass)))
    }

    fn start_with(credentials: Option<(&str, &str)>) -> Mosquitto {
        let dir = TestDir::new("mosquitto");
        let port = free_port();
        let mut conf_text = format!(
            // set_tcp_nodelay: without it mosquitto holds small packets for the peer's delayed
            // ACK, adding ~40 ms to every request and reply.
            "listener {port} 127.0.0.1\npersistence false\nset_tcp_nodelay true\nlog_dest stderr\nlog_type all\n"
        );
        match credentials {
            None => conf_text.push_str("allow_anonymous true\n"),
            Some((user, pass)) => {
                let pw_file = dir.path().join("passwd");
                File::create(&pw_file).expect("create password file");
                let status = Command::new("mosquitto_passwd")
                    .arg("-b")
                    .arg(&pw_file)
                    .arg(user)
                    .arg(pass)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run mosquitto_passwd (apt-get install mosquitto)");
                assert!(status.success(), "mosquitto_passwd failed: {status}");
                conf_text.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    pw_file.display()
                ));
            }
        }
        if running_as_root() {
            // Otherwise mosquitto switches to the `mosquitto` user, which may not be able to
            // read the files in our temporary directory.
            conf_text.push_str("user root\n");
        }
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, conf_text).expect("write mosquitto.conf");
        let mut broker = Mosquitto {
            dir,
            port,
            conf,
            child: None,
            starts: 0,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        self.starts += 1;
        let log_path = self
            .dir
            .path()
            .join(format!("mosquitto-{}.log", self.starts));
        let log = File::create(&log_path).expect("create mosquitto log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let port = self.port;
        let mut exited = None;
        let up = wait_until(START_TIMEOUT, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                exited = Some(status);
                return true;
            }
            port_accepts(port)
        });
        if let Some(status) = exited {
            self.child = None;
            panic!(
                "mosquitto exited during startup ({status}); log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(
            up,
            "mosquitto did not accept on 127.0.0.1:{port} within {START_TIMEOUT:?}; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>`, the form the daemon's config and CLI take.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Kills the broker (no clean MQTT disconnect for its clients, as in a crash) and waits
    /// until the port no longer accepts.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(5), || !port_accepts(port)),
            "127.0.0.1:{port} still accepts after mosquitto was killed"
        );
    }

    /// Starts the broker again on the same port with the same config (empty: no persistence,
    /// so retained messages from before are gone).
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// True while the broker process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Everything the broker logged, over all its starts (for failure messages).
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("mosquitto-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
