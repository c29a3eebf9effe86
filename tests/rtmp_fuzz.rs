//! Property tests for everything the RTMP client parses from a server: the handshake, the chunk
//! stream and AMF0 commands during connect/publish, and what arrives while publishing.
//!
//! The server side is an in-memory duplex stream driven by the test: arbitrary bytes, or a
//! well-formed server conversation (made with rml_rtmp's own serializer, as nginx-rtmp would
//! answer) with mutations applied. The client must return an error that names the phase and
//! never the stream key, or succeed; it must never panic or hang (time is paused, so every
//! step timeout fires at once when the server goes quiet).

use bytes::Bytes;
use dockcast::sink::rtmp::client::{InputFilter, RtmpConnection};
use dockcast::sink::rtmp::RtmpTarget;
use proptest::prelude::*;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::{PeerBandwidthLimitType, RtmpMessage};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

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
    mut io: DuplexStream,
    garbage: Option<Vec<u8>>,
    first: Vec<u8>,
    second: Vec<u8>,
    tail: Vec<u8>,
) {
    let mut buf = vec![0u8; 8192];
    if let Some(g) = garbage {
        let _ = io.write_all(&g).await;
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
        return;
    }
    let mut hs = Handshake::new(PeerType::Server);
    loop {
        let Ok(n) = io.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        match hs.process_bytes(&buf[..n]) {
            Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                let _ = io.write_all(&response_bytes).await;
            }
            Ok(HandshakeProcessResult::Completed { response_bytes, .. }) => {
                let _ = io.write_all(&response_bytes).await;
                break;
            }
            Err(_) => return,
        }
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
