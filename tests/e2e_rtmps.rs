//! RTMPS through the daemon: `[rtmp] ca_file` trusts a private CA (made by the test), the
//! cloud's `rtmps://` url is published through nginx's `stream` TLS in front of nginx-rtmp, and
//! ffprobe reads the recording.

mod peers;

use peers::daemon::{Daemon, DaemonConfig};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::{Nginx, TestPki};
use peers::probe::probe_file;
use serde_json::json;
use std::time::Duration;

#[test]
fn rtmps_with_a_private_ca_from_the_config() {
    let _serial = peers::exclusive();
    let dir = peers::TestDir::new("e2e-rtmps");
    let pki = TestPki::create(dir.path(), "srv");
    let nginx = Nginx::start_tls(peers::free_port(), peers::free_port(), &pki.cert, &pki.key);
    let tls_port = nginx.tls_port().expect("tls port");
    let broker = Mosquitto::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.extra_toml = format!("[rtmp]\nca_file = \"{}\"\n", pki.ca.display());
    let vid = cfg.video_id();
    let mut cloud = CloudClient::connect(broker.port(), &cfg.gateway_sn);
    let daemon = Daemon::start(&cfg);
    cloud.wait_state("live_capacity", |_| true, Duration::from_secs(20));
    let url = format!("rtmps://127.0.0.1:{tls_port}/live/secure-SECRETKEY");
    let (tid, _) = cloud.send_service(
        "live_start_push",
        json!({"url_type": 1, "url": url, "video_id": vid, "video_quality": 1}),
    );
    let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
    assert_eq!(
        reply["data"]["result"],
        0,
        "{reply}\n{}",
        daemon.log_tail(20)
    );
    std::thread::sleep(Duration::from_secs(3));
    let (tid, _) = cloud.send_service("live_stop_push", json!({ "video_id": vid }));
    let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
    assert_eq!(reply["data"]["result"], 0, "{reply}");
    std::thread::sleep(Duration::from_millis(500));
    let p = probe_file(&nginx.recording("secure-SECRETKEY"));
    assert_eq!(p.codec, "h264", "{p:?}");
    assert!(p.frames >= 75, "{p:?}");
    assert!(
        !daemon.logs().contains("SECRETKEY"),
        "the stream key reached the logs"
    );
}
