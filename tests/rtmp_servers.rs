//! `sink::rtmp::run` against the servers DJI cloud deployments use: nginx-rtmp plain and
//! behind nginx `stream` TLS (RTMPS, with a CA the test makes), node-media-server (including
//! H.265 over Enhanced RTMP, decoded by PyAV) and `ffmpeg -listen 1`; servers restarted
//! mid-stream; a server that reads slowly. Needs scripts/setup-deps.sh.

mod peers;

use dockcast::media::frame::{Codec, EncodedFrame};
use dockcast::media::h264::AccessUnitSplitter;
use dockcast::media::hevc;
use dockcast::sink::rtmp::{run_with_stats, RtmpOptions, RtmpStats, RtmpTarget};
use dockcast::sink::SinkEvent;
use peers::nginx::{Nginx, TestPki};
use peers::nms::{pyav_decode, FfmpegListen, Nms};
use peers::probe::{packets, probe, require};
use peers::TestDir;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

const FRAME: Duration = Duration::from_micros(33_333);

/// One test at a time: the reconnect-time assertions measure wall-clock time, which several
/// media servers and encoders competing for two cores would distort. An async mutex, since the
/// guard lives across awaits.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 3 s of `size` test pattern at 30 fps, IDR every 30 frames, as Annex-B H.264 or H.265.
fn encode(dir: &Path, size: &str, codec: Codec) -> Vec<(bytes::Bytes, bool)> {
    encode_with(dir, size, codec, "null")
}

/// [`encode`] with a video filter (e.g. noise, for a high bitrate).
fn encode_with(dir: &Path, size: &str, codec: Codec, vf: &str) -> Vec<(bytes::Bytes, bool)> {
    require("ffmpeg");
    let (name, args): (&str, &[&str]) = match codec {
        Codec::H264 => (
            "h264",
            &[
                "-c:v",
                "libx264",
                "-g",
                "30",
                "-bsf:v",
                "h264_mp4toannexb",
                "-f",
                "h264",
            ],
        ),
        Codec::H265 => (
            "h265",
            &[
                "-c:v",
                "libx265",
                "-x265-params",
                "log-level=error:keyint=30:min-keyint=30:bframes=0",
                "-f",
                "hevc",
            ],
        ),
    };
    let path = dir.join(format!("in-{size}.{name}"));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={size}:rate=30"))
        .args(["-t", "3", "-vf", vf, "-pix_fmt", "yuv420p"])
        .args(args)
        .arg(&path)
        .status()
        .expect("run ffmpeg");
    assert!(
        status.success(),
        "ffmpeg could not encode the {name} test input"
    );
    let data = std::fs::read(&path).expect("read input");
    match codec {
        Codec::H264 => {
            let mut s = AccessUnitSplitter::default();
            s.push(&data);
            s.flush();
            std::iter::from_fn(|| s.pull())
                .map(|au| (au.data, au.idr))
                .collect()
        }
        Codec::H265 => hevc::split_access_units(&data),
    }
}

/// A running sink with a paced producer looping over `units` with a continuous clock.
struct Push {
    events: mpsc::Receiver<SinkEvent>,
    stats: Arc<RtmpStats>,
    cancel: CancellationToken,
    producing: CancellationToken,
    /// Opens the producer: frames sent while the sink connects would only be discarded.
    go: Arc<tokio::sync::Notify>,
    sink: Option<JoinHandle<()>>,
    producer: Option<JoinHandle<u32>>,
}

impl Push {
    /// Starts publishing to `url`; at most `max_frames` frames, one per `pace`.
    fn start(
        url: &str,
        opts: RtmpOptions,
        units: Vec<(bytes::Bytes, bool)>,
        codec: Codec,
        pace: Duration,
        max_frames: u32,
    ) -> Push {
        let target = RtmpTarget::parse(url).expect("target");
        let (tx, rx) = mpsc::channel(8);
        let (ev_tx, events) = mpsc::channel(256);
        let cancel = CancellationToken::new();
        let stats = Arc::new(RtmpStats::default());
        let sink = tokio::spawn(run_with_stats(
            target,
            opts,
            rx,
            ev_tx,
            cancel.clone(),
            stats.clone(),
        ));
        let producing = CancellationToken::new();
        let stop = producing.clone();
        let go = Arc::new(tokio::sync::Notify::new());
        let opened = go.clone();
        let producer = tokio::spawn(async move {
            tokio::select! {
                _ = opened.notified() => {}
                _ = stop.cancelled() => return 0,
            }
            let mut sent = 0;
            let mut next = Instant::now();
            for i in 0..max_frames {
                if stop.is_cancelled() {
                    break;
                }
                let (data, key) = &units[i as usize % units.len()];
                let frame = EncodedFrame {
                    data: data.clone(),
                    pts: FRAME * i,
                    keyframe: *key,
                    codec,
                };
                if tx.send(frame).await.is_err() {
                    break;
                }
                sent += 1;
                next += pace;
                tokio::time::sleep_until(next).await;
            }
            sent
        });
        Push {
            events,
            stats,
            cancel,
            producing,
            go,
            sink: Some(sink),
            producer: Some(producer),
        }
    }

    /// Waits for `want`, skipping other events; panics after `within`.
    async fn wait_for(&mut self, within: Duration, want: impl Fn(&SinkEvent) -> bool) -> SinkEvent {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.events.recv()).await {
                Ok(Some(ev)) => {
                    if ev == SinkEvent::Publishing {
                        self.go.notify_one();
                    }
                    if want(&ev) {
                        return ev;
                    }
                }
                Ok(None) => panic!("sink ended while waiting"),
                Err(_) => panic!("event did not arrive within {within:?}"),
            }
        }
    }

    /// Lets the producer send all its frames (bounded), then stops like [`stop`](Self::stop).
    async fn finish(mut self) -> u32 {
        let sent = match self.producer.take() {
            Some(producer) => timeout(Duration::from_secs(30), producer)
                .await
                .expect("producer finished")
                .expect("producer did not panic"),
            None => 0,
        };
        self.stop().await;
        sent
    }

    /// Stops producer and sink (bounded) and returns how many frames were produced.
    async fn stop(mut self) -> u32 {
        self.producing.cancel();
        let sent = match self.producer.take() {
            Some(producer) => timeout(Duration::from_secs(5), producer)
                .await
                .expect("producer returned")
                .expect("producer did not panic"),
            None => 0,
        };
        // Let the sink write what it took before it unpublishes.
        sleep(Duration::from_millis(300)).await;
        self.cancel.cancel();
        self.wait_for(Duration::from_secs(10), |e| *e == SinkEvent::Stopped)
            .await;
        let sink = self.sink.take().expect("running");
        timeout(Duration::from_secs(5), sink)
            .await
            .expect("sink returned")
            .expect("sink did not panic");
        sent
    }
}

fn fast_reconnect() -> RtmpOptions {
    RtmpOptions {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..RtmpOptions::default()
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `within`.
async fn poll_until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(100)).await;
    }
}

fn frames_in(path: &Path) -> u32 {
    probe(path).map(|p| p.frames as u32).unwrap_or(0)
}

/// Packet timestamps (ms) of an H.264 FLV, read with ffprobe.
fn packet_pts_ms(path: &Path) -> Vec<i64> {
    packets(path)
        .into_iter()
        .map(|(s, _)| (s * 1000.0).round() as i64)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_through_nginx_stream_tls_with_the_test_ca() {
    let _guard = SERIAL.lock().await;
    require("openssl");
    let dir = TestDir::new("rtmps");
    let pki = TestPki::create(dir.path(), "good");
    let nginx = Nginx::start_tls(peers::free_port(), peers::free_port(), &pki.cert, &pki.key);
    let tls_port = nginx.tls_port().expect("tls port");
    let units = encode(dir.path(), "640x360", Codec::H264);
    let opts = RtmpOptions {
        ca_file: Some(pki.ca.clone()),
        ..fast_reconnect()
    };
    let url = format!("rtmps://127.0.0.1:{tls_port}/live/tls?token=abc");
    let mut push = Push::start(&url, opts, units, Codec::H264, Duration::from_millis(5), 90);
    push.wait_for(Duration::from_secs(10), |e| *e == SinkEvent::Publishing)
        .await;
    let sent = push.finish().await;
    assert_eq!(sent, 90);
    // nginx-rtmp names the recording after the stream name without the query.
    let rec = nginx.recording("tls");
    let frames = poll_until(Duration::from_secs(10), || {
        Some(frames_in(&rec)).filter(|n| *n >= 90)
    })
    .await;
    assert_eq!(frames, Some(90), "nginx log:\n{}", nginx.error_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_unknown_ca_is_refused_and_the_insecure_flag_accepts_it() {
    let _guard = SERIAL.lock().await;
    require("openssl");
    let dir = TestDir::new("rtmps-ca");
    let server = TestPki::create(dir.path(), "server");
    let other = TestPki::create(dir.path(), "other");
    let nginx = Nginx::start_tls(
        peers::free_port(),
        peers::free_port(),
        &server.cert,
        &server.key,
    );
    let url = format!(
        "rtmps://127.0.0.1:{}/live/secretkey",
        nginx.tls_port().expect("tls port")
    );
    let units = encode(dir.path(), "640x360", Codec::H264);

    // Trusting only another CA (plus the system roots): the handshake fails, the first
    // attempt ends the sink with a reason that names TLS and not the key.
    let opts = RtmpOptions {
        ca_file: Some(other.ca.clone()),
        ..fast_reconnect()
    };
    let mut push = Push::start(&url, opts, units.clone(), Codec::H264, FRAME, 30);
    match push
        .wait_for(Duration::from_secs(10), |e| {
            matches!(e, SinkEvent::Failed { .. } | SinkEvent::Publishing)
        })
        .await
    {
        SinkEvent::Failed { reason } => {
            assert!(reason.contains("RTMP tls"), "{reason}");
            assert!(
                reason.contains("UnknownIssuer") || reason.contains("certificate"),
                "{reason}"
            );
            assert!(!reason.contains("secretkey"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    push.producing.cancel();

    // The same server with verification off: publishes.
    let opts = RtmpOptions {
        insecure_skip_verify: true,
        ..fast_reconnect()
    };
    let mut push = Push::start(&url, opts, units, Codec::H264, Duration::from_millis(5), 60);
    push.wait_for(Duration::from_secs(10), |e| *e == SinkEvent::Publishing)
        .await;
    push.finish().await;
    let rec = nginx.recording("secretkey");
    let frames = poll_until(Duration::from_secs(10), || {
        Some(frames_in(&rec)).filter(|n| *n >= 60)
    })
    .await;
    assert_eq!(frames, Some(60), "nginx log:\n{}", nginx.error_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_listen_one_shot_server_restarted_gets_a_new_publish() {
    let _guard = SERIAL.lock().await;
    let dir = TestDir::new("ffmpeg-listen");
    let units = encode(dir.path(), "640x360", Codec::H264);
    let port = peers::free_port();
    let first: PathBuf = dir.path().join("first.flv");
    let second: PathBuf = dir.path().join("second.flv");
    let mut server = FfmpegListen::start(port, "x", &first);
    let url = format!("rtmp://127.0.0.1:{port}/live/x");
    let mut push = Push::start(&url, fast_reconnect(), units, Codec::H264, FRAME, 3000);
    push.wait_for(Duration::from_secs(10), |e| *e == SinkEvent::Publishing)
        .await;
    let grew = poll_until(Duration::from_secs(15), || {
        Some(server.frames()).filter(|n| *n >= 30)
    })
    .await;
    assert!(grew.is_some(), "ffmpeg copied nothing");

    server.kill();
    push.wait_for(Duration::from_secs(10), |e| {
        matches!(e, SinkEvent::Reconnecting { .. })
    })
    .await;
    let mut server = FfmpegListen::start(port, "x", &second);
    let listening = Instant::now();
    push.wait_for(Duration::from_secs(10), |e| *e == SinkEvent::Publishing)
        .await;
    let took = listening.elapsed();
    eprintln!("ffmpeg -listen: re-published {took:?} after the port listened again");
    assert!(took < Duration::from_secs(2), "re-publish took {took:?}");
    let grew = poll_until(Duration::from_secs(15), || {
        Some(server.frames()).filter(|n| *n >= 30)
    })
    .await;
    assert!(grew.is_some(), "the second ffmpeg copied nothing");
    push.stop().await;
    // The one-shot server ends with the publish and leaves a whole recording.
    server.wait_exit(Duration::from_secs(10));
    assert!(frames_in(&second) >= 30, "second recording too short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_media_server_restart_starts_a_new_recording_with_later_timestamps() {
    let _guard = SERIAL.lock().await;
    let mut nms = Nms::start();
    let units = encode(nms.dir(), "640x360", Codec::H264);
    let url = format!("rtmp://127.0.0.1:{}/live/cam?sign=1", nms.port());
    let mut push = Push::start(&url, fast_reconnect(), units, Codec::H264, FRAME, 3000);
    push.wait_for(Duration::from_secs(10), |e| *e == SinkEvent::Publishing)
        .await;
    let first = poll_until(Duration::from_secs(10), || {
        nms.recordings("cam")
            .first()
            .filter(|p| frames_in(p) >= 45)
            .cloned()
    })
    .await
    .unwrap_or_else(|| panic!("no first recording:\n{}", nms.log()));

    tokio::task::block_in_place(|| nms.restart());
    let accepting = Instant::now();
    push.wait_for(Duration::from_secs(10), |e| *e == SinkEvent::Publishing)
        .await;
    let took = accepting.elapsed();
    eprintln!("node-media-server: re-published {took:?} after the port accepted again");
    assert!(took < Duration::from_secs(2), "re-publish took {took:?}");
    let second = poll_until(Duration::from_secs(10), || {
        let recs = nms.recordings("cam");
        recs.get(1).filter(|p| frames_in(p) >= 30).cloned()
    })
    .await
    .unwrap_or_else(|| panic!("no second recording:\n{}", nms.log()));
    push.stop().await;

    // FLV timestamps come from pts, continuous across the reconnect: the new recording starts
    // where the old one ended (plus the outage), never earlier, and neither goes backwards.
    let a = packet_pts_ms(&first);
    let b = packet_pts_ms(&second);
    assert!(a.len() >= 45 && b.len() >= 30, "{} / {}", a.len(), b.len());
    assert!(
        a.windows(2).all(|w| w[0] <= w[1]),
        "first recording goes back"
    );
    assert!(
        b.windows(2).all(|w| w[0] <= w[1]),
        "second recording goes back"
    );
    let (last_a, first_b) = (a[a.len() - 1], b[0]);
    assert!(
        first_b > last_a,
        "second recording starts at {first_b} ms, before the first ended ({last_a} ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_over_enhanced_rtmp_to_node_media_server_decodes_in_pyav() {
    let _guard = SERIAL.lock().await;
    let nms = Nms::start();
    let units = encode(nms.dir(), "640x360", Codec::H265);
    assert_eq!(units.len(), 90);
    assert!(units[0].1, "first unit is IRAP");
    let url = format!("rtmp://127.0.0.1:{}/live/hevc", nms.port());
    let mut push = Push::start(
        &url,
        fast_reconnect(),
        units,
        Codec::H265,
        Duration::from_millis(5),
        90,
    );
    push.wait_for(Duration::from_secs(10), |e| *e == SinkEvent::Publishing)
        .await;
    assert_eq!(push.finish().await, 90);
    let rec = poll_until(Duration::from_secs(10), || nms.recordings("hevc").pop())
        .await
        .unwrap_or_else(|| panic!("no recording:\n{}", nms.log()));
    let decoded = poll_until(Duration::from_secs(10), || {
        pyav_decode(&rec).ok().filter(|d| d.frames >= 90)
    })
    .await
    .unwrap_or_else(|| panic!("PyAV: {:?}\n{}", pyav_decode(&rec), nms.log()));
    assert_eq!(
        (
            decoded.codec.as_str(),
            decoded.width,
            decoded.height,
            decoded.frames
        ),
        ("hevc", 640, 360, 90)
    );
    assert!(decoded.pts_ms.windows(2).all(|w| w[0] <= w[1]));
}

/// A TCP proxy that forwards server → client at full speed but reads client → server at
/// `rate` bytes/s with small socket buffers: a server on a thin uplink.
async fn throttling_proxy(upstream: u16, rate: usize) -> (u16, JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(4).expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
            tokio::spawn(async move {
                let step = rate / 10;
                let mut buf = vec![0u8; step.max(1)];
                loop {
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_makes_the_sink_drop_to_keyframes_and_lower_the_bitrate() {
    let _guard = SERIAL.lock().await;
    require("ffprobe");
    let nginx = Nginx::start(peers::free_port());
    let units = encode_with(nginx.dir(), "640x360", Codec::H264, "noise=alls=12:allf=t");
    let rate: usize = units.iter().map(|(d, _)| d.len()).sum::<usize>() / 3;
    eprintln!("input rate {} kB/s, proxy reads 20 kB/s", rate / 1000);
    assert!(rate > 60_000, "test input too small to congest 20 kB/s");
    let (proxy, proxy_task) = throttling_proxy(nginx.port(), 20_000).await;
    let opts = RtmpOptions {
        send_buffer_bytes: 128 * 1024,
        send_timeout: Duration::from_secs(10),
        ..fast_reconnect()
    };
    let url = format!("rtmp://127.0.0.1:{proxy}/live/slow");
    let mut push = Push::start(&url, opts, units, Codec::H264, FRAME, 900);
    push.wait_for(Duration::from_secs(10), |e| *e == SinkEvent::Publishing)
        .await;
    // 20 kB/s is 160 kbit/s; kernel buffers on loopback blur the first seconds.
    let ev = push
        .wait_for(
            Duration::from_secs(30),
            |e| matches!(e, SinkEvent::Bandwidth { bps } if *bps < 400_000),
        )
        .await;
    let SinkEvent::Bandwidth { bps } = ev else {
        unreachable!()
    };
    eprintln!("bandwidth estimate {bps} bit/s");
    // 20 kB/s = 160 kbit/s through the proxy; the estimate is below the input rate.
    assert!(bps < (rate as u64) * 8, "estimate {bps} not below input");
    let dropped = poll_until(Duration::from_secs(20), || {
        Some(push.stats.dropped_frames.load(Ordering::Relaxed)).filter(|n| *n > 0)
    })
    .await;
    assert!(dropped.is_some(), "no frame was dropped");
    // The connection survived: no reconnect was needed for a slow server.
    assert_eq!(push.stats.publishes.load(Ordering::Relaxed), 1);
    push.stop().await;
    proxy_task.abort();
    // What reached nginx is still a decodable stream (drops happen at frame boundaries).
    let rec = nginx.recording("slow");
    let frames = poll_until(Duration::from_secs(10), || {
        Some(frames_in(&rec)).filter(|n| *n > 0)
    })
    .await;
    assert!(frames.is_some(), "nginx log:\n{}", nginx.error_log());
}
