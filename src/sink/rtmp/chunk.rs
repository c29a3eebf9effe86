//! Reading the server's RTMP chunk stream, sans-IO.
//!
//! The server's bytes are the one RTMP input dockcast does not control, so they are de-chunked
//! here rather than by rml_rtmp's deserializer, which trusts its input: a continuation chunk
//! whose header shrinks the message length makes it subtract with overflow. This reader checks
//! every header against the chunk stream's state, bounds what it buffers, and turns each
//! violation into a [`ChunkError`] naming the chunk stream and the values; rml_rtmp's session
//! then only sees whole messages re-chunked by rml_rtmp's own serializer.
//!
//! Timestamps follow the convention of ffmpeg and rml_rtmp: a type-3 header that starts a new
//! message adds the last timestamp field of its chunk stream (the absolute timestamp after a
//! type-0 header, the delta after a type-1 or type-2 one).

use bytes::{Buf, Bytes, BytesMut};
use std::collections::HashMap;
use thiserror::Error;

/// The chunk size every RTMP peer starts with (RTMP 1.0 §5.4.1).
pub const INITIAL_CHUNK_SIZE: usize = 128;

/// The largest server message accepted. A publisher only receives control messages and
/// command results (a few hundred bytes); anything near this is a broken or hostile server.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// The most bytes of unfinished messages held over all chunk streams together, so that a server
/// cannot make us buffer by opening many chunk streams.
pub const MAX_PENDING: usize = 4 << 20;

/// The most chunk streams a server may use; servers use a handful (2 for control, 3–8 for
/// commands and media), and each one costs memory here.
pub const MAX_CHUNK_STREAMS: usize = 256;

/// The largest chunk size a peer may set: a message length has 24 bits, so larger chunks could
/// never be filled (RTMP 1.0 §5.4.1).
const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;

/// A timestamp field of this value means the real one follows as a 32-bit extended timestamp.
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;

/// Message type of Set Chunk Size.
const SET_CHUNK_SIZE: u8 = 1;
/// Message type of Abort Message.
const ABORT: u8 = 2;

/// One whole message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Timestamp in milliseconds (wrapping, as RTMP timestamps do).
    pub timestamp: u32,
    /// RTMP message type id.
    pub type_id: u8,
    /// Message stream id.
    pub stream_id: u32,
    /// The message body.
    pub payload: Bytes,
}

/// What was wrong with the server's chunk stream; the connection cannot go on after one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChunkError {
    /// A type-1, 2 or 3 header on a chunk stream that never had a type-0 header.
    #[error("chunk stream {csid} starts with a type-{fmt} header, which needs an earlier header")]
    NoPreviousHeader {
        /// Chunk stream id.
        csid: u32,
        /// Header type (1, 2 or 3).
        fmt: u8,
    },
    /// A type-0, 1 or 2 header while the chunk stream's message is unfinished.
    #[error(
        "chunk stream {csid} sent a type-{fmt} header after {have} of {len} bytes of a message"
    )]
    NewHeaderMidMessage {
        /// Chunk stream id.
        csid: u32,
        /// Header type (0, 1 or 2).
        fmt: u8,
        /// Bytes of the unfinished message received so far.
        have: usize,
        /// Its announced length.
        len: usize,
    },
    /// A message longer than [`MAX_MESSAGE_LEN`].
    #[error(
        "chunk stream {csid} announced a {len}-byte message; the limit is {limit}",
        limit = MAX_MESSAGE_LEN
    )]
    MessageTooLong {
        /// Chunk stream id.
        csid: u32,
        /// Announced length.
        len: usize,
    },
    /// A chunk stream beyond the first [`MAX_CHUNK_STREAMS`].
    #[error("chunk stream {csid} is one more than the {limit} a server may use", limit = MAX_CHUNK_STREAMS)]
    TooManyChunkStreams {
        /// Chunk stream id.
        csid: u32,
    },
    /// More than [`MAX_PENDING`] bytes of unfinished messages.
    #[error("more than {limit} bytes of unfinished server messages", limit = MAX_PENDING)]
    TooMuchPending,
    /// A Set Chunk Size of zero, beyond 2^24 - 1 (the reserved top bit included), or too short
    /// to hold a size.
    #[error("invalid Set Chunk Size {body:02x?}")]
    InvalidChunkSize {
        /// The message body.
        body: Vec<u8>,
    },
}

/// What a chunk stream remembers between chunks.
#[derive(Debug, Default)]
struct ChunkStream {
    timestamp: u32,
    /// The last timestamp field (absolute after type 0, delta after type 1/2), extended value
    /// included; a type-3 header that starts a message adds it.
    timestamp_field: u32,
    /// Whether that field was extended, so type-3 chunks carry an extended timestamp too.
    extended: bool,
    length: usize,
    type_id: u8,
    stream_id: u32,
    /// The unfinished message's bytes so far.
    partial: BytesMut,
}

/// Turns the server's bytes into whole messages.
///
/// Feed bytes with [`push`](Self::push), then call [`next_message`](Self::next_message) until it
/// returns `Ok(None)`. Set Chunk Size and Abort Message are applied here (Set Chunk Size is also
/// returned, so that whoever re-chunks can follow it).
#[derive(Debug)]
pub struct ChunkReader {
    buf: BytesMut,
    chunk_size: usize,
    streams: HashMap<u32, ChunkStream>,
    pending: usize,
}

impl Default for ChunkReader {
    fn default() -> Self {
        Self {
            buf: BytesMut::new(),
            chunk_size: INITIAL_CHUNK_SIZE,
            streams: HashMap::new(),
            pending: 0,
        }
    }
}

/// A parsed chunk header; `None` from [`ChunkReader::header`] means more bytes are needed.
struct Header {
    fmt: u8,
    csid: u32,
    /// Bytes of basic + message header + extended timestamp.
    size: usize,
    timestamp_field: u32,
    extended: bool,
    length: Option<usize>,
    type_id: Option<u8>,
    stream_id: Option<u32>,
}

impl ChunkReader {
    /// Appends bytes received from the server.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The server's current chunk size.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, ChunkError> {
        loop {
            let Some(header) = self.header()? else {
                return Ok(None);
            };
            if self.streams.len() >= MAX_CHUNK_STREAMS && !self.streams.contains_key(&header.csid) {
                return Err(ChunkError::TooManyChunkStreams { csid: header.csid });
            }
            let stream = self.streams.entry(header.csid).or_default();
            let starts = stream.partial.is_empty();
            // The message this chunk belongs to, with the header applied.
            let (timestamp, length) = match header.fmt {
                0 => (header.timestamp_field, header.length.unwrap_or(0)),
                1 | 2 => (
                    stream.timestamp.wrapping_add(header.timestamp_field),
                    header.length.unwrap_or(stream.length),
                ),
                _ if starts => (
                    stream.timestamp.wrapping_add(stream.timestamp_field),
                    stream.length,
                ),
                _ => (stream.timestamp, stream.length),
            };
            if header.fmt < 3 && !starts {
                return Err(ChunkError::NewHeaderMidMessage {
                    csid: header.csid,
                    fmt: header.fmt,
                    have: stream.partial.len(),
                    len: stream.length,
                });
            }
            if length > MAX_MESSAGE_LEN {
                return Err(ChunkError::MessageTooLong {
                    csid: header.csid,
                    len: length,
                });
            }
            let take = self.chunk_size.min(length - stream.partial.len());
            if self.buf.len() < header.size + take {
                return Ok(None);
            }
            // The whole chunk is here: commit the header, then the payload.
            if header.fmt < 3 {
                stream.timestamp_field = header.timestamp_field;
                stream.extended = header.extended;
                stream.length = length;
                if let Some(type_id) = header.type_id {
                    stream.type_id = type_id;
                }
                if let Some(stream_id) = header.stream_id {
                    stream.stream_id = stream_id;
                }
            }
            if starts {
                stream.timestamp = timestamp;
            }
            self.buf.advance(header.size);
            let body = self.buf.split_to(take);
            if stream.partial.len() + take < length {
                self.pending += take;
                if self.pending > MAX_PENDING {
                    return Err(ChunkError::TooMuchPending);
                }
                stream.partial.extend_from_slice(&body);
                continue;
            }
            self.pending -= stream.partial.len();
            let payload = if stream.partial.is_empty() {
                body.freeze()
            } else {
                stream.partial.extend_from_slice(&body);
                std::mem::take(&mut stream.partial).freeze()
            };
            let message = Message {
                timestamp: stream.timestamp,
                type_id: stream.type_id,
                stream_id: stream.stream_id,
                payload,
            };
            match message.type_id {
                SET_CHUNK_SIZE => {
                    self.chunk_size = chunk_size(&message.payload)? as usize;
                    return Ok(Some(message));
                }
                ABORT => {
                    if let Some(csid) = be_u32(&message.payload) {
                        if let Some(aborted) = self.streams.get_mut(&csid) {
                            self.pending -= aborted.partial.len();
                            aborted.partial.clear();
                        }
                    }
                }
                _ => return Ok(Some(message)),
            }
        }
    }

    /// Parses the chunk header at the front of the buffer without consuming it.
    fn header(&self) -> Result<Option<Header>, ChunkError> {
        let b = &self.buf[..];
        let Some(&first) = b.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let (csid, mut at) = match first & 0x3f {
            0 if b.len() >= 2 => (64 + u32::from(b[1]), 2),
            1 if b.len() >= 3 => (64 + u32::from(b[1]) + 256 * u32::from(b[2]), 3),
            0 | 1 => return Ok(None),
            id => (u32::from(id), 1),
        };
        let previous = self.streams.get(&csid);
        if fmt > 0 && previous.is_none() {
            return Err(ChunkError::NoPreviousHeader { csid, fmt });
        }
        let message_header = [11, 7, 3, 0][usize::from(fmt)];
        if b.len() < at + message_header {
            return Ok(None);
        }
        let h = &b[at..at + message_header];
        at += message_header;
        let (mut timestamp_field, extended) = if fmt < 3 {
            let field = be_u24(&h[0..3]);
            (field, field == EXTENDED_TIMESTAMP)
        } else {
            let p = previous.expect("checked above");
            (p.timestamp_field, p.extended)
        };
        if extended {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let ext = be_u32(&b[at..at + 4]).expect("four bytes");
            at += 4;
            if fmt < 3 {
                timestamp_field = ext;
            }
        }
        Ok(Some(Header {
            fmt,
            csid,
            size: at,
            timestamp_field,
            extended,
            length: (fmt < 2).then(|| be_u24(&h[3..6]) as usize),
            type_id: (fmt < 2).then(|| h[6]),
            stream_id: (fmt == 0).then(|| u32::from_le_bytes([h[7], h[8], h[9], h[10]])),
        }))
    }
}

/// The size a Set Chunk Size body asks for, checked.
fn chunk_size(body: &[u8]) -> Result<u32, ChunkError> {
    // The top bit is reserved and must be zero; a size with it set is refused like any other
    // size over 2^24 - 1 (rml_rtmp's session, which sees the same message, would take it whole).
    match be_u32(body) {
        Some(size @ 1..=MAX_CHUNK_SIZE) => Ok(size),
        _ => Err(ChunkError::InvalidChunkSize {
            body: body.iter().take(8).copied().collect(),
        }),
    }
}

fn be_u24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::messages::MessagePayload;
    use rml_rtmp::time::RtmpTimestamp;

    fn read_all(reader: &mut ChunkReader, bytes: &[u8]) -> Result<Vec<Message>, ChunkError> {
        reader.push(bytes);
        let mut out = Vec::new();
        while let Some(m) = reader.next_message()? {
            out.push(m);
        }
        Ok(out)
    }

    /// A type-0 chunk header for `csid`, in the shortest basic-header form that holds it.
    fn full_header(csid: u32, ts: u32, len: u32, type_id: u8, stream_id: u32) -> Vec<u8> {
        let mut h = match csid {
            2..=63 => vec![csid as u8],
            64..=319 => vec![0, (csid - 64) as u8],
            _ => vec![1, (csid - 64) as u8, ((csid - 64) >> 8) as u8],
        };
        h.extend_from_slice(&ts.to_be_bytes()[1..]);
        h.extend_from_slice(&len.to_be_bytes()[1..]);
        h.push(type_id);
        h.extend_from_slice(&stream_id.to_le_bytes());
        h
    }

    #[test]
    fn a_shrinking_length_mid_message_is_an_error_not_an_overflow() {
        // 200-byte message on csid 6: the first 128-byte chunk, then a type-1 header saying 50.
        let mut bytes = full_header(6, 0, 200, 20, 0);
        bytes.extend_from_slice(&[0u8; 128]);
        bytes.extend_from_slice(&[0x46, 0, 0, 0, 0, 0, 50, 20]);
        bytes.extend_from_slice(&[0u8; 50]);
        let err = read_all(&mut ChunkReader::default(), &bytes).unwrap_err();
        assert_eq!(
            err,
            ChunkError::NewHeaderMidMessage {
                csid: 6,
                fmt: 1,
                have: 128,
                len: 200
            }
        );
        assert!(err.to_string().contains("128 of 200"), "{err}");
    }

    #[test]
    fn an_empty_message_is_one_header() {
        let got = read_all(&mut ChunkReader::default(), &full_header(3, 9, 0, 18, 1)).unwrap();
        assert_eq!(
            got,
            vec![Message {
                timestamp: 9,
                type_id: 18,
                stream_id: 1,
                payload: Bytes::new()
            }]
        );
    }

    #[test]
    fn chunk_streams_are_limited() {
        let mut bytes = Vec::new();
        // Chunk streams 64..=319 in the two-byte form, then 320 in the three-byte one.
        for i in 0..=MAX_CHUNK_STREAMS as u32 {
            bytes.extend_from_slice(&full_header(64 + i, 0, 0, 20, 0));
        }
        let err = read_all(&mut ChunkReader::default(), &bytes).unwrap_err();
        assert_eq!(err, ChunkError::TooManyChunkStreams { csid: 64 + 256 });
    }

    #[test]
    fn a_continuation_without_a_start_is_an_error() {
        let err = read_all(&mut ChunkReader::default(), &[0xc3, 1, 2, 3]).unwrap_err();
        assert_eq!(err, ChunkError::NoPreviousHeader { csid: 3, fmt: 3 });
    }

    #[test]
    fn an_oversized_message_is_refused_before_it_is_buffered() {
        let bytes = full_header(6, 0, 0xFF_FFFF, 9, 1);
        let err = read_all(&mut ChunkReader::default(), &bytes).unwrap_err();
        assert!(matches!(err, ChunkError::MessageTooLong { csid: 6, .. }));
    }

    #[test]
    fn set_chunk_size_is_followed_and_zero_refused() {
        let mut r = ChunkReader::default();
        let mut bytes = full_header(2, 0, 4, 1, 0);
        bytes.extend_from_slice(&4096u32.to_be_bytes());
        let got = read_all(&mut r, &bytes).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(r.chunk_size(), 4096);
        let mut zero = full_header(2, 0, 4, 1, 0);
        zero.extend_from_slice(&[0, 0, 0, 0]);
        let err = read_all(&mut r, &zero).unwrap_err();
        assert!(matches!(err, ChunkError::InvalidChunkSize { .. }), "{err}");
    }

    #[test]
    fn abort_drops_the_unfinished_message() {
        let mut r = ChunkReader::default();
        let mut bytes = full_header(6, 0, 200, 20, 0);
        bytes.extend_from_slice(&[7u8; 128]);
        // Abort Message for csid 6 on csid 2, then a fresh 3-byte message on csid 6.
        bytes.extend_from_slice(&full_header(2, 0, 4, 2, 0));
        bytes.extend_from_slice(&6u32.to_be_bytes());
        bytes.extend_from_slice(&full_header(6, 5, 3, 20, 0));
        bytes.extend_from_slice(&[1, 2, 3]);
        let got = read_all(&mut r, &bytes).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], &[1, 2, 3]);
        assert_eq!(r.pending, 0);
    }

    /// Messages for the round trip: type, stream id, timestamp step and body.
    fn messages() -> impl Strategy<Value = Vec<(u8, u32, u32, Vec<u8>)>> {
        proptest::collection::vec(
            (
                prop_oneof![Just(4u8), Just(5), Just(8), Just(9), Just(18), Just(20)],
                0u32..3,
                prop_oneof![0u32..100, Just(0xFF_FFFF), 0x100_0000u32..0x200_0000],
                // rml_rtmp's serializer writes no chunk at all for an empty message.
                proptest::collection::vec(any::<u8>(), 1..700),
            ),
            0..12,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// What rml_rtmp's serializer writes (compressed headers, extended timestamps, any chunk
        /// size), cut at any points, comes back message for message.
        #[test]
        fn serializer_output_round_trips(
            msgs in messages(),
            chunk_size in prop_oneof![Just(128u32), 1u32..300, Just(4096)],
            start in prop_oneof![0u32..1000, 0xFF_FF00u32..0x100_0100],
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut ser = ChunkSerializer::new();
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            if chunk_size != 128 {
                let p = ser.set_max_chunk_size(chunk_size, RtmpTimestamp::new(0)).unwrap();
                bytes.extend_from_slice(&p.bytes);
                expected.push((0u32, SET_CHUNK_SIZE, 0u32, chunk_size.to_be_bytes().to_vec()));
            }
            // Timestamps rise per chunk stream (the serializer's choice of stream is by type), as
            // a server's do.
            let mut ts = HashMap::new();
            for (type_id, stream_id, step, body) in msgs {
                let csid = match type_id { 4 | 5 => 2, 18 => 3, 9 => 4, 8 => 5, _ => 6 };
                let t = ts.entry(csid).or_insert(start);
                *t += step;
                let m = MessagePayload {
                    timestamp: RtmpTimestamp::new(*t),
                    type_id,
                    message_stream_id: stream_id,
                    data: Bytes::from(body.clone()),
                };
                bytes.extend_from_slice(&ser.serialize(&m, false, false).unwrap().bytes);
                expected.push((*t, type_id, stream_id, body));
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut r = ChunkReader::default();
            let mut got = Vec::new();
            let mut from = 0;
            for to in points.into_iter().chain([bytes.len()]) {
                for m in read_all(&mut r, &bytes[from..to]).unwrap() {
                    got.push((m.timestamp, m.type_id, m.stream_id, m.payload.to_vec()));
                }
                from = to;
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(r.pending, 0);
        }

        /// Arbitrary bytes give messages or an error, never a panic, and buffer within bounds.
        #[test]
        fn arbitrary_bytes_are_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..8),
        ) {
            let mut r = ChunkReader::default();
            for c in chunks {
                if read_all(&mut r, &c).is_err() {
                    break;
                }
                prop_assert!(r.pending <= MAX_PENDING);
                prop_assert!(r.buf.len() <= 18 + MAX_MESSAGE_LEN);
            }
        }
    }
}
