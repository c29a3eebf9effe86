//! The device user agent as a sans-IO state machine: fed datagrams and time, it yields
//! datagrams to send, events for the sink, and the next instant it wants to be woken.
//!
//! It owns registration (digest, refresh, re-register with backoff), keepalives, query
//! answers, the one Play dialog, and the UDP retransmission timers of RFC 3261 §17 for the
//! requests it sends and the 2xx it answers INVITEs with.

use super::dialog::{accept_invite, InviteError, MediaPlan, PlayDialog};
use super::manscdp::{self, DeviceDescription};
use super::register::{Identity, RegisterOutcome, Registration};
use super::sdp::MediaTransport;
use super::sip::{self, Message, Request, Response};
use crate::backoff::Backoff;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Everything the user agent needs to know; built by the sink from the DJI url and options.
///
/// `Debug` prints the password as `***` so the whole user agent can be debug-logged.
#[derive(Clone)]
pub struct UaConfig {
    /// Addresses and IDs printed in requests.
    pub identity: Identity,
    /// Digest password (never logged).
    pub password: String,
    /// Our single video channel.
    pub channel: String,
    /// Address advertised in SDP answers.
    pub media_ip: IpAddr,
    /// Fixed local media port (UDP source port, TCP listen port).
    pub media_port: u16,
    /// Address the media sockets are bound to: an IPv4 socket cannot send UDP media to an
    /// IPv6 media server, so such an offer is refused up front.
    pub media_bind_ip: IpAddr,
    /// Registration expiry asked for, seconds.
    pub expires: u32,
    /// Keepalive period.
    pub keepalive_interval: Duration,
    /// Unanswered keepalives in a row that count as a lost registration.
    pub keepalive_max_missed: u32,
    /// RFC 3261 T1: first retransmission interval over UDP.
    pub t1: Duration,
    /// Give up on a transaction after this long (RFC 3261: 64·T1 = 32 s).
    pub transaction_timeout: Duration,
    /// First re-register backoff ceiling.
    pub backoff_initial: Duration,
    /// Largest re-register backoff ceiling.
    pub backoff_max: Duration,
    /// Display name in Catalog/DeviceInfo.
    pub name: String,
    /// Seed for tags, branches, Call-IDs and jitter; random in production, fixed in tests.
    pub seed: u64,
    /// Addresses besides the platform's own that may send SIP (a platform whose SIP service
    /// answers from another address than the one registered with). Anything else is ignored:
    /// an INVITE from any host that reaches the port would point the camera's video where
    /// that host asks.
    pub accept_from: Vec<IpAddr>,
}

impl std::fmt::Debug for UaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UaConfig")
            .field("identity", &self.identity)
            .field("password", &"***")
            .field("channel", &self.channel)
            .field("media_ip", &self.media_ip)
            .field("media_port", &self.media_port)
            .field("accept_from", &self.accept_from)
            .field("expires", &self.expires)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_max_missed", &self.keepalive_max_missed)
            .finish_non_exhaustive()
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dest: SocketAddr,
    /// SIP message bytes.
    pub data: Bytes,
}

/// What the user agent tells the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UaEvent {
    /// Registered (first time, or again after a loss).
    Registered {
        /// Granted expiry, seconds.
        expires: u32,
    },
    /// Registration lost after having worked; retrying after `retry_in`. A running dialog
    /// was ended with it (BYE, [`UaEvent::MediaStop`] before this event).
    RegistrationLost {
        /// Failures in a row.
        attempt: u32,
        /// Why (no secrets).
        reason: String,
        /// Delay before the next REGISTER.
        retry_in: Duration,
    },
    /// The first registration failed; the user agent is done.
    RegistrationFailed {
        /// Why (no secrets).
        reason: String,
    },
    /// The platform ACKed our answer: start sending media as planned.
    MediaStart(MediaPlan),
    /// Stop the media of this dialog (BYE, replaced by a new INVITE, or stopping).
    MediaStop {
        /// Call-ID of the dialog whose media must stop.
        call_id: String,
    },
    /// A platform request was refused or ignored; worth a log line.
    Refused {
        /// Why.
        reason: String,
    },
    /// Unregistered (or gave up trying) after [`Ua::stop`]; the user agent is done.
    Unregistered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxKind {
    Register,
    Keepalive,
    Answer,
    Bye,
}

#[derive(Debug)]
struct ClientTx {
    kind: TxKind,
    dest: SocketAddr,
    data: Bytes,
    next_retx: Instant,
    interval: Duration,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegState {
    Idle,
    /// A REGISTER is in flight.
    Registering,
    Registered {
        refresh_at: Instant,
    },
    RetryAt(Instant),
    Unregistering,
    Done,
}

#[derive(Debug)]
struct Pending2xx {
    data: Bytes,
    dest: SocketAddr,
    next: Instant,
    interval: Duration,
    deadline: Instant,
}

/// The sans-IO device user agent.
#[derive(Debug)]
pub struct Ua {
    cfg: UaConfig,
    rng: StdRng,
    backoff: Backoff,
    /// Since when the current registration holds (refreshes included); `None` while the device
    /// is not registered. How long it held decides whether a loss starts the backoff over.
    registered_since: Option<Instant>,
    reg: Registration,
    reg_state: RegState,
    ever_registered: bool,
    stopping: bool,
    txs: HashMap<String, ClientTx>,
    next_keepalive: Option<Instant>,
    missed_keepalives: u32,
    sn: u64,
    msg_cseq: u32,
    dialog: Option<PlayDialog>,
    pending_2xx: Option<Pending2xx>,
    recent: VecDeque<(String, u32, String, Bytes)>,
    out: VecDeque<Transmit>,
    events: VecDeque<UaEvent>,
    /// SIP messages ignored because they came from neither the platform nor `accept_from`.
    foreign: u64,
}

/// RFC 3261 T2: the retransmission interval cap for non-INVITE requests and 2xx.
const T2: Duration = Duration::from_secs(4);

/// How many answered requests are remembered to re-answer retransmissions.
const RECENT: usize = 32;

impl Ua {
    /// A user agent that has not sent anything yet; call [`Ua::start`].
    pub fn new(cfg: UaConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let reg = Registration::new(call_id(&mut rng, cfg.identity.local), token(&mut rng));
        Self {
            backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max),
            registered_since: None,
            rng,
            reg,
            reg_state: RegState::Idle,
            ever_registered: false,
            stopping: false,
            txs: HashMap::new(),
            next_keepalive: None,
            missed_keepalives: 0,
            sn: 0,
            msg_cseq: 0,
            dialog: None,
            pending_2xx: None,
            recent: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            foreign: 0,
            cfg,
        }
    }

    /// Sends the first REGISTER.
    pub fn start(&mut self, now: Instant) {
        if self.reg_state == RegState::Idle {
            self.send_register(now, self.cfg.expires);
        }
    }

    /// Ends the dialog (BYE) and unregisters (`Expires: 0`); [`UaEvent::Unregistered`] follows.
    pub fn stop(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.end_dialog(now);
        self.next_keepalive = None;
        self.txs.retain(|_, tx| tx.kind == TxKind::Bye);
        if self.ever_registered && self.reg_state != RegState::Done {
            self.send_register(now, 0);
            self.reg_state = RegState::Unregistering;
        } else {
            self.reg_state = RegState::Done;
            self.events.push_back(UaEvent::Unregistered);
        }
    }

    /// Ends the dialog `call_id` with a BYE because its media cannot flow (TCP connect refused,
    /// media server closed the connection).
    pub fn hang_up(&mut self, now: Instant, call_id: &str) {
        if self.dialog.as_ref().is_some_and(|d| d.call_id == call_id) {
            self.end_dialog(now);
        }
    }

    /// The TCP connection to the platform broke: the registration is gone with it (the
    /// platform sends its requests over that connection), so register again with backoff.
    pub fn transport_lost(&mut self, now: Instant, reason: &str) {
        if self.stopping {
            if self.reg_state == RegState::Unregistering {
                self.reg_state = RegState::Done;
                self.events.push_back(UaEvent::Unregistered);
            }
            return;
        }
        if matches!(
            self.reg_state,
            RegState::Registering | RegState::Registered { .. }
        ) {
            self.lost(
                now,
                format!("SIP connection to {}: {reason}", self.cfg.identity.server),
            );
        }
    }

    /// The media plan of the dialog answered or running now: the shell takes a media
    /// connection the platform opens only for it, since the platform may dial as soon as it has
    /// our answer, before its ACK.
    pub fn dialog_media(&self) -> Option<&MediaPlan> {
        self.dialog.as_ref().map(|d| &d.media)
    }

    /// True once the user agent has nothing left to do (failed first registration, or stopped
    /// and unregistered).
    pub fn is_done(&self) -> bool {
        self.reg_state == RegState::Done
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next event for the sink.
    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }

    /// When [`Ua::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for tx in self.txs.values() {
            consider(tx.next_retx.min(tx.deadline));
        }
        match self.reg_state {
            RegState::Registered { refresh_at } => consider(refresh_at),
            RegState::RetryAt(t) => consider(t),
            _ => {}
        }
        if let Some(t) = self.next_keepalive {
            consider(t);
        }
        if let Some(p) = &self.pending_2xx {
            consider(p.next.min(p.deadline));
        }
        next
    }

    /// Runs whatever timers are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<String> = self
            .txs
            .iter()
            .filter(|(_, tx)| tx.deadline <= now || tx.next_retx <= now)
            .map(|(b, _)| b.clone())
            .collect();
        for branch in due {
            let Some(tx) = self.txs.get_mut(&branch) else {
                continue;
            };
            if tx.deadline <= now {
                if let Some(tx) = self.txs.remove(&branch) {
                    self.on_tx_timeout(now, tx.kind);
                }
                continue;
            }
            self.out.push_back(Transmit {
                dest: tx.dest,
                data: tx.data.clone(),
            });
            tx.interval = (tx.interval * 2).min(T2);
            tx.next_retx = now + tx.interval;
        }
        if let Some(p) = &mut self.pending_2xx {
            if p.deadline <= now {
                // No ACK: the platform never saw our answer; end the dialog ourselves.
                self.pending_2xx = None;
                self.events.push_back(UaEvent::Refused {
                    reason: "no ACK for our 200 OK to INVITE; sending BYE".into(),
                });
                self.end_dialog(now);
            } else if p.next <= now {
                self.out.push_back(Transmit {
                    dest: p.dest,
                    data: p.data.clone(),
                });
                p.interval = (p.interval * 2).min(T2);
                p.next = now + p.interval;
            }
        }
        match self.reg_state {
            RegState::Registered { refresh_at } if refresh_at <= now => {
                self.send_register(now, self.cfg.expires);
            }
            RegState::RetryAt(t) if t <= now => {
                self.send_register(now, self.cfg.expires);
            }
            _ => {}
        }
        if self.next_keepalive.is_some_and(|t| t <= now) {
            self.send_keepalive(now);
        }
    }

    /// Handles one received datagram from `source`. Malformed input yields at most a
    /// [`UaEvent::Refused`] and, for requests we can still address, a 400.
    pub fn handle_input(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        if !self.is_platform_source(source.ip()) {
            self.foreign += 1;
            // Logged at 1, 2, 4, 8 … so that a host flooding the port cannot flood the log.
            if self.foreign.is_power_of_two() {
                self.events.push_back(UaEvent::Refused {
                    reason: format!(
                        "SIP from {source} ignored: not the platform ({}) nor in \
                         gb28181.accept_from ({} so far)",
                        self.cfg.identity.server.ip(),
                        self.foreign
                    ),
                });
            }
            return;
        }
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return; // CRLF keepalive pings
        }
        match sip::parse(data) {
            Ok(Message::Response(resp)) => self.on_response(now, resp),
            Ok(Message::Request(req)) => self.on_request(now, source, req),
            Err(e) => self.events.push_back(UaEvent::Refused {
                reason: format!("unparseable SIP from {source}: {e}"),
            }),
        }
    }

    /// Whether `ip` may send SIP (and open media connections): the platform's address or one
    /// listed in `accept_from` (an IPv4 source seen on a dual-stack socket as `::ffff:a.b.c.d`
    /// counts as IPv4).
    pub fn is_platform_source(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip == self.cfg.identity.server.ip().to_canonical()
            || self.cfg.accept_from.iter().any(|a| a.to_canonical() == ip)
    }

    fn token(&mut self) -> String {
        token(&mut self.rng)
    }

    fn branch(&mut self) -> String {
        format!("z9hG4bK{}", self.token())
    }

    fn send_request(&mut self, now: Instant, kind: TxKind, dest: SocketAddr, req: &Request) {
        let Some(branch) = sip::top_via_branch(&req.headers).map(str::to_owned) else {
            return;
        };
        let data = req.to_bytes();
        self.out.push_back(Transmit {
            dest,
            data: data.clone(),
        });
        self.txs.insert(
            branch,
            ClientTx {
                kind,
                dest,
                data,
                // Over TCP the transport is reliable: no retransmissions (RFC 3261 §17.1.2.2),
                // only the transaction timeout.
                next_retx: if self.cfg.identity.tcp {
                    now + self.cfg.transaction_timeout
                } else {
                    now + self.cfg.t1
                },
                interval: self.cfg.t1,
                deadline: now + self.cfg.transaction_timeout,
            },
        );
    }

    fn send_register(&mut self, now: Instant, expires: u32) {
        self.txs.retain(|_, tx| tx.kind != TxKind::Register);
        let branch = self.branch();
        let cnonce = self.token();
        let req = self.reg.request(
            &self.cfg.identity,
            &self.cfg.password,
            expires,
            &branch,
            &cnonce,
        );
        if self.reg_state != RegState::Unregistering {
            self.reg_state = RegState::Registering;
        }
        self.send_request(now, TxKind::Register, self.cfg.identity.server, &req);
    }

    fn send_keepalive(&mut self, now: Instant) {
        self.next_keepalive = Some(now + self.cfg.keepalive_interval);
        if self.txs.values().any(|tx| tx.kind == TxKind::Keepalive) {
            // The previous one is still unanswered; its timeout counts the miss.
            return;
        }
        self.sn += 1;
        let body = manscdp::keepalive(self.sn, &self.cfg.identity.device_id);
        self.send_message(now, TxKind::Keepalive, body);
    }

    fn send_message(&mut self, now: Instant, kind: TxKind, body: String) {
        self.msg_cseq += 1;
        let branch = self.branch();
        let tag = self.token();
        let cid = call_id(&mut self.rng, self.cfg.identity.local);
        let id = &self.cfg.identity;
        let mut req = id.request(
            "MESSAGE",
            &branch,
            &tag,
            &id.server_id.clone(),
            &cid,
            self.msg_cseq,
        );
        req.headers.push("Content-Type", "Application/MANSCDP+xml");
        req.body = Bytes::from(body);
        self.send_request(now, kind, self.cfg.identity.server, &req);
    }

    fn registered(&mut self, now: Instant, expires: u32) {
        if self.reg_state == RegState::Unregistering {
            self.reg_state = RegState::Done;
            self.events.push_back(UaEvent::Unregistered);
            return;
        }
        // A refresh, not a new registration: the state is Registered only while this is set.
        let was_registered = self.registered_since.is_some();
        // Refresh at 75 % of the granted time, as rsipstack and most devices do; at least 1 s
        // so a platform granting 0-1 s cannot make us spin.
        let refresh_in =
            Duration::from_millis(u64::from(expires) * 750).max(Duration::from_secs(1));
        self.reg_state = RegState::Registered {
            refresh_at: now + refresh_in,
        };
        if !was_registered {
            self.ever_registered = true;
            // No backoff reset here: a platform that takes the REGISTER and drops the device
            // at once (its keepalive refused, the connection closed) would otherwise be
            // registered with again every `backoff_initial`, for ever; see `lost`.
            self.registered_since = Some(now);
            self.missed_keepalives = 0;
            self.events.push_back(UaEvent::Registered { expires });
            // Keepalive right away: platforms count the device online from it.
            self.send_keepalive(now);
        }
    }

    fn lost(&mut self, now: Instant, reason: String) {
        if self.stopping {
            return;
        }
        if !self.ever_registered {
            self.reg_state = RegState::Done;
            self.txs.clear();
            self.events
                .push_back(UaEvent::RegistrationFailed { reason });
            return;
        }
        self.next_keepalive = None;
        self.txs
            .retain(|_, tx| !matches!(tx.kind, TxKind::Register | TxKind::Keepalive));
        // A platform that lost the device drops its streams (wvp closes them when a device goes
        // offline): media sent on would go nowhere, or to a port handed to someone else. The
        // BYE is best effort; the platform may well be gone.
        self.end_dialog(now);
        if let Some(since) = self.registered_since.take() {
            self.backoff
                .connection_ended(now.saturating_duration_since(since));
        }
        let retry_in = self.backoff.next_delay(&mut self.rng);
        self.reg_state = RegState::RetryAt(now + retry_in);
        // The platform may have forgotten us: a fresh binding, not a refresh.
        self.reg = Registration::new(
            call_id(&mut self.rng, self.cfg.identity.local),
            self.token(),
        );
        self.events.push_back(UaEvent::RegistrationLost {
            attempt: self.backoff.attempt(),
            reason,
            retry_in,
        });
    }

    fn on_tx_timeout(&mut self, now: Instant, kind: TxKind) {
        match kind {
            TxKind::Register => {
                if self.reg_state == RegState::Unregistering {
                    self.reg_state = RegState::Done;
                    self.events.push_back(UaEvent::Unregistered);
                } else {
                    let reason = format!(
                        "REGISTER (Call-ID {}) to {} unanswered for {:?}",
                        self.reg.call_id(),
                        self.cfg.identity.server,
                        self.cfg.transaction_timeout
                    );
                    self.lost(now, reason);
                }
            }
            TxKind::Keepalive => {
                self.missed_keepalives += 1;
                if self.missed_keepalives >= self.cfg.keepalive_max_missed {
                    let reason = format!(
                        "{} keepalives in a row unanswered by {}",
                        self.missed_keepalives, self.cfg.identity.server
                    );
                    self.lost(now, reason);
                }
            }
            TxKind::Answer | TxKind::Bye => {}
        }
    }

    fn on_response(&mut self, now: Instant, resp: Response) {
        let Some(branch) = resp.branch().map(str::to_owned) else {
            return;
        };
        if resp.status < 200 {
            return;
        }
        let Some(tx) = self.txs.remove(&branch) else {
            return; // a retransmitted final response
        };
        match tx.kind {
            TxKind::Register => match self.reg.on_response(&resp) {
                RegisterOutcome::Provisional => {}
                RegisterOutcome::Challenged => {
                    let expires = if self.reg_state == RegState::Unregistering {
                        0
                    } else {
                        self.cfg.expires
                    };
                    self.send_register(now, expires);
                }
                RegisterOutcome::Registered { expires } => self.registered(now, expires),
                RegisterOutcome::Rejected { reason, .. } => {
                    if self.reg_state == RegState::Unregistering {
                        self.reg_state = RegState::Done;
                        self.events.push_back(UaEvent::Unregistered);
                    } else {
                        self.lost(now, reason);
                    }
                }
            },
            TxKind::Keepalive => {
                if resp.status < 300 {
                    self.missed_keepalives = 0;
                } else {
                    // wvp 404 / srs-sip 400: the platform no longer knows us.
                    let reason = format!(
                        "keepalive refused with {} {}: platform lost our registration",
                        resp.status,
                        sip::clip(&resp.reason)
                    );
                    self.lost(now, reason);
                }
            }
            TxKind::Answer | TxKind::Bye => {
                if resp.status >= 300 {
                    self.events.push_back(UaEvent::Refused {
                        reason: format!("platform answered our request with {}", resp.status),
                    });
                }
            }
        }
    }

    fn reply(&mut self, source: SocketAddr, req: &Request, resp: &Response) {
        let data = resp.to_bytes();
        if let (Ok(cid), Ok((cseq, method))) = (req.call_id(), req.cseq()) {
            if self.recent.len() >= RECENT {
                self.recent.pop_front();
            }
            self.recent
                .push_back((cid.to_owned(), cseq, method.to_owned(), data.clone()));
        }
        self.out.push_back(Transmit { dest: source, data });
    }

    fn on_request(&mut self, now: Instant, source: SocketAddr, req: Request) {
        let (Ok(cid), Ok((cseq, method))) = (req.call_id(), req.cseq()) else {
            self.events.push_back(UaEvent::Refused {
                reason: format!(
                    "{} from {source} without Call-ID/CSeq",
                    sip::clip(&req.method)
                ),
            });
            if req.headers.get("Via").is_some() && req.method != "ACK" {
                let resp = req.response(400, "Bad Request", None);
                self.out.push_back(Transmit {
                    dest: source,
                    data: resp.to_bytes(),
                });
            }
            return;
        };
        if req.method != "ACK" {
            if let Some((.., data)) = self
                .recent
                .iter()
                .find(|(c, s, m, _)| c == cid && *s == cseq && m == method)
            {
                // A retransmission: same answer again, no second side effect.
                self.out.push_back(Transmit {
                    dest: source,
                    data: data.clone(),
                });
                return;
            }
        }
        let tag = self.token();
        match req.method.as_str() {
            "MESSAGE" => self.on_message(now, source, &req, &tag),
            "INVITE" => self.on_invite(now, source, &req, &tag),
            "ACK" => {
                let Some(d) = self.dialog.as_mut().filter(|d| d.matches(&req)) else {
                    return;
                };
                if !d.confirmed {
                    d.confirmed = true;
                    self.pending_2xx = None;
                    self.events.push_back(UaEvent::MediaStart(d.media.clone()));
                }
            }
            "BYE" => {
                if self.dialog.as_ref().is_some_and(|d| d.matches(&req)) {
                    self.reply(source, &req, &req.response(200, "OK", None));
                    if let Some(d) = self.dialog.take() {
                        self.pending_2xx = None;
                        self.events
                            .push_back(UaEvent::MediaStop { call_id: d.call_id });
                    }
                } else {
                    let resp = req.response(481, "Call/Transaction Does Not Exist", None);
                    self.reply(source, &req, &resp);
                }
            }
            // We answer INVITEs at once, so a CANCEL always arrives too late to matter.
            "CANCEL" | "OPTIONS" => self.reply(source, &req, &req.response(200, "OK", Some(&tag))),
            _ => {
                let mut resp = req.response(501, "Not Implemented", Some(&tag));
                resp.headers
                    .push("Allow", "INVITE, ACK, BYE, CANCEL, MESSAGE, OPTIONS");
                self.reply(source, &req, &resp);
            }
        }
    }

    fn on_message(&mut self, now: Instant, source: SocketAddr, req: &Request, tag: &str) {
        let query = match manscdp::parse(&req.body) {
            Ok(q) => q,
            Err(e) => {
                self.reply(source, req, &req.response(400, "Bad Request", Some(tag)));
                self.events.push_back(UaEvent::Refused {
                    reason: format!("MESSAGE from {source}: {e}"),
                });
                return;
            }
        };
        self.reply(source, req, &req.response(200, "OK", Some(tag)));
        if self.stopping {
            return;
        }
        let dev = DeviceDescription {
            device_id: self.cfg.identity.device_id.clone(),
            channel_id: self.cfg.channel.clone(),
            name: self.cfg.name.clone(),
            civil_code: self.cfg.identity.domain.clone(),
            heartbeat_interval_s: self.cfg.keepalive_interval.as_secs(),
            expires_s: u64::from(self.cfg.expires),
        };
        match manscdp::response(&query, &dev, &gb_time(SystemTime::now())) {
            Some(body) => self.send_message(now, TxKind::Answer, body),
            None => self.events.push_back(UaEvent::Refused {
                reason: format!(
                    "{} {} not served (answered 200 only)",
                    sip::clip(&query.root),
                    sip::clip(&query.cmd_type)
                ),
            }),
        }
    }

    fn on_invite(&mut self, now: Instant, source: SocketAddr, req: &Request, tag: &str) {
        let in_dialog = req
            .headers
            .get("To")
            .and_then(|t| sip::header_param(t, "tag"))
            .is_some();
        if in_dialog || self.stopping {
            let resp = req.response(488, "Not Acceptable Here", Some(tag));
            self.reply(source, req, &resp);
            return;
        }
        let ssrc_fallback = self.fallback_ssrc();
        let accepted = accept_invite(
            req,
            source,
            &self.cfg.channel,
            &self.cfg.identity,
            self.cfg.media_ip,
            self.cfg.media_port,
            tag,
            &ssrc_fallback,
        )
        .and_then(|(dialog, resp)| {
            // TCP media needs no such check: the device dials from a socket of its own, or the
            // platform dials the answer's address.
            let media = &dialog.media;
            let address = media.remote.ip().to_canonical();
            if media.transport == MediaTransport::Udp
                && address.is_ipv6()
                && self.cfg.media_bind_ip.is_ipv4()
            {
                return Err(InviteError::AddressFamily {
                    call_id: media.call_id.clone(),
                    address,
                    bind_ip: self.cfg.media_bind_ip,
                });
            }
            Ok((dialog, resp))
        });
        match accepted {
            Ok((dialog, resp)) => {
                // One stream per channel: a new INVITE replaces the running one cleanly.
                self.end_dialog(now);
                self.reply(source, req, &resp);
                self.pending_2xx = Some(Pending2xx {
                    data: resp.to_bytes(),
                    dest: source,
                    next: now + self.cfg.t1,
                    interval: self.cfg.t1,
                    deadline: now + self.cfg.transaction_timeout,
                });
                self.dialog = Some(dialog);
            }
            Err(e) => {
                let (status, reason) = e.status();
                self.reply(source, req, &req.response(status, reason, Some(tag)));
                self.events.push_back(UaEvent::Refused {
                    reason: e.to_string(),
                });
            }
        }
    }

    /// `0` (live) + digits 4–8 of the platform ID + 4 random digits, the layout SRS uses.
    fn fallback_ssrc(&mut self) -> String {
        let domain: String = self
            .cfg
            .identity
            .server_id
            .chars()
            .skip(3)
            .take(5)
            .filter(char::is_ascii_digit)
            .collect();
        let domain = format!("{domain:0>5}");
        format!("0{domain}{:04}", self.rng.random_range(0..10_000u32))
    }

    fn end_dialog(&mut self, now: Instant) {
        self.pending_2xx = None;
        let Some(mut d) = self.dialog.take() else {
            return;
        };
        let branch = self.branch();
        let bye = d.bye(&self.cfg.identity, &branch);
        self.send_request(now, TxKind::Bye, d.remote_addr, &bye);
        if d.confirmed {
            self.events
                .push_back(UaEvent::MediaStop { call_id: d.call_id });
        }
    }
}

fn token(rng: &mut StdRng) -> String {
    format!("{:010}", rng.random_range(0..4_000_000_000u64))
}

fn call_id(rng: &mut StdRng, local: SocketAddr) -> String {
    format!("{}@{}", token(rng), local.ip())
}

/// GB-style time without zone (`2026-11-24T12:00:05`), in UTC: the daemon has no time zone
/// database and platforms only display it.
pub fn gb_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "34020000001320000001";
    const CH: &str = "34020000001310000001";

    fn cfg() -> UaConfig {
        UaConfig {
            identity: Identity {
                device_id: DEV.into(),
                server_id: "34020000002000000001".into(),
                domain: "3402000000".into(),
                server: "127.0.0.1:5060".parse().expect("addr"),
                local: "127.0.0.1:5070".parse().expect("addr"),
                user_agent: "dockcast".into(),
                tcp: false,
            },
            password: "12345678".into(),
            channel: CH.into(),
            media_ip: "127.0.0.1".parse().expect("ip"),
            media_port: 15100,
            media_bind_ip: "127.0.0.1".parse().expect("ip"),
            expires: 3600,
            keepalive_interval: Duration::from_secs(60),
            keepalive_max_missed: 3,
            t1: Duration::from_millis(500),
            transaction_timeout: Duration::from_secs(32),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            name: "Dock".into(),
            seed: 1,
            accept_from: Vec::new(),
        }
    }

    fn sent(ua: &mut Ua) -> Vec<Request> {
        let mut v = Vec::new();
        while let Some(t) = ua.poll_transmit() {
            if let Ok(Message::Request(r)) = sip::parse(&t.data) {
                v.push(r);
            }
        }
        v
    }

    fn sent_responses(ua: &mut Ua) -> Vec<Response> {
        let mut v = Vec::new();
        while let Some(t) = ua.poll_transmit() {
            if let Ok(Message::Response(r)) = sip::parse(&t.data) {
                v.push(r);
            }
        }
        v
    }

    fn events(ua: &mut Ua) -> Vec<UaEvent> {
        std::iter::from_fn(|| ua.poll_event()).collect()
    }

    fn answer(ua: &mut Ua, now: Instant, req: &Request, status: u16, extra: &str) {
        let mut text = format!("SIP/2.0 {status} X\r\n");
        for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
            text.push_str(&format!("{h}: {}\r\n", req.headers.get(h).expect("header")));
        }
        text.push_str(extra);
        text.push_str("Content-Length: 0\r\n\r\n");
        ua.handle_input(
            now,
            "127.0.0.1:5060".parse().expect("addr"),
            text.as_bytes(),
        );
    }

    const CHALLENGE: &str =
        "WWW-Authenticate: Digest realm=\"3402000000\",nonce=\"abc\",qop=\"auth\"\r\n";

    fn registered(now: Instant) -> Ua {
        let mut ua = Ua::new(cfg());
        ua.start(now);
        let r1 = sent(&mut ua).remove(0);
        answer(&mut ua, now, &r1, 401, CHALLENGE);
        let r2 = sent(&mut ua).remove(0);
        assert!(r2.headers.get("Authorization").is_some());
        answer(&mut ua, now, &r2, 200, "Expires: 3600\r\n");
        assert_eq!(events(&mut ua), vec![UaEvent::Registered { expires: 3600 }]);
        let ka = sent(&mut ua).remove(0);
        assert!(String::from_utf8_lossy(&ka.body).contains("Keepalive"));
        answer(&mut ua, now, &ka, 200, "");
        ua
    }

    #[test]
    fn a_registration_lost_right_after_it_succeeds_backs_off_further_each_time() {
        // A platform that takes the REGISTER and drops the device at once: each loss must wait
        // longer than the last, not start over at backoff_initial.
        let t0 = Instant::now();
        let mut ua = registered(t0);
        let mut t = t0;
        let mut attempts = Vec::new();
        for _ in 0..4 {
            ua.transport_lost(t, "closed by the platform");
            let (attempt, retry_in) = events(&mut ua)
                .into_iter()
                .find_map(|e| match e {
                    UaEvent::RegistrationLost {
                        attempt, retry_in, ..
                    } => Some((attempt, retry_in)),
                    _ => None,
                })
                .expect("the loss is reported");
            attempts.push(attempt);
            t += retry_in;
            ua.handle_timeout(t);
            let r1 = sent(&mut ua).remove(0);
            answer(&mut ua, t, &r1, 401, CHALLENGE);
            let r2 = sent(&mut ua).remove(0);
            answer(&mut ua, t, &r2, 200, "Expires: 3600\r\n");
            assert!(events(&mut ua).contains(&UaEvent::Registered { expires: 3600 }));
            let _ = sent(&mut ua);
        }
        assert_eq!(attempts, [1, 2, 3, 4]);
        // One that held for the longest delay starts over.
        ua.transport_lost(t + Duration::from_secs(31), "closed by the platform");
        assert!(events(&mut ua)
            .iter()
            .any(|e| matches!(e, UaEvent::RegistrationLost { attempt: 1, .. })));
    }

    #[test]
    fn registers_refreshes_on_the_same_call_id_and_unregisters() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        let refresh_at = ua.poll_timeout().expect("timer");
        assert!(refresh_at <= t0 + Duration::from_secs(60));
        // Keepalive due at 60 s; the refresh at 2700 s.
        ua.handle_timeout(t0 + Duration::from_secs(60));
        let ka = sent(&mut ua).remove(0);
        answer(&mut ua, t0, &ka, 200, "");
        ua.handle_timeout(t0 + Duration::from_secs(2700));
        let reqs = sent(&mut ua);
        let refresh = reqs
            .iter()
            .find(|r| r.method == "REGISTER")
            .expect("refresh");
        assert_eq!(refresh.cseq().expect("cseq").0, 3);
        assert!(events(&mut ua).is_empty());
        answer(&mut ua, t0, refresh, 200, "Expires: 3600\r\n");
        assert!(
            events(&mut ua).is_empty(),
            "a refresh is not a new registration"
        );
        ua.stop(t0);
        let unreg = sent(&mut ua).remove(0);
        assert_eq!(unreg.headers.get("Expires"), Some("0"));
        assert_eq!(unreg.call_id().ok(), refresh.call_id().ok());
        answer(&mut ua, t0, &unreg, 200, "");
        assert_eq!(events(&mut ua), vec![UaEvent::Unregistered]);
        assert!(ua.is_done());
    }

    #[test]
    fn wrong_password_fails_the_first_registration() {
        let now = Instant::now();
        let mut ua = Ua::new(cfg());
        ua.start(now);
        let r1 = sent(&mut ua).remove(0);
        answer(&mut ua, now, &r1, 401, CHALLENGE);
        let r2 = sent(&mut ua).remove(0);
        answer(&mut ua, now, &r2, 401, CHALLENGE);
        match events(&mut ua).as_slice() {
            [UaEvent::RegistrationFailed { reason }] => {
                assert!(reason.contains("wrong agentID or agentPassword"));
                assert!(!reason.contains("12345678"));
            }
            other => panic!("{other:?}"),
        }
        assert!(ua.is_done());
    }

    #[test]
    fn register_timeout_retransmits_then_fails() {
        let t0 = Instant::now();
        let mut ua = Ua::new(cfg());
        ua.start(t0);
        assert_eq!(sent(&mut ua).len(), 1);
        let mut t = t0;
        let mut retransmits = 0;
        for _ in 0..100 {
            let Some(next) = ua.poll_timeout() else { break };
            t = next;
            ua.handle_timeout(t);
            retransmits += sent(&mut ua).len();
            if ua.is_done() {
                break;
            }
        }
        assert!(ua.is_done());
        assert!(t - t0 >= Duration::from_secs(32));
        // 0.5 1 2 4 4 4 4 4 4 4 → about ten retransmissions in 32 s.
        assert!((8..=11).contains(&retransmits), "{retransmits}");
        assert!(matches!(
            events(&mut ua).as_slice(),
            [UaEvent::RegistrationFailed { .. }]
        ));
    }

    #[test]
    fn three_missed_keepalives_re_register_with_a_new_call_id() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.keepalive_interval = Duration::from_secs(10);
        c.transaction_timeout = Duration::from_secs(5);
        let mut ua = Ua::new(c);
        ua.start(t0);
        let r1 = sent(&mut ua).remove(0);
        answer(&mut ua, t0, &r1, 200, "");
        let first_call_id = r1.call_id().expect("cid").to_owned();
        assert!(matches!(
            events(&mut ua).as_slice(),
            [UaEvent::Registered { .. }]
        ));
        let mut t = t0;
        let mut lost = None;
        for _ in 0..200 {
            let Some(next) = ua.poll_timeout() else { break };
            t = next;
            ua.handle_timeout(t);
            let _ = sent(&mut ua);
            if let Some(e) = events(&mut ua).into_iter().next() {
                lost = Some(e);
                break;
            }
        }
        match lost {
            Some(UaEvent::RegistrationLost {
                reason, attempt: 1, ..
            }) => {
                assert!(reason.contains("3 keepalives"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Three keepalives (0 s, 10 s, 20 s), each timing out 5 s later.
        assert_eq!(t - t0, Duration::from_secs(25));
        let retry = ua.poll_timeout().expect("retry timer");
        ua.handle_timeout(retry);
        let again = sent(&mut ua).remove(0);
        assert_eq!(again.method, "REGISTER");
        assert_ne!(again.call_id().expect("cid"), first_call_id);
        answer(&mut ua, retry, &again, 200, "");
        assert!(matches!(
            events(&mut ua).as_slice(),
            [UaEvent::Registered { .. }]
        ));
    }

    fn platform_request(ua: &mut Ua, now: Instant, text: &str) {
        ua.handle_input(
            now,
            "127.0.0.1:5064".parse().expect("addr"),
            text.as_bytes(),
        );
    }

    fn invite_text(call_id: &str, y: &str) -> String {
        invite_to(call_id, y, "IN IP4 127.0.0.1")
    }

    /// An INVITE whose offer has `c=<connection>`.
    fn invite_to(call_id: &str, y: &str, connection: &str) -> String {
        let sdp = format!("v=0\r\no=x 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc={connection}\r\nt=0 0\r\nm=video 30000 RTP/AVP 96\r\ny={y}\r\n");
        format!("INVITE sip:{CH}@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5064;rport;branch=z9hG4bK{call_id}\r\nFrom: <sip:34020000002000000001@3402000000>;tag=p1\r\nTo: <sip:{CH}@3402000000>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:34020000002000000001@127.0.0.1:5064>\r\nSubject: {CH}:{y},34020000002000000001:0\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len())
    }

    fn in_dialog(method: &str, call_id: &str, to_tag: &str, cseq: u32) -> String {
        format!("{method} sip:{CH}@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5064;rport;branch=z9hG4bK{method}{call_id}\r\nFrom: <sip:34020000002000000001@3402000000>;tag=p1\r\nTo: <sip:{CH}@3402000000>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n")
    }

    fn to_tag(resp: &Response) -> String {
        sip::header_param(resp.headers.get("To").expect("to"), "tag")
            .expect("tag")
            .to_owned()
    }

    #[test]
    fn invite_ack_bye_and_replacement() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        platform_request(&mut ua, t0, &invite_text("c1", "0100000001"));
        let ok = sent_responses(&mut ua).remove(0);
        assert_eq!(ok.status, 200);
        assert!(events(&mut ua).is_empty(), "media waits for the ACK");
        // No ACK yet: the 200 is retransmitted.
        ua.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(sent_responses(&mut ua).len(), 1);
        // A retransmitted INVITE gets the same 200, not a second dialog.
        platform_request(&mut ua, t0, &invite_text("c1", "0100000001"));
        assert_eq!(sent_responses(&mut ua), vec![ok.clone()]);
        let tag = to_tag(&ok);
        platform_request(&mut ua, t0, &in_dialog("ACK", "c1", &tag, 1));
        match events(&mut ua).as_slice() {
            [UaEvent::MediaStart(plan)] => {
                assert_eq!(plan.ssrc, 100_000_001);
                assert_eq!(plan.remote, "127.0.0.1:30000".parse().expect("addr"));
            }
            other => panic!("{other:?}"),
        }
        // A second INVITE for the channel: BYE to the first, media restarts with the new SSRC.
        platform_request(&mut ua, t0, &invite_text("c2", "0100000002"));
        let mut bye = None;
        let mut ok2 = None;
        while let Some(t) = ua.poll_transmit() {
            match sip::parse(&t.data).expect("ours parse") {
                Message::Request(r) => bye = Some(r),
                Message::Response(r) => ok2 = Some(r),
            }
        }
        let bye = bye.expect("BYE for the replaced dialog");
        assert_eq!(bye.call_id().expect("cid"), "c1");
        assert_eq!(
            events(&mut ua),
            vec![UaEvent::MediaStop {
                call_id: "c1".into()
            }]
        );
        let tag2 = to_tag(&ok2.expect("200 for the second INVITE"));
        platform_request(&mut ua, t0, &in_dialog("ACK", "c2", &tag2, 1));
        assert!(
            matches!(events(&mut ua).as_slice(), [UaEvent::MediaStart(p)] if p.ssrc == 100_000_002)
        );
        platform_request(&mut ua, t0, &in_dialog("BYE", "c2", &tag2, 2));
        assert_eq!(sent_responses(&mut ua)[0].status, 200);
        assert_eq!(
            events(&mut ua),
            vec![UaEvent::MediaStop {
                call_id: "c2".into()
            }]
        );
        platform_request(&mut ua, t0, &in_dialog("BYE", "c9", "x", 2));
        assert_eq!(sent_responses(&mut ua)[0].status, 481);
    }

    #[test]
    fn catalog_query_gets_200_then_a_response_with_the_sn() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        let body = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Query>\r\n<CmdType>Catalog</CmdType>\r\n<SN>248136</SN>\r\n<DeviceID>{DEV}</DeviceID>\r\n</Query>\r\n");
        let msg = format!("MESSAGE sip:{DEV}@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5064;branch=z9hG4bKq\r\nFrom: <sip:34020000002000000001@3402000000>;tag=q\r\nTo: <sip:{DEV}@3402000000>\r\nCall-ID: q1\r\nCSeq: 12 MESSAGE\r\nContent-Type: Application/MANSCDP+xml\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        platform_request(&mut ua, t0, &msg);
        let mut out = Vec::new();
        while let Some(t) = ua.poll_transmit() {
            out.push((t.dest, sip::parse(&t.data).expect("parses")));
        }
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0], (d, Message::Response(r)) if r.status == 200 && d.port() == 5064)
        );
        let (dest, Message::Request(resp)) = &out[1] else {
            panic!("response MESSAGE expected")
        };
        assert_eq!(
            dest.port(),
            5060,
            "responses go to the platform's SIP address"
        );
        let text = String::from_utf8_lossy(&resp.body);
        assert!(text.contains("<SN>248136</SN>"));
        assert!(text.contains(&format!("<DeviceID>{CH}</DeviceID>")));
        assert_eq!(
            resp.headers.get("Content-Type"),
            Some("Application/MANSCDP+xml")
        );
    }

    #[test]
    fn sip_from_a_host_other_than_the_platform_is_ignored_unless_listed() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        let stranger: SocketAddr = "127.0.0.9:5064".parse().expect("addr");
        let invite = invite_text("c1", "0100000001");
        for _ in 0..5 {
            ua.handle_input(t0, stranger, invite.as_bytes());
            ua.handle_input(t0, stranger, b"garbage");
        }
        assert!(
            ua.poll_transmit().is_none(),
            "nothing is answered to a stranger"
        );
        // Ten ignored messages are logged four times (1, 2, 4, 8), each naming the sender.
        let refused = events(&mut ua);
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(refused.iter().all(
            |e| matches!(e, UaEvent::Refused { reason } if reason.contains("127.0.0.9:5064"))
        ));
        // The platform's own INVITE still opens the dialog: the stranger's left no trace.
        platform_request(&mut ua, t0, &invite);
        assert_eq!(sent_responses(&mut ua)[0].status, 200);

        // A listed address is served like the platform; an IPv4 platform seen through a
        // dual-stack socket is still the platform.
        let mut listed = cfg();
        listed.accept_from = vec!["127.0.0.9".parse().expect("ip")];
        let mut ua = Ua::new(listed);
        ua.handle_input(t0, stranger, invite.as_bytes());
        assert_eq!(sent_responses(&mut ua)[0].status, 200);
        let mut ua = Ua::new(cfg());
        ua.handle_input(
            t0,
            "[::ffff:127.0.0.1]:5064".parse().expect("addr"),
            invite.as_bytes(),
        );
        assert_eq!(sent_responses(&mut ua)[0].status, 200);
    }

    #[test]
    fn an_ipv6_udp_offer_to_an_ipv4_media_socket_is_refused_with_488() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        platform_request(&mut ua, t0, &invite_to("c1", "0100000001", "IN IP6 ::1"));
        assert_eq!(sent_responses(&mut ua)[0].status, 488);
        match events(&mut ua).as_slice() {
            [UaEvent::Refused { reason }] => {
                assert!(reason.contains("IPv6 ::1"), "{reason}");
                assert!(reason.contains("gb28181.bind_ip 127.0.0.1"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(ua.dialog_media().is_none(), "no dialog for a refused offer");
        // An IPv4 address written the IPv6 way is still IPv4.
        let mapped = invite_to("c2", "0100000002", "IN IP6 ::ffff:127.0.0.1");
        platform_request(&mut ua, t0, &mapped);
        assert_eq!(sent_responses(&mut ua)[0].status, 200);
        // And is sent to as IPv4, which the IPv4 media socket can.
        let remote = ua.dialog_media().expect("dialog").remote;
        assert_eq!(remote, "127.0.0.1:30000".parse().expect("addr"), "{remote}");
    }

    #[test]
    fn wrong_channel_invite_is_refused_without_media() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        let text = invite_text("c1", "0100000001").replace(
            &format!("sip:{CH}@127.0.0.1:5070"),
            "sip:34020000001310000099@127.0.0.1:5070",
        );
        platform_request(&mut ua, t0, &text);
        assert_eq!(sent_responses(&mut ua)[0].status, 404);
        assert!(matches!(
            events(&mut ua).as_slice(),
            [UaEvent::Refused { .. }]
        ));
    }

    #[test]
    fn no_ack_ends_the_dialog_with_bye_and_never_starts_media() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        platform_request(&mut ua, t0, &invite_text("c1", "0100000001"));
        assert_eq!(sent_responses(&mut ua)[0].status, 200);
        let mut t = t0;
        let mut bye = None;
        for _ in 0..50 {
            let Some(next) = ua.poll_timeout() else { break };
            if next > t0 + Duration::from_secs(40) {
                break;
            }
            t = next;
            ua.handle_timeout(t);
            if let Some(r) = sent(&mut ua).into_iter().find(|r| r.method == "BYE") {
                bye = Some(r);
                break;
            }
        }
        let bye = bye.expect("BYE after the 2xx went unacknowledged");
        assert_eq!(bye.call_id().expect("cid"), "c1");
        assert!(t - t0 >= Duration::from_secs(32));
        let evs = events(&mut ua);
        assert!(
            evs.iter().all(|e| !matches!(e, UaEvent::MediaStart(_))),
            "{evs:?}"
        );
    }

    #[test]
    fn keepalive_refused_with_404_re_registers_at_once() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        ua.handle_timeout(t0 + Duration::from_secs(60));
        let ka = sent(&mut ua).remove(0);
        answer(&mut ua, t0, &ka, 404, "");
        match events(&mut ua).as_slice() {
            [UaEvent::RegistrationLost { reason, .. }] => {
                assert!(reason.contains("404"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lost_registration_ends_the_dialog_with_bye() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        platform_request(&mut ua, t0, &invite_text("c1", "0100000001"));
        let tag = to_tag(&sent_responses(&mut ua).remove(0));
        platform_request(&mut ua, t0, &in_dialog("ACK", "c1", &tag, 1));
        assert!(matches!(
            events(&mut ua).as_slice(),
            [UaEvent::MediaStart(_)]
        ));
        ua.handle_timeout(t0 + Duration::from_secs(60));
        let ka = sent(&mut ua).remove(0);
        answer(&mut ua, t0, &ka, 404, "");
        let bye = sent(&mut ua).into_iter().find(|r| r.method == "BYE");
        assert_eq!(bye.expect("BYE").call_id().expect("cid"), "c1");
        match events(&mut ua).as_slice() {
            [UaEvent::MediaStop { call_id }, UaEvent::RegistrationLost { .. }] => {
                assert_eq!(call_id, "c1")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_and_unknown_methods_are_answered() {
        let t0 = Instant::now();
        let mut ua = registered(t0);
        platform_request(
            &mut ua,
            t0,
            &in_dialog("OPTIONS", "o1", "x", 1).replace(";tag=x", ""),
        );
        assert_eq!(sent_responses(&mut ua)[0].status, 200);
        platform_request(
            &mut ua,
            t0,
            &in_dialog("SUBSCRIBE", "s1", "x", 1).replace(";tag=x", ""),
        );
        assert_eq!(sent_responses(&mut ua)[0].status, 501);
        assert!(
            !format!("{:?}", ua).contains("12345678"),
            "password in Debug output"
        );
    }

    #[test]
    fn gb_time_formats_utc() {
        assert_eq!(gb_time(UNIX_EPOCH), "1970-01-01T00:00:00");
        assert_eq!(
            gb_time(UNIX_EPOCH + Duration::from_secs(1_795_003_205)),
            "2026-11-18T12:00:05"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic_the_ua(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut ua = registered(Instant::now());
            ua.handle_input(Instant::now(), "127.0.0.1:9".parse().expect("addr"), &data);
        }
    }
}
