//! End to end over GB/T 28181: the cloud starts a push with url_type 3 over MQTT, the daemon
//! registers to a SIPp platform (digest checked by SIPp), the platform INVITEs and a GStreamer
//! `mpegpsdemux ! h264parse` pipeline decodes what arrives, then live_stop_push unregisters.

mod peers;

use peers::daemon::{Daemon, DaemonConfig};
use peers::gst::{Mode, PsReceiver};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::probe::probe_file;
use peers::sipp::{start_uac, PlatformUas};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SERVER_ID: &str = "34020000002000000001";
const DEVICE: &str = "34020000001320000001";
const CHANNEL: &str = "34020000001310000001";
const PASSWORD: &str = "12345678";
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

fn call(cloud: &mut CloudClient, method: &str, data: Value) -> Value {
    let (tid, _) = cloud.send_service(method, data);
    cloud.wait_reply(&tid, REPLY_TIMEOUT)
}

/// A SIPp platform, a broker, the cloud's client and the daemon (GB/T 28181 bound to
/// 127.0.0.1), once the daemon has announced its capacity; `url` is the push url for the
/// platform.
struct Rig {
    platform: PlatformUas,
    device_port: u16,
    _broker: Mosquitto,
    vid: String,
    cloud: CloudClient,
    daemon: Daemon,
    url: String,
}

impl Rig {
    fn start() -> Rig {
        let platform_port = peers::free_port();
        let device_port = peers::free_port();
        let platform = PlatformUas::start(platform_port);
        let broker = Mosquitto::start();
        let mut cfg = DaemonConfig::new(&broker.url());
        cfg.extra_toml = "[gb28181]\nbind_ip = \"127.0.0.1\"\n".to_string();
        let vid = cfg.video_id();
        let mut cloud = CloudClient::connect(broker.port(), &cfg.gateway_sn);
        let daemon = Daemon::start(&cfg);
        cloud.wait_state("live_capacity", |_| true, REPLY_TIMEOUT);
        let url = format!(
            "serverIP=127.0.0.1&serverPort={platform_port}&serverID={SERVER_ID}&agentID={DEVICE}\
             &agentPassword={PASSWORD}&localPort={device_port}&channel={CHANNEL}"
        );
        Rig {
            platform,
            device_port,
            _broker: broker,
            vid,
            cloud,
            daemon,
            url,
        }
    }
}

#[test]
fn gb28181_push_registers_streams_on_invite_and_unregisters() {
    let _serial = peers::exclusive();
    let Rig {
        platform,
        device_port,
        _broker,
        vid,
        mut cloud,
        mut daemon,
        url,
    } = Rig::start();

    let started = Instant::now();
    let reply = call(
        &mut cloud,
        "live_start_push",
        json!({"url_type": 3, "url": url, "video_id": vid, "video_quality": 2}),
    );
    assert_eq!(
        reply["data"]["result"],
        0,
        "{reply}\nplatform:\n{}\ndaemon:\n{}",
        platform.log(),
        daemon.log_tail(30)
    );
    println!(
        "GB28181 start (registered) answered after {:?}",
        started.elapsed()
    );

    // The platform plays the channel: INVITE, 5 s of media, BYE.
    let rx_port = peers::free_port();
    let mut gst = PsReceiver::start(Mode::Udp, rx_port);
    let device: SocketAddr = format!("127.0.0.1:{device_port}").parse().expect("addr");
    let rx = rx_port.to_string();
    let invited = Instant::now();
    let uac = start_uac(
        "invite_uac.xml",
        device,
        peers::free_port(),
        &[
            ("channel", CHANNEL),
            ("ssrc", "0100000001"),
            ("media_ip", "127.0.0.1"),
            ("media_port", &rx),
            ("proto", "RTP/AVP"),
            ("setup", ""),
        ],
    );
    // Lens and quality changes keep the same RTP session (no new INVITE is needed).
    std::thread::sleep(Duration::from_millis(1500));
    let lens = call(
        &mut cloud,
        "live_lens_change",
        json!({"video_id": vid, "video_type": "zoom"}),
    );
    assert_eq!(lens["data"]["result"], 0, "{lens}");
    let run = uac.wait(Duration::from_secs(20));
    assert!(
        run.status.success(),
        "SIPp INVITE scenario failed:\n{}\n{}",
        run.log,
        run.messages
    );
    let played = invited.elapsed().as_secs_f64();
    gst.stop();
    let p = probe_file(&gst.output());
    assert_eq!(p.codec, "h264", "{p:?}");
    let rung = peers::daemon::rung_for_quality(2);
    assert_eq!((p.width, p.height), (rung.width, rung.height), "{p:?}");
    // About 5 s of media at 30 fps between ACK and BYE.
    assert!(
        p.frames >= 120,
        "GStreamer decoded only {} frames in {played:.1} s",
        p.frames
    );

    let stop = call(&mut cloud, "live_stop_push", json!({ "video_id": vid }));
    assert_eq!(stop["data"]["result"], 0, "{stop}");
    assert!(
        platform.wait_log("Expires: 0", Duration::from_secs(10))
            || platform.messages().contains("Expires: 0"),
        "no unregister (Expires: 0) after stop:\n{}",
        platform.messages()
    );
    daemon.send_signal("TERM");
    let _ = daemon.wait_exit(Duration::from_secs(5));
    assert!(
        !daemon.logs().contains(PASSWORD),
        "agentPassword reached the logs"
    );
}

/// A GB/T 28181 push holds a SIP socket, a media socket and its registration timers: a
/// live view started and stopped many times a day must give them all back and unregister
/// each time.
#[test]
fn start_stop_cycles_leave_no_descriptors_or_threads_behind() {
    if peers::daemon::runner().is_some() {
        // Under an emulator /proc shows the emulator's descriptors, not the daemon's.
        return;
    }
    let _serial = peers::exclusive();
    let Rig {
        platform,
        device_port: _,
        _broker,
        vid,
        mut cloud,
        mut daemon,
        url,
    } = Rig::start();
    let mut cycle = |n: usize| {
        let start = json!({"url_type": 3, "url": url, "video_id": vid, "video_quality": 1});
        let reply = call(&mut cloud, "live_start_push", start);
        assert_eq!(
            reply["data"]["result"],
            0,
            "push {n}: {reply}\n{}",
            daemon.log_tail(30)
        );
        let stop = call(&mut cloud, "live_stop_push", json!({ "video_id": vid }));
        assert_eq!(stop["data"]["result"], 0, "push {n}: {stop}");
        let unregistered = peers::wait_until(Duration::from_secs(10), || {
            platform.log().matches("UNREGISTERED").count() >= n
        });
        assert!(
            unregistered,
            "push {n} did not unregister:\n{}",
            platform.log()
        );
    };
    cycle(1);
    // The first push may leave lazily made resources (the runtime's blocking threads); what
    // it leaves is the baseline the later ones must return to.
    let baseline = daemon.held_after_first_push();
    for n in 2..=6 {
        cycle(n);
    }
    daemon.assert_holds_no_more_than(&baseline, "after 5 more pushes");
}
