//! SIP transports for the sink shell: one UDP socket, or TCP with one long-lived connection to
//! the platform (which sends its own requests back over it, as SRS does) plus a listener for
//! platforms that open their own connections to the device (as wvp does).

use super::sip;
use crate::source::feed::ACCEPT_REST;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Which transport carries SIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SipTransport {
    /// UDP, the GB/T 28181 default.
    #[default]
    Udp,
    /// TCP (required by SRS's GB server).
    Tcp,
}

/// Something that arrived on the transport.
#[derive(Debug)]
pub enum Inbound {
    /// A SIP message from `from`.
    Message(SocketAddr, Bytes),
    /// The TCP connection to `from` ended.
    Closed(SocketAddr, String),
}

/// Messages queued per TCP connection before the connection counts as stuck.
const CONN_QUEUE: usize = 64;

/// Largest datagram we accept.
const MAX_DATAGRAM: usize = 65_535;

/// Most TCP connections open at once. A platform needs one or two; past this the oldest one
/// the platform opened is closed for the new one, so that connections it abandoned without
/// closing cannot use up the descriptors or shut it out.
pub const MAX_CONNS: usize = 16;

/// A listener left out of the poll after `accept()` failed for want of descriptors or memory:
/// the connection it could not take stays queued and the listener readable, so polling it at
/// once would fail again at once for as long as the shortage lasts.
#[derive(Debug, Default)]
pub struct AcceptRest {
    /// Until when the listener rests.
    until: Option<Instant>,
    /// Accepts have failed since the last one that succeeded.
    short: bool,
    /// Failed accepts so far.
    failures: u64,
}

impl AcceptRest {
    /// When the listener may be polled again; `None` when it may be now (or is not resting).
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// The rest is over at `now` if it was due.
    pub fn wake(&mut self, now: Instant) {
        if self.until.is_some_and(|t| t <= now) {
            self.until = None;
        }
    }

    /// `accept()` failed at `now`: rest [`ACCEPT_REST`]. True when this starts a shortage,
    /// which is when it is worth a log line.
    pub fn failed(&mut self, now: Instant) -> bool {
        self.failures += 1;
        self.until = Some(now + ACCEPT_REST);
        !std::mem::replace(&mut self.short, true)
    }

    /// A connection was taken: any shortage is over.
    pub fn accepted(&mut self) {
        self.short = false;
    }

    /// Failed accepts so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

/// One open (or opening) TCP connection.
pub struct Conn {
    /// Tells this connection's late close notice from its replacement's.
    gen: u64,
    /// Messages to write.
    tx: mpsc::Sender<Bytes>,
    /// Opened by the platform (may be closed for a newer one) rather than by us.
    accepted: bool,
    /// Ends the connection's tasks, and so closes it, when the entry goes.
    _close: DropGuard,
}

/// The shell's SIP transport.
pub enum SipIo {
    /// One socket for everything, so NAT bindings stay valid.
    Udp {
        /// The socket on `localPort`.
        socket: UdpSocket,
        /// Receive buffer.
        buf: Vec<u8>,
    },
    /// Connections by peer address.
    Tcp {
        /// Listener on `localPort`.
        listener: TcpListener,
        /// Open (or opening) connections.
        conns: HashMap<SocketAddr, Conn>,
        /// The next connection's generation.
        next_gen: u64,
        /// What the connection tasks read, tagged with their generation.
        inbound: mpsc::Receiver<(u64, Inbound)>,
        /// Handed to each new connection task.
        inbound_tx: mpsc::Sender<(u64, Inbound)>,
        /// Limit for connecting, and for one write.
        timeout: Duration,
        /// Hosts whose connections are taken; any other is closed as it is accepted.
        allowed: Vec<IpAddr>,
        /// The listener's rest after a failed `accept()`.
        rest: AcceptRest,
        /// Connections closed as they were accepted (not from an allowed host); logged at 1,
        /// 2, 4, 8 … so that a host hammering the port cannot flood the log.
        refused: u64,
    },
}

impl SipIo {
    /// Binds `local` for `transport`. Over TCP only connections from `allowed` (the platform,
    /// `accept_from`) are taken; over UDP the user agent filters what it reads.
    pub async fn bind(
        transport: SipTransport,
        local: SocketAddr,
        timeout: Duration,
        allowed: Vec<IpAddr>,
    ) -> std::io::Result<SipIo> {
        match transport {
            SipTransport::Udp => {
                let socket = UdpSocket::bind(local).await?;
                Ok(SipIo::Udp {
                    socket,
                    buf: vec![0; MAX_DATAGRAM],
                })
            }
            SipTransport::Tcp => {
                let listener = TcpListener::bind(local).await?;
                let (inbound_tx, inbound) = mpsc::channel(CONN_QUEUE);
                Ok(SipIo::Tcp {
                    listener,
                    conns: HashMap::new(),
                    next_gen: 0,
                    inbound,
                    inbound_tx,
                    timeout,
                    allowed: allowed.iter().map(|ip| ip.to_canonical()).collect(),
                    rest: AcceptRest::default(),
                    refused: 0,
                })
            }
        }
    }

    /// The bound local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            SipIo::Udp { socket, .. } => socket.local_addr(),
            SipIo::Tcp { listener, .. } => listener.local_addr(),
        }
    }

    /// Waits for the next message or connection event; accepts new TCP connections meanwhile.
    pub async fn recv(&mut self) -> Inbound {
        loop {
            match self {
                SipIo::Udp { socket, buf } => match socket.recv_from(buf).await {
                    Ok((n, from)) => {
                        return Inbound::Message(from, Bytes::copy_from_slice(&buf[..n]))
                    }
                    // ICMP port unreachable from an earlier send surfaces here on Linux.
                    Err(e) => tracing::debug!(error = %e, "gb28181 SIP recv"),
                },
                SipIo::Tcp {
                    listener,
                    conns,
                    next_gen,
                    inbound,
                    inbound_tx,
                    timeout,
                    allowed,
                    rest,
                    refused,
                } => {
                    tokio::select! {
                        Some((gen, msg)) = inbound.recv() => {
                            if let Inbound::Closed(peer, _) = &msg {
                                // A connection already replaced (it was stuck, or the peer
                                // connected again) reports its end late: not news.
                                if conns.get(peer).is_none_or(|c| c.gen != gen) {
                                    continue;
                                }
                                conns.remove(peer);
                            }
                            return msg;
                        }
                        accepted = listener.accept(), if rest.until().is_none() => match accepted {
                            Ok((stream, peer)) => {
                                rest.accepted();
                                if !allowed.contains(&peer.ip().to_canonical()) {
                                    *refused += 1;
                                    if refused.is_power_of_two() {
                                        tracing::warn!(%peer, refused = *refused, "gb28181 SIP connection from a host other than the platform (or gb28181.accept_from) closed");
                                    }
                                    continue;
                                }
                                if conns.len() >= MAX_CONNS {
                                    close_oldest_accepted(conns);
                                }
                                *next_gen += 1;
                                let conn = spawn_conn(peer, *next_gen, inbound_tx.clone(), *timeout, true, async { Ok(stream) });
                                conns.insert(peer, conn);
                            }
                            Err(e) => {
                                if rest.failed(Instant::now()) {
                                    tracing::warn!(error = %e, failed = rest.failures(), rest = ?ACCEPT_REST, "gb28181 cannot accept a SIP connection");
                                }
                            }
                        },
                        _ = crate::sink::sleep_until_opt(rest.until()) => rest.wake(Instant::now()),
                    }
                }
            }
        }
    }

    /// Sends `data` to `dest`. Over TCP without a connection to `dest`, one is opened in the
    /// background and `data` waits in its queue: the sink goes on meanwhile (its media, its
    /// timers, a stop), and a connect that fails arrives as [`Inbound::Closed`].
    pub async fn send(&mut self, dest: SocketAddr, data: Bytes) -> Result<(), String> {
        match self {
            SipIo::Udp { socket, .. } => socket
                .send_to(&data, dest)
                .await
                .map(|_| ())
                .map_err(|e| format!("send to {dest}: {e}")),
            SipIo::Tcp {
                conns,
                next_gen,
                inbound_tx,
                timeout,
                ..
            } => {
                let conn = conns.entry(dest).or_insert_with(|| {
                    *next_gen += 1;
                    let limit = *timeout;
                    let connect = async move {
                        tokio::time::timeout(limit, TcpStream::connect(dest))
                            .await
                            .map_err(|_| format!("connect to {dest} timed out after {limit:?}"))?
                            .map_err(|e| format!("connect to {dest}: {e}"))
                    };
                    spawn_conn(dest, *next_gen, inbound_tx.clone(), limit, false, connect)
                });
                let sent = conn
                    .tx
                    .try_send(data)
                    .map_err(|e| format!("connection to {dest} is stuck or closed: {e}"));
                if sent.is_err() {
                    conns.remove(&dest);
                }
                sent
            }
        }
    }
}

/// Closes the connection the platform opened longest ago, to make room for a new one.
fn close_oldest_accepted(conns: &mut HashMap<SocketAddr, Conn>) {
    let oldest = conns
        .iter()
        .filter(|(_, c)| c.accepted)
        .min_by_key(|(_, c)| c.gen)
        .map(|(peer, _)| *peer);
    if let Some(peer) = oldest {
        tracing::info!(%peer, max = MAX_CONNS, "gb28181 too many SIP connections; closing the oldest");
        conns.remove(&peer);
    }
}

/// Runs one TCP connection once `connect` gives it a stream: a reader task framing SIP
/// messages by Content-Length and a writer draining the returned queue, which takes messages
/// from the start (they wait while connecting). Everything the connection reports carries
/// `gen`. A write that takes longer than `write_timeout` (a peer that stopped reading) ends the
/// connection; so does dropping the returned entry, wherever its tasks wait.
fn spawn_conn<C>(
    peer: SocketAddr,
    gen: u64,
    inbound: mpsc::Sender<(u64, Inbound)>,
    write_timeout: Duration,
    accepted: bool,
    connect: C,
) -> Conn
where
    C: std::future::Future<Output = Result<TcpStream, String>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(CONN_QUEUE);
    let close = CancellationToken::new();
    let cancelled = close.clone();
    tokio::spawn(async move {
        let stream = tokio::select! {
            biased;
            _ = cancelled.cancelled() => return,
            s = connect => s,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(why) => {
                let _ = inbound.send((gen, Inbound::Closed(peer, why))).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let reader_inbound = inbound.clone();
        let reader_cancelled = cancelled.clone();
        tokio::spawn(async move {
            let inbound = reader_inbound;
            let read = async {
                let mut buf = BytesMut::with_capacity(8192);
                loop {
                    loop {
                        match sip::stream_message_len(&buf) {
                            Ok(Some(n)) => {
                                let msg = buf.split_to(n).freeze();
                                if inbound
                                    .send((gen, Inbound::Message(peer, msg)))
                                    .await
                                    .is_err()
                                {
                                    return None;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return Some(format!("unframeable SIP: {e}")),
                        }
                    }
                    match rd.read_buf(&mut buf).await {
                        Ok(0) => return Some("closed by peer".to_owned()),
                        Ok(_) => {}
                        Err(e) => return Some(format!("read: {e}")),
                    }
                }
            };
            // Closed by its owner: the owner knows, nothing to report.
            let reason = tokio::select! {
                biased;
                _ = reader_cancelled.cancelled() => None,
                r = read => r,
            };
            if let Some(reason) = reason {
                let _ = inbound.send((gen, Inbound::Closed(peer, reason))).await;
            }
        });
        let write = async {
            while let Some(data) = rx.recv().await {
                match tokio::time::timeout(write_timeout, wr.write_all(&data)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Some(format!("write: {e}")),
                    Err(_) => {
                        return Some(format!("write: peer read nothing for {write_timeout:?}"))
                    }
                }
            }
            let _ = wr.shutdown().await;
            None
        };
        let reason = tokio::select! {
            biased;
            _ = cancelled.cancelled() => None,
            r = write => r,
        };
        if let Some(reason) = reason {
            // The reader goes too: the connection is done for.
            cancelled.cancel();
            let _ = inbound.send((gen, Inbound::Closed(peer, reason))).await;
        }
    });
    Conn {
        gen,
        tx,
        accepted,
        _close: close.drop_guard(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accept_shortage_rests_the_listener_and_is_reported_once() {
        let t0 = Instant::now();
        let mut rest = AcceptRest::default();
        assert_eq!(rest.until(), None);
        assert!(rest.failed(t0), "a shortage starting is reported");
        assert_eq!(rest.until(), Some(t0 + ACCEPT_REST));
        rest.wake(t0 + ACCEPT_REST / 2);
        assert!(rest.until().is_some(), "not yet due");
        rest.wake(t0 + ACCEPT_REST);
        assert_eq!(rest.until(), None);
        assert!(!rest.failed(t0 + ACCEPT_REST), "the same shortage");
        rest.accepted();
        assert!(rest.failed(t0 + ACCEPT_REST * 3), "a new shortage");
        assert_eq!(rest.failures(), 3);
    }

    /// A connection that got stuck is replaced; when the old one's end is finally reported, the
    /// replacement stays (the notice names a connection that is already gone).
    #[tokio::test]
    async fn a_replaced_connections_late_close_leaves_its_replacement_alone() {
        let platform = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dest = platform.local_addr().expect("addr");
        let mut io = SipIo::bind(
            SipTransport::Tcp,
            "127.0.0.1:0".parse().expect("addr"),
            Duration::from_secs(5),
            vec!["127.0.0.1".parse().expect("ip")],
        )
        .await
        .expect("bind");
        // The platform accepts and never reads: the socket buffers fill, then the queue.
        io.send(dest, Bytes::from_static(b"first"))
            .await
            .expect("queued");
        let (stuck, _) = platform.accept().await.expect("accept");
        let big = Bytes::from(vec![b'x'; 256 * 1024]);
        let mut replaced = false;
        for _ in 0..(CONN_QUEUE + 200) {
            if io.send(dest, big.clone()).await.is_err() {
                replaced = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(replaced, "the stuck connection never filled its queue");
        // The next message opens a second connection.
        io.send(dest, Bytes::from_static(b"second"))
            .await
            .expect("queued");
        let (mut fresh, _) = platform.accept().await.expect("accept");
        // Only now does the first one end: its close notice comes late.
        drop(stuck);
        let mut got = [0u8; 6];
        fresh.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"second");
        // The late notice is not reported; the replacement still carries messages.
        let quiet = tokio::time::timeout(Duration::from_millis(500), io.recv()).await;
        assert!(quiet.is_err(), "reported {:?}", quiet.ok());
        io.send(dest, Bytes::from_static(b"third"))
            .await
            .expect("queued");
        let mut got = [0u8; 5];
        fresh.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"third");
    }

    async fn tcp_io(allowed: &str) -> (SipIo, SocketAddr) {
        let io = SipIo::bind(
            SipTransport::Tcp,
            "127.0.0.1:0".parse().expect("addr"),
            Duration::from_secs(5),
            vec![allowed.parse().expect("ip")],
        )
        .await
        .expect("bind");
        let addr = io.local_addr().expect("addr");
        (io, addr)
    }

    /// Reads until the peer closes (a reset counts: data it never read was waiting); what it
    /// sent meanwhile.
    async fn read_to_close(conn: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got));
        match read.await.expect("closed in time") {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("read: {e}"),
        }
        got
    }

    const OPTIONS: &[u8] =
        b"OPTIONS sip:34020000001320000001@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n";

    /// A host other than the platform is closed on as it connects: what it sends is never read,
    /// and the platform's own connection is served after it.
    #[tokio::test]
    async fn a_connection_from_a_host_other_than_the_platform_is_closed_at_once() {
        let (mut io, addr) = tcp_io("127.0.0.1").await;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind 127.0.0.2");
        let mut stranger = socket.connect(addr).await.expect("connect");
        stranger.write_all(OPTIONS).await.expect("send");
        let mut platform = TcpStream::connect(addr).await.expect("connect");
        platform.write_all(OPTIONS).await.expect("send");
        let (closed, got) = tokio::join!(read_to_close(&mut stranger), async {
            tokio::time::timeout(Duration::from_secs(5), io.recv()).await
        });
        assert!(closed.is_empty());
        match got {
            Ok(Inbound::Message(from, _)) => {
                assert_eq!(from, platform.local_addr().expect("addr"))
            }
            other => panic!("{other:?}"),
        }
    }

    /// Past [`MAX_CONNS`] the connection the platform opened longest ago is closed; the newest
    /// is served.
    #[tokio::test]
    async fn past_the_connection_cap_the_oldest_is_closed() {
        let (mut io, addr) = tcp_io("127.0.0.1").await;
        let mut conns = Vec::new();
        for _ in 0..MAX_CONNS {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(OPTIONS).await.expect("send");
            match tokio::time::timeout(Duration::from_secs(5), io.recv()).await {
                Ok(Inbound::Message(..)) => {}
                other => panic!("{other:?}"),
            }
            conns.push(c);
        }
        let mut newest = TcpStream::connect(addr).await.expect("connect");
        newest.write_all(OPTIONS).await.expect("send");
        match tokio::time::timeout(Duration::from_secs(5), io.recv()).await {
            Ok(Inbound::Message(from, _)) => {
                assert_eq!(from, newest.local_addr().expect("addr"))
            }
            other => panic!("{other:?}"),
        }
        assert!(read_to_close(&mut conns[0]).await.is_empty());
        let SipIo::Tcp { conns: open, .. } = &io else {
            panic!("tcp")
        };
        assert_eq!(open.len(), MAX_CONNS);
    }

    /// A peer that takes messages but never reads them: once a write has waited for the
    /// write timeout, the connection is reported closed instead of holding its writer for ever.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_ends_the_connection() {
        let platform = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dest = platform.local_addr().expect("addr");
        let (mut io, _) = tcp_io("127.0.0.1").await;
        io.send(dest, Bytes::from_static(b"first"))
            .await
            .expect("queued");
        let (_stuck, _) = platform.accept().await.expect("accept");
        let big = Bytes::from(vec![b'x'; 1 << 20]);
        for _ in 0..8 {
            io.send(dest, big.clone()).await.expect("queued");
        }
        match tokio::time::timeout(Duration::from_secs(60), io.recv()).await {
            Ok(Inbound::Closed(peer, why)) => {
                assert_eq!(peer, dest);
                assert!(why.contains("read nothing"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
}
