//! The adapter sink against real processes: board/adapters/ffmpeg-publish.sh publishing over SRT
//! into an `ffmpeg` listener and over RTMP into nginx-rtmp, judged by ffprobe; a crash (kill -9
//! of the adapter) healed by a restart; and the framed stdin read by an independent Python parser.
//! Needs ffmpeg (with libsrt, as Debian builds it), nginx + libnginx-mod-rtmp and python3.

mod peers;

use dockcast::media::encoder::H264Encoder;
use dockcast::media::frame::EncodedFrame;
use dockcast::media::quality::Rung;
use dockcast::sink::adapter::{run, AdapterOptions, AdapterSpec, Framing, Ready};
use dockcast::sink::SinkEvent;
use dockcast::source::pattern::{PatternSource, Style};
use dockcast::source::{SourceFrame, VideoSource};
use peers::nginx::Nginx;
use peers::probe::{probe, require, VideoProbe};
use peers::TestDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

const FPS: u32 = 30;

/// The two tests that pace frames against the wall clock run one at a time, so that they do not
/// compete for the two cores with each other's encoder and ffmpeg (an async lock: it is held
/// across awaits, and each test has its own runtime).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const FRAME: Duration = Duration::from_micros(33_333);

fn rung(width: u32, height: u32) -> Rung {
    Rung {
        width,
        height,
        fps: FPS,
        bitrate_kbps: 400,
    }
}

/// Encodes `n` frames of the test pattern in `style` at `r`, continuing the pts from `first`.
fn encode(enc: &mut H264Encoder, style: Style, r: Rung, first: u32, n: u32) -> Vec<EncodedFrame> {
    let mut source = PatternSource::new(style);
    let mut out = Vec::new();
    for i in first..first + n {
        let raw = match source.next_frame(&r).expect("pattern draws") {
            SourceFrame::Raw(raw) => raw,
            SourceFrame::Encoded { .. } => panic!("patterns are raw"),
        };
        let frame = enc
            .encode(raw, FRAME * i)
            .expect("encodes")
            .expect("no frame skipping at this bitrate");
        out.push(frame);
    }
    out
}

/// `n` frames at 320x240 with an IDR every `gop` frames.
fn clip(n: u32, gop: u32) -> Vec<EncodedFrame> {
    let mut enc = H264Encoder::new(rung(320, 240), gop).expect("encoder");
    encode(&mut enc, Style::Normal, rung(320, 240), 0, n)
}

fn adapter_script() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("board/adapters/ffmpeg-publish.sh");
    p.to_string_lossy().into_owned()
}

fn ffmpeg_spec(name: &str) -> AdapterSpec {
    let mut spec = AdapterSpec::new(
        name,
        vec![adapter_script(), "{url}".into()],
        Framing::RawAnnexB,
        Ready::OnPublishingEvent,
    );
    spec.backoff_initial = Duration::from_millis(100);
    spec.backoff_max = Duration::from_secs(1);
    spec
}

struct Sink {
    tx: mpsc::Sender<EncodedFrame>,
    events: mpsc::Receiver<SinkEvent>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

fn start(spec: AdapterSpec, fields: &[(&str, &str)]) -> Sink {
    let fields = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let (tx, rx) = mpsc::channel(8);
    let (ev_tx, events) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(
        spec,
        fields,
        AdapterOptions::default(),
        rx,
        ev_tx,
        cancel.clone(),
    ));
    Sink {
        tx,
        events,
        cancel,
        task,
    }
}

async fn next_event(rx: &mut mpsc::Receiver<SinkEvent>, within: Duration) -> SinkEvent {
    timeout(within, rx.recv())
        .await
        .expect("sink event did not arrive in time")
        .expect("sink ended without an event")
}

impl Sink {
    /// Cancels, expects `Stopped` within 10 s (events before it are returned) and the task's end.
    async fn stop(mut self) -> Vec<SinkEvent> {
        self.cancel.cancel();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match next_event(&mut self.events, left).await {
                SinkEvent::Stopped => break,
                other => seen.push(other),
            }
        }
        timeout(Duration::from_secs(5), self.task)
            .await
            .expect("sink returned")
            .expect("sink did not panic");
        seen
    }

    /// Waits (bounded) until the sink has taken every queued frame.
    async fn drained(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.tx.capacity() < self.tx.max_capacity() {
            assert!(Instant::now() < deadline, "sink stopped consuming frames");
            sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Sends frames at real-time pace (what a camera does); a live SRT uplink drops bursts.
async fn send_paced(tx: &mpsc::Sender<EncodedFrame>, frames: &[EncodedFrame]) {
    let start = Instant::now();
    for (i, f) in frames.iter().enumerate() {
        tokio::time::sleep_until(start + FRAME * i as u32).await;
        timeout(Duration::from_secs(1), tx.send(f.clone()))
            .await
            .expect("producer never blocks")
            .expect("sink alive");
    }
}

/// Pids of this test process's children whose command line contains every one of `needles`
/// (the adapter is spawned by the sink on some runtime thread, so every thread's list is read).
fn children_matching(needles: &[&str]) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in list
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if needles.iter().all(|n| cmdline.contains(n)) && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Polls `cond` every 50 ms without blocking the runtime; whether it held within `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Adapter stderr and the sink's own lines in the test output, for reading a failure.
fn logs() {
    use tracing_subscriber::prelude::*;
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::DEBUG)
        .finish()
        .with(
            tracing_subscriber::filter::Targets::new()
                .with_target("dockcast", tracing::Level::DEBUG),
        )
        .try_init();
}

/// A peer process that must not outlive a failing test (std's `Child` is not killed on drop).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn within_10_percent(got: u64, sent: u64) -> bool {
    got * 10 >= sent * 9 && got * 10 <= sent * 11
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_adapter_publishes_srt_that_ffprobe_reads() {
    let _serial = SERIAL.lock().await;
    logs();
    require("ffmpeg");
    let dir = TestDir::new("adapter-srt");
    let port = peers::free_port();
    let out = dir.path().join("received.ts");
    // The receiver: an SRT listener that copies what it gets into a file and exits when the
    // caller goes away.
    let mut receiver = KillOnDrop(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(format!("srt://127.0.0.1:{port}?mode=listener"))
            .args(["-c", "copy"])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ffmpeg listener"),
    );
    // Give the listener a moment to bind (SRT is UDP: nothing to poll for).
    sleep(Duration::from_millis(500)).await;

    let frames = clip(90, 30);
    let url = format!("srt://127.0.0.1:{port}?mode=caller");
    let spec = ffmpeg_spec("srt");
    let mut sink = start(spec, &[("url", &url)]);
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(5)).await,
        SinkEvent::KeyframeWanted
    );
    // ffmpeg reads some input before it opens the output, so frames flow before Publishing.
    send_paced(&sink.tx, &frames).await;
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(5)).await,
        SinkEvent::Publishing
    );
    sink.drained().await;
    let rest = sink.stop().await;
    assert!(rest.is_empty(), "unexpected events {rest:?}");

    let exited = eventually(Duration::from_secs(10), || {
        matches!(receiver.0.try_wait(), Ok(Some(_)))
    })
    .await;
    assert!(exited, "the SRT listener did not see the end of the stream");
    let p = probe(&out).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("srt: sent 90 frames, ffprobe read {p:?}");
    assert_eq!((p.codec.as_str(), p.width, p.height), ("h264", 320, 240));
    assert!(within_10_percent(p.frames, 90), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_adapter_killed_mid_stream_is_restarted_and_nginx_records_again() {
    let _serial = SERIAL.lock().await;
    logs();
    let nginx = Nginx::start(peers::free_port());
    let url = format!("rtmp://127.0.0.1:{}/live/cam1key", nginx.port());
    let rec = nginx.recording("cam1key");
    let frames = clip(60, 15);
    let mut sink = start(ffmpeg_spec("rtmp"), &[("url", &url)]);

    // Producer: the clip looped with a continuous clock at real-time pace, until told to stop
    // (at most 60 s).
    let producing = CancellationToken::new();
    let producer = {
        let producing = producing.clone();
        let tx = sink.tx.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            for i in 0..1800u32 {
                if producing.is_cancelled() {
                    break;
                }
                tokio::time::sleep_until(start + FRAME * i).await;
                let mut f = frames[i as usize % frames.len()].clone();
                f.pts = FRAME * i;
                if timeout(Duration::from_secs(1), tx.send(f)).await.is_err() {
                    panic!("producer blocked");
                }
            }
        })
    };

    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(5)).await,
        SinkEvent::KeyframeWanted
    );
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(10)).await,
        SinkEvent::Publishing
    );
    let before = probe_until(&rec, 45).await;
    let pids = children_matching(&["ffmpeg", "pipe:0"]);
    assert_eq!(pids.len(), 1, "one adapter process expected: {pids:?}");
    let first_pid = pids[0];
    assert!(peers::send_signal(first_pid, "KILL"));

    match next_event(&mut sink.events, Duration::from_secs(5)).await {
        SinkEvent::Reconnecting {
            attempt, reason, ..
        } => {
            assert_eq!(attempt, 1);
            assert!(reason.contains("signal: 9"), "{reason}");
            assert!(!reason.contains("cam1key"), "stream key leaked: {reason}");
        }
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(5)).await,
        SinkEvent::KeyframeWanted
    );
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(15)).await,
        SinkEvent::Publishing
    );
    let pids = children_matching(&["ffmpeg", "pipe:0"]);
    assert_eq!(pids.len(), 1, "exactly the new adapter expected: {pids:?}");
    assert_ne!(pids[0], first_pid);
    // The new publish truncates the recording: every frame found now came after the restart.
    let after = probe_until(&rec, 45).await;
    eprintln!("rtmp: before kill {before:?}, after restart {after:?}");
    assert_eq!((after.codec.as_str(), after.width), ("h264", 320));

    producing.cancel();
    timeout(Duration::from_secs(5), producer)
        .await
        .expect("producer returned")
        .expect("producer did not panic");
    let rest = sink.stop().await;
    assert!(rest.is_empty(), "unexpected events {rest:?}");
    assert!(
        eventually(Duration::from_secs(3), || children_matching(&[
            "ffmpeg", "pipe:0"
        ])
        .is_empty())
        .await,
        "adapter still running after Stopped"
    );
}

/// Polls ffprobe until the recording shows at least `frames` frames or 15 s pass.
async fn probe_until(path: &Path, frames: u64) -> VideoProbe {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = probe(path);
        match &last {
            Ok(p) if p.frames >= frames => return p.clone(),
            _ if Instant::now() >= deadline => panic!("recording never reached {frames}: {last:?}"),
            _ => sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test]
async fn an_adapter_that_does_not_exist_fails_the_start() {
    let mut spec = ffmpeg_spec("agora");
    spec.command = vec!["/opt/agora/bin/dockcast-agora-adapter".into()];
    let mut sink = start(spec, &[("token", "006secret-token-value")]);
    match next_event(&mut sink.events, Duration::from_secs(5)).await {
        SinkEvent::Failed { reason } => {
            assert!(reason.contains("adapter agora"), "{reason}");
            assert!(
                reason.contains("/opt/agora/bin/dockcast-agora-adapter"),
                "{reason}"
            );
            assert!(reason.contains("No such file or directory"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(sink.events.recv().await, None);
}

fn python_spec(report: &Path) -> AdapterSpec {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/adapter_echo.py");
    AdapterSpec::new(
        "echo",
        vec![
            "python3".into(),
            script.to_string_lossy().into_owned(),
            report.to_string_lossy().into_owned(),
        ],
        Framing::Framed,
        Ready::OnPublishingEvent,
    )
}

fn read_report(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

#[tokio::test]
async fn framed_stdin_is_what_the_docs_say_and_lens_and_quality_changes_keep_the_process() {
    let dir = TestDir::new("adapter-echo");
    let report: PathBuf = dir.path().join("report.json");
    // One session as the pipeline would feed it: 20 frames of the normal lens, a lens change
    // (another picture, forced IDR), then a quality change (new size: IDR with new SPS/PPS).
    let mut enc = H264Encoder::new(rung(320, 240), 300).expect("encoder");
    let mut frames = encode(&mut enc, Style::Normal, rung(320, 240), 0, 20);
    enc.force_keyframe();
    frames.extend(encode(&mut enc, Style::Zoom, rung(320, 240), 20, 20));
    enc.set_rung(rung(480, 270)).expect("quality change");
    frames.extend(encode(&mut enc, Style::Zoom, rung(480, 270), 40, 20));
    let keyframes: Vec<u64> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.keyframe)
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(keyframes, [0, 20, 40]);

    let mut sink = start(
        python_spec(&report),
        &[("channel", "ch-1"), ("token", "006tok+en/x")],
    );
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(5)).await,
        SinkEvent::KeyframeWanted
    );
    for f in &frames {
        timeout(Duration::from_secs(1), sink.tx.send(f.clone()))
            .await
            .expect("producer never blocks")
            .expect("sink alive");
    }
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(10)).await,
        SinkEvent::Publishing
    );
    sink.drained().await;
    let all_read = eventually(Duration::from_secs(10), || {
        read_report(&report).is_some_and(|r| r["records"] == frames.len())
    })
    .await;
    let rest = sink.stop().await;
    assert!(all_read, "report: {:?}", read_report(&report));
    assert!(rest.is_empty(), "no restart, no drop expected: {rest:?}");

    let r = read_report(&report).expect("report");
    assert_eq!(r["eof_clean"], true, "stdin closed on a record boundary");
    let pts: Vec<u64> = frames.iter().map(|f| f.pts.as_micros() as u64).collect();
    assert_eq!(r["pts_us"], serde_json::json!(pts));
    assert_eq!(r["keyframes"], serde_json::json!(keyframes));
    assert!(r["codecs"]
        .as_array()
        .is_some_and(|c| c.iter().all(|c| c == 1)));
    let bytes: usize = frames.iter().map(|f| f.data.len()).sum();
    let checksum = frames
        .iter()
        .flat_map(|f| f.data.iter())
        .fold(0u32, |acc, b| acc.wrapping_add(u32::from(*b)));
    assert_eq!(r["payload_bytes"], bytes);
    assert_eq!(r["checksum"], checksum);
    // Each payload is Annex-B; keyframes start with SPS (7) or an AUD (9).
    assert!(r["first_nal_types"]
        .as_array()
        .is_some_and(|t| t.iter().all(|t| t.as_i64().is_some_and(|t| t > 0))));

    // One process for the whole session, and it got the url fields in its environment.
    let pids = std::fs::read_to_string(dir.path().join("report.json.pids")).expect("pids");
    let lines: Vec<serde_json::Value> = pids
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 1, "adapter started more than once: {pids}");
    assert_eq!(lines[0]["env"]["DOCKCAST_CHANNEL"], "ch-1");
    assert_eq!(lines[0]["env"]["DOCKCAST_TOKEN"], "006tok+en/x");
    assert_eq!(lines[0]["env"]["DOCKCAST_FRAMING"], "framed");
}
