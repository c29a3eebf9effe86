//! The per-session media pipeline: source → (decoder → scaler →) encoder or passthrough →
//! bounded channel to the sink.
//!
//! It runs on a thread of its own because encoding is CPU-bound and must never stall the tokio
//! workers that carry MQTT replies and socket IO. With a clocked source (pattern, file) the
//! thread sleeps until the next frame is due or a control arrives (`recv_timeout`); with a live
//! source (camera, payload feed) it blocks on the source for at most [`LIVE_WAIT`] and applies
//! controls in between, so it never spins. Frames leave through a bounded channel: when the
//! sink falls behind, the frame is dropped, counted, and the next one is made a keyframe (or,
//! on passthrough, the pipeline skips to the source's next keyframe), so memory never grows and
//! the viewer recovers at once.
//!
//! Encoded sources pass through untouched when the quality is adaptive or the source already
//! has the session's size; otherwise they are transcoded. The choice is made at the source's
//! keyframes, where both paths can start cleanly. A lens switch opens the new source beside
//! the old one, which keeps flowing until the new one is ready (at once for raw sources, at its
//! first keyframe for encoded ones), so the gap in the output is about one frame interval. A
//! device that fails (camera unplugged, feed thread gone) is reopened with capped backoff while
//! the session stays up, and the stream resumes by itself.

use crate::backoff::Backoff;
use crate::media::decoder::H264Decoder;
use crate::media::encoder::{EncoderError, H264Encoder};
use crate::media::frame::{Codec, EncodedFrame, RawFrame};
use crate::media::h264::{nal_type, nal_units, Sps};
use crate::media::quality::Rung;
use crate::media::scale::{scale_i420, I420Ref};
use crate::source::{SourceError, SourceFrame, SourceSpec, VideoSource, LIVE_WAIT};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;

/// Everything a pipeline needs to start.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Source per input name (lens names, and camera positions where configured).
    pub inputs: BTreeMap<String, SourceSpec>,
    /// The input to start with; must be a key of `inputs`.
    pub input: String,
    /// Output format to start with.
    pub rung: Rung,
    /// IDR interval of the encoder, in frames.
    pub gop_frames: u32,
    /// Which openh264 encodes.
    pub backend: crate::media::encoder::Backend,
}

/// Changes applied to a running pipeline, in order, between two frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Feed the pipeline from another input; the first frame after it is a keyframe of the new
    /// content.
    Input(String),
    /// New output format (bitrate at once; size or rate from the next frame, as an IDR).
    Rung(Rung),
    /// New output format plus whether the cloud asked for adaptive quality, in which case an
    /// encoded source passes through whatever its size.
    Quality {
        /// The rung (the ceiling when adaptive).
        rung: Rung,
        /// Level 0 was asked for.
        adaptive: bool,
    },
    /// The sink needs a keyframe.
    Keyframe,
    /// End the thread.
    Stop,
}

/// What the pipeline reports to its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineEvent {
    /// An input the session switched to could not be opened; the previous one keeps feeding
    /// the session, so nothing is in error.
    InputFailed {
        /// The input's name.
        input: String,
        /// Why.
        reason: String,
    },
    /// The input feeding the session stopped delivering: a device failed and is being reopened
    /// with backoff, or a feed went silent. The session has no video until [`Self::InputUp`],
    /// which the cloud must see in `live_status`.
    InputDown {
        /// The input's name.
        input: String,
        /// Why.
        reason: String,
    },
    /// Frames flow again after [`Self::InputDown`].
    InputUp {
        /// The input's name.
        input: String,
    },
    /// The pipeline stopped by itself because it cannot go on (no input at all, encoder error).
    Fatal {
        /// Why.
        reason: String,
    },
}

/// Counters a session (and later the metrics endpoint) reads without locking.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Frames handed to the sink.
    pub frames_sent: AtomicU64,
    /// Frames dropped because the sink's queue was full.
    pub frames_dropped: AtomicU64,
    /// Bytes handed to the sink.
    pub bytes_sent: AtomicU64,
    /// Total encode time in microseconds.
    pub encode_us: AtomicU64,
    /// Bitrate of the rung in force, kbit/s.
    pub bitrate_kbps: AtomicU64,
    /// Encoded source units skipped while waiting for a keyframe (after a drop, a switch or a
    /// sink's request on passthrough).
    pub skipped_to_key: AtomicU64,
    /// Encoded source units that went out untouched.
    pub passed_through: AtomicU64,
    /// Encoded source units decoded and re-encoded.
    pub transcoded: AtomicU64,
    /// Access units the decoder rejected.
    pub decode_errors: AtomicU64,
    /// Frames a device delivered that could not be read (a truncated JPEG), skipped.
    pub bad_frames: AtomicU64,
    /// Times the input failed while running.
    pub input_failures: AtomicU64,
    /// True while the input is failed and being retried: the session is in error.
    pub input_down: AtomicBool,
    /// Completed lens (input) switches.
    pub switches: AtomicU64,
}

/// The running pipeline: its control channel and thread.
pub struct Pipeline {
    control: Sender<Control>,
    thread: Option<JoinHandle<()>>,
    /// Counters, shared with the thread.
    pub stats: Arc<PipelineStats>,
}

impl Pipeline {
    /// Starts the pipeline thread. Frames go to `frames`; problems to `events`.
    pub fn spawn(
        spec: PipelineSpec,
        frames: tokio::sync::mpsc::Sender<EncodedFrame>,
        events: tokio::sync::mpsc::Sender<PipelineEvent>,
    ) -> std::io::Result<Pipeline> {
        let (control, rx) = std::sync::mpsc::channel();
        let stats = Arc::new(PipelineStats::default());
        let worker = Worker::new(spec, frames, events, Arc::clone(&stats));
        let thread = std::thread::Builder::new()
            .name("dockcast-pipeline".into())
            .spawn(move || worker.run(rx))?;
        Ok(Pipeline {
            control,
            thread: Some(thread),
            stats,
        })
    }

    /// Queues a change; it takes effect before the next frame. Sending to a pipeline that
    /// already ended is harmless.
    pub fn send(&self, control: Control) {
        let _ = self.control.send(control);
    }

    /// A cheap handle that can send controls from another task.
    pub fn controller(&self) -> Sender<Control> {
        self.control.clone()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(thread) = self.thread.take() {
            // The worker checks its control channel at least once per frame interval (or
            // LIVE_WAIT), so this join is short; it keeps the encoder from outliving its session.
            let _ = thread.join();
        }
    }
}

/// Unreadable frames in a row after which a device counts as failed and is reopened: a second
/// of them at 30 fps. Fewer are skipped one by one.
const BAD_FRAMES_TO_FAIL: u32 = 30;

/// Backoff of device reopen attempts: quick for a glitch, capped for a camera that is gone.
const RETRY_INITIAL: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Source timestamps further than this from the expected next one are a discontinuity (a
/// restarted app, a camera whose clock reset): the mapping is re-anchored instead of followed.
const MAX_TS_JUMP: Duration = Duration::from_secs(1);

/// A live source's timestamps as the session clock follows them.
#[derive(Debug, Default)]
struct SourceClock {
    /// Source timestamp ↔ session pts of one frame; `None` until the next frame sets it.
    anchor: Option<(Duration, Duration)>,
    /// The previous frame's source timestamp.
    last_ts: Option<Duration>,
}

/// The input in use.
struct Active {
    name: String,
    spec: SourceSpec,
    src: Box<dyn VideoSource>,
    live: bool,
    /// How the source's timestamps map onto the session clock, for live sources.
    clock: SourceClock,
    /// Size from the source's last SPS.
    coded_size: Option<(u32, u32)>,
    /// Encoded source: pass through (true) or transcode (false); decided at its keyframes.
    passthrough: bool,
    /// Set while transcoding, from a keyframe on.
    decoder: Option<H264Decoder>,
    /// When a keyframe was last asked of the source, if since its last keyframe.
    asked_key: Option<Instant>,
    /// The source delivers raw pictures (known from its first frame).
    raw: bool,
    /// Frames in a row the device delivered but could not be read.
    bad_in_row: u32,
}

impl Active {
    fn new(name: &str, spec: SourceSpec, src: Box<dyn VideoSource>) -> Self {
        Active {
            name: name.to_string(),
            spec,
            live: src.is_live(),
            src,
            clock: SourceClock::default(),
            coded_size: None,
            passthrough: true,
            decoder: None,
            asked_key: None,
            raw: false,
            bad_in_row: 0,
        }
    }

    /// Asks the producer for a keyframe, again each second while none comes (a request can
    /// be lost while the app restarts).
    fn ask_key(&mut self) {
        if self
            .asked_key
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.asked_key = Some(Instant::now());
            self.src.request_keyframe();
        }
    }
}

/// A device being reopened after a failure.
struct Retry {
    name: String,
    spec: SourceSpec,
    at: Instant,
}

/// What one pull from a source gave, detached from the source's borrow where it can be.
enum Pulled {
    Nothing,
    Encoded {
        data: Bytes,
        keyframe: bool,
    },
    /// A raw picture; it stays in the source and is read from there.
    Raw,
}

struct Worker {
    spec: PipelineSpec,
    frames: tokio::sync::mpsc::Sender<EncodedFrame>,
    events: tokio::sync::mpsc::Sender<PipelineEvent>,
    stats: Arc<PipelineStats>,
    active: Option<Active>,
    /// The input being switched to, until it is ready.
    pending: Option<Active>,
    retry: Option<Retry>,
    /// Delays between reopens, kept across failures: a camera that opens but fails at once
    /// (STREAMON refused for want of USB bandwidth, reads failing) must not be reopened every
    /// `RETRY_INITIAL` for as long as the fault lasts, with a log line each time.
    reopen: Backoff,
    /// When an input last came back after a failure; how long it then held decides whether the
    /// next failure starts the delays over.
    back_at: Option<Instant>,
    encoder: Option<H264Encoder>,
    /// The session's picture at the rung's size, for scaled and decoded frames.
    canvas: RawFrame,
    rung: Rung,
    adaptive: bool,
    /// Set after a switch, a drop or a sink's request: the encoder forces an IDR, passthrough
    /// skips to the next keyframe.
    want_key: bool,
    last_pts: Option<Duration>,
    /// Name of the input asked for last, for reports.
    current: String,
}

enum Step {
    Continue,
    Stop,
}

impl Worker {
    fn new(
        spec: PipelineSpec,
        frames: tokio::sync::mpsc::Sender<EncodedFrame>,
        events: tokio::sync::mpsc::Sender<PipelineEvent>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        let rung = spec.rung;
        Worker {
            spec,
            frames,
            events,
            stats,
            active: None,
            pending: None,
            retry: None,
            reopen: Backoff::new(RETRY_INITIAL, RETRY_MAX),
            back_at: None,
            encoder: None,
            canvas: RawFrame::black(rung.width as usize, rung.height as usize),
            rung,
            adaptive: false,
            want_key: true,
            last_pts: None,
            current: String::new(),
        }
    }

    fn report(&self, event: PipelineEvent) {
        let _ = self.events.try_send(event);
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.rung.fps.max(1)
    }

    fn run(mut self, control: Receiver<Control>) {
        self.stats
            .bitrate_kbps
            .store(self.rung.bitrate_kbps.into(), Ordering::Relaxed);
        let first = self.spec.input.clone();
        self.current = first.clone();
        match self.spec.inputs.get(&first).cloned() {
            Some(spec) => match spec.open(&first) {
                Ok(src) => self.active = Some(Active::new(&first, spec, src)),
                Err(e) if spec.is_device() => {
                    // A camera not plugged in yet, a feed address busy: the session waits for it.
                    self.fail(&first, spec, e.to_string());
                }
                Err(e) => {
                    self.report(PipelineEvent::Fatal {
                        reason: format!("input {first} could not be opened: {e}"),
                    });
                    return;
                }
            },
            None => {
                self.report(PipelineEvent::Fatal {
                    reason: format!("input {first} could not be opened: no such input"),
                });
                return;
            }
        }
        let mut due = Instant::now();
        loop {
            let clocked = self.active.as_ref().is_some_and(|a| !a.live);
            if clocked {
                // Sleep until the frame is due, applying controls as they come. A source that
                // is behind has its frame due already; what is queued is still applied, or a
                // board too slow for the rung could never be stopped or given a lower one.
                loop {
                    // A zero wait still takes what is queued.
                    match control.recv_timeout(due.saturating_duration_since(Instant::now())) {
                        Ok(c) => {
                            if let Step::Stop = self.apply(c) {
                                return;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            } else if self.active.is_some() || self.pending.is_some() {
                // The source blocks (bounded) below; here only what is already queued.
                loop {
                    match control.try_recv() {
                        Ok(c) => {
                            if let Step::Stop = self.apply(c) {
                                return;
                            }
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                }
            } else {
                // Nothing to read: wait for a control or the next reopen attempt.
                let wait = self.retry.as_ref().map_or(Duration::from_secs(1), |r| {
                    r.at.saturating_duration_since(Instant::now())
                });
                match control.recv_timeout(wait) {
                    Ok(c) => {
                        if let Step::Stop = self.apply(c) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            self.retry_if_due();
            if let Step::Stop = self.produce() {
                return;
            }
            if clocked {
                let interval = self.interval();
                due += interval;
                // After a stall (a slow encode, a suspended VM) the slots that went by are
                // skipped instead of bursting frames to catch up, which would only flood the
                // sink. The stamps skip them too: a board that encodes slower than the rung's
                // rate then streams fewer frames at the right times, rather than all of them
                // stamped too close, which a player would show fast and ever later.
                let now = Instant::now();
                if due + interval * 3 < now {
                    let missed = (now - due).as_nanos() / interval.as_nanos().max(1);
                    let missed = u32::try_from(missed).unwrap_or(u32::MAX);
                    due += interval.saturating_mul(missed);
                    self.skip_slots(missed);
                }
            } else {
                due = Instant::now();
            }
        }
    }

    fn apply(&mut self, control: Control) -> Step {
        match control {
            Control::Input(name) => self.switch_input(&name),
            Control::Rung(rung) => return self.set_rung(rung),
            Control::Quality { rung, adaptive } => {
                self.adaptive = adaptive;
                return self.set_rung(rung);
            }
            Control::Keyframe => match self.active.as_mut() {
                // Passthrough cannot make an IDR: ask the producer for one and keep the frames
                // flowing. The sink itself waits for the next keyframe; skipping here as well
                // would cut a GOP out of a stream whose keyframe the sink may already have.
                Some(a) if a.passthrough && !a.raw => a.ask_key(),
                _ => self.want_key = true,
            },
            Control::Stop => return Step::Stop,
        }
        Step::Continue
    }

    fn set_rung(&mut self, rung: Rung) -> Step {
        if let Some(enc) = self.encoder.as_mut() {
            if let Err(e) = enc.set_rung(rung) {
                self.report(PipelineEvent::Fatal {
                    reason: e.to_string(),
                });
                return Step::Stop;
            }
        }
        if (rung.width, rung.height) != (self.rung.width, self.rung.height) {
            self.canvas = RawFrame::black(rung.width as usize, rung.height as usize);
            // An encoded source may have to move between passthrough and transcoding, which
            // happens at its next keyframe: ask for one.
            if let Some(a) = self.active.as_mut() {
                a.ask_key();
            }
        }
        self.rung = rung;
        self.stats
            .bitrate_kbps
            .store(rung.bitrate_kbps.into(), Ordering::Relaxed);
        Step::Continue
    }

    fn switch_input(&mut self, name: &str) {
        self.current = name.to_string();
        let Some(spec) = self.spec.inputs.get(name).cloned() else {
            self.report(PipelineEvent::InputFailed {
                input: name.to_string(),
                reason: "no such input is configured".to_string(),
            });
            return;
        };
        if spec.is_device() && self.active.as_ref().is_some_and(|a| a.spec == spec) {
            // Two lenses fed by the same device (one feed, one camera): nothing to reopen, and
            // the device could not be opened twice anyway.
            if let Some(a) = self.active.as_mut() {
                a.name = name.to_string();
                if a.raw || !a.passthrough {
                    self.want_key = true;
                }
            }
            self.pending = None;
            self.stats.switches.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Opening the new device while the old one keeps flowing: both must not hold the same
        // resource, which the equality check above rules out.
        self.pending = None;
        match spec.open(name) {
            Ok(src) => {
                let mut p = Active::new(name, spec, src);
                p.ask_key();
                if self.active.is_none() {
                    self.retry = None;
                    self.promote(p);
                } else {
                    self.pending = Some(p);
                }
            }
            Err(e) => {
                if self.active.is_none() && spec.is_device() {
                    self.fail(name, spec, e.to_string());
                } else {
                    self.report(PipelineEvent::InputFailed {
                        input: name.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    fn promote(&mut self, next: Active) {
        // A reopen scheduled for an input the session has since switched away from (it failed
        // while the new one was waiting for its keyframe) must not take over again later.
        if self.retry.as_ref().is_some_and(|r| r.name != next.name) {
            self.retry = None;
        }
        self.active = Some(next);
        self.want_key = true;
        self.stats.switches.fetch_add(1, Ordering::Relaxed);
    }

    /// The input is in error: record it once and tell the session.
    fn input_down(&mut self, input: &str, reason: String) {
        self.stats.input_down.store(true, Ordering::Relaxed);
        self.report(PipelineEvent::InputDown {
            input: input.to_string(),
            reason,
        });
    }

    /// The input failed: report it and schedule a reopen (devices) or give it up (files).
    fn fail(&mut self, name: &str, spec: SourceSpec, reason: String) {
        self.stats.input_failures.fetch_add(1, Ordering::Relaxed);
        self.want_key = true;
        if spec.is_device() {
            if let Some(at) = self.back_at.take() {
                self.reopen.connection_ended(at.elapsed());
            }
            let delay = self
                .reopen
                .next_delay(&mut rand::rng())
                .max(Duration::from_millis(50));
            tracing::warn!(input = name, retry_in = ?delay, "input failed, reopening: {reason}");
            self.input_down(name, format!("{reason}; reopening with backoff"));
            self.retry = Some(Retry {
                name: name.to_string(),
                spec,
                at: Instant::now() + delay,
            });
        } else {
            self.report(PipelineEvent::InputFailed {
                input: name.to_string(),
                reason,
            });
        }
    }

    fn retry_if_due(&mut self) {
        let Some(r) = self.retry.as_mut() else { return };
        if Instant::now() < r.at {
            return;
        }
        match r.spec.open(&r.name) {
            Ok(src) => {
                let Some(r) = self.retry.take() else { return };
                tracing::info!(input = %r.name, attempts = self.reopen.attempt(), "input is back");
                self.back_at = Some(Instant::now());
                let mut a = Active::new(&r.name, r.spec, src);
                a.ask_key();
                self.promote(a);
            }
            Err(e) => {
                let delay = self
                    .reopen
                    .next_delay(&mut rand::rng())
                    .max(Duration::from_millis(50));
                r.at = Instant::now() + delay;
                tracing::debug!(input = %r.name, attempt = self.reopen.attempt(), ?delay, "reopen failed: {e}");
            }
        }
    }

    /// Moves the session clock past `n` frame slots no frame was made for, so that a clocked
    /// source's next stamp is the time of its slot.
    fn skip_slots(&mut self, n: u32) {
        let gap = self.interval().saturating_mul(n);
        self.last_pts = self.last_pts.map(|p| p.saturating_add(gap));
    }

    /// Maps a frame's source timestamp onto the session clock: monotonic, continuous across
    /// switches (a new source starts one interval after the last frame), following the source's
    /// own spacing while it is plausible.
    fn stamp(&mut self, src_ts: Option<Duration>, clock: &mut SourceClock) -> Duration {
        let interval = self.interval();
        let nominal = self.last_pts.map_or(Duration::ZERO, |p| p + interval);
        let floor = self
            .last_pts
            .map_or(Duration::ZERO, |p| p + Duration::from_millis(1));
        let previous = std::mem::replace(&mut clock.last_ts, src_ts);
        let anchor = &mut clock.anchor;
        let pts = match (src_ts, *anchor) {
            (Some(ts), _) if previous == Some(ts) => {
                // A backlog read at once: an arrival-time clock gives every unit of it the time
                // of the read. They are spaced one interval apart, and the frame after them
                // anchors afresh, since its time measured from the stale read time would
                // squeeze it against the last of them.
                *anchor = None;
                nominal
            }
            (Some(ts), Some((ts0, p0))) if ts >= ts0 => {
                let p = p0 + (ts - ts0);
                if p >= floor && p <= nominal + MAX_TS_JUMP {
                    p
                } else {
                    *anchor = Some((ts, nominal));
                    nominal
                }
            }
            (Some(ts), _) => {
                *anchor = Some((ts, nominal));
                nominal
            }
            (None, _) => nominal,
        };
        self.last_pts = Some(pts);
        pts
    }

    fn poll_pending(&mut self) -> Option<(Bytes, Option<Duration>)> {
        let p = self.pending.as_mut()?;
        let wait = if self.active.is_none() {
            LIVE_WAIT
        } else {
            Duration::ZERO
        };
        let pulled = match p.src.wait_frame(&self.rung, wait) {
            Ok(Some(SourceFrame::Encoded { data, keyframe })) => Pulled::Encoded { data, keyframe },
            Ok(Some(SourceFrame::Raw(_))) => Pulled::Raw,
            Ok(None) => Pulled::Nothing,
            // An unreadable frame of the input being switched to: wait for the next one.
            Err(SourceError::BadFrame { .. }) => Pulled::Nothing,
            Err(e) => {
                let name = p.name.clone();
                self.pending = None;
                self.report(PipelineEvent::InputFailed {
                    input: name,
                    reason: e.to_string(),
                });
                return None;
            }
        };
        match pulled {
            Pulled::Nothing => None,
            Pulled::Raw => {
                // Raw sources are ready at once; their next picture is encoded as an IDR.
                let p = self.pending.take()?;
                self.promote(p);
                None
            }
            Pulled::Encoded {
                keyframe: false, ..
            } => {
                self.stats.skipped_to_key.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = self.pending.as_mut() {
                    p.ask_key();
                }
                None
            }
            Pulled::Encoded {
                data,
                keyframe: true,
            } => {
                let p = self.pending.take()?;
                let ts = p.src.timestamp();
                self.promote(p);
                Some((data, ts))
            }
        }
    }

    fn produce(&mut self) -> Step {
        let switched = self.poll_pending();
        let Some(mut a) = self.active.take() else {
            return Step::Continue;
        };
        let pulled = match switched {
            Some((data, ts)) => Ok((
                Pulled::Encoded {
                    data,
                    keyframe: true,
                },
                ts,
            )),
            None => {
                let r = if a.live {
                    a.src.wait_frame(&self.rung, LIVE_WAIT)
                } else {
                    a.src.next_frame(&self.rung).map(Some)
                };
                match r {
                    Ok(Some(SourceFrame::Encoded { data, keyframe })) => {
                        Ok((Pulled::Encoded { data, keyframe }, a.src.timestamp()))
                    }
                    Ok(Some(SourceFrame::Raw(_))) => Ok((Pulled::Raw, a.src.timestamp())),
                    Ok(None) => Ok((Pulled::Nothing, None)),
                    Err(e) => Err(e),
                }
            }
        };
        if let Some(notice) = a.src.take_notice() {
            self.input_down(&a.name, notice);
        }
        let (pulled, ts) = match pulled {
            Ok(p) => p,
            Err(SourceError::BadFrame { device, why }) if a.bad_in_row + 1 < BAD_FRAMES_TO_FAIL => {
                // A corrupt JPEG now and then is a USB camera's normal life: skip the frame,
                // keep the device. Only a run of them (a device that sends nothing readable)
                // is treated as a failure below.
                a.bad_in_row += 1;
                let total = self.stats.bad_frames.fetch_add(1, Ordering::Relaxed) + 1;
                if total.is_power_of_two() {
                    tracing::warn!(input = %a.name, device, total, "skipped a frame that could not be read: {why}");
                }
                self.active = Some(a);
                return Step::Continue;
            }
            Err(e) => {
                let e: SourceError = e;
                let (name, spec) = (a.name.clone(), a.spec.clone());
                drop(a);
                self.fail(&name, spec, e.to_string());
                return Step::Continue;
            }
        };
        if let Pulled::Nothing = pulled {
            self.active = Some(a);
            return Step::Continue;
        }
        a.bad_in_row = 0;
        if self.stats.input_down.swap(false, Ordering::Relaxed) {
            tracing::info!(input = %a.name, "input delivers again");
            self.report(PipelineEvent::InputUp {
                input: a.name.clone(),
            });
        }
        let pts = self.stamp(if a.live { ts } else { None }, &mut a.clock);
        let out = match pulled {
            Pulled::Nothing => Ok(None),
            Pulled::Raw => {
                a.raw = true;
                self.encode_raw(&a, pts)
            }
            Pulled::Encoded { data, keyframe } => self.encoded(&mut a, data, keyframe, pts),
        };
        self.active = Some(a);
        let frame = match out {
            Ok(Some(frame)) => frame,
            Ok(None) => return Step::Continue,
            Err(reason) => {
                self.report(PipelineEvent::Fatal { reason });
                return Step::Stop;
            }
        };
        self.send(frame)
    }

    fn send(&mut self, frame: EncodedFrame) -> Step {
        let len = frame.data.len() as u64;
        match self.frames.try_send(frame) {
            Ok(()) => {
                self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
                Step::Continue
            }
            Err(TrySendError::Full(_)) => {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                self.want_key = true;
                if let Some(a) = self.active.as_mut() {
                    if a.passthrough {
                        a.ask_key();
                    }
                }
                Step::Continue
            }
            Err(TrySendError::Closed(_)) => Step::Stop,
        }
    }

    fn encoder(&mut self) -> Result<&mut H264Encoder, String> {
        if self.encoder.is_none() {
            let enc = H264Encoder::with_backend(
                self.rung,
                self.spec.gop_frames,
                self.spec.backend.clone(),
            )
            .map_err(|e: EncoderError| e.to_string())?;
            self.encoder = Some(enc);
        }
        self.encoder
            .as_mut()
            .ok_or_else(|| "encoder unavailable".to_string())
    }

    /// Encodes the session canvas, or `picture` when it already has the rung's size.
    fn encode_picture(
        &mut self,
        picture: Option<&RawFrame>,
        pts: Duration,
    ) -> Result<Option<EncodedFrame>, String> {
        let want_key = std::mem::take(&mut self.want_key);
        let started = Instant::now();
        // Split borrows: the canvas is read while the encoder is written.
        if self.encoder.is_none() {
            self.encoder()?;
        }
        let (Some(encoder), canvas) = (self.encoder.as_mut(), &self.canvas) else {
            return Err("encoder unavailable".into());
        };
        if want_key {
            encoder.force_keyframe();
        }
        let out = encoder
            .encode(picture.unwrap_or(canvas), pts)
            .map_err(|e| e.to_string())?;
        self.stats
            .encode_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(out)
    }

    fn encode_raw(&mut self, a: &Active, pts: Duration) -> Result<Option<EncodedFrame>, String> {
        let Some(picture) = a.src.current_picture() else {
            return Ok(None);
        };
        let fits = picture.width == self.rung.width as usize
            && picture.height == self.rung.height as usize;
        if fits {
            // No copy: the encoder reads the source's own frame.
            return self.encode_picture(Some(picture), pts);
        }
        if let Err(e) = scale_i420(&I420Ref::from_frame(picture), &mut self.canvas) {
            tracing::warn!(input = %a.name, "bad picture: {e}");
            return Ok(None);
        }
        self.encode_picture(None, pts)
    }

    fn encoded(
        &mut self,
        a: &mut Active,
        data: Bytes,
        keyframe: bool,
        pts: Duration,
    ) -> Result<Option<EncodedFrame>, String> {
        let codec = a.src.codec();
        if keyframe {
            a.asked_key = None;
            if codec == Codec::H264 {
                if let Some(size) = sps_size(&data) {
                    a.coded_size = Some(size);
                }
            }
            let fits = a
                .coded_size
                .is_none_or(|s| s == (self.rung.width, self.rung.height));
            // H.265 has no decoder here to transcode with: it always goes out as it came, and
            // the quality ladder changes nothing for it.
            let pass = self.adaptive || fits || codec == Codec::H265;
            if pass != a.passthrough {
                tracing::info!(input = %a.name, passthrough = pass, size = ?a.coded_size, "encoded input path");
            }
            a.passthrough = pass;
            if pass {
                a.decoder = None;
            } else if a.decoder.is_none() {
                a.decoder = Some(H264Decoder::new().map_err(|e| e.to_string())?);
                // The encoder's first picture from this source must be an IDR.
                self.want_key = true;
            }
        }
        if a.passthrough {
            if self.want_key && !keyframe {
                self.stats.skipped_to_key.fetch_add(1, Ordering::Relaxed);
                a.ask_key();
                return Ok(None);
            }
            if keyframe {
                self.want_key = false;
            }
            self.stats.passed_through.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(EncodedFrame {
                data,
                pts,
                keyframe,
                codec,
            }));
        }
        let Some(decoder) = a.decoder.as_mut() else {
            self.stats.skipped_to_key.fetch_add(1, Ordering::Relaxed);
            a.ask_key();
            return Ok(None);
        };
        match decoder.decode_into(&data, &mut self.canvas) {
            Ok(true) => {
                self.stats.transcoded.fetch_add(1, Ordering::Relaxed);
                self.encode_picture(None, pts)
            }
            Ok(false) => Ok(None),
            Err(e) => {
                // Corrupt input: restart decoding at the next keyframe.
                self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(input = %a.name, "decode failed: {e}");
                a.decoder = None;
                a.ask_key();
                Ok(None)
            }
        }
    }
}

/// The picture size announced by the first SPS of an access unit.
fn sps_size(au: &[u8]) -> Option<(u32, u32)> {
    nal_units(au)
        .find(|n| n[0] & 0x1f == nal_type::SPS)
        .and_then(|n| Sps::parse(n).ok())
        .map(|s| (s.width, s.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PipelineSpec {
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "normal".to_string(),
            SourceSpec::Pattern(None, Default::default()),
        );
        inputs.insert(
            "zoom".to_string(),
            SourceSpec::Pattern(None, Default::default()),
        );
        PipelineSpec {
            inputs,
            input: "normal".into(),
            rung: Rung {
                width: 64,
                height: 48,
                fps: 60,
                bitrate_kbps: 200,
            },
            gop_frames: 1000,
            backend: Default::default(),
        }
    }

    fn recv(rx: &mut tokio::sync::mpsc::Receiver<EncodedFrame>) -> EncodedFrame {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match rx.try_recv() {
                Ok(f) => return f,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("no frame within 5 s: {e}"),
            }
        }
    }

    #[test]
    fn switch_forces_keyframe_and_pts_stay_monotonic() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let (etx, mut erx) = tokio::sync::mpsc::channel(8);
        let p = Pipeline::spawn(spec(), tx, etx).unwrap();
        let first = recv(&mut rx);
        assert!(first.keyframe);
        let mut last = first.pts;
        for _ in 0..5 {
            let f = recv(&mut rx);
            assert!(!f.keyframe);
            assert!(f.pts > last);
            last = f.pts;
        }
        p.send(Control::Input("zoom".into()));
        // Frames already queued before the switch are inter frames; the first keyframe must come
        // within a few frames, not at the 1000-frame GOP.
        let mut saw_key = false;
        for _ in 0..10 {
            let f = recv(&mut rx);
            assert!(f.pts > last);
            last = f.pts;
            if f.keyframe {
                saw_key = true;
                break;
            }
        }
        assert!(saw_key, "no keyframe after the switch");
        p.send(Control::Input("nope".into()));
        let ev = {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(e) = erx.try_recv() {
                    break e;
                }
                assert!(Instant::now() < deadline, "no event");
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        assert!(matches!(ev, PipelineEvent::InputFailed { ref input, .. } if input == "nope"));
        // The old input keeps flowing.
        let f = recv(&mut rx);
        assert!(f.pts > last);
    }

    #[test]
    fn full_queue_drops_and_next_frame_is_key() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let (etx, _erx) = tokio::sync::mpsc::channel(8);
        let p = Pipeline::spawn(spec(), tx, etx).unwrap();
        // Let the queue overflow.
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.stats.frames_dropped.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "never dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Drain what was queued before the drop; a keyframe must follow.
        let _ = recv(&mut rx);
        let _ = recv(&mut rx);
        let mut saw_key = false;
        for _ in 0..3 {
            if recv(&mut rx).keyframe {
                saw_key = true;
                break;
            }
        }
        assert!(saw_key);
    }

    /// A source that fails after `frames` pictures, as an unplugged camera does.
    struct Flaky {
        left: usize,
        frame: RawFrame,
        t: Duration,
    }

    impl VideoSource for Flaky {
        fn next_frame(&mut self, _rung: &Rung) -> Result<SourceFrame<'_>, SourceError> {
            if self.left == 0 {
                return Err(SourceError::Device {
                    device: "/dev/video7".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENODEV),
                });
            }
            self.left -= 1;
            self.t += Duration::from_millis(10);
            std::thread::sleep(Duration::from_millis(10));
            Ok(SourceFrame::Raw(&self.frame))
        }
        fn is_live(&self) -> bool {
            true
        }
        fn timestamp(&self) -> Option<Duration> {
            Some(self.t)
        }
        fn current_picture(&self) -> Option<&RawFrame> {
            Some(&self.frame)
        }
    }

    #[test]
    fn unplugged_device_reports_error_retries_and_resumes() {
        use std::sync::atomic::AtomicUsize;
        // Opens: 1st works for 5 frames; the next 2 fail (device gone); then it is back.
        let opens = Arc::new(AtomicUsize::new(0));
        let o = Arc::clone(&opens);
        let fake = crate::source::FakeSpec(Arc::new(move || {
            let n = o.fetch_add(1, Ordering::SeqCst);
            if n == 1 || n == 2 {
                return Err(SourceError::Device {
                    device: "/dev/video7".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOENT),
                });
            }
            Ok(Box::new(Flaky {
                left: if n == 0 { 5 } else { 1000 },
                frame: RawFrame::black(32, 24),
                t: Duration::from_secs(100 * n as u64),
            }) as Box<dyn VideoSource>)
        }));
        let mut s = spec();
        s.inputs.insert("normal".into(), SourceSpec::Fake(fake));
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let (etx, mut erx) = tokio::sync::mpsc::channel(8);
        let p = Pipeline::spawn(s, tx, etx).unwrap();
        let mut last = None;
        for _ in 0..5 {
            let f = recv(&mut rx);
            assert!(last.is_none_or(|l| f.pts > l));
            last = Some(f.pts);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let ev = loop {
            if let Ok(e) = erx.try_recv() {
                break e;
            }
            assert!(Instant::now() < deadline, "no error event");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            matches!(&ev, PipelineEvent::InputDown { input, reason } if input == "normal" && reason.contains("/dev/video7")),
            "{ev:?}"
        );
        // Back by itself: the first frame after the gap is an IDR with a later pts, scaled to
        // the rung.
        let f = recv(&mut rx);
        assert!(f.keyframe);
        assert!(f.pts > last.unwrap_or_default());
        assert!(opens.load(Ordering::SeqCst) >= 4);
        assert!(!p.stats.input_down.load(Ordering::Relaxed));
        // The session hears that it has video again.
        assert_eq!(
            erx.try_recv().ok(),
            Some(PipelineEvent::InputUp {
                input: "normal".into()
            })
        );
        assert_eq!(p.stats.input_failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_camera_that_opens_but_always_fails_is_reopened_at_growing_intervals() {
        // Opens fine, fails on the first read: as a camera whose STREAMON is refused for want
        // of USB bandwidth. The delays climb 0.25, 0.5, 1, 2 s (drawn below each ceiling)
        // instead of starting over at 0.25 s with every reopen that succeeds.
        let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let o = Arc::clone(&opens);
        let cam = crate::source::FakeSpec(Arc::new(move || {
            o.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Flaky {
                left: 0,
                frame: RawFrame::black(32, 24),
                t: Duration::ZERO,
            }) as Box<dyn VideoSource>)
        }));
        let mut s = spec();
        s.inputs.insert("normal".into(), SourceSpec::Fake(cam));
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let (etx, _erx) = tokio::sync::mpsc::channel(64);
        let p = Pipeline::spawn(s, tx, etx).unwrap();
        std::thread::sleep(Duration::from_millis(2600));
        let n = opens.load(Ordering::SeqCst);
        drop(p);
        // Every 50–250 ms that would be about twenty.
        assert!((2..=10).contains(&n), "{n} opens in 2.6 s");
    }

    /// An encoded live source whose first keyframe comes 120 ms after it opens, each of its
    /// units marked `B`.
    struct LateKey {
        opened: Instant,
    }

    impl VideoSource for LateKey {
        fn next_frame(&mut self, _rung: &Rung) -> Result<SourceFrame<'_>, SourceError> {
            std::thread::sleep(Duration::from_millis(10));
            Ok(SourceFrame::Encoded {
                data: Bytes::from_static(b"\x00\x00\x00\x01\x65BBBB"),
                keyframe: self.opened.elapsed() > Duration::from_millis(120),
            })
        }
        fn is_live(&self) -> bool {
            true
        }
    }

    #[test]
    fn an_input_that_fails_while_leaving_it_is_not_reopened_over_the_new_one() {
        // Input a fails after 5 frames, just after the switch to b, before b's first keyframe.
        let opens_a = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let o = Arc::clone(&opens_a);
        let a = crate::source::FakeSpec(Arc::new(move || {
            let n = o.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Flaky {
                left: if n == 0 { 5 } else { 100_000 },
                frame: RawFrame::black(32, 24),
                t: Duration::from_secs(100 * n as u64),
            }) as Box<dyn VideoSource>)
        }));
        let b = crate::source::FakeSpec(Arc::new(|| {
            Ok(Box::new(LateKey {
                opened: Instant::now(),
            }) as Box<dyn VideoSource>)
        }));
        let mut s = spec();
        s.inputs.insert("normal".into(), SourceSpec::Fake(a));
        s.inputs.insert("zoom".into(), SourceSpec::Fake(b));
        let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
        let (etx, _erx) = tokio::sync::mpsc::channel(64);
        let p = Pipeline::spawn(s, tx, etx).unwrap();
        let _ = recv(&mut rx);
        p.send(Control::Input("zoom".into()));
        let is_b = |f: &EncodedFrame| f.data.ends_with(b"BBBB");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_b(&recv(&mut rx)) {
            assert!(Instant::now() < deadline, "the switch to b never happened");
        }
        // Past any reopen a's failure could have scheduled (at most RETRY_INITIAL away).
        std::thread::sleep(RETRY_INITIAL * 3);
        let mut from_a = 0;
        while let Ok(f) = rx.try_recv() {
            from_a += usize::from(!is_b(&f));
        }
        assert_eq!(
            from_a,
            0,
            "input a came back over b ({} opens of a)",
            opens_a.load(Ordering::SeqCst)
        );
    }

    /// A 16x16 MJPEG camera whose frames are truncated where `bad` says, as a USB hiccup
    /// leaves them.
    struct MjpegCam {
        n: usize,
        jpeg: Vec<u8>,
        bad: fn(usize) -> bool,
        t: Duration,
    }

    impl crate::source::v4l2::CaptureDevice for MjpegCam {
        fn negotiated(&self) -> crate::source::v4l2::Negotiated {
            crate::source::v4l2::Negotiated {
                format: crate::source::v4l2::PixelFormat::Mjpeg,
                width: 16,
                height: 16,
                stride: 0,
            }
        }
        fn capture(&mut self) -> std::io::Result<crate::source::v4l2::Captured<'_>> {
            self.n += 1;
            self.t += Duration::from_millis(33);
            std::thread::sleep(Duration::from_millis(5));
            let data = if (self.bad)(self.n) {
                &self.jpeg[..self.jpeg.len() / 2]
            } else {
                &self.jpeg[..]
            };
            Ok(crate::source::v4l2::Captured {
                data,
                timestamp: self.t,
            })
        }
    }

    /// Runs a pipeline on an [`MjpegCam`] until `frames` frames came out or `within` passed;
    /// the pipeline's counters and the events it sent.
    fn run_mjpeg_cam(
        bad: fn(usize) -> bool,
        frames: usize,
        within: Duration,
    ) -> (Arc<PipelineStats>, Vec<PipelineEvent>, usize) {
        let cam = crate::source::FakeSpec(Arc::new(move || {
            Ok(Box::new(crate::source::v4l2::V4l2Source::new(
                "/dev/video9",
                MjpegCam {
                    n: 0,
                    jpeg: crate::source::v4l2::tests::jpeg(3),
                    bad,
                    t: Duration::ZERO,
                },
            )) as Box<dyn VideoSource>)
        }));
        let mut s = spec();
        s.inputs.insert("normal".into(), SourceSpec::Fake(cam));
        let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
        let (etx, mut erx) = tokio::sync::mpsc::channel(64);
        let p = Pipeline::spawn(s, tx, etx).unwrap();
        let deadline = Instant::now() + within;
        let mut got = 0;
        while got < frames && Instant::now() < deadline {
            match rx.try_recv() {
                Ok(_) => got += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        let stats = Arc::clone(&p.stats);
        drop(p);
        let mut events = Vec::new();
        while let Ok(e) = erx.try_recv() {
            events.push(e);
        }
        (stats, events, got)
    }

    #[test]
    fn a_corrupt_camera_frame_is_skipped_without_reopening_the_device() {
        let (stats, events, got) = run_mjpeg_cam(|n| n % 5 == 0, 40, Duration::from_secs(10));
        assert_eq!(got, 40, "{events:?}");
        assert!(stats.bad_frames.load(Ordering::Relaxed) >= 8);
        assert_eq!(stats.input_failures.load(Ordering::Relaxed), 0);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, PipelineEvent::InputDown { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn a_camera_that_sends_nothing_readable_is_reported_down_and_reopened() {
        let (stats, events, got) = run_mjpeg_cam(|_| true, 1, Duration::from_secs(2));
        assert_eq!(got, 0);
        assert!(stats.input_failures.load(Ordering::Relaxed) >= 1);
        assert!(
            events.iter().any(
                |e| matches!(e, PipelineEvent::InputDown { reason, .. } if reason.contains("MJPEG"))
            ),
            "{events:?}"
        );
    }

    /// A clocked source slower than the rung's rate, as a big test pattern is on a small board.
    struct Slow {
        frame: RawFrame,
    }

    impl VideoSource for Slow {
        fn next_frame(&mut self, _rung: &Rung) -> Result<SourceFrame<'_>, SourceError> {
            std::thread::sleep(SLOW_FRAME);
            Ok(SourceFrame::Raw(&self.frame))
        }
        fn is_live(&self) -> bool {
            false
        }
        fn current_picture(&self) -> Option<&RawFrame> {
            Some(&self.frame)
        }
    }

    const SLOW_FRAME: Duration = Duration::from_millis(150);

    #[test]
    fn a_clocked_source_that_falls_behind_is_stamped_at_its_frames_times() {
        let fake = crate::source::FakeSpec(Arc::new(|| {
            Ok(Box::new(Slow {
                frame: RawFrame::black(64, 48),
            }) as Box<dyn VideoSource>)
        }));
        let mut s = spec();
        s.inputs.insert("normal".into(), SourceSpec::Fake(fake));
        let interval = Duration::from_secs(1) / s.rung.fps;
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let (etx, _erx) = tokio::sync::mpsc::channel(8);
        let p = Pipeline::spawn(s, tx, etx).unwrap();
        let pts: Vec<Duration> = (0..6).map(|_| recv(&mut rx).pts).collect();
        // Each frame takes at least SLOW_FRAME to make, and is stamped with the slot it was
        // made in: the slots between are skipped, so consecutive stamps are at least
        // SLOW_FRAME less one slot apart (they were one slot apart before).
        for w in pts.windows(2) {
            assert!(
                w[1] - w[0] >= SLOW_FRAME - interval,
                "stamps {pts:?} closer than the frames were made ({SLOW_FRAME:?} apart)"
            );
            assert_eq!(
                (w[1] - w[0]).as_nanos() % interval.as_nanos(),
                0,
                "stamps {pts:?} off the rung's frame grid"
            );
        }
        // Always behind, it still takes its controls: dropping it (Stop, then join) returns.
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(p);
            let _ = stopped_tx.send(());
        });
        assert!(
            stopped.recv_timeout(Duration::from_secs(5)).is_ok(),
            "a pipeline behind its clock did not stop"
        );
    }

    fn clip(w: u32, h: u32, frames: usize, gop: u32) -> Vec<u8> {
        let rung = Rung {
            width: w,
            height: h,
            fps: 30,
            bitrate_kbps: 300,
        };
        let mut enc = H264Encoder::new(rung, gop).unwrap();
        let mut src = crate::source::pattern::PatternSource::new(Default::default());
        let mut out = Vec::new();
        for _ in 0..frames {
            if let Ok(SourceFrame::Raw(p)) = src.next_frame(&rung) {
                let p = p.clone();
                if let Some(f) = enc.encode(&p, Duration::ZERO).unwrap() {
                    out.extend_from_slice(&f.data);
                }
            }
        }
        out
    }

    #[test]
    fn encoded_source_passes_through_when_it_fits_and_transcodes_when_not() {
        let dir = std::env::temp_dir().join(format!("dockcast-pipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clip.h264");
        std::fs::write(&path, clip(64, 48, 20, 5)).unwrap();
        let mut s = spec();
        s.inputs.insert(
            "normal".into(),
            SourceSpec::File(path.display().to_string()),
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let (etx, _erx) = tokio::sync::mpsc::channel(8);
        let p = Pipeline::spawn(s, tx, etx).unwrap();
        for _ in 0..6 {
            recv(&mut rx);
        }
        assert!(p.stats.passed_through.load(Ordering::Relaxed) >= 6);
        assert_eq!(p.stats.transcoded.load(Ordering::Relaxed), 0);
        // Another size: transcoded from the source's next keyframe on, at the new size.
        p.send(Control::Rung(Rung {
            width: 96,
            height: 64,
            fps: 60,
            bitrate_kbps: 200,
        }));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let f = recv(&mut rx);
            if f.keyframe {
                if let Some((w, h)) = sps_size(&f.data) {
                    if (w, h) == (96, 64) {
                        break;
                    }
                }
            }
            assert!(Instant::now() < deadline, "never transcoded to 96x64");
        }
        assert!(p.stats.transcoded.load(Ordering::Relaxed) >= 1);
        // Adaptive: back to passthrough at the next keyframe.
        p.send(Control::Quality {
            rung: Rung {
                width: 96,
                height: 64,
                fps: 60,
                bitrate_kbps: 200,
            },
            adaptive: true,
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let f = recv(&mut rx);
            if f.keyframe && sps_size(&f.data) == Some((64, 48)) {
                break;
            }
            assert!(Instant::now() < deadline, "never back to passthrough");
        }
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stamp_follows_source_clock_and_stays_monotonic_across_jumps() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let (etx, _erx) = tokio::sync::mpsc::channel(1);
        let mut w = Worker::new(spec(), tx, etx, Arc::default());
        let mut clock = SourceClock::default();
        let ms = Duration::from_millis;
        assert_eq!(w.stamp(Some(ms(5000)), &mut clock), ms(0));
        assert_eq!(w.stamp(Some(ms(5040)), &mut clock), ms(40));
        // Backwards (restarted app): continues one interval later.
        let p = w.stamp(Some(ms(10)), &mut clock);
        assert!(p > ms(40) && p <= ms(60));
        // Far forward: same.
        let q = w.stamp(Some(ms(99_000)), &mut clock);
        assert!(q > p && q <= p + ms(20));
        // A backlog read at once (one arrival time), then the next live frame soon after: each
        // keeps a whole interval from the last instead of following the squeezed source clock.
        let i = w.interval();
        let b1 = w.stamp(Some(ms(200_000)), &mut clock);
        let b2 = w.stamp(Some(ms(200_000)), &mut clock);
        let b3 = w.stamp(Some(ms(200_000) + ms(5)), &mut clock);
        assert_eq!((b1 + i, b2 + i), (b2, b3));
        // After which the source's own spacing is followed again.
        let last = w.stamp(Some(ms(200_000) + ms(5) + i), &mut clock);
        assert_eq!(last, b3 + i);
        // A new source (fresh anchor) starts one interval after the last frame.
        let mut fresh = SourceClock::default();
        let r = w.stamp(Some(ms(1)), &mut fresh);
        assert_eq!(r, last + i);
    }
}
