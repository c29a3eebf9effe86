//! What the adapter hop costs against the native RTMP sink, both pushing the same 1080p30
//! H.264 clip passed through (no encode) to RTMP on 127.0.0.1, side by side in one run:
//!
//! - CPU per stream: the daemon (`dockcast run --source file:clip`, adaptive quality, so the
//!   clip passes through) pushing to nginx-rtmp with its native RTMP sink, against the same
//!   daemon configured to route url_type 1 through `board/adapters/ffmpeg-publish.sh`: the
//!   daemon plus every process below it (the adapter's ffmpeg and its status reader), from the
//!   nanosecond counters in `/proc/<pid>/task/*/schedstat`.
//! - Latency added by the hop: the sinks run in this process (`sink::rtmp::run` and
//!   `sink::adapter::run` with the real script), fed the clip at 30 fps with the instant each
//!   frame is handed over noted, into an RTMP server in this process that notes the instant
//!   each video message is complete. Each frame carries its index in an SEI message, so a
//!   message is matched to its frame whatever timestamps ffmpeg writes.
//!
//! Run with `cargo bench --bench adapter`. Needs nginx with the RTMP module, mosquitto and
//! ffmpeg (`scripts/setup-deps.sh`). Every wait is bounded.

mod common;
#[path = "../tests/peers/mod.rs"]
mod peers;

use common::cpu_secs;

use dockcast::media::frame::{Codec, EncodedFrame};
use dockcast::media::quality::Rung;
use dockcast::sink::adapter::{self, AdapterOptions, AdapterSpec, Framing, Ready};
use dockcast::sink::rtmp::{self, RtmpOptions, RtmpTarget};
use dockcast::source::file::FileSource;
use dockcast::source::{SourceFrame, VideoSource};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::{has_keyframe, Nginx};
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The gateway serial and video the daemon's default single-camera config announces.
const GW: &str = "DOCKCAST0000001";
/// The video of [`GW`] the pushes are started on.
const VID: &str = "DOCKCAST0000001/165-0-7/normal-0";
/// One frame interval at 30 fps, the pace a camera and the daemon's pipeline keep.
const FRAME: Duration = Duration::from_micros(33_333);
/// CPU is read over this long, after `WARM_UP` of steady pushing.
const CPU_WINDOW: Duration = Duration::from_secs(10);
/// Time for the connection and (on the adapter path) ffmpeg's start to settle.
const WARM_UP: Duration = Duration::from_secs(2);
/// Native and adapter CPU windows alternate this many times, so that a slow patch of the
/// shared machine hits both paths alike.
const CPU_ROUNDS: usize = 2;
/// Frames fed per latency run (10 s at 30 fps). The last one is left out of the figures: with
/// no frame after it, ffmpeg's parser only lets it go at the end of input, which is the stop,
/// not the hop.
const LAT_FRAMES: u32 = 300;
/// Frames left out of the latency figures: the connection and ffmpeg's start (its probe,
/// opening the output) happen during the first second, and frames queued meanwhile measure
/// the start, not the hop.
const LAT_SKIP: u32 = 60;
/// Same queue depth as the daemon's session gives its sink (`[rtmp] queue_frames`).
const SINK_QUEUE: usize = 60;
/// Marks the benchmark's own SEI messages (`user_data_unregistered`); no zero bytes, so the
/// SEI needs no emulation prevention.
const SEI_UUID: [u8; 16] = *b"dockcast-hop-idx";

/// 1080p30 4 Mbit/s H.264, IDR every 30 frames, no B-frames (like a drone feed), 20 s, so the
/// file source's loop point is not inside a measurement window more than once.
fn make_clip(dir: &Path) -> PathBuf {
    let path = dir.join("clip-1080p.h264");
    common::h264_clip(&path, (1920, 1080), 20, "veryfast", true);
    path
}

/// The adapter the project ships for RTMP, SRT and RTSP uplinks.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("board/adapters/ffmpeg-publish.sh")
}

// ---------------------------------------------------------------------------------------------
// CPU per stream, daemon processes

/// Parent pid and command name of `pid`, from /proc/<pid>/stat.
fn stat_of(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

/// Every process below `root` (children, their children, …), found by the ppid of each
/// process in /proc: the adapter runs in a process group of its own, so the group does not
/// lead back to the daemon, its parent pid does.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let all: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| stat_of(pid).map(|(ppid, comm)| (pid, ppid, comm)))
                .collect()
        })
        .unwrap_or_default();
    let mut found: Vec<(u32, String)> = Vec::new();
    let mut parents = vec![root];
    // A process tree on this machine is a handful of levels deep; 16 bounds the walk.
    for _ in 0..16 {
        let next: Vec<(u32, String)> = all
            .iter()
            .filter(|(pid, ppid, _)| parents.contains(ppid) && !found.iter().any(|f| f.0 == *pid))
            .map(|(pid, _, comm)| (*pid, comm.clone()))
            .collect();
        if next.is_empty() {
            break;
        }
        parents = next.iter().map(|n| n.0).collect();
        found.extend(next);
    }
    found
}

/// CPU share of one core used over `CPU_WINDOW` by `pid` itself and by the processes below it
/// (those alive at both ends of the window), with the names of the latter.
fn tree_cpu(pid: u32) -> (f64, f64, Vec<String>) {
    let kids0: HashMap<u32, (String, f64)> = descendants(pid)
        .into_iter()
        .map(|(p, comm)| (p, (comm, cpu_secs(p))))
        .collect();
    let own0 = cpu_secs(pid);
    let t0 = Instant::now();
    std::thread::sleep(CPU_WINDOW);
    let own1 = cpu_secs(pid);
    let mut kids = 0.0;
    let mut names = Vec::new();
    for (p, _) in descendants(pid) {
        if let Some((comm, c0)) = kids0.get(&p) {
            kids += cpu_secs(p) - c0;
            names.push(comm.clone());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    names.sort();
    ((own1 - own0) / secs, kids / secs, names)
}

/// The daemon playing `clip` on every lens; with `adapter`, url_type 1 (RTMP) goes through
/// ffmpeg-publish.sh, configured as board/adapters/FRAMING.md describes.
fn daemon(broker: &Mosquitto, clip: &Path, dir: &Path, adapter: bool) -> Child {
    let config = dir.join(if adapter {
        "adapter.toml"
    } else {
        "native.toml"
    });
    let mut toml = format!("[mqtt]\nurl = \"{}\"\n", broker.url());
    if adapter {
        toml += &format!(
            "[adapters.ffmpeg]\ncommand = [\"{}\", \"{{url}}\"]\nurl_type = 1\nframing = \"annexb\"\nready = \"publishing\"\n",
            script().display()
        );
    }
    std::fs::write(&config, toml).expect("config");
    Command::new(env!("CARGO_BIN_EXE_dockcast"))
        .args(["run", "--config"])
        .arg(&config)
        .arg("--source")
        .arg(format!("file:{}", clip.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dockcast")
}

/// One CPU window of a daemon pushing to nginx: (daemon share, share of the processes below
/// it, their names).
fn cpu_round(
    cloud: &mut CloudClient,
    broker: &Mosquitto,
    nginx: &Nginx,
    clip: &Path,
    dir: &Path,
    adapter: bool,
    round: usize,
) -> (f64, f64, Vec<String>) {
    // live_capacity is retained: only one published after this daemon started says it is up.
    cloud.skip_received_states();
    let mut d = Running(daemon(broker, clip, dir, adapter));
    cloud.wait_state("live_capacity", |_| true, Duration::from_secs(20));
    let key = format!("{}-{round}", if adapter { "adapter" } else { "native" });
    let url = format!("rtmp://127.0.0.1:{}/live/{key}", nginx.port());
    let (tid, _) = cloud.send_service(
        "live_start_push",
        json!({"url_type": 1, "url": url, "video_id": VID, "video_quality": 0}),
    );
    let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
    assert_eq!(reply["data"]["result"], 0, "{reply}");
    let rec = nginx.recording(&key);
    assert!(
        peers::wait_until(Duration::from_secs(20), || has_keyframe(&rec)),
        "no keyframe at nginx for {key}"
    );
    std::thread::sleep(WARM_UP);
    let cpu = tree_cpu(d.0.id());
    let (tid, _) = cloud.send_service("live_stop_push", json!({ "video_id": VID }));
    let _ = cloud.wait_reply(&tid, Duration::from_secs(20));
    // SIGTERM lets the daemon close its adapter; the guard kills whatever is left.
    let _ = Command::new("kill")
        .args(["-TERM", &d.0.id().to_string()])
        .status();
    let _ = peers::wait_until(Duration::from_secs(5), || {
        matches!(d.0.try_wait(), Ok(Some(_)))
    });
    cpu
}

/// A daemon that must not outlive a failing round (std's `Child` is not killed on drop).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Latency added by the hop, sinks in this process

/// `frame` with an SEI carrying `index` put before its first slice, where H.264 allows SEI.
/// The index is written 7 bits a byte with the top bit set, so no byte is zero.
fn tag_frame(frame: &[u8], index: u32) -> Vec<u8> {
    let mut sei = vec![0, 0, 0, 1, 6, 5, 20];
    sei.extend_from_slice(&SEI_UUID);
    for shift in [21, 14, 7, 0] {
        sei.push(0x80 | ((index >> shift) & 0x7f) as u8);
    }
    sei.push(0x80); // rbsp trailing bits
    let first_slice = (0..frame.len().saturating_sub(4))
        .find(|&i| frame[i..i + 3] == [0, 0, 1] && matches!(frame[i + 3] & 0x1f, 1 | 5));
    let Some(mut at) = first_slice else {
        return frame.to_vec();
    };
    // Take the zero of a 4-byte start code along.
    if at > 0 && frame[at - 1] == 0 {
        at -= 1;
    }
    let mut out = Vec::with_capacity(frame.len() + sei.len());
    out.extend_from_slice(&frame[..at]);
    out.extend_from_slice(&sei);
    out.extend_from_slice(&frame[at..]);
    out
}

/// The index written by [`tag_frame`] into an AVC NALU tag body (AVCC: 4-byte lengths), if any.
fn frame_index(body: &[u8]) -> Option<u32> {
    if body.get(1) != Some(&1) {
        return None;
    }
    let mut i = 5;
    // A frame holds a few NAL units; 64 bounds a malformed body.
    for _ in 0..64 {
        let len = u32::from_be_bytes(body.get(i..i + 4)?.try_into().ok()?) as usize;
        let nal = body.get(i + 4..i + 4 + len)?;
        if nal.len() >= 23 && nal[0] & 0x1f == 6 && nal[1] == 5 && nal[3..19] == SEI_UUID {
            return Some(
                nal[19..23]
                    .iter()
                    .fold(0, |acc, b| acc << 7 | u32::from(b & 0x7f)),
            );
        }
        i += 4 + len;
    }
    None
}

/// An RTMP server (rml_rtmp's server session) that accepts one publish and sends the frame
/// index and arrival instant of each video message, the instant being when the read that
/// completed the message returned.
fn rtmp_receiver(listener: std::net::TcpListener, out: std_mpsc::Sender<(u32, Instant)>) {
    use rml_rtmp::sessions::{
        ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
    };
    // Bounded wait for the sink's connection: a sink that never connects must not hang the run.
    let deadline = Instant::now() + Duration::from_secs(20);
    let _ = listener.set_nonblocking(true);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    };
    let _ = s.set_nonblocking(false);
    // A latency run lasts 10 s; one minute bounds the session whatever the sink does.
    let end = Instant::now() + Duration::from_secs(60);
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(mut input) = common::rtmp_server_handshake(&mut s, end) else {
        return;
    };
    let mut buf = vec![0u8; 1 << 16];
    let Ok((mut session, initial)) = ServerSession::new(ServerSessionConfig::new()) else {
        return;
    };
    let mut pending: std::collections::VecDeque<ServerSessionResult> = initial.into();
    let mut arrived = Instant::now();
    while arrived < end {
        if !input.is_empty() {
            match session.handle_input(&input) {
                Ok(r) => pending.extend(r),
                Err(_) => return,
            }
        }
        while let Some(r) = pending.pop_front() {
            match r {
                ServerSessionResult::OutboundResponse(p) if s.write_all(&p.bytes).is_err() => {
                    return;
                }
                ServerSessionResult::RaisedEvent(
                    ServerSessionEvent::ConnectionRequested { request_id, .. }
                    | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                ) => {
                    if let Ok(r) = session.accept_request(request_id) {
                        pending.extend(r);
                    }
                }
                ServerSessionResult::RaisedEvent(ServerSessionEvent::VideoDataReceived {
                    data,
                    ..
                }) => {
                    if let Some(index) = frame_index(&data) {
                        let _ = out.send((index, arrived));
                    }
                }
                _ => {}
            }
        }
        input = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf[..n].to_vec(),
        };
        arrived = Instant::now();
    }
}

/// The sink a latency run goes through.
#[derive(Clone, Copy, PartialEq)]
enum Hop {
    /// `sink::rtmp::run`.
    Native,
    /// `sink::adapter::run` with ffmpeg-publish.sh, frames as the pipeline makes them (the sink
    /// closes each with an access unit delimiter on the bare Annex-B stream).
    Adapter,
}

impl Hop {
    /// Row name in the printed table.
    fn label(self) -> &'static str {
        match self {
            Hop::Native => "native RTMP sink",
            Hop::Adapter => "adapter (ffmpeg-publish.sh)",
        }
    }
}

/// Latency result of one run: sorted milliseconds from hand-over to the complete message, and
/// how many frames were fed after the skipped start.
struct Latency {
    ms: Vec<f64>,
    fed: u32,
}

impl Latency {
    /// The `p` quantile (0..=1), nearest rank; NaN when no frame arrived.
    fn q(&self, p: f64) -> f64 {
        self.ms
            .get(((self.ms.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// Feeds `LAT_FRAMES` frames of `clip` at 30 fps through `hop` to an RTMP server in this
/// process and returns the hand-over → message-complete times of the frames after `LAT_SKIP`.
fn latency(rt: &tokio::runtime::Runtime, clip: &Path, hop: Hop) -> Latency {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (arr_tx, arr_rx) = std_mpsc::channel();
    let receiver = std::thread::spawn(move || rtmp_receiver(listener, arr_tx));
    let url = format!("rtmp://127.0.0.1:{port}/live/hop");
    let (tx, rx) = mpsc::channel(SINK_QUEUE);
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let sink = match hop {
        Hop::Native => rt.spawn(rtmp::run(
            RtmpTarget::parse(&url).expect("target"),
            RtmpOptions {
                framerate: Some(30.0),
                bitrate_kbps: Some(4000),
                ..RtmpOptions::default()
            },
            rx,
            ev_tx,
            cancel.clone(),
        )),
        Hop::Adapter => {
            let spec = AdapterSpec::new(
                "ffmpeg",
                vec![script().display().to_string(), "{url}".into()],
                Framing::RawAnnexB,
                Ready::OnPublishingEvent,
            );
            rt.spawn(adapter::run(
                spec,
                vec![("url".into(), url.clone()), ("fps".into(), "30".into())],
                AdapterOptions::default(),
                rx,
                ev_tx,
                cancel.clone(),
            ))
        }
    };
    // Events only matter to a session; here they are drained so the sink never waits on them.
    rt.spawn(async move { while ev_rx.recv().await.is_some() {} });

    let mut source = FileSource::open(&clip.display().to_string()).expect("file source");
    let rung = Rung {
        width: 1920,
        height: 1080,
        fps: 30,
        bitrate_kbps: 4000,
    };
    let mut handed = Vec::with_capacity(LAT_FRAMES as usize);
    let t0 = Instant::now();
    for i in 0..LAT_FRAMES {
        let due = t0 + FRAME * i;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let Ok(SourceFrame::Encoded { data, keyframe }) = source.next_frame(&rung) else {
            panic!("the clip is H.264");
        };
        let au = tag_frame(&data, i);
        let frame = EncodedFrame {
            data: au.into(),
            pts: FRAME * i,
            keyframe,
            codec: Codec::H264,
        };
        handed.push(Instant::now());
        // Like the pipeline: never block on a slow sink.
        let _ = tx.try_send(frame);
    }
    // Let the last frames through, then stop the sink (ffmpeg flushes on EOF).
    std::thread::sleep(Duration::from_millis(500));
    cancel.cancel();
    drop(tx);
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), sink).await;
    });
    let _ = receiver.join();
    let mut ms: Vec<f64> = arr_rx
        .try_iter()
        .filter(|(i, _)| *i >= LAT_SKIP && *i < LAT_FRAMES - 1)
        .map(|(i, at)| {
            at.saturating_duration_since(handed[i as usize])
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Latency {
        ms,
        fed: LAT_FRAMES - 1 - LAT_SKIP,
    }
}

/// CPU rounds first (daemons, nginx), then the in-process latency runs, then the tables.
fn main() {
    let dir = peers::TestDir::new("bench-adapter");
    let clip = make_clip(dir.path());
    let broker = Mosquitto::start();
    let nginx = Nginx::start(peers::free_port());

    // 1. CPU per stream, native and adapter windows alternating.
    let mut native = Vec::new();
    let mut via = Vec::new();
    let mut tree_names = Vec::new();
    let mut cloud = CloudClient::connect(broker.port(), GW);
    for round in 0..CPU_ROUNDS {
        native.push(cpu_round(
            &mut cloud,
            &broker,
            &nginx,
            &clip,
            dir.path(),
            false,
            round,
        ));
        let r = cpu_round(&mut cloud, &broker, &nginx, &clip, dir.path(), true, round);
        tree_names = r.2.clone();
        via.push(r);
    }

    // 2. Latency, sinks in this process.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let lat: Vec<(Hop, Latency)> = [Hop::Native, Hop::Adapter]
        .into_iter()
        .map(|hop| (hop, latency(&rt, &clip, hop)))
        .collect();

    println!();
    println!(
        "adapter hop benchmark: 1080p30 4 Mbit/s H.264 clip passed through, RTMP on 127.0.0.1"
    );
    println!();
    println!(
        "CPU per stream, {} s windows after {} s of pushing (one core = 100 %), native and adapter alternating",
        CPU_WINDOW.as_secs(),
        WARM_UP.as_secs()
    );
    println!("| round | native: daemon | adapter: daemon | adapter: processes below it ({}) | adapter: total | ratio adapter / native |", tree_names.join(", "));
    println!("|---|---|---|---|---|---|");
    let (mut sum_n, mut sum_d, mut sum_k) = (0.0, 0.0, 0.0);
    for (round, (n, a)) in native.iter().zip(&via).enumerate() {
        sum_n += n.0 + n.1;
        sum_d += a.0;
        sum_k += a.1;
        println!(
            "| {} | {:.2} % | {:.2} % | {:.2} % | {:.2} % | {:.2} |",
            round + 1,
            (n.0 + n.1) * 100.0,
            a.0 * 100.0,
            a.1 * 100.0,
            (a.0 + a.1) * 100.0,
            (a.0 + a.1) / (n.0 + n.1).max(1e-9)
        );
    }
    let rounds = CPU_ROUNDS as f64;
    println!(
        "| mean | {:.2} % | {:.2} % | {:.2} % | {:.2} % | {:.2} |",
        sum_n / rounds * 100.0,
        sum_d / rounds * 100.0,
        sum_k / rounds * 100.0,
        (sum_d + sum_k) / rounds * 100.0,
        (sum_d + sum_k) / sum_n.max(1e-9)
    );
    println!();
    println!(
        "Latency, frame handed to the sink → its video message complete at an RTMP server in this process, frames {LAT_SKIP}..{} at 30 fps",
        LAT_FRAMES - 1
    );
    println!("| path | frames received / fed | p50 | p99 | max | p50 added vs native | p99 added vs native |");
    println!("|---|---|---|---|---|---|---|");
    let (n50, n99) = (lat[0].1.q(0.5), lat[0].1.q(0.99));
    for (hop, l) in &lat {
        println!(
            "| {} | {} / {} | {:.2} ms | {:.2} ms | {:.2} ms | {:+.2} ms | {:+.2} ms |",
            hop.label(),
            l.ms.len(),
            l.fed,
            l.q(0.5),
            l.q(0.99),
            l.q(1.0),
            l.q(0.5) - n50,
            l.q(0.99) - n99
        );
    }
}
