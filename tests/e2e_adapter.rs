//! End to end through adapter processes configured in `[adapters.*]`: the cloud's url_type
//! picks the adapter, the daemon starts it with the url's fields, feeds it, keeps the same
//! process across lens changes, and never logs the url's secrets.

mod peers;

use peers::daemon::{Daemon, DaemonConfig};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::NginxRtmp;
use peers::probe::probe_file;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

fn call(cloud: &mut CloudClient, method: &str, data: Value) -> Value {
    let (tid, _) = cloud.send_service(method, data);
    cloud.wait_reply(&tid, REPLY_TIMEOUT)
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn agora_url_goes_to_its_adapter_which_survives_a_lens_change() {
    let _serial = peers::exclusive();
    let dir = peers::TestDir::new("adapter");
    let report = dir.path().join("report.json");
    let broker = Mosquitto::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.extra_toml = format!(
        "[adapters.agora]\ncommand = [\"python3\", \"{}\", \"{}\"]\nurl_type = 0\nframing = \"framed\"\nready = \"publishing\"\n",
        repo("tests/peers/adapter_echo.py").display(),
        report.display()
    );
    let vid = cfg.video_id();
    let mut cloud = CloudClient::connect(broker.port(), &cfg.gateway_sn);
    let mut daemon = Daemon::start(&cfg);
    cloud.wait_state("live_capacity", |_| true, REPLY_TIMEOUT);

    let url = "channel=DOCK_165-0-7&sn=DOCKCAST0000001&token=006tok%2BSECRET%2F42&uid=50000";
    let start = call(
        &mut cloud,
        "live_start_push",
        json!({"url_type": 0, "url": url, "video_id": vid, "video_quality": 1}),
    );
    assert_eq!(
        start["data"]["result"],
        0,
        "{start}\n{}",
        daemon.log_tail(30)
    );
    std::thread::sleep(Duration::from_millis(1500));
    let lens = call(
        &mut cloud,
        "live_lens_change",
        json!({"video_id": vid, "video_type": "ir"}),
    );
    assert_eq!(lens["data"]["result"], 0, "{lens}");
    std::thread::sleep(Duration::from_millis(1500));
    let stop = call(&mut cloud, "live_stop_push", json!({ "video_id": vid }));
    assert_eq!(stop["data"]["result"], 0, "{stop}");

    let done = peers::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&report)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|r| r["eof_clean"] == true)
    });
    assert!(done, "the adapter did not see a clean end of input");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report"))
        .expect("report json");
    let records = r["records"].as_u64().unwrap_or(0);
    assert!(
        records >= 60,
        "only {records} records reached the adapter: {r}"
    );
    let keys = r["keyframes"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        keys >= 2,
        "the start and the lens change each begin with a keyframe: {r}"
    );
    // One process for the whole session, started with the url's fields.
    let pids = std::fs::read_to_string(dir.path().join("report.json.pids")).expect("pids");
    let lines: Vec<Value> = pids
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 1, "the adapter was restarted: {pids}");
    assert_eq!(
        lines[0]["env"]["DOCKCAST_CHANNEL"], "DOCK_165-0-7",
        "{pids}"
    );
    assert_eq!(
        lines[0]["env"]["DOCKCAST_TOKEN"], "006tok+SECRET/42",
        "{pids}"
    );

    daemon.send_signal("TERM");
    let _ = daemon.wait_exit(Duration::from_secs(5));
    assert!(
        !daemon.logs().contains("SECRET"),
        "the Agora token reached the logs"
    );
}

#[test]
fn rtmp_can_be_routed_through_the_ffmpeg_adapter() {
    let _serial = peers::exclusive();
    let nginx = NginxRtmp::start();
    let broker = Mosquitto::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.extra_toml = format!(
        "[adapters.ffmpeg]\ncommand = [\"{}\", \"{{url}}\"]\nurl_type = 1\nframing = \"annexb\"\n",
        repo("board/adapters/ffmpeg-publish.sh").display()
    );
    let vid = cfg.video_id();
    let mut cloud = CloudClient::connect(broker.port(), &cfg.gateway_sn);
    let daemon = Daemon::start(&cfg);
    cloud.wait_state("live_capacity", |_| true, REPLY_TIMEOUT);
    let url = format!("rtmp://127.0.0.1:{}/live/via-adapter", nginx.rtmp_port());
    let start = call(
        &mut cloud,
        "live_start_push",
        json!({"url_type": 1, "url": url, "video_id": vid, "video_quality": 1}),
    );
    assert_eq!(
        start["data"]["result"],
        0,
        "{start}\n{}",
        daemon.log_tail(30)
    );
    std::thread::sleep(Duration::from_secs(3));
    let stop = call(&mut cloud, "live_stop_push", json!({ "video_id": vid }));
    assert_eq!(stop["data"]["result"], 0, "{stop}");
    let recorded = peers::wait_until(Duration::from_secs(5), || {
        std::fs::read_dir(nginx.record_dir())
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    });
    assert!(recorded, "nginx recorded nothing");
    let file = std::fs::read_dir(nginx.record_dir())
        .expect("record dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("via-adapter"))
        .expect("a recording of via-adapter");
    // ffmpeg closes the file when its stdin ends; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let p = probe_file(&file);
    let rung = peers::daemon::rung_for_quality(1);
    assert_eq!(
        (p.codec.as_str(), p.width, p.height),
        ("h264", rung.width, rung.height),
        "{p:?}"
    );
    assert!(p.frames >= 60, "{p:?}");
}
