//! Media benchmarks, side by side with the reference tools in one run:
//!
//! 1. Encode throughput at 720p and 1080p: dockcast's encoder against GStreamer's
//!    `openh264enc` (same codec library, same settings) and ffmpeg's libx264
//!    ultrafast/zerolatency, all single-threaded, on the same raw frames read from a file;
//!    frames per wall-clock second and per CPU second (the tools' start-up taken off).
//! 2. CPU per passthrough stream (file source → RTMP, in process) against
//!    `ffmpeg -re -framerate 30 -i feed.h264 -c copy -f flv`, both pushing to an
//!    nginx-rtmp server (as the RTMP benchmark does; against `ffmpeg -listen` ffmpeg keeps
//!    128-byte chunks and writes each alone), each counted over 10 s after a 2 s warm-up;
//!    dockcast's CPU per frame by thread, and bare pushes of the same bytes for the least each
//!    threading shape can cost: blocking on one thread, blocking on a pacing and a writing
//!    thread, and two tasks on one current-thread tokio runtime (paced by tokio's timer or by a
//!    timerfd). Then the same from a payload feed, as deployed: a stand-in app writes the clip
//!    at 30 fps into a unix socket, read by dockcast's `feed:` source, by
//!    `ffmpeg -listen 1 -i unix:…` and by the bare pushes (socket read and feed parser in place
//!    of the pacing).
//! 3. Pipeline latency on passthrough: access unit written by the payload app (unix socket)
//!    → frame handed to the sink's queue, p50/p99.
//! 4. Peak RSS of the process at 1080p passthrough and at 720p encode.
//!
//! `cargo bench --bench encode` (needs ffmpeg, gst-launch-1.0 with openh264enc; prints what it
//! skips when a tool is missing). `DOCKCAST_BENCH_ENCODE_ONLY=1` runs only dockcast's encoder
//! (for the aarch64 build under qemu-user); `DOCKCAST_BENCH_PASSTHROUGH_ONLY=1` runs only the
//! passthrough CPU comparison, `DOCKCAST_BENCH_ROUNDS` times (1); `DOCKCAST_BENCH_ROUNDS` sets
//! the encode rounds (7).
//! Results and the commands are in BENCHMARKS.md.

mod common;
#[path = "../tests/peers/mod.rs"]
mod peers;

use bytes::Bytes;
use common::{cpu_secs, cpu_secs_by_thread};
use dockcast::media::encoder::H264Encoder;
use dockcast::media::frame::{Codec, EncodedFrame, RawFrame};
use dockcast::media::pipeline::{Pipeline, PipelineSpec};
use dockcast::media::quality::Rung;
use dockcast::sink::rtmp::{self, RtmpOptions, RtmpTarget};
use dockcast::source::SourceSpec;
use peers::nginx::Nginx;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn work_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("dockcast-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("bench dir");
    d
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Raw I420 frames of ffmpeg's `testsrc2` (moving, detailed content) in a file.
fn raw_frames(dir: &Path, w: u32, h: u32, n: u32) -> PathBuf {
    let path = dir.join(format!("frames-{w}x{h}.yuv"));
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={w}x{h}:rate=30"))
        .args([
            "-frames:v",
            &n.to_string(),
            "-pix_fmt",
            "yuv420p",
            "-f",
            "rawvideo",
        ])
        .arg(&path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ffmpeg could not make raw frames");
    path
}

/// Wall and CPU seconds (user + system, every thread) of one run of `cmd`, `None` when it fails.
fn timed(cmd: &mut Command) -> Option<Timing> {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = libc::pid_t::try_from(child.id()).ok()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unwaited child; both pointers outlive the call. wait4 (not
    // `Child::wait`) because it also returns the child's resource usage.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64();
    if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return None;
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Some(Timing {
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
    })
}

/// One timed run: wall-clock seconds, and the CPU seconds it used.
#[derive(Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: f64,
}

/// CPU seconds this thread has used (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu_secs() -> f64 {
    // SAFETY: an all-zero timespec is a valid value; clock_gettime only writes through the
    // pointer, which outlives the call, and cannot fail for this clock.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Rounds of each encoder, interleaved; the best round of each is compared, so a burst of
/// load from elsewhere on the machine hits one round, not one side.
fn rounds() -> usize {
    match common::env_or("DOCKCAST_BENCH_ROUNDS", 7) {
        0 => 7,
        n => n,
    }
}

/// dockcast's encoder on `frames`: its timing and the output bitrate in kbit/s.
fn encode_ours(frames: &[RawFrame], rung: Rung) -> (Timing, f64) {
    let mut enc = H264Encoder::new(rung, 30).expect("encoder");
    let t = Instant::now();
    let c = thread_cpu_secs();
    let mut out = 0usize;
    for (i, f) in frames.iter().enumerate() {
        if let Some(e) = enc
            .encode(f, Duration::from_millis(33 * i as u64))
            .expect("encode")
        {
            out += e.data.len();
        }
    }
    let timing = Timing {
        wall: t.elapsed().as_secs_f64(),
        cpu: thread_cpu_secs() - c,
    };
    let kbit = out as f64 * 8.0 / 1000.0 / (frames.len() as f64 / 30.0);
    (timing, kbit)
}

fn gst_openh264(file: &Path, w: u32, h: u32, kbps: u32) -> Command {
    let mut c = Command::new("gst-launch-1.0");
    c.arg("-q")
        .arg("filesrc")
        .arg(format!("location={}", file.display()))
        .arg("!")
        .arg("rawvideoparse")
        .arg(format!("width={w}"))
        .arg(format!("height={h}"))
        .args(["format=i420", "framerate=30/1", "!", "openh264enc"])
        .arg(format!("bitrate={}", kbps * 1000))
        .args(["gop-size=30", "complexity=low", "rate-control=bitrate"])
        .args(["scene-change-detection=false", "usage-type=camera"])
        // Off in dockcast's encoder (src/media/encoder.rs), on by default in openh264enc.
        .args(["background-detection=false", "adaptive-quantization=false"])
        .args(["multi-thread=1", "!", "fakesink"]);
    c
}

fn ffmpeg_x264(file: &Path, w: u32, h: u32, kbps: u32) -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-v", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s"])
        .arg(format!("{w}x{h}"))
        .args(["-r", "30", "-i"])
        .arg(file)
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args(["-b:v", &format!("{kbps}k"), "-g", "30", "-threads", "1"])
        .args(["-f", "null", "-"]);
    c
}

/// Best (highest) of the values seen, `None` when there were none.
fn best(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    v.into_iter().reduce(f64::max)
}

/// Lowest of the values seen, `None` when there were none.
fn least(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    v.into_iter().reduce(f64::min)
}

/// A reference encoder's rounds: full runs on `n` frames, and runs on the first frame only,
/// whose CPU time is the tool's start-up (process, plug-in registry, encoder set-up, reading the
/// file) and is taken off the full runs' so that the CPU figure is the cost per frame.
#[derive(Default)]
struct ToolRounds {
    full: Vec<Timing>,
    startup: Vec<Timing>,
}

impl ToolRounds {
    fn run(&mut self, full: &mut Command, one: &mut Command) {
        if let (Some(f), Some(o)) = (timed(full), timed(one)) {
            self.full.push(f);
            self.startup.push(o);
        }
    }

    /// Frames per wall-clock second of the best full run, start-up included.
    fn wall_fps(&self, n: u32) -> Option<f64> {
        best(self.full.iter().map(|t| n as f64 / t.wall))
    }

    /// Frames per CPU second, start-up taken off: the least CPU of the full runs less the least
    /// of the one-frame runs, over the frames in between.
    fn cpu_fps(&self, n: u32) -> Option<f64> {
        let full = least(self.full.iter().map(|t| t.cpu))?;
        let one = least(self.startup.iter().map(|t| t.cpu))?;
        (full > one).then(|| f64::from(n - 1) / (full - one))
    }

    fn rounds(&self, n: u32) -> String {
        self.full
            .iter()
            .map(|t| format!("{:.0}", n as f64 / t.wall))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Encode throughput. With `ours_only` (the run under qemu-user, where the reference tools
/// would run natively and a ratio would mean nothing) only dockcast's encoder runs.
///
/// Two figures per encoder: frames per wall-clock second (what a busy machine disturbs most,
/// and for the tools with their process start), and frames per CPU second with the tools'
/// start-up taken off, which load elsewhere on the machine barely moves. The ratio goal is read
/// on the second.
fn encode_throughput(dir: &Path, ours_only: bool) {
    let n_rounds = rounds();
    println!(
        "== encode throughput (1 thread each, same raw frames, IDR every 30, CBR; best of {n_rounds} interleaved rounds)"
    );
    for (w, h, kbps, n) in [(1280u32, 720u32, 1500u32, 300u32), (1920, 1080, 3000, 150)] {
        let file = raw_frames(dir, w, h, n);
        let bytes = std::fs::read(&file).expect("raw frames");
        let size = (w * h * 3 / 2) as usize;
        let one = dir.join(format!("frame-{w}x{h}.yuv"));
        std::fs::write(&one, &bytes[..size]).expect("one raw frame");
        let frames: Vec<RawFrame> = bytes
            .chunks_exact(size)
            .map(|c| RawFrame {
                width: w as usize,
                height: h as usize,
                data: c.to_vec(),
            })
            .collect();
        drop(bytes);
        let rung = Rung {
            width: w,
            height: h,
            fps: 30,
            bitrate_kbps: kbps,
        };
        let mut ours = Vec::new();
        let (mut gst, mut x264) = (ToolRounds::default(), ToolRounds::default());
        let mut kbit = 0.0;
        let use_gst = !ours_only && have("gst-launch-1.0");
        for _ in 0..n_rounds {
            let (t, k) = encode_ours(&frames, rung);
            ours.push(t);
            kbit = k;
            if use_gst {
                gst.run(
                    &mut gst_openh264(&file, w, h, kbps),
                    &mut gst_openh264(&one, w, h, kbps),
                );
            }
            if !ours_only {
                x264.run(
                    &mut ffmpeg_x264(&file, w, h, kbps),
                    &mut ffmpeg_x264(&one, w, h, kbps),
                );
            }
        }
        let wall = best(ours.iter().map(|t| n as f64 / t.wall)).expect("at least one round");
        let cpu = f64::from(n) / least(ours.iter().map(|t| t.cpu)).expect("at least one round");
        println!(
            "{w}x{h}: dockcast (openh264) {wall:.1} fps wall, {cpu:.1} fps CPU, {kbit:.0} kbit/s"
        );
        if !ours_only {
            for (name, tool) in [
                ("gst openh264enc", &gst),
                ("ffmpeg libx264 ultrafast/zerolatency", &x264),
            ] {
                match (tool.wall_fps(n), tool.cpu_fps(n)) {
                    (Some(tw), Some(tc)) => println!(
                        "{w}x{h}: {name} {tw:.1} fps wall (rounds {}; process start included) → dockcast/it = {:.2}; {tc:.1} fps CPU (start-up taken off) → dockcast/it = {:.2}",
                        tool.rounds(n),
                        wall / tw,
                        cpu / tc
                    ),
                    _ => println!("{w}x{h}: {name} not available or failed, skipped"),
                }
            }
        }
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(&one);
    }
}

/// Peak RSS of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The passthrough input: x264 `ultrafast`, 4 Mbit/s, IDR every 30 frames.
fn make_clip(dir: &Path, w: u32, h: u32, secs: u32) -> PathBuf {
    let path = dir.join(format!("feed-{w}x{h}.h264"));
    common::h264_clip(&path, (w, h), secs, "ultrafast", false);
    path
}

/// Streams `source` through dockcast's pipeline (passthrough) and RTMP sink; returns the CPU
/// seconds this process used in `secs` after a 2 s warm-up (connect, publish, the first
/// keyframe), as for ffmpeg, less the threads named `app` (the stand-in payload app of a feed
/// run, which is not dockcast's cost).
fn dockcast_passthrough(source: SourceSpec, app: Option<&str>, w: u32, h: u32, secs: u64) -> f64 {
    let server = Nginx::start(peers::free_port());
    let port = server.port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut inputs = BTreeMap::new();
    inputs.insert("normal".to_string(), source);
    let spec = PipelineSpec {
        inputs,
        input: "normal".into(),
        rung: Rung {
            width: w,
            height: h,
            fps: 30,
            bitrate_kbps: 4000,
        },
        gop_frames: 30,
        backend: Default::default(),
    };
    let (ftx, frx) = tokio::sync::mpsc::channel(60);
    let (etx, mut erx) = tokio::sync::mpsc::channel(16);
    let (stx, mut srx) = tokio::sync::mpsc::channel(16);
    let cancel = tokio_util::sync::CancellationToken::new();
    let target = RtmpTarget {
        tls: false,
        host: "127.0.0.1".into(),
        port,
        app: "live".into(),
        stream_key: "bench".into(),
        tc_url: format!("rtmp://127.0.0.1:{port}/live"),
    };
    let sink = rt.spawn(rtmp::run(
        target,
        RtmpOptions::default(),
        frx,
        stx,
        cancel.clone(),
    ));
    let pipeline = Pipeline::spawn(spec, ftx, etx).expect("pipeline");
    // Keyframe requests from the sink, as the session would forward them.
    let ctl = pipeline.controller();
    rt.spawn(async move {
        while let Some(ev) = srx.recv().await {
            if matches!(ev, dockcast::sink::SinkEvent::KeyframeWanted) {
                let _ = ctl.send(dockcast::media::pipeline::Control::Keyframe);
            }
        }
    });
    std::thread::sleep(WARM_UP);
    let frames_sent = || {
        pipeline
            .stats
            .frames_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let ours = || {
        let mut t = cpu_secs_by_thread("self");
        t.retain(|name, _| Some(name.as_str()) != app);
        t
    };
    let (threads0, sent0) = (ours(), frames_sent());
    std::thread::sleep(Duration::from_secs(secs));
    let threads = ours();
    let cpu = threads.values().sum::<f64>() - threads0.values().sum::<f64>();
    let window = frames_sent() - sent0;
    // Which thread pays what per frame: the pipeline thread paces and hands over, the
    // runtime's worker writes.
    if window > 0 {
        let per_frame: Vec<String> = threads
            .iter()
            .map(|(name, s)| (name, s - threads0.get(name).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.0)
            .map(|(name, d)| format!("{name} {:.0} µs", d / window as f64 * 1e6))
            .collect();
        println!(
            "  dockcast per frame ({window} frames): {} = {:.0} µs",
            per_frame.join(", "),
            cpu / window as f64 * 1e6
        );
    }
    let sent = frames_sent();
    drop(pipeline);
    cancel.cancel();
    let _ = rt.block_on(sink);
    drop(server);
    while let Ok(ev) = erx.try_recv() {
        println!("  pipeline event: {ev:?}");
    }
    println!("  dockcast sent {sent} frames");
    cpu
}

/// CPU per passthrough push: dockcast's pipeline and RTMP sink, then ffmpeg's `-c copy`, each
/// into its own nginx-rtmp for 10 s.
fn passthrough_cpu(clip: &Path) {
    println!("== passthrough, 1080p 4 Mbit/s clip → RTMP (nginx-rtmp as server)");
    let secs = 10;
    let file = SourceSpec::File(clip.display().to_string());
    let ours = dockcast_passthrough(file, None, 1920, 1080, secs);
    println!(
        "  dockcast file → pipeline → RTMP sink: {:.3} CPU s in {secs} s = {:.1} % of a core (whole process)",
        ours,
        ours / secs as f64 * 100.0
    );
    match ffmpeg_passthrough(clip, secs) {
        Some(ff) => println!(
            "  ffmpeg -re -framerate 30 -i feed.h264 -c copy -f flv: {ff:.3} CPU s in {secs} s = {:.1} % → dockcast/ffmpeg = {:.2}",
            ff / secs as f64 * 100.0,
            ours / ff
        ),
        None => println!("  ffmpeg passthrough failed, skipped"),
    }
    for shape in [
        Shape::OneThread,
        Shape::TwoThreads,
        Shape::Runtime(Clock::Tokio),
        Shape::Runtime(Clock::Timerfd),
    ] {
        let label = shape.label();
        match bare_passthrough(BareInput::File(clip), secs, shape) {
            Some(us) => println!("  bare push, {label} (same bytes): {us:.0} µs per frame"),
            None => println!("  bare push, {label}: publish failed, skipped"),
        }
    }
}

/// A blocking `std` socket behind tokio's IO traits, so that dockcast's own client can run the
/// publish handshake over it for [`bare_passthrough`]; every poll blocks and is ready.
struct Blocking(std::net::TcpStream);

impl tokio::io::AsyncRead for Blocking {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = std::io::Read::read(&mut &self.0, buf.initialize_unfilled())?;
        buf.advance(n);
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Blocking {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready((&self.0).write(buf))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Where a bare push takes its access units from.
enum BareInput<'a> {
    /// The clip's units, paced by `std::thread::sleep` (the shape of `file:` and `ffmpeg -re`).
    File(&'a Path),
    /// A unix socket at this path, into which a stand-in app writes the clip at 30 fps; units
    /// are cut by dockcast's feed parser as they arrive (the shape of `feed:`).
    Feed { sock: PathBuf, clip: &'a Path },
}

/// How a bare push spreads its work over threads.
#[derive(Clone, Copy)]
enum Shape {
    /// One thread reads, paces and writes, blocking (ffmpeg's shape).
    OneThread,
    /// An input thread hands each frame over a channel to a writing thread (the shape of
    /// dockcast's pipeline thread and sink).
    TwoThreads,
    /// One thread running a current-thread tokio runtime, with an input task handing each
    /// frame over a bounded tokio channel to a writing task: a file input paced by the given
    /// clock, a socket input woken by the socket; the write a tokio `TcpStream`'s. The shape of
    /// a pipeline whose sinks run on its own thread.
    Runtime(Clock),
}

/// What paces a file input on [`Shape::Runtime`].
#[derive(Clone, Copy)]
enum Clock {
    /// `tokio::time::sleep_until` per frame.
    Tokio,
    /// A periodic `timerfd` at the frame interval, awaited through `AsyncFd`: the runtime wakes
    /// for it as for a socket, and no runtime timer is re-armed per frame.
    Timerfd,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::OneThread => "one thread",
            Shape::TwoThreads => "two threads",
            Shape::Runtime(Clock::Tokio) => "one thread, current-thread runtime, two tasks",
            Shape::Runtime(Clock::Timerfd) => {
                "one thread, current-thread runtime, two tasks, timerfd clock"
            }
        }
    }
}

/// The least a passthrough push can do per frame, for scale: the input's access units, tagged
/// and chunked by dockcast's own code and written with one `write_all` per tag, in the given
/// [`Shape`] — no session, no stall timers, no status. Returns the CPU µs per frame of its
/// threads over `secs` after the warm-up, or `None` if the publish failed.
fn bare_passthrough(input: BareInput, secs: u64, shape: Shape) -> Option<f64> {
    use dockcast::sink::rtmp::client::RtmpConnection;
    use dockcast::sink::rtmp::flv::VideoTagger;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let server = Nginx::start(peers::free_port());
    let port = server.port();
    let target = RtmpTarget::parse(&format!("rtmp://127.0.0.1:{port}/live/bare")).ok()?;
    let socket = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut writer = socket.try_clone().ok()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok()?;
    let step = Duration::from_secs(5);
    let conn = rt
        .block_on(RtmpConnection::establish(
            Blocking(socket),
            &target,
            target.peer(),
            step,
            step,
        ))
        .ok()?;
    drop(rt);
    let mut wire = Wire {
        tagger: VideoTagger::new(Some(30.0), Some(4000)),
        conn,
    };
    let input = BareSource::open(input, secs)?;
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let threads: Vec<std::thread::JoinHandle<()>> = match shape {
        Shape::Runtime(clock) => vec![runtime_push(input, wire, writer, stop, clock)?],
        Shape::OneThread | Shape::TwoThreads => {
            let mut send = move |frame: &EncodedFrame| {
                for bytes in wire.chunks(frame) {
                    writer.write_all(&bytes).expect("nginx-rtmp took the frame");
                }
            };
            let mut next = input.blocking();
            if matches!(shape, Shape::TwoThreads) {
                let (tx, rx) = std::sync::mpsc::sync_channel::<EncodedFrame>(60);
                vec![
                    std::thread::Builder::new()
                        .name("bare-input".into())
                        .spawn(move || {
                            while !stop.load(Ordering::Relaxed) {
                                let Some(frame) = next() else { break };
                                if tx.send(frame).is_err() {
                                    break;
                                }
                            }
                        })
                        .ok()?,
                    std::thread::Builder::new()
                        .name("bare-writer".into())
                        .spawn(move || {
                            while let Ok(frame) = rx.recv() {
                                send(&frame);
                            }
                        })
                        .ok()?,
                ]
            } else {
                vec![std::thread::Builder::new()
                    .name("bare-one".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let Some(frame) = next() else { break };
                            send(&frame);
                        }
                    })
                    .ok()?]
            }
        }
    };
    std::thread::sleep(WARM_UP);
    let ours = |by: BTreeMap<String, f64>| -> f64 {
        by.iter()
            .filter(|(name, _)| name.starts_with("bare-"))
            .map(|(_, s)| s)
            .sum()
    };
    let cpu0 = ours(cpu_secs_by_thread("self"));
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = ours(cpu_secs_by_thread("self")) - cpu0;
    done.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(server);
    Some(cpu / (secs * 30) as f64 * 1e6)
}

/// The passthrough clip's format, which a `file:` source is asked for (and passes through).
const CLIP_RUNG: Rung = Rung {
    width: 1920,
    height: 1080,
    fps: 30,
    bitrate_kbps: 4000,
};

/// The frame interval of every bare push (the clip's 30 fps).
const BARE_INTERVAL: Duration = Duration::from_nanos(1_000_000_000 / 30);

/// What a bare push writes for a frame: dockcast's FLV tagging and RTMP chunking, as its sink
/// does them.
struct Wire {
    tagger: dockcast::sink::rtmp::flv::VideoTagger,
    conn: dockcast::sink::rtmp::client::RtmpConnection<Blocking>,
}

impl Wire {
    /// The chunked bytes of the frame's tags, one buffer per tag.
    fn chunks(&mut self, frame: &EncodedFrame) -> Vec<Bytes> {
        self.tagger
            .tags_for(frame)
            .unwrap_or_default()
            .iter()
            .map(|tag| self.conn.encode(tag).expect("chunked"))
            .collect()
    }
}

/// A bare push's input, opened (the file, or the app connected) before its threads start so
/// that a failure returns `None`.
enum BareSource {
    File(dockcast::source::file::FileSource),
    Feed {
        app: std::os::unix::net::UnixStream,
        parser: Box<dockcast::source::feed::FeedParser>,
    },
}

impl BareSource {
    fn open(input: BareInput, secs: u64) -> Option<BareSource> {
        use dockcast::source::feed::{FeedParser, SeiPolicy};
        Some(match input {
            BareInput::File(clip) => BareSource::File(
                dockcast::source::file::FileSource::open(&clip.display().to_string()).ok()?,
            ),
            BareInput::Feed { sock, clip } => {
                let _ = std::fs::remove_file(&sock);
                let listener = std::os::unix::net::UnixListener::bind(&sock).ok()?;
                let data = std::fs::read(clip).ok()?;
                // The warm-up, the window and a second to spare; the app then ends, and the
                // input with it.
                let pictures = ((WARM_UP.as_secs() + secs + 1) * 30) as usize;
                drop(feed_app(sock, data, pictures));
                BareSource::Feed {
                    app: listener.accept().ok()?.0,
                    parser: Box::new(FeedParser::new(SeiPolicy::StripPrivate)),
                }
            }
        })
    }

    /// The blocking shapes' input: the next frame, the file paced by `std::thread::sleep`,
    /// or `None` when the app has gone.
    fn blocking(mut self) -> impl FnMut() -> Option<EncodedFrame> + Send {
        let mut stamps = Stamps::default();
        let mut due = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        move || match &mut self {
            BareSource::File(source) => {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                due += BARE_INTERVAL;
                let (data, keyframe) = file_unit(source);
                Some(stamps.frame(data, keyframe))
            }
            BareSource::Feed { app, parser } => loop {
                if let Some(unit) = parser.pull() {
                    return Some(stamps.frame(unit.data, unit.keyframe));
                }
                match std::io::Read::read(app, &mut buf) {
                    Ok(0) | Err(_) => return None,
                    Ok(got) => parser.push(&buf[..got], 0).ok()?,
                }
            },
        }
    }
}

/// The clip's next access unit and whether it is a keyframe.
fn file_unit(source: &mut dockcast::source::file::FileSource) -> (Bytes, bool) {
    use dockcast::source::{SourceFrame, VideoSource};
    let Ok(SourceFrame::Encoded { data, keyframe }) = source.next_frame(&CLIP_RUNG) else {
        panic!("a file source yields encoded units");
    };
    (data, keyframe)
}

/// Stamps a bare push's frames one interval apart.
#[derive(Default)]
struct Stamps {
    frames: u32,
}

impl Stamps {
    fn frame(&mut self, data: Bytes, keyframe: bool) -> EncodedFrame {
        let pts = BARE_INTERVAL * self.frames;
        self.frames += 1;
        EncodedFrame {
            data,
            pts,
            keyframe,
            codec: Codec::H264,
        }
    }
}

/// [`Clock`] at work on a runtime: one tick per frame.
enum FrameClock {
    Tokio(tokio::time::Instant),
    Timerfd(tokio::io::unix::AsyncFd<std::fs::File>),
}

impl FrameClock {
    fn new(clock: Clock) -> FrameClock {
        match clock {
            Clock::Tokio => FrameClock::Tokio(tokio::time::Instant::now()),
            // SAFETY: the `File` owns the timerfd, which nothing else closes or replaces while
            // the `AsyncFd` holds it.
            Clock::Timerfd => FrameClock::Timerfd(unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    timerfd(BARE_INTERVAL),
                    tokio::io::Interest::READABLE,
                )
                .expect("registered")
            }),
        }
    }

    async fn tick(&mut self) {
        match self {
            FrameClock::Tokio(due) => {
                tokio::time::sleep_until(*due).await;
                *due += BARE_INTERVAL;
            }
            FrameClock::Timerfd(ticks) => {
                let _ = ticks
                    .async_io(tokio::io::Interest::READABLE, |fd| {
                        let mut expirations = [0u8; 8];
                        std::io::Read::read(&mut &*fd, &mut expirations)
                    })
                    .await;
            }
        }
    }
}

/// [`Shape::Runtime`]'s thread: an input task and a writing task on one current-thread tokio
/// runtime, the input handing each frame to the writer over a bounded channel.
fn runtime_push(
    input: BareSource,
    mut wire: Wire,
    writer: std::net::TcpStream,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clock: Clock,
) -> Option<std::thread::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    writer.set_nonblocking(true).ok()?;
    if let BareSource::Feed { app, .. } = &input {
        app.set_nonblocking(true).ok()?;
    }
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<EncodedFrame>(60);
            let mut writer = tokio::net::TcpStream::from_std(writer).expect("registered");
            let sink = tokio::spawn(async move {
                while let Some(frame) = rx.recv().await {
                    for bytes in wire.chunks(&frame) {
                        writer
                            .write_all(&bytes)
                            .await
                            .expect("nginx-rtmp took the frame");
                    }
                }
            });
            let mut stamps = Stamps::default();
            match input {
                BareSource::File(mut source) => {
                    let mut clock = FrameClock::new(clock);
                    while !stop.load(Ordering::Relaxed) {
                        clock.tick().await;
                        let (data, keyframe) = file_unit(&mut source);
                        if tx.send(stamps.frame(data, keyframe)).await.is_err() {
                            break;
                        }
                    }
                }
                BareSource::Feed { app, mut parser } => {
                    let mut app = tokio::net::UnixStream::from_std(app).expect("registered");
                    let mut buf = vec![0u8; 64 * 1024];
                    'feed: while !stop.load(Ordering::Relaxed) {
                        while let Some(unit) = parser.pull() {
                            let frame = stamps.frame(unit.data, unit.keyframe);
                            if tx.send(frame).await.is_err() {
                                break 'feed;
                            }
                        }
                        match app.read(&mut buf).await {
                            Ok(got) if got > 0 && parser.push(&buf[..got], 0).is_ok() => {}
                            _ => break,
                        }
                    }
                }
            }
            drop(tx);
            let _ = sink.await;
        })
    };
    std::thread::Builder::new()
        .name("bare-runtime".into())
        .spawn(run)
        .ok()
}

/// A non-blocking periodic `timerfd` on the monotonic clock, first expiring at once.
fn timerfd(interval: Duration) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls; the descriptor is checked before it is owned.
    unsafe {
        let fd = libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        );
        assert!(
            fd >= 0,
            "timerfd_create: {}",
            std::io::Error::last_os_error()
        );
        let period = libc::timespec {
            tv_sec: interval.as_secs() as libc::time_t,
            tv_nsec: interval.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: libc::timespec {
                tv_sec: 0,
                tv_nsec: 1,
            },
        };
        let set = libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut());
        assert!(
            set == 0,
            "timerfd_settime: {}",
            std::io::Error::last_os_error()
        );
        std::fs::File::from_raw_fd(fd)
    }
}

/// How long both pushes run before their CPU is counted: process start, probing, connect and
/// publish are not per-stream cost.
const WARM_UP: Duration = Duration::from_secs(2);

/// `ffmpeg -re -framerate 30 -i clip -c copy -f flv`: the CPU seconds it used in `secs` after
/// the warm-up; `None` if it could not run or ended early (the clip must outlast the window:
/// Debian's ffmpeg cannot `-stream_loop` a raw H.264 file).
fn ffmpeg_passthrough(clip: &Path, secs: u64) -> Option<f64> {
    let server = Nginx::start(peers::free_port());
    let port = server.port();
    let child = Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-framerate", "30", "-i"])
        .arg(clip)
        .args(["-c", "copy", "-f", "flv"])
        .arg(format!("rtmp://127.0.0.1:{port}/live/ffmpeg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = child.ok()?;
    std::thread::sleep(WARM_UP);
    let cpu0 = cpu_secs(child.id());
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = cpu_secs(child.id()) - cpu0;
    // ffmpeg paces itself at 30 fps (`-re -framerate 30`).
    println!(
        "  ffmpeg per frame ({} frames): {:.0} µs",
        secs * 30,
        cpu / (secs * 30) as f64 * 1e6
    );
    let alive = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    drop(server);
    alive.then_some(cpu)
}

/// Where each picture of an x264 Annex-B clip begins: the start code of an SPS, or of a slice
/// that follows a slice; the clip's length closes the last one. x264 writes IDR slices with
/// 3-byte start codes and the rest with 4, so both count (a 4-byte one begins a byte earlier).
fn picture_starts(data: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut seen_slice = false;
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i..i + 3] != [0, 0, 1] {
            i += 1;
            continue;
        }
        let at = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
        let ty = data[i + 3] & 0x1f;
        if (ty == 7 || ty == 1 || ty == 5) && (seen_slice || starts.is_empty()) {
            starts.push(at);
            seen_slice = false;
        }
        if ty == 1 || ty == 5 {
            seen_slice = true;
        }
        i += 3;
    }
    starts.push(data.len());
    starts
}

/// Connects to a feed socket that its listener may not have made yet (for up to 10 s).
fn connect_feed(sock: &Path) -> Option<std::os::unix::net::UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(sock) {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Name of the stand-in payload app's thread, whose CPU a feed run leaves out.
const FEED_APP: &str = "feed-app";

/// A stand-in payload app on a thread of its own: connects to `sock` and writes the clip's
/// pictures, one `write_all` each, at 30 fps, until `pictures` are written, the clip ends or
/// the reader goes away.
fn feed_app(sock: PathBuf, data: Vec<u8>, pictures: usize) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(FEED_APP.into())
        .spawn(move || {
            let Some(mut s) = connect_feed(&sock) else {
                println!("  feed app: {} never appeared", sock.display());
                return;
            };
            let starts = picture_starts(&data);
            let t0 = Instant::now();
            for (k, w) in starts.windows(2).take(pictures).enumerate() {
                let due = t0 + Duration::from_nanos(33_333_333 * k as u64);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                if s.write_all(&data[w[0]..w[1]]).is_err() {
                    return;
                }
            }
        })
        .expect("feed app thread")
}

/// CPU per passthrough stream from a payload feed, the shape of a deployment: the stand-in app
/// writes the clip at 30 fps into a unix socket, once to dockcast's `feed:` source (read on the
/// pipeline's thread, then the RTMP sink) and once to `ffmpeg -f h264 -framerate 30 -listen 1 -i
/// unix:… -c copy -f flv`, each pushing into its own nginx-rtmp for 10 s after the warm-up.
fn feed_passthrough_cpu(dir: &Path, clip: &Path) {
    println!("== passthrough from a payload feed, 1080p 4 Mbit/s at 30 fps over a unix socket → RTMP (nginx-rtmp as server)");
    let secs = 10;
    let data = std::fs::read(clip).expect("clip");
    // The warm-up, the window and a second to spare.
    let pictures = ((WARM_UP.as_secs() + secs + 1) * 30) as usize;
    let sock = dir.join("cpu.sock");
    let app = feed_app(sock.clone(), data.clone(), pictures);
    let spec = format!("feed:unix:{}", sock.display())
        .parse::<SourceSpec>()
        .expect("feed uri");
    let ours = dockcast_passthrough(spec, Some(FEED_APP), 1920, 1080, secs);
    let _ = app.join();
    println!(
        "  dockcast feed:unix → pipeline → RTMP sink: {ours:.3} CPU s in {secs} s (app thread left out)"
    );
    let sock = dir.join("ffmpeg.sock");
    let _ = std::fs::remove_file(&sock);
    let server = Nginx::start(peers::free_port());
    let child = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "h264",
            "-framerate",
            "30",
            "-listen",
            "1",
            "-i",
        ])
        .arg(format!("unix:{}", sock.display()))
        .args(["-c", "copy", "-f", "flv"])
        .arg(format!(
            "rtmp://127.0.0.1:{}/live/ffmpeg-feed",
            server.port()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        println!("  ffmpeg could not start, skipped");
        return;
    };
    let app = feed_app(sock, data, pictures);
    std::thread::sleep(WARM_UP);
    let cpu0 = cpu_secs(child.id());
    std::thread::sleep(Duration::from_secs(secs));
    let ff = cpu_secs(child.id()) - cpu0;
    let alive = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    let _ = app.join();
    drop(server);
    if !alive {
        println!("  ffmpeg ended early, skipped");
        return;
    }
    // The app writes 30 pictures a second, which ffmpeg forwards as they come.
    let ff_frame = ff / (secs * 30) as f64 * 1e6;
    println!(
        "  ffmpeg -f h264 -framerate 30 -listen 1 -i unix:… -c copy -f flv: {ff:.3} CPU s in {secs} s, {ff_frame:.0} µs per frame → dockcast/ffmpeg = {:.2}",
        ours / ff
    );
    // What one thread per stream could reach on this path, and the two-thread shape.
    for shape in [
        Shape::OneThread,
        Shape::TwoThreads,
        Shape::Runtime(Clock::Tokio),
    ] {
        let label = shape.label();
        let input = BareInput::Feed {
            sock: dir.join("bare.sock"),
            clip,
        };
        match bare_passthrough(input, secs, shape) {
            Some(us) => println!(
                "  bare push from the socket, {label} (read, split, tag, write): {us:.0} µs per frame → ÷ ffmpeg = {:.2}",
                us / ff_frame
            ),
            None => println!("  bare push from the socket, {label}: failed, skipped"),
        }
    }
}

/// Access unit written by the "app" → frame in the sink queue, over a unix feed at 30 fps.
fn feed_latency(dir: &Path, clip: &Path) {
    let sock = dir.join("lat.sock");
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "normal".to_string(),
        format!("feed:unix:{}", sock.display())
            .parse::<SourceSpec>()
            .expect("feed uri"),
    );
    let spec = PipelineSpec {
        inputs,
        input: "normal".into(),
        rung: Rung {
            width: 1920,
            height: 1080,
            fps: 30,
            bitrate_kbps: 4000,
        },
        gop_frames: 30,
        backend: Default::default(),
    };
    let (ftx, mut frx) = tokio::sync::mpsc::channel(60);
    let (etx, _erx) = tokio::sync::mpsc::channel(16);
    let pipeline = Pipeline::spawn(spec, ftx, etx).expect("pipeline");
    let data = std::fs::read(clip).expect("clip");
    let starts = picture_starts(&data);
    let mut s = connect_feed(&sock).expect("feed socket never appeared");
    // Picture k is complete once the first bytes of k+1 are written with it (as callback
    // buffers end anywhere); the write time is what the latency is measured from.
    let n = starts.len() - 2;
    let writer = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut written = Vec::with_capacity(n);
        for k in 0..n {
            let due = t0 + Duration::from_nanos(33_333_333 * k as u64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let end = (starts[k + 1] + 6).min(data.len());
            let from = if k == 0 { 0 } else { starts[k] + 6 };
            let _ = s.write_all(&data[from..end]);
            written.push(Instant::now());
        }
        written
    });
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while got.len() < n && Instant::now() < end {
        match frx.try_recv() {
            Ok(_) => got.push(Instant::now()),
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
        if writer.is_finished() && frx.is_empty() && got.len() + 2 >= n {
            break;
        }
    }
    let written = writer.join().expect("writer");
    drop(pipeline);
    let mut lat: Vec<f64> = got
        .iter()
        .zip(&written)
        .map(|(g, w)| g.saturating_duration_since(*w).as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    if lat.is_empty() {
        println!("feed latency: no frames");
        return;
    }
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "passthrough latency, app write → sink queue ({} frames, 1080p, 0.2 ms poll granularity): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

/// A minimal RTMP server (rml_rtmp's server session) that accepts one publish and reports when
/// each video frame's last byte has arrived, by its RTMP timestamp.
fn mini_rtmp_server(listener: std::net::TcpListener, out: std::sync::mpsc::Sender<(u32, Instant)>) {
    use rml_rtmp::sessions::{
        ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
    };
    use std::io::Read;
    let Ok((mut s, _)) = listener.accept() else {
        return;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let end = Instant::now() + Duration::from_secs(120);
    let Some(mut input) = common::rtmp_server_handshake(&mut s, end) else {
        return;
    };
    let mut buf = vec![0u8; 1 << 16];
    let Ok((mut session, initial)) = ServerSession::new(ServerSessionConfig::new()) else {
        return;
    };
    let mut pending: std::collections::VecDeque<ServerSessionResult> = initial.into();
    // A latency run lasts seconds; `end` bounds the session whatever the sink does.
    while Instant::now() < end {
        if !input.is_empty() {
            match session.handle_input(&input) {
                Ok(r) => pending.extend(r),
                Err(_) => return,
            }
        }
        let arrived = Instant::now();
        while let Some(r) = pending.pop_front() {
            match r {
                ServerSessionResult::OutboundResponse(p) if s.write_all(&p.bytes).is_err() => {
                    return;
                }
                ServerSessionResult::RaisedEvent(
                    ServerSessionEvent::ConnectionRequested { request_id, .. }
                    | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                ) => {
                    if let Ok(r) = session.accept_request(request_id) {
                        pending.extend(r);
                    }
                }
                // AVC packet type 1: a picture (0 is the sequence header).
                ServerSessionResult::RaisedEvent(ServerSessionEvent::VideoDataReceived {
                    data,
                    timestamp,
                    ..
                }) if data.get(1) == Some(&1) => {
                    let _ = out.send((timestamp.value, arrived));
                }
                _ => {}
            }
        }
        input = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf[..n].to_vec(),
        };
    }
}

/// Frame ready (the pipeline hands it over) → its last byte received by an RTMP server on
/// loopback, through dockcast's own RTMP sink, for a passthrough 1080p file source.
fn wire_latency(clip: &Path, secs: u64) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || mini_rtmp_server(listener, tx));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "normal".to_string(),
        SourceSpec::File(clip.display().to_string()),
    );
    let spec = PipelineSpec {
        inputs,
        input: "normal".into(),
        rung: Rung {
            width: 1920,
            height: 1080,
            fps: 30,
            bitrate_kbps: 4000,
        },
        gop_frames: 30,
        backend: Default::default(),
    };
    let (ftx, mut frx) = tokio::sync::mpsc::channel::<dockcast::media::frame::EncodedFrame>(60);
    let (sink_tx, sink_rx) = tokio::sync::mpsc::channel(60);
    let (etx, _erx) = tokio::sync::mpsc::channel(16);
    let (stx, mut srx) = tokio::sync::mpsc::channel(16);
    let ready = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let r2 = std::sync::Arc::clone(&ready);
    // Stamps each frame as the pipeline hands it over, then passes it on to the sink.
    rt.spawn(async move {
        while let Some(f) = frx.recv().await {
            if let Ok(mut m) = r2.lock() {
                m.insert(f.pts.as_millis() as u32, Instant::now());
            }
            if sink_tx.send(f).await.is_err() {
                break;
            }
        }
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let target = RtmpTarget {
        tls: false,
        host: "127.0.0.1".into(),
        port,
        app: "live".into(),
        stream_key: "bench".into(),
        tc_url: format!("rtmp://127.0.0.1:{port}/live"),
    };
    let sink = rt.spawn(rtmp::run(
        target,
        RtmpOptions::default(),
        sink_rx,
        stx,
        cancel.clone(),
    ));
    let pipeline = Pipeline::spawn(spec, ftx, etx).expect("pipeline");
    let ctl = pipeline.controller();
    rt.spawn(async move {
        while let Some(ev) = srx.recv().await {
            if matches!(ev, dockcast::sink::SinkEvent::KeyframeWanted) {
                let _ = ctl.send(dockcast::media::pipeline::Control::Keyframe);
            }
        }
    });
    std::thread::sleep(Duration::from_secs(secs));
    drop(pipeline);
    cancel.cancel();
    let _ = rt.block_on(sink);
    let _ = server.join();
    let ready = ready.lock().map(|m| m.clone()).unwrap_or_default();
    let mut lat: Vec<f64> = rx
        .try_iter()
        .filter_map(|(ts, at)| {
            let t0 = ready.get(&ts)?;
            Some(at.saturating_duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    if lat.is_empty() {
        println!("frame-to-wire latency: no frames matched");
        return;
    }
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "passthrough frame-to-wire latency, pipeline hand-over → last byte at an RTMP server on loopback ({} frames, 1080p 4 Mbit/s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

/// Peak RSS of a fresh process doing one job (`--rss-encode-720p`, `--rss-passthrough-1080p`),
/// so one job's allocations do not show in the other's figure.
fn rss_child(flag: &str) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe).arg(flag).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RSS ")?.trim().parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it,
    // where a minute of encoding would only slow the test suite down.
    let is_child = args.iter().any(|a| a.starts_with("--rss-"));
    if !is_child && !args.iter().any(|a| a == "--bench") {
        println!("encode benchmark: run with `cargo bench --bench encode`");
        return;
    }
    if args.iter().any(|a| a == "--rss-encode-720p") {
        let dir = work_dir();
        let file = raw_frames(&dir, 1280, 720, 60);
        let rung = Rung {
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 1500,
        };
        let mut enc = H264Encoder::new(rung, 30).expect("encoder");
        // One reused frame read from disk, as a capture source reuses its buffer.
        let mut frame = RawFrame::black(1280, 720);
        let mut raw = std::fs::File::open(&file).expect("raw");
        let mut i = 0u64;
        while std::io::Read::read_exact(&mut raw, &mut frame.data).is_ok() {
            let _ = enc.encode(&frame, Duration::from_millis(33 * i));
            i += 1;
        }
        let _ = std::fs::remove_dir_all(&dir);
        println!("RSS {}", peak_rss_kib());
        return;
    }
    if args.iter().any(|a| a == "--rss-passthrough-1080p") {
        let dir = work_dir();
        let clip = make_clip(&dir, 1920, 1080, 10);
        let file = SourceSpec::File(clip.display().to_string());
        dockcast_passthrough(file, None, 1920, 1080, 5);
        let _ = std::fs::remove_dir_all(&dir);
        println!("RSS {}", peak_rss_kib());
        return;
    }
    if !have("ffmpeg") {
        println!("ffmpeg not found: run scripts/setup-deps.sh");
        return;
    }
    let dir = work_dir();
    if std::env::var_os("DOCKCAST_BENCH_ENCODE_ONLY").is_some() {
        encode_throughput(&dir, true);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    // Only the passthrough CPU comparison, `DOCKCAST_BENCH_ROUNDS` times (default 1): for work
    // on the frame path, where one pair of pushes is too noisy to judge a change by.
    if std::env::var_os("DOCKCAST_BENCH_PASSTHROUGH_ONLY").is_some() {
        let clip = make_clip(&dir, 1920, 1080, 14);
        for _ in 0..common::env_or("DOCKCAST_BENCH_ROUNDS", 1) {
            passthrough_cpu(&clip);
            feed_passthrough_cpu(&dir, &clip);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    encode_throughput(&dir, false);

    // 14 s: the warm-up and the window without looping.
    let clip = make_clip(&dir, 1920, 1080, 14);
    passthrough_cpu(&clip);
    feed_passthrough_cpu(&dir, &clip);
    feed_latency(&dir, &clip);
    wire_latency(&clip, 10);
    let _ = std::fs::remove_dir_all(&dir);
    println!("== peak RSS, one fresh process per job");
    match rss_child("--rss-passthrough-1080p") {
        Some(k) => println!("  1080p passthrough (file → pipeline → RTMP): {k} KiB"),
        None => println!("  1080p passthrough: not measured"),
    }
    match rss_child("--rss-encode-720p") {
        Some(k) => {
            println!("  720p encode (60 frames read from disk into one reused frame): {k} KiB")
        }
        None => println!("  720p encode: not measured"),
    }
}
