//! RTMP sink benchmark, side by side with ffmpeg in the same run, against nginx-rtmp (and
//! node-media-server for reconnects) on 127.0.0.1:
//! - CPU of pushing a 1080p30 H.264 file in passthrough: dockcast's `file:` source path
//!   (`FileSource` + `sink::rtmp::run`, paced at 30 fps) against
//!   `ffmpeg -re -framerate 30 -i same.h264 -c copy -f flv rtmp://…`;
//! - reconnect time after a server restart: from the restarted server's port accepting again to
//!   the server accepting the new publish (the sink's publish counter), p50 and max of
//!   `DOCKCAST_BENCH_RESTARTS` (default 5) restarts 11 s apart, with the daemon's default
//!   backoff;
//! - a soak of 1080p passthrough for `DOCKCAST_SOAK_SECS` (default 60) seconds: RSS growth of
//!   the process between the end of a 5 s warm-up and the end of the soak.
//!
//! Run with `cargo bench --bench rtmp` (release build). `DOCKCAST_BENCH_WORKERS` sets the
//! runtime's worker threads (2): with 1, reading, pacing and sending share one thread, as in
//! ffmpeg. Every loop is bounded.

mod common;
#[path = "../tests/peers/mod.rs"]
mod peers;

use common::{cpu_share, env_or, rss_kib};

use dockcast::media::frame::{Codec, EncodedFrame};
use dockcast::media::quality::Rung;
use dockcast::sink::rtmp::{run_with_stats, RtmpOptions, RtmpStats, RtmpTarget};
use dockcast::source::file::FileSource;
use dockcast::source::{SourceFrame, VideoSource};
use peers::nginx::Nginx;
use peers::nms::Nms;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CPU_SECS: u64 = 10;
const FRAME: Duration = Duration::from_micros(33_333);

/// 14 s: ffmpeg's 2 s warm-up and 10 s window without looping (Debian's ffmpeg cannot
/// `-stream_loop` a raw H.264 file).
fn make_input(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("in-1080p.h264");
    common::h264_clip(&path, (1920, 1080), 14, "veryfast", true);
    path
}

/// A dockcast push of `file` to `url` on `rt`: FileSource paced at 30 fps into the sink.
struct Push {
    stats: Arc<RtmpStats>,
    cancel: CancellationToken,
    sink: tokio::task::JoinHandle<()>,
    producer: tokio::task::JoinHandle<()>,
}

impl Push {
    fn start(rt: &tokio::runtime::Runtime, file: &Path, url: &str) -> Push {
        let mut source = FileSource::open(&file.display().to_string()).expect("file source");
        let target = RtmpTarget::parse(url).expect("target");
        let (tx, rx) = mpsc::channel(30);
        let (ev_tx, mut ev_rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let stats = Arc::new(RtmpStats::default());
        let sink = rt.spawn(run_with_stats(
            target,
            RtmpOptions {
                framerate: Some(30.0),
                bitrate_kbps: Some(4000),
                ..RtmpOptions::default()
            },
            rx,
            ev_tx,
            cancel.clone(),
            stats.clone(),
        ));
        // Events are only drained here; the benchmark reads the counters.
        rt.spawn(async move { while ev_rx.recv().await.is_some() {} });
        let stop = cancel.clone();
        let producer = rt.spawn(async move {
            let rung = Rung {
                width: 1920,
                height: 1080,
                fps: 30,
                bitrate_kbps: 4000,
            };
            let mut tick = tokio::time::interval(FRAME);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut i = 0u32;
            while !stop.is_cancelled() {
                tick.tick().await;
                let Ok(SourceFrame::Encoded { data, keyframe }) = source.next_frame(&rung) else {
                    break;
                };
                let frame = EncodedFrame {
                    data,
                    pts: FRAME * i,
                    keyframe,
                    codec: Codec::H264,
                };
                // Like the pipeline: never block on a slow sink.
                let _ = tx.try_send(frame);
                i += 1;
            }
        });
        Push {
            stats,
            cancel,
            sink,
            producer,
        }
    }

    fn stop(self, rt: &tokio::runtime::Runtime) {
        self.cancel.cancel();
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.producer).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), self.sink).await;
        });
    }

    /// Waits (bounded) until the sink has published `n` times.
    fn wait_publishes(&self, n: u64, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.stats.publishes.load(Ordering::Relaxed) >= n {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Restarts a server `n` times under a running push and returns the times from its port
/// accepting again to the new publish.
fn reconnects(
    rt: &tokio::runtime::Runtime,
    file: &Path,
    url: &str,
    n: usize,
    mut restart: impl FnMut(),
) -> Vec<Duration> {
    let push = Push::start(rt, file, url);
    assert!(
        push.wait_publishes(1, Duration::from_secs(10)).is_some(),
        "first publish to {url} failed"
    );
    let mut times = Vec::new();
    for i in 0..n {
        // Let the stream run past the backoff ceiling (10 s by default), as outages hours apart
        // do: only a connection that held that long resets the backoff schedule, so restarts
        // seconds apart would measure an escalated backoff instead of a fresh reconnect.
        std::thread::sleep(Duration::from_secs(11));
        restart(); // returns once the port accepts again
        let accepting = Instant::now();
        match push.wait_publishes(i as u64 + 2, Duration::from_secs(30)) {
            Some(at) => times.push(at - accepting),
            None => panic!("no re-publish within 30 s after restart {}", i + 1),
        }
    }
    push.stop(rt);
    times
}

fn main() {
    let soak_secs: u64 = env_or("DOCKCAST_SOAK_SECS", 60);
    let restarts: usize = env_or("DOCKCAST_BENCH_RESTARTS", 5).max(1);
    let workers: usize = env_or("DOCKCAST_BENCH_WORKERS", 2).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let mut nginx = Nginx::start(peers::free_port());
    let file = make_input(nginx.dir());
    let port = nginx.port();

    // 1. CPU: dockcast (this process) and ffmpeg, one after the other, same file, same server.
    let push = Push::start(&rt, &file, &format!("rtmp://127.0.0.1:{port}/live/dc"));
    push.wait_publishes(1, Duration::from_secs(10))
        .expect("dockcast publish");
    std::thread::sleep(Duration::from_secs(2));
    let sent0 = push.stats.bytes_sent.load(Ordering::Relaxed);
    let dc_cpu = cpu_share("self", CPU_SECS);
    let dc_rate = (push.stats.bytes_sent.load(Ordering::Relaxed) - sent0) as f64 * 8.0
        / CPU_SECS as f64
        / 1e6;
    let dc_drops = push.stats.dropped_frames.load(Ordering::Relaxed);
    push.stop(&rt);

    let mut ff = Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-framerate", "30", "-i"])
        .arg(&file)
        .args(["-c", "copy", "-f", "flv"])
        .arg(format!("rtmp://127.0.0.1:{port}/live/ff"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(nginx.dir().join("ffmpeg.log")).expect("log"))
        .spawn()
        .expect("ffmpeg");
    std::thread::sleep(Duration::from_secs(2));
    let ff_cpu = cpu_share(ff.id(), CPU_SECS);
    let ff_alive = matches!(ff.try_wait(), Ok(None));
    assert!(
        ff_alive,
        "ffmpeg ended before the measurement did ({:?}): {}",
        ff.try_wait(),
        std::fs::read_to_string(nginx.dir().join("ffmpeg.log")).unwrap_or_default()
    );
    let _ = ff.kill();
    let _ = ff.wait();

    // 2. Reconnect after restarts: nginx-rtmp, then node-media-server.
    let mut nginx_times = reconnects(
        &rt,
        &file,
        &format!("rtmp://127.0.0.1:{port}/live/rc"),
        restarts,
        || nginx.restart(),
    );
    let nms_times = if peers::nms::available() {
        let mut nms = Nms::start();
        let url = format!("rtmp://127.0.0.1:{}/live/rc", nms.port());
        Some(reconnects(&rt, &file, &url, restarts, || nms.restart()))
    } else {
        None
    };

    // 3. Soak: RSS of this process over a long passthrough push.
    let push = Push::start(&rt, &file, &format!("rtmp://127.0.0.1:{port}/live/soak"));
    push.wait_publishes(1, Duration::from_secs(10))
        .expect("soak publish");
    std::thread::sleep(Duration::from_secs(5));
    let rss0 = rss_kib("self");
    let mut peak = rss0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(soak_secs) {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(rss_kib("self"));
    }
    let rss1 = rss_kib("self");
    let soak_drops = push.stats.dropped_frames.load(Ordering::Relaxed);
    let soak_publishes = push.stats.publishes.load(Ordering::Relaxed);
    push.stop(&rt);

    let n = nginx_times.len();
    let (ng50, ngmax) = (
        percentile(&mut nginx_times, 0.5),
        percentile(&mut nginx_times, 1.0),
    );
    println!();
    println!("| measure | dockcast | ffmpeg | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| CPU pushing 1080p30 H.264 file, passthrough ({CPU_SECS} s, one core = 100 %, {workers} runtime worker(s)) | {:.2} % | {:.2} % | {:.2} | ≤ 0.5× |",
        dc_cpu * 100.0,
        ff_cpu * 100.0,
        dc_cpu / ff_cpu.max(1e-9)
    );
    println!(
        "| dockcast send rate / dropped frames during the CPU run | {dc_rate:.2} Mbit/s / {dc_drops} | | | |"
    );
    println!(
        "| re-publish after nginx-rtmp restart, p50 / max ({n}) | {:.0} / {:.0} ms | | | p50 ≤ 1 s |",
        ms(ng50),
        ms(ngmax)
    );
    match nms_times {
        Some(mut t) => {
            let (p50, max) = (percentile(&mut t, 0.5), percentile(&mut t, 1.0));
            println!(
                "| re-publish after node-media-server restart, p50 / max ({}) | {:.0} / {:.0} ms | | | p50 ≤ 1 s |",
                t.len(),
                ms(p50),
                ms(max)
            );
        }
        None => println!("| re-publish after node-media-server restart | not run: node-media-server missing | | | |"),
    }
    println!(
        "| soak {soak_secs} s 1080p passthrough: RSS after warm-up → end (peak) | {:.1} → {:.1} MB ({:.1}), growth {:+.0} kB | | | < 1 MB |",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        peak as f64 / 1024.0,
        rss1 as f64 - rss0 as f64
    );
    println!("| soak: dropped frames / publishes | {soak_drops} / {soak_publishes} | | | 0 / 1 |");
}
