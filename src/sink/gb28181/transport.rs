//! SIP transports for the sink shell: one UDP socket, or TCP with one long-lived connection to
//! the platform (which sends its own requests back over it, as SRS does) plus a listener for
//! platforms that open their own connections to the device (as wvp does).

use super::sip;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

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
        /// Writers of open (or opening) connections, with the generation that tells a
        /// connection's late close notice from its replacement's.
        conns: HashMap<SocketAddr, (u64, mpsc::Sender<Bytes>)>,
        /// The next connection's generation.
        next_gen: u64,
        /// What the connection tasks read, tagged with their generation.
        inbound: mpsc::Receiver<(u64, Inbound)>,
        /// Handed to each new connection task.
        inbound_tx: mpsc::Sender<(u64, Inbound)>,
        /// Limit for connecting.
        timeout: Duration,
    },
}

impl SipIo {
    /// Binds `local` for `transport`.
    pub async fn bind(
        transport: SipTransport,
        local: SocketAddr,
        timeout: Duration,
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
                    ..
                } => {
                    tokio::select! {
                        Some((gen, msg)) = inbound.recv() => {
                            if let Inbound::Closed(peer, _) = &msg {
                                // A connection already replaced (it was stuck, or the peer
                                // connected again) reports its end late: not news.
                                if conns.get(peer).is_none_or(|(g, _)| *g != gen) {
                                    continue;
                                }
                                conns.remove(peer);
                            }
                            return msg;
                        }
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                *next_gen += 1;
                                let tx = spawn_conn(peer, *next_gen, inbound_tx.clone(), async { Ok(stream) });
                                conns.insert(peer, (*next_gen, tx));
                            }
                            Err(e) => tracing::debug!(error = %e, "gb28181 SIP accept"),
                        },
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
                let (_, tx) = conns.entry(dest).or_insert_with(|| {
                    *next_gen += 1;
                    let limit = *timeout;
                    let connect = async move {
                        tokio::time::timeout(limit, TcpStream::connect(dest))
                            .await
                            .map_err(|_| format!("connect to {dest} timed out after {limit:?}"))?
                            .map_err(|e| format!("connect to {dest}: {e}"))
                    };
                    (
                        *next_gen,
                        spawn_conn(dest, *next_gen, inbound_tx.clone(), connect),
                    )
                });
                let sent = tx
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

/// Runs one TCP connection once `connect` gives it a stream: a reader task framing SIP
/// messages by Content-Length and a writer draining the returned queue, which takes messages
/// from the start (they wait while connecting). Everything the connection reports carries
/// `gen`.
fn spawn_conn<C>(
    peer: SocketAddr,
    gen: u64,
    inbound: mpsc::Sender<(u64, Inbound)>,
    connect: C,
) -> mpsc::Sender<Bytes>
where
    C: std::future::Future<Output = Result<TcpStream, String>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(CONN_QUEUE);
    tokio::spawn(async move {
        let stream = match connect.await {
            Ok(s) => s,
            Err(why) => {
                let _ = inbound.send((gen, Inbound::Closed(peer, why))).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let reader_inbound = inbound.clone();
        tokio::spawn(async move {
            let inbound = reader_inbound;
            let mut buf = BytesMut::with_capacity(8192);
            let reason = loop {
                loop {
                    match sip::stream_message_len(&buf) {
                        Ok(Some(n)) => {
                            let msg = buf.split_to(n).freeze();
                            if inbound
                                .send((gen, Inbound::Message(peer, msg)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let why = format!("unframeable SIP: {e}");
                            let _ = inbound.send((gen, Inbound::Closed(peer, why))).await;
                            return;
                        }
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) => break "closed by peer".to_owned(),
                    Ok(_) => {}
                    Err(e) => break format!("read: {e}"),
                }
            };
            let _ = inbound.send((gen, Inbound::Closed(peer, reason))).await;
        });
        while let Some(data) = rx.recv().await {
            if let Err(e) = wr.write_all(&data).await {
                let _ = inbound
                    .send((gen, Inbound::Closed(peer, format!("write: {e}"))))
                    .await;
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
