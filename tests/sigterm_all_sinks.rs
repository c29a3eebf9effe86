//! SIGTERM with an RTMP, a WHIP and a GB/T 28181 session live at once: the daemon exits 0
//! within 5 s and every peer saw the proper goodbye — nginx-rtmp a deleteStream before the
//! disconnect (an unpublish, not a dropped socket), the WHIP server a DELETE, the GB platform
//! an unregister (Expires: 0).

mod peers;

use peers::daemon::{Daemon, DaemonConfig};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::NginxRtmp;
use peers::sipp::PlatformUas;
use peers::whip::{WhipServer, WhipServerOptions};
use serde_json::json;
use std::time::{Duration, Instant};

const REPLY: Duration = Duration::from_secs(20);

fn start(cloud: &mut CloudClient, url_type: u8, url: &str, vid: &str, daemon: &Daemon) {
    let (tid, _) = cloud.send_service(
        "live_start_push",
        json!({"url_type": url_type, "url": url, "video_id": vid, "video_quality": 1}),
    );
    let reply = cloud.wait_reply(&tid, REPLY);
    assert_eq!(
        reply["data"]["result"],
        0,
        "url_type {url_type}: {reply}\n{}",
        daemon.log_tail(20)
    );
}

#[test]
fn sigterm_closes_rtmp_whip_and_gb28181_properly() {
    let _serial = peers::exclusive();
    let nginx = NginxRtmp::start();
    let whip = WhipServer::start(WhipServerOptions::default());
    let (platform_port, device_port) = (peers::free_port(), peers::free_port());
    let platform = PlatformUas::start(platform_port);
    let broker = Mosquitto::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.max_streams = 3;
    // A second device with two more cameras, so that three videos can stream at once.
    cfg.extra_toml = "[gb28181]\nbind_ip = \"127.0.0.1\"\n\n[[device]]\nsn = \"DOCKCAST0000002\"\n\
        [[device.camera]]\nindex = \"39-0-7\"\n[[device.camera.video]]\nindex = \"normal-0\"\nsources = { normal = \"pattern\" }\n\
        [[device.camera]]\nindex = \"53-0-0\"\n[[device.camera.video]]\nindex = \"normal-0\"\nsources = { normal = \"pattern\" }\n"
        .to_string();
    let mut cloud = CloudClient::connect(broker.port(), &cfg.gateway_sn);
    let mut daemon = Daemon::start(&cfg);
    cloud.wait_state("live_capacity", |_| true, REPLY);

    let rtmp_url = format!("rtmp://127.0.0.1:{}/live/term", nginx.rtmp_port());
    start(&mut cloud, 1, &rtmp_url, &cfg.video_id(), &daemon);
    start(
        &mut cloud,
        4,
        &whip.url("term"),
        "DOCKCAST0000002/39-0-7/normal-0",
        &daemon,
    );
    let gb = format!(
        "serverIP=127.0.0.1&serverPort={platform_port}&serverID=34020000002000000001\
         &agentID=34020000001320000001&agentPassword=12345678&localPort={device_port}\
         &channel=34020000001310000001"
    );
    start(
        &mut cloud,
        3,
        &gb,
        "DOCKCAST0000002/53-0-0/normal-0",
        &daemon,
    );
    std::thread::sleep(Duration::from_secs(2));

    let t0 = Instant::now();
    assert!(daemon.send_signal("TERM"));
    let status = daemon.wait_exit(Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?} after {took:?}\n{}",
        daemon.log_tail(30)
    );
    println!("SIGTERM with three sessions: exited after {took:?}");

    // Follow the publishing connection (`*N` in nginx's log; others are readiness probes).
    let log = nginx.error_log();
    let conn = log
        .lines()
        .find(|l| l.contains("publish: name='term'"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with('*')))
        .expect("nginx logged the publish")
        .to_string();
    let deleted = log.find(&format!("{conn} deleteStream"));
    let disconnected = log.find(&format!("{conn} disconnect"));
    assert!(
        deleted.is_some() && deleted < disconnected,
        "nginx saw no deleteStream from {conn} before its disconnect:\n{log}"
    );
    let sessions = whip.sessions();
    assert_eq!(
        sessions.first().map(|s| s["state"].clone()),
        Some(json!("deleted")),
        "{sessions:?}"
    );
    assert!(
        platform.wait_log("Expires: 0", Duration::from_secs(2))
            || platform.messages().contains("Expires: 0"),
        "no unregister:\n{}",
        platform.messages()
    );
}
