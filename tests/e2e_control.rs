//! End-to-end acceptance tests of the control plane and the first media path.
//!
//! Each test starts its own mosquitto (the cloud's broker), nginx-rtmp recording every publish
//! (the media server), a cloud-side MQTT client that speaks the DJI Cloud API wire format from
//! plain JSON, and the `dockcast` binary. What the daemon did is judged from what those peers
//! received: the replies and state messages on the broker, and ffprobe's reading of nginx's
//! recordings. Every wait is bounded.

mod peers;

use peers::daemon::{rung_for_quality, runner, Daemon, DaemonConfig};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::NginxRtmp;
use peers::probe::probe_file;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

/// The DJI demo cloud waits 20 s for a services reply before it retries.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a state push may lag behind the event it reports.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Every rung of the test ladder is 30 fps.
const FPS: f64 = 30.0;
/// How long the media tests push before stopping.
const PUSH_FOR: Duration = Duration::from_secs(3);

const ERR_NO_CAMERA: i64 = 513002;
const ERR_ALREADY_STARTED: i64 = 513003;
const ERR_NOT_LIVE: i64 = 513011;
const ERR_BAD_PARAMETERS: i64 = 513014;
const ERR_UNSUPPORTED: i64 = 513004;
const ERR_URL_TYPE: i64 = 513013;

/// One test's peers. Fields drop in order: the daemon first, the broker last, the lock after
/// everything.
struct Rig {
    daemon: Daemon,
    cloud: CloudClient,
    nginx: Option<NginxRtmp>,
    broker: Mosquitto,
    cfg: DaemonConfig,
    _serial: MutexGuard<'static, ()>,
}

impl Rig {
    /// Broker, nginx-rtmp (when `media`), cloud client, daemon with the default test config;
    /// returns once the daemon has published its `live_capacity`.
    fn start(media: bool) -> Rig {
        let serial = peers::exclusive();
        let broker = Mosquitto::start();
        let cfg = DaemonConfig::new(&broker.url());
        Self::assemble(serial, broker, cfg, None, media)
    }

    fn assemble(
        serial: MutexGuard<'static, ()>,
        broker: Mosquitto,
        cfg: DaemonConfig,
        cloud_credentials: Option<(&str, &str)>,
        media: bool,
    ) -> Rig {
        let nginx = media.then(NginxRtmp::start);
        let cloud = CloudClient::connect_with(broker.port(), &cfg.gateway_sn, cloud_credentials);
        let daemon = Daemon::start(&cfg);
        let mut rig = Rig {
            daemon,
            cloud,
            nginx,
            broker,
            cfg,
            _serial: serial,
        };
        let got = wait_capacity(&mut rig.cloud, &mut rig.daemon);
        assert!(
            got.is_some(),
            "no live_capacity (waited up to 20 s); daemon {}; log tail:\n{}",
            rig.daemon.state(),
            rig.daemon.log_tail(40)
        );
        rig
    }

    fn video_id(&self) -> String {
        self.cfg.video_id()
    }

    fn nginx(&self) -> &NginxRtmp {
        self.nginx.as_ref().expect("this rig has no nginx")
    }

    fn rtmp_url(&self, stream: &str) -> String {
        format!(
            "rtmp://127.0.0.1:{}/live/{stream}",
            self.nginx().rtmp_port()
        )
    }

    fn record_dir(&self) -> PathBuf {
        self.nginx().record_dir().to_path_buf()
    }

    /// Sends a service and returns its reply (after checking that it echoes tid, bid and
    /// method) and when the reply arrived.
    fn call(&mut self, method: &str, data: Value) -> (Value, Instant) {
        let (tid, bid) = self.cloud.send_service(method, data);
        let reply = self.cloud.wait_reply(&tid, REPLY_TIMEOUT);
        let at = Instant::now();
        check_envelope(&reply, &tid, &bid, method, &self.cfg.gateway_sn);
        (reply, at)
    }

    /// `call` that also requires `result == 0`.
    fn call_ok(&mut self, method: &str, data: Value) -> Instant {
        let (reply, at) = self.call(method, data);
        assert_eq!(
            result(&reply),
            0,
            "{method} failed: {reply}\ndaemon log tail:\n{}",
            self.daemon.log_tail(40)
        );
        at
    }

    fn start_push(&mut self, url: &str, quality: u8) -> Instant {
        let vid = self.video_id();
        self.call_ok("live_start_push", start_data(url, &vid, quality))
    }

    fn stop_push(&mut self) -> Instant {
        let vid = self.video_id();
        self.call_ok("live_stop_push", json!({ "video_id": vid }))
    }

    /// Waits for a `live_status` whose entry for our video satisfies `pred`; returns the entry.
    fn wait_status(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let vid = self.video_id();
        let got = self.cloud.try_wait_state_message(
            "live_status",
            |s| status_entry(s, &vid).is_some_and(&pred),
            STATE_TIMEOUT,
        );
        match got {
            Some(m) => status_entry(&m.data()["live_status"], &vid)
                .cloned()
                .expect("matched entry"),
            None => panic!(
                "no live_status with {what} for {vid} within {STATE_TIMEOUT:?}; daemon log tail:\n{}",
                self.daemon.log_tail(40)
            ),
        }
    }

    fn wait_live(&mut self) -> Value {
        self.wait_status("status 1", |e| e["status"] == 1)
    }

    /// Waits for a `live_status` in which our video is no longer live (status 0 or no entry).
    fn wait_not_live(&mut self) {
        let vid = self.video_id();
        let got = self.cloud.try_wait_state_message(
            "live_status",
            |s| status_entry(s, &vid).is_none_or(|e| e["status"] == 0),
            STATE_TIMEOUT,
        );
        assert!(
            got.is_some(),
            "no live_status showing {vid} stopped within {STATE_TIMEOUT:?}; daemon log tail:\n{}",
            self.daemon.log_tail(40)
        );
    }
}

/// Waits up to 20 s for a `live_capacity` state message, giving up early if the daemon exits.
fn wait_capacity(cloud: &mut CloudClient, daemon: &mut Daemon) -> Option<peers::mqtt::Received> {
    for _ in 0..40 {
        let got =
            cloud.try_wait_state_message("live_capacity", |_| true, Duration::from_millis(500));
        if got.is_some() || !daemon.is_running() {
            return got;
        }
    }
    None
}

fn start_data(url: &str, video_id: &str, quality: u8) -> Value {
    json!({ "url_type": 1, "url": url, "video_id": video_id, "video_quality": quality })
}

/// The reply rules of the DJI Cloud API: same tid, bid and method as the request, an integer
/// result, a millisecond timestamp and the gateway's serial.
fn check_envelope(reply: &Value, tid: &str, bid: &str, method: &str, gateway: &str) {
    assert_eq!(reply["tid"], tid, "tid not echoed: {reply}");
    assert_eq!(reply["bid"], bid, "bid not echoed: {reply}");
    assert_eq!(reply["method"], method, "method not echoed: {reply}");
    assert!(
        reply["data"]["result"].is_i64(),
        "data.result is not an integer: {reply}"
    );
    assert!(
        reply["timestamp"].is_u64(),
        "timestamp is not an integer: {reply}"
    );
    assert_eq!(
        reply["gateway"], gateway,
        "gateway missing or wrong: {reply}"
    );
}

fn result(reply: &Value) -> i64 {
    reply["data"]["result"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer data.result in {reply}"))
}

/// The entry for `video_id` in a `live_status` array.
fn status_entry<'a>(live_status: &'a Value, video_id: &str) -> Option<&'a Value> {
    live_status
        .as_array()?
        .iter()
        .find(|e| e["video_id"] == video_id)
}

/// Every `.flv` file nginx recorded in `dir`.
fn recordings(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "flv"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Recordings of `stream`: `<stream>.flv` (record_unique off) or `<stream>-<time>.flv` (on).
fn recordings_of(dir: &Path, stream: &str) -> Vec<PathBuf> {
    recordings(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            name == stream
                || name
                    .strip_prefix(stream)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

/// The one recording of `stream`, once nginx has finished writing it (size unchanged for
/// 500 ms; at most 10 s). Exactly one file means exactly one publish.
fn single_recording(dir: &Path, stream: &str) -> PathBuf {
    let files = recordings_of(dir, stream);
    assert_eq!(
        files.len(),
        1,
        "expected exactly one recording of {stream} in {} (one publish), found {files:?}",
        dir.display()
    );
    let file = files.into_iter().next().expect("one file");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut last = size(&file);
    let mut stable_since = Instant::now();
    let settled = peers::wait_until(Duration::from_secs(10), || {
        let now = size(&file);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        now > 0 && stable_since.elapsed() >= Duration::from_millis(500)
    });
    assert!(
        settled,
        "recording {} is empty or still growing after 10 s",
        file.display()
    );
    file
}

/// Frames pushed during `secs` at 30 fps must be within ±`tolerance` of what was recorded.
fn assert_frames_cover(frames: u64, secs: f64, tolerance: f64, what: &str) {
    let expected = FPS * secs;
    let got = frames as f64;
    assert!(
        (got - expected).abs() <= tolerance * expected,
        "{what}: recorded {frames} frames, expected {expected:.0} ±{:.0}% ({secs:.2} s at {FPS} fps)",
        tolerance * 100.0
    );
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[test]
fn publishes_capacity_on_connect() {
    let _serial = peers::exclusive();
    let broker = Mosquitto::start();
    let cfg = DaemonConfig::new(&broker.url());
    let gw = cfg.gateway_sn.clone();
    let mut cloud = CloudClient::connect(broker.port(), &gw);
    let mut daemon = Daemon::start(&cfg);

    let msg = wait_capacity(&mut cloud, &mut daemon).unwrap_or_else(|| {
        panic!(
            "no live_capacity (waited up to 20 s); daemon {}; log tail:\n{}",
            daemon.state(),
            daemon.log_tail(40)
        )
    });
    assert_eq!(msg.topic, format!("thing/product/{gw}/state"));
    let data = msg.data().as_object().expect("data is an object");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        vec!["live_capacity"],
        "live_capacity must be alone in its state message: {}",
        msg.json
    );
    assert!(msg.json["tid"].is_string(), "no tid: {}", msg.json);
    assert!(msg.json["bid"].is_string(), "no bid: {}", msg.json);
    assert!(msg.json["timestamp"].is_u64(), "no timestamp: {}", msg.json);

    let cap = &data["live_capacity"];
    let devices = cap["device_list"].as_array().expect("device_list array");
    assert_eq!(devices.len(), 1, "one configured device: {cap}");
    let dev = &devices[0];
    assert_eq!(dev["sn"], gw.as_str());
    let cameras = dev["camera_list"].as_array().expect("camera_list array");
    assert_eq!(cameras.len(), 1, "one configured camera: {cap}");
    assert_eq!(cameras[0]["camera_index"], "165-0-7");
    let videos = cameras[0]["video_list"]
        .as_array()
        .expect("video_list array");
    assert_eq!(videos.len(), 1, "one configured video: {cap}");
    assert_eq!(videos[0]["video_index"], "normal-0");
    assert_eq!(videos[0]["video_type"], "normal");
    // The order of the lens list carries no meaning in the protocol; its content does.
    let mut lenses: Vec<&str> = videos[0]["switchable_video_types"]
        .as_array()
        .unwrap_or_else(|| panic!("switchable_video_types is not an array: {cap}"))
        .iter()
        .map(|v| v.as_str().unwrap_or("<not a string>"))
        .collect();
    lenses.sort_unstable();
    assert_eq!(lenses, ["ir", "normal", "wide", "zoom"], "{cap}");
    for (level, node) in [("gateway", cap), ("device", dev), ("camera", &cameras[0])] {
        let avail = node["available_video_number"].as_u64();
        let coexist = node["coexist_video_number_max"].as_u64();
        assert!(
            avail.is_some_and(|n| n >= 1),
            "{level} available_video_number: {node}"
        );
        assert!(
            coexist.is_some_and(|n| n >= 1 && n <= u64::from(cfg.max_streams)),
            "{level} coexist_video_number_max must be 1..={}: {node}",
            cfg.max_streams
        );
    }

    // Published retained: a cloud that subscribes later still gets it, flagged as retained.
    let mut late = CloudClient::connect(broker.port(), &gw);
    let again = late.wait_state_message("live_capacity", |_| true, Duration::from_secs(5));
    assert!(again.retain, "live_capacity was not published retained");
    assert_eq!(again.data()["live_capacity"], *cap);
    assert!(
        daemon.is_running(),
        "daemon exited:\n{}",
        daemon.log_tail(40)
    );
}

#[test]
fn start_push_records_h264_then_stop() {
    let mut rig = Rig::start(true);
    let stream = "e2e-start-stop";
    let url = rig.rtmp_url(stream);
    let vid = rig.video_id();

    let started = rig.start_push(&url, 2);
    let entry = rig.wait_live();
    assert_eq!(entry["video_quality"], 2, "{entry}");
    assert_eq!(entry["video_type"], "normal", "{entry}");

    sleep_until(started + PUSH_FOR);
    let stopped = rig.stop_push();
    rig.wait_not_live();

    let file = single_recording(&rig.record_dir(), stream);
    let p = probe_file(&file);
    assert_eq!(p.codec, "h264", "{p:?}");
    let rung = rung_for_quality(2);
    assert_eq!(
        (p.width, p.height),
        (rung.width, rung.height),
        "resolution of quality 2 for {vid}: {p:?}"
    );
    let secs = (stopped - started).as_secs_f64();
    assert_frames_cover(p.frames, secs, 0.10, "start → stop");
}

#[test]
fn lens_and_quality_changes_keep_one_recording() {
    let mut rig = Rig::start(true);
    let stream = "e2e-lens-quality";
    let url = rig.rtmp_url(stream);
    let vid = rig.video_id();

    let started = rig.start_push(&url, 2);
    rig.wait_live();

    // The demo cloud's form: video_id and video_type.
    rig.call_ok(
        "live_lens_change",
        json!({ "video_id": vid, "video_type": "zoom" }),
    );
    rig.wait_status("video_type zoom", |e| {
        e["status"] == 1 && e["video_type"] == "zoom"
    });
    std::thread::sleep(Duration::from_millis(700));

    // The DJI docs' form: video_type only, for the one live switchable stream.
    rig.call_ok("live_lens_change", json!({ "video_type": "ir" }));
    rig.wait_status("video_type ir", |e| {
        e["status"] == 1 && e["video_type"] == "ir"
    });
    std::thread::sleep(Duration::from_millis(700));

    rig.call_ok(
        "live_set_quality",
        json!({ "video_id": vid, "video_quality": 4 }),
    );
    rig.wait_status("video_quality 4", |e| {
        e["status"] == 1 && e["video_quality"] == 4 && e["video_type"] == "ir"
    });
    std::thread::sleep(Duration::from_millis(1000));

    let stopped = rig.stop_push();
    rig.wait_not_live();

    let all = recordings(&rig.record_dir());
    assert_eq!(
        all.len(),
        1,
        "lens and quality changes must not republish (one recording expected): {all:?}"
    );
    let file = single_recording(&rig.record_dir(), stream);
    let p = probe_file(&file);
    assert_eq!(p.codec, "h264", "{p:?}");
    // The recording begins with the session's first picture size: a republish at the quality
    // change would have started a recording at the new size.
    let rung = rung_for_quality(2);
    assert_eq!(
        (p.width, p.height),
        (rung.width, rung.height),
        "the recording does not start at quality 2's size: {p:?}"
    );
    // A reconnect that truncated the recording would lose the frames before it. Checked where
    // the daemon runs natively: under qemu-user (the aarch64 job) the quality-4 rung, 1280x720,
    // encodes at about 20 fps (BENCHMARKS.md), so the last second holds fewer frames by design.
    if runner().is_none() {
        let secs = (stopped - started).as_secs_f64();
        let expected = FPS * secs;
        assert!(
            p.frames as f64 >= 0.8 * expected,
            "recording has {} frames, expected about {expected:.0} over {secs:.2} s: {p:?}",
            p.frames
        );
    }
}

/// A bad request and what must come back.
enum Expect {
    /// No usable tid: nothing to reply to (the daemon logs it and moves on).
    NoReply,
    /// A reply with this tid and a non-zero result (`Some(code)`: exactly that code).
    Error(Value, Option<i64>),
}

fn envelope(tid: &Value, method: &str, data: Option<Value>) -> Vec<u8> {
    let mut m = json!({
        "tid": tid,
        "bid": uuid::Uuid::new_v4().to_string(),
        "timestamp": peers::mqtt::now_ms(),
        "method": method,
    });
    if let Some(d) = data {
        m["data"] = d;
    }
    m.to_string().into_bytes()
}

fn fresh_tid() -> Value {
    Value::String(uuid::Uuid::new_v4().to_string())
}

#[test]
fn malformed_payloads_get_error_replies_and_daemon_survives() {
    let mut rig = Rig::start(true);
    let vid = rig.video_id();
    let gw = rig.cfg.gateway_sn.clone();
    let good_url = rig.rtmp_url("e2e-after-malformed");
    let no_key_url = format!("rtmp://127.0.0.1:{}/live", rig.nginx().rtmp_port());
    let start = |url: &str, video_id: &str, quality: Value| json!({ "url_type": 1, "url": url, "video_id": video_id, "video_quality": quality });

    let mut nested = json!({ "video_id": vid });
    for _ in 0..64 {
        nested = json!({ "d": nested });
    }
    let huge_url = format!("rtmp://127.0.0.1:1935/live/{}", "a".repeat(1024 * 1024));

    // The list has 21 entries: the twenty kinds of bad input plus a tid-less valid-looking
    // request, which must not be mistaken for one with a tid.
    let mut cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("not JSON", b"{not json".to_vec(), Expect::NoReply),
        ("JSON array", b"[1,2,3]".to_vec(), Expect::NoReply),
        ("JSON number", b"42".to_vec(), Expect::NoReply),
        ("empty object", b"{}".to_vec(), Expect::NoReply),
        (
            "missing tid",
            json!({
                "bid": uuid::Uuid::new_v4().to_string(),
                "method": "live_start_push",
                "data": start(&good_url, &vid, json!(2)),
            })
            .to_string()
            .into_bytes(),
            Expect::NoReply,
        ),
    ];
    let mut with_tid =
        |label: &'static str, tid: Value, method: &str, data: Option<Value>, code: Option<i64>| {
            let bytes = envelope(&tid, method, data);
            cases.push((label, bytes, Expect::Error(tid, code)));
        };
    with_tid(
        "tid as a number",
        json!(12345),
        "live_stop_push",
        Some(json!({ "video_id": vid })),
        None,
    );
    with_tid(
        "unknown method",
        fresh_tid(),
        "live_teleport",
        Some(json!({})),
        None,
    );
    with_tid(
        "start without data",
        fresh_tid(),
        "live_start_push",
        None,
        None,
    );
    with_tid(
        "url_type 7",
        fresh_tid(),
        "live_start_push",
        Some(json!({ "url_type": 7, "url": good_url, "video_id": vid, "video_quality": 2 })),
        None,
    );
    with_tid(
        "url_type 1 with an ftp url",
        fresh_tid(),
        "live_start_push",
        Some(start("ftp://x", &vid, json!(2))),
        None,
    );
    with_tid(
        "rtmp url without a stream key",
        fresh_tid(),
        "live_start_push",
        Some(start(&no_key_url, &vid, json!(2))),
        None,
    );
    with_tid(
        "video_quality 9",
        fresh_tid(),
        "live_start_push",
        Some(start(&good_url, &vid, json!(9))),
        None,
    );
    with_tid(
        "video_quality \"high\"",
        fresh_tid(),
        "live_start_push",
        Some(start(&good_url, &vid, json!("high"))),
        None,
    );
    with_tid(
        "video_id with two parts",
        fresh_tid(),
        "live_start_push",
        Some(start(&good_url, &format!("{gw}/165-0-7"), json!(2))),
        None,
    );
    with_tid(
        "camera not in capacity",
        fresh_tid(),
        "live_start_push",
        Some(start(&good_url, &format!("{gw}/39-0-7/normal-0"), json!(2))),
        Some(ERR_NO_CAMERA),
    );
    with_tid(
        "lens `infrared`",
        fresh_tid(),
        "live_lens_change",
        Some(json!({ "video_id": vid, "video_type": "infrared" })),
        None,
    );
    with_tid(
        "stop on an idle video",
        fresh_tid(),
        "live_stop_push",
        Some(json!({ "video_id": vid })),
        Some(ERR_NOT_LIVE),
    );
    with_tid(
        "quality on an idle video",
        fresh_tid(),
        "live_set_quality",
        Some(json!({ "video_id": vid, "video_quality": 3 })),
        Some(ERR_NOT_LIVE),
    );
    with_tid(
        "camera_position 5",
        fresh_tid(),
        "live_camera_change",
        Some(json!({ "video_id": vid, "camera_position": 5 })),
        None,
    );
    with_tid(
        "1 MB url",
        fresh_tid(),
        "live_start_push",
        Some(start(&huge_url, &vid, json!(2))),
        None,
    );
    with_tid(
        "64-level nested data",
        fresh_tid(),
        "live_start_push",
        Some(nested),
        None,
    );
    // Framing a C or Node publisher adds (a NUL after the document), a number no f64 holds,
    // and a tid too long to echo within the link's packet limit (the reply would cost the
    // connection): the first two are answered, the third is dropped with the link kept.
    let mut nul = envelope(&fresh_tid(), "live_teleport", Some(json!({})));
    let nul_tid = serde_json::from_slice::<Value>(&nul).unwrap()["tid"].clone();
    nul.push(0);
    cases.push((
        "NUL after the document",
        nul,
        Expect::Error(nul_tid, Some(ERR_UNSUPPORTED)),
    ));
    let far_tid = fresh_tid();
    let far = format!(
        r#"{{"tid":{far_tid},"bid":"b","method":"live_stop_push","data":{{"video_id":"{vid}","x":1e400}}}}"#
    );
    cases.push((
        "a number beyond f64",
        far.into_bytes(),
        Expect::Error(far_tid, Some(ERR_BAD_PARAMETERS)),
    ));
    // The request fits the packet limit; a reply echoing its tid would not.
    let long_tid = "t".repeat(4 * 1024 * 1024 - 100);
    cases.push((
        "4 MiB tid",
        json!({ "tid": long_tid, "method": "x" })
            .to_string()
            .into_bytes(),
        Expect::NoReply,
    ));
    assert_eq!(cases.len(), 24);

    for (_, bytes, _) in &cases {
        rig.cloud.send_raw(bytes.clone());
    }

    let mut failures = Vec::new();
    for (label, _, expect) in &cases {
        let Expect::Error(tid, code) = expect else {
            continue;
        };
        match rig.cloud.try_wait_reply_with_tid(tid, REPLY_TIMEOUT) {
            None => failures.push(format!("{label}: no reply with tid {tid}")),
            Some(reply) => {
                let r = reply["data"]["result"].as_i64();
                match (r, code) {
                    (None, _) => failures.push(format!("{label}: no integer result: {reply}")),
                    (Some(0), _) => failures.push(format!("{label}: accepted (result 0): {reply}")),
                    (Some(r), Some(c)) if r != *c => {
                        failures.push(format!("{label}: result {r}, expected {c}: {reply}"))
                    }
                    _ => {}
                }
            }
        }
    }
    // Nothing bad may have been accepted, tid or not.
    for m in rig.cloud.received() {
        if m.topic.ends_with("/services_reply") && m.data()["result"] == 0 {
            failures.push(format!("a bad request got result 0: {}", m.json));
        }
    }
    assert!(
        failures.is_empty(),
        "bad requests not answered as they should be:\n  {}\ndaemon log tail:\n{}",
        failures.join("\n  "),
        rig.daemon.log_tail(60)
    );

    assert!(
        rig.daemon.is_running(),
        "daemon died on bad input:\n{}",
        rig.daemon.log_tail(60)
    );
    assert!(
        !rig.daemon.logs().contains("MQTT link down"),
        "a bad request cost the broker connection:\n{}",
        rig.daemon.log_tail(60)
    );
    rig.start_push(&good_url, 2);
    rig.wait_live();
    rig.stop_push();
    assert!(rig.daemon.is_running(), "{}", rig.daemon.log_tail(40));
}

#[test]
fn retried_start_echoes_new_tid() {
    let mut rig = Rig::start(true);
    let stream = "e2e-retried";
    let url = rig.rtmp_url(stream);
    let vid = rig.video_id();

    // The demo cloud re-sends a start with a fresh tid when a reply is late; the retry may
    // arrive while the first start is still being carried out.
    let (tid1, bid1) = rig
        .cloud
        .send_service("live_start_push", start_data(&url, &vid, 2));
    let (tid2, bid2) = rig
        .cloud
        .send_service("live_start_push", start_data(&url, &vid, 2));
    let r1 = rig.cloud.wait_reply(&tid1, REPLY_TIMEOUT);
    let r2 = rig.cloud.wait_reply(&tid2, REPLY_TIMEOUT);
    let gw = rig.cfg.gateway_sn.clone();
    check_envelope(&r1, &tid1, &bid1, "live_start_push", &gw);
    check_envelope(&r2, &tid2, &bid2, "live_start_push", &gw);
    assert_eq!(result(&r1), 0, "first start: {r1}");
    // Either answer is allowed for the retry: 0 (idempotent) or 513003 (already started).
    // Which one the daemon gives is printed here; record it in this comment once seen.
    let second = result(&r2);
    eprintln!("retried live_start_push answered with result {second}");
    assert!(
        second == 0 || second == ERR_ALREADY_STARTED,
        "retried start: {r2}"
    );

    rig.wait_live();
    std::thread::sleep(Duration::from_secs(1));
    rig.stop_push();
    rig.wait_not_live();
    // Both starts together made one session and one publish.
    single_recording(&rig.record_dir(), stream);
}

#[test]
fn second_start_different_url_is_rejected() {
    let mut rig = Rig::start(true);
    let first = "e2e-first-url";
    let second = "e2e-second-url";
    let url1 = rig.rtmp_url(first);
    let url2 = rig.rtmp_url(second);
    let vid = rig.video_id();

    rig.start_push(&url1, 2);
    rig.wait_live();
    let (reply, _) = rig.call("live_start_push", start_data(&url2, &vid, 2));
    assert_eq!(result(&reply), ERR_ALREADY_STARTED, "{reply}");

    // The running stream is untouched: no state says it stopped, nothing reached the second url.
    let stopped = rig.cloud.try_wait_state_message(
        "live_status",
        |s| status_entry(s, &vid).is_none_or(|e| e["status"] != 1),
        Duration::from_secs(1),
    );
    assert!(stopped.is_none(), "the first stream stopped: {stopped:?}");
    rig.stop_push();
    rig.wait_not_live();
    single_recording(&rig.record_dir(), first);
    assert!(
        recordings_of(&rig.record_dir(), second).is_empty(),
        "something was published to the rejected url"
    );
}

#[test]
fn unsupported_url_types_get_protocol_error() {
    let mut rig = Rig::start(false);
    let vid = rig.video_id();
    let gw = rig.cfg.gateway_sn.clone();

    let agora = format!(
        "channel={gw}_165-0-7&sn={gw}&token=006dca67721582a48768ec4d817b7b25a86IADk%2Fcm%2Fdv%2BHY6qT%2FAKM6y7TcUe4lXNvZpycH7vUMAlM6pFALUKF2zyCIgA82pQE8cCoYAQAAQDxwKhgAgDxwKhgAwDxwKhgBADxwKhg&uid=50000"
    );
    let (reply, _) = rig.call(
        "live_start_push",
        json!({ "url_type": 0, "url": agora, "video_id": vid, "video_quality": 0 }),
    );
    assert_eq!(result(&reply), ERR_URL_TYPE, "Agora: {reply}");

    let (reply, _) = rig.call(
        "live_start_push",
        json!({
            "url_type": 2,
            "url": "userName=dji-cloud-api&password=123456&port=8554",
            "video_id": vid,
            "video_quality": 0,
        }),
    );
    assert_eq!(result(&reply), ERR_URL_TYPE, "RTSP: {reply}");

    // Nothing started: stopping the video finds nothing live.
    let (reply, _) = rig.call("live_stop_push", json!({ "video_id": vid }));
    assert_eq!(result(&reply), ERR_NOT_LIVE, "{reply}");
}

#[test]
fn broker_restart_republishes_capacity_and_stream_continues() {
    let mut rig = Rig::start(true);
    let stream = "e2e-broker-restart";
    let url = rig.rtmp_url(stream);
    let vid = rig.video_id();

    let started = rig.start_push(&url, 2);
    rig.wait_live();
    std::thread::sleep(Duration::from_secs(1));

    rig.broker.stop();
    rig.cloud.skip_received_states();
    std::thread::sleep(Duration::from_secs(3));
    rig.broker.start_again();
    rig.cloud.wait_connected(2, Duration::from_secs(20));

    // The restarted broker kept nothing (persistence off): this capacity is a fresh publish.
    let cap = rig
        .cloud
        .try_wait_state_message("live_capacity", |_| true, Duration::from_secs(30));
    assert!(
        cap.is_some(),
        "no live_capacity after the broker restart; daemon log tail:\n{}",
        rig.daemon.log_tail(60)
    );

    // Like the demo cloud, retry with a fresh tid if the first request is not answered (it may
    // race the daemon's re-subscription); one of the tries must be answered with 0.
    let mut answered = None;
    for _ in 0..3 {
        let (tid, bid) = rig.cloud.send_service(
            "live_set_quality",
            json!({ "video_id": vid, "video_quality": 3 }),
        );
        if let Some(reply) = rig.cloud.try_wait_reply(&tid, Duration::from_secs(5)) {
            check_envelope(&reply, &tid, &bid, "live_set_quality", &rig.cfg.gateway_sn);
            answered = Some(reply);
            break;
        }
    }
    let reply = answered.unwrap_or_else(|| {
        panic!(
            "live_set_quality not answered after the broker restart; daemon log tail:\n{}",
            rig.daemon.log_tail(60)
        )
    });
    assert_eq!(result(&reply), 0, "{reply}");
    std::thread::sleep(Duration::from_secs(1));

    let stopped = rig.stop_push();
    let file = single_recording(&rig.record_dir(), stream);
    let p = probe_file(&file);
    assert_eq!(p.codec, "h264", "{p:?}");
    let secs = (stopped - started).as_secs_f64();
    assert_frames_cover(
        p.frames,
        secs,
        0.10,
        "media across a broker outage (no gap expected)",
    );
}

/// Two docks configured with one client id (a copied config): the broker lets one connection
/// hold the id and drops the other as each connects. A connection dropped at once must not
/// earn a fresh backoff schedule, or the two take the id from each other every quarter second
/// for as long as the mistake stands, on the broker and on both uplinks. With the schedule
/// climbing, 8 s hold about a dozen connections between them; reconnecting every
/// 0–250 ms they would be about sixty.
#[test]
fn two_daemons_with_one_client_id_back_off_instead_of_taking_it_in_turns() {
    let _serial = peers::exclusive();
    let broker = Mosquitto::start();
    let cfg = DaemonConfig::new(&broker.url());
    let mut a = Daemon::start(&cfg);
    let mut b = Daemon::start(&cfg);
    std::thread::sleep(Duration::from_secs(8));
    let connects = |d: &Daemon| d.logs().matches("connected to the MQTT broker").count();
    let (na, nb) = (connects(&a), connects(&b));
    eprintln!("connections in 8 s: {na} + {nb}");
    assert!(
        a.is_running() && b.is_running(),
        "a daemon exited:\n{}\n{}",
        a.log_tail(20),
        b.log_tail(20)
    );
    assert!(
        na >= 1 && nb >= 1 && na + nb >= 3,
        "the daemons did not take the id from each other, so this shows nothing: {na} + {nb}\n{}",
        broker.logs()
    );
    assert!(
        na + nb <= 24,
        "{na} + {nb} connections in 8 s: the backoff starts over on every ConnAck\n{}",
        a.log_tail(20)
    );
}

#[test]
fn sigterm_stops_sessions_and_exits_zero() {
    let mut rig = Rig::start(true);
    let stream = "e2e-sigterm";
    let url = rig.rtmp_url(stream);

    let started = rig.start_push(&url, 2);
    rig.wait_live();
    sleep_until(started + Duration::from_secs(2));

    let signalled = Instant::now();
    assert!(rig.daemon.send_signal("TERM"), "kill -TERM failed");
    let status = rig.daemon.wait_exit(Duration::from_secs(5));
    let exited = Instant::now();
    let status = status.unwrap_or_else(|| {
        panic!(
            "daemon still running 5 s after SIGTERM:\n{}",
            rig.daemon.log_tail(40)
        )
    });
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        rig.daemon.log_tail(40)
    );
    // It told the cloud the stream ended before it went.
    rig.wait_not_live();

    let file = single_recording(&rig.record_dir(), stream);
    let p = probe_file(&file);
    assert_eq!(p.codec, "h264", "{p:?}");
    let at_least = 0.9 * FPS * (signalled - started).as_secs_f64();
    let at_most = 1.1 * FPS * (exited - started).as_secs_f64();
    assert!(
        (at_least..=at_most).contains(&(p.frames as f64)),
        "recording has {} frames, expected {at_least:.0}..={at_most:.0}: {p:?}",
        p.frames
    );
}

#[test]
fn secrets_never_logged() {
    const MQTT_USER: &str = "dock-e2e";
    const MQTT_PASS: &str = "mqtt-pw-Zq81xvT7";
    let serial = peers::exclusive();
    let broker = Mosquitto::with_password(MQTT_USER, MQTT_PASS);
    let cfg = DaemonConfig::new(&broker.url()).with_credentials(MQTT_USER, MQTT_PASS);
    let mut rig = Rig::assemble(serial, broker, cfg, Some((MQTT_USER, MQTT_PASS)), true);
    let vid = rig.video_id();
    let gw = rig.cfg.gateway_sn.clone();

    let url = rig.rtmp_url("sk-SECRET-123?token=tok-SECRET-456");
    rig.start_push(&url, 2);
    rig.wait_live();
    std::thread::sleep(Duration::from_secs(1));
    rig.stop_push();
    rig.wait_not_live();

    // Error paths log "why": a start for a camera that is not there, carrying a secret url.
    let (reply, _) = rig.call(
        "live_start_push",
        start_data(&url, &format!("{gw}/39-0-7/normal-0"), 2),
    );
    assert_ne!(result(&reply), 0, "{reply}");

    let logs = rig.daemon.logs();
    assert!(
        logs.contains("live_start_push") || logs.contains(&vid),
        "the daemon logged nothing about the requests at debug level, so this test proves nothing:\n{logs}"
    );
    let leaks: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("SECRET") || l.contains(MQTT_PASS))
        .collect();
    assert!(
        leaks.is_empty(),
        "secrets in the daemon's logs:\n{}",
        leaks.join("\n")
    );
}

/// VCL NAL units (slices) of an Annex-B byte stream, parsed here independently of the crate.
fn slices(annexb: &[u8]) -> Vec<Vec<u8>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= annexb.len() {
        if annexb[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(annexb.len(), |&n| n - 3);
        let mut nal = &annexb[s..end];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        if !nal.is_empty() && matches!(nal[0] & 0x1f, 1 | 5) {
            out.push(nal.to_vec());
        }
    }
    out
}

#[test]
fn file_source_passes_the_clip_through_unchanged_and_loops() {
    let serial = peers::exclusive();
    let broker = Mosquitto::start();
    let clip_dir = std::env::temp_dir().join(format!("dockcast-clip-{}", std::process::id()));
    std::fs::create_dir_all(&clip_dir).expect("clip dir");
    let clip = clip_dir.join("clip.h264");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x180:rate=30",
        ])
        .args(["-frames:v", "45", "-pix_fmt", "yuv420p", "-c:v", "libx264"])
        .args([
            "-profile:v",
            "baseline",
            "-g",
            "15",
            "-bsf:v",
            "h264_mp4toannexb",
            "-f",
            "h264",
        ])
        .arg(&clip)
        .status()
        .expect("run ffmpeg (scripts/setup-deps.sh installs it)");
    assert!(made.success(), "ffmpeg could not make the test clip");
    let input = slices(&std::fs::read(&clip).expect("read clip"));
    assert_eq!(input.len(), 45, "the clip has one slice per frame");

    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.source = Some(format!("file:{}", clip.display()));
    let mut rig = Rig::assemble(serial, broker, cfg, None, true);
    let stream = "e2e-file";
    let url = rig.rtmp_url(stream);
    // Quality 1 is the clip's own 320x180, so it passes through; another size would transcode.
    let started = rig.start_push(&url, 1);
    rig.wait_live();
    // Three seconds is two loops of the 1.5 s clip.
    sleep_until(started + PUSH_FOR);
    let stopped = rig.stop_push();
    rig.wait_not_live();

    let file = single_recording(&rig.record_dir(), stream);
    let p = probe_file(&file);
    assert_eq!(
        (p.codec.as_str(), p.width, p.height),
        ("h264", 320, 180),
        "{p:?}"
    );
    let annexb = clip_dir.join("recorded.h264");
    let copied = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&file)
        .args(["-c", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(&annexb)
        .status()
        .expect("run ffmpeg");
    assert!(copied.success());
    let recorded = slices(&std::fs::read(&annexb).expect("read recording"));
    assert!(
        recorded.len() > input.len(),
        "the clip should have looped: {} slices recorded",
        recorded.len()
    );
    // The sink starts on the first IDR after its publish, which may be any of the clip's.
    let offset = input
        .iter()
        .position(|s| *s == recorded[0])
        .expect("the first recorded slice is not a slice of the clip");
    assert_eq!(recorded[0][0] & 0x1f, 5, "the recording starts on an IDR");
    for (i, slice) in recorded.iter().enumerate() {
        let j = (offset + i) % input.len();
        assert!(
            *slice == input[j],
            "recorded slice {i} differs from clip slice {j}"
        );
    }
    // Passthrough cannot force an IDR: after its publish the sink waits for the clip's next
    // one, up to a GOP (15 frames) later, on top of the usual ±10 %.
    let expected = 30.0 * (stopped - started).as_secs_f64();
    let got = recorded.len() as f64;
    assert!(
        got >= (expected - 15.0) * 0.9 && got <= expected * 1.1,
        "file source start → stop: {got} frames, expected {expected:.0} minus at most one GOP"
    );
    let _ = std::fs::remove_dir_all(&clip_dir);
}

/// A cloud opens and closes a live view many times a day: every push must give back its
/// sockets, its source and its threads, or a box runs out of them after weeks.
#[test]
fn start_stop_cycles_leave_no_descriptors_or_threads_behind() {
    if peers::daemon::runner().is_some() {
        // Under an emulator /proc shows the emulator's descriptors, not the daemon's.
        return;
    }
    let mut rig = Rig::start(true);
    let url = rig.rtmp_url("e2e-cycles");
    let cycle = |rig: &mut Rig| {
        rig.start_push(&url, 2);
        rig.wait_live();
        rig.stop_push();
        rig.wait_not_live();
    };
    cycle(&mut rig);
    // The first push may leave lazily made resources (the runtime's blocking threads, a
    // resolver); what it leaves is the baseline the later ones must return to.
    let baseline = rig.daemon.held_after_first_push();
    for _ in 0..12 {
        cycle(&mut rig);
    }
    rig.daemon
        .assert_holds_no_more_than(&baseline, "after 12 more pushes");
}
