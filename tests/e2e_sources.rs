//! End-to-end tests of the real inputs: the payload feed over a unix socket and TCP, lens
//! switches between feeds, and a quality change on an encoded source, each driven over MQTT
//! into nginx-rtmp and judged from the recording with ffmpeg/ffprobe.
//!
//! The payload app is played by a thread of the test that writes an ffmpeg-made Annex-B clip
//! in chunks of up to 60 KB (the size of a Payload-SDK liveview callback buffer), cut at
//! arbitrary points inside NAL units, paced at the clip's frame rate. Every wait is bounded.

mod peers;

use peers::daemon::{Daemon, DaemonConfig};
use peers::mosquitto::Mosquitto;
use peers::mqtt::CloudClient;
use peers::nginx::NginxRtmp;
use peers::probe::{packets, probe_file};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
const STATE_TIMEOUT: Duration = Duration::from_secs(10);
const FRAME: Duration = Duration::from_nanos(33_333_333);
/// The UUID of the private SEI the fake payload app inserts (any UUID: all are stripped).
const DJI_UUID: [u8; 16] = *b"DJI-PRIVATE-SEI!";

struct Rig {
    daemon: Daemon,
    cloud: CloudClient,
    nginx: NginxRtmp,
    _broker: Mosquitto,
    cfg: DaemonConfig,
    _serial: MutexGuard<'static, ()>,
}

impl Rig {
    fn start(serial: MutexGuard<'static, ()>, broker: Mosquitto, cfg: DaemonConfig) -> Rig {
        let nginx = NginxRtmp::start();
        let mut cloud = CloudClient::connect_with(broker.port(), &cfg.gateway_sn, None);
        let mut daemon = Daemon::start(&cfg);
        let mut ok = false;
        for _ in 0..40 {
            if cloud
                .try_wait_state_message("live_capacity", |_| true, Duration::from_millis(500))
                .is_some()
            {
                ok = true;
                break;
            }
            if !daemon.is_running() {
                break;
            }
        }
        assert!(ok, "no live_capacity; log:\n{}", daemon.log_tail(40));
        Rig {
            daemon,
            cloud,
            nginx,
            _broker: broker,
            cfg,
            _serial: serial,
        }
    }

    fn call_ok(&mut self, method: &str, data: Value) -> Instant {
        let (tid, _) = self.cloud.send_service(method, data);
        let reply = self.cloud.wait_reply(&tid, REPLY_TIMEOUT);
        assert_eq!(
            reply["data"]["result"],
            0,
            "{method} failed: {reply}\nlog:\n{}",
            self.daemon.log_tail(40)
        );
        Instant::now()
    }

    fn url(&self, stream: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{stream}", self.nginx.rtmp_port())
    }

    fn start_push(&mut self, stream: &str, quality: u8) -> Instant {
        let data = json!({ "url_type": 1, "url": self.url(stream),
                           "video_id": self.cfg.video_id(), "video_quality": quality });
        self.call_ok("live_start_push", data)
    }

    fn stop_push(&mut self) -> Instant {
        let vid = self.cfg.video_id();
        self.call_ok("live_stop_push", json!({ "video_id": vid }))
    }

    fn wait_live(&mut self) {
        let vid = self.cfg.video_id();
        let got = self.cloud.try_wait_state_message(
            "live_status",
            |s| {
                s.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|e| e["video_id"] == vid.as_str() && e["status"] == 1)
                })
            },
            STATE_TIMEOUT,
        );
        assert!(
            got.is_some(),
            "never live; log:\n{}",
            self.daemon.log_tail(40)
        );
    }

    /// The one recording of `stream`, once nginx finished writing it.
    fn recording(&self, stream: &str) -> PathBuf {
        let dir = self.nginx.record_dir();
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("record dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "flv")
                    && p.file_stem()
                        .and_then(|s| s.to_str())
                        .is_some_and(|s| s == stream || s.starts_with(&format!("{stream}-")))
            })
            .collect();
        assert_eq!(files.len(), 1, "one publish expected, found {files:?}");
        let file = files[0].clone();
        let mut last = 0;
        let mut since = Instant::now();
        let settled = peers::wait_until(Duration::from_secs(10), || {
            let n = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if n != last {
                last = n;
                since = Instant::now();
            }
            n > 0 && since.elapsed() >= Duration::from_millis(500)
        });
        assert!(settled, "recording still growing");
        file
    }
}

/// Makes an H.264 Annex-B clip with ffmpeg (baseline, 30 fps, IDR every `gop` frames).
fn make_clip(
    dir: &Path,
    name: &str,
    lavfi: &str,
    frames: u32,
    gop: u32,
    extra: &[&str],
) -> Vec<u8> {
    let path = dir.join(name);
    let ok = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", lavfi])
        .args(["-frames:v", &frames.to_string(), "-pix_fmt", "yuv420p"])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-g",
            &gop.to_string(),
        ])
        .args(["-keyint_min", &gop.to_string(), "-sc_threshold", "0"])
        .args(extra)
        .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(&path)
        .status()
        .expect("run ffmpeg (scripts/setup-deps.sh installs it)");
    assert!(ok.success(), "ffmpeg could not make {name}");
    std::fs::read(&path).expect("read clip")
}

/// NAL units (without start codes) of an Annex-B stream, parsed here independently.
fn nals(annexb: &[u8]) -> Vec<Vec<u8>> {
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
        if !nal.is_empty() {
            out.push(nal.to_vec());
        }
    }
    out
}

fn slices(annexb: &[u8]) -> Vec<Vec<u8>> {
    nals(annexb)
        .into_iter()
        .filter(|n| matches!(n[0] & 0x1f, 1 | 5))
        .collect()
}

/// Inserts before every slice a DJI-style private SEI NAL: one `user_data_unregistered`
/// message with [`DJI_UUID`] and one message of DJI's reserved type 240.
fn with_private_sei(annexb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for nal in nals(annexb) {
        if matches!(nal[0] & 0x1f, 1 | 5) {
            out.extend_from_slice(&[0, 0, 0, 1, 0x06, 0x05, 20]);
            out.extend_from_slice(&DJI_UUID);
            out.extend_from_slice(&[1, 2, 3, 4]);
            out.extend_from_slice(&[240, 4, 9, 9, 9, 9, 0x80]);
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&nal);
    }
    out
}

/// Byte offsets where each access unit (picture) of a clip ends, to pace writes.
fn frame_ends(annexb: &[u8]) -> Vec<usize> {
    // A picture ends where the next one's first NAL (SPS or slice after a slice) starts,
    // counting the leading zero of a 4-byte start code.
    let mut ends = Vec::new();
    let mut seen_slice = false;
    let mut i = 0;
    while i + 3 < annexb.len() {
        if annexb[i..i + 3] == [0, 0, 1] {
            let ty = annexb[i + 3] & 0x1f;
            let at = if i > 0 && annexb[i - 1] == 0 {
                i - 1
            } else {
                i
            };
            if seen_slice && matches!(ty, 1 | 5 | 6 | 7 | 9) {
                ends.push(at);
                seen_slice = false;
            }
            if matches!(ty, 1 | 5) {
                seen_slice = true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    ends.push(annexb.len());
    ends
}

/// How the fake payload app frames what it writes.
#[derive(Clone, Copy)]
enum Framing {
    Raw,
    /// The 16-byte header with a timestamp at each chunk that starts a picture.
    Header,
}

/// Writes `clip` (looped) to `w` at 30 fps, in chunks of at most 60 KB that end a few bytes
/// into the next picture (as callback buffers do), until `stop` or `max_frames`.
fn play(
    w: &mut impl Write,
    clip: &[u8],
    framing: Framing,
    stop: &AtomicBool,
    max_frames: usize,
    sent: &AtomicUsize,
) -> std::io::Result<()> {
    let ends = frame_ends(clip);
    let (len, nf) = (clip.len(), ends.len());
    // Positions in the endlessly looped clip.
    let bytes = |from: usize, to: usize| {
        let mut out = Vec::with_capacity(to.saturating_sub(from));
        let mut p = from;
        while p < to {
            let off = p % len;
            let take = (len - off).min(to - p);
            out.extend_from_slice(&clip[off..off + take]);
            p += take;
        }
        out
    };
    let ts = |n: usize| (FRAME * n as u32).as_micros() as u64 + 5_000_000;
    let start = Instant::now();
    let mut pos = 0usize;
    for n in 0..max_frames {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + FRAME * n as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let end = (n / nf) * len + ends[n % nf];
        if end > pos {
            // The rest of picture n: its start code went out with the previous write, except
            // for the very first picture.
            let stamp = (n == 0).then(|| ts(0));
            write_chunks(w, &bytes(pos, end), framing, stamp)?;
        }
        // The first bytes of picture n + 1 (its start code), stamped with its time.
        write_chunks(w, &bytes(end, end + 7), framing, Some(ts(n + 1)))?;
        pos = end + 7;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn write_chunks(
    w: &mut impl Write,
    data: &[u8],
    framing: Framing,
    ts: Option<u64>,
) -> std::io::Result<()> {
    for (i, chunk) in data.chunks(60 * 1024).enumerate() {
        if let Framing::Header = framing {
            let mut h = Vec::with_capacity(16);
            h.extend_from_slice(b"DKCF");
            h.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            let t = if i == 0 {
                ts.unwrap_or(u64::MAX)
            } else {
                u64::MAX
            };
            h.extend_from_slice(&t.to_be_bytes());
            w.write_all(&h)?;
        }
        w.write_all(chunk)?;
    }
    w.flush()
}

/// Connects to the daemon's unix feed socket, retrying while it does not exist yet (bounded).
fn connect_unix(path: &Path) -> std::os::unix::net::UnixStream {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "feed socket {}: {e}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn to_annexb(flv: &Path, out: &Path) -> Vec<u8> {
    let ok = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(flv)
        .args(["-c", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(out)
        .status()
        .expect("run ffmpeg");
    assert!(ok.success());
    std::fs::read(out).expect("read annexb")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn feed_over_unix_passes_through_strips_private_sei_and_survives_an_app_restart() {
    let serial = peers::exclusive();
    let broker = Mosquitto::start();
    let dir = peers::TestDir::new("feed-unix");
    let clip = make_clip(
        dir.path(),
        "clip.h264",
        "testsrc=size=320x180:rate=30",
        60,
        15,
        &[],
    );
    let input = with_private_sei(&clip);
    assert!(contains(&input, &DJI_UUID));
    let sock = dir.path().join("feed.sock");
    let mut cfg = DaemonConfig::new(&broker.url());
    // A short watchdog so the app's one-second silence is reported to the cloud.
    cfg.source = Some(format!("feed:unix:{}?watchdog=0.4", sock.display()));
    let mut rig = Rig::start(serial, broker, cfg);
    let stream = "e2e-feed-unix";
    let started = rig.start_push(stream, 1);

    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    // First run of the app: 2.5 s.
    let mut s = connect_unix(&sock);
    play(&mut s, &input, Framing::Raw, &stop, 75, &sent).expect("feed write");
    drop(s);
    let gone = Instant::now();
    rig.wait_live();
    // The silence puts the stream in error (513008: no video data) while it stays published…
    let vid = rig.cfg.video_id();
    let entry = |s: &Value, error: u32| {
        s.as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["video_id"] == vid.as_str() && e["status"] == 1 && e["error_status"] == error
            })
        })
    };
    rig.cloud
        .wait_state("live_status", |s| entry(s, 513008), STATE_TIMEOUT);
    // …and the app restarts after a second of silence.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(gone.elapsed()));
    let first_run = sent.swap(0, Ordering::Relaxed);
    let mut s = connect_unix(&sock);
    let restarted = std::thread::scope(|scope| {
        let app = scope.spawn(|| play(&mut s, &input, Framing::Raw, &stop, 75, &sent));
        // Video flowing again clears the error by itself.
        rig.cloud
            .wait_state("live_status", |s| entry(s, 0), STATE_TIMEOUT);
        // A reload while the app streams leaves its connection alone: the daemon does not
        // open the socket a session is reading to check that it opens.
        assert!(rig.daemon.send_signal("HUP"), "SIGHUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !rig.daemon.logs().contains("config reloaded") {
            assert!(
                Instant::now() < deadline,
                "no reload: {}",
                rig.daemon.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        app.join().expect("app thread")
    });
    restarted.expect("feed write");
    drop(s);
    let logs = rig.daemon.logs();
    assert_eq!(
        logs.matches("payload app connected").count(),
        2,
        "the app's two runs and nothing else connected: {}",
        rig.daemon.log_tail(30)
    );
    assert!(
        !logs.contains("source unavailable"),
        "the reload reported the feed in use as unavailable"
    );
    let second_run = sent.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    let stopped = rig.stop_push();
    let _ = (started, stopped);

    let flv = rig.recording(stream);
    let p = probe_file(&flv);
    assert_eq!(
        (p.codec.as_str(), p.width, p.height),
        ("h264", 320, 180),
        "{p:?}"
    );
    let recorded = to_annexb(&flv, &dir.path().join("rec.h264"));
    assert!(
        !contains(&recorded, &DJI_UUID),
        "private SEI reached the recording"
    );
    assert!(
        !nals(&recorded)
            .iter()
            .any(|n| n[0] & 0x1f == 6 && n.get(1) == Some(&240)),
        "type-240 SEI reached the recording"
    );
    // Passthrough: every recorded slice is one of the input's, byte for byte, and the first
    // run's slices follow the clip's order.
    let input_slices = slices(&clip);
    let known: HashSet<&Vec<u8>> = input_slices.iter().collect();
    let rec = slices(&recorded);
    for (i, s) in rec.iter().enumerate() {
        assert!(
            known.contains(s),
            "recorded slice {i} is not a slice of the input"
        );
    }
    let offset = input_slices
        .iter()
        .position(|s| *s == rec[0])
        .expect("first slice");
    for i in 0..30 {
        assert_eq!(
            rec[i],
            input_slices[(offset + i) % input_slices.len()],
            "slice {i}"
        );
    }
    // Both runs are in the one recording: at most a GOP lost at each start, a frame or two at
    // each end.
    let expect = (first_run + second_run) as f64 - 2.0 * 15.0 - 4.0;
    eprintln!(
        "feed unix: sent {first_run}+{second_run} frames, recorded {} slices, ffprobe decoded {} frames",
        rec.len(),
        p.frames
    );
    assert!(
        rec.len() as f64 >= expect,
        "recorded {} slices, expected ≥ {expect}",
        rec.len()
    );
    assert!(
        p.frames as usize >= rec.len() - 2,
        "ffprobe decoded only {} frames",
        p.frames
    );
}

#[test]
fn feed_over_tcp_with_timestamp_headers_keeps_the_apps_clock() {
    let serial = peers::exclusive();
    let broker = Mosquitto::start();
    let dir = peers::TestDir::new("feed-tcp");
    let clip = make_clip(
        dir.path(),
        "clip.h264",
        "testsrc2=size=320x180:rate=30",
        45,
        15,
        &[],
    );
    let port = peers::free_port();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.source = Some(format!("feed:tcp:127.0.0.1:{port}"));
    let mut rig = Rig::start(serial, broker, cfg);
    let stream = "e2e-feed-tcp";
    rig.start_push(stream, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "feed port: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    play(&mut s, &clip, Framing::Header, &stop, 120, &sent).expect("feed write");
    rig.wait_live();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    rig.stop_push();

    let flv = rig.recording(stream);
    let p = probe_file(&flv);
    assert_eq!(
        (p.codec.as_str(), p.width, p.height),
        ("h264", 320, 180),
        "{p:?}"
    );
    let pk = packets(&flv);
    assert!(pk.len() >= 120 - 15 - 3, "only {} packets: {p:?}", pk.len());
    // The header timestamps are 33.3 ms apart: so must the recording's be (FLV has 1 ms
    // resolution), whatever the socket's timing did.
    let deltas: Vec<f64> = pk.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let bad: Vec<&f64> = deltas
        .iter()
        .filter(|d| (**d - 0.0333).abs() > 0.0025)
        .collect();
    eprintln!(
        "feed tcp: {} packets, {} deltas off 33 ms",
        pk.len(),
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "timestamps do not follow the headers: {bad:?}"
    );
    let rec = slices(&to_annexb(&flv, &dir.path().join("rec.h264")));
    let known: HashSet<Vec<u8>> = slices(&clip).into_iter().collect();
    assert!(rec.iter().all(|s| known.contains(s)), "a slice was altered");
}

#[test]
fn lens_switch_between_feeds_has_no_gap_and_one_publish() {
    let serial = peers::exclusive();
    let broker = Mosquitto::start();
    let dir = peers::TestDir::new("feed-lens");
    let wide = make_clip(
        dir.path(),
        "a.h264",
        "testsrc=size=320x180:rate=30",
        90,
        15,
        &[],
    );
    let zoom = make_clip(
        dir.path(),
        "b.h264",
        "smptebars=size=320x180:rate=30",
        90,
        15,
        &[],
    );
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.lens_sources = vec![
        ("normal".into(), format!("feed:unix:{}", sa.display())),
        ("zoom".into(), format!("feed:unix:{}", sb.display())),
    ];
    let mut rig = Rig::start(serial, broker, cfg);
    let stream = "e2e-feed-lens";
    rig.start_push(stream, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let apps: Vec<_> = [(sa, wide.clone()), (sb, zoom.clone())]
        .into_iter()
        .map(|(path, clip)| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // Like a payload app: (re)connect until stopped, bounded by the test's length.
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&path) {
                        let sent = AtomicUsize::new(0);
                        let _ = play(&mut s, &clip, Framing::Raw, &stop, 900, &sent);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    rig.wait_live();
    std::thread::sleep(Duration::from_millis(1500));
    let vid = rig.cfg.video_id();
    rig.call_ok(
        "live_lens_change",
        json!({ "video_id": vid, "video_type": "zoom" }),
    );
    std::thread::sleep(Duration::from_millis(2500));
    rig.stop_push();
    stop.store(true, Ordering::Relaxed);
    for a in apps {
        let _ = a.join();
    }

    let flv = rig.recording(stream);
    let pk = packets(&flv);
    let rec = slices(&to_annexb(&flv, &dir.path().join("rec.h264")));
    let from_a: HashSet<Vec<u8>> = slices(&wide).into_iter().collect();
    let from_b: HashSet<Vec<u8>> = slices(&zoom).into_iter().collect();
    let switch_at = rec
        .iter()
        .position(|s| from_b.contains(s))
        .expect("the zoom lens never reached the recording");
    assert!(switch_at > 0 && rec[..switch_at].iter().all(|s| from_a.contains(s)));
    assert!(rec[switch_at..].iter().all(|s| from_b.contains(s)));
    assert_eq!(rec[switch_at][0] & 0x1f, 5, "the switch lands on an IDR");
    let max_gap = pk
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .fold(0.0f64, f64::max);
    let gap_at_switch = pk[switch_at].0 - pk[switch_at - 1].0;
    eprintln!(
        "lens switch: {} packets, switch at packet {switch_at}, gap there {:.1} ms, largest gap {:.1} ms",
        pk.len(),
        gap_at_switch * 1000.0,
        max_gap * 1000.0
    );
    assert!(gap_at_switch <= 2.0 * 0.0334, "gap {gap_at_switch}");
    assert!(max_gap <= 2.0 * 0.0334, "largest gap {max_gap}");
}

#[test]
fn quality_change_on_an_encoded_source_shows_the_new_bitrate_within_two_seconds() {
    let serial = peers::exclusive();
    let broker = Mosquitto::start();
    let dir = peers::TestDir::new("quality");
    // Noisy content at a low bitrate: an encoder asked for more has something to spend it on.
    let clip = make_clip(
        dir.path(),
        "clip.h264",
        "testsrc2=size=320x180:rate=30,noise=alls=30:allf=t",
        60,
        15,
        &["-b:v", "150k", "-maxrate", "150k", "-bufsize", "150k"],
    );
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.source = Some(format!("file:{}", dir.path().join("clip.h264").display()));
    let _ = clip;
    let mut rig = Rig::start(serial, broker, cfg);
    let stream = "e2e-quality";
    let started = rig.start_push(stream, 1);
    rig.wait_live();
    std::thread::sleep(Duration::from_secs(3));
    let vid = rig.cfg.video_id();
    let changed = rig.call_ok(
        "live_set_quality",
        json!({ "video_id": vid, "video_quality": 2 }),
    );
    std::thread::sleep(Duration::from_secs(4));
    rig.stop_push();

    let flv = rig.recording(stream);
    let pk = packets(&flv);
    // Recording time 0 is the first frame the sink sent, shortly after the start reply.
    let t0 = pk.first().map_or(0.0, |p| p.0);
    let change = (changed - started).as_secs_f64() + t0;
    let kbps = |from: f64, to: f64| {
        let bytes: u64 = pk
            .iter()
            .filter(|p| p.0 >= from && p.0 < to)
            .map(|p| p.1)
            .sum();
        bytes as f64 * 8.0 / 1000.0 / (to - from)
    };
    let before = kbps(change - 2.5, change - 0.5);
    let after = kbps(change + 2.0, change + 3.5);
    eprintln!(
        "quality 1 → 2: {before:.0} kbit/s before, {after:.0} kbit/s from 2 s after (target 600)"
    );
    assert!(before < 300.0, "before: {before:.0} kbit/s");
    assert!(
        (420.0..=900.0).contains(&after),
        "2 s after the change: {after:.0} kbit/s, expected about 600"
    );
    let p = probe_file(&flv);
    assert_eq!(p.codec, "h264");
}

/// The fake app's framed output, parsed back by the daemon's own parser, gives the clip's
/// pictures with the app's timestamps (checks the test app as much as the parser).
#[test]
fn fake_app_output_parses_back_into_the_clips_pictures() {
    use dockcast::source::feed::{FeedParser, SeiPolicy};
    let dir = peers::TestDir::new("feed-parse");
    let clip = make_clip(
        dir.path(),
        "clip.h264",
        "testsrc2=size=320x180:rate=30",
        45,
        15,
        &[],
    );
    let mut out = Vec::new();
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    // Pacing is irrelevant here; 3 frames at 30 fps is 0.1 s.
    play(&mut out, &clip, Framing::Header, &stop, 50, &sent).expect("write to memory");
    let mut p = FeedParser::new(SeiPolicy::StripPrivate);
    p.push(&out, 0).expect("framing");
    let mut units = Vec::new();
    while let Some(u) = p.pull() {
        units.push(u);
    }
    let known: HashSet<Vec<u8>> = slices(&clip).into_iter().collect();
    for (i, u) in units.iter().enumerate() {
        let s = slices(&u.data);
        assert_eq!(s.len(), 1, "unit {i} has {} slices", s.len());
        assert!(
            known.contains(&s[0]),
            "unit {i} altered, ts {}",
            u.timestamp_us
        );
        assert_eq!(
            u.timestamp_us,
            5_000_000 + (FRAME * i as u32).as_micros() as u64,
            "unit {i}"
        );
    }
    // The 50th picture completes as soon as the first bytes of the 51st arrive (the 7-byte
    // tail), without waiting for that NAL to end: no frame of added latency.
    assert_eq!(units.len(), 50);
}

#[test]
fn an_h265_file_passes_through_over_enhanced_rtmp_and_whip_and_gb28181_refuse_it() {
    let serial = peers::exclusive();
    let broker = Mosquitto::start();
    let nms = peers::nms::Nms::start();
    let dir = peers::TestDir::new("file-h265");
    let clip = dir.path().join("clip.h265");
    make_hevc_clip(&clip, 60);
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.source = Some(format!("file:{}", clip.display()));
    let mut rig = Rig::start(serial, broker, cfg);

    // Quality 1 does not match the clip's 320x240: H.265 still passes through (nothing here
    // can decode it to transcode), and the RTMP sink sends it as Enhanced RTMP.
    let url = format!("rtmp://127.0.0.1:{}/live/hevc", nms.port());
    let vid = rig.cfg.video_id();
    rig.call_ok(
        "live_start_push",
        json!({ "url_type": 1, "url": url, "video_id": vid, "video_quality": 1 }),
    );
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    rig.stop_push();
    let secs = started.elapsed().as_secs_f64();
    let d = decode_hevc_recording(&nms, "hevc");
    eprintln!("h265 file: {} frames decoded after {secs:.2} s", d.frames);
    // At most a GOP (0.5 s) before the first IRAP and a little at the end are lost.
    assert!(
        f64::from(d.frames) >= 30.0 * (secs - 1.0),
        "decoded {} frames over {secs:.2} s",
        d.frames
    );
    assert!(d.pts_ms.windows(2).all(|w| w[0] <= w[1]), "pts go back");

    // WHIP carries H.264 only: the start is refused with a reply that names the transport
    // (513013), not a mislabelled stream and not "cannot reach the server" (513010).
    let whip = peers::whip::WhipServer::start(peers::whip::WhipServerOptions::default());
    start_is_refused_as_unsupported(
        &mut rig,
        4,
        &whip.url("cam"),
        "WHIP here carries H.264 only",
    );

    // Nor does GB/T 28181's PS here: refused the same way, before the device registers. A bare
    // UDP socket stands in for the platform, to show no REGISTER reached it.
    let platform = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    platform.set_nonblocking(true).expect("nonblocking");
    let platform_port = platform.local_addr().expect("addr").port();
    let gb_url = format!(
        "serverIP=127.0.0.1&serverPort={platform_port}&serverID=34020000002000000001\
         &agentID=34020000001320000001&agentPassword=12345678&localPort={}\
         &channel=34020000001310000001",
        peers::free_port()
    );
    start_is_refused_as_unsupported(&mut rig, 3, &gb_url, "GB/T 28181 here carries H.264 only");
    let mut buf = [0u8; 2048];
    match platform.recv_from(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((n, _)) => panic!("the platform got: {}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => panic!("platform socket: {e}"),
    }
}

/// A start of the rig's video over `url_type` is answered 513013 (the transport cannot carry
/// this video) — not a mislabelled stream, not 513010 "cannot reach the server" — and the log
/// says `why`.
fn start_is_refused_as_unsupported(rig: &mut Rig, url_type: u8, url: &str, why: &str) {
    let vid = rig.cfg.video_id();
    let (tid, _) = rig.cloud.send_service(
        "live_start_push",
        json!({ "url_type": url_type, "url": url, "video_id": vid, "video_quality": 0 }),
    );
    let reply = rig.cloud.wait_reply(&tid, REPLY_TIMEOUT);
    assert_eq!(reply["data"]["result"], 513013, "{reply}");
    assert!(
        rig.daemon.log_tail(80).contains(why),
        "no log line says why:\n{}",
        rig.daemon.log_tail(80)
    );
}

/// Where each picture of an H.265 Annex-B stream ends (before the next picture's first NAL),
/// parsed here independently of the daemon's splitter.
fn hevc_frame_ends(annexb: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut seen_slice = false;
    let mut i = 0;
    while i + 5 < annexb.len() {
        if annexb[i..i + 3] == [0, 0, 1] {
            let ty = (annexb[i + 3] >> 1) & 0x3f;
            let first_slice = ty < 32 && annexb[i + 5] & 0x80 != 0;
            let at = if i > 0 && annexb[i - 1] == 0 {
                i - 1
            } else {
                i
            };
            if seen_slice && (first_slice || matches!(ty, 32..=35 | 39)) {
                ends.push(at);
                seen_slice = false;
            }
            seen_slice |= ty < 32;
            i += 3;
        } else {
            i += 1;
        }
    }
    ends.push(annexb.len());
    ends
}

#[test]
fn an_h265_feed_passes_through_over_enhanced_rtmp() {
    let serial = peers::exclusive();
    let broker = Mosquitto::start();
    let nms = peers::nms::Nms::start();
    let dir = peers::TestDir::new("feed-h265");
    let clip_path = dir.path().join("clip.h265");
    make_hevc_clip(&clip_path, 30);
    let clip = std::fs::read(&clip_path).expect("clip");
    let ends = hevc_frame_ends(&clip);
    assert_eq!(ends.len(), 30, "the test's own picture split");
    let sock = dir.path().join("feed.sock");
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.source = Some(format!("feed:unix:{}?codec=h265", sock.display()));
    let mut rig = Rig::start(serial, broker, cfg);
    let url = format!("rtmp://127.0.0.1:{}/live/hevcfeed", nms.port());
    let vid = rig.cfg.video_id();
    let (tid, _) = rig.cloud.send_service(
        "live_start_push",
        json!({ "url_type": 1, "url": url, "video_id": vid, "video_quality": 0 }),
    );

    // The app: each picture in one write at 30 fps, the clip looped 3 times.
    let mut s = connect_unix(&sock);
    let start = Instant::now();
    let mut from = 0;
    for n in 0..90usize {
        if let Some(d) = (start + FRAME * n as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let end = ends[n % ends.len()];
        s.write_all(&clip[from..end]).expect("feed write");
        from = if end == clip.len() { 0 } else { end };
    }
    drop(s);
    let reply = rig.cloud.wait_reply(&tid, REPLY_TIMEOUT);
    assert_eq!(reply["data"]["result"], 0, "{reply}");
    std::thread::sleep(Duration::from_millis(300));
    rig.stop_push();
    let d = decode_hevc_recording(&nms, "hevcfeed");
    eprintln!("h265 feed: {} frames decoded", d.frames);
    // The publish starts once the sink is up; then at most a GOP (15) waits for an IRAP, and
    // the last picture may stay in the splitter when the app disconnects.
    assert!(d.frames >= 90 - 15 - 15 - 2, "decoded {} of 90", d.frames);
}

/// node-media-server's recording of stream `name`, decoded by PyAV (whose FFmpeg reads
/// Enhanced RTMP's H.265), checked to be the 320x240 H.265 clip the tests push.
fn decode_hevc_recording(nms: &peers::nms::Nms, name: &str) -> peers::nms::Decoded {
    peers::wait_until(Duration::from_secs(10), || !nms.recordings(name).is_empty());
    let rec = nms
        .recordings(name)
        .pop()
        .unwrap_or_else(|| panic!("no recording of {name}:\n{}", nms.log()));
    let mut decoded = None;
    peers::wait_until(Duration::from_secs(10), || {
        decoded = peers::nms::pyav_decode(&rec).ok();
        decoded.as_ref().is_some_and(|d| d.frames > 0)
    });
    let d = decoded.unwrap_or_else(|| panic!("PyAV could not read {}", rec.display()));
    assert_eq!(
        (d.codec.as_str(), d.width, d.height),
        ("hevc", 320, 240),
        "{name}"
    );
    d
}

/// A 320x240 libx265 clip of `frames` pictures, an IRAP every 15, no B-frames.
fn make_hevc_clip(path: &Path, frames: u32) {
    let ok = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc=size=320x240:rate=30")
        .args(["-frames:v", &frames.to_string(), "-pix_fmt", "yuv420p"])
        .args(["-c:v", "libx265", "-x265-params"])
        .arg("log-level=error:keyint=15:min-keyint=15:bframes=0")
        .args(["-f", "hevc"])
        .arg(path)
        .status()
        .expect("run ffmpeg");
    assert!(ok.success(), "ffmpeg could not make the H.265 clip");
}
