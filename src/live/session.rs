//! One live session: a pipeline thread feeding one sink task, and the glue between them.
//!
//! The session turns the sink's reports into manager events, passes the sink's keyframe
//! requests to the pipeline, follows the sink's bandwidth estimate when the cloud asked for
//! adaptive quality, and on stop gives the sink a bounded time to close before it lets
//! everything go.

use crate::cloud::StreamUrl;
use crate::config::WhipSettings;
use crate::live::manager::{SessionEvent, SessionId, SessionPlan};
use crate::media::pipeline::{Control, Pipeline, PipelineEvent};
use crate::media::quality::Rung;
use crate::sink::adapter::{self, AdapterOptions, AdapterSpec};
use crate::sink::gb28181::{self, GbOptions, GbTarget};
use crate::sink::rtmp::{self, RtmpOptions, RtmpTarget};
use crate::sink::whip::{self, WhipOptions, WhipTarget};
use crate::sink::SinkEvent;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a stopping sink may take to unpublish before it is abandoned. Every sink's own
/// stop budget fits inside it (RTMP 2 s, WHIP's DELETE 2 s, GB/T 28181's BYE and unregister
/// 2.5 s), so a slow server gets the unpublish it is owed rather than an abandoned socket.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Sink settings shared by every session.
#[derive(Debug, Clone, Default)]
pub struct SinkSettings {
    /// RTMP client settings.
    pub rtmp: RtmpOptions,
    /// WHIP client settings.
    pub whip: WhipOptions,
    /// Bearer tokens per WHIP server.
    pub whip_config: WhipSettings,
    /// GB/T 28181 device settings.
    pub gb: GbOptions,
    /// Configured adapters by name, with their process options.
    pub adapters: std::collections::BTreeMap<String, (AdapterSpec, AdapterOptions)>,
    /// Frames buffered between pipeline and sink.
    pub queue_frames: usize,
}

/// Changes the actor sends to a running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// Feed the pipeline from another input (lens or camera position).
    Input(String),
    /// New quality: the rung, and whether the cloud asked for adaptive quality (then the
    /// bitrate follows the sink's bandwidth estimate, never above the rung's).
    Quality {
        /// Output format.
        rung: Rung,
        /// Level 0.
        adaptive: bool,
    },
}

/// The actor's handle on a running session.
pub struct SessionHandle {
    /// The pipeline's counters, for the health endpoint.
    pub stats: std::sync::Arc<crate::media::pipeline::PipelineStats>,
    commands: mpsc::Sender<SessionCommand>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl SessionHandle {
    /// Sends a change; dropped (with a log line) if the session is not keeping up, which
    /// only happens when it is already ending.
    pub fn command(&self, command: SessionCommand) {
        if self.commands.try_send(command).is_err() {
            warn!("a session did not take a command; it is ending");
        }
    }

    /// Asks the session to stop; `join` waits for it.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Waits until the session has closed its sink and pipeline.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// The bitrate adaptive quality should use, given the rung's ceiling, the bitrate in force and
/// the sink's estimate of the path; `None` to leave it. It aims at 85 % of the estimate, keeps
/// at least 150 kbit/s (or the rung's bitrate if that is lower), and ignores changes under 10 %
/// so the encoder is not retuned every second for noise.
pub fn adaptive_bitrate(ceiling_kbps: u32, current_kbps: u32, estimate_bps: u64) -> Option<u32> {
    let floor = ceiling_kbps.min(150);
    let wanted = (estimate_bps.saturating_mul(85) / 100 / 1000).min(u64::from(ceiling_kbps)) as u32;
    let target = wanted.max(floor);
    let diff = target.abs_diff(current_kbps);
    (diff * 10 > current_kbps).then_some(target)
}

/// Starts a session. Its events reach `events` tagged with `id`.
pub fn spawn(
    id: SessionId,
    plan: SessionPlan,
    settings: &SinkSettings,
    events: mpsc::Sender<(SessionId, SessionEvent)>,
) -> Result<SessionHandle, String> {
    let rung = plan.pipeline.rung;
    let (frames_tx, frames_rx) = mpsc::channel(settings.queue_frames.max(2));
    let (sink_tx, sink_rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let sink_cancel = cancel.child_token();
    // The sink is built first: a url it cannot use fails the start before any encoding.
    if let Some(name) = &plan.adapter {
        let (spec, opts) = settings
            .adapters
            .get(name)
            .ok_or_else(|| format!("adapter {name} is not configured"))?;
        let fields = adapter_fields(&plan, rung.fps);
        let sink = tokio::spawn(adapter::run(
            spec.clone(),
            fields,
            opts.clone(),
            frames_rx,
            sink_tx,
            sink_cancel.clone(),
        ));
        return start(
            id,
            plan,
            sink,
            sink_rx,
            frames_tx,
            sink_cancel,
            cancel,
            events,
        );
    }
    let sink = match &plan.url {
        StreamUrl::Rtmp(url) => {
            let target = RtmpTarget::from(url);
            let mut opts = settings.rtmp.clone();
            opts.framerate = Some(rung.fps as f32);
            opts.bitrate_kbps = Some(rung.bitrate_kbps);
            tokio::spawn(rtmp::run(
                target,
                opts,
                frames_rx,
                sink_tx,
                sink_cancel.clone(),
            ))
        }
        StreamUrl::Whip(url) => {
            let token = settings.whip_config.token_for(&url.url).map(|t| t.expose());
            let target = WhipTarget::new(url, token).map_err(|e| e.to_string())?;
            let mut opts = settings.whip.clone();
            opts.initial_bitrate_bps = u64::from(rung.bitrate_kbps) * 1000;
            opts.desired_bitrate_bps = u64::from(rung.bitrate_kbps) * 1000;
            tokio::spawn(whip::run(
                target,
                opts,
                frames_rx,
                sink_tx,
                sink_cancel.clone(),
            ))
        }
        StreamUrl::Gb28181(url) => {
            let target = GbTarget::from_url(url).map_err(|e| e.to_string())?;
            tokio::spawn(gb28181::run(
                target,
                settings.gb.clone(),
                frames_rx,
                sink_tx,
                sink_cancel.clone(),
            ))
        }
        other => {
            return Err(format!(
                "no sink for url_type {} in this build",
                other.url_type().as_u8()
            ))
        }
    };
    start(
        id,
        plan,
        sink,
        sink_rx,
        frames_tx,
        sink_cancel,
        cancel,
        events,
    )
}

/// The url fields and video facts an adapter command and environment receive.
pub fn adapter_fields(plan: &SessionPlan, fps: u32) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| f.push((k.to_string(), v));
    match &plan.url {
        StreamUrl::Agora(a) => {
            put("channel", a.channel.clone());
            put("sn", a.sn.clone());
            put("token", a.token.clone());
            put("uid", a.uid.clone());
        }
        StreamUrl::Rtmp(r) => put("url", r.url.clone()),
        StreamUrl::Whip(w) => put("url", w.url.clone()),
        StreamUrl::Rtsp(r) => {
            put("user_name", r.user_name.clone());
            put("password", r.password.clone());
            put("port", r.port.to_string());
        }
        StreamUrl::Gb28181(g) => {
            put("server_ip", g.server_ip.clone());
            put("server_port", g.server_port.to_string());
            put("server_id", g.server_id.clone());
            put("agent_id", g.agent_id.clone());
            put("agent_password", g.agent_password.clone());
            put("local_port", g.local_port.to_string());
            put("channel", g.channel.clone());
        }
    }
    if !matches!(plan.url, StreamUrl::Agora(_)) {
        put("sn", plan.video_id.sn.clone());
    }
    put("video_id", plan.video_id.to_string());
    put("camera", plan.video_id.camera_index.clone());
    put("video_index", plan.video_id.video_index.clone());
    put("fps", fps.to_string());
    put("url_type", plan.url.url_type().as_u8().to_string());
    f
}

/// Starts the pipeline and the supervisor once the sink task runs.
#[allow(clippy::too_many_arguments)]
fn start(
    id: SessionId,
    plan: SessionPlan,
    sink: JoinHandle<()>,
    sink_rx: mpsc::Receiver<SinkEvent>,
    frames_tx: mpsc::Sender<crate::media::frame::EncodedFrame>,
    sink_cancel: CancellationToken,
    cancel: CancellationToken,
    events: mpsc::Sender<(SessionId, SessionEvent)>,
) -> Result<SessionHandle, String> {
    let rung = plan.pipeline.rung;
    let (pipe_tx, pipe_rx) = mpsc::channel(16);
    let pipeline = match Pipeline::spawn(plan.pipeline, frames_tx, pipe_tx) {
        Ok(p) => p,
        Err(e) => {
            sink_cancel.cancel();
            return Err(format!("cannot start the pipeline thread: {e}"));
        }
    };
    if plan.adaptive {
        pipeline.send(Control::Quality {
            rung,
            adaptive: true,
        });
    }
    let stats = std::sync::Arc::clone(&pipeline.stats);
    let (commands, commands_rx) = mpsc::channel(16);
    let task = tokio::spawn(
        Supervisor {
            id,
            pipeline,
            sink_cancel,
            rung,
            adaptive: plan.adaptive,
            current_kbps: rung.bitrate_kbps,
            events,
        }
        .run(sink, sink_rx, pipe_rx, commands_rx, cancel.clone()),
    );
    Ok(SessionHandle {
        stats,
        commands,
        cancel,
        task,
    })
}

struct Supervisor {
    id: SessionId,
    pipeline: Pipeline,
    sink_cancel: CancellationToken,
    /// The rung the cloud asked for (the ceiling when adaptive).
    rung: Rung,
    adaptive: bool,
    current_kbps: u32,
    events: mpsc::Sender<(SessionId, SessionEvent)>,
}

impl Supervisor {
    async fn report(&self, event: SessionEvent) {
        let _ = self.events.send((self.id, event)).await;
    }

    async fn run(
        mut self,
        mut sink: JoinHandle<()>,
        mut sink_events: mpsc::Receiver<SinkEvent>,
        mut pipe_events: mpsc::Receiver<PipelineEvent>,
        mut commands: mpsc::Receiver<SessionCommand>,
        cancel: CancellationToken,
    ) {
        let id = self.id;
        let mut sink_done = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(command) = commands.recv() => match command {
                    SessionCommand::Input(name) => self.pipeline.send(Control::Input(name)),
                    SessionCommand::Quality { rung, adaptive } => {
                        self.rung = rung;
                        self.adaptive = adaptive;
                        self.current_kbps = rung.bitrate_kbps;
                        // Adaptive lets an encoded source pass through at its own size.
                        self.pipeline.send(Control::Quality { rung, adaptive });
                    }
                },
                ev = sink_events.recv() => match ev {
                    Some(SinkEvent::KeyframeWanted) => self.pipeline.send(Control::Keyframe),
                    Some(SinkEvent::Publishing) => self.report(SessionEvent::Publishing).await,
                    Some(SinkEvent::Reconnecting { attempt, reason, retry_in }) => {
                        debug!(session = id, attempt, ?retry_in, "sink reconnecting");
                        self.report(SessionEvent::Reconnecting { reason }).await
                    }
                    Some(SinkEvent::Bandwidth { bps }) => self.follow_bandwidth(bps),
                    Some(SinkEvent::Failed { reason }) => {
                        self.report(SessionEvent::Failed { reason }).await;
                        break;
                    }
                    Some(SinkEvent::Refused { reason }) => {
                        self.report(SessionEvent::Unsupported { reason }).await;
                        break;
                    }
                    Some(SinkEvent::Stopped) | None => {
                        sink_done = true;
                        // The sink ends on its own when the pipeline closed its queue; the
                        // pipeline's report says why, so prefer it.
                        let why = pipe_events.try_recv().ok().and_then(|e| match e {
                            PipelineEvent::Fatal { reason } => Some(reason),
                            PipelineEvent::InputFailed { .. }
                            | PipelineEvent::InputDown { .. }
                            | PipelineEvent::InputUp { .. } => None,
                        });
                        match why {
                            Some(reason) => {
                                self.report(SessionEvent::Failed { reason: format!("pipeline: {reason}") }).await
                            }
                            None => self.report(SessionEvent::Stopped).await,
                        }
                        break;
                    }
                },
                ev = pipe_events.recv() => match ev {
                    Some(PipelineEvent::InputFailed { input, reason }) => {
                        warn!(session = id, input = %input, "input failed: {reason}");
                    }
                    Some(PipelineEvent::InputDown { input, reason }) => {
                        self.report(SessionEvent::InputDown { reason: format!("{input}: {reason}") }).await
                    }
                    Some(PipelineEvent::InputUp { .. }) => self.report(SessionEvent::InputUp).await,
                    Some(PipelineEvent::Fatal { reason }) => {
                        self.report(SessionEvent::Failed { reason: format!("pipeline: {reason}") }).await;
                        break;
                    }
                    None => {
                        // The thread ended without saying why (its frame queue closed): nothing
                        // more will be sent, so the session cannot go on.
                        self.report(SessionEvent::Failed { reason: "pipeline ended".into() }).await;
                        break;
                    }
                },
            }
        }
        if !sink_done {
            self.sink_cancel.cancel();
            if tokio::time::timeout(STOP_GRACE, &mut sink).await.is_err() {
                warn!(
                    session = id,
                    "sink did not close within {STOP_GRACE:?}; abandoning it"
                );
                sink.abort();
            }
        }
        // Joining the pipeline thread can take one frame interval: keep it off the async workers.
        let pipeline = self.pipeline;
        let _ = tokio::task::spawn_blocking(move || drop(pipeline)).await;
    }

    fn follow_bandwidth(&mut self, bps: u64) {
        if !self.adaptive {
            return;
        }
        if let Some(kbps) = adaptive_bitrate(self.rung.bitrate_kbps, self.current_kbps, bps) {
            info!(
                session = self.id,
                from = self.current_kbps,
                to = kbps,
                "adaptive bitrate"
            );
            self.current_kbps = kbps;
            self.pipeline.send(Control::Rung(Rung {
                bitrate_kbps: kbps,
                ..self.rung
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::adaptive_bitrate;

    #[test]
    fn every_sinks_stop_fits_in_the_sessions_grace() {
        use super::STOP_GRACE;
        assert!(crate::sink::rtmp::STOP_GRACE < STOP_GRACE);
        assert!(crate::sink::whip::WhipOptions::default().delete_timeout < STOP_GRACE);
        assert!(crate::sink::gb28181::GbOptions::default().stop_timeout < STOP_GRACE);
    }

    #[test]
    fn adaptive_bitrate_follows_the_estimate_within_the_rung() {
        // Plenty of room: stays at the ceiling.
        assert_eq!(adaptive_bitrate(1500, 1500, 10_000_000), None);
        // Congested: 85 % of 1 Mbit/s.
        assert_eq!(adaptive_bitrate(1500, 1500, 1_000_000), Some(850));
        // Small wobble: left alone.
        assert_eq!(adaptive_bitrate(1500, 850, 1_050_000), None);
        // Recovery back to the ceiling, never above.
        assert_eq!(adaptive_bitrate(1500, 850, 5_000_000), Some(1500));
        // A collapsed path still keeps a floor.
        assert_eq!(adaptive_bitrate(1500, 1500, 10_000), Some(150));
        assert_eq!(adaptive_bitrate(100, 100, 10_000), None);
    }
}
