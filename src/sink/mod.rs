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

/// What [`first_frame`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstFrame {
    /// Stop requested, or the producer went away: report [`SinkEvent::Stopped`] and return.
    Ended,
    /// The first frame came, in this codec. The frame itself is dropped: a sink asks for a
    /// keyframe once it is up anyway.
    Codec(Codec),
    /// Nothing within the wait; the sink goes on and checks frames as they come.
    NoneYet,
}

/// Waits up to `wait` for the first frame and tells its codec, so that a sink that cannot
/// carry it refuses at the start — answered "transport not supported" at once — instead of
/// registering or offering a session the platform would then see fail.
pub(crate) async fn first_frame(
    frames: &mut mpsc::Receiver<EncodedFrame>,
    cancel: &CancellationToken,
    wait: Duration,
) -> FirstFrame {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => FirstFrame::Ended,
        f = tokio::time::timeout(wait, frames.recv()) => match f {
            Ok(Some(frame)) => FirstFrame::Codec(frame.codec),
            Ok(None) => FirstFrame::Ended,
            Err(_) => FirstFrame::NoneYet,
        },
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
