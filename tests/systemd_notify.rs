//! The systemd notify protocol as the daemon speaks it, with this test in systemd's place:
//! READY=1 after start-up, WATCHDOG=1 at half the watchdog interval from the live loop (and
//! none while the process is hung), RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM.
//! systemd's own restart of a silent service is exercised by scripts/watchdog-test.sh (the real
//! systemd in a container); `systemd-analyze verify` checks the unit file in CI.

mod peers;

use peers::mosquitto::Mosquitto;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Collects notify datagrams until `pred` accepts one or `timeout` passes.
fn wait_for(
    sock: &UnixDatagram,
    timeout: Duration,
    seen: &mut Vec<String>,
    pred: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(left)).expect("set timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let hit = pred(&msg);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

fn count_within(sock: &UnixDatagram, window: Duration, what: &str) -> usize {
    let mut seen = Vec::new();
    let _ = wait_for(sock, window, &mut seen, |_| false);
    seen.iter().filter(|m| m.lines().any(|l| l == what)).count()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn speaks_the_notify_protocol() {
    let _serial = peers::exclusive();
    let broker = Mosquitto::start();
    let dir = peers::TestDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let config = dir.path().join("dockcast.toml");
    std::fs::write(&config, format!("[mqtt]\nurl = \"{}\"\n", broker.url())).expect("config");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_dockcast"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dockcast");
    let pid = daemon.id();
    let mut seen = Vec::new();

    let ready = wait_for(&sock, Duration::from_secs(20), &mut seen, |m| {
        m.lines().any(|l| l == "READY=1")
    });
    assert!(ready, "no READY=1; got {seen:?}");
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=connected to the broker")),
        "READY=1 should say the broker answered: {seen:?}"
    );

    // A 1 s watchdog is fed every 0.5 s.
    let pings = count_within(&sock, Duration::from_millis(2600), "WATCHDOG=1");
    assert!(
        (4..=7).contains(&pings),
        "{pings} WATCHDOG=1 in 2.6 s, expected ~5"
    );

    // Hung (stopped) process: no pings, which is what makes systemd restart it.
    signal(pid, "STOP");
    // A ping already in flight may still arrive: drain briefly first.
    let _ = count_within(&sock, Duration::from_millis(100), "WATCHDOG=1");
    let while_hung = count_within(&sock, Duration::from_millis(1500), "WATCHDOG=1");
    signal(pid, "CONT");
    assert_eq!(while_hung, 0, "a hung daemon must not feed the watchdog");
    let resumed = count_within(&sock, Duration::from_millis(1500), "WATCHDOG=1");
    assert!(resumed >= 2, "pings resume after SIGCONT: {resumed}");

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    seen.clear();
    signal(pid, "HUP");
    let reloading = wait_for(&sock, Duration::from_secs(5), &mut seen, |m| {
        m.lines().any(|l| l == "RELOADING=1")
    });
    assert!(reloading, "no RELOADING=1: {seen:?}");
    assert!(
        seen.iter().any(|m| m.contains("MONOTONIC_USEC=")),
        "{seen:?}"
    );
    let ready_again = wait_for(&sock, Duration::from_secs(5), &mut seen, |m| {
        m.lines().any(|l| l == "READY=1")
    });
    assert!(ready_again, "no READY=1 after reload: {seen:?}");

    // A broken config on reload is refused and the daemon keeps running.
    std::fs::write(&config, "[gateway]\nsn = \"not a serial\"\n").expect("config");
    seen.clear();
    signal(pid, "HUP");
    let kept = wait_for(&sock, Duration::from_secs(5), &mut seen, |m| {
        m.contains("STATUS=reload refused")
    });
    assert!(kept, "a bad reload should be refused: {seen:?}");
    assert!(
        daemon.try_wait().expect("try_wait").is_none(),
        "daemon died on a bad reload"
    );

    seen.clear();
    signal(pid, "TERM");
    let stopping = wait_for(&sock, Duration::from_secs(5), &mut seen, |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    assert!(stopping, "no STOPPING=1: {seen:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = daemon.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}

/// A reload asked for while start-up still waits for an unreachable broker (up to 15 s before
/// READY=1, as at boot on a 4G link) is served once the daemon runs, instead of SIGHUP's
/// default action ending the process; and `WATCHDOG_USEC=0` means no watchdog, not a live
/// manager that dies on a timer of zero period (a reload's READY=1 comes from the manager).
#[test]
fn a_reload_during_start_up_is_served_and_a_zero_watchdog_is_none() {
    let _serial = peers::exclusive();
    let dir = peers::TestDir::new("notify-early");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let config = dir.path().join("dockcast.toml");
    // Nothing listens there: the broker stays unreachable throughout.
    let broker = format!("mqtt://127.0.0.1:{}", peers::free_port());
    std::fs::write(&config, format!("[mqtt]\nurl = \"{broker}\"\n")).expect("config");
    let log = dir.path().join("daemon.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_dockcast"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "0")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn dockcast");
    let pid = daemon.id();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    // "starting" is logged once the config is loaded, which is after the signals are taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs().contains("starting") {
        assert!(Instant::now() < deadline, "no start-up line: {}", logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(pid, "HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.try_wait().expect("try_wait").is_none(),
        "a SIGHUP during start-up ended the daemon: {}",
        logs()
    );

    let mut seen = Vec::new();
    let ready = wait_for(&sock, Duration::from_secs(25), &mut seen, |m| {
        m.contains("STATUS=broker unreachable")
    });
    assert!(ready, "no READY=1 with the broker down: {seen:?}");
    let reloaded = wait_for(&sock, Duration::from_secs(5), &mut seen, |m| {
        m.contains("STATUS=config reloaded")
    });
    assert!(
        reloaded,
        "the early reload was not served: {seen:?}\n{}",
        logs()
    );
    assert!(
        !seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "no watchdog was asked for: {seen:?}"
    );

    signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = daemon.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 5 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}: {}", logs());
}
