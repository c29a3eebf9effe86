//! The stdin framing dockcast uses to hand access units to an adapter process.
//!
//! Raw Annex-B on a pipe loses the presentation time and the keyframe flag, and an adapter that
//! feeds an SDK (Agora's `sendEncodedVideoImage`, an SRT muxer) needs both. So each access unit
//! is preceded by a fixed 20-byte header. Pure code: an encoder for the sink and a streaming
//! [`Decoder`] for our tests and for anyone writing an adapter in Rust.
//!
//! # Format (version 1)
//!
//! Every access unit is one record: a header, then `payload length` bytes of Annex-B payload
//! (start codes included; for H.264, SPS and PPS inline before every IDR). All integers are
//! big-endian.
//!
//! | offset | size | field          | value                                                    |
//! |-------:|-----:|----------------|----------------------------------------------------------|
//! | 0      | 4    | magic          | ASCII `DCAU` (`44 43 41 55`)                             |
//! | 4      | 1    | version        | `1`                                                      |
//! | 5      | 1    | flags          | bit 0: keyframe (a decoder can start here); bits 1–7: 0 |
//! | 6      | 1    | codec          | `1` = H.264, `2` = H.265                                 |
//! | 7      | 1    | reserved       | `0`                                                      |
//! | 8      | 8    | pts            | presentation time in microseconds, u64                   |
//! | 16     | 4    | payload length | bytes of payload that follow, u32                        |
//! | 20     | n    | payload        | the Annex-B access unit                                  |
//!
//! Writers set the reserved bits and byte to zero; readers ignore them, so they can carry
//! optional information later without a version bump. A new version number means a layout a
//! version-1 reader cannot skip. The pts starts near zero when the session starts and never goes
//! backwards; it is not a wall-clock time. The first record written to a fresh adapter is always
//! a keyframe.
//!
//! A reader that finds anything but `DCAU` where a header should start (a writer bug, a torn
//! pipe) scans forward to the next `DCAU` and reports how many bytes it skipped; [`Decoder`] does
//! exactly that.

use crate::media::frame::{Codec, EncodedFrame};
use bytes::{Buf, Bytes, BytesMut};
use std::time::Duration;

/// Start of every record, so a reader can find its way back after garbage.
pub const MAGIC: [u8; 4] = *b"DCAU";
/// The only layout version this module writes and reads.
pub const VERSION: u8 = 1;
/// Size of the fixed header before each payload.
pub const HEADER_LEN: usize = 20;
/// `flags` bit that marks a keyframe.
pub const FLAG_KEYFRAME: u8 = 0x01;
/// Default largest payload [`Decoder`] accepts: far above any real access unit (a 4K IDR at a
/// high bitrate is a few MB), low enough that a corrupt length cannot make it buffer gigabytes.
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

/// The codec byte of a record. Wider than [`Codec`] because the format already reserves H.265
/// for sources that deliver it, before the rest of the pipeline does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramedCodec {
    /// `1`.
    H264,
    /// `2`.
    H265,
}

impl FramedCodec {
    /// The byte written in the header.
    pub fn to_byte(self) -> u8 {
        match self {
            FramedCodec::H264 => 1,
            FramedCodec::H265 => 2,
        }
    }

    /// The codec a header byte names, if any.
    pub fn from_byte(b: u8) -> Option<FramedCodec> {
        match b {
            1 => Some(FramedCodec::H264),
            2 => Some(FramedCodec::H265),
            _ => None,
        }
    }
}

impl From<Codec> for FramedCodec {
    fn from(c: Codec) -> Self {
        match c {
            Codec::H264 => FramedCodec::H264,
            Codec::H265 => FramedCodec::H265,
        }
    }
}

/// Header of one record, decoded; what an adapter needs besides the payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Flag bit 0.
    pub keyframe: bool,
    /// Codec byte.
    pub codec: FramedCodec,
    /// Presentation time in microseconds.
    pub pts_us: u64,
    /// Length of the payload that follows.
    pub payload_len: u32,
}

impl RecordHeader {
    /// The header for `frame`. `None` when the payload does not fit a u32 length, which no real
    /// access unit reaches; the sink drops such a frame instead of writing a lie.
    pub fn for_frame(frame: &EncodedFrame) -> Option<RecordHeader> {
        Some(RecordHeader {
            keyframe: frame.keyframe,
            codec: frame.codec.into(),
            // u64 microseconds last 584 000 years; saturate rather than wrap past that.
            pts_us: u64::try_from(frame.pts.as_micros()).unwrap_or(u64::MAX),
            payload_len: u32::try_from(frame.data.len()).ok()?,
        })
    }

    /// The 20 header bytes, so the sink can write them followed by the payload without copying
    /// the payload into a new buffer.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5] = if self.keyframe { FLAG_KEYFRAME } else { 0 };
        h[6] = self.codec.to_byte();
        h[7] = 0;
        h[8..16].copy_from_slice(&self.pts_us.to_be_bytes());
        h[16..20].copy_from_slice(&self.payload_len.to_be_bytes());
        h
    }

    /// Parses a header that starts with [`MAGIC`]; the caller has checked the magic.
    fn parse(h: &[u8; HEADER_LEN], max_payload: u32) -> Result<RecordHeader, FramingError> {
        if h[4] != VERSION {
            return Err(FramingError::UnsupportedVersion { version: h[4] });
        }
        let codec =
            FramedCodec::from_byte(h[6]).ok_or(FramingError::UnknownCodec { codec: h[6] })?;
        let mut pts = [0u8; 8];
        pts.copy_from_slice(&h[8..16]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&h[16..20]);
        let payload_len = u32::from_be_bytes(len);
        if payload_len > max_payload {
            return Err(FramingError::PayloadTooLarge {
                len: payload_len,
                max: max_payload,
            });
        }
        Ok(RecordHeader {
            keyframe: h[5] & FLAG_KEYFRAME != 0,
            codec,
            pts_us: u64::from_be_bytes(pts),
            payload_len,
        })
    }
}

/// One whole record as a byte vector: header then payload.
///
/// The sink itself writes header and payload separately; this is for tests and tools that want
/// the record in one piece. `None` under the same condition as [`RecordHeader::for_frame`].
pub fn encode(frame: &EncodedFrame) -> Option<Vec<u8>> {
    let header = RecordHeader::for_frame(frame)?;
    let mut out = Vec::with_capacity(HEADER_LEN + frame.data.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&frame.data);
    Some(out)
}

/// One access unit read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedUnit {
    /// Its header.
    pub header: RecordHeader,
    /// The Annex-B payload (a view into the decoder's buffer, not a copy).
    pub payload: Bytes,
}

impl DecodedUnit {
    /// The presentation time as a `Duration`.
    pub fn pts(&self) -> Duration {
        Duration::from_micros(self.header.pts_us)
    }
}

/// What the decoder found wrong. After returning one, the decoder has already skipped past the
/// offending bytes, so the caller logs it and keeps reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Bytes that are not a record were skipped while looking for the next `DCAU`.
    #[error("skipped {skipped} bytes that are not a DCAU record")]
    Garbage {
        /// How many bytes were dropped.
        skipped: usize,
    },
    /// A record with a version this reader does not know; skipped.
    #[error("record version {version} is not supported (only 1)")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// A record with a codec byte that names no codec; skipped.
    #[error("record codec {codec} is unknown (1 = H.264, 2 = H.265)")]
    UnknownCodec {
        /// The codec byte found.
        codec: u8,
    },
    /// A length above the decoder's limit, most likely a corrupt header; skipped.
    #[error("record payload length {len} exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Length found.
        len: u32,
        /// The decoder's limit.
        max: u32,
    },
}

/// Streaming reader of the framing: push bytes as they arrive, pull whole access units.
///
/// Memory stays bounded by one header plus the largest payload it accepts, whatever it is fed.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_payload: u32,
    /// Header of the record whose payload is still arriving.
    pending: Option<RecordHeader>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl Decoder {
    /// A decoder that refuses payloads above `max_payload` bytes.
    pub fn new(max_payload: u32) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            max_payload,
            pending: None,
        }
    }

    /// Appends bytes read from the pipe.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held but not yet returned; for tests and for adapters that want to report a torn
    /// last record at end of stream.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next access unit: `Ok(None)` when more bytes are needed, `Err` when bytes had to be
    /// skipped (already done; call again). Every `Err` consumes at least one byte, so a caller
    /// looping until `Ok(None)` always terminates.
    pub fn next_unit(&mut self) -> Result<Option<DecodedUnit>, FramingError> {
        if self.pending.is_none() {
            if !self.buf.starts_with(&MAGIC) {
                let skipped = self.skip_to_magic();
                if skipped > 0 {
                    return Err(FramingError::Garbage { skipped });
                }
                // Not even a whole magic yet.
                return Ok(None);
            }
            if self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.buf[..HEADER_LEN]);
            match RecordHeader::parse(&h, self.max_payload) {
                Ok(header) => {
                    self.buf.advance(HEADER_LEN);
                    self.pending = Some(header);
                }
                Err(e) => {
                    // Break the magic so the next call scans for the following record.
                    self.buf.advance(1);
                    return Err(e);
                }
            }
        }
        let Some(header) = self.pending else {
            return Ok(None);
        };
        let len = header.payload_len as usize;
        if self.buf.len() < len {
            // Reserve once for the whole payload so a big IDR is not regrown chunk by chunk.
            self.buf.reserve(len - self.buf.len());
            return Ok(None);
        }
        self.pending = None;
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(DecodedUnit { header, payload }))
    }

    /// Drops bytes up to the next possible magic; keeps a tail that may be the start of one.
    fn skip_to_magic(&mut self) -> usize {
        let found = self.buf.windows(MAGIC.len()).position(|w| w == MAGIC);
        let skip = match found {
            Some(i) => i,
            None => {
                // Keep the longest tail that is a prefix of the magic.
                let keep = (1..MAGIC.len())
                    .rev()
                    .find(|&k| self.buf.len() >= k && self.buf.ends_with(&MAGIC[..k]))
                    .unwrap_or(0);
                self.buf.len() - keep
            }
        };
        self.buf.advance(skip);
        skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(data: &[u8], pts_us: u64, keyframe: bool) -> EncodedFrame {
        EncodedFrame {
            data: Bytes::copy_from_slice(data),
            pts: Duration::from_micros(pts_us),
            keyframe,
            codec: Codec::H264,
        }
    }

    fn drain(d: &mut Decoder) -> (Vec<DecodedUnit>, Vec<FramingError>) {
        let mut units = Vec::new();
        let mut errors = Vec::new();
        loop {
            match d.next_unit() {
                Ok(Some(u)) => units.push(u),
                Ok(None) => return (units, errors),
                Err(e) => errors.push(e),
            }
        }
    }

    #[test]
    fn header_bytes_match_the_documented_table() {
        let f = frame(&[0, 0, 0, 1, 0x65, 0xAA], 0x0102_0304_0506_0708, true);
        let rec = encode(&f).expect("fits");
        assert_eq!(
            rec,
            [
                b'D', b'C', b'A', b'U', 1, 0x01, 1,
                0, // magic, version, flags, codec, reserved
                1, 2, 3, 4, 5, 6, 7, 8, // pts
                0, 0, 0, 6, // length
                0, 0, 0, 1, 0x65, 0xAA,
            ]
        );
        let delta = encode(&frame(&[9], 33_333, false)).expect("fits");
        assert_eq!(&delta[4..8], &[1, 0, 1, 0]);
        assert_eq!(&delta[8..16], &33_333u64.to_be_bytes());
    }

    #[test]
    fn reserved_bits_are_ignored_and_h265_is_accepted() {
        let mut rec = encode(&frame(&[1, 2, 3], 7, true)).expect("fits");
        rec[5] = 0xFF;
        rec[6] = 2;
        rec[7] = 0x5A;
        let mut d = Decoder::default();
        d.push(&rec);
        let (units, errors) = drain(&mut d);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(units.len(), 1);
        assert!(units[0].header.keyframe);
        assert_eq!(units[0].header.codec, FramedCodec::H265);
        assert_eq!(units[0].pts(), Duration::from_micros(7));
    }

    #[test]
    fn bad_version_codec_and_length_are_reported_then_skipped() {
        let good = encode(&frame(&[0, 0, 1, 0x41], 100, false)).expect("fits");
        let mut bad_version = good.clone();
        bad_version[4] = 2;
        let mut bad_codec = good.clone();
        bad_codec[6] = 9;
        let mut bad_len = good.clone();
        bad_len[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        for (bad, want) in [
            (bad_version, FramingError::UnsupportedVersion { version: 2 }),
            (bad_codec, FramingError::UnknownCodec { codec: 9 }),
            (
                bad_len,
                FramingError::PayloadTooLarge {
                    len: u32::MAX,
                    max: 1024,
                },
            ),
        ] {
            let mut d = Decoder::new(1024);
            d.push(&bad);
            d.push(&good);
            let (units, errors) = drain(&mut d);
            assert_eq!(errors.first(), Some(&want));
            assert_eq!(units.len(), 1, "{errors:?}");
            assert_eq!(units[0].payload.as_ref(), &[0, 0, 1, 0x41]);
        }
    }

    #[test]
    fn a_magic_split_across_pushes_is_not_skipped() {
        let rec = encode(&frame(&[0, 0, 1, 0x65], 5, true)).expect("fits");
        let mut d = Decoder::default();
        d.push(b"xyzDC");
        assert_eq!(d.next_unit(), Err(FramingError::Garbage { skipped: 3 }));
        assert_eq!(d.next_unit(), Ok(None));
        d.push(&rec[2..]);
        let (units, errors) = drain(&mut d);
        assert!(errors.is_empty());
        assert_eq!(units.len(), 1);
    }

    fn arb_frames() -> impl Strategy<Value = Vec<(Vec<u8>, u64, bool)>> {
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..300),
                any::<u64>(),
                any::<bool>(),
            ),
            0..12,
        )
    }

    fn encode_all(frames: &[(Vec<u8>, u64, bool)]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|(d, p, k)| encode(&frame(d, *p, *k)).expect("fits"))
            .collect()
    }

    fn check_same(units: &[DecodedUnit], frames: &[(Vec<u8>, u64, bool)]) {
        assert_eq!(units.len(), frames.len());
        for (u, (d, p, k)) in units.iter().zip(frames) {
            assert_eq!(u.payload.as_ref(), d.as_slice());
            assert_eq!(u.header.pts_us, *p);
            assert_eq!(u.header.keyframe, *k);
            assert_eq!(u.header.codec, FramedCodec::H264);
        }
    }

    proptest! {
        #[test]
        fn round_trips_whatever_the_chunking(frames in arb_frames(), chunk in 1usize..64) {
            let stream = encode_all(&frames);
            let mut d = Decoder::default();
            let mut units = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                let (u, errors) = drain(&mut d);
                prop_assert!(errors.is_empty(), "{errors:?}");
                units.extend(u);
            }
            check_same(&units, &frames);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..128,
        ) {
            let mut d = Decoder::new(256);
            for piece in bytes.chunks(chunk) {
                d.push(piece);
                let _ = drain(&mut d);
                prop_assert!(d.buffered() <= HEADER_LEN + 256 + 128);
            }
        }

        #[test]
        fn resynchronises_after_garbage(
            before in arb_frames(),
            garbage in proptest::collection::vec(any::<u8>().prop_filter("no D", |b| *b != b'D'), 1..200),
            after in arb_frames(),
        ) {
            // Garbage cut into the middle of a stream: everything after it must come back, and
            // the skip must be reported, never silently swallowed.
            let mut stream = encode_all(&before);
            stream.extend_from_slice(&garbage);
            stream.extend_from_slice(&encode_all(&after));
            let mut d = Decoder::default();
            d.push(&stream);
            let (units, errors) = drain(&mut d);
            let skipped: usize = errors
                .iter()
                .map(|e| match e {
                    FramingError::Garbage { skipped } => *skipped,
                    _ => 1,
                })
                .sum();
            prop_assert_eq!(skipped, garbage.len());
            let mut all = before.clone();
            all.extend(after.iter().cloned());
            check_same(&units, &all);
        }
    }
}
