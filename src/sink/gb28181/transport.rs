//! SIP transports for the sink shell: one UDP socket, or TCP with one long-lived connection to
//! the platform (which sends its own requests back over it, as SRS does) plus a listener for
//! platforms that open their own connections to the device (as wvp does).

use super::sip;
use bytes::{Bytes, BytesMut};
use std::collections::hash_map::Entry;
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
        /// Writers of open connections.
        conns: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
        /// What the connection tasks read.
        inbound: mpsc::Receiver<Inbound>,
        /// Handed to each new connection task.
        inbound_tx: mpsc::Sender<Inbound>,
        /// Limit for connecting and for one write.
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
                    inbound,
                    inbound_tx,
                    ..
                } => {
                    tokio::select! {
                        Some(msg) = inbound.recv() => {
                            if let Inbound::Closed(peer, _) = &msg {
                                conns.remove(peer);
                            }
                            return msg;
                        }
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let tx = spawn_conn(stream, peer, inbound_tx.clone());
                                conns.insert(peer, tx);
                            }
                            Err(e) => tracing::debug!(error = %e, "gb28181 SIP accept"),
                        },
                    }
                }
            }
        }
    }

    /// Sends `data` to `dest`, connecting first over TCP when no connection to `dest` exists.
    pub async fn send(&mut self, dest: SocketAddr, data: Bytes) -> Result<(), String> {
        match self {
            SipIo::Udp { socket, .. } => socket
                .send_to(&data, dest)
                .await
                .map(|_| ())
                .map_err(|e| format!("send to {dest}: {e}")),
            SipIo::Tcp {
                conns,
                inbound_tx,
                timeout,
                ..
            } => {
                let tx = match conns.entry(dest) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => {
                        let stream = tokio::time::timeout(*timeout, TcpStream::connect(dest))
                            .await
                            .map_err(|_| format!("connect to {dest} timed out"))?
                            .map_err(|e| format!("connect to {dest}: {e}"))?;
                        v.insert(spawn_conn(stream, dest, inbound_tx.clone()))
                    }
                };
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

/// Runs one TCP connection: a reader task framing SIP messages by Content-Length and a writer
/// task draining the returned queue.
fn spawn_conn(
    stream: TcpStream,
    peer: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
) -> mpsc::Sender<Bytes> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(CONN_QUEUE);
    let closed = inbound.clone();
    tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if let Err(e) = wr.write_all(&data).await {
                let _ = closed
                    .send(Inbound::Closed(peer, format!("write: {e}")))
                    .await;
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(8192);
        let reason = loop {
            loop {
                match sip::stream_message_len(&buf) {
                    Ok(Some(n)) => {
                        let msg = buf.split_to(n).freeze();
                        if inbound.send(Inbound::Message(peer, msg)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = inbound
                            .send(Inbound::Closed(peer, format!("unframeable SIP: {e}")))
                            .await;
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
        let _ = inbound.send(Inbound::Closed(peer, reason)).await;
    });
    tx
}
