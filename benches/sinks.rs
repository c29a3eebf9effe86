//! CPU per stream and time to first frame for each native sink, fed by the same H.264 clip
//! passed through (so the figures are the sinks' own cost), side by side with ffmpeg pushing
//! the same clip to RTMP with `-c copy`. The receivers are the test peers: nginx-rtmp, the
//! aiortc WHIP endpoint, and SIPp + GStreamer as a GB/T 28181 platform.
//! Run with `cargo bench --bench sinks`.

mod common;
#[path = "../tests/peers/mod.rs"]
mod peers;

use common::cpu_share;
use peers::gst::{Mode, PsReceiver};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::{has_keyframe, Nginx};
use peers::sipp::{start_uac, PlatformUas};
use peers::whip::{WhipServer, WhipServerOptions};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GW: &str = "DOCKCAST0000001";
const VID: &str = "DOCKCAST0000001/165-0-7/normal-0";
const MEASURE: Duration = Duration::from_secs(8);

fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("{what} within 20 s");
}

fn daemon(broker: &Mosquitto, clip: &Path, dir: &Path) -> Child {
    let config = dir.join("dockcast.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"{}\"\n[gb28181]\nbind_ip = \"127.0.0.1\"\n",
            broker.url()
        ),
    )
    .expect("config");
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

fn start(cloud: &mut CloudClient, url_type: u8, url: &str) -> Instant {
    let t0 = Instant::now();
    let (tid, _) = cloud.send_service(
        "live_start_push",
        json!({"url_type": url_type, "url": url, "video_id": VID, "video_quality": 0}),
    );
    let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
    assert_eq!(reply["data"]["result"], 0, "{reply}");
    t0
}

fn stop(cloud: &mut CloudClient) {
    let (tid, _) = cloud.send_service("live_stop_push", json!({ "video_id": VID }));
    let _ = cloud.wait_reply(&tid, Duration::from_secs(20));
}

fn kill(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn main() {
    let dir = peers::TestDir::new("bench-sinks");
    let clip = dir.path().join("clip.h264");
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
        ])
        .args([
            "-t",
            "20",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
        ])
        .args([
            "-b:v",
            "1500k",
            "-g",
            "30",
            "-bsf:v",
            "h264_mp4toannexb",
            "-f",
            "h264",
        ])
        .arg(&clip)
        .status()
        .expect("ffmpeg");
    assert!(made.success());
    let broker = Mosquitto::start();
    let nginx = Nginx::start(peers::free_port());
    let mut cloud = CloudClient::connect(broker.port(), GW);
    let mut rows: Vec<(String, f64, Option<f64>)> = Vec::new();

    // RTMP.
    let d = daemon(&broker, &clip, dir.path());
    cloud.wait_state("live_capacity", |_| true, Duration::from_secs(20));
    let rec = nginx.recording("bench-rtmp");
    let url = format!("rtmp://127.0.0.1:{}/live/bench-rtmp", nginx.port());
    let t0 = start(&mut cloud, 1, &url);
    let first = wait_for("a keyframe at nginx", || has_keyframe(&rec)) - t0;
    rows.push((
        "RTMP (nginx-rtmp)".into(),
        cpu_share(d.id(), MEASURE.as_secs()),
        Some(first.as_secs_f64()),
    ));
    stop(&mut cloud);
    kill(d);

    // WHIP.
    let whip = WhipServer::start(WhipServerOptions::default());
    cloud.skip_received_states();
    let d = daemon(&broker, &clip, dir.path());
    cloud.wait_state("live_capacity", |_| true, Duration::from_secs(20));
    let sent_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let _ = start(&mut cloud, 4, &whip.url("bench-whip"));
    let mut first_at = None;
    wait_for("a frame decoded by aiortc", || {
        first_at = whip
            .sessions()
            .first()
            .and_then(|s| s["first_frame_at"].as_f64());
        first_at.is_some()
    });
    let first = first_at.map(|t| t - sent_at);
    rows.push((
        "WHIP (aiortc, decoded)".into(),
        cpu_share(d.id(), MEASURE.as_secs()),
        first,
    ));
    stop(&mut cloud);
    kill(d);

    // GB/T 28181: registration on start, media when the platform INVITEs.
    let platform_port = peers::free_port();
    let device_port = peers::free_port();
    let _platform = PlatformUas::start(platform_port);
    cloud.skip_received_states();
    let d = daemon(&broker, &clip, dir.path());
    cloud.wait_state("live_capacity", |_| true, Duration::from_secs(20));
    let url = format!(
        "serverIP=127.0.0.1&serverPort={platform_port}&serverID=34020000002000000001\
         &agentID=34020000001320000001&agentPassword=12345678&localPort={device_port}\
         &channel=34020000001310000001"
    );
    let _ = start(&mut cloud, 3, &url);
    let rx = peers::free_port();
    let gst = PsReceiver::start(Mode::Udp, rx);
    let invite = Instant::now();
    let uac = start_uac(
        "invite_uac.xml",
        format!("127.0.0.1:{device_port}").parse().expect("addr"),
        peers::free_port(),
        &[
            ("channel", "34020000001310000001"),
            ("ssrc", "0100000001"),
            ("media_ip", "127.0.0.1"),
            ("media_port", &rx.to_string()),
            ("proto", "RTP/AVP"),
            ("setup", ""),
        ],
    );
    let first = wait_for("PS data demuxed by GStreamer", || gst.output_len() > 0) - invite;
    rows.push((
        "GB28181 (SIPp + GStreamer PS)".into(),
        cpu_share(d.id(), MEASURE.as_secs()),
        Some(first.as_secs_f64()),
    ));
    let _ = uac.wait(Duration::from_secs(15));
    stop(&mut cloud);
    kill(d);

    // The ffmpeg equivalent of the RTMP push of the same clip.
    let mut ff = Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-i"])
        .arg(&clip)
        .args(["-c", "copy", "-f", "flv"])
        .arg(format!(
            "rtmp://127.0.0.1:{}/live/bench-ffmpeg",
            nginx.port()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    let t0 = Instant::now();
    let first = wait_for("ffmpeg's keyframe at nginx", || {
        has_keyframe(&nginx.recording("bench-ffmpeg"))
    }) - t0;
    let ffmpeg_cpu = cpu_share(ff.id(), MEASURE.as_secs());
    let _ = ff.kill();
    let _ = ff.wait();

    println!("sink benchmark: 1280x720 30 fps H.264 clip passed through, CPU over {MEASURE:?}");
    println!(
        "{:<32} {:>10} {:>10} {:>22}",
        "sink", "CPU", "vs ffmpeg", "start → first frame"
    );
    for (name, cpu, first) in &rows {
        let first = first.map_or("-".to_string(), |s| format!("{:.0} ms", s * 1000.0));
        println!(
            "{name:<32} {:>9.1}% {:>10.2} {first:>22}",
            cpu * 100.0,
            cpu / ffmpeg_cpu
        );
    }
    println!(
        "{:<32} {:>9.1}% {:>10} {:>22}",
        "ffmpeg -re -c copy -f flv",
        ffmpeg_cpu * 100.0,
        "1.00",
        format!("{:.0} ms", first.as_secs_f64() * 1000.0)
    );
    println!("(GB28181: from the INVITE; the start itself is answered once registered)");
    let _: Option<Value> = None;
}
