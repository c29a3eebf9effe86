//! The local health endpoint for fleets: `/healthz` (is the daemon alive, is the broker up) and
//! `/metrics` in the Prometheus text format (sessions, frames, bytes, drops, reconnects, encode
//! time, bitrate).
//!
//! Off unless `[health] listen` is set, and meant for loopback: a node exporter or an agent on
//! the box scrapes it. The HTTP handling is deliberately minimal (GET only, one request per
//! connection, bounded reads), so it needs no HTTP server crate.

use crate::live::manager::SessionSummary;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Counters of one session, read when a snapshot is taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Frames handed to the sink.
    pub frames_sent: u64,
    /// Frames dropped because the sink fell behind.
    pub frames_dropped: u64,
    /// Bytes handed to the sink.
    pub bytes_sent: u64,
    /// Total encode time in microseconds.
    pub encode_us: u64,
    /// Bitrate in force in kbit/s.
    pub bitrate_kbps: u32,
    /// Frames the input delivered unreadable (a truncated camera JPEG, a failed buffer),
    /// skipped without reopening it: a rising count is a failing cable or camera.
    pub bad_frames: u64,
    /// Times the input failed and was reopened.
    pub input_failures: u64,
    /// Access units the decoder rejected while transcoding.
    pub decode_errors: u64,
}

/// Everything `/metrics` shows, assembled by the live manager's actor (the owner of the
/// sessions) on request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// One entry per session.
    pub sessions: Vec<(SessionSummary, SessionCounters)>,
    /// Sessions started since the daemon started.
    pub sessions_started: u64,
}

/// A request for a snapshot, answered by the actor.
pub type SnapshotRequest = oneshot::Sender<Snapshot>;

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

/// The Prometheus text exposition of a snapshot.
pub fn render(snapshot: &Snapshot, mqtt_connected: bool) -> String {
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str, kind: &str| {
        let _ = writeln!(
            out,
            "# HELP dockcast_{name} {help}\n# TYPE dockcast_{name} {kind}"
        );
    };
    gauge(
        &mut out,
        "mqtt_connected",
        "1 when the broker link is up.",
        "gauge",
    );
    let _ = writeln!(out, "dockcast_mqtt_connected {}", u8::from(mqtt_connected));
    gauge(&mut out, "sessions", "Live sessions by phase.", "gauge");
    for phase in ["starting", "live", "reconnecting"] {
        let n = snapshot
            .sessions
            .iter()
            .filter(|(s, _)| s.phase == phase)
            .count();
        let _ = writeln!(out, "dockcast_sessions{{phase=\"{phase}\"}} {n}");
    }
    gauge(
        &mut out,
        "sessions_started_total",
        "Sessions started since the daemon started.",
        "counter",
    );
    let _ = writeln!(
        out,
        "dockcast_sessions_started_total {}",
        snapshot.sessions_started
    );
    type Field = fn(&SessionSummary, &SessionCounters) -> u64;
    let per_session: [(&str, &str, &str, Field); 10] = [
        (
            "frames_sent_total",
            "Frames handed to the sink.",
            "counter",
            |_, c| c.frames_sent,
        ),
        (
            "frames_dropped_total",
            "Frames dropped because the sink fell behind.",
            "counter",
            |_, c| c.frames_dropped,
        ),
        (
            "bytes_sent_total",
            "Bytes handed to the sink.",
            "counter",
            |_, c| c.bytes_sent,
        ),
        (
            "encode_seconds_total",
            "Time spent encoding, in microseconds / 1e6.",
            "counter",
            |_, c| c.encode_us,
        ),
        (
            "reconnects_total",
            "Times the sink lost its server after publishing.",
            "counter",
            |s, _| s.reconnects,
        ),
        (
            "bad_frames_total",
            "Unreadable frames from the input, skipped.",
            "counter",
            |_, c| c.bad_frames,
        ),
        (
            "input_failures_total",
            "Times the input failed and was reopened.",
            "counter",
            |_, c| c.input_failures,
        ),
        (
            "decode_errors_total",
            "Access units the decoder rejected while transcoding.",
            "counter",
            |_, c| c.decode_errors,
        ),
        (
            "input_down",
            "1 while the session's input is failed and being retried (no video).",
            "gauge",
            |s, _| u64::from(s.input_down),
        ),
        (
            "bitrate_kbps",
            "Encoder bitrate in force.",
            "gauge",
            |_, c| u64::from(c.bitrate_kbps),
        ),
    ];
    for (name, help, kind, field) in per_session {
        gauge(&mut out, name, help, kind);
        for (s, c) in &snapshot.sessions {
            let value = field(s, c);
            let labels = format!(
                "video_id=\"{}\",url_type=\"{}\",lens=\"{}\"",
                label(&s.video_id),
                s.url_type,
                s.lens
            );
            if name == "encode_seconds_total" {
                let _ = writeln!(out, "dockcast_{name}{{{labels}}} {:.6}", value as f64 / 1e6);
            } else {
                let _ = writeln!(out, "dockcast_{name}{{{labels}}} {value}");
            }
        }
    }
    out
}

/// Serves `/healthz` and `/metrics` on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    snapshots: mpsc::Sender<SnapshotRequest>,
    mqtt: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("health endpoint accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let snapshots = snapshots.clone();
        let mqtt = *mqtt.borrow();
        tokio::spawn(async move {
            // A request may arrive in pieces: read until the end of its headers, bounded in
            // size and time.
            let mut buf = Vec::with_capacity(512);
            let read_head = async {
                let mut chunk = [0u8; 1024];
                while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(2), read_head)
                .await
                .is_err()
            {
                return;
            }
            let request = String::from_utf8_lossy(&buf);
            let path = request
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("GET "))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or("");
            debug!(%peer, path, "health request");
            // The second covers the queueing too: with the manager wedged, its request queue
            // fills, and a request waiting for room would hold its connection for good.
            let snapshot = async {
                let (tx, rx) = oneshot::channel();
                let asked = async {
                    snapshots.send(tx).await.ok()?;
                    rx.await.ok()
                };
                tokio::time::timeout(Duration::from_secs(1), asked)
                    .await
                    .ok()
                    .flatten()
            };
            let (status, kind, body) = match path {
                "/healthz" => match snapshot.await {
                    Some(s) => (
                        "200 OK",
                        "application/json",
                        format!(
                            "{{\"status\":\"ok\",\"mqtt_connected\":{mqtt},\"sessions\":{}}}\n",
                            s.sessions.len()
                        ),
                    ),
                    None => (
                        "503 Service Unavailable",
                        "application/json",
                        "{\"status\":\"live manager not answering\"}\n".to_string(),
                    ),
                },
                "/metrics" => match snapshot.await {
                    Some(s) => ("200 OK", "text/plain; version=0.0.4", render(&s, mqtt)),
                    None => (
                        "503 Service Unavailable",
                        "text/plain",
                        "live manager not answering\n".into(),
                    ),
                },
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /healthz or /metrics\n".into(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                stream.write_all(response.as_bytes()),
            )
            .await;
        });
    }
}

/// `dockcast status`: fetches `path` from the endpoint at `addr` (blocking, bounded).
pub fn fetch(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr:?}: {e}"))
    })?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut text = String::new();
    stream.take(4 * 1024 * 1024).read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let s = SessionSummary {
            id: 1,
            video_id: "DOCK/165-0-7/normal-0".into(),
            url_type: 1,
            phase: "live",
            lens: "zoom",
            quality: 2,
            reconnects: 3,
            input_down: true,
        };
        let c = SessionCounters {
            frames_sent: 90,
            frames_dropped: 2,
            bytes_sent: 12345,
            encode_us: 1_500_000,
            bitrate_kbps: 1000,
            bad_frames: 7,
            input_failures: 1,
            decode_errors: 0,
        };
        let text = render(
            &Snapshot {
                sessions: vec![(s, c)],
                sessions_started: 4,
            },
            true,
        );
        for line in [
            "dockcast_mqtt_connected 1",
            "dockcast_sessions{phase=\"live\"} 1",
            "dockcast_sessions{phase=\"reconnecting\"} 0",
            "dockcast_sessions_started_total 4",
            "dockcast_frames_sent_total{video_id=\"DOCK/165-0-7/normal-0\",url_type=\"1\",lens=\"zoom\"} 90",
            "dockcast_reconnects_total{video_id=\"DOCK/165-0-7/normal-0\",url_type=\"1\",lens=\"zoom\"} 3",
            "dockcast_input_down{video_id=\"DOCK/165-0-7/normal-0\",url_type=\"1\",lens=\"zoom\"} 1",
            "dockcast_bad_frames_total{video_id=\"DOCK/165-0-7/normal-0\",url_type=\"1\",lens=\"zoom\"} 7",
            "dockcast_input_failures_total{video_id=\"DOCK/165-0-7/normal-0\",url_type=\"1\",lens=\"zoom\"} 1",
            "dockcast_decode_errors_total{video_id=\"DOCK/165-0-7/normal-0\",url_type=\"1\",lens=\"zoom\"} 0",
            "dockcast_encode_seconds_total{video_id=\"DOCK/165-0-7/normal-0\",url_type=\"1\",lens=\"zoom\"} 1.500000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(l.split(' ').count(), 2, "{l}");
        }
    }

    #[tokio::test]
    async fn a_wedged_manager_gets_503_on_every_request_not_a_hang_once_its_queue_is_full() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A manager that never answers, with a queue of two.
        let (snapshots, _never_read) = mpsc::channel(2);
        let (_connected, mqtt) = watch::channel(true);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, snapshots, mqtt, cancel.clone()));
        for request in 0..4 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
                .await
                .expect("request");
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("request {request} was never answered"))
                .expect("read");
            assert!(
                answer.starts_with("HTTP/1.1 503"),
                "request {request}: {answer}"
            );
        }
        cancel.cancel();
    }
}
