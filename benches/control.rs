//! Control-plane and first-push benchmark, side by side with ffmpeg in the same run.
//!
//! Against the same nginx-rtmp and mosquitto on 127.0.0.1 it measures:
//! - time from `live_start_push` (sent over MQTT) to the first keyframe written by nginx, and
//!   the same for the push a user would otherwise run (`ffmpeg -re -f lavfi -i testsrc2 …
//!   libx264 ultrafast/zerolatency … -f flv`), from process start to its first keyframe;
//! - reply latency of `live_set_quality`, `live_lens_change` and `live_stop_push`;
//! - CPU and RSS while pushing 720p30, dockcast (test pattern + openh264) against that ffmpeg.
//!
//! Run with `cargo bench --bench control` (release build). Every loop is bounded.

mod common;
#[path = "../tests/peers/mod.rs"]
mod peers;

use common::{cpu_secs, rss_kib};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::{has_keyframe, Nginx};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GW: &str = "DOCKCAST0000001";
const VID: &str = "DOCKCAST0000001/165-0-7/normal-0";
const CYCLES: usize = 10;
const SWITCHES: usize = 100;
const LOAD_SECS: u64 = 10;

fn wait_keyframe(path: &Path, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(20);
    while Instant::now() < deadline {
        if has_keyframe(path) {
            return since.elapsed();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no keyframe in {} within 20 s", path.display());
}

/// CPU share (of one core) and peak RSS of `pid` over `secs`, sampled every 100 ms.
fn load(pid: u32, secs: u64) -> (f64, u64) {
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    let mut peak = 0;
    for _ in 0..secs * 10 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss_kib(pid));
    }
    let cpu1 = cpu_secs(pid);
    ((cpu1 - cpu0) / t0.elapsed().as_secs_f64(), peak)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ffmpeg_push(url: &str) -> Child {
    Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            "2M",
            "-f",
            "flv",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg (scripts/setup-deps.sh installs it)")
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters nothing here.
    let broker = Mosquitto::start();
    let nginx = Nginx::start(peers::free_port());
    let dir = peers::TestDir::new("bench");
    let config = dir.path().join("dockcast.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"{}\"\n[gateway]\nsn = \"{GW}\"\n",
            broker.url()
        ),
    )
    .expect("write config");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_dockcast"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dockcast");
    let pid = daemon.id();
    let mut cloud = CloudClient::connect(broker.port(), GW);
    cloud.wait_state("live_capacity", |_| true, Duration::from_secs(20));
    let url = |stream: &str| format!("rtmp://127.0.0.1:{}/live/{stream}", nginx.port());
    let call = |cloud: &mut CloudClient, method: &str, data: serde_json::Value| {
        let t = Instant::now();
        let (tid, _) = cloud.send_service(method, data);
        let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
        assert_eq!(reply["data"]["result"], 0, "{method}: {reply}");
        t.elapsed()
    };

    // 1. Start to first keyframe, and stop latency, over several publishes.
    let (mut ours_first, mut ffmpeg_first, mut stops) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..CYCLES {
        let stream = format!("dock{i}");
        let t0 = Instant::now();
        let (tid, _) = cloud.send_service(
            "live_start_push",
            json!({"url_type": 1, "url": url(&stream), "video_id": VID, "video_quality": 2}),
        );
        ours_first.push(wait_keyframe(&nginx.recording(&stream), t0));
        let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
        assert_eq!(reply["data"]["result"], 0, "{reply}");
        stops.push(call(
            &mut cloud,
            "live_stop_push",
            json!({ "video_id": VID }),
        ));

        let stream = format!("ffmpeg{i}");
        let t0 = Instant::now();
        let child = ffmpeg_push(&url(&stream));
        ffmpeg_first.push(wait_keyframe(&nginx.recording(&stream), t0));
        stop(child);
    }

    // 2. Quality and lens reply latency during one publish.
    let _ = call(
        &mut cloud,
        "live_start_push",
        json!({"url_type": 1, "url": url("switch"), "video_id": VID, "video_quality": 2}),
    );
    let (mut quality, mut lens) = (Vec::new(), Vec::new());
    let lenses = ["wide", "zoom", "ir", "normal"];
    for i in 0..SWITCHES {
        let q = json!({"video_id": VID, "video_quality": 2 + (i % 2)});
        quality.push(call(&mut cloud, "live_set_quality", q));
        let l = json!({"video_id": VID, "video_type": lenses[i % 4]});
        lens.push(call(&mut cloud, "live_lens_change", l));
    }

    // 3. CPU and RSS while pushing 720p30: our session (quality 2 = 1280x720 30 fps) against
    // ffmpeg's libx264 push of the same size and rate.
    let (ours_cpu, ours_rss) = load(pid, LOAD_SECS);
    call(&mut cloud, "live_stop_push", json!({ "video_id": VID }));
    let child = ffmpeg_push(&url("ffmpeg-load"));
    std::thread::sleep(Duration::from_secs(1));
    let (ffmpeg_cpu, ffmpeg_rss) = load(child.id(), LOAD_SECS);
    stop(child);

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = daemon.wait();

    let p50 = |v: &mut Vec<Duration>| ms(percentile(v, 0.5));
    let p99 = |v: &mut Vec<Duration>| ms(percentile(v, 0.99));
    println!("dockcast control benchmark ({CYCLES} publishes each, {SWITCHES} switches, {LOAD_SECS} s load)");
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "", "dockcast", "ffmpeg", "ratio"
    );
    let (o, f) = (p50(&mut ours_first), p50(&mut ffmpeg_first));
    println!(
        "{:<44} {:>8.1}ms {:>8.1}ms {:>8.2}",
        "start -> first keyframe at nginx, p50",
        o,
        f,
        o / f
    );
    let (o, f) = (p99(&mut ours_first), p99(&mut ffmpeg_first));
    println!(
        "{:<44} {:>8.1}ms {:>8.1}ms {:>8.2}",
        "start -> first keyframe at nginx, max",
        o,
        f,
        o / f
    );
    println!(
        "{:<44} {:>8.1}ms",
        "live_set_quality reply, p50",
        p50(&mut quality)
    );
    println!(
        "{:<44} {:>8.1}ms",
        "live_set_quality reply, p99",
        p99(&mut quality)
    );
    println!(
        "{:<44} {:>8.1}ms",
        "live_lens_change reply, p50",
        p50(&mut lens)
    );
    println!(
        "{:<44} {:>8.1}ms",
        "live_lens_change reply, p99",
        p99(&mut lens)
    );
    println!(
        "{:<44} {:>8.1}ms",
        "live_stop_push reply, p50",
        p50(&mut stops)
    );
    println!(
        "{:<44} {:>8.1}ms",
        "live_stop_push reply, max",
        p99(&mut stops)
    );
    println!(
        "{:<44} {:>9.1}% {:>9.1}% {:>8.2}",
        "CPU while pushing 720p30 (one core = 100%)",
        ours_cpu * 100.0,
        ffmpeg_cpu * 100.0,
        ours_cpu / ffmpeg_cpu
    );
    println!(
        "{:<44} {:>8.1}MB {:>8.1}MB {:>8.2}",
        "peak RSS while pushing 720p30",
        ours_rss as f64 / 1024.0,
        ffmpeg_rss as f64 / 1024.0,
        ours_rss as f64 / ffmpeg_rss as f64
    );
}
