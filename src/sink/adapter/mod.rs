//! Adapter sink: hands a session's access units to an external process and supervises it.
//!
//! Some uplinks cannot be spoken natively — Agora ships only native SDKs — and others (SRT, RTSP
//! servers, custom uplinks) are already done well by existing tools. An adapter is any command
//! that reads video on its stdin and publishes it: Agora's Linux SDK sample, or
//! `ffmpeg -f h264 -i - -c copy …`. dockcast starts it, writes frames to its stdin, reads status
//! lines from its stdout, logs its stderr with secrets masked, restarts it when it dies and
//! stops it when the session ends.
//!
//! The contract an adapter implements (also in `board/adapters/FRAMING.md`):
//! - stdin: access units, either raw Annex-B ([`Framing::RawAnnexB`]) or in the [`framing`]
//!   records ([`Framing::Framed`]); the first unit is a keyframe. EOF on stdin means stop: flush
//!   and exit within 2 s, or be killed.
//! - argv and environment: every url field `key` of the session as `{key}` in argv and as
//!   `DOCKCAST_<KEY>` in the environment (prefer the environment for secrets: argv is readable
//!   by every user in `/proc`), plus `DOCKCAST_FRAMING` = `framed` or `annexb`.
//! - stdout: line-delimited JSON status ([`status`]); `{"event":"publishing"}` once the uplink
//!   took the stream.
//! - stderr: free text for the log.
//!
//! The adapter runs in its own process group, so a wrapper script and the tools it starts are
//! killed together. Lens and quality changes never reach the adapter: they change the frames,
//! not the process.

pub mod framing;
pub mod redact;
pub mod status;

use crate::backoff::Backoff;
use crate::media::frame::{Codec, EncodedFrame};
use crate::sink::SinkEvent;
use framing::RecordHeader;
use rand::rngs::StdRng;
use rand::SeedableRng;
use redact::Redactor;
use status::{clip, LineSplitter, StatusEvent};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How access units are written to the adapter's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Each unit behind a 20-byte header with pts, keyframe flag and codec (see [`framing`]);
    /// for adapters that feed an SDK which wants timestamps.
    Framed,
    /// The bare Annex-B byte stream, for tools that parse H.264 themselves
    /// (`ffmpeg -f h264 -i -`).
    RawAnnexB,
}

/// When the sink reports [`SinkEvent::Publishing`] for a freshly started adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// As soon as the process is running: for adapters that print no status.
    OnSpawn,
    /// When the adapter prints `{"event":"publishing"}`: the cloud then hears "live" only once
    /// the uplink really took the stream, and a first attempt that never gets there fails the
    /// start instead of pretending.
    OnPublishingEvent,
}

/// What the operator configures for one adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    /// Short name for logs and errors, e.g. `agora` or `srt`.
    pub name: String,
    /// Program and arguments; `{key}` is replaced by the url field `key`, `{{`/`}}` by a brace.
    pub command: Vec<String>,
    /// Extra environment (on top of dockcast's own and the `DOCKCAST_*` url fields).
    pub env: Vec<(String, String)>,
    /// Stdin format.
    pub framing: Framing,
    /// When the adapter counts as publishing.
    pub ready: Ready,
    /// First restart backoff ceiling.
    pub backoff_initial: Duration,
    /// Largest restart backoff ceiling.
    pub backoff_max: Duration,
}

impl AdapterSpec {
    /// A spec with the restart backoff the RTMP sink uses (250 ms doubling to 10 s).
    pub fn new(
        name: impl Into<String>,
        command: Vec<String>,
        framing: Framing,
        ready: Ready,
    ) -> Self {
        AdapterSpec {
            name: name.into(),
            command,
            env: Vec::new(),
            framing,
            ready,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Runtime tunables of the adapter sink; `Default` suits a dock.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterOptions {
    /// With [`Ready::OnPublishingEvent`]: how long a fresh adapter may take to report
    /// publishing before it is killed and counted as failed.
    pub ready_timeout: Duration,
    /// After stdin is closed on stop, how long the adapter may take to exit before it is killed.
    pub stop_grace: Duration,
    /// Access units that may wait for the adapter's stdin; beyond this the sink drops frames up
    /// to the next keyframe instead of stalling the producer.
    pub queue_frames: usize,
    /// Once publishing, how long the adapter may take no frame at all from a full queue before
    /// it counts as lost and is killed and restarted. A process blocked on a dead uplink (ffmpeg
    /// writing to a server that vanished without closing TCP) keeps running but stops reading;
    /// without this the session would stay live with no video forever. Long enough to ride out
    /// an uplink hiccup, short enough that viewers get the picture back soon.
    pub stall_limit: Duration,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            ready_timeout: Duration::from_secs(15),
            stop_grace: Duration::from_secs(2),
            queue_frames: 60,
            stall_limit: Duration::from_secs(10),
        }
    }
}

/// Why an adapter could not be started or stopped running. The text names the adapter and the
/// phase, and never holds a secret in clear.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The configured command is empty.
    #[error("adapter {name}: command is empty")]
    EmptyCommand {
        /// Adapter name.
        name: String,
    },
    /// A `{key}` in the command names no url field (most likely a typo in the config).
    #[error("adapter {name}: argument {index} uses {{{placeholder}}}, which is not a url field (known: {known})")]
    UnknownPlaceholder {
        /// Adapter name.
        name: String,
        /// Position in argv.
        index: usize,
        /// The name between the braces.
        placeholder: String,
        /// The field names that are available.
        known: String,
    },
    /// The process could not be started (not found, not executable, …).
    #[error("adapter {name}: cannot start {program:?}: {source}")]
    Spawn {
        /// Adapter name.
        name: String,
        /// The program as configured.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process exited (or was killed by a signal).
    #[error("adapter {name} (pid {pid}) exited with {status}{}", last_words_suffix(.last_words))]
    Exited {
        /// Adapter name.
        name: String,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// Its last error event or stderr line, redacted and clipped.
        last_words: Option<String>,
    },
    /// Waiting for the process failed at the OS level.
    #[error("adapter {name} (pid {pid}): cannot wait for it: {source}")]
    Wait {
        /// Adapter name.
        name: String,
        /// Its pid.
        pid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process stopped reading its stdin (closed it) while still running.
    #[error("adapter {name} (pid {pid}) stopped reading its stdin: {source}")]
    Stdin {
        /// Adapter name.
        name: String,
        /// Its pid.
        pid: u32,
        /// The write error.
        source: std::io::Error,
    },
    /// The process kept running but took no frame from its full input queue for
    /// [`AdapterOptions::stall_limit`] (most likely blocked on an uplink that went silent).
    #[error("adapter {name} (pid {pid}) read no input for {after:?}{}", last_words_suffix(.last_words))]
    Stalled {
        /// Adapter name.
        name: String,
        /// Its pid.
        pid: u32,
        /// The stall limit.
        after: Duration,
        /// Its last error event, redacted and clipped.
        last_words: Option<String>,
    },
    /// With [`Ready::OnPublishingEvent`]: no `publishing` event in time.
    #[error("adapter {name} (pid {pid}) did not report publishing within {after:?}{}", last_words_suffix(.last_words))]
    NotReady {
        /// Adapter name.
        name: String,
        /// Its pid.
        pid: u32,
        /// The timeout.
        after: Duration,
        /// Its last error event or stderr line, redacted and clipped.
        last_words: Option<String>,
    },
}

fn last_words_suffix(w: &Option<String>) -> String {
    match w {
        Some(w) => format!(": {w}"),
        None => String::new(),
    }
}

/// Longest adapter output quoted in a log line or an error.
const QUOTE_MAX: usize = 300;

/// `command` with `{key}` replaced by the value of url field `key`; `{{` and `}}` stand for
/// literal braces and any other brace is kept as is.
pub fn expand_argv(
    name: &str,
    command: &[String],
    fields: &[(String, String)],
) -> Result<Vec<String>, AdapterError> {
    if command.first().is_none_or(|p| p.is_empty()) {
        return Err(AdapterError::EmptyCommand {
            name: name.to_owned(),
        });
    }
    let mut out = Vec::with_capacity(command.len());
    for (index, arg) in command.iter().enumerate() {
        let mut s = String::with_capacity(arg.len());
        let mut rest = arg.as_str();
        while let Some(i) = rest.find(['{', '}']) {
            s.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                s.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if let Some(inner) = tail.strip_prefix('{') {
                let ident_len = inner
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(inner.len());
                if ident_len > 0 && inner[ident_len..].starts_with('}') {
                    let key = &inner[..ident_len];
                    let Some((_, value)) = fields.iter().find(|(k, _)| k == key) else {
                        return Err(AdapterError::UnknownPlaceholder {
                            name: name.to_owned(),
                            index,
                            placeholder: key.to_owned(),
                            known: fields
                                .iter()
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        });
                    };
                    s.push_str(value);
                    rest = &tail[2 + ident_len..];
                    continue;
                }
            }
            s.push_str(&tail[..1]);
            rest = &tail[1..];
        }
        s.push_str(rest);
        out.push(s);
    }
    Ok(out)
}

/// The environment name a url field is passed under: `DOCKCAST_` + the key in upper case with
/// anything but ASCII letters and digits turned into `_` (`token` → `DOCKCAST_TOKEN`,
/// `video_id` → `DOCKCAST_VIDEO_ID`).
pub fn env_name(key: &str) -> String {
    let mut s = String::from("DOCKCAST_");
    s.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    s
}

/// How one adapter process ended.
enum Ended {
    /// Stop requested (cancel, or the producer went away); the process is gone.
    Stopped,
    /// The process failed; restart it.
    Lost {
        error: AdapterError,
        /// It reported publishing (or was ready on spawn) before failing.
        was_ready: bool,
        /// How long it ran.
        ran: Duration,
    },
}

/// Runs the adapter sink until `cancel` fires or the frame sender is dropped.
///
/// `fields` are the session's url fields (for Agora `channel`, `sn`, `token`, `uid`), handed to
/// the adapter as `{key}` argv placeholders and `DOCKCAST_<KEY>` variables. Events follow the
/// RTMP sink: [`SinkEvent::KeyframeWanted`] after every start, [`SinkEvent::Publishing`] once
/// ready (see [`Ready`]); a first start that fails (command not found, exit before publishing)
/// ends the sink with [`SinkEvent::Failed`]; after that every exit is
/// [`SinkEvent::Reconnecting`] and a restart with jittered backoff; [`SinkEvent::Stopped`] at the
/// end. The same process is kept for the whole session as long as it runs.
pub async fn run(
    spec: AdapterSpec,
    fields: Vec<(String, String)>,
    opts: AdapterOptions,
    mut frames: mpsc::Receiver<EncodedFrame>,
    events: mpsc::Sender<SinkEvent>,
    cancel: CancellationToken,
) {
    let redactor = Arc::new(Redactor::new(
        fields
            .iter()
            .chain(spec.env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str())),
    ));
    let argv = match expand_argv(&spec.name, &spec.command, &fields) {
        Ok(argv) => argv,
        Err(e) => {
            let reason = e.to_string();
            tracing::warn!(adapter = %spec.name, %reason, "adapter not started");
            let _ = events.send(SinkEvent::Failed { reason }).await;
            return;
        }
    };
    let mut backoff = Backoff::new(spec.backoff_initial, spec.backoff_max);
    let mut rng = StdRng::from_os_rng();
    let mut published_once = false;

    loop {
        let ended = match spawn(&spec, &argv, &fields, &redactor) {
            Ok(child) => {
                supervise(
                    child,
                    &spec,
                    &opts,
                    &redactor,
                    &mut frames,
                    &events,
                    &cancel,
                )
                .await
            }
            Err(error) => Ended::Lost {
                error,
                was_ready: false,
                ran: Duration::ZERO,
            },
        };
        let (error, was_ready, ran) = match ended {
            Ended::Stopped => {
                let _ = events.send(SinkEvent::Stopped).await;
                return;
            }
            Ended::Lost {
                error,
                was_ready,
                ran,
            } => (error, was_ready, ran),
        };
        published_once |= was_ready;
        let reason = error.to_string();
        if !published_once {
            tracing::warn!(adapter = %spec.name, %reason, "adapter failed before publishing");
            let _ = events.send(SinkEvent::Failed { reason }).await;
            return;
        }
        // Only a process that held for a while earns a fresh schedule; one that crashes at once
        // keeps backing off.
        if was_ready {
            backoff.connection_ended(ran);
        }
        let retry_in = backoff.next_delay(&mut rng);
        tracing::warn!(adapter = %spec.name, %reason, ?retry_in, "adapter lost; restarting");
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

/// Starts the process with piped stdio in a process group of its own.
fn spawn(
    spec: &AdapterSpec,
    argv: &[String],
    fields: &[(String, String)],
    redactor: &Redactor,
) -> Result<Child, AdapterError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| AdapterError::EmptyCommand {
            name: spec.name.clone(),
        })?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .envs(fields.iter().map(|(k, v)| (env_name(k), v)))
        .env(
            "DOCKCAST_FRAMING",
            match spec.framing {
                Framing::Framed => "framed",
                Framing::RawAnnexB => "annexb",
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Its own group: a wrapper script and the tools it starts die together, and a Ctrl-C meant
    // for the daemon does not reach the adapter before the daemon has closed its stdin.
    #[cfg(unix)]
    cmd.process_group(0);
    let child = cmd.spawn().map_err(|source| AdapterError::Spawn {
        name: spec.name.clone(),
        program: redactor.redact(program),
        source,
    })?;
    tracing::info!(
        adapter = %spec.name,
        pid = child.id().unwrap_or(0),
        argv = %redactor.redact(&argv.join(" ")),
        "adapter started"
    );
    Ok(child)
}

/// What the stdout reader passes to the supervisor.
type StatusRx = mpsc::Receiver<StatusEvent>;

/// One running adapter: the process, its stdin writer and its output readers.
struct Running {
    child: Child,
    pid: u32,
    name: String,
    /// Frames waiting for stdin; `None` once stdin is being closed.
    queue: Option<mpsc::Sender<EncodedFrame>>,
    writer: JoinHandle<Result<(), std::io::Error>>,
    writer_done: bool,
    status: StatusRx,
    stdout_task: JoinHandle<()>,
    stderr_task: JoinHandle<Option<String>>,
    /// Last `error` event, redacted, to explain an exit.
    last_error: Option<String>,
    redactor: Arc<Redactor>,
}

impl Running {
    /// The adapter's own explanation of a failure: its last error event, else its last stderr
    /// line (waiting briefly for stderr to reach EOF after the process is gone).
    async fn last_words(&mut self) -> Option<String> {
        // An adapter that prints an error and exits at once races its own exit: read stdout
        // to its end (briefly) so that error is not lost.
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.status.recv()).await {
            if let StatusEvent::Error { message } = event {
                self.last_error = Some(clip(&self.redactor.redact(&message), QUOTE_MAX));
            }
        }
        if let Some(e) = self.last_error.take() {
            return Some(e);
        }
        match tokio::time::timeout(Duration::from_millis(500), &mut self.stderr_task).await {
            Ok(Ok(line)) => line,
            _ => None,
        }
    }

    /// Kills whatever is left of the process group and the helper tasks.
    fn reap(&mut self) {
        kill_group(self.pid);
        self.writer.abort();
        self.stdout_task.abort();
        self.stderr_task.abort();
    }

    /// Closes stdin, waits up to `grace` for the exit, then kills.
    async fn stop(&mut self, grace: Duration) {
        self.queue = None;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(adapter = %self.name, pid = self.pid, %status, "adapter exited after stdin closed");
            }
            Ok(Err(e)) => {
                tracing::warn!(adapter = %self.name, pid = self.pid, error = %e, "cannot wait for adapter; killing it");
            }
            Err(_) => {
                tracing::warn!(adapter = %self.name, pid = self.pid, ?grace, "adapter did not exit after stdin closed; killing it");
            }
        }
        kill_group(self.pid);
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        self.reap();
    }
}

/// SIGKILL to the adapter's process group (a no-op when it is already empty).
fn kill_group(pid: u32) {
    #[cfg(unix)]
    if let Ok(pgid) = libc::pid_t::try_from(pid) {
        if pgid > 1 {
            // SAFETY: killpg has no memory-safety preconditions; the group was created for this
            // adapter by process_group(0), so its id is the adapter's pid.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// Feeds and watches one adapter process until it ends or the sink stops.
async fn supervise(
    mut child: Child,
    spec: &AdapterSpec,
    opts: &AdapterOptions,
    redactor: &Arc<Redactor>,
    frames: &mut mpsc::Receiver<EncodedFrame>,
    events: &mpsc::Sender<SinkEvent>,
    cancel: &CancellationToken,
) -> Ended {
    let started = Instant::now();
    let pid = child.id().unwrap_or(0);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        // Cannot happen with Stdio::piped, but a missing pipe must not panic the daemon.
        let _ = child.start_kill();
        return Ended::Lost {
            error: AdapterError::Stdin {
                name: spec.name.clone(),
                pid,
                source: std::io::Error::other("stdio pipes missing"),
            },
            was_ready: false,
            ran: Duration::ZERO,
        };
    };
    let (queue_tx, queue_rx) = mpsc::channel(opts.queue_frames.max(1));
    let (status_tx, status_rx) = mpsc::channel(16);
    let mut run = Running {
        child,
        pid,
        name: spec.name.clone(),
        queue: Some(queue_tx),
        writer: tokio::spawn(write_frames(stdin, queue_rx, spec.framing)),
        writer_done: false,
        status: status_rx,
        stdout_task: tokio::spawn(read_stdout(
            stdout,
            status_tx,
            spec.name.clone(),
            pid,
            Arc::clone(redactor),
        )),
        stderr_task: tokio::spawn(read_stderr(
            stderr,
            spec.name.clone(),
            pid,
            Arc::clone(redactor),
        )),
        last_error: None,
        redactor: Arc::clone(redactor),
    };

    let _ = events.send(SinkEvent::KeyframeWanted).await;
    let mut ready = spec.ready == Ready::OnSpawn;
    if ready {
        let _ = events.send(SinkEvent::Publishing).await;
    }
    let ready_deadline = tokio::time::sleep(opts.ready_timeout);
    tokio::pin!(ready_deadline);
    let mut waiting_for_keyframe = true;
    // Frames dropped since stdin last overflowed; `None` outside such an episode (the wait for
    // the first keyframe after a start is not an overflow and is not reported).
    let mut overflow_drops: Option<u64> = None;
    let mut dropped_total: u64 = 0;
    // When the adapter counts as stalled: armed when the queue is found full, cleared when a
    // frame fits again. A deadline rather than a poll, so a healthy adapter costs nothing.
    let mut stall_deadline: Option<Instant> = None;
    let mut status_open = true;

    let error = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                run.stop(opts.stop_grace).await;
                return Ended::Stopped;
            }
            exit = run.child.wait() => {
                let error = match exit {
                    Ok(status) => AdapterError::Exited {
                        name: spec.name.clone(),
                        pid,
                        status,
                        last_words: run.last_words().await,
                    },
                    Err(source) => AdapterError::Wait { name: spec.name.clone(), pid, source },
                };
                break error;
            }
            written = &mut run.writer, if !run.writer_done => {
                run.writer_done = true;
                let source = match written {
                    Ok(Ok(())) => std::io::Error::other("stdin writer ended"),
                    Ok(Err(e)) => e,
                    Err(e) => std::io::Error::other(e.to_string()),
                };
                // A broken pipe usually means the process is exiting: give it a moment so the
                // exit status, not the pipe error, explains what happened.
                if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(500), run.child.wait()).await {
                    break AdapterError::Exited {
                        name: spec.name.clone(),
                        pid,
                        status,
                        last_words: run.last_words().await,
                    };
                }
                break AdapterError::Stdin { name: spec.name.clone(), pid, source };
            }
            event = run.status.recv(), if status_open => {
                let Some(event) = event else {
                    status_open = false;
                    continue;
                };
                match event {
                    StatusEvent::Publishing if !ready => {
                        ready = true;
                        // An adapter may leave stdin unread until its uplink is up (the ready
                        // timeout covered that); the stall clock starts only now.
                        if stall_deadline.is_some() {
                            stall_deadline = Some(Instant::now() + opts.stall_limit);
                        }
                        tracing::info!(adapter = %spec.name, pid, after = ?started.elapsed(), "adapter publishing");
                        let _ = events.send(SinkEvent::Publishing).await;
                    }
                    StatusEvent::Publishing => {
                        tracing::info!(adapter = %spec.name, pid, "adapter reports publishing again");
                    }
                    StatusEvent::Error { message } => {
                        let message = clip(&redactor.redact(&message), QUOTE_MAX);
                        tracing::warn!(adapter = %spec.name, pid, %message, "adapter reports an error");
                        run.last_error = Some(message);
                    }
                    StatusEvent::Stats { bitrate_bps, fps } => {
                        tracing::debug!(adapter = %spec.name, pid, ?bitrate_bps, ?fps, "adapter stats");
                    }
                }
            }
            _ = &mut ready_deadline, if !ready => {
                break AdapterError::NotReady {
                    name: spec.name.clone(),
                    pid,
                    after: opts.ready_timeout,
                    last_words: run.last_error.take(),
                };
            }
            _ = super::sleep_until_opt(stall_deadline), if ready => {
                stall_deadline = None;
                // Room in the queue means the writer took a frame since the deadline was armed:
                // the adapter reads, only no keyframe has come to refill the queue yet.
                if run.queue.as_ref().is_some_and(|q| q.capacity() == 0) {
                    break AdapterError::Stalled {
                        name: spec.name.clone(),
                        pid,
                        after: opts.stall_limit,
                        last_words: run.last_error.take(),
                    };
                }
            }
            frame = frames.recv() => {
                let Some(frame) = frame else {
                    run.stop(opts.stop_grace).await;
                    return Ended::Stopped;
                };
                let Some(queue) = &run.queue else { continue };
                if waiting_for_keyframe && !frame.keyframe {
                    if let Some(n) = overflow_drops.as_mut() {
                        *n += 1;
                        dropped_total += 1;
                    }
                    continue;
                }
                match queue.try_send(frame) {
                    Ok(()) => {
                        stall_deadline = None;
                        if let Some(dropped) = overflow_drops.take() {
                            tracing::warn!(adapter = %spec.name, pid, dropped, dropped_total, "adapter stdin was full; dropped frames up to this keyframe");
                        }
                        waiting_for_keyframe = false;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Said at the start of the streak: its end is logged only when a frame
                        // fits again, which for an adapter that stopped reading is never.
                        if overflow_drops.is_none() {
                            tracing::warn!(adapter = %spec.name, pid, stall_limit = ?opts.stall_limit, "adapter is not reading its stdin fast enough; dropping frames up to the next keyframe");
                        }
                        stall_deadline.get_or_insert_with(|| Instant::now() + opts.stall_limit);
                        *overflow_drops.get_or_insert(0) += 1;
                        dropped_total += 1;
                        if !waiting_for_keyframe {
                            waiting_for_keyframe = true;
                            let _ = events.send(SinkEvent::KeyframeWanted).await;
                        }
                    }
                    // The writer is gone; its branch above reports why.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    };
    // Whatever ended it, nothing of this adapter may keep running next to its successor (an
    // orphaned ffmpeg would still hold the stream name on the server).
    let _ = run.child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(2), run.child.wait()).await;
    run.reap();
    Ended::Lost {
        error,
        was_ready: ready,
        ran: started.elapsed(),
    }
}

/// Writes queued frames to stdin until the queue closes (then closes stdin) or a write fails.
async fn write_frames(
    mut stdin: ChildStdin,
    mut queue: mpsc::Receiver<EncodedFrame>,
    framing: Framing,
) -> Result<(), std::io::Error> {
    while let Some(frame) = queue.recv().await {
        if framing == Framing::Framed {
            let Some(header) = RecordHeader::for_frame(&frame) else {
                tracing::warn!(
                    len = frame.data.len(),
                    "access unit too large for the framing; dropped"
                );
                continue;
            };
            stdin.write_all(&header.to_bytes()).await?;
        }
        match framing {
            Framing::Framed => stdin.write_all(&frame.data).await?,
            Framing::RawAnnexB => {
                stdin
                    .write_all(without_leading_aud(&frame.data, frame.codec))
                    .await?;
                stdin.write_all(access_unit_delimiter(frame.codec)).await?;
            }
        }
    }
    stdin.shutdown().await
}

/// The access unit delimiter written after every unit on a bare Annex-B stream. A parser of a
/// byte stream (ffmpeg's `-f h264`) only knows an access unit is complete when the next one
/// begins; without this it holds every frame back one frame interval (33 ms at 30 fps). The
/// delimiter is the first NAL unit of the next access unit, which is where H.264 and H.265 want
/// it, and says nothing about that unit's slice types (H.264 `primary_pic_type` 7, H.265
/// `pic_type` 2: any).
fn access_unit_delimiter(codec: Codec) -> &'static [u8] {
    match codec {
        Codec::H264 => &[0, 0, 0, 1, 0x09, 0xf0],
        Codec::H265 => &[0, 0, 0, 1, 0x46, 0x01, 0x50],
    }
}

/// `unit` without the delimiter it may begin with (a passed-through camera stream often has
/// one), since the previous unit's trailing delimiter already opened it.
fn without_leading_aud(unit: &[u8], codec: Codec) -> &[u8] {
    let after_start = match unit {
        [0, 0, 0, 1, rest @ ..] => rest,
        [0, 0, 1, rest @ ..] => rest,
        _ => return unit,
    };
    let is_aud = match codec {
        Codec::H264 => after_start.first().is_some_and(|b| b & 0x1f == 9),
        Codec::H265 => after_start.first().is_some_and(|b| (b >> 1) & 0x3f == 35),
    };
    if !is_aud {
        return unit;
    }
    // The next start code ends the delimiter (its 3-byte form is inside the 4-byte one).
    let body = &unit[unit.len() - after_start.len()..];
    match body.windows(3).position(|w| w == [0, 0, 1]) {
        Some(i) => {
            let next = unit.len() - body.len() + i;
            // Keep a 4-byte start code's leading zero with the next unit.
            let next = if next > 0 && unit[next - 1] == 0 {
                next - 1
            } else {
                next
            };
            &unit[next..]
        }
        None => &[],
    }
}

/// Reads up to one chunk and feeds `splitter`; `None` at EOF or on a read error.
async fn read_lines<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    splitter: &mut LineSplitter,
) -> Option<Vec<status::Line>> {
    match r.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(splitter.push(&buf[..n])),
    }
}

/// Parses stdout into status events; other lines are logged, clipped and redacted.
async fn read_stdout<R: AsyncRead + Unpin>(
    mut r: R,
    tx: mpsc::Sender<StatusEvent>,
    name: String,
    pid: u32,
    redactor: Arc<Redactor>,
) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 8192];
    loop {
        let (lines, eof) = match read_lines(&mut r, &mut buf, &mut splitter).await {
            Some(lines) => (lines, false),
            None => (splitter.finish().into_iter().collect(), true),
        };
        for line in lines {
            match status::parse_line(&line.text) {
                Ok(event) => {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let text = clip(&redactor.redact(&line.text), QUOTE_MAX);
                    tracing::info!(adapter = %name, pid, line = %text, why = %e, "adapter stdout line ignored");
                }
            }
        }
        if eof {
            return;
        }
    }
}

/// Stderr lines logged per [`STDERR_WINDOW`] at most; the rest are counted and summed up.
const STDERR_BURST: u32 = 20;
/// See [`STDERR_BURST`].
const STDERR_WINDOW: Duration = Duration::from_secs(10);

/// Caps how many of an adapter's stderr lines reach the log. An adapter that warns once per
/// frame about a lasting condition (ffmpeg's non-monotonic DTS, an SDK's chatter) would
/// otherwise write 30 lines a second to the journal of a board with little flash, for as long
/// as the session runs.
#[derive(Debug)]
struct StderrBudget {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl StderrBudget {
    fn new() -> Self {
        Self {
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// A line arrived at `now`: whether to log it, and how many lines the window that just
    /// ended suppressed (to be said first).
    fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        let mut ended = None;
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= STDERR_WINDOW {
            self.window_start = Some(now);
            self.logged = 0;
            ended = Some(std::mem::take(&mut self.suppressed)).filter(|n| *n > 0);
        }
        if self.logged < STDERR_BURST {
            self.logged += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }

    /// Lines suppressed and not yet said, taken once (at the end of the stream).
    fn take_suppressed(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.suppressed)).filter(|n| *n > 0)
    }
}

/// Logs stderr lines, redacted and at most [`STDERR_BURST`] per [`STDERR_WINDOW`]; returns the
/// last non-empty one (logged or not) to explain an exit.
async fn read_stderr<R: AsyncRead + Unpin>(
    mut r: R,
    name: String,
    pid: u32,
    redactor: Arc<Redactor>,
) -> Option<String> {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 8192];
    let mut last = None;
    let mut budget = StderrBudget::new();
    let say_suppressed = |n: u64| {
        tracing::info!(adapter = %name, pid, suppressed = n, "{n} more stderr lines not logged");
    };
    loop {
        let (lines, eof) = match read_lines(&mut r, &mut buf, &mut splitter).await {
            Some(lines) => (lines, false),
            None => (splitter.finish().into_iter().collect(), true),
        };
        for line in lines {
            let text = clip(&redactor.redact(&line.text), QUOTE_MAX);
            if text.trim().is_empty() {
                continue;
            }
            let (log, ended) = budget.admit(Instant::now());
            if let Some(n) = ended {
                say_suppressed(n);
            }
            if log {
                tracing::info!(adapter = %name, pid, "{text}");
            }
            last = Some(text);
        }
        if eof {
            if let Some(n) = budget.take_suppressed() {
                say_suppressed(n);
            }
            return last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::frame::Codec;
    use bytes::Bytes;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sh(script: &str, framing: Framing, ready: Ready) -> AdapterSpec {
        let mut spec = AdapterSpec::new(
            "test",
            vec!["sh".into(), "-c".into(), script.into()],
            framing,
            ready,
        );
        spec.backoff_initial = Duration::from_millis(50);
        spec.backoff_max = Duration::from_millis(200);
        spec
    }

    fn quick() -> AdapterOptions {
        AdapterOptions {
            ready_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_millis(500),
            queue_frames: 8,
            stall_limit: Duration::from_secs(10),
        }
    }

    fn frame(i: u64, keyframe: bool, len: usize) -> EncodedFrame {
        let mut data = vec![0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }];
        data.resize(len.max(5), i as u8);
        EncodedFrame {
            data: Bytes::from(data),
            pts: Duration::from_millis(i * 33),
            keyframe,
            codec: Codec::H264,
        }
    }

    async fn next(rx: &mut mpsc::Receiver<SinkEvent>) -> SinkEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("event in time")
            .expect("sink still reporting")
    }

    struct Sink {
        tx: mpsc::Sender<EncodedFrame>,
        events: mpsc::Receiver<SinkEvent>,
        cancel: CancellationToken,
        task: JoinHandle<()>,
    }

    fn start(spec: AdapterSpec, f: Vec<(String, String)>, opts: AdapterOptions) -> Sink {
        let (tx, rx) = mpsc::channel(4);
        let (ev_tx, events) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(spec, f, opts, rx, ev_tx, cancel.clone()));
        Sink {
            tx,
            events,
            cancel,
            task,
        }
    }

    impl Sink {
        async fn stop(mut self) {
            self.cancel.cancel();
            loop {
                if next(&mut self.events).await == SinkEvent::Stopped {
                    break;
                }
            }
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("sink returned")
                .expect("no panic");
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dockcast-adapter-unit-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    async fn wait_file(path: &std::path::Path, len: usize) -> Vec<u8> {
        for _ in 0..200 {
            if let Ok(b) = std::fs::read(path) {
                if b.len() >= len {
                    return b;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} never reached {len} bytes", path.display());
    }

    #[test]
    fn placeholders_are_substituted_and_typos_refused() {
        let f = fields(&[("channel", "ch"), ("token", "t+k")]);
        let cmd: Vec<String> = ["x", "--ch={channel}", "{token}{{}}", "{}", "{ x}", "a}b"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            expand_argv("a", &cmd, &f).expect("expands"),
            ["x", "--ch=ch", "t+k{}", "{}", "{ x}", "a}b"]
        );
        let bad = vec!["x".to_owned(), "{chanel}".to_owned()];
        let e = expand_argv("agora", &bad, &f).expect_err("typo");
        assert_eq!(
            e.to_string(),
            "adapter agora: argument 1 uses {chanel}, which is not a url field (known: channel, token)"
        );
        assert!(matches!(
            expand_argv("a", &[], &f),
            Err(AdapterError::EmptyCommand { .. })
        ));
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("token"), "DOCKCAST_TOKEN");
        assert_eq!(env_name("video_id"), "DOCKCAST_VIDEO_ID");
        assert_eq!(env_name("serverIP"), "DOCKCAST_SERVERIP");
        assert_eq!(env_name("a-b.c"), "DOCKCAST_A_B_C");
    }

    #[tokio::test]
    async fn missing_command_fails_with_its_name() {
        let mut spec = sh("", Framing::Framed, Ready::OnSpawn);
        spec.command = vec!["/nonexistent/agora-adapter".into()];
        let mut s = start(spec, Vec::new(), quick());
        match next(&mut s.events).await {
            SinkEvent::Failed { reason } => {
                assert!(
                    reason.contains("cannot start \"/nonexistent/agora-adapter\""),
                    "{reason}"
                );
                assert!(reason.contains("No such file"), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(s.events.recv().await, None);
    }

    #[tokio::test]
    async fn raw_annexb_starts_on_a_keyframe_and_gets_the_fields() {
        let dir = temp("raw");
        let out = dir.join("out");
        let script = format!(
            "printf '%s|%s|%s' \"$DOCKCAST_CHANNEL\" \"$DOCKCAST_TOKEN\" \"$DOCKCAST_FRAMING\" > {d}/env; \
             printf '%s' \"$1\" > {d}/argv; cat > {o}",
            d = dir.display(),
            o = out.display()
        );
        let mut spec = sh(&script, Framing::RawAnnexB, Ready::OnSpawn);
        spec.command.extend(["sh".into(), "{channel}".into()]);
        let mut s = start(
            spec,
            fields(&[("channel", "c1"), ("token", "s3cr3t")]),
            quick(),
        );
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        assert_eq!(next(&mut s.events).await, SinkEvent::Publishing);
        let sent = [frame(0, false, 10), frame(1, true, 10), frame(2, false, 7)];
        for f in &sent {
            s.tx.send(f.clone()).await.expect("sink alive");
        }
        // Each unit is closed by a delimiter so that a stream parser need not wait for the next.
        let want: Vec<u8> = sent[1..]
            .iter()
            .flat_map(|f| [&f.data[..], &[0, 0, 0, 1, 0x09, 0xf0]].concat())
            .collect();
        assert_eq!(wait_file(&out, want.len()).await, want);
        s.stop().await;
        assert_eq!(
            std::fs::read_to_string(dir.join("env")).expect("env"),
            "c1|s3cr3t|annexb"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("argv")).expect("argv"),
            "c1"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_leading_delimiter_is_dropped_and_everything_else_kept() {
        let h264 = [0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x65, 7];
        assert_eq!(without_leading_aud(&h264, Codec::H264), &h264[6..]);
        let short = [0, 0, 1, 0x09, 0x10, 0, 0, 1, 0x41, 7];
        assert_eq!(without_leading_aud(&short, Codec::H264), &short[5..]);
        let hevc = [0, 0, 0, 1, 0x46, 0x01, 0x50, 0, 0, 0, 1, 0x26, 0x01, 9];
        assert_eq!(without_leading_aud(&hevc, Codec::H265), &hevc[7..]);
        for kept in [
            &[0, 0, 0, 1, 0x65, 1, 2][..],
            &[0, 0, 0, 1, 0x46, 0x01][..],
            &[1, 2, 3][..],
            &[][..],
        ] {
            assert_eq!(without_leading_aud(kept, Codec::H264), kept);
        }
        // A delimiter alone (nothing after it) leaves nothing.
        assert!(without_leading_aud(&[0, 0, 0, 1, 0x09, 0xf0], Codec::H264).is_empty());
    }

    #[tokio::test]
    async fn framed_records_decode_back() {
        let dir = temp("framed");
        let out = dir.join("out");
        let spec = sh(
            &format!("cat > {}", out.display()),
            Framing::Framed,
            Ready::OnSpawn,
        );
        let mut s = start(spec, Vec::new(), quick());
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        assert_eq!(next(&mut s.events).await, SinkEvent::Publishing);
        let sent = [frame(1, true, 100), frame(2, false, 30), frame(3, false, 5)];
        for f in &sent {
            s.tx.send(f.clone()).await.expect("sink alive");
        }
        let len = sent
            .iter()
            .map(|f| f.data.len() + framing::HEADER_LEN)
            .sum();
        let bytes = wait_file(&out, len).await;
        s.stop().await;
        let mut d = framing::Decoder::default();
        d.push(&bytes);
        for f in &sent {
            let u = d.next_unit().expect("valid").expect("whole");
            assert_eq!(u.payload, f.data);
            assert_eq!(u.pts(), f.pts);
            assert_eq!(u.header.keyframe, f.keyframe);
        }
        assert_eq!(d.next_unit(), Ok(None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_stuck_adapter_never_blocks_the_producer_and_is_killed_on_stop() {
        // `sleep` never reads stdin and ignores its EOF.
        let spec = sh("exec sleep 60", Framing::RawAnnexB, Ready::OnSpawn);
        let mut s = start(spec, Vec::new(), quick());
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        assert_eq!(next(&mut s.events).await, SinkEvent::Publishing);
        // 200 frames of 64 KiB: far more than the pipe and the 8-frame queue hold.
        for i in 0..200u64 {
            let f = frame(i, i % 10 == 0, 64 * 1024);
            tokio::time::timeout(Duration::from_secs(1), s.tx.send(f))
                .await
                .expect("producer not blocked")
                .expect("sink alive");
        }
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        let t = Instant::now();
        s.stop().await;
        // 0.5 s grace, then the kill.
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[test]
    fn stderr_lines_are_logged_at_most_twenty_per_ten_seconds_and_the_rest_counted() {
        let t0 = Instant::now();
        let mut b = StderrBudget::new();
        // 30 lines a second (one per frame) for 10 s: 20 logged, 280 counted.
        let mut logged = 0;
        for i in 0..300u64 {
            let (log, ended) = b.admit(t0 + Duration::from_millis(i * 33));
            logged += u32::from(log);
            assert_eq!(ended, None);
        }
        assert_eq!(logged, STDERR_BURST);
        // The next window opens with the count of the last one, and logs again.
        assert_eq!(b.admit(t0 + STDERR_WINDOW), (true, Some(280)));
        assert_eq!(b.take_suppressed(), None);
        for i in 1..25u64 {
            let _ = b.admit(t0 + STDERR_WINDOW + Duration::from_millis(i));
        }
        assert_eq!(
            b.take_suppressed(),
            Some(5),
            "said at the end of the stream"
        );
        assert_eq!(b.take_suppressed(), None, "once");
    }

    #[tokio::test]
    async fn an_adapter_that_publishes_then_stops_reading_is_restarted() {
        // Like ffmpeg blocked on an uplink that vanished without closing TCP: alive, publishing,
        // reading nothing. Every start leaves a line in `spawns`.
        let dir = temp("stall");
        let spawns = dir.join("spawns");
        let script = format!(
            r#"echo x >> {}; echo '{{"event":"publishing"}}'; exec sleep 60"#,
            spawns.display()
        );
        let spec = sh(&script, Framing::RawAnnexB, Ready::OnPublishingEvent);
        let opts = AdapterOptions {
            stall_limit: Duration::from_millis(500),
            ..quick()
        };
        let mut s = start(spec, Vec::new(), opts);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut i = 0u64;
        // 64 KiB frames at 100 fps fill the pipe and the queue at once, and keep coming as a
        // camera's would, until the second start has reported publishing.
        while seen.iter().filter(|e| **e == SinkEvent::Publishing).count() < 2 {
            assert!(
                Instant::now() < deadline,
                "no restart within 10 s; events: {seen:?}"
            );
            let f = frame(i, i % 10 == 0, 64 * 1024);
            i += 1;
            tokio::time::timeout(Duration::from_secs(1), s.tx.send(f))
                .await
                .expect("producer not blocked")
                .expect("sink alive");
            while let Ok(e) = s.events.try_recv() {
                seen.push(e);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reason = seen
            .iter()
            .find_map(|e| match e {
                SinkEvent::Reconnecting { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Reconnecting in {seen:?}"));
        assert!(reason.contains("read no input for 500ms"), "{reason}");
        s.stop().await;
        let starts = std::fs::read_to_string(&spawns).expect("spawns");
        assert!(starts.lines().count() >= 2, "{starts:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_crash_is_restarted_with_keyframe_and_publishing_again() {
        let script = r#"echo '{"event":"publishing"}'; cat > /dev/null & sleep 0.3; echo 'boom' >&2; exit 3"#;
        let spec = sh(script, Framing::Framed, Ready::OnPublishingEvent);
        let mut s = start(spec, Vec::new(), quick());
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        assert_eq!(next(&mut s.events).await, SinkEvent::Publishing);
        match next(&mut s.events).await {
            SinkEvent::Reconnecting {
                attempt, reason, ..
            } => {
                assert_eq!(attempt, 1);
                assert!(reason.contains("exit status: 3"), "{reason}");
                assert!(reason.ends_with(": boom"), "{reason}");
            }
            other => panic!("expected Reconnecting, got {other:?}"),
        }
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        assert_eq!(next(&mut s.events).await, SinkEvent::Publishing);
        s.stop().await;
    }

    #[tokio::test]
    async fn exit_before_publishing_fails_with_its_words_redacted() {
        let script = r#"echo 'garbage {' ; printf '\377\376\n'; echo "join failed with token $DOCKCAST_TOKEN" >&2; exit 1"#;
        let spec = sh(script, Framing::Framed, Ready::OnPublishingEvent);
        let mut s = start(spec, fields(&[("token", "0123456789abcdef")]), quick());
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        match next(&mut s.events).await {
            SinkEvent::Failed { reason } => {
                assert!(reason.contains("exit status: 1"), "{reason}");
                assert!(reason.contains("join failed with token ***"), "{reason}");
                assert!(!reason.contains("0123456789abcdef"), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(s.events.recv().await, None);
    }

    #[tokio::test]
    async fn an_error_event_explains_the_failure() {
        let script = r#"echo '{"event":"error","message":"bad channel"}'; exit 2"#;
        let spec = sh(script, Framing::Framed, Ready::OnPublishingEvent);
        let mut s = start(spec, Vec::new(), quick());
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        match next(&mut s.events).await {
            SinkEvent::Failed { reason } => {
                assert!(reason.ends_with("exit status: 2: bad channel"), "{reason}")
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn producer_gone_closes_stdin_and_the_adapter_exits_cleanly() {
        let dir = temp("eof");
        let done = dir.join("done");
        let spec = sh(
            &format!("cat > /dev/null; echo eof > {}", done.display()),
            Framing::Framed,
            Ready::OnSpawn,
        );
        let Sink {
            tx,
            mut events,
            task,
            ..
        } = start(spec, Vec::new(), quick());
        assert_eq!(next(&mut events).await, SinkEvent::KeyframeWanted);
        assert_eq!(next(&mut events).await, SinkEvent::Publishing);
        tx.send(frame(0, true, 10)).await.expect("sink alive");
        drop(tx);
        assert_eq!(next(&mut events).await, SinkEvent::Stopped);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("sink returned")
            .expect("no panic");
        // It ran to the end of its script: it saw EOF, it was not killed.
        assert_eq!(std::fs::read_to_string(&done).expect("done").trim(), "eof");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_adapter_that_closes_stdin_but_lingers_is_replaced() {
        let spec = sh(
            "exec 0<&-; exec sleep 60",
            Framing::RawAnnexB,
            Ready::OnSpawn,
        );
        let mut s = start(spec, Vec::new(), quick());
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        assert_eq!(next(&mut s.events).await, SinkEvent::Publishing);
        // Give the shell time to close its stdin, then write into the dead pipe.
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.tx.send(frame(0, true, 10)).await.expect("sink alive");
        match next(&mut s.events).await {
            SinkEvent::Reconnecting { reason, .. } => {
                assert!(reason.contains("stopped reading its stdin"), "{reason}")
            }
            other => panic!("expected Reconnecting, got {other:?}"),
        }
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        assert_eq!(next(&mut s.events).await, SinkEvent::Publishing);
        s.stop().await;
    }

    #[tokio::test]
    async fn no_publishing_event_in_time_fails() {
        let spec = sh("exec sleep 60", Framing::Framed, Ready::OnPublishingEvent);
        let opts = AdapterOptions {
            ready_timeout: Duration::from_millis(300),
            ..quick()
        };
        let mut s = start(spec, Vec::new(), opts);
        assert_eq!(next(&mut s.events).await, SinkEvent::KeyframeWanted);
        match next(&mut s.events).await {
            SinkEvent::Failed { reason } => {
                assert!(
                    reason.contains("did not report publishing within 300ms"),
                    "{reason}"
                )
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }
}
