//! Sinks: one per live session, each pushing encoded frames to a media server.

pub mod adapter;
pub mod gb28181;
pub mod rtmp;
pub mod whip;

use crate::media::frame::{Codec, EncodedFrame};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a sink reports to the session that owns it.
///
/// The session forwards these to the live manager, which turns them into replies and
/// `live_status` updates. Sinks never talk to the manager directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    /// The server accepted the publish; frames are flowing (sent once per (re)connection).
    Publishing,
    /// The connection was lost or refused; the sink will try again after `retry_in`.
    Reconnecting {
        /// How many attempts have failed in a row.
        attempt: u32,
        /// Why the last attempt or connection failed (secrets redacted).
        reason: String,
        /// Backoff before the next attempt.
        retry_in: Duration,
    },
    /// The sink gave up (only before the first successful publish, or on a fatal error such as a
    /// rejected stream key); the session ends.
    Failed {
        /// Why (secrets redacted).
        reason: String,
    },
    /// The sink cannot carry this video (a codec its protocol does not have here); the session
    /// ends. Kept apart from [`Failed`](Self::Failed) so the cloud hears "this transport is not
    /// supported" rather than "cannot reach the server", which would send an operator to check
    /// the network.
    Refused {
        /// Why.
        reason: String,
    },
    /// The sink needs the next frame to be a keyframe (after a reconnect or a dropped frame).
    KeyframeWanted,
    /// The sink closed cleanly after a stop request.
    Stopped,
    /// The sink's current estimate of the bandwidth the path to the server sustains, in bit/s
    /// (WHIP: transport-wide congestion control feedback). Sent at most once a second, only by
    /// sinks that can measure it; the session feeds it to adaptive quality (video_quality 0).
    Bandwidth {
        /// Estimated sustainable send rate in bit/s, all overhead included.
        bps: u64,
    },
}

/// How long a sink that carries only some codecs waits for the first frame before it sets
/// anything up on the server: enough for a source that is already running (and a loaded
/// machine), short enough that a feed whose app has not connected yet does not hold up the
/// start for long.
pub(crate) const FIRST_FRAME_WAIT: Duration = Duration::from_secs(1);

/// For a sink that carries only `carried`: waits up to [`FIRST_FRAME_WAIT`] for the first
/// frame and, if it is in another codec, refuses at the start — the cloud is answered
/// "transport not supported" at once, and nothing is registered or offered on a server that
/// would then see it fail. The frame itself is dropped: a sink asks for a keyframe once it is
/// up anyway, and checks later frames as they come. False when the sink must return, with
/// [`SinkEvent::Refused`] or (stop requested, producer gone) [`SinkEvent::Stopped`] reported.
pub(crate) async fn first_frame_carried(
    frames: &mut mpsc::Receiver<EncodedFrame>,
    cancel: &CancellationToken,
    events: &mpsc::Sender<SinkEvent>,
    carried: Codec,
    refusal: impl FnOnce(Codec) -> String,
    target: &str,
) -> bool {
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        f = tokio::time::timeout(FIRST_FRAME_WAIT, frames.recv()) => match f {
            Ok(Some(frame)) => Some(Some(frame.codec)),
            Ok(None) => None,
            Err(_) => Some(None),
        },
    };
    match first {
        None => {
            let _ = events.send(SinkEvent::Stopped).await;
            false
        }
        Some(Some(codec)) if codec != carried => {
            let reason = refusal(codec);
            tracing::warn!(target, %reason, "sink refuses this video");
            let _ = events.send(SinkEvent::Refused { reason }).await;
            false
        }
        Some(_) => true,
    }
}

/// Drives `fut` while discarding incoming frames, so that the pipeline never blocks on a sink
/// that is connecting or waiting to reconnect; `None` if the frame sender went away.
pub(crate) async fn discard_while<F: Future>(
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

/// Sleeps until `t`, or forever without one: a `select!` branch for a deadline that is armed
/// only some of the time.
pub(crate) async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The one way every reconnecting sink waits between attempts: report
/// [`SinkEvent::Reconnecting`], then sit out `retry_in` while discarding frames. Returns false
/// when the session ended meanwhile (stop requested or the pipeline gone), after reporting
/// [`SinkEvent::Stopped`]; the sink must then return.
pub(crate) async fn wait_to_retry(
    events: &mpsc::Sender<SinkEvent>,
    frames: &mut mpsc::Receiver<EncodedFrame>,
    cancel: &CancellationToken,
    attempt: u32,
    reason: String,
    retry_in: Duration,
) -> bool {
    let _ = events
        .send(SinkEvent::Reconnecting {
            attempt,
            reason,
            retry_in,
        })
        .await;
    let slept = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        r = discard_while(frames, tokio::time::sleep(retry_in)) => r,
    };
    if slept.is_none() {
        let _ = events.send(SinkEvent::Stopped).await;
        return false;
    }
    true
}
