//! The sink's bounded send queue and the bandwidth estimate derived from how fast it drains.
//!
//! Pure: the sink's loop feeds it tags, serialized control replies and the byte counts the
//! socket took, and asks it what to write next. Media is kept unserialized until the socket can
//! take it, because RTMP chunk headers are compressed against the previously *serialized*
//! message: dropping a frame after serializing it would corrupt every later header, dropping it
//! before costs nothing.

use super::flv::Outgoing;
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What happened to a frame's tags offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// The queue was full and the offered frame is a keyframe: everything queued was dropped
    /// and the keyframe, tagged anew as the start of a stream, was queued in its place. The
    /// stream goes on from it; nothing needs to wait for another keyframe.
    Restarted {
        /// Frames discarded by this overflow (the queued ones).
        frames: u64,
    },
    /// The queue was full: it and this frame were dropped; `frames` counts both. The caller
    /// must wait for the next keyframe and re-send the sequence header before it.
    Dropped {
        /// Frames discarded by this overflow (queued ones plus the offered one).
        frames: u64,
    },
}

/// Bounded queue of what the sink still has to write on one connection.
#[derive(Debug)]
pub struct SendQueue {
    /// Already serialized protocol replies (acknowledgements, pongs): small, never dropped.
    control: VecDeque<Bytes>,
    /// Tags of whole frames, oldest first, with the frame boundary after each group.
    media: VecDeque<(Outgoing, bool)>,
    media_bytes: usize,
    cap: usize,
    /// The packet being written and how much of it went out already.
    inflight: Option<(Bytes, usize)>,
}

impl SendQueue {
    /// A queue holding at most `cap` bytes of media payload (control replies come on top).
    pub fn new(cap: usize) -> Self {
        Self {
            control: VecDeque::new(),
            media: VecDeque::new(),
            media_bytes: 0,
            cap: cap.max(1),
            inflight: None,
        }
    }

    /// Queues a serialized reply; it goes out right after the packet being written.
    pub fn push_control(&mut self, bytes: Bytes) {
        self.control.push_back(bytes);
    }

    /// Offers the tags of one frame. When they do not fit, everything queued is dropped: what
    /// is queued is older than what the server can take in time, and the stream can only
    /// resume on a keyframe anyway.
    ///
    /// The frame itself is dropped too unless it is that keyframe (`keyframe`) and fits the
    /// queue on its own: keyframes are the largest frames, so they overflow the queue most
    /// often, and dropping the one that did would lose a further GOP to a producer that does
    /// not answer keyframe requests. It is then queued as `restart` tags it, which must put
    /// metadata and the sequence header before it (what was dropped may have held them); if
    /// `restart` fails, the keyframe is dropped after all.
    pub fn offer<E>(
        &mut self,
        tags: Vec<Outgoing>,
        keyframe: bool,
        restart: impl FnOnce() -> Result<Vec<Outgoing>, E>,
    ) -> Offer {
        let size = tags_len(&tags);
        // A frame larger than the whole queue still goes out when nothing waits before it:
        // refusing it would stall a stream of large keyframes forever.
        if self.media_bytes + size > self.cap && !self.media.is_empty() {
            let frames = self.media.iter().filter(|(_, end)| *end).count() as u64;
            self.media.clear();
            self.media_bytes = 0;
            if keyframe && size <= self.cap {
                if let Ok(tags) = restart() {
                    // Into an empty queue, so it is taken whatever the sequence header adds.
                    self.push(tags);
                    return Offer::Restarted { frames };
                }
            }
            return Offer::Dropped { frames: frames + 1 };
        }
        self.push(tags);
        Offer::Queued
    }

    /// Appends one frame's tags, marking the frame boundary after the last.
    fn push(&mut self, tags: Vec<Outgoing>) {
        self.media_bytes += tags_len(&tags);
        let last = tags.len().saturating_sub(1);
        for (i, tag) in tags.into_iter().enumerate() {
            self.media.push_back((tag, i == last));
        }
    }

    /// True when something waits to be written.
    pub fn has_pending(&self) -> bool {
        self.inflight.is_some() || !self.control.is_empty() || !self.media.is_empty()
    }

    /// Bytes not yet taken by the socket: media payload queued plus the rest of the packet in
    /// flight.
    pub fn backlog(&self) -> usize {
        self.media_bytes + self.inflight.as_ref().map_or(0, |(b, pos)| b.len() - pos)
    }

    /// The bytes to write next, serializing the next media tag with `encode` when nothing
    /// serialized is waiting. `None` when the queue is empty.
    pub fn next<E>(
        &mut self,
        mut encode: impl FnMut(&Outgoing) -> Result<Bytes, E>,
    ) -> Result<Option<Bytes>, E> {
        if self.inflight.is_none() {
            if let Some(bytes) = self.control.pop_front() {
                self.inflight = Some((bytes, 0));
            } else if let Some((tag, _)) = self.media.pop_front() {
                self.media_bytes -= payload_len(&tag);
                self.inflight = Some((encode(&tag)?, 0));
            }
        }
        // A `Bytes` slice is a handle, so asking again after a partial write copies nothing.
        Ok(self.inflight.as_ref().map(|(b, pos)| b.slice(*pos..)))
    }

    /// Records that the socket took `n` bytes of what [`next`](Self::next) returned.
    pub fn advance(&mut self, n: usize) {
        if let Some((bytes, pos)) = self.inflight.as_mut() {
            *pos += n;
            if *pos >= bytes.len() {
                self.inflight = None;
            }
        }
    }

    /// The unwritten rest of the packet in flight, which must still be sent before anything
    /// else for the server to parse the stream.
    pub fn unfinished(&self) -> &[u8] {
        self.inflight.as_ref().map_or(&[], |(b, pos)| &b[*pos..])
    }
}

fn tags_len(tags: &[Outgoing]) -> usize {
    tags.iter().map(payload_len).sum()
}

fn payload_len(tag: &Outgoing) -> usize {
    match tag {
        Outgoing::Video { body, .. } => body.len(),
        // Metadata is a few hundred bytes; counted so an endless metadata stream cannot grow.
        Outgoing::Metadata(_) => 256,
    }
}

/// Turns "how fast did the socket take bytes, and is the queue growing" into a bandwidth
/// estimate for adaptive quality, at most once per second.
///
/// Only a congested path yields a measurement (otherwise the send rate is just the encoder's
/// rate); after congestion the estimate is raised step by step while the queue stays empty, so
/// quality climbs back without probing the path with extra traffic.
#[derive(Debug)]
pub struct RateEstimator {
    window_start: Instant,
    written: u64,
    /// Backlog above which the path counts as congested.
    threshold: usize,
    estimate: Option<u64>,
}

/// The lowest estimate reported: below this no video is watchable anyway and a lower number
/// would only make recovery slower.
pub const MIN_ESTIMATE_BPS: u64 = 100_000;

/// Raising stops once the estimate is this many times the rate actually sent: quality is then
/// limited by the rung, not the path.
const RECOVERED_FACTOR: u64 = 4;

impl RateEstimator {
    /// `cap` is the send queue's capacity; a backlog above a quarter of it is congestion.
    pub fn new(now: Instant, cap: usize) -> Self {
        Self {
            window_start: now,
            written: 0,
            threshold: (cap / 4).max(1),
            estimate: None,
        }
    }

    /// Starts a new measuring window (a new connection); the last estimate is kept so that
    /// recovery goes on from it.
    pub fn restart(&mut self, now: Instant) {
        self.window_start = now;
        self.written = 0;
    }

    /// Counts bytes the socket took.
    pub fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// Called about once a second; returns the estimate (bit/s) to report, if any.
    pub fn tick(&mut self, now: Instant, backlog: usize, dropped: bool) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < Duration::from_millis(500) {
            return None;
        }
        let rate = (self.written as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
        self.window_start = now;
        self.written = 0;
        // Only a backlog well past one keyframe's worth (a quarter of the queue) or a drop
        // counts: a keyframe burst on a healthy link must not lower the quality.
        if dropped || backlog > self.threshold {
            let estimate = (rate * 9 / 10).max(MIN_ESTIMATE_BPS);
            self.estimate = Some(estimate);
            return Some(estimate);
        }
        let previous = self.estimate?;
        if backlog > 0 {
            return None;
        }
        let raised = previous + previous / 4;
        if raised > rate.max(MIN_ESTIMATE_BPS) * RECOVERED_FACTOR {
            self.estimate = None;
        } else {
            self.estimate = Some(raised);
        }
        Some(raised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn video(n: usize) -> Outgoing {
        Outgoing::Video {
            timestamp_ms: 0,
            body: Bytes::from(vec![0u8; n]),
        }
    }

    /// The `restart` of an offer that must not restart anything.
    fn no_restart() -> Result<Vec<Outgoing>, ()> {
        panic!("restart asked for")
    }

    fn meta() -> Outgoing {
        Outgoing::Metadata(super::super::flv::StreamMetadata {
            codec_id: 7,
            width: 640,
            height: 360,
            framerate: None,
            videodatarate_kbps: None,
        })
    }

    fn encode(tag: &Outgoing) -> Result<Bytes, Infallible> {
        Ok(match tag {
            Outgoing::Video { body, .. } => body.clone(),
            Outgoing::Metadata(_) => Bytes::from_static(b"meta"),
        })
    }

    #[test]
    fn overflow_drops_everything_queued_and_counts_frames() {
        let mut q = SendQueue::new(1000);
        assert_eq!(
            q.offer(vec![video(300), video(100)], true, no_restart),
            Offer::Queued
        );
        assert_eq!(q.offer(vec![video(400)], false, no_restart), Offer::Queued);
        assert_eq!(q.backlog(), 800);
        assert_eq!(
            q.offer(vec![video(300)], false, no_restart),
            Offer::Dropped { frames: 3 }
        );
        assert_eq!(q.backlog(), 0);
        assert!(!q.has_pending());
        assert_eq!(q.offer(vec![video(900)], false, no_restart), Offer::Queued);
        let mut q = SendQueue::new(100);
        assert_eq!(
            q.offer(vec![video(500)], true, no_restart),
            Offer::Queued,
            "alone, too big"
        );
        assert_eq!(
            q.offer(vec![video(1)], false, no_restart),
            Offer::Dropped { frames: 2 }
        );
    }

    #[test]
    fn a_keyframe_that_overflows_the_queue_replaces_it_with_the_stream_restarted() {
        let mut q = SendQueue::new(1000);
        assert_eq!(q.offer(vec![video(300)], true, no_restart), Offer::Queued);
        assert_eq!(q.offer(vec![video(400)], false, no_restart), Offer::Queued);
        // Metadata and sequence header come back before the keyframe.
        let restarted = q.offer(vec![video(600)], true, || {
            Ok::<_, ()>(vec![meta(), video(30), video(600)])
        });
        assert_eq!(restarted, Offer::Restarted { frames: 2 });
        assert_eq!(q.backlog(), 256 + 30 + 600);
        let mut sent = Vec::new();
        while let Some(bytes) = q.next(encode).expect("ok") {
            sent.push(bytes.len());
            q.advance(bytes.len());
        }
        assert_eq!(sent, [4, 30, 600]);
        // The stream goes on behind it.
        assert_eq!(q.offer(vec![video(100)], false, no_restart), Offer::Queued);
    }

    #[test]
    fn a_keyframe_larger_than_the_queue_is_dropped_with_it() {
        let mut q = SendQueue::new(1000);
        assert_eq!(q.offer(vec![video(300)], true, no_restart), Offer::Queued);
        assert_eq!(
            q.offer(vec![video(1001)], true, no_restart),
            Offer::Dropped { frames: 2 }
        );
        assert!(!q.has_pending());
        // One that cannot be tagged again is dropped too.
        assert_eq!(q.offer(vec![video(900)], true, no_restart), Offer::Queued);
        assert_eq!(
            q.offer(vec![video(200)], true, || Err("bad SPS")),
            Offer::Dropped { frames: 2 }
        );
        assert!(!q.has_pending());
    }

    #[test]
    fn control_goes_after_the_packet_in_flight_and_before_media() {
        let mut q = SendQueue::new(1000);
        q.offer(vec![video(10), video(20)], true, no_restart);
        let first = q.next(encode).expect("ok").expect("some").len();
        assert_eq!(first, 10);
        q.advance(4);
        q.push_control(Bytes::from_static(b"ack"));
        // The partly written packet comes first, whole.
        assert_eq!(q.next(encode).expect("ok").expect("some").len(), 6);
        assert_eq!(q.unfinished().len(), 6);
        q.advance(6);
        assert_eq!(q.next(encode).expect("ok").as_deref(), Some(&b"ack"[..]));
        q.advance(3);
        assert_eq!(q.next(encode).expect("ok").expect("some").len(), 20);
        q.advance(20);
        assert_eq!(q.next(encode).expect("ok"), None);
        assert!(!q.has_pending());
    }

    #[test]
    fn estimate_follows_the_send_rate_when_congested_and_recovers_when_drained() {
        let t0 = Instant::now();
        let mut r = RateEstimator::new(t0, 1_000_000);
        // Uncongested: nothing to say.
        r.wrote(50_000);
        assert_eq!(r.tick(t0 + Duration::from_secs(1), 0, false), None);
        // Backlog above a quarter of the queue: 90 % of 200 kbit/s sent.
        r.wrote(25_000);
        assert_eq!(
            r.tick(t0 + Duration::from_secs(2), 400_000, false),
            Some(180_000)
        );
        // Drops count as congestion even with a short backlog; the floor applies.
        r.wrote(1_000);
        assert_eq!(
            r.tick(t0 + Duration::from_secs(3), 0, true),
            Some(MIN_ESTIMATE_BPS)
        );
        // Drained: the estimate climbs by a quarter per second…
        r.wrote(12_500);
        assert_eq!(r.tick(t0 + Duration::from_secs(4), 0, false), Some(125_000));
        r.wrote(12_500);
        assert_eq!(r.tick(t0 + Duration::from_secs(5), 0, false), Some(156_250));
        // …and stops once it is far above what is actually sent.
        let mut last = None;
        for s in 6..30 {
            r.wrote(12_500);
            match r.tick(t0 + Duration::from_secs(s), 0, false) {
                Some(e) => last = Some(e),
                None => break,
            }
        }
        assert!(last.expect("raised") > 400_000);
        r.wrote(12_500);
        assert_eq!(r.tick(t0 + Duration::from_secs(40), 0, false), None);
    }
}
