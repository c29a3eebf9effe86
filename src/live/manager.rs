//! The live manager's decisions, as a pure state machine.
//!
//! It alone knows which streams run. It takes decoded cloud requests and session events and
//! returns actions (replies, sessions to start, stop or change, a `live_status` to publish);
//! the actor in `live::actor` carries them out. Being pure, every path — errors included — is
//! tested here without a broker or a media server.
//!
//! Replies to `live_start_push` wait until the sink has published (or failed), as a dock does,
//! so the cloud's "success" means the stream is really at the media server.

use crate::cloud::{
    CameraPosition, Command, DecodeError, Lens, LiveErrorCode, LiveStatus, Request, RequestHeader,
    StreamUrl, VideoId, VideoQuality,
};
use crate::live::catalog::Catalog;
use crate::media::pipeline::PipelineSpec;
use crate::media::quality::{Ladder, Rung};
use std::collections::BTreeMap;
use tracing::{debug, info, warn};

/// Names a session for its whole life; never reused.
pub type SessionId = u64;

/// What a session reports about its sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The media server accepted the publish (first time, or again after a reconnect).
    Publishing,
    /// The connection dropped; the sink is reconnecting by itself.
    Reconnecting {
        /// Why (secrets redacted).
        reason: String,
    },
    /// The session's input stopped delivering (camera unplugged, feed silent); the pipeline
    /// retries it and the sink stays connected.
    InputDown {
        /// Why.
        reason: String,
    },
    /// The input delivers again.
    InputUp,
    /// The session cannot go on.
    Failed {
        /// Why (secrets redacted).
        reason: String,
    },
    /// The session's transport cannot carry its video (an H.265 lens on a sink that has only
    /// H.264); it ends, and a start still waiting is answered 513013.
    Unsupported {
        /// Why.
        reason: String,
    },
    /// The session closed after a stop.
    Stopped,
}

/// One input to the manager.
#[derive(Debug)]
pub enum Input {
    /// A decoded services request.
    Request(Request),
    /// A services payload that could not be decoded.
    Undecodable(DecodeError),
    /// A session's report.
    Session {
        /// Which session.
        id: SessionId,
        /// What happened.
        event: SessionEvent,
    },
}

/// Everything a new session needs.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    /// The video as the cloud named it.
    pub video_id: VideoId,
    /// Where to push.
    pub url: StreamUrl,
    /// What to push.
    pub pipeline: PipelineSpec,
    /// The cloud asked for adaptive quality (level 0): the bitrate follows the sink.
    pub adaptive: bool,
    /// The configured adapter that publishes this url_type, instead of a native sink.
    pub adapter: Option<String>,
}

/// What the actor must do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Publish a services reply.
    Reply {
        /// The request's tid/bid/method, echoed.
        header: RequestHeader,
        /// 0 or a 513xxx code.
        result: u32,
    },
    /// Start a session.
    Start {
        /// Its id.
        id: SessionId,
        /// How.
        plan: Box<SessionPlan>,
    },
    /// Stop a session (unpublish, end its pipeline).
    Stop {
        /// Which.
        id: SessionId,
    },
    /// Feed a session from another input (lens or camera position).
    Switch {
        /// Which session.
        id: SessionId,
        /// Input name.
        input: String,
    },
    /// Change a session's output format.
    Quality {
        /// Which session.
        id: SessionId,
        /// The new rung.
        rung: Rung,
        /// Level 0: the bitrate follows the sink's estimate, up to the rung's.
        adaptive: bool,
    },
    /// `live_status` changed: publish `Manager::status()`.
    PublishStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting; the start reply is not sent yet.
    Starting,
    /// Publishing.
    Live,
    /// Lost the server; reconnecting on its own.
    Reconnecting,
}

#[derive(Debug)]
struct Session {
    video: usize,
    video_id: VideoId,
    url: StreamUrl,
    lens: Lens,
    quality: VideoQuality,
    phase: Phase,
    /// Start requests (the first and any retries) waiting for the outcome.
    waiting: Vec<RequestHeader>,
    /// Times the sink lost its server after publishing.
    reconnects: u64,
    /// The input is failed and being retried: the stream has no video.
    input_down: bool,
}

/// What the health endpoint shows of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub id: SessionId,
    /// The video as the cloud named it.
    pub video_id: String,
    /// 0–4.
    pub url_type: u8,
    /// `starting`, `live` or `reconnecting`.
    pub phase: &'static str,
    /// Lens in use.
    pub lens: &'static str,
    /// Quality level asked.
    pub quality: u8,
    /// Reconnections so far.
    pub reconnects: u64,
    /// The input is failed and being retried.
    pub input_down: bool,
}

/// The session table and the rules around it.
pub struct Manager {
    catalog: Catalog,
    ladder: Ladder,
    gop_frames: u32,
    sessions: BTreeMap<SessionId, Session>,
    next_id: SessionId,
    /// url_type → adapter name, from `[adapters.*] url_type`.
    routes: BTreeMap<u8, String>,
    /// Which openh264 new sessions encode with.
    backend: crate::media::encoder::Backend,
}

/// The config name of a Dock 2/3 camera position.
pub fn position_name(position: CameraPosition) -> &'static str {
    match position {
        CameraPosition::Inside => "inside",
        CameraPosition::Outside => "outside",
    }
}

fn url_type_name(url: &StreamUrl) -> &'static str {
    match url {
        StreamUrl::Agora(_) => "Agora",
        StreamUrl::Rtmp(_) => "RTMP",
        StreamUrl::Rtsp(_) => "RTSP",
        StreamUrl::Gb28181(_) => "GB28181",
        StreamUrl::Whip(_) => "WHIP",
    }
}

/// Why a url has no native sink in this build, or `None` when it has one.
fn unsupported(url: &StreamUrl) -> Option<String> {
    match url {
        StreamUrl::Rtmp(_) | StreamUrl::Whip(_) | StreamUrl::Gb28181(_) => None,
        StreamUrl::Agora(_) => Some(
            "Agora needs an adapter process: configure [adapters.agora] with url_type = 0 \
             (see board/agora/README.md)"
                .into(),
        ),
        other => Some(format!(
            "url_type {} ({}) is not supported by this build; an [adapters.NAME] with that \
             url_type can publish it",
            other.url_type().as_u8(),
            url_type_name(other)
        )),
    }
}

fn reply(header: &RequestHeader, result: u32) -> Action {
    Action::Reply {
        header: header.clone(),
        result,
    }
}

fn refuse(header: &RequestHeader, code: LiveErrorCode, why: &str) -> Vec<Action> {
    warn!(
        tid = %header.tid,
        method = %header.method,
        code = code.code(),
        "refused: {why}"
    );
    vec![reply(header, code.code())]
}

impl Manager {
    /// A manager with no sessions.
    pub fn new(catalog: Catalog, ladder: Ladder, gop_frames: u32) -> Self {
        Manager {
            catalog,
            ladder,
            gop_frames,
            sessions: BTreeMap::new(),
            next_id: 1,
            routes: BTreeMap::new(),
            backend: Default::default(),
        }
    }

    /// Encodes new sessions with this openh264 (`[encoder] openh264_library`).
    pub fn with_backend(mut self, backend: crate::media::encoder::Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Routes url_types to adapters (`[adapters.NAME] url_type = N`).
    pub fn with_routes(mut self, routes: BTreeMap<u8, String>) -> Self {
        self.routes = routes;
        self
    }

    /// Replaces the routes on reload; running sessions keep the sink they have.
    pub fn set_routes(&mut self, routes: BTreeMap<u8, String>) {
        self.routes = routes;
    }

    /// Takes a reloaded config: sessions whose video is still configured keep running
    /// untouched (they keep the quality and lens they had); sessions whose video is gone are
    /// stopped. New settings apply to the next start.
    pub fn reconfigure(
        &mut self,
        catalog: Catalog,
        ladder: Ladder,
        gop_frames: u32,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            let old = &self.catalog.videos[s.video].id;
            match catalog.videos.iter().position(|v| v.id == *old) {
                Some(v) => s.video = v,
                None => gone.push(*id),
            }
        }
        for id in gone {
            if let Some(s) = self.sessions.remove(&id) {
                info!(session = id, video_id = %s.video_id, "video removed from the config; stopping");
                out.extend(
                    s.waiting
                        .iter()
                        .map(|w| reply(w, LiveErrorCode::NoCamera.code())),
                );
                out.push(Action::Stop { id });
            }
        }
        self.catalog = catalog;
        self.ladder = ladder;
        self.gop_frames = gop_frames;
        if !out.is_empty() {
            out.push(Action::PublishStatus);
        }
        out
    }

    /// The catalog it serves.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// One line per session for the health endpoint.
    pub fn summaries(&self) -> Vec<SessionSummary> {
        self.sessions
            .iter()
            .map(|(id, s)| SessionSummary {
                id: *id,
                video_id: s.video_id.to_string(),
                url_type: s.url.url_type().as_u8(),
                phase: match s.phase {
                    Phase::Starting => "starting",
                    Phase::Live => "live",
                    Phase::Reconnecting => "reconnecting",
                },
                lens: s.lens.as_str(),
                quality: s.quality.as_u8(),
                reconnects: s.reconnects,
                input_down: s.input_down,
            })
            .collect()
    }

    /// Ids of every session, for shutdown.
    pub fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// The `live_status` array: one entry per session that has published.
    pub fn status(&self) -> Vec<LiveStatus> {
        self.sessions
            .values()
            .filter(|s| s.phase != Phase::Starting)
            .map(|s| LiveStatus {
                video_id: s.video_id.to_string(),
                video_type: s.lens,
                video_quality: s.quality,
                status: 1,
                // No video at all is the worse news, so it wins over a reconnecting sink.
                error_status: if s.input_down {
                    LiveErrorCode::NoStreamData.code()
                } else if s.phase == Phase::Reconnecting {
                    LiveErrorCode::NetworkCongestion.code()
                } else {
                    0
                },
            })
            .collect()
    }

    /// Applies one input and returns what must be done, in order.
    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        match input {
            Input::Request(req) => self.request(req),
            Input::Undecodable(err) => match err.header() {
                Some(header) => refuse(header, err.code(), &err.to_string()),
                None => {
                    warn!("dropped a services message that cannot be answered: {err}");
                    Vec::new()
                }
            },
            Input::Session { id, event } => self.session_event(id, event),
        }
    }

    fn find_session(&self, video: usize) -> Option<SessionId> {
        self.sessions
            .iter()
            .find(|(_, s)| s.video == video)
            .map(|(id, _)| *id)
    }

    fn request(&mut self, req: Request) -> Vec<Action> {
        let h = &req.header;
        match req.command {
            Command::StartPush {
                url,
                video_id,
                quality,
                ..
            } => self.start(h, url, video_id, quality),
            Command::StopPush { video_id } => {
                let Some(id) = self.running(h, &video_id) else {
                    return self.not_running(h, &video_id);
                };
                let s = self.sessions.remove(&id);
                info!(tid = %h.tid, video_id = %video_id, "stopping");
                let mut out = Vec::new();
                if let Some(s) = s {
                    // A start still waiting learns that it was cancelled.
                    for w in &s.waiting {
                        out.push(reply(w, LiveErrorCode::Unknown.code()));
                    }
                }
                out.extend([Action::Stop { id }, reply(h, 0), Action::PublishStatus]);
                out
            }
            Command::SetQuality { video_id, quality } => {
                let Some(id) = self.running(h, &video_id) else {
                    return self.not_running(h, &video_id);
                };
                let Some(rung) = self.ladder.rung(quality.as_u8()) else {
                    return refuse(h, LiveErrorCode::QualityNotSupported, "no such quality");
                };
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.quality = quality;
                }
                info!(tid = %h.tid, video_id = %video_id, quality = quality.as_u8(), "quality");
                vec![
                    Action::Quality {
                        id,
                        rung,
                        adaptive: quality == VideoQuality::Adaptive,
                    },
                    reply(h, 0),
                    Action::PublishStatus,
                ]
            }
            Command::LensChange { video_id, lens } => self.lens(h, video_id, lens),
            Command::CameraChange { video_id, position } => {
                let Some(id) = self.running(h, &video_id) else {
                    return self.not_running(h, &video_id);
                };
                let video = self.sessions[&id].video;
                let input = position_name(position).to_string();
                if !self.catalog.videos[video].inputs.contains_key(&input) {
                    return refuse(
                        h,
                        LiveErrorCode::FunctionNotSupported,
                        &format!("video {video_id} has no source for camera position {input}"),
                    );
                }
                info!(tid = %h.tid, video_id = %video_id, position = %input, "camera position");
                vec![Action::Switch { id, input }, reply(h, 0)]
            }
        }
    }

    /// The session streaming `video_id`, or `None` with the reason logged by the caller.
    fn running(&self, _h: &RequestHeader, video_id: &VideoId) -> Option<SessionId> {
        let video = self.catalog.find(video_id).ok()?;
        self.find_session(video)
    }

    fn not_running(&self, h: &RequestHeader, video_id: &VideoId) -> Vec<Action> {
        match self.catalog.find(video_id) {
            Err(code) => refuse(
                h,
                code,
                &format!("video {video_id} is not in this gateway's live_capacity"),
            ),
            Ok(_) => refuse(
                h,
                LiveErrorCode::NotStreaming,
                &format!("video {video_id} is not streaming"),
            ),
        }
    }

    fn start(
        &mut self,
        h: &RequestHeader,
        url: StreamUrl,
        video_id: VideoId,
        quality: VideoQuality,
    ) -> Vec<Action> {
        let video = match self.catalog.find(&video_id) {
            Ok(v) => v,
            Err(code) => {
                return refuse(
                    h,
                    code,
                    &format!("video {video_id} is not in this gateway's live_capacity"),
                )
            }
        };
        if let Some(id) = self.find_session(video) {
            let s = self.sessions.get_mut(&id).expect("found above");
            if s.url != url {
                return refuse(
                    h,
                    LiveErrorCode::AlreadyStarted,
                    &format!("video {video_id} is already streaming to another url"),
                );
            }
            // The cloud retries a start with a new tid when our reply was slow or lost: answer
            // the retry like the original instead of refusing a stream that is running.
            info!(tid = %h.tid, video_id = %video_id, "start retried for a running stream");
            return match s.phase {
                Phase::Starting => {
                    s.waiting.push(h.clone());
                    Vec::new()
                }
                Phase::Live | Phase::Reconnecting => vec![reply(h, 0)],
            };
        }
        let adapter = self.routes.get(&url.url_type().as_u8()).cloned();
        if adapter.is_none() {
            if let Some(why) = unsupported(&url) {
                return refuse(h, LiveErrorCode::UrlTypeNotSupported, &why);
            }
        }
        if let StreamUrl::Gb28181(gb) = &url {
            for warning in &gb.warnings {
                warn!(tid = %h.tid, "GB28181 url: {warning}");
            }
        }
        let running: Vec<usize> = self.sessions.values().map(|s| s.video).collect();
        if !self.catalog.fits(video, &running) {
            return refuse(
                h,
                LiveErrorCode::SwitchNotSupported,
                &format!(
                    "starting {video_id} would exceed coexist_video_number_max ({} running)",
                    running.len()
                ),
            );
        }
        let Some(rung) = self.ladder.rung(quality.as_u8()) else {
            return refuse(h, LiveErrorCode::QualityNotSupported, "no such quality");
        };
        let entry = &self.catalog.videos[video];
        let id = self.next_id;
        self.next_id += 1;
        info!(
            tid = %h.tid,
            session = id,
            video_id = %video_id,
            url = %url.redacted(),
            quality = quality.as_u8(),
            "starting"
        );
        let plan = SessionPlan {
            video_id: video_id.clone(),
            url: url.clone(),
            pipeline: PipelineSpec {
                inputs: entry.inputs.clone(),
                input: entry.start_lens.as_str().to_string(),
                rung,
                gop_frames: self.gop_frames,
                backend: self.backend.clone(),
            },
            adaptive: quality == VideoQuality::Adaptive,
            adapter,
        };
        self.sessions.insert(
            id,
            Session {
                video,
                video_id,
                url,
                lens: entry.start_lens,
                quality,
                phase: Phase::Starting,
                waiting: vec![h.clone()],
                reconnects: 0,
                input_down: false,
            },
        );
        vec![Action::Start {
            id,
            plan: Box::new(plan),
        }]
    }

    fn lens(&mut self, h: &RequestHeader, video_id: Option<VideoId>, lens: Lens) -> Vec<Action> {
        let id =
            match &video_id {
                Some(video_id) => match self.running(h, video_id) {
                    Some(id) => id,
                    None => return self.not_running(h, video_id),
                },
                None => {
                    // Without a video_id the request means the one live stream that can switch.
                    let switchable: Vec<SessionId> = self
                        .sessions
                        .iter()
                        .filter(|(_, s)| self.catalog.videos[s.video].lenses.len() > 1)
                        .map(|(id, _)| *id)
                        .collect();
                    match switchable.as_slice() {
                        [one] => *one,
                        [] => {
                            return refuse(
                                h,
                                LiveErrorCode::NotStreaming,
                                "no switchable stream is live",
                            )
                        }
                        _ => return refuse(
                            h,
                            LiveErrorCode::BadParameters,
                            "several switchable streams are live; the request must name video_id",
                        ),
                    }
                }
            };
        let s = self.sessions.get_mut(&id).expect("session exists");
        let entry = &self.catalog.videos[s.video];
        if !entry.lenses.contains(&lens) {
            let offered: Vec<&str> = entry.lenses.iter().map(|l| l.as_str()).collect();
            let why = format!(
                "video {} cannot switch to {} (switchable: {})",
                s.video_id,
                lens.as_str(),
                offered.join(", ")
            );
            return refuse(h, LiveErrorCode::SwitchNotSupported, &why);
        }
        info!(tid = %h.tid, video_id = %s.video_id, lens = lens.as_str(), "lens");
        s.lens = lens;
        vec![
            Action::Switch {
                id,
                input: lens.as_str().to_string(),
            },
            reply(h, 0),
            Action::PublishStatus,
        ]
    }

    /// Forgets a session that cannot go on; a start still waiting for it is answered `code`.
    fn end_session(&mut self, id: SessionId, code: LiveErrorCode) -> Vec<Action> {
        let Some(s) = self.sessions.remove(&id) else {
            return Vec::new();
        };
        let mut out: Vec<Action> = s.waiting.iter().map(|w| reply(w, code.code())).collect();
        out.push(Action::Stop { id });
        if s.phase != Phase::Starting {
            out.push(Action::PublishStatus);
        }
        out
    }

    fn session_event(&mut self, id: SessionId, event: SessionEvent) -> Vec<Action> {
        let Some(s) = self.sessions.get_mut(&id) else {
            // Events from a session that was already stopped.
            return Vec::new();
        };
        match event {
            SessionEvent::Publishing => {
                let was = s.phase;
                s.phase = Phase::Live;
                let mut out: Vec<Action> = s.waiting.drain(..).map(|w| reply(&w, 0)).collect();
                if was != Phase::Live {
                    info!(session = id, video_id = %s.video_id, "publishing");
                    out.push(Action::PublishStatus);
                }
                out
            }
            // Said once per outage: each retry is logged by the sink or pipeline itself.
            SessionEvent::Reconnecting { reason } => {
                if s.phase == Phase::Reconnecting {
                    debug!(session = id, video_id = %s.video_id, "still reconnecting: {reason}");
                    return Vec::new();
                }
                warn!(session = id, video_id = %s.video_id, "reconnecting: {reason}");
                s.phase = Phase::Reconnecting;
                s.reconnects += 1;
                vec![Action::PublishStatus]
            }
            SessionEvent::InputDown { reason } => {
                if std::mem::replace(&mut s.input_down, true) {
                    debug!(session = id, video_id = %s.video_id, "still no video: {reason}");
                    return Vec::new();
                }
                warn!(session = id, video_id = %s.video_id, "no video: {reason}");
                vec![Action::PublishStatus]
            }
            SessionEvent::InputUp => {
                if !std::mem::replace(&mut s.input_down, false) {
                    return Vec::new();
                }
                info!(session = id, video_id = %s.video_id, "video is back");
                vec![Action::PublishStatus]
            }
            SessionEvent::Failed { reason } => {
                warn!(session = id, video_id = %s.video_id, "failed: {reason}");
                self.end_session(id, LiveErrorCode::ConnectFailed)
            }
            SessionEvent::Unsupported { reason } => {
                warn!(session = id, video_id = %s.video_id, "refused: {reason}");
                self.end_session(id, LiveErrorCode::UrlTypeNotSupported)
            }
            SessionEvent::Stopped => {
                // A session stops by itself only if its sink ended; treat it as a failure.
                self.session_event(
                    id,
                    SessionEvent::Failed {
                        reason: "session ended".into(),
                    },
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::decode_request;
    use crate::config::Config;

    const GW: &str = "DOCKCAST0000001";
    const VID: &str = "DOCKCAST0000001/165-0-7/normal-0";
    const URL: &str = "rtmp://127.0.0.1:1935/live/cam1";

    fn manager_with(config: &str) -> Manager {
        let c = Config::parse(config, "test").unwrap();
        Manager::new(Catalog::from_config(&c), c.quality.clone(), 30)
    }

    fn manager() -> Manager {
        manager_with("")
    }

    fn input(tid: &str, method: &str, data: serde_json::Value) -> Input {
        let payload = serde_json::json!({"tid": tid, "bid": "b", "method": method, "data": data});
        match decode_request(payload.to_string().as_bytes()) {
            Ok(r) => Input::Request(r),
            Err(e) => Input::Undecodable(e),
        }
    }

    fn start(tid: &str, url: &str, quality: u8) -> Input {
        input(
            tid,
            "live_start_push",
            serde_json::json!({"url_type": 1, "url": url, "video_id": VID, "video_quality": quality}),
        )
    }

    fn replies(actions: &[Action]) -> Vec<(String, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply { header, result } => Some((header.tid.clone(), *result)),
                _ => None,
            })
            .collect()
    }

    fn started(actions: &[Action]) -> SessionId {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Start { id, .. } => Some(*id),
                _ => None,
            })
            .expect("a Start action")
    }

    fn live(m: &mut Manager) -> SessionId {
        let id = started(&m.handle(start("t1", URL, 2)));
        m.handle(Input::Session {
            id,
            event: SessionEvent::Publishing,
        });
        id
    }

    #[test]
    fn start_is_answered_after_the_publish() {
        let mut m = manager();
        let actions = m.handle(start("t1", URL, 2));
        assert!(
            replies(&actions).is_empty(),
            "no reply before the sink answered"
        );
        let Some(Action::Start { id, plan }) = actions.first() else {
            panic!("{actions:?}")
        };
        assert_eq!(plan.pipeline.input, "normal");
        assert_eq!(plan.pipeline.rung, Config::default().quality.standard);
        assert_eq!(plan.pipeline.inputs.len(), 4);
        assert!(m.status().is_empty(), "a starting stream is not live yet");
        let actions = m.handle(Input::Session {
            id: *id,
            event: SessionEvent::Publishing,
        });
        assert_eq!(replies(&actions), [("t1".to_string(), 0)]);
        assert!(actions.iter().any(|a| matches!(a, Action::PublishStatus)));
        let st = m.status();
        assert_eq!(st.len(), 1);
        assert_eq!(
            (st[0].video_id.as_str(), st[0].status, st[0].error_status),
            (VID, 1, 0)
        );
        assert_eq!(st[0].video_type, Lens::Normal);
        assert_eq!(st[0].video_quality.as_u8(), 2);
    }

    /// Start `t1`, then `event` from its session before it publishes: the manager and what it
    /// did, once checked that the session was stopped.
    fn start_and_end(event: SessionEvent) -> (Manager, Vec<Action>) {
        let mut m = manager();
        let id = started(&m.handle(start("t1", URL, 0)));
        let actions = m.handle(Input::Session { id, event });
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Stop { id: i } if *i == id)));
        (m, actions)
    }

    #[test]
    fn failed_connect_answers_513010_and_forgets_the_session() {
        let (mut m, actions) = start_and_end(SessionEvent::Failed {
            reason: "connection refused".into(),
        });
        assert_eq!(replies(&actions), [("t1".to_string(), 513010)]);
        // The video can be started again.
        assert!(matches!(
            m.handle(start("t2", URL, 0))[0],
            Action::Start { .. }
        ));
    }

    #[test]
    fn a_sink_that_cannot_carry_the_codec_answers_513013_not_513010() {
        let (mut m, actions) = start_and_end(SessionEvent::Unsupported {
            reason: "the source is H.265; WHIP here carries H.264 only".into(),
        });
        assert_eq!(replies(&actions), [("t1".to_string(), 513013)]);
        assert!(m.session_ids().is_empty(), "the session is forgotten");
        // Once live, the end is reported in live_status rather than as a reply.
        let id = started(&m.handle(start("t2", URL, 0)));
        m.handle(Input::Session {
            id,
            event: SessionEvent::Publishing,
        });
        let actions = m.handle(Input::Session {
            id,
            event: SessionEvent::Unsupported {
                reason: "a lens switched to H.265".into(),
            },
        });
        assert!(replies(&actions).is_empty());
        assert!(actions.iter().any(|a| matches!(a, Action::PublishStatus)));
    }

    #[test]
    fn retried_start_echoes_each_tid() {
        let mut m = manager();
        let id = started(&m.handle(start("t1", URL, 2)));
        assert!(
            m.handle(start("t2", URL, 2)).is_empty(),
            "waits with the first"
        );
        let actions = m.handle(Input::Session {
            id,
            event: SessionEvent::Publishing,
        });
        assert_eq!(
            replies(&actions),
            [("t1".to_string(), 0), ("t2".to_string(), 0)]
        );
        assert_eq!(
            replies(&m.handle(start("t3", URL, 2))),
            [("t3".to_string(), 0)]
        );
        let other = "rtmp://127.0.0.1:1935/live/other";
        assert_eq!(
            replies(&m.handle(start("t4", other, 2))),
            [("t4".to_string(), 513003)]
        );
    }

    #[test]
    fn stop_quality_and_lens_need_a_running_stream() {
        let mut m = manager();
        let vid = serde_json::json!({ "video_id": VID });
        assert_eq!(
            replies(&m.handle(input("a", "live_stop_push", vid))),
            [("a".into(), 513011)]
        );
        let q = serde_json::json!({ "video_id": VID, "video_quality": 3 });
        assert_eq!(
            replies(&m.handle(input("b", "live_set_quality", q))),
            [("b".into(), 513011)]
        );
        let l = serde_json::json!({ "video_type": "zoom" });
        assert_eq!(
            replies(&m.handle(input("c", "live_lens_change", l))),
            [("c".into(), 513011)]
        );
        let other_cam = serde_json::json!({ "video_id": "DOCKCAST0000001/39-0-7/normal-0" });
        assert_eq!(
            replies(&m.handle(input("d", "live_stop_push", other_cam))),
            [("d".into(), 513002)]
        );
        let other_sn = serde_json::json!({ "video_id": "OTHER01/165-0-7/normal-0" });
        assert_eq!(
            replies(&m.handle(input("e", "live_stop_push", other_sn))),
            [("e".into(), 513001)]
        );
    }

    #[test]
    fn stop_ends_the_session_and_clears_status() {
        let mut m = manager();
        let id = live(&mut m);
        let actions = m.handle(input(
            "s",
            "live_stop_push",
            serde_json::json!({ "video_id": VID }),
        ));
        assert!(matches!(actions[0], Action::Stop { id: i } if i == id));
        assert_eq!(replies(&actions), [("s".into(), 0)]);
        assert!(m.status().is_empty());
        // Late events of the stopped session change nothing.
        assert!(m
            .handle(Input::Session {
                id,
                event: SessionEvent::Stopped
            })
            .is_empty());
    }

    #[test]
    fn quality_change_sends_the_new_rung() {
        let mut m = manager();
        let id = live(&mut m);
        let q = serde_json::json!({ "video_id": VID, "video_quality": 4 });
        let actions = m.handle(input("q", "live_set_quality", q));
        let ladder = Config::default().quality;
        assert!(
            matches!(actions[0], Action::Quality { id: i, rung, adaptive: false } if i == id && rung == ladder.ultra_high)
        );
        assert_eq!(replies(&actions), [("q".into(), 0)]);
        assert_eq!(m.status()[0].video_quality.as_u8(), 4);
    }

    #[test]
    fn lens_change_with_and_without_video_id() {
        let mut m = manager();
        let id = live(&mut m);
        let with_id = serde_json::json!({ "video_id": VID, "video_type": "zoom" });
        let actions = m.handle(input("l1", "live_lens_change", with_id));
        assert!(
            matches!(&actions[0], Action::Switch { id: i, input } if *i == id && input == "zoom")
        );
        assert_eq!(replies(&actions), [("l1".into(), 0)]);
        assert_eq!(m.status()[0].video_type, Lens::Zoom);
        let without = serde_json::json!({ "video_type": "ir" });
        let actions = m.handle(input("l2", "live_lens_change", without));
        assert!(matches!(&actions[0], Action::Switch { input, .. } if input == "ir"));
        // The demo cloud rewrites the video index to {type}-0: still the same stream.
        let demo = serde_json::json!({ "video_id": "DOCKCAST0000001/165-0-7/wide-0", "video_type": "wide" });
        assert_eq!(
            replies(&m.handle(input("l3", "live_lens_change", demo))),
            [("l3".into(), 0)]
        );
        let thermal = serde_json::json!({ "video_type": "thermal" });
        assert_eq!(
            replies(&m.handle(input("l4", "live_lens_change", thermal))),
            [("l4".into(), 513012)]
        );
        let unknown = serde_json::json!({ "video_type": "infrared" });
        assert_eq!(
            replies(&m.handle(input("l5", "live_lens_change", unknown))),
            [("l5".into(), 513014)]
        );
    }

    #[test]
    fn coexist_limits_are_enforced() {
        let two_cams = r#"
            [gateway]
            max_streams = 1
            [[device]]
            [[device.camera]]
            index = "165-0-7"
            [[device.camera.video]]
            index = "normal-0"
            sources = { normal = "pattern" }
            [[device.camera]]
            index = "39-0-7"
            [[device.camera.video]]
            index = "normal-0"
            sources = { normal = "pattern", zoom = "pattern" }
        "#;
        let mut m = manager_with(two_cams);
        live(&mut m);
        let second = serde_json::json!({"url_type": 1, "url": URL, "video_id": "DOCKCAST0000001/39-0-7/normal-0", "video_quality": 0});
        assert_eq!(
            replies(&m.handle(input("x", "live_start_push", second))),
            [("x".into(), 513012)]
        );
        // Without video_id the lens change goes to the one switchable stream; here the live
        // one has a single lens, so nothing can switch.
        let l = serde_json::json!({ "video_type": "zoom" });
        assert_eq!(
            replies(&m.handle(input("y", "live_lens_change", l))),
            [("y".into(), 513011)]
        );
    }

    #[test]
    fn unsupported_transports_get_513013() {
        let mut m = manager();
        let cases = [
            (0, "channel=c&sn=s&token=t&uid=1"),
            (2, "userName=u&password=p&port=8554"),
        ];
        for (i, (url_type, url)) in cases.iter().enumerate() {
            let data = serde_json::json!({"url_type": url_type, "url": url, "video_id": VID, "video_quality": 0});
            let tid = format!("u{i}");
            assert_eq!(
                replies(&m.handle(input(&tid, "live_start_push", data))),
                [(tid.clone(), 513013)],
                "url_type {url_type}"
            );
        }
    }

    #[test]
    fn an_adapter_route_takes_the_url_type() {
        let mut routes = BTreeMap::new();
        routes.insert(0u8, "agora".to_string());
        let mut m = manager().with_routes(routes);
        let data = serde_json::json!({"url_type": 0, "url": "channel=c&sn=s&token=t&uid=1", "video_id": VID, "video_quality": 0});
        let actions = m.handle(input("a", "live_start_push", data));
        let Some(Action::Start { plan, .. }) = actions.first() else {
            panic!("{actions:?}")
        };
        assert_eq!(plan.adapter.as_deref(), Some("agora"));
        assert!(plan.adaptive);
    }

    #[test]
    fn undecodable_requests_are_answered_when_they_have_a_tid() {
        let mut m = manager();
        let actions = m.handle(input("z", "live_fly_away", serde_json::json!({})));
        assert_eq!(replies(&actions), [("z".into(), 513004)]);
        let bad = decode_request(b"not json").unwrap_err();
        assert!(m.handle(Input::Undecodable(bad)).is_empty());
    }

    #[test]
    fn camera_position_needs_configured_sources() {
        let mut m = manager();
        live(&mut m);
        let change = serde_json::json!({ "video_id": VID, "camera_position": 0 });
        assert_eq!(
            replies(&m.handle(input("c1", "live_camera_change", change.clone()))),
            [("c1".into(), 513004)]
        );
        let with_positions = r#"
            [[device]]
            [[device.camera]]
            index = "165-0-7"
            [[device.camera.video]]
            index = "normal-0"
            sources = { normal = "pattern" }
            positions = { inside = "pattern:ir", outside = "pattern" }
        "#;
        let mut m = manager_with(with_positions);
        live(&mut m);
        let actions = m.handle(input("c2", "live_camera_change", change));
        assert!(matches!(&actions[0], Action::Switch { input, .. } if input == "inside"));
        assert_eq!(replies(&actions), [("c2".into(), 0)]);
    }

    #[test]
    fn reload_keeps_configured_sessions_and_stops_removed_ones() {
        let two_cams = r#"
            [[device]]
            [[device.camera]]
            index = "39-0-7"
            [[device.camera.video]]
            index = "normal-0"
            sources = { normal = "pattern" }
            [[device.camera]]
            index = "165-0-7"
            [[device.camera.video]]
            index = "normal-0"
            sources = { normal = "pattern", zoom = "pattern" }
        "#;
        let mut m = manager();
        let id = live(&mut m);
        // Same video at another position in the tree: keeps running, nothing to do.
        let c = Config::parse(two_cams, "t").unwrap();
        let actions = m.reconfigure(Catalog::from_config(&c), c.quality.clone(), 30);
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(m.status().len(), 1);
        let vid = serde_json::json!({ "video_id": VID, "video_type": "zoom" });
        assert_eq!(
            replies(&m.handle(input("z", "live_lens_change", vid))),
            [("z".into(), 0)]
        );
        // Its camera removed: stopped.
        let other = r#"
            [[device]]
            [[device.camera]]
            index = "39-0-7"
            [[device.camera.video]]
            index = "normal-0"
            sources = { normal = "pattern" }
        "#;
        let c = Config::parse(other, "t").unwrap();
        let actions = m.reconfigure(Catalog::from_config(&c), c.quality.clone(), 30);
        assert!(matches!(actions[..], [Action::Stop { id: i }, Action::PublishStatus] if i == id));
        assert!(m.status().is_empty());
    }

    #[test]
    fn reconnecting_is_reported_in_live_status() {
        let mut m = manager();
        let id = live(&mut m);
        let ev = |m: &mut Manager, event| m.handle(Input::Session { id, event });
        let reason = || SessionEvent::Reconnecting {
            reason: "reset".into(),
        };
        assert!(matches!(ev(&mut m, reason())[..], [Action::PublishStatus]));
        assert_eq!(m.status()[0].error_status, 513015);
        assert!(
            ev(&mut m, reason()).is_empty(),
            "no repeat while still down"
        );
        let back = ev(&mut m, SessionEvent::Publishing);
        assert!(replies(&back).is_empty());
        assert!(matches!(back[..], [Action::PublishStatus]));
        assert_eq!(m.status()[0].error_status, 0);
        let gone = ev(
            &mut m,
            SessionEvent::Failed {
                reason: "pipeline".into(),
            },
        );
        assert!(gone.iter().any(|a| matches!(a, Action::PublishStatus)));
        assert!(m.status().is_empty());
        let _ = GW;
    }

    #[test]
    fn a_failed_input_is_reported_in_live_status_until_video_is_back() {
        let mut m = manager();
        let id = live(&mut m);
        let ev = |m: &mut Manager, event| m.handle(Input::Session { id, event });
        let down = || SessionEvent::InputDown {
            reason: "normal: /dev/video0: No such device".into(),
        };
        assert!(matches!(ev(&mut m, down())[..], [Action::PublishStatus]));
        assert_eq!(m.status()[0].error_status, 513008);
        assert_eq!(m.status()[0].status, 1, "the session itself goes on");
        assert!(m.summaries()[0].input_down);
        assert!(ev(&mut m, down()).is_empty(), "no repeat while still down");
        // A sink reconnect meanwhile does not hide the missing video.
        let _ = ev(
            &mut m,
            SessionEvent::Reconnecting {
                reason: "reset".into(),
            },
        );
        assert_eq!(m.status()[0].error_status, 513008);
        let _ = ev(&mut m, SessionEvent::Publishing);
        assert!(matches!(
            ev(&mut m, SessionEvent::InputUp)[..],
            [Action::PublishStatus]
        ));
        assert_eq!(m.status()[0].error_status, 0);
        assert!(!m.summaries()[0].input_down);
        assert!(ev(&mut m, SessionEvent::InputUp).is_empty());
    }
}
