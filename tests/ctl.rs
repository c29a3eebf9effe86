//! `dockcast ctl` as operators run it, against a real mosquitto: what reaches the broker, what
//! it prints when it cannot, and that no secret it was given is printed.

mod peers;

use peers::daemon::daemon_command;
use peers::mosquitto::Mosquitto;
use serde_json::Value;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Runs `dockcast ctl ARGS` to completion (every run here has `--timeout-secs` of at most 2).
fn ctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = daemon_command();
    cmd.arg("ctl").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run dockcast ctl")
}

/// A `mosquitto_sub` printing the first message on `topic` (waiting at most 10 s), started
/// and subscribed before the caller goes on.
fn watch(broker: &Mosquitto, topic: &str) -> Child {
    let child = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-t", topic, "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_sub (apt-get install mosquitto-clients)");
    // mosquitto_sub has no "subscribed" signal; the broker's log says when it is.
    let subscribed = peers::wait_until(Duration::from_secs(5), || {
        broker.logs().contains(&format!("{topic} (QoS 0)"))
    });
    assert!(
        subscribed,
        "mosquitto_sub never subscribed:\n{}",
        broker.logs()
    );
    child
}

#[test]
fn credentials_in_the_broker_url_are_refused_and_never_printed() {
    // Port 1 on loopback refuses at once; the url must be refused before any connect.
    let out = ctl(
        &[
            "--mqtt-url",
            "mqtt://op:SeCrEt9@127.0.0.1:1",
            "--gateway-sn",
            "GW",
            "--timeout-secs",
            "2",
            "stop",
            "--video-id",
            "GW/165-0-7/normal-0",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must not carry credentials"), "{stderr}");
    assert!(!stderr.contains("SeCrEt9"), "password printed: {stderr}");
    // A url that does not even parse is quoted redacted.
    let out = ctl(
        &[
            "--mqtt-url",
            "mqtt://op:SeCrEt9@[::1",
            "--gateway-sn",
            "GW",
            "capacity",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("SeCrEt9"), "password printed: {stderr}");
}

#[test]
fn the_push_url_can_come_from_the_environment_and_reaches_the_broker_whole() {
    let broker = Mosquitto::start();
    let sub = watch(&broker, "thing/product/GW/services");
    let url = "rtmp://127.0.0.1:1935/live/KeyFromEnv77";
    // No gateway answers: ctl sends, waits 1 s and exits 2; the broker has the request.
    let out = ctl(
        &[
            "--mqtt-url",
            &broker.url(),
            "--gateway-sn",
            "GW",
            "--timeout-secs",
            "1",
            "start",
            "--video-id",
            "GW/165-0-7/normal-0",
        ],
        &[("DOCKCAST_PUSH_URL", url)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no answer from gateway GW"), "{stderr}");
    let got = sub.wait_with_output().expect("mosquitto_sub");
    let request: Value = serde_json::from_slice(&got.stdout).unwrap_or_else(|e| {
        panic!(
            "no request on the broker ({e}): {}",
            String::from_utf8_lossy(&got.stderr)
        )
    });
    assert_eq!(request["method"], "live_start_push");
    assert_eq!(request["data"]["url"], url);
    assert_eq!(request["data"]["url_type"], 1);
    assert!(!stderr.contains("KeyFromEnv77"), "{stderr}");
}
