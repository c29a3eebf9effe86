//! Board figures: start-up time to READY=1 (config loaded, broker answered), idle RSS, and
//! the release binary sizes per target. Runs the binary cargo built, or `$DOCKCAST_BIN`
//! through `$DOCKCAST_RUNNER` (e.g. the aarch64 build under qemu-aarch64, for a relative ARM
//! figure). Run with `cargo bench --bench board`.

mod common;
#[path = "../tests/peers/mod.rs"]
mod peers;

use common::rss_kib;
use peers::mosquitto::Mosquitto;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

const RUNS: usize = 5;

fn main() {
    let broker = Mosquitto::start();
    let dir = peers::TestDir::new("board-bench");
    let config = dir.path().join("dockcast.toml");
    std::fs::write(&config, format!("[mqtt]\nurl = \"{}\"\n", broker.url())).expect("config");
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for i in 0..RUNS {
        let sock_path = dir.path().join(format!("notify-{i}.sock"));
        let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let t0 = Instant::now();
        let mut child = peers::daemon::daemon_command()
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dockcast");
        let mut buf = [0u8; 512];
        loop {
            let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break;
            }
        }
        ready.push(t0.elapsed());
        std::thread::sleep(Duration::from_secs(2));
        rss.push(rss_kib(child.id()));
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    ready.sort();
    rss.sort();
    let bin =
        std::env::var("DOCKCAST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dockcast").into());
    let runner = peers::daemon::runner().unwrap_or_default();
    println!("dockcast board benchmark: {bin} {runner}");
    println!(
        "start-up to READY=1 (broker up), median of {RUNS}: {:.1} ms",
        ready[RUNS / 2].as_secs_f64() * 1000.0
    );
    println!(
        "idle RSS 2 s after READY, median of {RUNS}: {:.1} MB",
        rss[RUNS / 2] as f64 / 1024.0
    );
    if !runner.is_empty() {
        println!("(under {runner}: RSS is the emulator's, start-up includes emulation)");
    }
    for target in [
        "",
        "aarch64-unknown-linux-gnu/",
        "armv7-unknown-linux-gnueabihf/",
    ] {
        let path = format!(
            "{}/target/{target}release/dockcast",
            env!("CARGO_MANIFEST_DIR")
        );
        if let Ok(meta) = std::fs::metadata(&path) {
            let name = if target.is_empty() {
                "x86_64 (host)"
            } else {
                target.trim_end_matches('/')
            };
            println!(
                "release binary {name}: {:.2} MB (stripped)",
                meta.len() as f64 / 1e6
            );
        }
    }
}
