//! RTMP sink: publishes one session's frames to an RTMP server and keeps doing so across
//! server restarts and network loss.
//!
//! Layout: [`flv`], [`commands`], [`queue`], [`target`], [`chunk`] and [`amf0`] are pure;
//! [`client`] is the IO shell over rml_rtmp (TLS from [`tls`]); [`run`] is the sink task with
//! the reconnect and backpressure policy.

pub mod amf0;
pub mod chunk;
pub mod client;
pub mod commands;
pub mod flv;
pub mod queue;
pub mod target;
pub mod tls;

pub use client::{Connector, Phase, RtmpError, RtmpErrorKind, RtmpStream};
pub use flv::StreamMetadata;
pub use target::RtmpTarget;
pub use tls::TlsConfigError;

use crate::backoff::Backoff;
use crate::media::frame::{Codec, EncodedFrame};
use crate::sink::SinkEvent;
use client::{IoEvent, RtmpConnection};
use flv::{Outgoing, VideoTagger};
use queue::{Offer, RateEstimator, SendQueue};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Tunables of an RTMP sink; `Default` suits a dock on a mobile uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct RtmpOptions {
    /// Limit for each connection step: name lookup, TCP connect (shared among the host's
    /// addresses), TLS, handshake, connect-app, publish.
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
    /// Extra PEM CA file trusted for `rtmps://` besides the system store (and
    /// `SSL_CERT_FILE`): for servers behind a private CA.
    pub ca_file: Option<PathBuf>,
    /// Accept any RTMPS certificate. Only for a test bench; warned about on every connect.
    pub insecure_skip_verify: bool,
    /// Media bytes the sink queues for a server that reads slower than the stream arrives;
    /// past it the queue is dropped and the bitrate is lowered. The stream resumes at the
    /// keyframe that overflowed it, or else at the next keyframe.
    pub send_buffer_bytes: usize,
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
            ca_file: None,
            insecure_skip_verify: false,
            // About 2 s of 1080p at 4 Mbit/s: rides out a short stall, small enough that the
            // picture is never more than a couple of seconds late.
            send_buffer_bytes: 1024 * 1024,
        }
    }
}

/// Which frames a connected sink takes: the stream can only start, or start again after a
/// drop, at a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Every frame.
    Open,
    /// Keyframes only: the connection is new, or the producer sent a frame that could not be
    /// tagged.
    Keyframe,
    /// Keyframes only, after the queue overflowed: the frames skipped are lost to the server's
    /// slowness as much as the dropped ones, and counted with them.
    KeyframeAfterDrop,
}

/// How a connected period ended.
enum Ended {
    /// Stop requested (cancel, or the producer went away): already unpublished.
    Stopped,
    /// The connection failed; reconnect.
    Lost(RtmpError),
}

/// Counters of one RTMP sink, readable while it runs (tests, benchmarks, diagnostics).
#[derive(Debug, Default)]
pub struct RtmpStats {
    /// Successful publishes (1 + reconnects).
    pub publishes: AtomicU64,
    /// Frames dropped because the server read slower than the stream arrived: those discarded
    /// from the queue and those skipped after it up to the keyframe the stream resumed at.
    pub dropped_frames: AtomicU64,
    /// Bytes the sockets took.
    pub bytes_sent: AtomicU64,
}

/// Runs the RTMP sink until `cancel` fires or the frame sender is dropped.
///
/// The first connection attempt failing ends the sink with [`SinkEvent::Failed`] (the cloud gets
/// a connect error). After one successful publish every failure is retried forever with
/// jittered backoff, reported as [`SinkEvent::Reconnecting`]. After every (re)connect the sink
/// reports [`SinkEvent::KeyframeWanted`] and [`SinkEvent::Publishing`] and drops frames until a
/// keyframe. Frames arriving while disconnected are discarded so the producer never blocks.
/// A server that reads too slowly makes the sink drop its queue, resuming at a keyframe, and
/// report [`SinkEvent::Bandwidth`] (see [`queue`]).
pub async fn run(
    target: RtmpTarget,
    opts: RtmpOptions,
    frames: mpsc::Receiver<EncodedFrame>,
    events: mpsc::Sender<SinkEvent>,
    cancel: CancellationToken,
) {
    run_with_stats(
        target,
        opts,
        frames,
        events,
        cancel,
        Arc::new(RtmpStats::default()),
    )
    .await
}

/// [`run`], counting into `stats`.
pub async fn run_with_stats(
    target: RtmpTarget,
    opts: RtmpOptions,
    mut frames: mpsc::Receiver<EncodedFrame>,
    events: mpsc::Sender<SinkEvent>,
    cancel: CancellationToken,
    stats: Arc<RtmpStats>,
) {
    let target_label = target.redacted();
    let connector = if target.tls {
        match Connector::new(opts.ca_file.as_deref(), opts.insecure_skip_verify) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("RTMPS to {}: {e}", target.peer());
                tracing::warn!(url = %target_label, %reason, "rtmp publish failed");
                let _ = events.send(SinkEvent::Failed { reason }).await;
                return;
            }
        }
    } else {
        Connector::plain()
    };
    let mut backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut rng = StdRng::from_os_rng();
    let mut tagger = VideoTagger::new(opts.framerate, opts.bitrate_kbps);
    let mut estimator = RateEstimator::new(Instant::now().into_std(), opts.send_buffer_bytes);
    let mut published_once = false;

    loop {
        let attempt = client::connect(&target, &connector, opts.connect_timeout, opts.send_timeout);
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            r = super::discard_while(&mut frames, attempt) => r,
        };
        let Some(result) = result else {
            // Cancelled, or the producer went away while connecting.
            let _ = events.send(SinkEvent::Stopped).await;
            return;
        };
        let error = match result {
            Ok(conn) => {
                published_once = true;
                stats.publishes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(url = %target_label, "rtmp publishing");
                let _ = events.send(SinkEvent::KeyframeWanted).await;
                let _ = events.send(SinkEvent::Publishing).await;
                let started = Instant::now();
                let mut ctx = Publish {
                    tagger: &mut tagger,
                    estimator: &mut estimator,
                    frames: &mut frames,
                    events: &events,
                    cancel: &cancel,
                    stats: &stats,
                    send_timeout: opts.send_timeout,
                    cap: opts.send_buffer_bytes,
                };
                match ctx.run(conn).await {
                    Ended::Stopped => {
                        let _ = events.send(SinkEvent::Stopped).await;
                        return;
                    }
                    Ended::Lost(e) => {
                        backoff.connection_ended(started.elapsed());
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
        if !super::wait_to_retry(
            &events,
            &mut frames,
            &cancel,
            backoff.attempt(),
            reason,
            retry_in,
        )
        .await
        {
            return;
        }
    }
}

/// What one connected period needs from the sink; borrowed so that tagger state (parameter
/// sets, last timestamp) and the bandwidth estimate outlive the connection.
struct Publish<'a> {
    tagger: &'a mut VideoTagger,
    estimator: &'a mut RateEstimator,
    frames: &'a mut mpsc::Receiver<EncodedFrame>,
    events: &'a mpsc::Sender<SinkEvent>,
    cancel: &'a CancellationToken,
    stats: &'a RtmpStats,
    send_timeout: Duration,
    cap: usize,
}

impl Publish<'_> {
    /// Reads the server, queues frames and writes the queue until stop or failure.
    ///
    /// Writing never blocks taking frames: a server that reads slowly fills the bounded
    /// [`SendQueue`], which then drops what it holds (see [`SendQueue::offer`]). A server that
    /// takes nothing at all for `send_timeout` is treated as lost.
    async fn run(&mut self, mut conn: RtmpConnection<client::RtmpStream>) -> Ended {
        self.tagger.new_connection();
        self.estimator.restart(Instant::now().into_std());
        let mut queue = SendQueue::new(self.cap);
        let mut gate = Gate::Keyframe;
        let mut last_ts = 0u32;
        let mut codec = Codec::H264;
        let mut last_progress = Instant::now();
        let mut dropped_in_window = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            // Serialize the next packet now (outside select!) so the write branch borrows
            // nothing but the bytes.
            let pending = match queue.next(|tag| conn.encode(tag)) {
                Ok(p) => p,
                Err(e) => return Ended::Lost(e),
            };
            // The stall clock only runs while something waits: a pause of the producer (a slow
            // lens switch) must not count against the server.
            if pending.is_none() {
                last_progress = Instant::now();
            }
            let stalled_at = last_progress + self.send_timeout;
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    stop(conn, queue, last_ts, codec).await;
                    return Ended::Stopped;
                }
                io = conn.read_or_write(pending.as_deref()) => match io {
                    IoEvent::Read(read) => match conn.on_read(read) {
                        Ok(Some(reply)) => queue.push_control(reply),
                        Ok(None) => {}
                        Err(e) => return Ended::Lost(e),
                    },
                    IoEvent::Wrote(Ok(n)) if n > 0 => {
                        queue.advance(n);
                        self.estimator.wrote(n);
                        self.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                        last_progress = Instant::now();
                    }
                    IoEvent::Wrote(Ok(_)) => return Ended::Lost(conn.error(Phase::Send, RtmpErrorKind::Closed)),
                    IoEvent::Wrote(Err(e)) | IoEvent::Flushed(Err(e)) => {
                        return Ended::Lost(conn.error(Phase::Send, e.into()))
                    }
                    IoEvent::Flushed(Ok(())) => {}
                },
                _ = tokio::time::sleep_until(stalled_at), if pending.is_some() => {
                    return Ended::Lost(RtmpError {
                        peer: conn.peer().to_string(),
                        phase: Phase::Send,
                        kind: RtmpErrorKind::Timeout(self.send_timeout),
                    });
                }
                _ = tick.tick() => {
                    let now = Instant::now().into_std();
                    if let Some(bps) = self.estimator.tick(now, queue.backlog(), dropped_in_window) {
                        tracing::debug!(peer = conn.peer(), bps, backlog = queue.backlog(), "rtmp bandwidth estimate");
                        // Best effort: a busy session must not stall the sink.
                        let _ = self.events.try_send(SinkEvent::Bandwidth { bps });
                    }
                    dropped_in_window = false;
                }
                frame = self.frames.recv() => {
                    let Some(frame) = frame else {
                        stop(conn, queue, last_ts, codec).await;
                        return Ended::Stopped;
                    };
                    if gate != Gate::Open && !frame.keyframe {
                        if gate == Gate::KeyframeAfterDrop {
                            self.stats.dropped_frames.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    let tags = match self.tagger.tags_for(&frame) {
                        Ok(tags) => tags,
                        Err(e) => {
                            // A broken parameter set is the producer's fault, not the server's:
                            // skip the frame and wait for the next keyframe instead of
                            // reconnecting.
                            tracing::warn!(peer = conn.peer(), error = %e, "dropping undecodable frame");
                            if gate == Gate::Open {
                                gate = Gate::Keyframe;
                                let _ = self.events.try_send(SinkEvent::KeyframeWanted);
                            }
                            continue;
                        }
                    };
                    if tags.is_empty() {
                        continue;
                    }
                    let ts = tags.iter().rev().find_map(|t| match t {
                        Outgoing::Video { timestamp_ms, .. } => Some(*timestamp_ms),
                        Outgoing::Metadata(_) => None,
                    });
                    let tagger = &mut *self.tagger;
                    let offer = queue.offer(tags, frame.keyframe, || {
                        // What was dropped may have held metadata and the sequence header.
                        tagger.new_connection();
                        tagger.tags_for(&frame)
                    });
                    let (dropped, queued) = match offer {
                        Offer::Queued => (None, true),
                        Offer::Restarted { frames } => {
                            (Some((frames, "dropped the queue for a keyframe")), true)
                        }
                        Offer::Dropped { frames } => {
                            (Some((frames, "dropped to the next keyframe")), false)
                        }
                    };
                    if let Some((frames, what)) = dropped {
                        let total = self.stats.dropped_frames.fetch_add(frames, Ordering::Relaxed) + frames;
                        tracing::warn!(
                            peer = conn.peer(),
                            frames,
                            total,
                            backlog_limit = self.cap,
                            "rtmp server reads too slowly: {what}"
                        );
                        dropped_in_window = true;
                    }
                    if queued {
                        // A restarted keyframe was tagged again for the same pts: the same
                        // timestamp.
                        gate = Gate::Open;
                        codec = frame.codec;
                        if let Some(ts) = ts {
                            last_ts = ts;
                        }
                    } else {
                        gate = Gate::KeyframeAfterDrop;
                        // What was dropped may have held the sequence header.
                        self.tagger.new_connection();
                        let _ = self.events.try_send(SinkEvent::KeyframeWanted);
                    }
                }
            }
        }
    }
}

/// How long a stop may spend writing what is queued and unpublishing: an operator's stop must
/// be quick even when the server reads slowly; past it the socket is just dropped.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Writes what is still queued, so that frames the sink took reach the server, then
/// unpublishes; all within [`STOP_GRACE`].
async fn stop(
    mut conn: RtmpConnection<client::RtmpStream>,
    mut queue: SendQueue,
    last_ts: u32,
    codec: Codec,
) {
    let graceful = async move {
        loop {
            let bytes = match queue.next(|tag| conn.encode(tag)) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(_) => return,
            };
            match conn.write_some(&bytes).await {
                Ok(n) => queue.advance(n),
                Err(_) => return,
            }
        }
        conn.close(last_ts, codec, &[]).await;
    };
    if tokio::time::timeout(STOP_GRACE, graceful).await.is_err() {
        tracing::debug!("rtmp stop: server too slow to take the rest, connection dropped");
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
