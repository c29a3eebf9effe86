//! Sinks: one per live session, each pushing encoded frames to a media server.

pub mod adapter;
pub mod gb28181;
pub mod rtmp;
pub mod whip;

use std::time::Duration;

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
