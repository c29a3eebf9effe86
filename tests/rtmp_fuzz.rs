//! Property tests for everything the RTMP client parses from a server: the handshake, the chunk
//! stream and AMF0 commands during connect/publish, and what arrives while publishing.
//!
//! The server side is an in-memory duplex stream driven by the test: arbitrary bytes, or a
//! well-formed server conversation (made with rml_rtmp's own serializer, as nginx-rtmp would
//! answer) with mutations applied. The client must return an error that names the phase and
//! never the stream key, or succeed; it must never panic or hang (time is paused, so every
//! step timeout fires at once when the server goes quiet).

use bytes::Bytes;
use dockcast::media::frame::{Codec, EncodedFrame};
use dockcast::sink::rtmp::client::{InputFilter, RtmpConnection};
use dockcast::sink::rtmp::{run_with_stats, RtmpOptions, RtmpStats, RtmpTarget};
use dockcast::sink::SinkEvent;
use proptest::prelude::*;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::{PeerBandwidthLimitType, RtmpMessage};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

const KEY: &str = "fuzzkey-SECRET";

fn target() -> RtmpTarget {
    RtmpTarget::parse(&format!("rtmp://127.0.0.1/live/{KEY}?t=1")).expect("target")
}

fn message(ser: &mut ChunkSerializer, msg: RtmpMessage, stream_id: u32) -> Vec<u8> {
    let payload = msg
        .into_message_payload(RtmpTimestamp::new(0), stream_id)
        .expect("payload");
    ser.serialize(&payload, false, false).expect("chunk").bytes
}

fn status(code: &str) -> Amf0Value {
    let mut o = HashMap::new();
    o.insert("level".into(), Amf0Value::Utf8String("status".into()));
    o.insert("code".into(), Amf0Value::Utf8String(code.into()));
    o.insert("description".into(), Amf0Value::Utf8String("ok".into()));
    Amf0Value::Object(o)
}

/// What nginx-rtmp sends after the handshake up to the connect result, and then for
/// createStream + publish.
fn server_conversation() -> (Vec<u8>, Vec<u8>) {
    let mut ser = ChunkSerializer::new();
    let mut a = Vec::new();
    a.extend(message(
        &mut ser,
        RtmpMessage::WindowAcknowledgement { size: 5_000_000 },
        0,
    ));
    a.extend(message(
        &mut ser,
        RtmpMessage::SetPeerBandwidth {
            size: 5_000_000,
            limit_type: PeerBandwidthLimitType::Dynamic,
        },
        0,
    ));
    a.extend(
        ser.set_max_chunk_size(4096, RtmpTimestamp::new(0))
            .expect("chunk size")
            .bytes,
    );
    let mut props = HashMap::new();
    props.insert(
        "fmsVer".into(),
        Amf0Value::Utf8String("FMS/3,0,1,123".into()),
    );
    props.insert("capabilities".into(), Amf0Value::Number(31.0));
    a.extend(message(
        &mut ser,
        RtmpMessage::Amf0Command {
            command_name: "_result".into(),
            transaction_id: 1.0,
            command_object: Amf0Value::Object(props),
            additional_arguments: vec![status("NetConnection.Connect.Success")],
        },
        0,
    ));
    a.extend(message(
        &mut ser,
        RtmpMessage::Amf0Command {
            command_name: "onBWDone".into(),
            transaction_id: 0.0,
            command_object: Amf0Value::Null,
            additional_arguments: vec![],
        },
        0,
    ));
    let mut b = Vec::new();
    // The bare onFCPublish of ffmpeg -listen (one AMF0 value) that rml_rtmp cannot parse.
    b.extend(message(
        &mut ser,
        RtmpMessage::Unknown {
            type_id: 20,
            data: Bytes::from_static(b"\x02\x00\x0bonFCPublish"),
        },
        0,
    ));
    b.extend(message(
        &mut ser,
        RtmpMessage::Amf0Command {
            command_name: "_result".into(),
            transaction_id: 2.0,
            command_object: Amf0Value::Null,
            additional_arguments: vec![Amf0Value::Number(1.0)],
        },
        0,
    ));
    b.extend(message(
        &mut ser,
        RtmpMessage::Amf0Command {
            command_name: "onStatus".into(),
            transaction_id: 0.0,
            command_object: Amf0Value::Null,
            additional_arguments: vec![status("NetStream.Publish.Start")],
        },
        1,
    ));
    (a, b)
}

/// Plays the server: handshake (real, or `garbage` instead of S0–S2), then `first`, then
/// `second` once the client asked for createStream, then `tail`; then holds the line open
/// reading until the client goes away.
async fn serve(
    io: DuplexStream,
    garbage: Option<Vec<u8>>,
    first: Vec<u8>,
    second: Vec<u8>,
    tail: Vec<u8>,
) {
    serve_on(io, garbage, first, second, tail, true).await
}

/// The server's side of the handshake; the bytes the client sent after it, or `None` when the
/// client went away or broke it.
async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut [u8],
) -> Option<Vec<u8>> {
    let mut hs = Handshake::new(PeerType::Server);
    loop {
        let n = io.read(buf).await.ok().filter(|&n| n > 0)?;
        match hs.process_bytes(&buf[..n]).ok()? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                let _ = io.write_all(&response_bytes).await;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                let _ = io.write_all(&response_bytes).await;
                return Some(remaining_bytes);
            }
        }
    }
}

/// [`serve`] over any stream; with `keep_reading` false the server stops reading once the
/// publish is accepted, like a server that hangs.
async fn serve_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    garbage: Option<Vec<u8>>,
    first: Vec<u8>,
    second: Vec<u8>,
    tail: Vec<u8>,
    keep_reading: bool,
) {
    let mut buf = vec![0u8; 8192];
    if let Some(g) = garbage {
        let _ = io.write_all(&g).await;
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
        return;
    }
    if server_handshake(&mut io, &mut buf).await.is_none() {
        return;
    }
    let _ = io.write_all(&first).await;
    let mut seen = Vec::new();
    while !seen.windows(12).any(|w| w == b"createStream") {
        match io.read(&mut buf).await {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let _ = io.write_all(&second).await;
    let _ = io.write_all(&tail).await;
    if !keep_reading {
        // Hold the socket without reading; the test bounds how long.
        std::future::pending::<()>().await;
    }
    while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Runs one client against `serve(...)` in a paused-clock runtime; returns the outcome text.
fn run_client(garbage: Option<Vec<u8>>, first: Vec<u8>, second: Vec<u8>, tail: Vec<u8>) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(server, garbage, first, second, tail));
        let t = target();
        let step = Duration::from_millis(500);
        let outcome = match RtmpConnection::establish(
            client,
            &t,
            "127.0.0.1:1935".into(),
            step,
            step,
        )
        .await
        {
            Err(e) => format!("connect error: {e}"),
            Ok(mut conn) => {
                // Publishing: whatever the server sends now must be handled or refused.
                let mut out = "published".to_string();
                for _ in 0..64 {
                    match tokio::time::timeout(step, conn.read()).await {
                        Err(_) => break,
                        Ok(read) => {
                            if let Err(e) = conn.on_read(read) {
                                out = format!("publish error: {e}");
                                break;
                            }
                        }
                    }
                }
                out
            }
        };
        server.abort();
        outcome
    })
}

#[test]
fn the_unmutated_conversation_publishes() {
    let (a, b) = server_conversation();
    assert_eq!(run_client(None, a, b, Vec::new()), "published");
}

fn check(outcome: &str) {
    assert!(!outcome.contains("SECRET"), "key leaked: {outcome}");
    assert!(
        !outcome.contains("parser fail"),
        "rml_rtmp panicked on this input: {outcome}"
    );
    if outcome != "published" {
        assert!(outcome.contains("RTMP "), "unclear error: {outcome}");
    }
}

/// A mutation of a byte string: flip, overwrite, insert, delete or truncate at a position.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..32)
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1..16usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(data: &mut Vec<u8>, m: &Mutation) {
    if data.is_empty() {
        return;
    }
    let at = |i: usize| i % data.len();
    match m {
        Mutation::Flip(i, b) => {
            let i = at(*i);
            data[i] ^= b;
        }
        Mutation::Set(i, b) => {
            let i = at(*i);
            data[i] = *b;
        }
        Mutation::Insert(i, v) => {
            let i = at(*i);
            data.splice(i..i, v.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = at(*i);
            let end = (i + n).min(data.len());
            data.drain(i..end);
        }
        Mutation::Truncate(i) => {
            let i = at(*i);
            data.truncate(i);
        }
    }
}

/// A server that accepts the publish and then stops reading: the sink's bounded queue drops
/// frames, and once nothing at all is taken for `send_timeout` the connection counts as lost
/// and the sink reconnects instead of hanging.
/// An access unit that passes for a 640x360 keyframe: baseline SPS and PPS, then an IDR slice
/// of `len` filler bytes. The size matters to these tests, not the picture.
fn keyframe_of(len: usize) -> Vec<u8> {
    let sps: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
    ];
    let pps: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];
    let mut au = Vec::new();
    for nal in [sps, pps] {
        au.extend_from_slice(&[0, 0, 0, 1]);
        au.extend_from_slice(nal);
    }
    au.extend_from_slice(&[0, 0, 0, 1, 0x65]);
    au.extend(std::iter::repeat_n(0x55u8, len));
    au
}

/// An RTMP sink publishing to 127.0.0.1:`port`, driven by a test.
struct TestSink {
    frames: tokio::sync::mpsc::Sender<EncodedFrame>,
    events: tokio::sync::mpsc::Receiver<SinkEvent>,
    cancel: tokio_util::sync::CancellationToken,
    stats: Arc<RtmpStats>,
    task: tokio::task::JoinHandle<()>,
}

impl TestSink {
    /// Spawns the sink with `opts`, keeping up to `events` of its events.
    fn spawn(port: u16, opts: RtmpOptions, events: usize) -> TestSink {
        let target = RtmpTarget::parse(&format!("rtmp://127.0.0.1:{port}/live/{KEY}")).expect("t");
        let (frames, rx) = tokio::sync::mpsc::channel(8);
        let (ev_tx, events) = tokio::sync::mpsc::channel(events);
        let cancel = tokio_util::sync::CancellationToken::new();
        let stats = Arc::new(RtmpStats::default());
        let task = tokio::spawn(run_with_stats(
            target,
            opts,
            rx,
            ev_tx,
            cancel.clone(),
            stats.clone(),
        ));
        TestSink {
            frames,
            events,
            cancel,
            stats,
            task,
        }
    }
}

#[test]
fn a_server_that_stops_reading_is_dropped_after_the_send_timeout() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (a, b) = server_conversation();
            if let Ok((tcp, _)) = listener.accept().await {
                serve_on(tcp, None, a, b, Vec::new(), false).await;
            }
        });
        let opts = RtmpOptions {
            send_timeout: Duration::from_secs(1),
            send_buffer_bytes: 256 * 1024,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..RtmpOptions::default()
        };
        let TestSink {
            frames: tx,
            events: mut ev_rx,
            cancel,
            stats,
            task: sink,
        } = TestSink::spawn(port, opts, 256);
        let au = Bytes::from(keyframe_of(100_000));
        let producer = tokio::spawn(async move {
            for i in 0..2000u32 {
                let frame = EncodedFrame {
                    data: au.clone(),
                    pts: Duration::from_millis(u64::from(i) * 33),
                    keyframe: true,
                    codec: Codec::H264,
                };
                if tx.send(frame).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut published = false;
        let reason = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, ev_rx.recv()).await {
                Ok(Some(SinkEvent::Publishing)) => published = true,
                Ok(Some(SinkEvent::Reconnecting { reason, .. })) => break reason,
                Ok(Some(SinkEvent::Failed { reason })) => panic!("failed: {reason}"),
                Ok(Some(_)) => {}
                Ok(None) => panic!("sink ended"),
                Err(_) => panic!("no reconnect within 20 s"),
            }
        };
        assert!(published);
        assert!(reason.contains("timed out"), "{reason}");
        assert!(!reason.contains("SECRET"), "{reason}");
        assert!(
            stats.dropped_frames.load(Ordering::Relaxed) > 0,
            "queue never overflowed"
        );
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), sink).await;
        producer.abort();
        server.abort();
    });
}

/// The body of an AMF0 command or data message whose third value nests `depth` objects
/// (`{a: {a: … null}}`), built by hand: rml_amf0's serializer recurses as deeply as its parser.
fn deeply_nested_amf0(name: &str, depth: usize) -> Vec<u8> {
    let mut body = vec![0x02];
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.push(0x00);
    body.extend_from_slice(&1.0f64.to_be_bytes());
    for _ in 0..depth {
        body.extend_from_slice(b"\x03\x00\x01a");
    }
    body.push(0x05);
    for _ in 0..depth {
        body.extend_from_slice(b"\x00\x00\x09");
    }
    body
}

/// Runs a sink against a fake server on loopback that plays `first`/`second`/`tail` (see
/// [`serve_on`]) to every connection, and returns the first `Failed` or `Reconnecting` reason
/// with whether the sink was publishing before it.
fn sink_outcome_against(first: Vec<u8>, second: Vec<u8>, tail: Vec<u8>) -> (String, bool) {
    // The default worker stack (2 MiB), as in the daemon.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            // Bounded: the sink gives up or reconnects a few times at most within the test.
            for _ in 0..8 {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (a, b, t) = (first.clone(), second.clone(), tail.clone());
                tokio::spawn(serve_on(tcp, None, a, b, t, true));
            }
        });
        let opts = RtmpOptions {
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..RtmpOptions::default()
        };
        let TestSink {
            frames: _frames,
            events: mut ev_rx,
            cancel,
            task: sink,
            ..
        } = TestSink::spawn(port, opts, 64);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut published = false;
        let reason = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, ev_rx.recv()).await {
                Ok(Some(SinkEvent::Publishing)) => published = true,
                Ok(Some(SinkEvent::Reconnecting { reason, .. })) => break reason,
                Ok(Some(SinkEvent::Failed { reason })) => break reason,
                Ok(Some(_)) => {}
                Ok(None) => panic!("sink ended without a reason"),
                Err(_) => panic!("no failure or reconnect within 20 s"),
            }
        };
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), sink).await;
        server.abort();
        (reason, published)
    })
}

/// A server whose connect `_result` nests thousands of objects: parsing it recursively would
/// overflow the worker's stack and abort the whole daemon. The connect fails with an error
/// saying why, and the process (this test) lives on.
#[test]
fn a_deeply_nested_connect_result_fails_the_connect_not_the_process() {
    let mut ser = ChunkSerializer::new();
    let nested = message(
        &mut ser,
        RtmpMessage::Unknown {
            type_id: 20,
            data: Bytes::from(deeply_nested_amf0("_result", 5000)),
        },
        0,
    );
    let (reason, published) = sink_outcome_against(nested, Vec::new(), Vec::new());
    assert!(!published);
    assert!(reason.contains("connect-app"), "{reason}");
    assert!(reason.contains("nest"), "{reason}");
    assert!(!reason.contains("SECRET"), "{reason}");
}

/// The same nesting in a data message while publishing: the connection counts as lost and the
/// sink reconnects.
#[test]
fn a_deeply_nested_message_while_publishing_makes_the_sink_reconnect() {
    let (a, b) = server_conversation();
    // Chunked at the 4096 bytes the conversation set; a type-0 header starts the message.
    let mut ser = ChunkSerializer::new();
    ser.set_max_chunk_size(4096, RtmpTimestamp::new(0))
        .expect("chunk size");
    let payload = RtmpMessage::Unknown {
        type_id: 18,
        data: Bytes::from(deeply_nested_amf0("onMetaData", 5000)),
    }
    .into_message_payload(RtmpTimestamp::new(0), 1)
    .expect("payload");
    let tail = ser.serialize(&payload, false, false).expect("chunk").bytes;
    let (reason, published) = sink_outcome_against(a, b, tail);
    assert!(published);
    assert!(reason.contains("send"), "{reason}");
    assert!(reason.contains("nest"), "{reason}");
    assert!(!reason.contains("SECRET"), "{reason}");
}

/// What [`serve_counting`] has seen, and the switch that lets it read at full speed.
#[derive(Default)]
struct ServerCounts {
    /// Coded video frames received.
    frames: std::sync::atomic::AtomicU64,
    /// Bytes read from the client.
    bytes: std::sync::atomic::AtomicU64,
    /// Read at full speed from now on.
    fast: std::sync::atomic::AtomicBool,
}

/// Plays the server of a publish like [`serve_on`], but parses the client's chunk stream and
/// counts what it reads into `counts`: 4 KiB per 10 ms through a small receive buffer (a thin
/// uplink) until `counts.fast` is set, then as fast as it can.
async fn serve_counting(mut io: tokio::net::TcpStream, counts: std::sync::Arc<ServerCounts>) {
    use dockcast::sink::rtmp::chunk::ChunkReader;
    use std::sync::atomic::Ordering;
    let (first, second) = server_conversation();
    let mut buf = vec![0u8; 4096];
    let mut reader = ChunkReader::default();
    let Some(remaining) = server_handshake(&mut io, &mut buf).await else {
        return;
    };
    reader.push(&remaining);
    let _ = io.write_all(&first).await;
    let mut publishing = false;
    loop {
        while let Ok(Some(m)) = reader.next_message() {
            if m.type_id == 20 && m.payload.windows(12).any(|w| w == b"createStream") {
                let _ = io.write_all(&second).await;
                publishing = true;
            }
            // AVC packet type 1: a coded frame (not the sequence header, not end of sequence).
            if m.type_id == 9 && m.payload.get(1) == Some(&1) {
                counts.frames.fetch_add(1, Ordering::Relaxed);
            }
        }
        match io.read(&mut buf).await {
            Ok(n) if n > 0 => {
                counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
                reader.push(&buf[..n]);
            }
            _ => return,
        }
        if publishing && !counts.fast.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What [`push_to_a_slow_server`] found.
#[derive(Debug)]
struct SlowPush {
    /// Frames the sink took from the producer.
    offered: u64,
    /// Bytes the sink's socket had taken, and bytes the server had read, when the producer was
    /// done and the server still slow.
    congested_sent: u64,
    congested_read: u64,
    /// Once the server read at full speed: coded frames it received, and `dropped_frames`.
    received: u64,
    dropped: u64,
    publishes: u64,
}

/// Publishes 300 frames (GOPs of ten: a 120 kB IDR with SPS/PPS, nine 24 kB P-frames; 10 MB)
/// far faster than [`serve_counting`] reads them, then lets the server drain what is left at
/// full speed until it received or the sink counted as dropped every frame (at most 15 s).
fn push_to_a_slow_server() -> SlowPush {
    const FRAMES: u32 = 300;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(1).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let counts = Arc::new(ServerCounts::default());
        let server = {
            let counts = counts.clone();
            tokio::spawn(async move {
                if let Ok((tcp, _)) = listener.accept().await {
                    serve_counting(tcp, counts).await;
                }
            })
        };
        let opts = RtmpOptions {
            send_timeout: Duration::from_secs(10),
            send_buffer_bytes: 128 * 1024,
            ..RtmpOptions::default()
        };
        let TestSink {
            frames: tx,
            events: mut ev_rx,
            cancel,
            stats,
            task: sink,
        } = TestSink::spawn(port, opts, 1024);
        let published = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(ev) = ev_rx.recv().await {
                if ev == SinkEvent::Publishing {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(published, Ok(true), "never published");
        let key = keyframe_of(120_000);
        let mut inter = vec![0, 0, 0, 1, 0x41];
        inter.extend(std::iter::repeat_n(0x55u8, 24_000));
        let (key, inter) = (Bytes::from(key), Bytes::from(inter));
        let mut offered = 0u64;
        for i in 0..FRAMES {
            let keyframe = i % 10 == 0;
            let frame = EncodedFrame {
                data: if keyframe { key.clone() } else { inter.clone() },
                pts: Duration::from_millis(u64::from(i) * 33),
                keyframe,
                codec: Codec::H264,
            };
            match tokio::time::timeout(Duration::from_secs(5), tx.send(frame)).await {
                Ok(Ok(())) => offered += 1,
                _ => panic!("the sink stopped taking frames"),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let congested_sent = stats.bytes_sent.load(Ordering::Relaxed);
        let congested_read = counts.bytes.load(Ordering::Relaxed);
        counts.fast.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let (received, dropped) = loop {
            let received = counts.frames.load(Ordering::Relaxed);
            let dropped = stats.dropped_frames.load(Ordering::Relaxed);
            if received + dropped >= offered || tokio::time::Instant::now() >= deadline {
                break (received, dropped);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let publishes = stats.publishes.load(Ordering::Relaxed);
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), sink).await;
        server.abort();
        SlowPush {
            offered,
            congested_sent,
            congested_read,
            received,
            dropped,
            publishes,
        }
    })
}

/// Every frame the sink takes from the producer either reaches the server or is counted in
/// `dropped_frames`, including the frames skipped after an overflow while the stream waits for
/// its next keyframe.
#[test]
fn every_frame_offered_to_a_slow_server_is_received_or_counted_as_dropped() {
    let p = push_to_a_slow_server();
    assert!(p.dropped > 0, "the server was never too slow: {p:?}");
    assert_eq!(
        p.received + p.dropped,
        p.offered,
        "offered {}, the server received {}, dropped_frames says {}",
        p.offered,
        p.received,
        p.dropped
    );
    assert_eq!(p.publishes, 1);
}

/// What the sink handed the kernel and a slow server has not read yet stays small (the
/// socket's bound on unsent bytes plus what is in flight), so that the backlog builds in the
/// sink's queue, which drops and lowers the bitrate, and not unseen in the kernel: unbounded,
/// Linux lets a socket's send buffer grow to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default).
#[test]
fn the_kernel_holds_little_of_what_a_slow_server_has_not_read() {
    let p = push_to_a_slow_server();
    assert!(p.dropped > 0, "the server was never too slow: {p:?}");
    let hidden = p.congested_sent.saturating_sub(p.congested_read);
    assert!(
        hidden < 1024 * 1024,
        "{hidden} bytes sent but not read by the server: {p:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Arbitrary bytes instead of a handshake.
    #[test]
    fn arbitrary_handshake_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
        check(&run_client(Some(bytes), Vec::new(), Vec::new(), Vec::new()));
    }

    /// A real handshake, then arbitrary bytes where the connect result should be.
    #[test]
    fn arbitrary_bytes_after_the_handshake(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        check(&run_client(None, bytes, Vec::new(), Vec::new()));
    }

    /// The real conversation with mutations in the connect part and the publish part.
    #[test]
    fn mutated_server_conversation(
        first in proptest::collection::vec(mutation(), 0..4),
        second in proptest::collection::vec(mutation(), 0..4),
    ) {
        let (mut a, mut b) = server_conversation();
        first.iter().for_each(|m| apply(&mut a, m));
        second.iter().for_each(|m| apply(&mut b, m));
        check(&run_client(None, a, b, Vec::new()));
    }

    /// A good publish, then arbitrary bytes while publishing (acks, pings, garbage).
    #[test]
    fn arbitrary_bytes_while_publishing(tail in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let (a, b) = server_conversation();
        check(&run_client(None, a, b, tail));
    }

    /// The input filter alone on arbitrary input split at arbitrary points.
    #[test]
    fn input_filter_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..4000),
        cut in any::<usize>(),
    ) {
        let mut f = InputFilter::default();
        let cut = if bytes.is_empty() { 0 } else { cut % bytes.len() };
        let _ = f.filter(&bytes[..cut]).and_then(|_| f.filter(&bytes[cut..]));
    }
}
