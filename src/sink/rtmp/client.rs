//! The tokio shell around rml_rtmp's sans-IO handshake and client session.
//!
//! It only moves bytes: rml_rtmp decides what to send, this module writes it and feeds back what
//! the server says. The stream type is generic so that RTMPS wraps the TCP stream in TLS
//! without touching the protocol code.
//!
//! While publishing nothing here writes on its own: [`RtmpConnection::encode`] and
//! [`RtmpConnection::on_read`] hand back serialized bytes and the sink's loop decides when they
//! go out, so that a slow server fills a queue the sink bounds instead of blocking it.

use super::amf0::{self, Amf0Error};
use super::chunk::{ChunkError, ChunkReader};
use super::commands;
use super::flv::{end_of_sequence, Outgoing};
use super::target::RtmpTarget;
use super::tls::{self, TlsConfigError};
use crate::media::frame::Codec;
use bytes::Bytes;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::{MessagePayload, RtmpMessage};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;
use rustls::ClientConfig;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The step of a publish that failed; tells an operator where to look (network, server config,
/// stream key, bandwidth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect.
    Connect,
    /// TLS handshake (RTMPS): certificate problems show here.
    Tls,
    /// RTMP handshake (C0–C2/S0–S2).
    Handshake,
    /// `connect` to the application.
    ConnectApp,
    /// `createStream` + `publish`.
    Publish,
    /// Sending media or reading the server while publishing.
    Send,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Handshake => "handshake",
            Phase::ConnectApp => "connect-app",
            Phase::Publish => "publish",
            Phase::Send => "send",
        })
    }
}

/// What went wrong, without the peer and phase (those are in [`RtmpError`]).
#[derive(Debug, Error)]
pub enum RtmpErrorKind {
    /// The step did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("connection closed by server")]
    Closed,
    /// The server sent something rml_rtmp could not parse or did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the request (connect or publish); the text is the server's.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The TLS client could not be configured (unreadable CA file, no roots).
    #[error("{0}")]
    TlsConfig(#[from] TlsConfigError),
    /// The TLS handshake failed: unknown CA, wrong name, expired certificate, no TLS at all.
    #[error("TLS: {0}")]
    Tls(String),
    /// The host name did not resolve to any address.
    #[error("name lookup: {0}")]
    Resolve(#[source] io::Error),
    /// The name lookup did not finish in time.
    #[error("name lookup timed out after {0:?}")]
    ResolveTimeout(Duration),
    /// The host has several addresses and none could be connected to: each with what happened
    /// to it, in the order tried.
    #[error("no address answered: {}", describe_failures(.0))]
    Addresses(Vec<(SocketAddr, RtmpErrorKind)>),
}

fn describe_failures(failures: &[(SocketAddr, RtmpErrorKind)]) -> String {
    failures
        .iter()
        .map(|(addr, kind)| format!("{addr} {kind}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A failed RTMP operation: which peer, which phase, what happened. Never contains the key.
#[derive(Debug, Error)]
#[error("RTMP {phase} to {peer}: {kind}")]
pub struct RtmpError {
    /// `host:port` of the server.
    pub peer: String,
    /// The step that failed.
    pub phase: Phase,
    /// The cause.
    #[source]
    pub kind: RtmpErrorKind,
}

/// What [`RtmpConnection::read_or_write`] did.
#[derive(Debug)]
pub enum IoEvent {
    /// The server sent bytes (0 = closed); pass to [`RtmpConnection::on_read`].
    Read(io::Result<usize>),
    /// The socket took this many bytes of what was pending (0 = closed).
    Wrote(io::Result<usize>),
    /// Buffered bytes were flushed.
    Flushed(io::Result<()>),
}

/// An established RTMP connection in the publishing state.
pub struct RtmpConnection<S> {
    stream: S,
    session: ClientSession,
    peer: String,
    /// Needed again for `FCUnpublish`; never logged.
    stream_key: String,
    filter: InputFilter,
    /// Bytes were written since the last flush (TLS may hold them in its record buffer).
    unflushed: bool,
    /// Whether the stream may hold written bytes until flushed: true unless known otherwise
    /// (plain TCP, whose flush is a no-op that would cost the sink a turn of its loop per
    /// frame).
    writes_buffered: bool,
    read_buf: Vec<u8>,
    send_timeout: Duration,
}

impl<S> fmt::Debug for RtmpConnection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtmpConnection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

const READ_BUF: usize = 16 * 1024;

/// The chunk size the client announces after `connect`; rml_rtmp's default, repeated here
/// because the commands of [`commands`] are chunked with it.
fn chunk_size() -> u32 {
    ClientSessionConfig::new().chunk_size
}

/// How to open the transport under RTMP: plain TCP, or TLS with a prepared configuration.
///
/// Built once per sink so the system certificate store is read once, not on every reconnect.
#[derive(Clone, Default)]
pub struct Connector {
    tls: Option<Arc<ClientConfig>>,
    insecure: bool,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Connector {
    /// Plain TCP only; an `rtmps://` target is refused with a TLS configuration error.
    pub fn plain() -> Self {
        Self::default()
    }

    /// TLS-capable: `ca_file` is added to the system roots (see [`tls::client_config`]);
    /// `insecure_skip_verify` accepts any certificate and is logged on every connect.
    pub fn new(
        ca_file: Option<&std::path::Path>,
        insecure_skip_verify: bool,
    ) -> Result<Self, TlsConfigError> {
        Ok(Self {
            tls: Some(tls::client_config(ca_file, insecure_skip_verify)?),
            insecure: insecure_skip_verify,
        })
    }

    /// A connector over a ready-made rustls configuration (tests, embedders with own roots).
    pub fn with_config(config: Arc<ClientConfig>) -> Self {
        Self {
            tls: Some(config),
            insecure: false,
        }
    }
}

/// The byte stream under RTMP: TCP, or TLS over TCP.
#[derive(Debug)]
pub enum RtmpStream {
    /// `rtmp://`.
    Plain(TcpStream),
    /// `rtmps://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for RtmpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RtmpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            RtmpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RtmpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RtmpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            RtmpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RtmpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            RtmpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RtmpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            RtmpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens TCP (and TLS for `rtmps://`) to the target and runs handshake, connect and publish;
/// each phase gets `step_timeout`. Writes during these steps are bounded by `send_timeout`.
pub async fn connect(
    target: &RtmpTarget,
    connector: &Connector,
    step_timeout: Duration,
    send_timeout: Duration,
) -> Result<RtmpConnection<RtmpStream>, RtmpError> {
    let peer = target.peer();
    let err = |phase, kind| RtmpError {
        peer: peer.clone(),
        phase,
        kind,
    };
    let tls_config = match (target.tls, &connector.tls) {
        (false, _) => None,
        (true, Some(config)) => Some(config.clone()),
        (true, None) => {
            return Err(err(
                Phase::Tls,
                RtmpErrorKind::Tls("rtmps:// needs a TLS-capable connector".into()),
            ))
        }
    };
    let tcp = open_tcp(&target.host, target.port, step_timeout)
        .await
        .map_err(|kind| err(Phase::Connect, kind))?;
    // Frames are written whole; Nagle would only add latency to the last chunk of each.
    let _ = tcp.set_nodelay(true);
    bound_unsent(&tcp, &peer);
    let stream = match tls_config {
        None => RtmpStream::Plain(tcp),
        Some(config) => {
            if connector.insecure {
                tracing::warn!(
                    peer = %peer,
                    "RTMPS certificate verification is disabled (insecure_skip_verify)"
                );
            }
            let name = tls::server_name(&target.host)
                .map_err(|e| err(Phase::Tls, RtmpErrorKind::Tls(e)))?;
            let tls = timeout(step_timeout, TlsConnector::from(config).connect(name, tcp))
                .await
                .map_err(|_| err(Phase::Tls, RtmpErrorKind::Timeout(step_timeout)))?
                .map_err(|e| err(Phase::Tls, RtmpErrorKind::Tls(e.to_string())))?;
            RtmpStream::Tls(Box::new(tls))
        }
    };
    let plain = matches!(stream, RtmpStream::Plain(_));
    let mut conn =
        RtmpConnection::establish(stream, target, peer.clone(), step_timeout, send_timeout).await?;
    conn.writes_buffered = !plain;
    Ok(conn)
}

/// Resolves `host` and connects to the first of its addresses that answers. The lookup gets
/// `step_timeout` of its own, the connects share another (see [`connect_any`]), so that a slow
/// resolver does not eat the time of the connects.
async fn open_tcp(
    host: &str,
    port: u16,
    step_timeout: Duration,
) -> Result<TcpStream, RtmpErrorKind> {
    // An address literal is parsed, not looked up.
    let addrs: Vec<SocketAddr> = timeout(step_timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| RtmpErrorKind::ResolveTimeout(step_timeout))?
        .map_err(RtmpErrorKind::Resolve)?
        .collect();
    if addrs.is_empty() {
        return Err(RtmpErrorKind::Resolve(io::Error::new(
            io::ErrorKind::NotFound,
            "no address",
        )));
    }
    connect_any(&interleave_families(addrs), step_timeout).await
}

/// Tries `addrs` one after the other until one connects, all within `budget`: each address
/// gets an equal share of what is left, so that one whose packets vanish (an IPv6 route that
/// is blackholed on a mobile network) costs its share and not the whole budget, and an address
/// that fails at once leaves its time to the ones after it.
async fn connect_any(addrs: &[SocketAddr], budget: Duration) -> Result<TcpStream, RtmpErrorKind> {
    let deadline = Instant::now() + budget;
    let mut failures = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        let kind = match timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => RtmpErrorKind::Io(e),
            Err(_) => RtmpErrorKind::Timeout(share),
        };
        if i + 1 < addrs.len() {
            tracing::debug!(%addr, error = %kind, "rtmp connect failed, trying the next address");
        }
        failures.push((*addr, kind));
    }
    // One address: its own error, as plain as a connect to it always was.
    if failures.len() == 1 {
        let (_, kind) = failures.remove(0);
        return Err(kind);
    }
    Err(RtmpErrorKind::Addresses(failures))
}

/// Orders addresses so that the families alternate, starting with the resolver's first choice
/// (RFC 8305 §4): a family that does not work then costs one address's share before the other
/// family is tried, not all of its addresses' shares.
fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first_v6) = addrs.first().map(SocketAddr::is_ipv6) else {
        return addrs;
    };
    let (preferred, other): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(preferred.len() + other.len());
    let (mut preferred, mut other) = (preferred.into_iter(), other.into_iter());
    loop {
        match (preferred.next(), other.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// The unsent bytes the kernel may hold for an RTMP socket (`TCP_NOTSENT_LOWAT`).
///
/// Unbounded, Linux grows the send buffer of a connection on a slowing path to several MiB:
/// tens of seconds of video that neither the sink's queue nor its bandwidth estimate can see,
/// so nothing is dropped and the bitrate is not lowered while the picture falls ever further
/// behind. Bounded, the socket stops taking bytes once this much waits unsent, the backlog
/// builds in the sink's queue instead, and the sink drops and adapts. 128 KiB still keeps a 4G
/// uplink busy between two turns of the sink's loop; bytes already in flight are bounded by the
/// congestion window, not by this.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets [`NOTSENT_LOWAT`] on `tcp` (under TLS too: the bound is on the TCP socket). Best
/// effort: a kernel without the option (before Linux 3.12) streams as before.
fn bound_unsent(tcp: &TcpStream, peer: &str) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let value = libc::c_int::try_from(NOTSENT_LOWAT).unwrap_or(libc::c_int::MAX);
        // SAFETY: the descriptor belongs to `tcp`, which outlives the call, and the option
        // value is a c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&raw const value).cast::<libc::c_void>(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            tracing::debug!(peer, %error, "TCP_NOTSENT_LOWAT not set: the kernel may buffer more");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, peer);
}

impl<S: AsyncRead + AsyncWrite + Unpin> RtmpConnection<S> {
    /// Runs the RTMP handshake, `connect` (with tcUrl) and `publish` (live) over an already
    /// connected stream; `peer` names the server in errors.
    pub async fn establish(
        stream: S,
        target: &RtmpTarget,
        peer: String,
        step_timeout: Duration,
        send_timeout: Duration,
    ) -> Result<Self, RtmpError> {
        let mut config = ClientSessionConfig::new();
        config.tc_url = Some(target.tc_url.clone());
        let (session, initial) = ClientSession::new(config).map_err(|e| RtmpError {
            peer: peer.clone(),
            phase: Phase::Handshake,
            kind: RtmpErrorKind::Protocol(e.to_string()),
        })?;
        let mut conn = Self {
            stream,
            session,
            peer,
            stream_key: target.stream_key.clone(),
            unflushed: false,
            writes_buffered: true,
            filter: InputFilter::default(),
            read_buf: vec![0; READ_BUF],
            send_timeout,
        };

        let leftover = conn.handshake(step_timeout).await?;
        conn.apply(Phase::ConnectApp, Ok::<_, String>(initial))
            .await?;

        let request = conn.session.request_connection(target.app.clone());
        conn.apply(Phase::ConnectApp, request.map(|r| vec![r]))
            .await?;
        let events = conn.feed(Phase::ConnectApp, &leftover).await?;
        conn.wait_for(Phase::ConnectApp, step_timeout, events, |ev| match ev {
            ClientSessionEvent::ConnectionRequestAccepted => Some(Ok(())),
            ClientSessionEvent::ConnectionRequestRejected { description } => {
                Some(Err(description.clone()))
            }
            _ => None,
        })
        .await?;

        // Set Chunk Size went out with the connect result above, so these use the new size.
        let before = commands::before_publish(&target.stream_key, chunk_size());
        conn.write(Phase::Publish, &before).await?;
        let request = conn
            .session
            .request_publishing(target.stream_key.clone(), PublishRequestType::Live);
        conn.apply(Phase::Publish, request.map(|r| vec![r])).await?;
        conn.wait_for(Phase::Publish, step_timeout, Vec::new(), |ev| match ev {
            ClientSessionEvent::PublishRequestAccepted => Some(Ok(())),
            ClientSessionEvent::UnhandleableOnStatusCode { code } if is_failure_code(code) => {
                Some(Err(code.clone()))
            }
            _ => None,
        })
        .await?;
        Ok(conn)
    }

    /// `host:port` of the server.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Reads whatever the server sent next into the internal buffer and returns its length
    /// (0 = closed). Cancel-safe, so it can sit in a `select!` beside the frame channel; pass
    /// the result to [`on_read`](Self::on_read).
    pub async fn read(&mut self) -> std::io::Result<usize> {
        self.stream.read(&mut self.read_buf).await
    }

    /// Processes bytes returned by [`read`](Self::read): turns a server-side close or stream
    /// error into an error, and returns what must be sent back (acknowledgements, ping
    /// responses), already serialized. The caller queues those bytes behind any partly written
    /// packet: writing them at once could split a chunk in two.
    pub fn on_read(&mut self, read: io::Result<usize>) -> Result<Option<Bytes>, RtmpError> {
        let n = read.map_err(|e| self.error(Phase::Send, e.into()))?;
        if n == 0 {
            return Err(self.error(Phase::Send, RtmpErrorKind::Closed));
        }
        let results = handle_input(&mut self.filter, &mut self.session, &self.read_buf[..n]);
        let (out, events) = self.split(Phase::Send, results)?;
        for event in events {
            match event {
                ClientSessionEvent::UnhandleableOnStatusCode { code } if is_failure_code(&code) => {
                    return Err(self.error(Phase::Send, RtmpErrorKind::Rejected(code)));
                }
                other => {
                    tracing::trace!(peer = %self.peer, event = event_name(&other), "rtmp event")
                }
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }

    /// Serializes one item produced by the tagger into RTMP chunks. The bytes must be sent in
    /// the order `encode` was called (chunk headers are compressed against the previous one).
    pub fn encode(&mut self, item: &Outgoing) -> Result<Bytes, RtmpError> {
        let result = match item {
            Outgoing::Metadata(meta) => self.session.publish_metadata(&meta.to_rml()),
            Outgoing::Video { timestamp_ms, body } => self.session.publish_video_data(
                body.clone(),
                RtmpTimestamp::new(*timestamp_ms),
                false,
            ),
        };
        match result {
            // The packet's buffer becomes the bytes to send: a frame is copied once (into the
            // chunks), not again into a collecting buffer.
            Ok(ClientSessionResult::OutboundResponse(packet)) => Ok(Bytes::from(packet.bytes)),
            Ok(_) => Ok(Bytes::new()),
            Err(e) => Err(self.error(Phase::Send, RtmpErrorKind::Protocol(e.to_string()))),
        }
    }

    /// Waits until the server sent something or the socket took some of `pending`, whichever
    /// comes first; with nothing pending it flushes what an earlier write left buffered (TLS).
    /// Cancel-safe: an event that did not complete read or wrote nothing. Reading and writing
    /// are polled together so that a server that sends while the sink writes is never ignored.
    pub async fn read_or_write(&mut self, pending: Option<&[u8]>) -> IoEvent {
        std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut self.read_buf);
            if let Poll::Ready(r) = Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                return Poll::Ready(IoEvent::Read(r.map(|()| buf.filled().len())));
            }
            match pending {
                Some(bytes) => {
                    if let Poll::Ready(r) = Pin::new(&mut self.stream).poll_write(cx, bytes) {
                        self.unflushed = self.writes_buffered;
                        return Poll::Ready(IoEvent::Wrote(r));
                    }
                }
                None if self.unflushed => {
                    if let Poll::Ready(r) = Pin::new(&mut self.stream).poll_flush(cx) {
                        self.unflushed = false;
                        return Poll::Ready(IoEvent::Flushed(r));
                    }
                }
                None => {}
            }
            Poll::Pending
        })
        .await
    }

    /// Writes as much of `bytes` as the socket takes now. Cancel-safe, so it can sit in a
    /// `select!`: a write that did not complete wrote nothing.
    pub async fn write_some(&mut self, bytes: &[u8]) -> Result<usize, RtmpError> {
        match self.stream.write(bytes).await {
            Ok(0) => Err(self.error(Phase::Send, RtmpErrorKind::Closed)),
            Ok(n) => Ok(n),
            Err(e) => Err(self.error(Phase::Send, e.into())),
        }
    }

    /// Sends one item produced by the tagger and waits until it is written (bounded by the
    /// send timeout). For callers that do not queue; the sink's loop uses
    /// [`encode`](Self::encode) and [`write_some`](Self::write_some).
    pub async fn send(&mut self, item: Outgoing) -> Result<(), RtmpError> {
        let bytes = self.encode(&item)?;
        self.write(Phase::Send, &bytes).await
    }

    /// Writes all of `bytes`, bounded by the send timeout (for a graceful stop).
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), RtmpError> {
        self.write(Phase::Send, bytes).await
    }

    /// Ends the publish politely: finishes `unfinished` (the rest of a partly written packet,
    /// without which the server could not parse what follows), end-of-sequence, `FCUnpublish`,
    /// `deleteStream`, then closes the socket. Errors are ignored: the connection is going away.
    pub async fn close(mut self, last_timestamp_ms: u32, codec: Codec, unfinished: &[u8]) {
        if !unfinished.is_empty() && self.write(Phase::Send, unfinished).await.is_err() {
            return;
        }
        let eos = self.session.publish_video_data(
            end_of_sequence(codec),
            RtmpTimestamp::new(last_timestamp_ms),
            false,
        );
        let _ = self.apply(Phase::Send, eos.map(|r| vec![r])).await;
        let unpublish = commands::before_delete(&self.stream_key, chunk_size());
        let _ = self.write(Phase::Send, &unpublish).await;
        let stop = self.session.stop_publishing();
        let _ = self.apply(Phase::Send, stop).await;
        let _ = timeout(self.send_timeout, self.stream.shutdown()).await;
    }

    async fn handshake(&mut self, step_timeout: Duration) -> Result<Vec<u8>, RtmpError> {
        let deadline = Instant::now() + step_timeout;
        let mut hs = Handshake::new(PeerType::Client);
        let c0c1 = hs
            .generate_outbound_p0_and_p1()
            .map_err(|e| self.error(Phase::Handshake, RtmpErrorKind::Protocol(e.to_string())))?;
        self.write(Phase::Handshake, &c0c1).await?;
        loop {
            let n = self.read_until(Phase::Handshake, deadline).await?;
            let data = self.read_buf[..n].to_vec();
            let processed = catch_unwind(AssertUnwindSafe(|| {
                hs.process_bytes(&data).map_err(|e| e.to_string())
            }))
            .unwrap_or_else(|_| Err(PARSER_PANIC.to_string()));
            match processed {
                Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                    self.write(Phase::Handshake, &response_bytes).await?;
                }
                Ok(HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                }) => {
                    self.write(Phase::Handshake, &response_bytes).await?;
                    return Ok(remaining_bytes);
                }
                Err(e) => return Err(self.error(Phase::Handshake, RtmpErrorKind::Protocol(e))),
            }
        }
    }

    /// Reads and feeds the session until `decide` accepts or rejects an event, or time runs out.
    async fn wait_for(
        &mut self,
        phase: Phase,
        step_timeout: Duration,
        mut pending: Vec<ClientSessionEvent>,
        decide: impl Fn(&ClientSessionEvent) -> Option<Result<(), String>>,
    ) -> Result<(), RtmpError> {
        let deadline = Instant::now() + step_timeout;
        loop {
            for event in pending.drain(..) {
                match decide(&event) {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(reason)) => {
                        return Err(self.error(phase, RtmpErrorKind::Rejected(reason)))
                    }
                    None => {
                        tracing::trace!(peer = %self.peer, event = event_name(&event), "rtmp event")
                    }
                }
            }
            let n = self.read_until(phase, deadline).await?;
            let data = self.read_buf[..n].to_vec();
            pending = self.feed(phase, &data).await?;
        }
    }

    async fn read_until(&mut self, phase: Phase, deadline: Instant) -> Result<usize, RtmpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout_at(deadline, self.stream.read(&mut self.read_buf)).await {
            Err(_) => Err(self.error(phase, RtmpErrorKind::Timeout(left))),
            Ok(Err(e)) => Err(self.error(phase, e.into())),
            Ok(Ok(0)) => Err(self.error(phase, RtmpErrorKind::Closed)),
            Ok(Ok(n)) => Ok(n),
        }
    }

    /// Hands server bytes to the session, writes its responses, returns its events.
    async fn feed(
        &mut self,
        phase: Phase,
        data: &[u8],
    ) -> Result<Vec<ClientSessionEvent>, RtmpError> {
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let results = handle_input(&mut self.filter, &mut self.session, data);
        self.apply(phase, results).await
    }

    /// Writes every outbound packet in order and collects raised events.
    async fn apply<E: fmt::Display>(
        &mut self,
        phase: Phase,
        results: Result<Vec<ClientSessionResult>, E>,
    ) -> Result<Vec<ClientSessionEvent>, RtmpError> {
        let (out, events) = self.split(phase, results)?;
        if !out.is_empty() {
            self.write(phase, &out).await?;
        }
        Ok(events)
    }

    /// Separates the session's results into bytes to send (in order) and raised events.
    fn split<E: fmt::Display>(
        &self,
        phase: Phase,
        results: Result<Vec<ClientSessionResult>, E>,
    ) -> Result<(Vec<u8>, Vec<ClientSessionEvent>), RtmpError> {
        let results =
            results.map_err(|e| self.error(phase, RtmpErrorKind::Protocol(e.to_string())))?;
        let mut out = Vec::new();
        let mut events = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(packet) => {
                    out.extend_from_slice(&packet.bytes)
                }
                ClientSessionResult::RaisedEvent(ev) => events.push(ev),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok((out, events))
    }

    async fn write(&mut self, phase: Phase, bytes: &[u8]) -> Result<(), RtmpError> {
        match timeout(self.send_timeout, self.stream.write_all(bytes)).await {
            Err(_) => Err(self.error(phase, RtmpErrorKind::Timeout(self.send_timeout))),
            Ok(Err(e)) => Err(self.error(phase, e.into())),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// An error naming this connection's peer.
    pub fn error(&self, phase: Phase, kind: RtmpErrorKind) -> RtmpError {
        RtmpError {
            peer: self.peer.clone(),
            phase,
            kind,
        }
    }
}

/// Sits between the socket and rml_rtmp's session and passes on only messages rml_rtmp can
/// parse.
///
/// The server's chunk stream is read by our own [`ChunkReader`], which checks every header
/// (rml_rtmp's deserializer overflows on a continuation chunk that shrinks the message length).
/// rml_rtmp 0.8 also panics on some valid server messages (an AMF0 command with fewer than three
/// values, such as the bare `onFCPublish` that `ffmpeg -listen` answers FCPublish with) and
/// would lose the rest of the input with it. So every whole message is parsed first, inside
/// `catch_unwind`; what fails is skipped, the rest is re-chunked by rml_rtmp's serializer with
/// uncompressed headers (always valid for the session's deserializer) and handed on.
///
/// AMF0 nested too deeply for rml_amf0's recursion is refused before either parse: it would
/// overflow the stack, which no `catch_unwind` survives (see [`amf0`]).
pub struct InputFilter {
    reader: ChunkReader,
    ser: ChunkSerializer,
    skipped: u64,
}

impl Default for InputFilter {
    fn default() -> Self {
        Self {
            reader: ChunkReader::default(),
            ser: ChunkSerializer::new(),
            skipped: 0,
        }
    }
}

/// Why the server's input cannot be handed on; the connection cannot go on after one.
#[derive(Debug, Error)]
pub enum FilterError {
    /// The chunk stream itself is broken.
    #[error("invalid RTMP chunk from server: {0}")]
    Chunk(#[from] ChunkError),
    /// A command or data message holds AMF0 that rml_amf0 cannot parse without overflowing
    /// the stack.
    #[error("server message of type {type_id}: {source}")]
    Amf0 {
        /// RTMP message type id.
        type_id: u8,
        /// What is wrong with its AMF0.
        source: Amf0Error,
    },
    /// rml_rtmp's serializer refused to re-chunk a message.
    #[error("cannot re-chunk server message: {0}")]
    Rechunk(String),
    /// rml_rtmp's serializer refused the server's chunk size.
    #[error("invalid chunk size from server: {0}")]
    ChunkSize(String),
}

impl InputFilter {
    /// The bytes to give the session for `data` received from the server. An error means the
    /// connection cannot go on: the chunk stream is broken or a message is hostile.
    pub fn filter(&mut self, data: &[u8]) -> Result<Vec<u8>, FilterError> {
        let mut out = Vec::new();
        self.reader.push(data);
        loop {
            let Some(message) = self.reader.next_message()? else {
                return Ok(out);
            };
            // Before anything hands the body to rml_amf0, whose recursion has no bound.
            if let Some(body) = amf0::amf0_body(message.type_id, &message.payload) {
                amf0::check_depth(body, amf0::MAX_DEPTH).map_err(|source| FilterError::Amf0 {
                    type_id: message.type_id,
                    source,
                })?;
            }
            // The known panic (a command of under three AMF0 values) is screened out here so it
            // never reaches the panic hook's log line; catch_unwind stays for the unknown ones.
            if message.type_id == AMF0_COMMAND_TYPE && !has_command_header(&message.payload) {
                self.skipped += 1;
                tracing::debug!(
                    skipped = self.skipped,
                    "ignoring a short AMF0 command from the server"
                );
                continue;
            }
            let payload = MessagePayload {
                timestamp: RtmpTimestamp::new(message.timestamp),
                type_id: message.type_id,
                message_stream_id: message.stream_id,
                data: message.payload,
            };
            let parsed = catch_unwind(AssertUnwindSafe(|| payload.to_rtmp_message()));
            let set_chunk_size = match parsed {
                Ok(Ok(RtmpMessage::SetChunkSize { .. })) => true,
                Ok(Ok(_)) => false,
                Ok(Err(_)) | Err(_) => {
                    self.skipped += 1;
                    tracing::debug!(
                        type_id = payload.type_id,
                        skipped = self.skipped,
                        "ignoring a server message rml_rtmp cannot parse"
                    );
                    continue;
                }
            };
            let packet = self
                .ser
                .serialize(&payload, true, false)
                .map_err(|e| FilterError::Rechunk(e.to_string()))?;
            out.extend_from_slice(&packet.bytes);
            if set_chunk_size {
                // The session's deserializer follows the server's chunk size from here on, so
                // the re-chunking does too; the reader has checked the size.
                let size = self.reader.chunk_size() as u32;
                self.ser
                    .set_max_chunk_size(size, RtmpTimestamp::new(0))
                    .map_err(|e| FilterError::ChunkSize(e.to_string()))?;
            }
        }
    }

    /// Server messages skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// RTMP message type of an AMF0 command.
const AMF0_COMMAND_TYPE: u8 = 20;

/// True when an AMF0 command body holds at least name, transaction id and command object.
fn has_command_header(data: &[u8]) -> bool {
    let mut cursor = std::io::Cursor::new(data);
    rml_rtmp::rml_amf0::deserialize(&mut cursor).is_ok_and(|values| values.len() >= 3)
}

/// `session.handle_input` behind the [`InputFilter`], with any remaining panic inside rml_rtmp
/// turned into a protocol error: no server may bring the daemon down.
fn handle_input(
    filter: &mut InputFilter,
    session: &mut ClientSession,
    data: &[u8],
) -> Result<Vec<ClientSessionResult>, String> {
    let clean = filter.filter(data).map_err(|e| e.to_string())?;
    if clean.is_empty() {
        return Ok(Vec::new());
    }
    catch_unwind(AssertUnwindSafe(|| {
        session.handle_input(&clean).map_err(|e| e.to_string())
    }))
    .unwrap_or_else(|_| Err(PARSER_PANIC.to_string()))
}

/// The error for a server input that made rml_rtmp panic.
const PARSER_PANIC: &str = "server input made the RTMP parser fail";

/// The kind of a session event, for logs: event payloads are server text that may echo the
/// stream name (i.e. the key), so they are never logged.
fn event_name(event: &ClientSessionEvent) -> &'static str {
    match event {
        ClientSessionEvent::ConnectionRequestAccepted => "connection accepted",
        ClientSessionEvent::ConnectionRequestRejected { .. } => "connection rejected",
        ClientSessionEvent::PlaybackRequestAccepted => "playback accepted",
        ClientSessionEvent::PublishRequestAccepted => "publish accepted",
        ClientSessionEvent::StreamMetadataReceived { .. } => "metadata",
        ClientSessionEvent::VideoDataReceived { .. } => "video data",
        ClientSessionEvent::AudioDataReceived { .. } => "audio data",
        ClientSessionEvent::UnhandleableAmf0Command { .. } => "unhandled AMF0 command",
        ClientSessionEvent::UnknownTransactionResultReceived { .. } => "unknown transaction result",
        ClientSessionEvent::UnhandleableOnStatusCode { .. } => "onStatus",
        ClientSessionEvent::AcknowledgementReceived { .. } => "acknowledgement",
        ClientSessionEvent::PingResponseReceived { .. } => "ping response",
    }
}

/// `onStatus` codes that mean the publish is refused or over (e.g. `NetStream.Publish.BadName`,
/// `NetStream.Publish.Denied`, `NetConnection.Connect.Closed`).
fn is_failure_code(code: &str) -> bool {
    [
        "Failed",
        "BadName",
        "Denied",
        "Rejected",
        "Error",
        "Closed",
        "Unpublish",
    ]
    .iter()
    .any(|w| code.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AMF3-flagged command (type 17), which rml_rtmp parses as AMF0 after its leading zero,
    /// is depth-checked like an AMF0 one.
    #[test]
    fn the_filter_refuses_deeply_nested_amf_in_any_amf_message_type() {
        let mut body = vec![0u8, 0x02, 0, 1, b'x', 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for _ in 0..=amf0::MAX_DEPTH {
            body.push(0x0a);
            body.extend_from_slice(&1u32.to_be_bytes());
        }
        let payload = MessagePayload {
            timestamp: RtmpTimestamp::new(0),
            type_id: 17,
            message_stream_id: 0,
            data: Bytes::from(body),
        };
        let chunks = ChunkSerializer::new()
            .serialize(&payload, false, false)
            .expect("chunk")
            .bytes;
        let e = InputFilter::default()
            .filter(&chunks)
            .expect_err("too deep");
        assert!(
            matches!(
                e,
                FilterError::Amf0 {
                    type_id: 17,
                    source: Amf0Error::TooDeep { .. }
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("type 17"), "{e}");
    }

    /// A listening address whose SYNs go unanswered: its accept queue is full (Linux then
    /// drops SYNs instead of refusing them), as a blackholed route looks to a client. Returned
    /// with the listener and the connections that fill it, to be held.
    fn blackholed() -> (
        SocketAddr,
        tokio::net::TcpListener,
        Vec<std::net::TcpStream>,
    ) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut held = Vec::new();
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => held.push(s),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return (addr, listener, held),
                Err(e) => panic!("filling the accept queue: {e}"),
            }
        }
        panic!("the accept queue never filled");
    }

    fn closed_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn an_address_that_never_answers_leaves_time_for_the_next() {
        let (black, _listener, _held) = blackholed();
        let good = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let good_addr = good.local_addr().expect("addr");
        let tcp = connect_any(&[black, good_addr], Duration::from_secs(2))
            .await
            .expect("the second address connects");
        assert_eq!(tcp.peer_addr().expect("peer"), good_addr);
    }

    #[tokio::test]
    async fn every_address_failing_names_each_with_its_error() {
        let (black, _listener, _held) = blackholed();
        let closed = closed_addr();
        let e = connect_any(&[closed, black], Duration::from_millis(600))
            .await
            .expect_err("nothing answers");
        let RtmpErrorKind::Addresses(failures) = &e else {
            panic!("{e}");
        };
        assert!(matches!(failures[0], (a, RtmpErrorKind::Io(_)) if a == closed));
        assert!(matches!(failures[1], (a, RtmpErrorKind::Timeout(_)) if a == black));
        let text = e.to_string();
        assert!(text.contains(&closed.to_string()), "{text}");
        assert!(text.contains(&format!("{black} timed out")), "{text}");
        // A single address keeps the plain error of a connect.
        let e = connect_any(&[closed], Duration::from_secs(1))
            .await
            .expect_err("refused");
        assert!(matches!(e, RtmpErrorKind::Io(_)), "{e}");
    }

    #[test]
    fn address_families_alternate_from_the_first() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let got = interleave_families(vec![
            a("[2001:db8::1]:1935"),
            a("[2001:db8::2]:1935"),
            a("[2001:db8::3]:1935"),
            a("192.0.2.1:1935"),
            a("192.0.2.2:1935"),
        ]);
        assert_eq!(
            got,
            [
                a("[2001:db8::1]:1935"),
                a("192.0.2.1:1935"),
                a("[2001:db8::2]:1935"),
                a("192.0.2.2:1935"),
                a("[2001:db8::3]:1935"),
            ]
        );
        assert_eq!(
            interleave_families(vec![a("192.0.2.1:1"), a("[::1]:1")]),
            [a("192.0.2.1:1"), a("[::1]:1")]
        );
        assert!(interleave_families(Vec::new()).is_empty());
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_before_connecting() {
        let good = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = good.local_addr().expect("addr").port();
        let tcp = open_tcp("localhost", port, Duration::from_secs(2))
            .await
            .expect("connects");
        assert_eq!(tcp.peer_addr().expect("peer").port(), port);
    }

    #[test]
    fn failure_codes() {
        assert!(is_failure_code("NetStream.Publish.BadName"));
        assert!(is_failure_code("NetConnection.Connect.Closed"));
        assert!(!is_failure_code("NetStream.Publish.Start"));
        assert!(!is_failure_code("NetStream.Play.PublishNotify"));
    }

    #[test]
    fn error_display_names_peer_and_phase_not_key() {
        let e = RtmpError {
            peer: "127.0.0.1:1935".into(),
            phase: Phase::Publish,
            kind: RtmpErrorKind::Rejected("NetStream.Publish.BadName".into()),
        };
        assert_eq!(
            e.to_string(),
            "RTMP publish to 127.0.0.1:1935: rejected: NetStream.Publish.BadName"
        );
    }

    #[tokio::test]
    async fn rtmps_without_tls_connector_is_refused_clearly() {
        let t = RtmpTarget::parse("rtmps://127.0.0.1:1/live/key").expect("valid");
        let e = connect(
            &t,
            &Connector::plain(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        .expect_err("tls");
        assert!(matches!(e.kind, RtmpErrorKind::Tls(_)));
        assert_eq!(e.phase, Phase::Tls);
    }

    #[tokio::test]
    async fn plain_tcp_server_fails_the_tls_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&[3; 1537]).await;
            }
        });
        let t = RtmpTarget::parse(&format!("rtmps://127.0.0.1:{port}/live/key")).expect("valid");
        let connector = Connector::new(None, true).expect("insecure connector");
        let e = connect(
            &t,
            &connector,
            Duration::from_secs(2),
            Duration::from_secs(1),
        )
        .await
        .expect_err("not TLS");
        assert_eq!(e.phase, Phase::Tls, "{e}");
    }

    #[tokio::test]
    async fn handshake_times_out_on_a_silent_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hold = tokio::spawn(async move { listener.accept().await });
        let t = RtmpTarget::parse(&format!("rtmp://127.0.0.1:{port}/live/key")).expect("valid");
        let e = connect(
            &t,
            &Connector::plain(),
            Duration::from_millis(200),
            Duration::from_secs(1),
        )
        .await
        .expect_err("silent");
        assert_eq!(e.phase, Phase::Handshake);
        assert!(matches!(e.kind, RtmpErrorKind::Timeout(_)));
        hold.abort();
    }

    #[tokio::test]
    async fn closed_during_handshake_is_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 16];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"garbage").await;
            }
        });
        let t = RtmpTarget::parse(&format!("rtmp://127.0.0.1:{port}/live/key")).expect("valid");
        let e = connect(
            &t,
            &Connector::plain(),
            Duration::from_secs(2),
            Duration::from_secs(1),
        )
        .await
        .expect_err("closed");
        assert_eq!(e.phase, Phase::Handshake);
        assert!(!e.to_string().contains("key"));
    }
}
