//! The health endpoint of a running daemon: `/healthz`, `/metrics` with a live session's
//! counters, and `dockcast status` reading them.

mod peers;

use peers::daemon::{Daemon, DaemonConfig};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::NginxRtmp;
use serde_json::json;
use std::io::{Read, Write};
use std::time::Duration;

fn get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_show_the_live_session_and_status_reads_them() {
    let _serial = peers::exclusive();
    let nginx = NginxRtmp::start();
    let broker = Mosquitto::start();
    let port = peers::free_port();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.extra_toml = format!("[health]\nlisten = \"127.0.0.1:{port}\"\n");
    let vid = cfg.video_id();
    let mut cloud = CloudClient::connect(broker.port(), &cfg.gateway_sn);
    let daemon = Daemon::start(&cfg);
    cloud.wait_state("live_capacity", |_| true, Duration::from_secs(20));

    let (status, body) = get(port, "/healthz");
    assert!(status.contains("200"), "{status}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        health,
        json!({"status": "ok", "mqtt_connected": true, "sessions": 0})
    );

    let url = format!("rtmp://127.0.0.1:{}/live/metrics", nginx.rtmp_port());
    let (tid, _) = cloud.send_service(
        "live_start_push",
        json!({"url_type": 1, "url": url, "video_id": vid, "video_quality": 1}),
    );
    let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
    assert_eq!(reply["data"]["result"], 0, "{reply}");
    std::thread::sleep(Duration::from_secs(2));
    let (status, metrics) = get(port, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        sample(&metrics, "dockcast_sessions{phase=\"live\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "dockcast_mqtt_connected"),
        Some(1.0),
        "{metrics}"
    );
    let frames = sample(&metrics, "dockcast_frames_sent_total{").unwrap_or(0.0);
    assert!(
        (40.0..=80.0).contains(&frames),
        "~60 frames in 2 s, got {frames}\n{metrics}"
    );
    // A test pattern never fails: the input's health reads clean, and is there to be read.
    for healthy in [
        "dockcast_input_down{",
        "dockcast_bad_frames_total{",
        "dockcast_input_failures_total{",
        "dockcast_decode_errors_total{",
    ] {
        assert_eq!(sample(&metrics, healthy), Some(0.0), "{healthy}\n{metrics}");
    }
    let rung = peers::daemon::rung_for_quality(1);
    assert_eq!(
        sample(&metrics, "dockcast_bitrate_kbps{"),
        Some(f64::from(rung.bitrate_kbps)),
        "{metrics}"
    );

    let out = peers::daemon::daemon_command()
        .args(["status", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .expect("dockcast status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dockcast status failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\"sessions\":1") && text.contains("dockcast_frames_sent_total"),
        "{text}"
    );
    let (status, _) = get(port, "/nope");
    assert!(status.contains("404"), "{status}");
    drop(daemon);
}
