//! Helpers the benchmarks share (each benchmark is a crate of its own and includes this with
//! `mod common;`).

#![allow(dead_code)]

use std::fmt::Display;
use std::time::{Duration, Instant};

/// CPU time of every thread of `pid` (a number or `self`) in seconds, from the nanosecond
/// counters in /proc/<pid>/task/*/schedstat: a passthrough push costs a few 10 ms clock ticks a
/// second, too few for the tick counters of /proc/<pid>/stat to resolve.
pub fn cpu_secs(pid: impl Display) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// CPU share (of one core) of `pid` over the next `secs` seconds.
pub fn cpu_share(pid: impl Display, secs: u64) -> f64 {
    let c0 = cpu_secs(&pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = cpu_secs(&pid);
    (c1 - c0) / t0.elapsed().as_secs_f64()
}
