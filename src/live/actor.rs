//! The live manager's tokio shell: it owns the `Manager`, the session handles and nothing else.
//!
//! Inputs arrive on channels (services payloads from the MQTT link, events from sessions);
//! outputs leave on the link's channel. A slow or dead broker can never block it: every publish
//! is a `try_send`, and the link re-announces the latest capacity and status on reconnect.

use crate::cloud::{self, decode_request, LiveCapacity};
use crate::link::LinkCommand;
use crate::live::manager::{Action, Input, Manager, SessionEvent, SessionId};
use crate::live::session::{self, SessionCommand, SessionHandle, SinkSettings, STOP_GRACE};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What the actor needs besides its channels.
pub struct ActorSetup {
    /// The decision core.
    pub manager: Manager,
    /// Sink settings for new sessions.
    pub sinks: SinkSettings,
    /// Gateway serial (topics and the `gateway` field).
    pub gateway_sn: String,
    /// The capacity announced on every (re)connect.
    pub capacity: LiveCapacity,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Changes the actor takes while running.
pub enum ActorControl {
    /// A reloaded config (SIGHUP): sessions whose video is still configured keep running.
    Reload {
        /// The new decision inputs.
        catalog: crate::live::catalog::Catalog,
        /// url_type → adapter name.
        routes: std::collections::BTreeMap<u8, String>,
        /// The new ladder.
        ladder: crate::media::quality::Ladder,
        /// The new GOP.
        gop_frames: u32,
        /// Sink settings for new sessions.
        sinks: SinkSettings,
        /// The capacity to announce.
        capacity: LiveCapacity,
    },
}

/// Runs until `shutdown` fires, then stops every session (bounded by `STOP_GRACE`) and
/// announces an empty `live_status`.
pub async fn run(
    setup: ActorSetup,
    mut services: mpsc::Receiver<Bytes>,
    mut control: mpsc::Receiver<ActorControl>,
    mut snapshots: mpsc::Receiver<crate::health::SnapshotRequest>,
    link: mpsc::Sender<LinkCommand>,
    shutdown: CancellationToken,
) {
    let ActorSetup {
        mut manager,
        mut sinks,
        gateway_sn,
        capacity,
    } = setup;
    // The watchdog is fed from this loop, so a wedged manager stops feeding it. Without a
    // watchdog the tick still runs, rarely, and does nothing.
    let watchdog = crate::systemd::watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.unwrap_or(std::time::Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state_topic = cloud::state_topic(&gateway_sn);
    let reply_topic = cloud::services_reply_topic(&gateway_sn);
    let send = |cmd: LinkCommand| {
        if link.try_send(cmd).is_err() {
            warn!("MQTT link queue is full; a message was dropped");
        }
    };
    send(LinkCommand::Announce {
        topic: state_topic.clone(),
        key: "live_capacity",
        payload: cloud::encode_capacity(&gateway_sn, &capacity, &new_id(), &new_id(), now_ms()),
        retain: true,
    });
    let (events_tx, mut events) = mpsc::channel::<(SessionId, SessionEvent)>(64);
    let mut handles: BTreeMap<SessionId, SessionHandle> = BTreeMap::new();
    let mut closing = tokio::task::JoinSet::new();
    let mut sessions_started = 0u64;
    loop {
        let actions = tokio::select! {
            _ = shutdown.cancelled() => break,
            payload = services.recv() => match payload {
                Some(p) => manager.handle(match decode_request(&p) {
                    Ok(req) => Input::Request(req),
                    Err(e) => Input::Undecodable(e),
                }),
                None => break,
            },
            Some((id, event)) = events.recv() => manager.handle(Input::Session { id, event }),
            Some(_) = closing.join_next(), if !closing.is_empty() => continue,
            Some(reply) = snapshots.recv() => {
                let _ = reply.send(snapshot(&manager, &handles, sessions_started));
                continue;
            }
            _ = tick.tick() => {
                if watchdog.is_some() {
                    crate::systemd::watchdog();
                }
                continue;
            }
            Some(ActorControl::Reload { catalog, routes, ladder, gop_frames, sinks: new_sinks, capacity }) = control.recv() => {
                sinks = new_sinks;
                manager.set_routes(routes);
                send(LinkCommand::Announce {
                    topic: state_topic.clone(),
                    key: "live_capacity",
                    payload: cloud::encode_capacity(&gateway_sn, &capacity, &new_id(), &new_id(), now_ms()),
                    retain: true,
                });
                let actions = manager.reconfigure(catalog, ladder, gop_frames);
                info!(sessions = manager.session_ids().len(), "config reloaded");
                crate::systemd::ready("config reloaded");
                actions
            }
        };
        let mut actions = std::collections::VecDeque::from(actions);
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Reply { header, result } => send(LinkCommand::Publish {
                    topic: reply_topic.clone(),
                    payload: cloud::encode_reply(&header, &gateway_sn, result, now_ms()),
                    retain: false,
                }),
                Action::Start { id, plan } => {
                    sessions_started += 1;
                    match session::spawn(id, *plan, &sinks, events_tx.clone()) {
                        Ok(handle) => {
                            handles.insert(id, handle);
                        }
                        Err(reason) => {
                            // Handled at once, so the waiting start gets its reply: a session
                            // event queued behind a full channel could be lost.
                            actions.extend(manager.handle(Input::Session {
                                id,
                                event: SessionEvent::Failed { reason },
                            }));
                        }
                    }
                }
                Action::Stop { id } => {
                    if let Some(handle) = handles.remove(&id) {
                        handle.stop();
                        closing.spawn(handle.join());
                    }
                }
                Action::Switch { id, input } => {
                    if let Some(h) = handles.get(&id) {
                        h.command(SessionCommand::Input(input));
                    }
                }
                Action::Quality { id, rung, adaptive } => {
                    if let Some(h) = handles.get(&id) {
                        h.command(SessionCommand::Quality { rung, adaptive });
                    }
                }
                Action::PublishStatus => send(LinkCommand::Announce {
                    topic: state_topic.clone(),
                    key: "live_status",
                    payload: cloud::encode_status(
                        &gateway_sn,
                        &manager.status(),
                        &new_id(),
                        &new_id(),
                        now_ms(),
                    ),
                    retain: false,
                }),
            }
        }
    }
    info!(sessions = handles.len(), "stopping every session");
    for handle in handles.values() {
        handle.stop();
    }
    for (_, handle) in handles {
        closing.spawn(handle.join());
    }
    let drained = tokio::time::timeout(STOP_GRACE + std::time::Duration::from_millis(200), async {
        while closing.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("some sessions did not close in time");
    }
    send(LinkCommand::Announce {
        topic: state_topic,
        key: "live_status",
        payload: cloud::encode_status(&gateway_sn, &[], &new_id(), &new_id(), now_ms()),
        retain: false,
    });
}

/// What the health endpoint shows, read from the manager and the sessions' counters.
fn snapshot(
    manager: &Manager,
    handles: &BTreeMap<SessionId, SessionHandle>,
    sessions_started: u64,
) -> crate::health::Snapshot {
    use std::sync::atomic::Ordering::Relaxed;
    let sessions = manager
        .summaries()
        .into_iter()
        .map(|s| {
            let counters = handles
                .get(&s.id)
                .map(|h| crate::health::SessionCounters {
                    frames_sent: h.stats.frames_sent.load(Relaxed),
                    frames_dropped: h.stats.frames_dropped.load(Relaxed),
                    bytes_sent: h.stats.bytes_sent.load(Relaxed),
                    encode_us: h.stats.encode_us.load(Relaxed),
                    bitrate_kbps: h.stats.bitrate_kbps.load(Relaxed) as u32,
                    bad_frames: h.stats.bad_frames.load(Relaxed),
                    input_failures: h.stats.input_failures.load(Relaxed),
                    decode_errors: h.stats.decode_errors.load(Relaxed),
                })
                .unwrap_or_default();
            (s, counters)
        })
        .collect();
    crate::health::Snapshot {
        sessions,
        sessions_started,
    }
}
