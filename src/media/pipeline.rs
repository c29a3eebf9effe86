//! The per-session media pipeline: source → (encoder) → bounded channel to the sink.
//!
//! It runs on a thread of its own because encoding is CPU-bound and must never stall the tokio
//! workers that carry MQTT replies and socket IO. The thread sleeps until the next frame is due
//! or a control message arrives (`recv_timeout`), so it never spins. Frames leave through a
//! bounded channel: when the sink falls behind, the frame is dropped, counted, and the next one
//! is made a keyframe, so memory never grows and the viewer recovers at once.

use crate::media::encoder::{EncoderError, H264Encoder};
use crate::media::frame::{Codec, EncodedFrame};
use crate::media::quality::Rung;
use crate::source::{SourceError, SourceFrame, SourceSpec, VideoSource};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
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
    /// The sink needs a keyframe.
    Keyframe,
    /// End the thread.
    Stop,
}

/// What the pipeline reports to its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineEvent {
    /// An input could not be opened or failed while reading; the pipeline keeps the previous
    /// input if it had one.
    InputFailed {
        /// The input's name.
        input: String,
        /// Why.
        reason: String,
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
            // The worker checks its control channel at least once per frame interval, so this
            // join is short; it keeps the encoder from outliving its session.
            let _ = thread.join();
        }
    }
}

struct Worker {
    spec: PipelineSpec,
    frames: tokio::sync::mpsc::Sender<EncodedFrame>,
    events: tokio::sync::mpsc::Sender<PipelineEvent>,
    stats: Arc<PipelineStats>,
    source: Option<Box<dyn VideoSource>>,
    encoder: Option<H264Encoder>,
    rung: Rung,
    /// Set after a switch, a drop or a sink's request: raw inputs force an IDR, encoded inputs
    /// are skipped until their next keyframe.
    want_key: bool,
    pts: Duration,
    /// Name of the input in use, for reports.
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
            source: None,
            encoder: None,
            rung,
            want_key: true,
            pts: Duration::ZERO,
            current: String::new(),
        }
    }

    fn report(&self, event: PipelineEvent) {
        let _ = self.events.try_send(event);
    }

    fn run(mut self, control: Receiver<Control>) {
        self.stats
            .bitrate_kbps
            .store(self.rung.bitrate_kbps.into(), Ordering::Relaxed);
        let first = self.spec.input.clone();
        if !self.switch_input(&first) {
            self.report(PipelineEvent::Fatal {
                reason: format!("input {first} could not be opened"),
            });
            return;
        }
        let mut due = Instant::now();
        loop {
            // Sleep until the frame is due, applying controls as they come.
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                match control.recv_timeout(due - now) {
                    Ok(c) => {
                        if let Step::Stop = self.apply(c) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if let Step::Stop = self.produce() {
                return;
            }
            let interval = Duration::from_secs(1) / self.rung.fps.max(1);
            self.pts += interval;
            due += interval;
            // After a stall (a slow encode, a suspended VM) start afresh instead of bursting
            // frames to catch up, which would only flood the sink.
            let now = Instant::now();
            if due + interval * 3 < now {
                due = now;
            }
        }
    }

    fn apply(&mut self, control: Control) -> Step {
        match control {
            Control::Input(name) => {
                self.switch_input(&name);
            }
            Control::Rung(rung) => {
                if let Some(enc) = self.encoder.as_mut() {
                    if let Err(e) = enc.set_rung(rung) {
                        self.report(PipelineEvent::Fatal {
                            reason: e.to_string(),
                        });
                        return Step::Stop;
                    }
                }
                self.rung = rung;
                self.stats
                    .bitrate_kbps
                    .store(rung.bitrate_kbps.into(), Ordering::Relaxed);
            }
            Control::Keyframe => self.want_key = true,
            Control::Stop => return Step::Stop,
        }
        Step::Continue
    }

    fn switch_input(&mut self, name: &str) -> bool {
        let opened = match self.spec.inputs.get(name) {
            Some(spec) => spec.open(name).map_err(|e| e.to_string()),
            None => Err("no such input is configured".to_string()),
        };
        match opened {
            Ok(source) => {
                self.source = Some(source);
                self.current = name.to_string();
                self.want_key = true;
                true
            }
            Err(reason) => {
                self.report(PipelineEvent::InputFailed {
                    input: name.to_string(),
                    reason,
                });
                false
            }
        }
    }

    fn produce(&mut self) -> Step {
        let frame = match self.next_encoded() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Step::Continue,
            Err(reason) => {
                self.report(PipelineEvent::Fatal { reason });
                return Step::Stop;
            }
        };
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
                Step::Continue
            }
            Err(TrySendError::Closed(_)) => Step::Stop,
        }
    }

    fn next_encoded(&mut self) -> Result<Option<EncodedFrame>, String> {
        let Some(source) = self.source.as_mut() else {
            return Ok(None);
        };
        let rung = self.rung;
        let pts = self.pts;
        match source.next_frame(&rung) {
            Ok(SourceFrame::Raw(picture)) => {
                let encoder = match self.encoder.as_mut() {
                    Some(enc) => enc,
                    None => self.encoder.insert(
                        H264Encoder::with_backend(
                            rung,
                            self.spec.gop_frames,
                            self.spec.backend.clone(),
                        )
                        .map_err(|e: EncoderError| e.to_string())?,
                    ),
                };
                if self.want_key {
                    encoder.force_keyframe();
                    self.want_key = false;
                }
                let started = Instant::now();
                let out = encoder.encode(picture, pts).map_err(|e| e.to_string())?;
                self.stats
                    .encode_us
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                Ok(out)
            }
            Ok(SourceFrame::Encoded { data, keyframe }) => {
                if self.want_key && !keyframe {
                    return Ok(None);
                }
                self.want_key = false;
                Ok(Some(EncodedFrame {
                    data,
                    pts,
                    keyframe,
                    codec: Codec::H264,
                }))
            }
            Err(e) => {
                let e: SourceError = e;
                self.source = None;
                self.report(PipelineEvent::InputFailed {
                    input: self.current.clone(),
                    reason: e.to_string(),
                });
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PipelineSpec {
        let mut inputs = BTreeMap::new();
        inputs.insert("normal".to_string(), SourceSpec::Pattern(None));
        inputs.insert("zoom".to_string(), SourceSpec::Pattern(None));
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
}
