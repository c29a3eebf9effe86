//! Publishes H.264 to a real nginx-rtmp with `sink::rtmp::run` and checks the recording with
//! ffprobe/ffmpeg. Needs nginx + libnginx-mod-rtmp + ffmpeg (scripts/setup-deps.sh).

mod peers;

use dockcast::media::frame::{Codec, EncodedFrame};
use dockcast::media::h264::{nal_units, AccessUnit, AccessUnitSplitter, NalType};
use dockcast::sink::rtmp::{run, RtmpOptions, RtmpTarget};
use dockcast::sink::SinkEvent;
use peers::nginx::Nginx;
use peers::probe::{probe, require, VideoProbe};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

const FRAME: Duration = Duration::from_micros(33_333);

/// Encodes 3 s of test pattern (90 frames, IDR every 30) as the Annex-B file the brief names.
fn make_input(dir: &Path) -> Vec<u8> {
    encode(dir, "640x360", "baseline")
}

/// Encodes 3 s of `size` test pattern at 30 fps with an IDR every 30 frames.
fn encode(dir: &Path, size: &str, profile: &str) -> Vec<u8> {
    require("ffmpeg");
    let path = dir.join(format!("in-{size}-{profile}.h264"));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={size}:rate=30"))
        .args([
            "-t",
            "3",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-profile:v",
            profile,
        ])
        .args(["-g", "30", "-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(&path)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not encode the test input");
    std::fs::read(&path).expect("read test input")
}

fn split(stream: &[u8]) -> Vec<AccessUnit> {
    let mut s = AccessUnitSplitter::default();
    s.push(stream);
    s.flush();
    assert_eq!(s.dropped(), 0);
    std::iter::from_fn(|| s.pull()).collect()
}

/// The slice and SEI NALs of each access unit: what must survive FLV unchanged (parameter sets
/// and delimiters are legitimately moved or dropped by the muxers).
fn payload_nals(aus: &[AccessUnit]) -> Vec<Vec<Vec<u8>>> {
    aus.iter()
        .map(|au| {
            nal_units(&au.data)
                .filter(|n| {
                    !matches!(
                        NalType::from_header(n[0]),
                        NalType::Aud | NalType::Sps | NalType::Pps
                    )
                })
                .map(<[u8]>::to_vec)
                .collect()
        })
        .collect()
}

fn frame(au: &AccessUnit, index: u32) -> EncodedFrame {
    EncodedFrame {
        data: au.data.clone(),
        pts: FRAME * index,
        keyframe: au.idr,
        codec: Codec::H264,
    }
}

async fn next_event(rx: &mut mpsc::Receiver<SinkEvent>, within: Duration) -> SinkEvent {
    timeout(within, rx.recv())
        .await
        .expect("sink event did not arrive in time")
        .expect("sink ended without an event")
}

/// Polls ffprobe until the recording satisfies `want` or 10 s pass.
async fn probe_until(nginx: &Nginx, key: &str, want: impl Fn(&VideoProbe) -> bool) -> VideoProbe {
    let path = nginx.recording(key);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // ffprobe blocks; keep it off the runtime so the sink keeps running meanwhile.
        let p = path.clone();
        let last = tokio::task::spawn_blocking(move || probe(&p))
            .await
            .expect("probe task");
        match &last {
            Ok(p) if want(p) => return p.clone(),
            _ if Instant::now() >= deadline => panic!(
                "recording {} never matched: {last:?}\nnginx log:\n{}",
                path.display(),
                nginx.error_log()
            ),
            _ => sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_90_frames_that_nginx_records_intact() {
    push_and_verify("640x360", "baseline", 640, 360).await;
}

/// High profile: the AVC configuration record then carries chroma format and bit depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_high_profile_1280x720() {
    push_and_verify("1280x720", "high", 1280, 720).await;
}

/// Pushes 90 AUs of freshly encoded test pattern and checks nginx's recording against them.
async fn push_and_verify(size: &str, profile: &str, width: u32, height: u32) {
    require("ffprobe");
    let nginx = Nginx::start(peers::free_port());
    let input = encode(nginx.dir(), size, profile);
    let aus = split(&input);
    assert_eq!(aus.len(), 90);
    assert_eq!(aus.iter().filter(|a| a.idr).count(), 3);

    let target =
        RtmpTarget::parse(&format!("rtmp://127.0.0.1:{}/live/test", nginx.port())).expect("target");
    let (tx, rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let sink = tokio::spawn(run(
        target,
        RtmpOptions::default(),
        rx,
        ev_tx,
        cancel.clone(),
    ));

    assert_eq!(
        next_event(&mut ev_rx, Duration::from_secs(10)).await,
        SinkEvent::KeyframeWanted
    );
    assert_eq!(
        next_event(&mut ev_rx, Duration::from_secs(10)).await,
        SinkEvent::Publishing
    );
    for (i, au) in aus.iter().enumerate() {
        tx.send(frame(au, i as u32)).await.expect("sink alive");
    }
    // Cancel only once the sink has taken every frame (a taken frame is always sent whole).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tx.capacity() < tx.max_capacity() {
        assert!(Instant::now() < deadline, "sink stopped consuming frames");
        sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    assert_eq!(
        next_event(&mut ev_rx, Duration::from_secs(10)).await,
        SinkEvent::Stopped
    );
    timeout(Duration::from_secs(5), sink)
        .await
        .expect("sink returned")
        .expect("sink did not panic");

    let rec = nginx.recording("test");
    let p = probe_until(&nginx, "test", |p| p.frames >= 90).await;
    assert_eq!(
        p,
        VideoProbe {
            codec: "h264".into(),
            width,
            height,
            frames: 90
        },
        "nginx log:\n{}",
        nginx.error_log()
    );

    // Extract the elementary stream again and compare it AU by AU with what went in.
    let out = nginx.dir().join("out.h264");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&rec)
        .args(["-c:v", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(status.success());
    let recorded = split(&std::fs::read(&out).expect("read out.h264"));
    assert_eq!(recorded.len(), 90);
    assert_eq!(
        recorded.iter().map(|a| a.idr).collect::<Vec<_>>(),
        aus.iter().map(|a| a.idr).collect::<Vec<_>>()
    );
    assert!(
        payload_nals(&recorded) == payload_nals(&aus),
        "recorded AUs differ from input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_republishes_after_server_restart() {
    require("ffprobe");
    let mut nginx = Nginx::start(peers::free_port());
    let aus = split(&make_input(nginx.dir()));
    let target = RtmpTarget::parse(&format!("rtmp://127.0.0.1:{}/live/restart", nginx.port()))
        .expect("target");
    let opts = RtmpOptions {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..RtmpOptions::default()
    };
    let (tx, rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let sink = tokio::spawn(run(target, opts, rx, ev_tx, cancel.clone()));

    // Producer: loops over the test AUs at ~3x real time with a continuous clock, for at most
    // 3000 frames, until told to stop.
    let producing = CancellationToken::new();
    let producer = {
        let producing = producing.clone();
        tokio::spawn(async move {
            for i in 0..3000u32 {
                if producing.is_cancelled() {
                    break;
                }
                let au = &aus[i as usize % aus.len()];
                if tx.send(frame(au, i)).await.is_err() {
                    break;
                }
                sleep(Duration::from_millis(11)).await;
            }
        })
    };

    assert_eq!(
        next_event(&mut ev_rx, Duration::from_secs(10)).await,
        SinkEvent::KeyframeWanted
    );
    assert_eq!(
        next_event(&mut ev_rx, Duration::from_secs(10)).await,
        SinkEvent::Publishing
    );
    probe_until(&nginx, "restart", |p| p.frames >= 30).await;

    tokio::task::block_in_place(|| nginx.restart());

    let mut saw_reconnecting = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_event(&mut ev_rx, left).await {
            SinkEvent::Reconnecting {
                attempt, retry_in, ..
            } => {
                assert!(attempt >= 1 && retry_in <= Duration::from_secs(1));
                saw_reconnecting = true;
            }
            SinkEvent::KeyframeWanted => {}
            SinkEvent::Publishing => break,
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(
        saw_reconnecting,
        "Publishing again without Reconnecting first"
    );

    // The new publish truncates the recording, so every frame found now came after the restart.
    let p = probe_until(&nginx, "restart", |p| p.frames >= 60).await;
    assert_eq!((p.codec.as_str(), p.width, p.height), ("h264", 640, 360));

    producing.cancel();
    cancel.cancel();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if next_event(&mut ev_rx, left).await == SinkEvent::Stopped {
            break;
        }
    }
    timeout(Duration::from_secs(5), sink)
        .await
        .expect("sink returned")
        .expect("sink did not panic");
    timeout(Duration::from_secs(5), producer)
        .await
        .expect("producer returned")
        .expect("producer did not panic");
}
