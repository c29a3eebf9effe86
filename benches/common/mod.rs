//! Helpers the benchmarks share (each benchmark is a crate of its own and includes this with
//! `mod common;`).

#![allow(dead_code)]

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use std::fmt::Display;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `$name` parsed as a `T`, or `default` when it is unset or does not parse: the benchmarks'
/// knobs (rounds, soak length, restarts, workers).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of every thread of `pid` (a number or `self`) in seconds, from the nanosecond
/// counters in /proc/<pid>/task/*/schedstat: a passthrough push costs a few 10 ms clock ticks a
/// second, too few for the tick counters of /proc/<pid>/stat to resolve.
pub fn cpu_secs(pid: impl Display) -> f64 {
    cpu_secs_by_thread(pid).values().sum()
}

/// CPU seconds of each thread of `pid`, summed by thread name (`/proc/<pid>/task/*/comm`):
/// where a process's time goes, from the same counters as [`cpu_secs`].
pub fn cpu_secs_by_thread(pid: impl Display) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.filter_map(|t| t.ok()) {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
        if let Some(ns) = ns {
            *by_name.entry(name.trim().to_string()).or_insert(0.0) += ns / 1e9;
        }
    }
    by_name
}

/// CPU share (of one core) of `pid` over the next `secs` seconds.
pub fn cpu_share(pid: impl Display, secs: u64) -> f64 {
    let c0 = cpu_secs(&pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = cpu_secs(&pid);
    (c1 - c0) / t0.elapsed().as_secs_f64()
}

/// Resident set size of `pid` (a number or `self`) in KiB (VmRSS), 0 if it is gone.
pub fn rss_kib(pid: impl Display) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Writes `secs` seconds of ffmpeg's `testsrc2` at `w`x`h`, 30 fps, as x264 Annex-B to `path`:
/// 4 Mbit/s, an IDR every 30 frames and no B-frames, like a drone's feed (and because ffmpeg's
/// raw H.264 demuxer cannot time B-frames when it pushes the same file for comparison).
/// `preset` is x264's; `capped` adds a 4 Mbit/s VBV so that keyframes stay near the average.
pub fn h264_clip(path: &Path, (w, h): (u32, u32), secs: u32, preset: &str, capped: bool) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={w}x{h}:rate=30"))
        .args(["-t", &secs.to_string(), "-pix_fmt", "yuv420p"])
        .args([
            "-c:v", "libx264", "-bf", "0", "-preset", preset, "-b:v", "4M",
        ]);
    if capped {
        cmd.args(["-maxrate", "4M", "-bufsize", "4M"]);
    }
    let status = cmd
        .args(["-g", "30", "-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(path)
        .status()
        .expect("ffmpeg (scripts/setup-deps.sh installs it)");
    assert!(
        status.success(),
        "ffmpeg could not encode {}",
        path.display()
    );
}

/// The server side of an RTMP handshake on a blocking socket, for the benchmarks' own minimal
/// servers: the bytes the client sent after the handshake (its first chunks), or `None` if the
/// socket failed, the client misbehaved or `end` passed.
pub fn rtmp_server_handshake(s: &mut TcpStream, end: Instant) -> Option<Vec<u8>> {
    let mut hs = Handshake::new(PeerType::Server);
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < end {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        match hs.process_bytes(&buf[..n]).ok()? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                s.write_all(&response_bytes).ok()?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                s.write_all(&response_bytes).ok()?;
                return Some(remaining_bytes);
            }
        }
    }
    None
}
