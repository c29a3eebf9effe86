//! The tokio shell around rml_rtmp's sans-IO handshake and client session.
//!
//! It only moves bytes: rml_rtmp decides what to send, this module writes it and feeds back what
//! the server says. The stream type is generic so that RTMPS can wrap the TCP stream in TLS
//! without touching the protocol code.

use super::flv::{avc_end_of_sequence, Outgoing};
use super::target::RtmpTarget;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionError, ClientSessionEvent,
    ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;
use std::fmt;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// The step of a publish that failed; tells an operator where to look (network, server config,
/// stream key, bandwidth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect.
    Connect,
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
    /// RTMPS was asked for but is not implemented yet.
    #[error("RTMPS is not supported yet")]
    TlsUnsupported,
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

/// An established RTMP connection in the publishing state.
pub struct RtmpConnection<S> {
    stream: S,
    session: ClientSession,
    peer: String,
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

/// Opens TCP to the target and runs handshake, connect and publish; each phase gets
/// `step_timeout`. Writes while publishing are bounded by `send_timeout`.
pub async fn connect(
    target: &RtmpTarget,
    step_timeout: Duration,
    send_timeout: Duration,
) -> Result<RtmpConnection<TcpStream>, RtmpError> {
    let peer = target.peer();
    let err = |phase, kind| RtmpError {
        peer: peer.clone(),
        phase,
        kind,
    };
    if target.tls {
        return Err(err(Phase::Connect, RtmpErrorKind::TlsUnsupported));
    }
    let tcp = timeout(
        step_timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| err(Phase::Connect, RtmpErrorKind::Timeout(step_timeout)))?
    .map_err(|e| err(Phase::Connect, e.into()))?;
    // Frames are written whole; Nagle would only add latency to the last chunk of each.
    let _ = tcp.set_nodelay(true);
    RtmpConnection::establish(tcp, target, peer.clone(), step_timeout, send_timeout).await
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
            read_buf: vec![0; READ_BUF],
            send_timeout,
        };

        let leftover = conn.handshake(step_timeout).await?;
        conn.apply(Phase::ConnectApp, Ok(initial)).await?;

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

    /// Processes bytes returned by [`read`](Self::read): answers pings, sends acknowledgements
    /// and turns a server-side close or stream error into an error.
    pub async fn on_read(&mut self, read: std::io::Result<usize>) -> Result<(), RtmpError> {
        let n = read.map_err(|e| self.error(Phase::Send, e.into()))?;
        if n == 0 {
            return Err(self.error(Phase::Send, RtmpErrorKind::Closed));
        }
        let data = self.read_buf[..n].to_vec();
        for event in self.feed(Phase::Send, &data).await? {
            match event {
                ClientSessionEvent::UnhandleableOnStatusCode { code } if is_failure_code(&code) => {
                    return Err(self.error(Phase::Send, RtmpErrorKind::Rejected(code)));
                }
                other => {
                    tracing::trace!(peer = %self.peer, event = event_name(&other), "rtmp event")
                }
            }
        }
        Ok(())
    }

    /// Sends one item produced by the tagger.
    pub async fn send(&mut self, item: Outgoing) -> Result<(), RtmpError> {
        let result = match item {
            Outgoing::Metadata(meta) => self.session.publish_metadata(&meta.to_rml()),
            Outgoing::Video { timestamp_ms, body } => {
                self.session
                    .publish_video_data(body, RtmpTimestamp::new(timestamp_ms), false)
            }
        };
        self.apply(Phase::Send, result.map(|r| vec![r])).await?;
        Ok(())
    }

    /// Ends the publish politely: end-of-sequence, `deleteStream` (rml_rtmp has no
    /// FCUnpublish), then closes the socket. Errors are ignored: the connection is going away.
    pub async fn close(mut self, last_timestamp_ms: u32) {
        let eos = self.session.publish_video_data(
            avc_end_of_sequence(),
            RtmpTimestamp::new(last_timestamp_ms),
            false,
        );
        let _ = self.apply(Phase::Send, eos.map(|r| vec![r])).await;
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
            match hs.process_bytes(&data) {
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
                Err(e) => {
                    return Err(self.error(Phase::Handshake, RtmpErrorKind::Protocol(e.to_string())))
                }
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
        let results = self.session.handle_input(data);
        self.apply(phase, results).await
    }

    /// Writes every outbound packet in order and collects raised events.
    async fn apply(
        &mut self,
        phase: Phase,
        results: Result<Vec<ClientSessionResult>, ClientSessionError>,
    ) -> Result<Vec<ClientSessionEvent>, RtmpError> {
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
        if !out.is_empty() {
            self.write(phase, &out).await?;
        }
        Ok(events)
    }

    async fn write(&mut self, phase: Phase, bytes: &[u8]) -> Result<(), RtmpError> {
        match timeout(self.send_timeout, self.stream.write_all(bytes)).await {
            Err(_) => Err(self.error(phase, RtmpErrorKind::Timeout(self.send_timeout))),
            Ok(Err(e)) => Err(self.error(phase, e.into())),
            Ok(Ok(())) => Ok(()),
        }
    }

    fn error(&self, phase: Phase, kind: RtmpErrorKind) -> RtmpError {
        RtmpError {
            peer: self.peer.clone(),
            phase,
            kind,
        }
    }
}

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
    async fn tls_is_refused_clearly() {
        let t = RtmpTarget::parse("rtmps://127.0.0.1:1/live/key").expect("valid");
        let e = connect(&t, Duration::from_secs(1), Duration::from_secs(1))
            .await
            .expect_err("tls");
        assert!(matches!(e.kind, RtmpErrorKind::TlsUnsupported));
        assert_eq!(e.phase, Phase::Connect);
    }

    #[tokio::test]
    async fn handshake_times_out_on_a_silent_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hold = tokio::spawn(async move { listener.accept().await });
        let t = RtmpTarget::parse(&format!("rtmp://127.0.0.1:{port}/live/key")).expect("valid");
        let e = connect(&t, Duration::from_millis(200), Duration::from_secs(1))
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
        let e = connect(&t, Duration::from_secs(2), Duration::from_secs(1))
            .await
            .expect_err("closed");
        assert_eq!(e.phase, Phase::Handshake);
        assert!(!e.to_string().contains("key"));
    }
}
