//! Janus (Meetecho's WebRTC SFU, Debian's `janus` 1.1) as a second, production WHIP peer,
//! behind `janus_whip_bridge.py` (beside this file), which turns WHIP requests into Janus
//! VideoRoom API calls.
//!
//! Janus's ICE library (libnice) will not gather candidates on loopback only, so unlike every
//! other peer Janus cannot live on 127.0.0.1: [`NetnsPair`] makes two network namespaces of the
//! test's own, joined by a veth pair with the project's private test addresses
//! [`PUBLISHER_ADDR`] ↔ [`SERVER_ADDR`]. Janus and the bridge run in the server namespace; the
//! host's own interfaces are never touched. Janus records what it receives (`.mjr`), and
//! [`to_mp4`] turns that into a file ffprobe can judge.

use super::{send_signal, wait_until, TestDir};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The publisher's end of the veth pair (its namespace also runs the broker and the daemon).
pub const PUBLISHER_ADDR: &str = "10.99.0.1";
/// The server's end: Janus's HTTP API, its ICE candidates and the bridge all use it.
pub const SERVER_ADDR: &str = "10.99.0.2";
/// Janus's HTTP API port inside the server namespace (the namespace is ours alone).
pub const JANUS_PORT: u16 = 8088;
/// The bridge's WHIP port inside the server namespace.
pub const BRIDGE_PORT: u16 = 8080;

/// What to do when a tool is missing, appended to the failure.
const SETUP_HINT: &str =
    "run scripts/setup-deps.sh (installs janus, janus-tools and the Python venv with aiohttp)";

/// How long Janus and the bridge may take to accept connections after they are spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The names of one run's namespaces and veth ends, derived from a tag (the pid of the test
/// process that made them), so that concurrent runs never share a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsNames {
    /// Namespace of the publisher: broker, daemon, cloud client.
    pub publisher: String,
    /// Namespace of the server: Janus and the bridge.
    pub server: String,
    /// veth end in the publisher namespace.
    pub publisher_if: String,
    /// veth end in the server namespace (Janus's `ice_enforce_list`).
    pub server_if: String,
}

impl NetnsNames {
    /// The names for `tag`. Interface names stay within Linux's 15 bytes for any pid.
    pub fn for_tag(tag: &str) -> NetnsNames {
        NetnsNames {
            publisher: format!("dockcast-jpub-{tag}"),
            server: format!("dockcast-jsrv-{tag}"),
            publisher_if: format!("dcjp{tag}"),
            server_if: format!("dcjs{tag}"),
        }
    }

    /// A command that runs `program` inside the server namespace.
    pub fn in_server(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server]).arg(program);
        cmd
    }
}

/// Runs `ip ARGS`; `Err` carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip {args:?}: {e} (apt-get install iproute2)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The two namespaces and the veth pair, created here and deleted on drop, also when the test
/// panics; every process still running inside them is killed first.
pub struct NetnsPair {
    tag: String,
    names: NetnsNames,
}

impl NetnsPair {
    /// Creates the namespaces for this process (tag = pid), the veth pair with
    /// [`PUBLISHER_ADDR`]/24 ↔ [`SERVER_ADDR`]/24, and brings `lo` up in both (the broker and
    /// the daemon talk over the publisher's loopback). Needs root.
    pub fn create() -> NetnsPair {
        assert!(
            super::running_as_root(),
            "the Janus test makes network namespaces (ip netns add) and needs root; CI runs as root"
        );
        let tag = std::process::id().to_string();
        let names = NetnsNames::for_tag(&tag);
        // Leftovers of a killed run that had the same pid would make `add` fail.
        let _ = ip(&["netns", "del", &names.publisher]);
        let _ = ip(&["netns", "del", &names.server]);
        let _ = ip(&["link", "del", &names.publisher_if]);
        // From here on, Drop undoes whatever part was made.
        let pair = NetnsPair { tag, names };
        let n = &pair.names;
        let pub_addr = format!("{PUBLISHER_ADDR}/24");
        let srv_addr = format!("{SERVER_ADDR}/24");
        let steps: [&[&str]; 11] = [
            &["netns", "add", &n.publisher],
            &["netns", "add", &n.server],
            &[
                "link",
                "add",
                &n.publisher_if,
                "type",
                "veth",
                "peer",
                "name",
                &n.server_if,
            ],
            &["link", "set", &n.publisher_if, "netns", &n.publisher],
            &["link", "set", &n.server_if, "netns", &n.server],
            &[
                "-n",
                &n.publisher,
                "addr",
                "add",
                &pub_addr,
                "dev",
                &n.publisher_if,
            ],
            &[
                "-n",
                &n.server,
                "addr",
                "add",
                &srv_addr,
                "dev",
                &n.server_if,
            ],
            &["-n", &n.publisher, "link", "set", &n.publisher_if, "up"],
            &["-n", &n.server, "link", "set", &n.server_if, "up"],
            &["-n", &n.publisher, "link", "set", "lo", "up"],
            &["-n", &n.server, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(step).unwrap_or_else(|e| panic!("setting up the Janus test network: {e}"));
        }
        pair
    }

    /// The names of the namespaces and interfaces.
    pub fn names(&self) -> &NetnsNames {
        &self.names
    }

    /// The tag the names derive from, to hand to a process started inside a namespace.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The pids of every process inside namespace `ns`.
    fn pids(ns: &str) -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Only this run's processes can be inside this run's namespaces.
        for ns in [&self.names.publisher, &self.names.server] {
            for pid in Self::pids(ns) {
                send_signal(pid, "KILL");
            }
        }
        let (publisher, server) = (self.names.publisher.clone(), self.names.server.clone());
        wait_until(Duration::from_secs(5), || {
            Self::pids(&publisher).is_empty() && Self::pids(&server).is_empty()
        });
        // Deleting a namespace deletes the veth end inside it, and with it the peer.
        let _ = ip(&["netns", "del", &self.names.publisher]);
        let _ = ip(&["netns", "del", &self.names.server]);
        let _ = ip(&["link", "del", &self.names.publisher_if]);
    }
}

/// The last `n` lines of a log file, for assertion messages.
fn file_tail(path: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// True when `addr:port` accepts a TCP connection right now.
fn accepts(addr: &str, port: u16) -> bool {
    let sa: SocketAddr = format!("{addr}:{port}").parse().expect("socket address");
    TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok()
}

/// Spawns `cmd` with stdout and stderr into `log`, and waits until `SERVER_ADDR:port` accepts;
/// panics with the log's tail when the process exits or the port stays closed.
fn spawn_and_wait(what: &str, mut cmd: Command, log: &Path, port: u16) -> Child {
    let file = File::create(log).expect("create log");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log handle"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}; {SETUP_HINT}"));
    let mut exited = None;
    let up = wait_until(START_TIMEOUT, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        accepts(SERVER_ADDR, port)
    });
    if let Some(status) = exited {
        panic!(
            "{what} exited during startup ({status}); {SETUP_HINT}; log:\n{}",
            file_tail(log, 40)
        );
    }
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what} did not accept on {SERVER_ADDR}:{port} within {START_TIMEOUT:?}; log:\n{}",
            file_tail(log, 40)
        );
    }
    child
}

/// A Janus process in the server namespace with a generated minimal configuration: only the
/// VideoRoom plugin and the HTTP transport (bound to [`SERVER_ADDR`]), ICE on the veth only,
/// recordings into its own temporary directory. Killed on drop.
pub struct Janus {
    dir: TestDir,
    child: Option<Child>,
}

impl Janus {
    /// Writes the configuration and starts Janus; waits until its HTTP API accepts.
    pub fn start(net: &NetnsNames) -> Janus {
        let dir = TestDir::new("janus");
        let root = dir.path();
        // Janus loads every module in its plugin and transport folders (a `disable` list would
        // have to name all the others): folders with just the two modules it needs are tighter.
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/janus");
        let lib = if lib.exists() {
            lib.to_path_buf()
        } else {
            find_janus_lib()
                .unwrap_or_else(|| panic!("Janus's module directory not found; {SETUP_HINT}"))
        };
        for (folder, module) in [
            ("plugins", "libjanus_videoroom.so"),
            ("transports", "libjanus_http.so"),
        ] {
            std::fs::create_dir_all(root.join(folder)).expect("create module folder");
            std::os::unix::fs::symlink(
                lib.join(folder).join(module),
                root.join(folder).join(module),
            )
            .expect("symlink Janus module");
        }
        for folder in ["events", "loggers", "conf", "rec"] {
            std::fs::create_dir_all(root.join(folder)).expect("create Janus folder");
        }
        let conf = root.join("conf");
        let p = |name: &str| root.join(name).display().to_string();
        std::fs::write(
            conf.join("janus.jcfg"),
            format!(
                "general: {{\n  configs_folder = \"{}\"\n  plugins_folder = \"{}\"\n  \
                 transports_folder = \"{}\"\n  events_folder = \"{}\"\n  loggers_folder = \"{}\"\n  \
                 interface = \"{SERVER_ADDR}\"\n  debug_level = 4\n  debug_colors = false\n  \
                 debug_timestamps = true\n}}\n\
                 nat: {{\n  ice_enforce_list = \"{}\"\n}}\n\
                 events: {{\n  broadcast = false\n}}\n",
                conf.display(),
                p("plugins"),
                p("transports"),
                p("events"),
                p("loggers"),
                net.server_if
            ),
        )
        .expect("write janus.jcfg");
        std::fs::write(
            conf.join("janus.transport.http.jcfg"),
            format!(
                "general: {{\n  base_path = \"/janus\"\n  http = true\n  port = {JANUS_PORT}\n  \
                 ip = \"{SERVER_ADDR}\"\n  https = false\n}}\nadmin: {{\n  admin_http = false\n}}\n"
            ),
        )
        .expect("write janus.transport.http.jcfg");
        // No static rooms: the bridge creates one recorded room per WHIP session.
        std::fs::write(conf.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")
            .expect("write janus.plugin.videoroom.jcfg");

        let mut cmd = net.in_server("janus");
        cmd.arg("-F")
            .arg(&conf)
            .arg("-C")
            .arg(conf.join("janus.jcfg"));
        let child = spawn_and_wait("Janus", cmd, &root.join("janus.log"), JANUS_PORT);
        Janus {
            dir,
            child: Some(child),
        }
    }

    /// The base of Janus's HTTP API, as the bridge reaches it.
    pub fn api_url(&self) -> String {
        format!("http://{SERVER_ADDR}:{JANUS_PORT}/janus")
    }

    /// Where the rooms record (one subdirectory per room).
    pub fn rec_dir(&self) -> PathBuf {
        self.dir.path().join("rec")
    }

    /// The video recordings (`*-video-*.mjr`) found so far, sorted.
    pub fn video_recordings(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for room in std::fs::read_dir(self.rec_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(room.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with(".mjr") && name.contains("-video") {
                    found.push(f.path());
                }
            }
        }
        found.sort();
        found
    }

    /// A scratch directory next to Janus's files, for converted recordings.
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `n` lines of Janus's log.
    pub fn log_tail(&self, n: usize) -> String {
        file_tail(&self.dir.path().join("janus.log"), n)
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Janus's module directory on a non-amd64 Debian (`/usr/lib/<triplet>/janus`).
fn find_janus_lib() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|e| e.path().join("janus"))
        .find(|p| p.join("plugins/libjanus_videoroom.so").exists())
}

/// The WHIP→Janus bridge (`janus_whip_bridge.py`) in the server namespace, on
/// [`SERVER_ADDR`]:[`BRIDGE_PORT`]. Killed on drop.
pub struct JanusWhipBridge {
    dir: TestDir,
    child: Option<Child>,
}

impl JanusWhipBridge {
    /// Starts the bridge in front of `janus` and waits until it accepts.
    pub fn start(net: &NetnsNames, janus: &Janus) -> JanusWhipBridge {
        let dir = TestDir::new("janus-bridge");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/janus_whip_bridge.py");
        let mut cmd = net.in_server(super::whip::venv_python());
        cmd.arg("-u")
            .arg(&script)
            .args(["--host", SERVER_ADDR, "--port", &BRIDGE_PORT.to_string()])
            .arg("--janus")
            .arg(janus.api_url())
            .arg("--rec-dir")
            .arg(janus.rec_dir());
        let log = dir.path().join("bridge.log");
        let child = spawn_and_wait("the WHIP→Janus bridge", cmd, &log, BRIDGE_PORT);
        JanusWhipBridge {
            dir,
            child: Some(child),
        }
    }

    /// The WHIP endpoint for `stream`.
    pub fn whip_url(&self, stream: &str) -> String {
        format!("http://{SERVER_ADDR}:{BRIDGE_PORT}/whip/{stream}")
    }

    /// `GET /stats`: counters (`posts`, `deletes`, `unpublish_sent`, `unpublish_ok`,
    /// `destroyed`, …) and per-session Janus events.
    pub fn stats(&self) -> Value {
        let body = http_get(SERVER_ADDR, BRIDGE_PORT, "/stats").unwrap_or_else(|e| {
            panic!(
                "GET /stats from the bridge failed: {e}\n{}",
                self.log_tail(30)
            )
        });
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /stats JSON {e}: {body}"))
    }

    /// The per-session stats objects (one per POST that reached Janus).
    pub fn sessions(&self) -> Vec<Value> {
        self.stats()["sessions"]
            .as_object()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The last `n` lines of the bridge's log.
    pub fn log_tail(&self, n: usize) -> String {
        file_tail(&self.dir.path().join("bridge.log"), n)
    }
}

impl Drop for JanusWhipBridge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` with stdout and stderr into `log`, for at most `timeout`; `Ok` carries the
/// output of a successful run, `Err` a description and the output's tail.
fn run_bounded(
    what: &str,
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
) -> Result<String, String> {
    let file = File::create(log).map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file)
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}; {SETUP_HINT}"))?;
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let output = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(format!("{what} exited with {s}:\n{}", file_tail(log, 20))),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "{what} ran over {timeout:?}:\n{}",
                file_tail(log, 20)
            ))
        }
    }
}

/// Converts a Janus `.mjr` recording to `out` (the container follows the extension) with
/// `janus-pp-rec`, waiting at most 60 s.
pub fn to_mp4(mjr: &Path, out: &Path) -> Result<(), String> {
    let mut cmd = Command::new("janus-pp-rec");
    cmd.arg(mjr).arg(out);
    let log = out.with_extension("pp-rec.log");
    run_bounded("janus-pp-rec", cmd, &log, Duration::from_secs(60))?;
    if out.exists() {
        Ok(())
    } else {
        Err(format!(
            "janus-pp-rec wrote no {}:\n{}",
            out.display(),
            file_tail(&log, 20)
        ))
    }
}

/// What FFmpeg's decoder complains about in the first `frames` frames of `path` (empty: they
/// all decode cleanly). ffprobe's frame count alone would also count frames the decoder had to
/// conceal. The frames are copied out first, so that frames after them cannot add complaints.
pub fn decode_errors(path: &Path, frames: u64) -> Result<String, String> {
    let head = path.with_extension("head.mp4");
    let mut copy = Command::new("ffmpeg");
    copy.args(["-v", "error", "-y", "-i"])
        .arg(path)
        .args(["-c", "copy", "-frames:v", &frames.to_string()])
        .arg(&head);
    let log = path.with_extension("head.log");
    run_bounded("ffmpeg (copy)", copy, &log, Duration::from_secs(60))?;
    let mut decode = Command::new("ffmpeg");
    // One thread: errors then belong to the frames decoded, not to ones decoded ahead.
    decode
        .args(["-v", "error", "-threads", "1", "-i"])
        .arg(&head)
        .args(["-f", "null", "-"]);
    let log = path.with_extension("decode.log");
    run_bounded("ffmpeg (decode)", decode, &log, Duration::from_secs(60))
}

/// The presentation timestamps of the first video stream's packets, in stream time-base units,
/// sorted, with that time base's denominator (ffprobe).
pub fn packet_pts(path: &Path) -> Result<(Vec<i64>, i64), String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=time_base:packet=pts",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run ffprobe: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut den = 0;
    let mut pts = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("1/") {
            den = d.parse().map_err(|e| format!("time base {line}: {e}"))?;
        } else if let Ok(v) = line.parse() {
            pts.push(v);
        }
    }
    pts.sort_unstable();
    Ok((pts, den))
}

/// A minimal HTTP/1.0 GET returning the body of a 200, with 2 s timeouts.
pub fn http_get(addr: &str, port: u16, path: &str) -> Result<String, String> {
    let sa: SocketAddr = format!("{addr}:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let mut s =
        TcpStream::connect_timeout(&sa, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
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
