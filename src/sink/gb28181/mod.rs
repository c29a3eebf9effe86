//! GB/T 28181 device sink: registers to a platform as a device and streams MPEG-PS over RTP
//! when the platform INVITEs.
//!
//! Layout: [`sip`], [`sdp`], [`manscdp`], [`register`], [`dialog`], [`ps`] and [`rtp`] are pure;
//! [`ua`] is the sans-IO user agent combining them; [`run`] is the tokio shell moving bytes
//! between sockets, the user agent and the media connection.
//!
//! Unlike RTMP, registering does not start media: the platform decides when to watch. The
//! sink reports [`SinkEvent::Publishing`] once registered, discards frames until an INVITE is
//! ACKed, then asks for a keyframe ([`SinkEvent::KeyframeWanted`]) so the first pack the
//! platform gets carries SPS/PPS and the PSM. SIP signalling is UDP or TCP
//! ([`GbOptions::sip_transport`]); media is UDP, TCP active or TCP passive as the INVITE asks.

pub mod dialog;
pub mod manscdp;
pub mod ps;
pub mod register;
pub mod rtp;
pub mod sdp;
pub mod sip;
pub mod transport;
pub mod ua;

use crate::cloud::url::Gb28181Url;
use crate::media::frame::{Codec, EncodedFrame};
use crate::sink::{KeyframeRequests, SinkEvent};
use crate::source::feed::ACCEPT_REST;
use bytes::Bytes;
use dialog::MediaPlan;
use rand::Rng;
use register::Identity;
use sdp::MediaTransport;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
pub use transport::SipTransport;
use transport::{AcceptRest, Inbound, SipIo};
use ua::{Ua, UaConfig, UaEvent};

/// The platform and our identity, taken from the DJI `url` of a `live_start_push` with
/// url_type 3.
#[derive(Clone, PartialEq, Eq)]
pub struct GbTarget {
    /// Platform SIP host (IP literal or name).
    pub server_host: String,
    /// Platform SIP port.
    pub server_port: u16,
    /// Platform ID; its first 10 digits are the SIP domain and digest realm.
    pub server_id: String,
    /// Our device ID (digest username).
    pub device_id: String,
    /// Digest password; never printed (see [`GbTarget::redacted`]).
    pub password: String,
    /// Local SIP port to bind.
    pub local_port: u16,
    /// The channel ID the platform INVITEs.
    pub channel: String,
}

/// Why a DJI GB28181 url cannot become a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GbTargetError {
    /// The platform ID is too short to carry the 10-digit domain.
    #[error("serverID {0:?} is shorter than the 10-digit SIP domain")]
    ShortServerId(String),
}

impl GbTarget {
    /// The target for a parsed DJI url (IDs and ports were validated by the url parser).
    pub fn from_url(url: &Gb28181Url) -> Result<GbTarget, GbTargetError> {
        if url.server_id.len() < 10 || !url.server_id.is_ascii() {
            return Err(GbTargetError::ShortServerId(url.server_id.clone()));
        }
        Ok(GbTarget {
            server_host: url.server_ip.clone(),
            server_port: url.server_port,
            server_id: url.server_id.clone(),
            device_id: url.agent_id.clone(),
            password: url.agent_password.clone(),
            local_port: url.local_port,
            channel: url.channel.clone(),
        })
    }

    /// The SIP domain / digest realm: the first 10 digits of the platform ID.
    pub fn domain(&self) -> &str {
        self.server_id.get(..10).unwrap_or(&self.server_id)
    }

    /// A loggable description without the password.
    pub fn redacted(&self) -> String {
        format!(
            "gb28181 {}@{}:{} as {} channel {} (local SIP port {})",
            self.server_id,
            self.server_host,
            self.server_port,
            self.device_id,
            self.channel,
            self.local_port
        )
    }
}

impl fmt::Debug for GbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Tunables of a GB28181 sink; `Default` follows the GB/wvp defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GbOptions {
    /// SIP over UDP (default) or TCP; TCP keeps one connection to the platform open and
    /// also accepts the platform's own connections on `localPort`.
    pub sip_transport: SipTransport,
    /// Address to bind SIP and media sockets on (0.0.0.0 on a dock, 127.0.0.1 in tests).
    pub bind_ip: IpAddr,
    /// Address printed in Via/Contact/SDP; `None` takes the local address that routes to the
    /// platform. Set it to the forwarded public address behind NAT (TCP-active needs it).
    pub advertise_ip: Option<IpAddr>,
    /// Local media port (UDP source port and TCP listen port); 0 picks a free one.
    pub media_port: u16,
    /// Registration expiry asked for (GB default 3600 s).
    pub expires: u32,
    /// Keepalive period (GB default 60 s).
    pub keepalive_interval: Duration,
    /// Unanswered keepalives in a row that count as a lost registration (GB default 3).
    pub keepalive_max_missed: u32,
    /// RFC 3261 T1 for UDP retransmissions.
    pub t1: Duration,
    /// Transaction timeout (RFC 3261 64·T1).
    pub transaction_timeout: Duration,
    /// First re-register backoff ceiling.
    pub backoff_initial: Duration,
    /// Largest re-register backoff ceiling.
    pub backoff_max: Duration,
    /// Longest wait for BYE/unregister answers when stopping.
    pub stop_timeout: Duration,
    /// Limit for connecting to / being connected by the media server over TCP.
    pub tcp_media_timeout: Duration,
    /// Name shown in the platform's device and channel lists (ASCII: declared GB2312).
    pub name: String,
    /// Largest RTP packet, header included ([`rtp::MIN_PACKET_LEN`]..=[`rtp::MAX_PACKET_LEN`]):
    /// smaller for a path whose MTU would fragment 1400-byte packets.
    pub rtp_packet_bytes: usize,
    /// Addresses besides the platform's that may send SIP; requests from any other host
    /// (an INVITE that would send the video elsewhere) are ignored. The same hosts, and the
    /// media server an offer names, may open the TCP media connection the platform dials.
    pub accept_from: Vec<IpAddr>,
}

impl Default for GbOptions {
    fn default() -> Self {
        Self {
            sip_transport: SipTransport::Udp,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            advertise_ip: None,
            media_port: 0,
            expires: 3600,
            keepalive_interval: Duration::from_secs(60),
            keepalive_max_missed: 3,
            t1: Duration::from_millis(500),
            transaction_timeout: Duration::from_secs(32),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            // Inside the session's stop grace (3 s), so the unregister is not cut short.
            stop_timeout: Duration::from_millis(2500),
            tcp_media_timeout: Duration::from_secs(10),
            name: "DJI Dock Camera".into(),
            rtp_packet_bytes: rtp::MAX_PACKET_LEN,
            accept_from: Vec::new(),
        }
    }
}

/// The shortest time between two keyframe requests made for a congested TCP media connection.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// Frames waiting for a slow TCP media connection; beyond this the sink drops frames and
/// asks for a keyframe instead of buffering without bound.
const MEDIA_QUEUE: usize = 64;

/// Why a source in `codec` cannot go out over this sink, for the log and the cloud's reply.
fn codec_refusal(codec: Codec) -> String {
    format!(
        "the source is {}; GB/T 28181 here carries H.264 only",
        codec.name()
    )
}

/// Runs the GB28181 sink until `cancel` fires or the frame sender is dropped.
///
/// Events: [`SinkEvent::Publishing`] on (re-)registration — media starts only when the platform
/// INVITEs, frames are discarded until then; [`SinkEvent::KeyframeWanted`] when an INVITE starts
/// media, and after frames were dropped once the TCP media queue has room again (at most once
/// a second, so that an encoder forcing an IDR per request is not made to send IDRs that are
/// dropped in turn); [`SinkEvent::Reconnecting`] when the registration is
/// lost (refresh refused, 3 keepalives unanswered) and is being retried with backoff, a running
/// dialog ended with it;
/// [`SinkEvent::Failed`] when the first REGISTER is refused (wrong password) or unanswered, or a
/// socket cannot be bound; [`SinkEvent::Refused`] when the video is not H.264 (looked at in
/// the first frame, up to [`FIRST_FRAME_WAIT`](super::FIRST_FRAME_WAIT), before registering,
/// and in every frame after); [`SinkEvent::Stopped`] after cancel, once the active dialog got
/// its BYE and the registration its `Expires: 0` (bounded by `stop_timeout`).
pub async fn run(
    target: GbTarget,
    opts: GbOptions,
    mut frames: mpsc::Receiver<EncodedFrame>,
    events: mpsc::Sender<SinkEvent>,
    cancel: CancellationToken,
) {
    let label = target.redacted();
    // PS here carries H.264 only: an H.265 source is refused before the device registers, so
    // the cloud is answered "transport not supported" and the platform never lists a device
    // that could not play. A frame that comes later is still checked as it arrives.
    if !super::first_frame_carried(
        &mut frames,
        &cancel,
        &events,
        Codec::H264,
        codec_refusal,
        &label,
    )
    .await
    {
        return;
    }
    let setup = tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            let _ = events.send(SinkEvent::Stopped).await;
            return;
        }
        s = Shell::setup(&target, &opts) => s,
    };
    let mut shell = match setup {
        Ok(s) => s,
        Err(reason) => {
            tracing::warn!(target = %label, %reason, "gb28181 sink setup failed");
            let _ = events.send(SinkEvent::Failed { reason }).await;
            return;
        }
    };
    tracing::info!(target = %label, local = %shell.sip.local_addr().map(|a| a.to_string()).unwrap_or_default(), "gb28181 registering");
    shell.ua.start(Instant::now().into_std());
    let mut stop_deadline: Option<Instant> = None;
    let mut frames_open = true;
    let mut codec_refused = false;
    let (media_err_tx, mut media_err_rx) = mpsc::channel::<(String, String)>(4);
    loop {
        if let Err(reason) = shell.flush().await {
            tracing::warn!(target = %label, %reason, "gb28181 send failed");
        }
        if let Some(end) = shell.drain_events(&events, &label, &media_err_tx).await {
            shell.stop_media().await;
            let _ = events.send(end).await;
            return;
        }
        shell.forget_stray_media_conn();
        let now = Instant::now();
        shell.media_accept.wake(now);
        let wake = [
            shell.ua.poll_timeout().map(Instant::from_std),
            stop_deadline,
            shell.media_accept.until(),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            biased;
            _ = cancel.cancelled(), if stop_deadline.is_none() => {
                stop_deadline = Some(Instant::now() + opts.stop_timeout);
                shell.ua.stop(Instant::now().into_std());
            }
            _ = super::sleep_until_opt(wake) => {
                if stop_deadline.is_some_and(|d| d <= Instant::now()) {
                    tracing::warn!(target = %label, "gb28181 stop timed out waiting for the platform");
                    shell.stop_media().await;
                    let _ = events.send(SinkEvent::Stopped).await;
                    return;
                }
                shell.ua.handle_timeout(Instant::now().into_std());
            }
            inbound = shell.sip.recv() => match inbound {
                Inbound::Message(from, data) => {
                    shell.ua.handle_input(Instant::now().into_std(), from, &data)
                }
                Inbound::Closed(peer, reason) => {
                    tracing::info!(target = %label, %peer, %reason, "gb28181 SIP connection closed");
                    if peer == shell.server {
                        shell.ua.transport_lost(Instant::now().into_std(), &reason);
                    }
                }
            },
            accepted = shell.media_tcp.accept(), if shell.media_accept.until().is_none() => {
                shell.media_connection(accepted, &label);
            }
            Some((call_id, reason)) = media_err_rx.recv() => {
                tracing::warn!(target = %label, %call_id, %reason, "gb28181 media connection lost; ending the dialog");
                shell.ua.hang_up(Instant::now().into_std(), &call_id);
            }
            // Frames keep being taken (and dropped) while stopping so the producer never blocks.
            frame = frames.recv(), if frames_open => match frame {
                Some(frame) if frame.codec != Codec::H264 => {
                    // The source changed codec after the start (a lens switch): the session
                    // ends and this sink unregisters when it is cancelled.
                    if !codec_refused {
                        codec_refused = true;
                        let reason = codec_refusal(frame.codec);
                        tracing::warn!(target = %label, %reason, "gb28181 cannot send this video");
                        let _ = events.send(SinkEvent::Refused { reason }).await;
                    }
                }
                Some(frame) => {
                    if stop_deadline.is_none() && shell.send_frame(&frame).await {
                        let _ = events.send(SinkEvent::KeyframeWanted).await;
                    }
                }
                None => {
                    frames_open = false;
                    if stop_deadline.is_none() {
                        stop_deadline = Some(Instant::now() + opts.stop_timeout);
                        shell.ua.stop(Instant::now().into_std());
                    }
                }
            },
        }
    }
}

/// How long the media server's port must keep refusing UDP media (ICMP port unreachable)
/// before the platform counts as having hung up: long enough for a media server that restarts,
/// short enough that a device does not stream into the void for the length of a keepalive
/// timeout.
const REFUSED_FOR: Duration = Duration::from_secs(5);

/// A pause in refusals longer than this starts the count again. Routers send ICMP errors at
/// about one a second at most, and a refused send only reports the latest one.
const REFUSAL_GAP: Duration = Duration::from_secs(2);

/// Whether the media server's refusals have gone on for [`REFUSED_FOR`]. The media socket
/// reports an ICMP error once, on the next send (see `report_refusals`), so sends alternate
/// between refused and accepted while the port stays closed; only the refusals are counted.
#[derive(Debug, Default)]
struct Refusals {
    since: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
}

impl Refusals {
    /// A send was refused at `now`; true once refusals have kept coming for [`REFUSED_FOR`].
    fn refused(&mut self, now: std::time::Instant) -> bool {
        if self
            .last
            .is_none_or(|l| now.saturating_duration_since(l) > REFUSAL_GAP)
        {
            self.since = Some(now);
        }
        self.last = Some(now);
        self.since
            .is_some_and(|s| now.saturating_duration_since(s) >= REFUSED_FOR)
    }
}

/// One running media session (one ACKed INVITE).
struct Media {
    call_id: String,
    packetizer: rtp::Packetizer,
    waiting_for_keyframe: bool,
    /// Keyframe requests after frames were dropped for a full queue.
    keyframes: KeyframeRequests,
    sender: MediaSender,
}

enum MediaSender {
    /// Over the shared media socket, to `dest`.
    Udp {
        dest: SocketAddr,
        refusals: Refusals,
        /// Other send errors so far; the first is logged as a warning, the rest at debug.
        errors: u64,
    },
    Tcp {
        queue: mpsc::Sender<Vec<Bytes>>,
        /// Ends the session task wherever it waits.
        cancel: CancellationToken,
        /// Hands the task the platform's connection (TCP listen) once it arrives; `None` once
        /// handed over, and for a session that dials itself.
        conn: Option<oneshot::Sender<TcpStream>>,
        task: JoinHandle<()>,
    },
}

struct Shell {
    sip: SipIo,
    server: SocketAddr,
    media_udp: Arc<UdpSocket>,
    /// Accepted by the shell's own loop, never by a session: a connection nobody waits for is
    /// closed at once instead of staying queued for the next session to take by mistake.
    media_tcp: TcpListener,
    /// A connection the platform opened for the current dialog before its ACK started media.
    media_conn: Option<(String, TcpStream)>,
    /// Media connections closed unused (not the platform's, or no session for them); logged
    /// at 1, 2, 4, 8 … so that a host hammering the port cannot flood the log.
    stray_media: u64,
    /// The media port's rest after a failed `accept()`.
    media_accept: AcceptRest,
    ua: Ua,
    muxer: ps::PsMuxer,
    media: Option<Media>,
    registered: bool,
    tcp_media_timeout: Duration,
    rtp_packet_bytes: usize,
}

impl Shell {
    async fn setup(target: &GbTarget, opts: &GbOptions) -> Result<Shell, String> {
        let server = resolve(&target.server_host, target.server_port).await?;
        let local = SocketAddr::new(opts.bind_ip, target.local_port);
        let sip_peers: Vec<IpAddr> = std::iter::once(server.ip())
            .chain(opts.accept_from.iter().copied())
            .collect();
        let sip = while_port_busy(|| {
            SipIo::bind(
                opts.sip_transport,
                local,
                opts.tcp_media_timeout,
                sip_peers.clone(),
            )
        })
        .await
        .map_err(|e| format!("bind SIP {:?} {local}: {e}", opts.sip_transport))?;
        let local_sip = sip
            .local_addr()
            .map_err(|e| format!("SIP socket address: {e}"))?;
        let advertise = match opts.advertise_ip {
            Some(ip) => ip,
            None if !opts.bind_ip.is_unspecified() => opts.bind_ip,
            None => route_ip(server).await?,
        };
        let (media_udp, media_tcp) = bind_media(opts.bind_ip, opts.media_port).await?;
        let media_port = media_udp
            .local_addr()
            .map_err(|e| format!("media socket address: {e}"))?
            .port();
        let cfg = UaConfig {
            identity: Identity {
                device_id: target.device_id.clone(),
                server_id: target.server_id.clone(),
                domain: target.domain().to_owned(),
                server,
                local: SocketAddr::new(advertise, local_sip.port()),
                user_agent: format!("dockcast/{}", env!("CARGO_PKG_VERSION")),
                tcp: opts.sip_transport == SipTransport::Tcp,
            },
            password: target.password.clone(),
            channel: target.channel.clone(),
            media_ip: advertise,
            media_port,
            media_bind_ip: opts.bind_ip,
            expires: opts.expires,
            keepalive_interval: opts.keepalive_interval,
            keepalive_max_missed: opts.keepalive_max_missed.max(1),
            t1: opts.t1,
            transaction_timeout: opts.transaction_timeout,
            backoff_initial: opts.backoff_initial,
            backoff_max: opts.backoff_max,
            name: opts.name.clone(),
            seed: rand::rng().random(),
            accept_from: opts.accept_from.clone(),
        };
        Ok(Shell {
            sip,
            server,
            media_udp: Arc::new(media_udp),
            media_tcp,
            media_conn: None,
            stray_media: 0,
            media_accept: AcceptRest::default(),
            ua: Ua::new(cfg),
            muxer: ps::PsMuxer::new(),
            media: None,
            registered: false,
            tcp_media_timeout: opts.tcp_media_timeout,
            rtp_packet_bytes: opts.rtp_packet_bytes,
        })
    }

    async fn flush(&mut self) -> Result<(), String> {
        let mut result = Ok(());
        while let Some(t) = self.ua.poll_transmit() {
            if let Err(e) = self.sip.send(t.dest, t.data).await {
                if t.dest == self.server && matches!(self.sip, SipIo::Tcp { .. }) {
                    // No connection, no registration: let the user agent back off and retry.
                    self.ua.transport_lost(Instant::now().into_std(), &e);
                }
                result = Err(format!("SIP: {e}"));
            }
        }
        result
    }

    /// Turns user-agent events into sink events; returns the final event when the sink ends.
    async fn drain_events(
        &mut self,
        events: &mpsc::Sender<SinkEvent>,
        label: &str,
        media_err: &mpsc::Sender<(String, String)>,
    ) -> Option<SinkEvent> {
        while let Some(ev) = self.ua.poll_event() {
            match ev {
                UaEvent::Registered { expires } => {
                    tracing::info!(target = %label, expires, "gb28181 registered; waiting for INVITE");
                    self.registered = true;
                    let _ = events.send(SinkEvent::Publishing).await;
                }
                UaEvent::RegistrationLost {
                    attempt,
                    reason,
                    retry_in,
                } => {
                    tracing::warn!(target = %label, %reason, ?retry_in, "gb28181 registration lost");
                    self.registered = false;
                    let _ = events
                        .send(SinkEvent::Reconnecting {
                            attempt,
                            reason,
                            retry_in,
                        })
                        .await;
                }
                UaEvent::RegistrationFailed { reason } => {
                    tracing::warn!(target = %label, %reason, "gb28181 registration failed");
                    return Some(SinkEvent::Failed { reason });
                }
                UaEvent::MediaStart(plan) => {
                    tracing::info!(target = %label, call_id = %plan.call_id, ssrc = plan.ssrc, transport = ?plan.transport, remote = %plan.remote, "gb28181 media start");
                    self.start_media(plan, media_err.clone()).await;
                    let _ = events.send(SinkEvent::KeyframeWanted).await;
                }
                UaEvent::MediaStop { call_id } => {
                    if self.media.as_ref().is_some_and(|m| m.call_id == call_id) {
                        tracing::info!(target = %label, %call_id, "gb28181 media stop");
                        self.stop_media().await;
                    }
                }
                UaEvent::Refused { reason } => {
                    tracing::warn!(target = %label, %reason, "gb28181 platform request not served");
                }
                UaEvent::Unregistered => {
                    tracing::info!(target = %label, "gb28181 unregistered");
                    return Some(SinkEvent::Stopped);
                }
            }
        }
        None
    }

    async fn start_media(&mut self, plan: MediaPlan, media_err: mpsc::Sender<(String, String)>) {
        let early = self.media_conn.take().filter(|(c, _)| *c == plan.call_id);
        self.stop_media().await;
        let first_seq: u16 = rand::rng().random();
        let sender = match plan.transport {
            // Sent unconnected, so that each packet takes the route and source address of the
            // moment (a 4G modem that reconnects gets a new address); the media server's
            // refusals still come back, through IP_RECVERR (see `bind_media`).
            MediaTransport::Udp => MediaSender::Udp {
                dest: plan.remote,
                refusals: Refusals::default(),
                errors: 0,
            },
            MediaTransport::TcpConnect | MediaTransport::TcpListen => {
                let (queue, rx) = mpsc::channel(MEDIA_QUEUE);
                let (conn_tx, conn_rx) = oneshot::channel();
                let conn = match early {
                    Some((_, stream)) => {
                        let _ = conn_tx.send(stream);
                        None
                    }
                    None => Some(conn_tx),
                };
                let cancel = CancellationToken::new();
                let task = tokio::spawn(tcp_media(
                    plan.clone(),
                    conn_rx,
                    self.tcp_media_timeout,
                    rx,
                    media_err,
                    cancel.clone(),
                ));
                MediaSender::Tcp {
                    queue,
                    cancel,
                    conn,
                    task,
                }
            }
        };
        let mut keyframes = KeyframeRequests::new(KEYFRAME_REQUEST_INTERVAL);
        // The caller asks for the first keyframe as media starts.
        keyframes.own(Instant::now().into_std());
        self.media = Some(Media {
            call_id: plan.call_id,
            packetizer: rtp::Packetizer::with_max_packet(
                plan.ssrc,
                first_seq,
                self.rtp_packet_bytes,
            ),
            waiting_for_keyframe: true,
            keyframes,
            sender,
        });
    }

    async fn stop_media(&mut self) {
        if let Some(Media {
            sender: MediaSender::Tcp {
                cancel, mut task, ..
            },
            ..
        }) = self.media.take()
        {
            // The platform wants no more of this stream: what is queued is not flushed, and
            // the connection closes as the task ends, which it does at once wherever it waits.
            cancel.cancel();
            // Only a bug could keep it: even then the SIP side goes on after a bounded wait.
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("gb28181 media task ignored its stop; aborted");
                task.abort();
            }
        }
    }

    /// Takes one connection to the media port. Only the platform (or `accept_from`, or the
    /// media server the current offer names) may open one, and only for a dialog whose media
    /// the platform dials: it goes to that session, or waits for the ACK that starts it.
    /// Anything else is closed at once, so that it cannot be taken by a later session.
    fn media_connection(
        &mut self,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
        label: &str,
    ) {
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if self.media_accept.failed(Instant::now()) {
                    tracing::warn!(target = %label, error = %e, rest = ?ACCEPT_REST, "gb28181 cannot accept a media connection");
                }
                return;
            }
        };
        self.media_accept.accepted();
        let plan = self
            .ua
            .dialog_media()
            .filter(|p| p.transport == MediaTransport::TcpListen)
            .cloned();
        let ip = peer.ip().to_canonical();
        let allowed = self.ua.is_platform_source(ip)
            || plan
                .as_ref()
                .is_some_and(|p| p.remote.ip().to_canonical() == ip);
        let why = match (&plan, allowed) {
            (_, false) => "not the platform nor its media server",
            (None, true) => "no session waits for one",
            (Some(plan), true) => {
                match self.media.as_mut().filter(|m| m.call_id == plan.call_id) {
                    Some(Media {
                        sender: MediaSender::Tcp { conn, .. },
                        ..
                    }) => match conn.take() {
                        Some(tx) => {
                            let _ = tx.send(stream);
                            return;
                        }
                        None => "the session already has its connection",
                    },
                    Some(_) => "the session does not take one",
                    None => {
                        // Answered, not yet ACKed: the platform dialled on our 200.
                        self.media_conn = Some((plan.call_id.clone(), stream));
                        return;
                    }
                }
            }
        };
        self.stray_media += 1;
        if self.stray_media.is_power_of_two() {
            tracing::warn!(target = %label, %peer, reason = why, closed = self.stray_media, "gb28181 media connection closed unused");
        }
    }

    /// Closes a connection kept for a dialog that ended before its media started.
    fn forget_stray_media_conn(&mut self) {
        let current = self.ua.dialog_media().map(|p| p.call_id.as_str());
        if self
            .media_conn
            .as_ref()
            .is_some_and(|(c, _)| Some(c.as_str()) != current)
        {
            self.media_conn = None;
        }
    }

    /// Sends one frame if a media session runs; true when a keyframe must be requested.
    async fn send_frame(&mut self, frame: &EncodedFrame) -> bool {
        let Some(media) = self.media.as_mut() else {
            return false; // not invited: nobody is watching
        };
        // A request held while the queue was full goes out once there is room for the
        // keyframe it brings: asked for earlier, that keyframe would only be dropped as well.
        let request = match &media.sender {
            MediaSender::Tcp { queue, .. } if queue.capacity() > 0 => {
                media.keyframes.poll(Instant::now().into_std())
            }
            _ => false,
        };
        if media.waiting_for_keyframe {
            if !frame.keyframe {
                return request;
            }
            media.waiting_for_keyframe = false;
        }
        match &mut media.sender {
            MediaSender::Udp {
                dest,
                refusals,
                errors,
            } => {
                for p in rtp_packets(&self.muxer, &mut media.packetizer, frame) {
                    match self.media_udp.send_to(&p, *dest).await {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            if refusals.refused(std::time::Instant::now()) {
                                tracing::warn!(%dest, call_id = %media.call_id, refused_for = ?REFUSED_FOR, "gb28181 media port keeps refusing RTP: the platform hung up; ending the dialog");
                                // The user agent's MediaStop stops this session next.
                                self.ua.hang_up(Instant::now().into_std(), &media.call_id);
                                break;
                            }
                        }
                        Err(e) => {
                            *errors += 1;
                            if *errors == 1 {
                                tracing::warn!(%dest, error = %e, "gb28181 RTP send failed");
                            } else {
                                tracing::debug!(%dest, error = %e, errors = *errors, "gb28181 RTP send failed");
                            }
                        }
                    }
                }
                false
            }
            // The queue's room is taken before the frame is packetized: a frame dropped after
            // taking sequence numbers would leave a gap on the wire, and ZLMediaKit discards
            // the frame after a gap, here the keyframe the stream resumes on.
            MediaSender::Tcp { queue, .. } => match queue.try_reserve() {
                Ok(permit) => {
                    permit.send(rtp_packets(&self.muxer, &mut media.packetizer, frame));
                    if frame.keyframe {
                        // This keyframe answers what was held; asking again would bring another.
                        media.keyframes.answered();
                        return false;
                    }
                    request
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    // The media server reads slower than we produce: drop this frame and
                    // resume at a keyframe rather than buffer without bound.
                    media.waiting_for_keyframe = true;
                    media.keyframes.hold();
                    false
                }
                // The connection task ended; its error is on the way and ends the dialog.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        }
    }
}

/// One frame as PS in RTP packets; each call takes the next sequence numbers.
fn rtp_packets(
    muxer: &ps::PsMuxer,
    packetizer: &mut rtp::Packetizer,
    frame: &EncodedFrame,
) -> Vec<Bytes> {
    let pts = ps::to_90khz(frame.pts);
    let pack = muxer.mux(&frame.data, pts, None, frame.keyframe);
    packetizer.packetize(&pack, pts as u32)
}

/// Runs one TCP media session until its queue closes or `cancel` fires. Every wait in it (the
/// connect, the platform's connection, a write to a media server that reads slowly) ends on
/// `cancel`: the SIP side stops sessions as it handles a BYE and must not wait for one. Errors
/// are reported so the dialog can be ended with BYE.
async fn tcp_media(
    plan: MediaPlan,
    incoming: oneshot::Receiver<TcpStream>,
    timeout: Duration,
    rx: mpsc::Receiver<Vec<Bytes>>,
    errors: mpsc::Sender<(String, String)>,
    cancel: CancellationToken,
) {
    let call_id = plan.call_id.clone();
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        r = send_tcp_media(plan, incoming, timeout, rx) => r,
    };
    if let Err(reason) = outcome {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {}
            _ = errors.send((call_id, reason)) => {}
        }
    }
}

/// Connects, or takes the connection the shell accepted for the session, then sends RFC 4571
/// frames until the queue closes.
async fn send_tcp_media(
    plan: MediaPlan,
    incoming: oneshot::Receiver<TcpStream>,
    timeout: Duration,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> Result<(), String> {
    let mut stream = match plan.transport {
        MediaTransport::TcpListen => match tokio::time::timeout(timeout, incoming).await {
            Ok(Ok(stream)) => stream,
            // The session ended while waiting: nobody to tell.
            Ok(Err(_)) => return Ok(()),
            Err(_) => return Err(format!("media server did not connect within {timeout:?}")),
        },
        _ => tokio::time::timeout(timeout, TcpStream::connect(plan.remote))
            .await
            .map_err(|_| format!("connect to {} timed out", plan.remote))?
            .map_err(|e| format!("connect to {}: {e}", plan.remote))?,
    };
    let _ = stream.set_nodelay(true);
    while let Some(packets) = rx.recv().await {
        for p in packets {
            let Some(framed) = rtp::frame_rfc4571(&p) else {
                continue;
            };
            // write_all: a half-written packet would desynchronise the receiver's framing.
            match tokio::time::timeout(timeout, stream.write_all(&framed)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("write to media server: {e}")),
                Err(_) => return Err("media server stopped reading".to_owned()),
            }
        }
    }
    let _ = stream.shutdown().await;
    Ok(())
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let lookup = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host, port)),
    )
    .await
    .map_err(|_| format!("resolving serverIP {host:?} timed out"))?
    .map_err(|e| format!("resolving serverIP {host:?}: {e}"))?;
    let addrs: Vec<SocketAddr> = lookup.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("serverIP {host:?} has no address"))
}

/// The local address the kernel would use towards `server`, for Via/Contact/SDP.
async fn route_ip(server: SocketAddr) -> Result<IpAddr, String> {
    let any: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = UdpSocket::bind(any)
        .await
        .map_err(|e| format!("probe socket: {e}"))?;
    probe
        .connect(server)
        .await
        .map_err(|e| format!("no route to platform {server}: {e}"))?;
    probe
        .local_addr()
        .map(|a| a.ip())
        .map_err(|e| format!("probe socket address: {e}"))
}

/// How long a bind of a fixed port keeps being retried while the port is in use: a session
/// for the same video that was just stopped may still hold it while it unregisters, for up to
/// the session's stop grace. A start right after a stop must not fail for that.
const PORT_BUSY_WAIT: Duration = Duration::from_secs(3);

/// Runs `bind` until it does not fail with "address in use", for up to [`PORT_BUSY_WAIT`].
async fn while_port_busy<T, F, Fut>(mut bind: F) -> std::io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let deadline = Instant::now() + PORT_BUSY_WAIT;
    loop {
        match bind().await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

/// A UDP socket and a TCP listener on the same port, so the SDP answer names one port for
/// every transport.
/// Makes the media server's ICMP port unreachable fail the next `send_to` with
/// `ConnectionRefused`, as it would on a connected socket. The media socket stays unconnected:
/// a connected UDP socket keeps the source address of its first route for good, so after the
/// modem's address changed every send would fail. Best effort; without it a platform that hung
/// up unheard is noticed when its registration goes.
fn report_refusals(udp: &UdpSocket) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let (level, name) = match udp.local_addr() {
            Ok(SocketAddr::V6(_)) => (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
            _ => (libc::IPPROTO_IP, libc::IP_RECVERR),
        };
        let on: libc::c_int = 1;
        // SAFETY: a valid descriptor owned by `udp`, and an int option of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                level,
                name,
                std::ptr::addr_of!(on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "gb28181: media socket will not report refusals");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = udp;
}

async fn bind_media(ip: IpAddr, port: u16) -> Result<(UdpSocket, TcpListener), String> {
    let attempts = if port == 0 { 20 } else { 1 };
    let mut last = String::new();
    for _ in 0..attempts {
        let udp = while_port_busy(|| UdpSocket::bind(SocketAddr::new(ip, port)))
            .await
            .map_err(|e| format!("bind media UDP {ip}:{port}: {e}"))?;
        report_refusals(&udp);
        let bound = udp
            .local_addr()
            .map_err(|e| format!("media socket address: {e}"))?
            .port();
        let tcp = if port == 0 {
            TcpListener::bind(SocketAddr::new(ip, bound)).await
        } else {
            while_port_busy(|| TcpListener::bind(SocketAddr::new(ip, bound))).await
        };
        match tcp {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = format!("bind media TCP {ip}:{bound}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::url::StreamUrl;
    use crate::cloud::UrlType;

    /// A target whose platform is 127.0.0.1:`port`, the device on any free port.
    fn platform_at(port: u16) -> GbTarget {
        GbTarget {
            server_host: "127.0.0.1".into(),
            server_port: port,
            server_id: "34020000002000000001".into(),
            device_id: "34020000001320000001".into(),
            password: "pw".into(),
            local_port: 0,
            channel: "34020000001310000001".into(),
        }
    }

    /// A media session stuck in its connect (a media server whose accept queue is full, so
    /// the SYN goes unanswered) is stopped without waiting on any timer: the SIP side, which
    /// stops it on BYE, goes on with the next request at once. With the clock paused, any
    /// wait would show as time passed.
    #[tokio::test(start_paused = true)]
    async fn a_media_session_stuck_in_connect_stops_at_once() {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let wedged = socket.listen(1).expect("listen");
        let media_server = wedged.local_addr().expect("addr");
        let mut queued = Vec::new();
        for _ in 0..2 {
            queued.push(TcpStream::connect(media_server).await.expect("queued"));
        }
        let platform = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let target = platform_at(platform.local_addr().expect("addr").port());
        let opts = GbOptions {
            bind_ip: "127.0.0.1".parse().expect("ip"),
            ..GbOptions::default()
        };
        let mut shell = Shell::setup(&target, &opts).await.expect("setup");
        let (media_err, _errors) = mpsc::channel(4);
        let plan = MediaPlan {
            call_id: "c1".into(),
            transport: MediaTransport::TcpConnect,
            remote: media_server,
            ssrc: 1,
        };
        shell.start_media(plan, media_err).await;
        // Let the session start its connect.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let t0 = Instant::now();
        shell.stop_media().await;
        assert_eq!(
            Instant::now() - t0,
            Duration::ZERO,
            "the stop waited on a timer"
        );
        assert!(shell.media.is_none());
        drop(queued);
    }

    #[test]
    fn refusals_end_the_session_only_when_they_keep_coming() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = Refusals::default();
        // A media server restarting: refused for 3 s, then quiet, then refused again.
        for ms in (0..3000).step_by(500) {
            assert!(!r.refused(at(ms)));
        }
        assert!(!r.refused(at(6000)), "a gap starts the count again");
        // Refused about once a second (rate-limited ICMP) from 6 s on: over at 11 s.
        for ms in (7000..11_000).step_by(1000) {
            assert!(!r.refused(at(ms)), "{ms}");
        }
        assert!(r.refused(at(11_000)));
    }

    #[test]
    fn target_from_url_keeps_the_password_out_of_debug() {
        let url = StreamUrl::parse(
            UrlType::Gb28181,
            "serverIP=127.0.0.1&serverPort=5060&serverID=34020000002000000001&agentID=34020000001320000001&agentPassword=s3cret&localPort=5070&channel=34020000001310000001",
        )
        .expect("valid");
        let StreamUrl::Gb28181(u) = url else {
            panic!("gb28181 expected")
        };
        let t = GbTarget::from_url(&u).expect("target");
        assert_eq!(t.domain(), "3402000000");
        assert_eq!(t.password, "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(!t.redacted().contains("s3cret"));
    }

    #[tokio::test]
    async fn advertised_address_is_the_route_to_the_platform() {
        let ip = route_ip("127.0.0.1:5060".parse().expect("addr"))
            .await
            .expect("route");
        assert_eq!(ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let (udp, tcp) = bind_media("127.0.0.1".parse().expect("ip"), 0)
            .await
            .expect("bind");
        assert_eq!(
            udp.local_addr().expect("udp").port(),
            tcp.local_addr().expect("tcp").port(),
            "one media port for every transport"
        );
    }

    #[tokio::test]
    async fn unanswered_first_register_fails_and_cancel_stops() {
        // A platform address where nobody answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let target = platform_at(port);
        let opts = GbOptions {
            bind_ip: "127.0.0.1".parse().expect("ip"),
            t1: Duration::from_millis(50),
            transaction_timeout: Duration::from_millis(400),
            ..GbOptions::default()
        };
        let (_tx, rx) = mpsc::channel(4);
        let (ev_tx, mut ev_rx) = mpsc::channel(8);
        tokio::time::timeout(
            Duration::from_secs(5),
            run(
                target.clone(),
                opts.clone(),
                rx,
                ev_tx,
                CancellationToken::new(),
            ),
        )
        .await
        .expect("sink ends");
        match ev_rx.recv().await {
            Some(SinkEvent::Failed { reason }) => {
                assert!(reason.contains("unanswered"), "{reason}");
                assert!(!reason.contains("pw"));
            }
            other => panic!("{other:?}"),
        }

        let (_tx, rx) = mpsc::channel(4);
        let (ev_tx, mut ev_rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let slow = GbOptions {
            transaction_timeout: Duration::from_secs(30),
            ..opts
        };
        let sink = tokio::spawn(run(target, slow, rx, ev_tx, cancel.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        let ev = tokio::time::timeout(Duration::from_secs(2), ev_rx.recv())
            .await
            .expect("event in time");
        assert_eq!(ev, Some(SinkEvent::Stopped));
        tokio::time::timeout(Duration::from_secs(2), sink)
            .await
            .expect("sink returned")
            .expect("no panic");
        drop(silent);
    }
}
