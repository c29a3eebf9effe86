//! WHIP sink: publishes one session's frames over WebRTC (RFC 9725) and keeps doing so across
//! server restarts and lost connections.
//!
//! Layout: [`http`] (signalling decisions) and [`rtc`] (offer/answer, payload-type choice) are
//! pure; [`client`] is the HTTP shell; [`run`] is the sink task that owns one str0m `Rtc` and
//! its UDP socket per session and applies the reconnect policy.
//!
//! ICE: a host candidate on the address that routes to the server, plus a server-reflexive
//! one when a STUN server is known: from the options (config), or from the `Link` headers of
//! the previous session's 201 (a non-trickle offer is sent before the answer names any).
//!
//! Gaps, on purpose for now: no TURN client (TURN servers from `Link` headers are recorded and
//! logged, not used), no trickle/ICE-restart PATCH (a new session is made instead).

pub mod client;
pub mod http;
pub mod rtc;
pub mod stun;

pub use client::HttpClient;
pub use http::{Phase, WhipError};

use crate::backoff::Backoff;
use crate::cloud::{redact_url_str, WhipUrl};
use crate::media::frame::{Codec, EncodedFrame};
use crate::sink::{KeyframeRequests, SinkEvent};
use http::IceServerKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtc::{H264Pt, RtcSettings, StreamProfile};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use str0m::bwe::BweKind;
use str0m::media::Mid;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Where to publish: the endpoint url (query kept verbatim) and the bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct WhipTarget {
    endpoint: Url,
    token: Option<String>,
    label: String,
}

impl WhipTarget {
    /// Builds a target from the cloud's url. The token from config wins over a `token` query
    /// parameter in the url (the url keeps that parameter either way: some servers read it).
    pub fn new(url: &WhipUrl, config_token: Option<&str>) -> Result<Self, WhipError> {
        let endpoint = Url::parse(&url.url).map_err(|e| WhipError::Local {
            phase: Phase::Offer,
            why: format!("endpoint is not a url: {e}"),
        })?;
        let token = config_token
            .map(str::to_owned)
            .or_else(|| url.token.clone())
            .filter(|t| !t.is_empty());
        Ok(WhipTarget {
            endpoint,
            token,
            label: url.redacted(),
        })
    }

    /// The endpoint with secrets masked, for logs.
    pub fn redacted(&self) -> &str {
        &self.label
    }

    /// True when requests will carry `Authorization: Bearer`.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

impl fmt::Debug for WhipTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhipTarget")
            .field("endpoint", &self.label)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Drops a share of the outgoing RTP datagrams, to test loss repair without a lossy network
/// (the kernels we test on have no netem). Never set in production.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossInjection {
    /// Share of RTP datagrams dropped, 0.0..=1.0.
    pub ratio: f64,
    /// Seed, so a run can be repeated.
    pub seed: u64,
}

/// Tunables of a WHIP sink; `Default` suits a dock on a mobile uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct WhipOptions {
    /// Limit for each HTTP request (POST, DELETE).
    pub http_timeout: Duration,
    /// Limit from the answer to an established ICE+DTLS connection.
    pub connect_timeout: Duration,
    /// Limit for the DELETE of a session: on stop, and best-effort for a dead session before
    /// reconnecting.
    pub delete_timeout: Duration,
    /// First reconnect backoff ceiling.
    pub backoff_initial: Duration,
    /// Largest reconnect backoff ceiling.
    pub backoff_max: Duration,
    /// Bandwidth estimate to start from (bit/s).
    pub initial_bitrate_bps: u64,
    /// Bitrate the estimator probes towards (bit/s); the top of the quality ladder.
    pub desired_bitrate_bps: u64,
    /// Longest wait between STUN consent retransmissions; with `ice_max_retransmits` it sets
    /// how fast a dead server is noticed (about 6 s with the defaults).
    pub ice_max_rto: Duration,
    /// STUN retransmissions before the pair is declared dead.
    pub ice_max_retransmits: usize,
    /// A connected session from which nothing at all (consent answers, RTCP) arrived for this
    /// long is treated as dead. str0m's consent checks get there too, but only after their
    /// whole retransmission schedule (~14 s); a live receiver answers every second.
    pub silence_timeout: Duration,
    /// Local address to bind; `None` picks the address that routes to the server.
    pub bind_ip: Option<IpAddr>,
    /// STUN servers (`stun:host[:port]` or `host[:port]`) asked for a server-reflexive
    /// candidate, in order, before `Link` ones the server sent; the first that answers counts.
    pub stun_servers: Vec<String>,
    /// Limit for each STUN server's answer.
    pub stun_timeout: Duration,
    /// Test-only: drop a share of outgoing RTP datagrams.
    pub loss: Option<LossInjection>,
}

impl Default for WhipOptions {
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            delete_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            initial_bitrate_bps: 1_000_000,
            desired_bitrate_bps: 4_000_000,
            ice_max_rto: Duration::from_secs(1),
            ice_max_retransmits: 7,
            silence_timeout: Duration::from_secs(5),
            bind_ip: None,
            stun_servers: Vec::new(),
            stun_timeout: Duration::from_millis(500),
            loss: None,
        }
    }
}

/// How long between two [`SinkEvent::Bandwidth`] reports at most.
const BANDWIDTH_INTERVAL: Duration = Duration::from_secs(1);

/// Shortest time between two keyframe requests forwarded because the receiver asked (PLI/FIR).
///
/// Each forwarded request makes the encoder send an IDR, several times the size of a P-frame.
/// On a lossy mobile uplink a server relaying every viewer's PLI would otherwise close a loop:
/// IDRs congest the link, congestion loses packets, loss brings more PLIs, more IDRs. One IDR
/// answers every request sent before it arrived, so more than one per round trip or so buys
/// nothing; 500 ms also bounds how long a viewer who lost a frame waits for the next IDR.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Largest UDP datagram read; WebRTC keeps datagrams under the path MTU.
const RECV_BUF: usize = 2048;

/// How a connected period ended.
enum Ended {
    /// Stop requested (cancel, or the producer went away).
    Stopped,
    /// The session failed; `published` tells whether media had flowed, `fatal` that a new
    /// session would fail the same way (the server cannot take the stream as encoded).
    Lost {
        error: WhipError,
        published: bool,
        fatal: bool,
    },
}

/// A session the server accepted: ours to stream on and to DELETE.
struct Session {
    rtc: Rtc,
    mid: Mid,
    socket: UdpSocket,
    local: SocketAddr,
    session_url: Url,
    /// The bearer token for requests to `session_url`; none when that url would carry it in
    /// clear (see [`http::Created::session_token`]).
    session_token: Option<String>,
    /// STUN servers the 201 named, for the next session's reflexive candidate.
    link_stun: Vec<(String, u16)>,
}

/// Runs the WHIP sink until `cancel` fires or the frame sender is dropped.
///
/// Each attempt binds a UDP socket on the address that routes to the server, POSTs a
/// non-trickle offer and streams once ICE+DTLS are up. The first attempt failing ends the sink
/// with [`SinkEvent::Failed`]. After one successful publish every failure (consent lost, server
/// gone, DTLS closed, no connection within `connect_timeout`) DELETEs the old session
/// best-effort and starts a fresh one with jittered backoff, reported as
/// [`SinkEvent::Reconnecting`]; except when the answer has no H.264 payload type matching the
/// stream's profile, which no new session would change ([`SinkEvent::Failed`]). On connect
/// the sink reports [`SinkEvent::KeyframeWanted`] and [`SinkEvent::Publishing`] and drops
/// frames until a keyframe; PLI/FIR from the receiver become [`SinkEvent::KeyframeWanted`] at
/// most once per [`KEYFRAME_REQUEST_INTERVAL`] (see there why), and the transport-wide
/// bandwidth estimate becomes [`SinkEvent::Bandwidth`] at most once a second. On stop the
/// session is DELETEd with the token (none when an https endpoint named a plain-http session
/// url) and [`SinkEvent::Stopped`] is sent. Frames arriving while not connected are discarded
/// so the producer never blocks.
pub async fn run(
    target: WhipTarget,
    opts: WhipOptions,
    mut frames: mpsc::Receiver<EncodedFrame>,
    events: mpsc::Sender<SinkEvent>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut rng = StdRng::from_os_rng();
    let mut published_once = false;
    let mut loss = opts.loss.map(LossState::new);

    let client = match HttpClient::new(opts.http_timeout) {
        Ok(c) => c,
        Err(e) => {
            let _ = events
                .send(SinkEvent::Failed {
                    reason: e.to_string(),
                })
                .await;
            return;
        }
    };

    // WHIP here carries H.264 only: look at the first frame before offering a session, so that
    // an H.265 source is refused at the start (and no session is set up on the server), not
    // once ICE has connected. A frame that comes later is still checked as it is written.
    let refusal = |codec: Codec| {
        WhipError::UnsupportedCodec {
            codec: codec.name(),
        }
        .to_string()
    };
    let label = target.redacted();
    if !super::first_frame_carried(&mut frames, &cancel, &events, Codec::H264, refusal, label).await
    {
        return;
    }

    let mut link_stun: Vec<(String, u16)> = Vec::new();
    loop {
        // A task of its own, so that a stop during the offer does not drop its POST half-way:
        // the server may already have made the session, and only the 201 says where to DELETE
        // it. Such an attempt is left to finish, and undo, in the background.
        let mut attempt = tokio::spawn({
            let (client, target, opts, stun) = (
                client.clone(),
                target.clone(),
                opts.clone(),
                link_stun.clone(),
            );
            async move { establish(&client, &target, &opts, &stun).await }
        });
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            r = super::discard_while(&mut frames, &mut attempt) => r,
        };
        let Some(result) = result else {
            tokio::spawn(undo_attempt(attempt, client.clone(), opts.delete_timeout));
            let _ = events.send(SinkEvent::Stopped).await;
            return;
        };
        let result = result.unwrap_or_else(|e| {
            Err(WhipError::Local {
                phase: Phase::Offer,
                why: format!("session set-up task: {e}"),
            })
        });
        let (error, published, fatal) = match result {
            Ok(mut session) => {
                link_stun = std::mem::take(&mut session.link_stun);
                tracing::info!(target = %target.redacted(), session = %redact_url_str(session.session_url.as_str()), local = %session.local, "whip: session created");
                let started = Instant::now();
                let ended = stream(
                    &mut session,
                    &opts,
                    loss.as_mut(),
                    &mut frames,
                    &events,
                    &cancel,
                )
                .await;
                match ended {
                    Ended::Stopped => {
                        // Bounded inside the session's stop grace, so the DELETE is not cut
                        // off half-way and the server does not keep the session.
                        session.delete(&client, opts.delete_timeout).await;
                        let _ = events.send(SinkEvent::Stopped).await;
                        return;
                    }
                    Ended::Lost {
                        error,
                        published,
                        fatal,
                    } => {
                        // Tell the server the session is over, in case it still thinks it
                        // is not; bounded, since the server may be the thing that died.
                        // Not raced against a stop: the DELETE is bounded by delete_timeout,
                        // which the session's stop grace allows for, and cut short it would
                        // leave the server holding a publisher nobody owns.
                        super::discard_while(
                            &mut frames,
                            session.delete(&client, opts.delete_timeout),
                        )
                        .await;
                        if published {
                            backoff.connection_ended(started.elapsed());
                        }
                        (error, published, fatal)
                    }
                }
            }
            Err(e) => (e, false, false),
        };
        published_once |= published;
        let reason = error.to_string();
        if !published_once || fatal {
            tracing::warn!(target = %target.redacted(), %reason, "whip publish failed");
            let event = match error {
                // A lens switched to H.265 mid-session.
                WhipError::UnsupportedCodec { .. } => SinkEvent::Refused { reason },
                _ => SinkEvent::Failed { reason },
            };
            let _ = events.send(event).await;
            return;
        }
        if cancel.is_cancelled() {
            let _ = events.send(SinkEvent::Stopped).await;
            return;
        }
        let retry_in = backoff.next_delay(&mut rng);
        tracing::warn!(target = %target.redacted(), %reason, ?retry_in, "whip session lost");
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

/// DELETEs the session at `url`, giving up after `limit` (the server may be what failed), and
/// logs how it went.
async fn delete_within(client: &HttpClient, url: &Url, token: Option<&str>, limit: Duration) {
    let result = tokio::time::timeout(limit, client.delete_session(url, token)).await;
    let url = redact_url_str(url.as_str());
    match result {
        Ok(Ok(())) => tracing::info!(session = %url, "whip: session deleted"),
        Ok(Err(e)) => tracing::info!(session = %url, error = %e, "whip: DELETE failed"),
        Err(_) => tracing::info!(session = %url, "whip: DELETE timed out"),
    }
}

impl Session {
    /// Ends the session on the server: [`delete_within`] with its url and token.
    async fn delete(&self, client: &HttpClient, limit: Duration) {
        delete_within(
            client,
            &self.session_url,
            self.session_token.as_deref(),
            limit,
        )
        .await;
    }
}

/// The local address whose route leads to `server`: connecting a UDP socket sends nothing but
/// makes the kernel pick the source address it would use.
fn local_ip_towards(server: SocketAddr) -> Result<IpAddr, WhipError> {
    let unspecified: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(unspecified)
        .and_then(|s| s.connect(server).map(|()| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| WhipError::Local {
            phase: Phase::Offer,
            why: format!("no route to {server}: {e}"),
        })?;
    Ok(probe.ip())
}

/// Binds the socket, makes the offer, POSTs it and applies the answer.
async fn establish(
    client: &HttpClient,
    target: &WhipTarget,
    opts: &WhipOptions,
    link_stun: &[(String, u16)],
) -> Result<Session, WhipError> {
    let local_err = |why: String| WhipError::Local {
        phase: Phase::Offer,
        why,
    };
    let ip = match opts.bind_ip {
        Some(ip) => ip,
        None => {
            let host = target
                .endpoint
                .host_str()
                .ok_or_else(|| local_err("endpoint has no host".into()))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = target.endpoint.port_or_known_default().unwrap_or(443);
            let server = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| local_err(format!("cannot resolve {host}: {e}")))?
                .next()
                .ok_or_else(|| local_err(format!("{host} resolves to nothing")))?;
            local_ip_towards(server)?
        }
    };
    let socket = UdpSocket::bind((ip, 0))
        .await
        .map_err(|e| local_err(format!("bind udp on {ip}: {e}")))?;
    let local = socket
        .local_addr()
        .map_err(|e| local_err(format!("udp local address: {e}")))?;
    let settings = RtcSettings {
        initial_bitrate_bps: opts.initial_bitrate_bps,
        desired_bitrate_bps: opts.desired_bitrate_bps,
        ice_max_rto: opts.ice_max_rto,
        ice_max_retransmits: opts.ice_max_retransmits,
    };
    let reflexive = reflexive_candidate(&socket, local, opts, link_stun).await;
    let mut offered = rtc::make_offer(local, reflexive, &settings, std::time::Instant::now())?;
    let created = client
        .create_session(
            target.endpoint.clone(),
            target.token.clone(),
            &offered.offer_sdp,
        )
        .await?;
    let mut next_stun = Vec::new();
    for s in &created.ice_servers {
        match s.kind {
            IceServerKind::Stun => {
                tracing::debug!(uri = %s.uri, "whip: server offers a STUN server (used from the next session on)");
                next_stun.extend(s.stun_host_port());
            }
            IceServerKind::Turn | IceServerKind::Turns => {
                tracing::info!(uri = %s.uri, "whip: server offers a TURN server; TURN is not supported, relying on direct connectivity")
            }
        }
    }
    let session_token = created
        .session_token(target.token.as_deref())
        .map(str::to_owned);
    if created.token_withheld && target.has_token() {
        tracing::warn!(
            target = %target.redacted(),
            session = %redact_url_str(created.session_url.as_str()),
            "whip: the https endpoint named a plain-http session url; its DELETE goes without the bearer token"
        );
    }
    if let Err(e) = rtc::accept_answer(&mut offered.rtc, offered.pending, &created.answer_sdp) {
        delete_within(
            client,
            &created.session_url,
            session_token.as_deref(),
            opts.delete_timeout,
        )
        .await;
        return Err(e);
    }
    Ok(Session {
        rtc: offered.rtc,
        mid: offered.mid,
        socket,
        local,
        session_url: created.session_url,
        session_token,
        link_stun: next_stun,
    })
}

/// Waits for a session set-up that a stop overtook and, if it made a session on the server,
/// DELETEs it, so that the stream is not left with a publisher nobody owns until the server's
/// own timeout (servers that take one publisher per stream refuse the next start meanwhile).
async fn undo_attempt(
    attempt: tokio::task::JoinHandle<Result<Session, WhipError>>,
    client: HttpClient,
    delete_timeout: Duration,
) {
    if let Ok(Ok(session)) = attempt.await {
        session.delete(&client, delete_timeout).await;
    }
}

/// Asks the configured, then the server-named STUN servers for our reflexive address; the
/// first answer wins. Servers of the other IP family than `local` are skipped.
async fn reflexive_candidate(
    socket: &UdpSocket,
    local: SocketAddr,
    opts: &WhipOptions,
    link_stun: &[(String, u16)],
) -> Option<SocketAddr> {
    let configured = opts.stun_servers.iter().filter_map(|s| {
        let uri = if s.starts_with("stun:") {
            s.clone()
        } else {
            format!("stun:{s}")
        };
        let parsed = http::IceServer {
            uri,
            kind: IceServerKind::Stun,
            username: None,
            credential: None,
        }
        .stun_host_port();
        if parsed.is_none() {
            tracing::warn!(server = %s, "whip: unusable STUN server in config");
        }
        parsed
    });
    for (host, port) in configured.chain(link_stun.iter().cloned()) {
        let Ok(mut addrs) = tokio::net::lookup_host((host.as_str(), port)).await else {
            tracing::debug!(%host, "whip: STUN server does not resolve");
            continue;
        };
        let Some(server) = addrs.find(|a| a.is_ipv4() == local.is_ipv4()) else {
            continue;
        };
        match stun::reflexive_address(socket, server, opts.stun_timeout).await {
            Some(addr) => {
                tracing::debug!(%server, %addr, "whip: reflexive address");
                return Some(addr);
            }
            None => tracing::debug!(%server, "whip: STUN server did not answer"),
        }
    }
    None
}

/// Seeded dropper for [`LossInjection`], with counters for the log.
struct LossState {
    ratio: f64,
    rng: StdRng,
    seen: u64,
    dropped: u64,
}

impl LossState {
    fn new(cfg: LossInjection) -> Self {
        LossState {
            ratio: cfg.ratio.clamp(0.0, 1.0),
            rng: StdRng::seed_from_u64(cfg.seed),
            seen: 0,
            dropped: 0,
        }
    }

    /// True to drop this datagram: only RTP (RFC 7983 demultiplexing: first byte 128..=191,
    /// and not an RTCP packet type), so ICE/DTLS and feedback still get through.
    fn drop(&mut self, datagram: &[u8]) -> bool {
        let is_rtp = match datagram {
            [b0, b1, ..] => (128..=191).contains(b0) && !(192..=223).contains(b1),
            _ => false,
        };
        if !is_rtp {
            return false;
        }
        self.seen += 1;
        let drop = self.rng.random_bool(self.ratio);
        if drop {
            self.dropped += 1;
        }
        drop
    }
}

/// Holds back bandwidth estimates so that at most one per [`BANDWIDTH_INTERVAL`] is reported;
/// the newest one wins, none is reported twice.
#[derive(Debug, Default)]
struct BandwidthReports {
    last: Option<std::time::Instant>,
    pending: Option<u64>,
}

impl BandwidthReports {
    fn estimate(&mut self, bps: u64) {
        self.pending = Some(bps);
    }

    fn poll(&mut self, now: std::time::Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= BANDWIDTH_INTERVAL);
        if !due {
            return None;
        }
        let bps = self.pending.take()?;
        self.last = Some(now);
        Some(bps)
    }
}

/// Per-session streaming state.
#[derive(Debug)]
struct StreamState {
    connected: bool,
    waiting_for_keyframe: bool,
    profile: Option<StreamProfile>,
    pt: Option<H264Pt>,
    bandwidth: BandwidthReports,
    /// The receiver's PLI/FIR, at most one per [`KEYFRAME_REQUEST_INTERVAL`].
    keyframes: KeyframeRequests,
}

impl Default for StreamState {
    fn default() -> Self {
        StreamState {
            connected: false,
            waiting_for_keyframe: false,
            profile: None,
            pt: None,
            bandwidth: BandwidthReports::default(),
            keyframes: KeyframeRequests::new(KEYFRAME_REQUEST_INTERVAL),
        }
    }
}

/// One session: ICE/DTLS, then frames out until stop or failure.
async fn stream(
    s: &mut Session,
    opts: &WhipOptions,
    mut loss: Option<&mut LossState>,
    frames: &mut mpsc::Receiver<EncodedFrame>,
    events: &mpsc::Sender<SinkEvent>,
    cancel: &CancellationToken,
) -> Ended {
    let mut buf = vec![0u8; RECV_BUF];
    let connect_deadline = Instant::now() + opts.connect_timeout;
    let mut last_heard = Instant::now();
    let mut st = StreamState {
        waiting_for_keyframe: true,
        ..StreamState::default()
    };
    let lost = |error: WhipError, st: &StreamState| Ended::Lost {
        error,
        published: st.connected,
        fatal: false,
    };
    loop {
        // Drain everything str0m has to say before waiting (its single-mutation contract).
        let mut to_send = Vec::new();
        let deadline = loop {
            match s.rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    if loss.as_mut().is_some_and(|l| l.drop(&t.contents)) {
                        continue;
                    }
                    if let Err(e) = s.socket.try_send_to(&t.contents, t.destination) {
                        // UDP: a full buffer or a transient route error loses one datagram,
                        // which RTX/ICE retransmission cover.
                        tracing::debug!(error = %e, "whip: udp send failed");
                    }
                }
                Ok(Output::Event(e)) => {
                    if let Err(error) =
                        on_event(e, std::time::Instant::now(), &mut st, &mut to_send)
                    {
                        return lost(error, &st);
                    }
                }
                Err(e) => {
                    let phase = if st.connected {
                        Phase::Stream
                    } else {
                        Phase::Connect
                    };
                    return lost(
                        WhipError::Disconnected {
                            phase,
                            why: e.to_string(),
                        },
                        &st,
                    );
                }
            }
        };
        let now = std::time::Instant::now();
        if let Some(bps) = st.bandwidth.poll(now) {
            to_send.push(SinkEvent::Bandwidth { bps });
        }
        if st.keyframes.poll(now) {
            to_send.push(SinkEvent::KeyframeWanted);
        }
        for ev in to_send {
            match ev {
                // Lossy hints: never let a slow consumer stall the media loop on them.
                SinkEvent::KeyframeWanted | SinkEvent::Bandwidth { .. } => {
                    let _ = events.try_send(ev);
                }
                other => {
                    let _ = events.send(other).await;
                }
            }
        }
        // str0m may ask to be woken "now" again and again while it paces; a 1 ms floor keeps
        // that from becoming a busy loop and costs at most 1 ms of pacing precision.
        let wake = Instant::from_std(deadline).max(Instant::now() + Duration::from_millis(1));
        let keyframe_due = st.keyframes.deadline().map(Instant::from_std);
        let input_time = std::time::Instant::now();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                s.rtc.disconnect();
                return Ended::Stopped;
            }
            _ = tokio::time::sleep_until(connect_deadline), if !st.connected => {
                return lost(WhipError::ConnectTimeout { after: opts.connect_timeout }, &st);
            }
            _ = tokio::time::sleep_until(last_heard + opts.silence_timeout), if st.connected => {
                return lost(WhipError::Disconnected {
                    phase: Phase::Stream,
                    why: format!("nothing received from the server for {:?}", opts.silence_timeout),
                }, &st);
            }
            r = s.socket.recv_from(&mut buf) => {
                let (n, source) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Linux reports ICMP errors of earlier sends here; they say nothing
                        // the ICE consent checks will not say more reliably.
                        tracing::debug!(error = %e, "whip: udp receive error");
                        continue;
                    }
                };
                last_heard = Instant::now();
                let Ok(receive) = Receive::new(Protocol::Udp, source, s.local, &buf[..n]) else {
                    continue; // not STUN/DTLS/RTP: stray datagram
                };
                let input = Input::Receive(std::time::Instant::now(), receive);
                if !s.rtc.accepts(&input) {
                    continue;
                }
                if let Err(e) = s.rtc.handle_input(input) {
                    tracing::debug!(error = %e, "whip: datagram refused");
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if let Err(e) = s.rtc.handle_input(Input::Timeout(std::time::Instant::now().max(input_time))) {
                    return lost(WhipError::Disconnected { phase: Phase::Stream, why: e.to_string() }, &st);
                }
            }
            // A held keyframe request is due; the loop's top forwards it.
            _ = super::sleep_until_opt(keyframe_due) => {}
            frame = frames.recv() => {
                let Some(frame) = frame else {
                    s.rtc.disconnect();
                    return Ended::Stopped;
                };
                if let Err(error) = write_frame(s, &mut st, &frame) {
                    return Ended::Lost { error, published: st.connected, fatal: true };
                }
            }
        }
    }
}

/// Turns a str0m event, seen at `now`, into state changes and events for the session.
fn on_event(
    e: Event,
    now: std::time::Instant,
    st: &mut StreamState,
    out: &mut Vec<SinkEvent>,
) -> Result<(), WhipError> {
    let phase = if st.connected {
        Phase::Stream
    } else {
        Phase::Connect
    };
    match e {
        Event::Connected => {
            st.connected = true;
            st.waiting_for_keyframe = true;
            st.keyframes.own(now);
            out.push(SinkEvent::KeyframeWanted);
            out.push(SinkEvent::Publishing);
        }
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            return Err(WhipError::Disconnected {
                phase,
                why: "ICE consent lost".into(),
            });
        }
        Event::Closed => {
            return Err(WhipError::Disconnected {
                phase,
                why: "peer closed the DTLS connection".into(),
            });
        }
        Event::KeyframeRequest(r) => {
            let forwarded = st.keyframes.asked(now);
            tracing::debug!(kind = ?r.kind, forwarded, "whip: keyframe requested by the receiver");
            if forwarded {
                out.push(SinkEvent::KeyframeWanted);
            }
        }
        Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
            st.bandwidth.estimate(estimate.as_u64());
        }
        // REMB is deliberately not reported: it is the receiver's guess (aiortc's starts near
        // 100 kbit/s for an 800 kbit/s stream) and would drag adaptive quality down.
        Event::MediaEgressStats(stats) => {
            tracing::trace!(?stats, "whip: egress stats");
        }
        _ => {}
    }
    Ok(())
}

/// Writes one access unit on the payload type that matches its SPS. An error means the
/// negotiated session cannot carry this stream at all (no payload type fits its profile).
fn write_frame(
    s: &mut Session,
    st: &mut StreamState,
    frame: &EncodedFrame,
) -> Result<(), WhipError> {
    if frame.codec != Codec::H264 {
        return Err(WhipError::UnsupportedCodec {
            codec: frame.codec.name(),
        });
    }
    if !st.connected {
        return Ok(());
    }
    if st.waiting_for_keyframe && !frame.keyframe {
        return Ok(());
    }
    if frame.keyframe {
        if let Some(profile) = StreamProfile::of_access_unit(&frame.data) {
            if st.profile != Some(profile) {
                let negotiated = rtc::negotiated_h264(&mut s.rtc, s.mid);
                let Some(chosen) = rtc::choose_pt(&negotiated, &profile) else {
                    return Err(WhipError::BadAnswer {
                        why: format!(
                            "no negotiated H.264 payload type fits the stream's profile-level-id {:06x} (answer offers {})",
                            profile.profile_level_id,
                            negotiated
                                .iter()
                                .map(|p| format!("{}:{:06x}", p.pt, p.profile_level_id.unwrap_or(0)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                };
                tracing::info!(
                    pt = chosen.pt,
                    stream = format!("{:06x}", profile.profile_level_id),
                    negotiated = format!("{:06x}", chosen.profile_level_id.unwrap_or(0)),
                    "whip: payload type chosen"
                );
                st.profile = Some(profile);
                st.pt = Some(chosen);
            }
        }
    }
    let Some(chosen) = st.pt else {
        // A keyframe without parameter sets before any with them: nothing a decoder can use.
        st.waiting_for_keyframe = true;
        return Ok(());
    };
    let Some(writer) = s.rtc.writer(s.mid) else {
        return Err(WhipError::Local {
            phase: Phase::Stream,
            why: "video m-line vanished".into(),
        });
    };
    let data: Arc<[u8]> = Arc::from(&frame.data[..]);
    match writer.write(
        rtc::pt(chosen.pt),
        std::time::Instant::now(),
        rtc::media_time(frame.pts),
        data,
    ) {
        Ok(()) => st.waiting_for_keyframe = false,
        Err(e) => {
            tracing::warn!(error = %e, "whip: frame refused by the packetizer");
            st.waiting_for_keyframe = true;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{StreamUrl, UrlType};

    fn whip_url(s: &str) -> WhipUrl {
        match StreamUrl::parse(UrlType::Whip, s).unwrap() {
            StreamUrl::Whip(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn target_takes_the_config_token_else_the_query_token() {
        let u = whip_url("http://h:1985/rtc/v1/whip/?app=live&stream=s&token=qtok");
        let t = WhipTarget::new(&u, None).unwrap();
        assert_eq!(t.token.as_deref(), Some("qtok"));
        assert_eq!(
            t.endpoint.as_str(),
            "http://h:1985/rtc/v1/whip/?app=live&stream=s&token=qtok"
        );
        let t = WhipTarget::new(&u, Some("ctok")).unwrap();
        assert_eq!(t.token.as_deref(), Some("ctok"));
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("qtok") && !dbg.contains("ctok"), "{dbg}");
        let t = WhipTarget::new(&whip_url("https://h/whip/cam"), None).unwrap();
        assert!(!t.has_token());
    }

    #[test]
    fn loss_drops_only_rtp() {
        let mut l = LossState::new(LossInjection {
            ratio: 1.0,
            seed: 1,
        });
        assert!(l.drop(&[0x80, 0x60, 0, 0]));
        assert!(!l.drop(&[0x80, 200, 0, 0]), "RTCP SR kept");
        assert!(!l.drop(&[0x00, 0x01]), "STUN kept");
        assert!(!l.drop(&[22, 254]), "DTLS kept");
        let mut l = LossState::new(LossInjection {
            ratio: 0.05,
            seed: 7,
        });
        for _ in 0..10_000 {
            l.drop(&[0x80, 0x60]);
        }
        assert!((400..600).contains(&l.dropped), "{}", l.dropped);
    }

    #[test]
    fn bandwidth_reports_at_most_once_a_second_newest_wins() {
        let t0 = std::time::Instant::now();
        let mut b = BandwidthReports::default();
        assert_eq!(b.poll(t0), None);
        b.estimate(1);
        assert_eq!(b.poll(t0), Some(1));
        b.estimate(2);
        b.estimate(3);
        assert_eq!(b.poll(t0 + Duration::from_millis(500)), None);
        assert_eq!(b.poll(t0 + Duration::from_millis(1000)), Some(3));
        assert_eq!(b.poll(t0 + Duration::from_millis(3000)), None, "no repeats");
    }

    /// A datagram in flight: source, destination, bytes.
    type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

    /// Moves datagrams between two str0m peers in memory, with simulated time.
    struct Wire {
        now: std::time::Instant,
    }

    impl Wire {
        /// Drains `rtc`, returning its datagrams (src, dst, bytes), events and next timeout.
        fn drain(rtc: &mut Rtc) -> (Vec<Datagram>, Vec<Event>, std::time::Instant) {
            let mut out = Vec::new();
            let mut events = Vec::new();
            loop {
                match rtc.poll_output().expect("poll_output") {
                    Output::Timeout(t) => return (out, events, t),
                    Output::Transmit(t) => out.push((t.source, t.destination, t.contents.to_vec())),
                    Output::Event(e) => events.push(e),
                }
            }
        }

        /// Delivers `packets` to `rtc` one by one (each followed by a drain, as str0m
        /// requires); returns what `rtc` sent and emitted meanwhile.
        fn deliver(&self, rtc: &mut Rtc, packets: Vec<Datagram>) -> (Vec<Datagram>, Vec<Event>) {
            let mut out = Vec::new();
            let mut events = Vec::new();
            for (src, dst, data) in packets {
                let r = Receive::new(Protocol::Udp, src, dst, &data).expect("datagram");
                rtc.handle_input(Input::Receive(self.now, r))
                    .expect("input");
                let (o, e, _) = Self::drain(rtc);
                out.extend(o);
                events.extend(e);
            }
            (out, events)
        }
    }

    /// Our offer against a str0m receiver (which, unlike aiortc, sends transport-cc feedback
    /// and can send PLI): the estimate must become `Bandwidth` events and a PLI must become
    /// `KeyframeWanted`.
    #[test]
    fn twcc_estimate_and_pli_reach_the_session() {
        use crate::media::encoder::H264Encoder;
        use crate::media::frame::RawFrame;
        use crate::media::quality::Rung;
        use str0m::change::SdpOffer;
        use str0m::media::KeyframeRequestKind;

        let a_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let start = std::time::Instant::now();
        let settings = RtcSettings {
            initial_bitrate_bps: 300_000,
            desired_bitrate_bps: 2_000_000,
            ice_max_rto: Duration::from_secs(1),
            ice_max_retransmits: 7,
        };
        let offered = rtc::make_offer(a_addr, None, &settings, start).unwrap();
        let mut a = offered.rtc;
        let mid = offered.mid;
        let mut b = Rtc::builder().clear_codecs().enable_h264(true).build(start);
        b.add_local_candidate(str0m::Candidate::host(b_addr, "udp").unwrap());
        let offer = SdpOffer::from_sdp_string(&offered.offer_sdp).unwrap();
        let answer = b.sdp_api().accept_offer(offer).unwrap();
        rtc::accept_answer(&mut a, offered.pending, &answer.to_sdp_string()).unwrap();

        let mut wire = Wire { now: start };
        let mut st = StreamState {
            waiting_for_keyframe: true,
            ..StreamState::default()
        };
        let mut sink_events = Vec::new();
        let rung = Rung {
            width: 320,
            height: 180,
            fps: 30,
            bitrate_kbps: 500,
        };
        let mut enc = H264Encoder::new(rung, 30).unwrap();
        let mut raw = RawFrame::black(320, 180);
        let mut frame_no = 0u64;
        let mut next_frame = start;
        let mut pli_sent = false;
        let mut to_a = Vec::new();
        let mut to_b = Vec::new();
        // 8 simulated seconds, bounded by step count as well.
        for _ in 0..200_000 {
            if wire.now >= start + Duration::from_secs(8) {
                break;
            }
            let (oa, ea, ta) = Wire::drain(&mut a);
            to_b.extend(oa);
            for e in ea {
                on_event(e, wire.now, &mut st, &mut sink_events).unwrap();
            }
            let (ob, _, tb) = Wire::drain(&mut b);
            to_a.extend(ob);
            if let Some(bps) = st.bandwidth.poll(wire.now) {
                sink_events.push(SinkEvent::Bandwidth { bps });
            }
            if st.keyframes.poll(wire.now) {
                sink_events.push(SinkEvent::KeyframeWanted);
            }
            if !to_a.is_empty() || !to_b.is_empty() {
                let (o, ev) = wire.deliver(&mut a, std::mem::take(&mut to_a));
                to_b.extend(o);
                for e in ev {
                    on_event(e, wire.now, &mut st, &mut sink_events).unwrap();
                }
                let (o, _) = wire.deliver(&mut b, std::mem::take(&mut to_b));
                to_a.extend(o);
                continue;
            }
            if st.connected && !pli_sent && wire.now >= start + Duration::from_secs(3) {
                b.writer(mid)
                    .expect("receiver media")
                    .request_keyframe(None, KeyframeRequestKind::Pli)
                    .unwrap();
                pli_sent = true;
                continue;
            }
            // Real time always moves a little between two polls; simulated time must too.
            let wake = ta
                .min(tb)
                .min(next_frame)
                .max(wire.now + Duration::from_millis(1));
            wire.now = wake;
            if wire.now >= next_frame {
                next_frame += Duration::from_micros(33_333);
                if st.connected {
                    let y = raw.planes_mut().0;
                    for (i, px) in y.iter_mut().enumerate() {
                        *px = ((i as u64 + frame_no * 7) % 251) as u8;
                    }
                    let pts = Duration::from_micros(33_333 * frame_no);
                    if let Some(f) = enc.encode(&raw, pts).unwrap() {
                        let pt = if let Some(p) = st.pt {
                            p
                        } else {
                            let prof = StreamProfile::of_access_unit(&f.data).unwrap();
                            let p = rtc::choose_pt(&rtc::negotiated_h264(&mut a, mid), &prof)
                                .expect("a matching payload type");
                            st.pt = Some(p);
                            p
                        };
                        a.writer(mid)
                            .unwrap()
                            .write(
                                rtc::pt(pt.pt),
                                wire.now,
                                rtc::media_time(pts),
                                Arc::<[u8]>::from(&f.data[..]),
                            )
                            .unwrap();
                    }
                    frame_no += 1;
                }
                continue;
            }
            a.handle_input(Input::Timeout(wire.now)).unwrap();
            let (oa, ea, _) = Wire::drain(&mut a);
            to_b.extend(oa);
            for e in ea {
                on_event(e, wire.now, &mut st, &mut sink_events).unwrap();
            }
            b.handle_input(Input::Timeout(wire.now)).unwrap();
        }
        assert!(st.connected, "never connected: {sink_events:?}");
        println!("simulated {:?}", wire.now - start);
        assert!(frame_no > 100, "only {frame_no} frames written");
        let bw: Vec<u64> = sink_events
            .iter()
            .filter_map(|e| match e {
                SinkEvent::Bandwidth { bps } => Some(*bps),
                _ => None,
            })
            .collect();
        let keyframe_wanted = sink_events
            .iter()
            .filter(|e| **e == SinkEvent::KeyframeWanted)
            .count();
        println!("bandwidth reports {bw:?}; keyframe requests {keyframe_wanted}");
        assert!(!bw.is_empty(), "no Bandwidth event: {sink_events:?}");
        assert!(bw.len() <= 9, "more than one a second: {bw:?}");
        assert!(
            keyframe_wanted >= 2,
            "connect + PLI should each ask for a keyframe: {sink_events:?}"
        );
    }

    /// A receiver (or a server relaying many viewers) that sends a PLI every 20 ms over real
    /// UDP must not make the sink ask the encoder for an IDR every 20 ms; it must still get
    /// keyframes while it keeps asking.
    #[tokio::test]
    async fn pli_storm_is_rate_limited() {
        use crate::media::encoder::H264Encoder;
        use crate::media::frame::RawFrame;
        use crate::media::quality::Rung;
        use str0m::change::SdpOffer;
        use str0m::media::KeyframeRequestKind;

        const STORM: Duration = Duration::from_secs(3);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let b_socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b_addr = b_socket.local_addr().unwrap();
        let settings = RtcSettings {
            initial_bitrate_bps: 300_000,
            desired_bitrate_bps: 2_000_000,
            ice_max_rto: Duration::from_secs(1),
            ice_max_retransmits: 7,
        };
        let offered = rtc::make_offer(local, None, &settings, std::time::Instant::now()).unwrap();
        let mut a = offered.rtc;
        let mid = offered.mid;
        let mut b = Rtc::builder()
            .clear_codecs()
            .enable_h264(true)
            .build(std::time::Instant::now());
        b.add_local_candidate(str0m::Candidate::host(b_addr, "udp").unwrap());
        let offer = SdpOffer::from_sdp_string(&offered.offer_sdp).unwrap();
        let answer = b.sdp_api().accept_offer(offer).unwrap();
        rtc::accept_answer(&mut a, offered.pending, &answer.to_sdp_string()).unwrap();
        let mut session = Session {
            rtc: a,
            mid,
            socket,
            local,
            session_url: Url::parse("http://127.0.0.1:9/whip/session/1").unwrap(),
            session_token: None,
            link_stun: Vec::new(),
        };

        // 30 fps from a plain thread (encoding blocks); it ends when the receiver is dropped.
        let (frame_tx, mut frame_rx) = mpsc::channel(8);
        let feeder = std::thread::spawn(move || {
            let rung = Rung {
                width: 320,
                height: 180,
                fps: 30,
                bitrate_kbps: 500,
            };
            let mut enc = H264Encoder::new(rung, 300).unwrap();
            let mut raw = RawFrame::black(320, 180);
            for n in 0u64.. {
                for (i, px) in raw.planes_mut().0.iter_mut().enumerate() {
                    *px = ((i as u64 + n * 7) % 251) as u8;
                }
                let pts = Duration::from_micros(33_333 * n);
                if let Some(f) = enc.encode(&raw, pts).unwrap() {
                    if frame_tx.blocking_send(f).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_micros(33_333));
            }
        });

        let cancel = CancellationToken::new();
        let (ev_tx, mut ev_rx) = mpsc::channel(4096);
        let receiver = async {
            let mut buf = vec![0u8; RECV_BUF];
            let mut connected = false;
            let mut plis = 0u32;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let end = Instant::now() + STORM;
            loop {
                let timeout = loop {
                    match b.poll_output().unwrap() {
                        Output::Timeout(t) => break t,
                        Output::Transmit(t) => {
                            let _ = b_socket.try_send_to(&t.contents, t.destination);
                        }
                        Output::Event(Event::Connected) => connected = true,
                        Output::Event(_) => {}
                    }
                };
                let wake =
                    Instant::from_std(timeout).max(Instant::now() + Duration::from_millis(1));
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => break,
                    r = b_socket.recv_from(&mut buf) => {
                        let (n, source) = r.unwrap();
                        let r = Receive::new(Protocol::Udp, source, b_addr, &buf[..n]).unwrap();
                        b.handle_input(Input::Receive(std::time::Instant::now(), r)).unwrap();
                    }
                    _ = tokio::time::sleep_until(wake) => {
                        b.handle_input(Input::Timeout(std::time::Instant::now())).unwrap();
                    }
                    _ = tick.tick() => {
                        // Refused until the first RTP packet arrived (no receive stream yet).
                        if connected && b.writer(mid).expect("receiver media")
                            .request_keyframe(None, KeyframeRequestKind::Pli).is_ok() {
                            plis += 1;
                        }
                    }
                }
            }
            cancel.cancel();
            plis
        };
        let opts = WhipOptions::default();
        let (ended, plis) = tokio::join!(
            stream(&mut session, &opts, None, &mut frame_rx, &ev_tx, &cancel),
            receiver
        );
        drop(frame_rx);
        feeder.join().unwrap();
        assert!(matches!(ended, Ended::Stopped), "session lost");
        let mut events = Vec::new();
        while let Ok(e) = ev_rx.try_recv() {
            events.push(e);
        }
        let wanted = events
            .iter()
            .filter(|e| **e == SinkEvent::KeyframeWanted)
            .count();
        println!("{plis} PLIs sent, {wanted} keyframe requests");
        assert!(events.contains(&SinkEvent::Publishing), "{events:?}");
        assert!(plis >= 50, "the storm did not happen: {plis} PLIs");
        // The connect's own request, then at most one per interval and a held one at the end.
        let most = 1 + (STORM.as_millis() / KEYFRAME_REQUEST_INTERVAL.as_millis()) as usize + 1;
        assert!(
            (2..=most).contains(&wanted),
            "{wanted} keyframe requests for {plis} PLIs in {STORM:?}, want 2..={most}"
        );
    }

    #[tokio::test]
    async fn refused_connection_fails_first_attempt_without_the_token() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let u = whip_url(&format!("http://127.0.0.1:{port}/whip/cam?token=sekrit"));
        let (_tx, rx) = mpsc::channel(4);
        let (ev_tx, mut ev_rx) = mpsc::channel(8);
        run(
            WhipTarget::new(&u, None).unwrap(),
            WhipOptions::default(),
            rx,
            ev_tx,
            CancellationToken::new(),
        )
        .await;
        match ev_rx.recv().await {
            Some(SinkEvent::Failed { reason }) => {
                assert!(reason.starts_with("offer: http request"), "{reason}");
                assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
                assert!(!reason.contains("sekrit"), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }
}
