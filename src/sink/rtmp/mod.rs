//! RTMP sink: publishes one session's frames to an RTMP server and keeps doing so across
//! server restarts and network loss.
//!
//! Layout: [`flv`] and [`target`] are pure; [`client`] is the IO shell over rml_rtmp; [`run`] is
//! the sink task with the reconnect policy.

pub mod client;
pub mod flv;
pub mod target;

pub use client::{Phase, RtmpError, RtmpErrorKind};
pub use flv::StreamMetadata;
pub use target::{RtmpTarget, TargetError};

use crate::backoff::Backoff;
use crate::media::frame::EncodedFrame;
use crate::sink::SinkEvent;
use client::RtmpConnection;
use flv::{Outgoing, VideoTagger};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Tunables of an RTMP sink; `Default` suits a dock on a mobile uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct RtmpOptions {
    /// Limit for each connection step (TCP connect, handshake, connect-app, publish).
    pub connect_timeout: Duration,
    /// Limit for one write while publishing; a server that stops reading is treated as lost
    /// instead of stalling the sink forever.
    pub send_timeout: Duration,
    /// First reconnect backoff ceiling.
    pub backoff_initial: Duration,
    /// Largest reconnect backoff ceiling.
    pub backoff_max: Duration,
    /// Frame rate announced in `onMetaData`, if known.
    pub framerate: Option<f32>,
    /// Bitrate (kbit/s) announced in `onMetaData`, if known.
    pub bitrate_kbps: Option<u32>,
}

impl Default for RtmpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            framerate: None,
            bitrate_kbps: None,
        }
    }
}

/// How a connected period ended.
enum Ended {
    /// Stop requested (cancel, or the producer went away): already unpublished.
    Stopped,
    /// The connection failed; reconnect.
    Lost(RtmpError),
}

/// Runs the RTMP sink until `cancel` fires or the frame sender is dropped.
///
/// The first connection attempt failing ends the sink with [`SinkEvent::Failed`] (the cloud gets
/// a connect error). After one successful publish every failure is retried forever with
/// jittered backoff, reported as [`SinkEvent::Reconnecting`]. After every (re)connect the sink
/// reports [`SinkEvent::KeyframeWanted`] and [`SinkEvent::Publishing`] and drops frames until a
/// keyframe. Frames arriving while disconnected are discarded so the producer never blocks.
pub async fn run(
    target: RtmpTarget,
    opts: RtmpOptions,
    mut frames: mpsc::Receiver<EncodedFrame>,
    events: mpsc::Sender<SinkEvent>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut rng = StdRng::from_os_rng();
    let mut tagger = VideoTagger::new(opts.framerate, opts.bitrate_kbps);
    let mut published_once = false;
    let target_label = target.redacted();

    loop {
        let attempt = client::connect(&target, opts.connect_timeout, opts.send_timeout);
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            r = discard_while(&mut frames, attempt) => r,
        };
        let Some(result) = result else {
            // Cancelled, or the producer went away while connecting.
            let _ = events.send(SinkEvent::Stopped).await;
            return;
        };
        let error = match result {
            Ok(conn) => {
                published_once = true;
                tracing::info!(url = %target_label, "rtmp publishing");
                let _ = events.send(SinkEvent::KeyframeWanted).await;
                let _ = events.send(SinkEvent::Publishing).await;
                let started = Instant::now();
                match publish(conn, &mut tagger, &mut frames, &events, &cancel).await {
                    Ended::Stopped => {
                        let _ = events.send(SinkEvent::Stopped).await;
                        return;
                    }
                    Ended::Lost(e) => {
                        // Only a connection that held for a while earns a fresh schedule; a
                        // server that accepts and drops at once keeps backing off.
                        if started.elapsed() >= opts.backoff_max {
                            backoff.reset();
                        }
                        e
                    }
                }
            }
            Err(e) => e,
        };
        let reason = error.to_string();
        if !published_once {
            tracing::warn!(url = %target_label, %reason, "rtmp publish failed");
            let _ = events.send(SinkEvent::Failed { reason }).await;
            return;
        }
        let retry_in = backoff.next_delay(&mut rng);
        tracing::warn!(url = %target_label, %reason, ?retry_in, "rtmp connection lost");
        let _ = events
            .send(SinkEvent::Reconnecting {
                attempt: backoff.attempt(),
                reason,
                retry_in,
            })
            .await;
        let slept = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            r = discard_while(&mut frames, tokio::time::sleep(retry_in)) => r,
        };
        if slept.is_none() {
            let _ = events.send(SinkEvent::Stopped).await;
            return;
        }
    }
}

/// Drives `fut` while discarding incoming frames; `None` if the frame sender went away.
async fn discard_while<F: std::future::Future>(
    frames: &mut mpsc::Receiver<EncodedFrame>,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            frame = frames.recv() => {
                frame.as_ref()?;
            }
        }
    }
}

/// One connected period: reads the server and sends frames until stop or failure.
async fn publish(
    mut conn: RtmpConnection<TcpStream>,
    tagger: &mut VideoTagger,
    frames: &mut mpsc::Receiver<EncodedFrame>,
    events: &mpsc::Sender<SinkEvent>,
    cancel: &CancellationToken,
) -> Ended {
    tagger.new_connection();
    let mut waiting_for_keyframe = true;
    let mut last_ts = 0u32;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                conn.close(last_ts).await;
                return Ended::Stopped;
            }
            read = conn.read() => {
                if let Err(e) = conn.on_read(read).await {
                    return Ended::Lost(e);
                }
            }
            frame = frames.recv() => {
                let Some(frame) = frame else {
                    conn.close(last_ts).await;
                    return Ended::Stopped;
                };
                if waiting_for_keyframe && !frame.keyframe {
                    continue;
                }
                let tags = match tagger.tags_for(&frame) {
                    Ok(tags) => tags,
                    Err(e) => {
                        // A broken SPS is the producer's fault, not the server's: skip the
                        // frame and wait for the next keyframe instead of reconnecting.
                        tracing::warn!(peer = conn.peer(), error = %e, "dropping undecodable frame");
                        if !waiting_for_keyframe {
                            waiting_for_keyframe = true;
                            let _ = events.send(SinkEvent::KeyframeWanted).await;
                        }
                        continue;
                    }
                };
                if tags.iter().any(|t| matches!(t, Outgoing::Video { .. })) {
                    waiting_for_keyframe = false;
                }
                for tag in tags {
                    if let Outgoing::Video { timestamp_ms, .. } = &tag {
                        last_ts = *timestamp_ms;
                    }
                    if let Err(e) = conn.send(tag).await {
                        return Ended::Lost(e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn first_failure_is_reported_as_failed_without_the_key() {
        let port = closed_port();
        let target =
            RtmpTarget::parse(&format!("rtmp://127.0.0.1:{port}/live/sekrit")).expect("valid");
        let (_tx, rx) = mpsc::channel(4);
        let (ev_tx, mut ev_rx) = mpsc::channel(4);
        run(
            target,
            RtmpOptions::default(),
            rx,
            ev_tx,
            CancellationToken::new(),
        )
        .await;
        match ev_rx.recv().await {
            Some(SinkEvent::Failed { reason }) => {
                assert!(reason.contains("connect"), "{reason}");
                assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
                assert!(!reason.contains("sekrit"), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(ev_rx.recv().await, None);
    }

    #[tokio::test]
    async fn cancel_while_connecting_stops() {
        // A listener that never answers the handshake keeps the sink connecting.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = RtmpTarget::parse(&format!("rtmp://127.0.0.1:{port}/live/k")).expect("valid");
        let (tx, rx) = mpsc::channel(4);
        let (ev_tx, mut ev_rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let sink = tokio::spawn(run(
            target,
            RtmpOptions::default(),
            rx,
            ev_tx,
            cancel.clone(),
        ));
        // Frames sent while connecting are discarded, never blocking the producer.
        for i in 0..20u64 {
            let frame = EncodedFrame {
                data: bytes::Bytes::from_static(&[0, 0, 0, 1, 0x65, 0x88]),
                pts: Duration::from_millis(i * 33),
                keyframe: true,
                codec: crate::media::frame::Codec::H264,
            };
            tokio::time::timeout(Duration::from_secs(1), tx.send(frame))
                .await
                .expect("producer not blocked")
                .expect("sink alive");
        }
        cancel.cancel();
        let ev = tokio::time::timeout(Duration::from_secs(2), ev_rx.recv())
            .await
            .expect("event in time");
        assert_eq!(ev, Some(SinkEvent::Stopped));
        tokio::time::timeout(Duration::from_secs(2), sink)
            .await
            .expect("sink returned")
            .expect("no panic");
        drop(listener);
    }
}
