//! WHIP glass-to-decode latency and time to first frame, with the encoder in the path.
//!
//! The daemon runs its test pattern with the capture-time stamp (`pattern?clock=1`) at 720p30
//! and pushes it over WHIP to the aiortc endpoint, which decodes every frame, reads the stamp
//! back from the picture and keeps `now - stamp`: that is glass-to-decode (draw → encode →
//! packetize → SRTP → loopback → jitter buffer → decode), independent of RTP timestamps. Two
//! references in the same run, read the same way: the same daemon and pattern pushed over RTMP
//! to nginx-rtmp and decoded by `ffmpeg` reading the stream back, and the in-process floor
//! (draw → openh264 encode → openh264 decode, no transport).
//! Run with `cargo bench --bench whip`.

#[path = "../tests/peers/mod.rs"]
mod peers;

use dockcast::media::encoder::H264Encoder;
use dockcast::media::quality::Rung;
use dockcast::source::pattern::{
    read_stamp, stamp_age_ms, unix_millis, PatternOptions, PatternSource, Style,
};
use dockcast::source::{SourceFrame, VideoSource};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::Nginx;
use peers::whip::{WhipServer, WhipServerOptions};
use serde_json::json;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GW: &str = "DOCKCAST0000001";
const VID: &str = "DOCKCAST0000001/165-0-7/normal-0";
/// `video_quality` 3 ("high") of the default ladder: 1280x720, 30 fps, 1500 kbit/s.
const QUALITY: u8 = 3;
const RUNG: Rung = Rung {
    width: 1280,
    height: 720,
    fps: 30,
    bitrate_kbps: 1500,
};
/// Starts measured for the time to first frame.
const STARTS: usize = 5;
/// Frames left out at the start of each latency run: the first second, while the receiver's
/// jitter buffer and decoder settle.
const WARMUP_FRAMES: usize = 30;
/// Samples kept per latency run.
const SAMPLES: usize = 300;
/// Longest a latency run may take before the benchmark gives up.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn wall_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn daemon(broker: &Mosquitto, dir: &Path) -> Child {
    let config = dir.join("dockcast.toml");
    std::fs::write(&config, format!("[mqtt]\nurl = \"{}\"\n", broker.url())).expect("config");
    let log = std::fs::File::create(dir.join("dockcast.log")).expect("log");
    Command::new(env!("CARGO_BIN_EXE_dockcast"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--source", "pattern?clock=1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn dockcast")
}

fn start(cloud: &mut CloudClient, url_type: u8, url: &str) {
    let (tid, _) = cloud.send_service(
        "live_start_push",
        json!({"url_type": url_type, "url": url, "video_id": VID, "video_quality": QUALITY}),
    );
    let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
    assert_eq!(reply["data"]["result"], 0, "{reply}");
}

fn stop(cloud: &mut CloudClient) {
    let (tid, _) = cloud.send_service("live_stop_push", json!({ "video_id": VID }));
    let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
    assert_eq!(reply["data"]["result"], 0, "{reply}");
}

/// The aiortc stats object of the session for `stream`, if it exists yet.
fn session(whip: &WhipServer, stream: &str) -> Option<serde_json::Value> {
    whip.sessions()
        .into_iter()
        .find(|s| s["stream"].as_str() == Some(stream))
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[i64], p: f64) -> i64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// p50, p95, p99 and max of the samples, sorted in place.
fn summary(samples: &mut [i64]) -> [i64; 4] {
    samples.sort_unstable();
    [
        pct(samples, 50.0),
        pct(samples, 95.0),
        pct(samples, 99.0),
        *samples.last().expect("samples"),
    ]
}

/// Time from publishing `live_start_push` to aiortc's first decoded frame, `STARTS` times.
fn whip_first_frames(cloud: &mut CloudClient, whip: &WhipServer) -> Vec<i64> {
    (0..STARTS)
        .map(|i| {
            let stream = format!("first-{i}");
            let sent_at = wall_secs();
            start(cloud, 4, &whip.url(&stream));
            let mut first_at = None;
            let ok = peers::wait_until(Duration::from_secs(20), || {
                first_at = session(whip, &stream).and_then(|s| s["first_frame_at"].as_f64());
                first_at.is_some()
            });
            assert!(
                ok,
                "no frame decoded by aiortc within 20 s:\n{}",
                whip.log()
            );
            stop(cloud);
            ((first_at.expect("first frame") - sent_at) * 1000.0).round() as i64
        })
        .collect()
}

/// Glass-to-decode ages of `SAMPLES` frames decoded by aiortc after the warm-up, and the
/// number of frames whose stamp could not be read.
fn whip_latency(cloud: &mut CloudClient, whip: &WhipServer) -> (Vec<i64>, u64) {
    let stream = "latency";
    start(cloud, 4, &whip.url(stream));
    let mut ages = Vec::new();
    let mut misses = 0;
    let ok = peers::wait_until(RUN_LIMIT, || {
        if let Some(s) = session(whip, stream) {
            ages = s["stamp_ages_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
                .unwrap_or_default();
            misses = s["stamp_misses"].as_u64().unwrap_or(0);
        }
        ages.len() >= WARMUP_FRAMES + SAMPLES
    });
    stop(cloud);
    assert!(
        ok,
        "only {} stamps read ({misses} unreadable) in {RUN_LIMIT:?}",
        ages.len()
    );
    (
        ages[WARMUP_FRAMES..WARMUP_FRAMES + SAMPLES].to_vec(),
        misses,
    )
}

/// The same pattern pushed over RTMP to nginx and decoded by ffmpeg playing it back with its
/// low-delay settings, one decoder thread, raw grey frames on a pipe read here.
fn rtmp_latency(cloud: &mut CloudClient, nginx: &Nginx) -> (Vec<i64>, u64) {
    let url = format!("rtmp://127.0.0.1:{}/live/latency", nginx.port());
    start(cloud, 1, &url);
    let mut ff = Command::new("ffmpeg")
        .args(["-v", "error", "-fflags", "nobuffer", "-flags", "low_delay"])
        .args(["-probesize", "32", "-analyzeduration", "0", "-threads", "1"])
        .args(["-i", &url, "-an", "-fps_mode", "passthrough"])
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ffmpeg");
    let mut out = ff.stdout.take().expect("ffmpeg stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let (w, h) = (RUNG.width as usize, RUNG.height as usize);
        let mut frame = vec![0u8; w * h];
        let mut misses = 0u64;
        let mut ages = Vec::new();
        while ages.len() < WARMUP_FRAMES + SAMPLES && out.read_exact(&mut frame).is_ok() {
            let now = unix_millis();
            match read_stamp(&frame, w, w) {
                Ok(t) => ages.push(stamp_age_ms(t, now)),
                Err(_) => misses += 1,
            }
        }
        let _ = tx.send((ages, misses));
    });
    let result = rx.recv_timeout(RUN_LIMIT);
    let _ = ff.kill();
    let _ = ff.wait();
    let _ = reader.join();
    stop(cloud);
    let (ages, misses) = result.expect("ffmpeg frames from nginx within the run limit");
    assert!(
        ages.len() >= WARMUP_FRAMES + SAMPLES,
        "ffmpeg gave only {} stamped frames ({misses} unreadable)",
        ages.len()
    );
    (ages[WARMUP_FRAMES..].to_vec(), misses)
}

/// The floor without any transport: the stamped pattern drawn, encoded by dockcast's encoder
/// and decoded by openh264 in this thread, paced at 30 fps like the pipeline.
fn encode_decode_floor() -> Vec<i64> {
    let mut src = PatternSource::with_options(Style::Normal, PatternOptions { clock: true });
    let mut enc = H264Encoder::new(RUNG, 30).expect("encoder");
    let mut dec = openh264::decoder::Decoder::new().expect("decoder");
    let interval = Duration::from_secs(1) / RUNG.fps;
    let t0 = Instant::now();
    let mut ages = Vec::new();
    for n in 0..(WARMUP_FRAMES + SAMPLES) as u32 {
        let due = t0 + interval * n;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let SourceFrame::Raw(picture) = src.next_frame(&RUNG).expect("pattern") else {
            unreachable!("the pattern is raw")
        };
        let Some(encoded) = enc.encode(picture, interval * n).expect("encode") else {
            continue;
        };
        if let Some(yuv) = dec.decode(&encoded.data).expect("decode") {
            use openh264::formats::YUVSource;
            let (w, _) = yuv.dimensions();
            let (stride, _, _) = yuv.strides();
            let now = unix_millis();
            let t = read_stamp(yuv.y(), w, stride).expect("stamp after encode and decode");
            ages.push(stamp_age_ms(t, now));
        }
    }
    ages.split_off(WARMUP_FRAMES.min(ages.len()))
}

fn main() {
    let dir = peers::TestDir::new("bench-whip");
    let broker = Mosquitto::start();
    let whip = WhipServer::start(WhipServerOptions {
        stamp: true,
        ..Default::default()
    });
    let nginx = Nginx::start(peers::free_port());
    let mut cloud = CloudClient::connect(broker.port(), GW);
    let mut d = daemon(&broker, dir.path());
    cloud.wait_state("live_capacity", |_| true, Duration::from_secs(20));

    let mut first = whip_first_frames(&mut cloud, &whip);
    let (mut whip_ages, whip_misses) = whip_latency(&mut cloud, &whip);
    let (mut rtmp_ages, rtmp_misses) = rtmp_latency(&mut cloud, &nginx);
    let _ = Command::new("kill")
        .args(["-TERM", &d.id().to_string()])
        .status();
    let _ = d.wait();
    let mut floor = encode_decode_floor();

    let [f50, _, _, fmax] = summary(&mut first);
    let w = summary(&mut whip_ages);
    let r = summary(&mut rtmp_ages);
    let e = summary(&mut floor);
    println!(
        "WHIP benchmark: dockcast test pattern with stamp, {}x{} {} fps {} kbit/s (video_quality {QUALITY})",
        RUNG.width, RUNG.height, RUNG.fps, RUNG.bitrate_kbps
    );
    println!(
        "live_start_push published → first frame decoded by aiortc ({STARTS} starts): p50 {f50} ms, max {fmax} ms"
    );
    println!("glass-to-decode, ms ({SAMPLES} frames each after {WARMUP_FRAMES} warm-up frames)");
    println!(
        "{:<44} {:>6} {:>6} {:>6} {:>6} {:>10}",
        "path", "p50", "p95", "p99", "max", "unreadable"
    );
    let row = |name: &str, s: [i64; 4], misses: String| {
        println!(
            "{name:<44} {:>6} {:>6} {:>6} {:>6} {misses:>10}",
            s[0], s[1], s[2], s[3]
        )
    };
    row("dockcast WHIP → aiortc decode", w, whip_misses.to_string());
    row(
        "dockcast RTMP → nginx → ffmpeg decode",
        r,
        rtmp_misses.to_string(),
    );
    row("draw → openh264 encode → decode (floor)", e, "0".into());
    let ratio = |a: i64, b: i64| a as f64 / (b.max(1)) as f64;
    println!(
        "p50 ratio WHIP / RTMP+ffmpeg: {:.2}; WHIP p50 minus floor p50: {} ms; goal WHIP p50 ≤ 150 ms: {}",
        ratio(w[0], r[0]),
        w[0] - e[0],
        if w[0] <= 150 { "met" } else { "not met" }
    );
}
