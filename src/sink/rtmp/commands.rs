//! The publish commands rml_rtmp does not send: `releaseStream`, `FCPublish` and `FCUnpublish`.
//!
//! Many servers and CDNs (and ffmpeg/OBS, which they are tested against) expect
//! `releaseStream` + `FCPublish` between `connect` and `createStream`, and `FCUnpublish` before
//! `deleteStream`. rml_rtmp's `ClientSession` keeps its chunk serializer private, and header
//! compression state is per chunk stream, so these messages are written here as self-contained
//! chunks (type 0 header) on a chunk stream id rml_rtmp never uses. The session's own
//! compressed headers on its streams are thereby left exactly as it expects them.

use bytes::{BufMut, Bytes, BytesMut};
use rml_rtmp::rml_amf0::{serialize, Amf0Value};

/// The chunk stream these commands travel on: rml_rtmp uses 2 to 6 (by message type), so 8
/// cannot collide with its header compression state.
pub const COMMAND_CSID: u8 = 8;

/// RTMP message type of an AMF0 command.
const AMF0_COMMAND: u8 = 20;

/// Transaction id of `releaseStream`. rml_rtmp numbers its own transactions 1, 2, … (a
/// connection makes two), so a server's `_result` for ours lands as an unknown transaction
/// (ignored) and is never taken for the answer to `createStream`.
pub const RELEASE_STREAM_TX: f64 = 100.0;
/// Transaction id of `FCPublish` (see [`RELEASE_STREAM_TX`]).
pub const FC_PUBLISH_TX: f64 = 101.0;
/// Transaction id of `FCUnpublish` (see [`RELEASE_STREAM_TX`]).
pub const FC_UNPUBLISH_TX: f64 = 102.0;

/// `releaseStream(null, key)` followed by `FCPublish(null, key)`, chunked at `chunk_size`
/// (the size the client announced with Set Chunk Size).
pub fn before_publish(stream_key: &str, chunk_size: u32) -> Bytes {
    let mut out = BytesMut::new();
    command(
        &mut out,
        "releaseStream",
        RELEASE_STREAM_TX,
        stream_key,
        chunk_size,
    );
    command(&mut out, "FCPublish", FC_PUBLISH_TX, stream_key, chunk_size);
    out.freeze()
}

/// `FCUnpublish(null, key)`, sent before `deleteStream`.
pub fn before_delete(stream_key: &str, chunk_size: u32) -> Bytes {
    let mut out = BytesMut::new();
    command(
        &mut out,
        "FCUnpublish",
        FC_UNPUBLISH_TX,
        stream_key,
        chunk_size,
    );
    out.freeze()
}

/// Appends one AMF0 command message `name(tx, null, key)` on stream 0 as RTMP chunks.
fn command(out: &mut BytesMut, name: &str, tx: f64, stream_key: &str, chunk_size: u32) {
    let values = vec![
        Amf0Value::Utf8String(name.to_string()),
        Amf0Value::Number(tx),
        Amf0Value::Null,
        Amf0Value::Utf8String(stream_key.to_string()),
    ];
    // Strings of our own making serialise unless longer than 65535 bytes; a key that long is
    // refused by every server anyway, so it is cut rather than failing the publish here.
    let payload = serialize(&values).unwrap_or_else(|_| {
        let short: String = stream_key.chars().take(1024).collect();
        serialize(&vec![
            Amf0Value::Utf8String(name.to_string()),
            Amf0Value::Number(tx),
            Amf0Value::Null,
            Amf0Value::Utf8String(short),
        ])
        .unwrap_or_default()
    });
    chunk_message(out, COMMAND_CSID, AMF0_COMMAND, 0, &payload, chunk_size);
}

/// Writes one message as chunks: a type 0 header (timestamp 0), then type 3 continuations.
fn chunk_message(
    out: &mut BytesMut,
    csid: u8,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    chunk_size: u32,
) {
    // csid 2..=63 fits the one-byte basic header; COMMAND_CSID is well inside it.
    let csid = csid & 0x3f;
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .min(0xff_ffff);
    out.put_u8(csid);
    out.put_uint(0, 3);
    out.put_uint(u64::from(len), 3);
    out.put_u8(type_id);
    out.put_u32_le(stream_id);
    let step = usize::try_from(chunk_size.max(1)).unwrap_or(128);
    for (i, piece) in payload[..len as usize].chunks(step).enumerate() {
        if i > 0 {
            out.put_u8(0xc0 | csid);
        }
        out.put_slice(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AMF0: string marker 2 + u16 length + bytes; number marker 0 + f64 BE; null 5.
    fn amf_command(name: &str, tx: f64, key: &str) -> Vec<u8> {
        let mut v = vec![2];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v.extend_from_slice(&tx.to_be_bytes());
        v.push(5);
        v.push(2);
        v.extend_from_slice(&(key.len() as u16).to_be_bytes());
        v.extend_from_slice(key.as_bytes());
        v
    }

    #[test]
    fn release_stream_and_fcpublish_bytes() {
        let bytes = before_publish("key?t=1", 4096);
        let p1 = amf_command("releaseStream", 100.0, "key?t=1");
        let p2 = amf_command("FCPublish", 101.0, "key?t=1");
        let mut want = vec![0x08, 0, 0, 0];
        want.extend_from_slice(&(p1.len() as u32).to_be_bytes()[1..]);
        want.extend_from_slice(&[20, 0, 0, 0, 0]);
        want.extend_from_slice(&p1);
        want.extend_from_slice(&[0x08, 0, 0, 0]);
        want.extend_from_slice(&(p2.len() as u32).to_be_bytes()[1..]);
        want.extend_from_slice(&[20, 0, 0, 0, 0]);
        want.extend_from_slice(&p2);
        assert_eq!(bytes.as_ref(), &want[..]);
        // The key's query string is kept verbatim.
        assert!(bytes.windows(7).any(|w| w == b"key?t=1"));
    }

    #[test]
    fn fcunpublish_bytes_and_chunking() {
        let p = amf_command("FCUnpublish", 102.0, "k");
        let bytes = before_delete("k", 16);
        // 12-byte header, then 16-byte pieces separated by one-byte type 3 headers (0xc8).
        assert_eq!(
            &bytes[..12],
            &[0x08, 0, 0, 0, 0, 0, p.len() as u8, 20, 0, 0, 0, 0]
        );
        let rest = &bytes[12..];
        let mut body = rest[..16].to_vec();
        for piece in rest[16..].chunks(17) {
            assert_eq!(piece[0], 0xc8);
            body.extend_from_slice(&piece[1..]);
        }
        assert_eq!(body, p);
    }

    #[test]
    fn commands_parse_with_rml_deserializer() {
        // The server side of rml_rtmp reads our chunks back as the commands we meant.
        use rml_rtmp::chunk_io::ChunkDeserializer;
        use rml_rtmp::messages::RtmpMessage;
        let mut de = ChunkDeserializer::new();
        let bytes = before_publish("stream", 128);
        let first = de
            .get_next_message(&bytes)
            .expect("parse")
            .expect("message");
        match first.to_rtmp_message().expect("amf") {
            RtmpMessage::Amf0Command {
                command_name,
                transaction_id,
                additional_arguments,
                ..
            } => {
                assert_eq!(command_name, "releaseStream");
                assert_eq!(transaction_id, 100.0);
                assert_eq!(
                    additional_arguments,
                    vec![Amf0Value::Utf8String("stream".into())]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let second = de.get_next_message(&[]).expect("parse").expect("message");
        assert!(matches!(
            second.to_rtmp_message(),
            Ok(RtmpMessage::Amf0Command { command_name, .. }) if command_name == "FCPublish"
        ));
    }
}
