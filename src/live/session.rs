//! One live session: a pipeline thread feeding one sink task, and the glue between them.
//!
//! The session turns the sink's reports into manager events, passes the sink's keyframe
//! requests to the pipeline, and on stop gives the sink a bounded time to unpublish before it
//! lets everything go.

use crate::cloud::StreamUrl;
use crate::live::manager::{SessionEvent, SessionId, SessionPlan};
use crate::media::pipeline::{Control, Pipeline, PipelineEvent};
use crate::sink::rtmp::{self, RtmpOptions, RtmpTarget};
use crate::sink::SinkEvent;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a stopping sink may take to unpublish before it is abandoned.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Sink settings shared by every session.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// RTMP client settings.
    pub rtmp: RtmpOptions,
    /// Frames buffered between pipeline and sink.
    pub queue_frames: usize,
}

/// The actor's handle on a running session.
pub struct SessionHandle {
    control: std::sync::mpsc::Sender<Control>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl SessionHandle {
    /// Sends a change to the pipeline.
    pub fn control(&self, control: Control) {
        let _ = self.control.send(control);
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

/// Starts a session. Its events reach `events` tagged with `id`.
pub fn spawn(
    id: SessionId,
    plan: SessionPlan,
    settings: &SinkSettings,
    events: mpsc::Sender<(SessionId, SessionEvent)>,
) -> Result<SessionHandle, String> {
    let target = match &plan.url {
        StreamUrl::Rtmp(url) => RtmpTarget {
            tls: url.tls,
            host: url.host.clone(),
            port: url.port,
            app: url.app.clone(),
            stream_key: url.stream_key.clone(),
            tc_url: url.tc_url.clone(),
        },
        other => {
            return Err(format!(
                "no sink for url_type {} in this build",
                other.url_type().as_u8()
            ))
        }
    };
    let mut rtmp_opts = settings.rtmp.clone();
    rtmp_opts.framerate = Some(plan.pipeline.rung.fps as f32);
    rtmp_opts.bitrate_kbps = Some(plan.pipeline.rung.bitrate_kbps);
    let (frames_tx, frames_rx) = mpsc::channel(settings.queue_frames);
    let (pipe_tx, pipe_rx) = mpsc::channel(16);
    let pipeline = Pipeline::spawn(plan.pipeline, frames_tx, pipe_tx)
        .map_err(|e| format!("cannot start the pipeline thread: {e}"))?;
    let control = pipeline.controller();
    let cancel = CancellationToken::new();
    let (sink_tx, sink_rx) = mpsc::channel(16);
    let sink_cancel = cancel.child_token();
    let sink = tokio::spawn(rtmp::run(
        target,
        rtmp_opts,
        frames_rx,
        sink_tx,
        sink_cancel.clone(),
    ));
    let task = tokio::spawn(supervise(
        id,
        pipeline,
        sink,
        sink_cancel,
        sink_rx,
        pipe_rx,
        cancel.clone(),
        events,
    ));
    Ok(SessionHandle {
        control,
        cancel,
        task,
    })
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    id: SessionId,
    pipeline: Pipeline,
    mut sink: JoinHandle<()>,
    sink_cancel: CancellationToken,
    mut sink_events: mpsc::Receiver<SinkEvent>,
    mut pipe_events: mpsc::Receiver<PipelineEvent>,
    cancel: CancellationToken,
    events: mpsc::Sender<(SessionId, SessionEvent)>,
) {
    let report = |event| {
        let events = events.clone();
        async move {
            let _ = events.send((id, event)).await;
        }
    };
    let mut sink_done = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            ev = sink_events.recv() => match ev {
                Some(SinkEvent::KeyframeWanted) => pipeline.send(Control::Keyframe),
                // Adaptive quality does not consume the estimate yet.
                Some(SinkEvent::Bandwidth { .. }) => {}
                Some(SinkEvent::Publishing) => report(SessionEvent::Publishing).await,
                Some(SinkEvent::Reconnecting { attempt, reason, retry_in }) => {
                    debug!(session = id, attempt, ?retry_in, "sink reconnecting");
                    report(SessionEvent::Reconnecting { reason }).await
                }
                Some(SinkEvent::Failed { reason }) => {
                    report(SessionEvent::Failed { reason }).await;
                    break;
                }
                Some(SinkEvent::Stopped) | None => {
                    sink_done = true;
                    // The sink ends on its own when the pipeline closed its queue; the
                    // pipeline's report says why, so prefer it.
                    let why = pipe_events.try_recv().ok().and_then(|e| match e {
                        PipelineEvent::Fatal { reason } => Some(reason),
                        PipelineEvent::InputFailed { .. } => None,
                    });
                    match why {
                        Some(reason) => {
                            report(SessionEvent::Failed { reason: format!("pipeline: {reason}") }).await
                        }
                        None => report(SessionEvent::Stopped).await,
                    }
                    break;
                }
            },
            ev = pipe_events.recv() => match ev {
                Some(PipelineEvent::InputFailed { input, reason }) => {
                    warn!(session = id, input = %input, "input failed: {reason}");
                }
                Some(PipelineEvent::Fatal { reason }) => {
                    report(SessionEvent::Failed { reason: format!("pipeline: {reason}") }).await;
                    break;
                }
                None => {
                    // The thread ended without saying why (its frame queue closed): nothing
                    // more will be sent, so the session cannot go on.
                    report(SessionEvent::Failed { reason: "pipeline ended".into() }).await;
                    break;
                }
            },
        }
    }
    if !sink_done {
        sink_cancel.cancel();
        if tokio::time::timeout(STOP_GRACE, &mut sink).await.is_err() {
            warn!(
                session = id,
                "sink did not close within {STOP_GRACE:?}; abandoning it"
            );
            sink.abort();
        }
    }
    // Joining the pipeline thread can take one frame interval: keep it off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(pipeline)).await;
}
