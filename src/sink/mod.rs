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

/// Limits the keyframe requests a sink passes on to the encoder to one per interval.
///
/// Each request makes the encoder send an IDR, several times the size of a P-frame, and one
/// IDR answers every request made before it: requests that come in bursts (a WHIP receiver's
/// PLI/FIR, a GB/T 28181 sink whose media server reads too slowly) would otherwise force IDRs
/// that congest the path further and bring more requests.
///
/// A request arriving inside the interval is held, not dropped: the IDR already asked for may
/// have left before the loss the new request is about, and with long GOPs that receiver would
/// stay frozen for seconds. However many arrive, one is held, and it is passed on when the
/// interval ends. Requests the sink makes itself (on connect, on media start) are never held;
/// they restart the interval, since the IDR they bring answers the others as well.
#[derive(Debug)]
pub(crate) struct KeyframeRequests {
    /// The shortest time between two requests passed on.
    interval: Duration,
    /// When a request was last passed on.
    last: Option<std::time::Instant>,
    /// A request is waiting for the interval to end.
    held: bool,
}

impl KeyframeRequests {
    /// Requests passed on at most once per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        KeyframeRequests {
            interval,
            last: None,
            held: false,
        }
    }

    /// The sink asked for a keyframe itself at `now` (and passes that request on at once).
    pub(crate) fn own(&mut self, now: std::time::Instant) {
        self.last = Some(now);
        self.held = false;
    }

    /// A keyframe was asked for at `now`: true to pass the request on now, false when it is
    /// held.
    pub(crate) fn asked(&mut self, now: std::time::Instant) -> bool {
        self.held = true;
        self.poll(now)
    }

    /// A keyframe is needed but a request could not help yet (the frame would be dropped as
    /// well): held until [`poll`](Self::poll) is called when it can.
    pub(crate) fn hold(&mut self) {
        self.held = true;
    }

    /// A keyframe went out anyway: nothing held is needed any more.
    pub(crate) fn answered(&mut self) {
        self.held = false;
    }

    /// True, once, when a held request is due at `now`: the caller passes it on.
    pub(crate) fn poll(&mut self, now: std::time::Instant) -> bool {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        if !self.held || !due {
            return false;
        }
        self.held = false;
        self.last = Some(now);
        true
    }

    /// When the held request becomes due, for the caller's timer; `None` when none is held.
    pub(crate) fn deadline(&self) -> Option<std::time::Instant> {
        if !self.held {
            return None;
        }
        self.last.map(|t| t + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_keyframe_requests_one_per_interval_none_lost() {
        let ms = |n: u64| Duration::from_millis(n);
        let t0 = std::time::Instant::now();
        let mut k = KeyframeRequests::new(ms(500));
        assert_eq!(k.deadline(), None);
        assert!(!k.poll(t0), "nothing asked, nothing due");
        assert!(k.asked(t0), "the first request goes out at once");
        assert_eq!(k.deadline(), None);
        // A storm inside the interval: all held, as one.
        for n in 1..50 {
            assert!(!k.asked(t0 + ms(n * 5)), "request {n} forwarded");
        }
        assert_eq!(k.deadline(), Some(t0 + ms(500)));
        assert!(!k.poll(t0 + ms(499)));
        assert!(
            k.poll(t0 + ms(500)),
            "the held request goes out when the interval ends"
        );
        assert!(!k.poll(t0 + ms(5000)), "and only once");
        assert_eq!(k.deadline(), None);
        // The interval restarts from the held request's release.
        assert!(!k.asked(t0 + ms(900)));
        assert_eq!(k.deadline(), Some(t0 + ms(1000)));
        // Late polling (a busy loop elsewhere) releases it late, not never.
        assert!(k.poll(t0 + ms(1700)));
        assert!(
            k.asked(t0 + ms(2200)),
            "quiet for a whole interval: at once"
        );

        // The sink's own request (connect) is the caller's to send; it restarts the interval
        // and answers what was held.
        let mut k = KeyframeRequests::new(ms(500));
        assert!(k.asked(t0));
        assert!(!k.asked(t0 + ms(100)));
        k.own(t0 + ms(200));
        assert_eq!(
            k.deadline(),
            None,
            "the connect's IDR answers the held request"
        );
        assert!(!k.asked(t0 + ms(300)));
        assert_eq!(k.deadline(), Some(t0 + ms(700)));
    }

    #[test]
    fn a_held_request_waits_for_poll_and_a_keyframe_answers_it() {
        let ms = |n: u64| Duration::from_millis(n);
        let t0 = std::time::Instant::now();
        let mut k = KeyframeRequests::new(ms(1000));
        k.own(t0);
        // Held, not passed on: whatever the time, until the caller polls.
        k.hold();
        assert!(!k.poll(t0 + ms(999)));
        assert!(k.poll(t0 + ms(1000)));
        assert!(!k.poll(t0 + ms(5000)), "once");
        // A keyframe that went out anyway answers what was held.
        k.hold();
        k.answered();
        assert!(!k.poll(t0 + ms(9000)));
        assert_eq!(k.deadline(), None);
    }
}
