//! Pure FLV video tag bodies for H.264 and H.265 (Enhanced RTMP) and the per-connection logic
//! that turns encoded frames into them.
//!
//! rml_rtmp treats video payloads as opaque FLV tag bodies, so the codec framing is ours: a
//! sequence header (the decoder configuration record) must precede the first coded frame and
//! be repeated whenever the parameter sets change, and every access unit goes out
//! length-prefixed. H.265 uses the Enhanced RTMP `ExVideoTagHeader` with FourCC `hvc1`, which
//! legacy FLV has no codec id for.

use crate::media::frame::{Codec, EncodedFrame};
use crate::media::h264::{
    annexb_to_avcc, avc_decoder_configuration_record, nal_units, H264Error, NalType, Sps,
};
use crate::media::hevc::{self, HevcError, HevcSps};
use bytes::Bytes;
use thiserror::Error;

/// Enhanced RTMP FourCC of HEVC.
pub const FOURCC_HVC1: [u8; 4] = *b"hvc1";

/// The `videocodecid` `onMetaData` carries for HEVC: the FourCC as a number, as Enhanced RTMP
/// specifies.
pub const CODEC_ID_HVC1: u32 = u32::from_be_bytes(FOURCC_HVC1);

/// A frame the tagger cannot turn into tags (bad parameter sets from the producer).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagError {
    /// H.264 parameter sets did not parse.
    #[error(transparent)]
    H264(#[from] H264Error),
    /// H.265 parameter sets did not parse.
    #[error(transparent)]
    H265(#[from] HevcError),
}

/// FLV `CodecID` for AVC/H.264, as carried in the tag header and in `onMetaData.videocodecid`.
pub const CODEC_ID_AVC: u8 = 7;

const FRAME_TYPE_KEY: u8 = 1 << 4;
const FRAME_TYPE_INTER: u8 = 2 << 4;
const AVC_SEQUENCE_HEADER: u8 = 0;
const AVC_NALU: u8 = 1;
const AVC_END_OF_SEQUENCE: u8 = 2;
/// Enhanced RTMP: the high bit of the first byte marks an `ExVideoTagHeader`.
const EX_HEADER: u8 = 0x80;
/// Enhanced RTMP packet type SequenceEnd.
const EX_SEQUENCE_END: u8 = 2;
/// Enhanced RTMP packet type SequenceStart (decoder configuration record follows the FourCC).
const EX_SEQUENCE_START: u8 = 0;
/// Enhanced RTMP packet type CodedFramesX: coded frames with composition time 0 implied.
const EX_CODED_FRAMES_X: u8 = 3;

/// The Enhanced RTMP HEVC sequence start tag body: `ExVideoTagHeader` (key frame,
/// SequenceStart, `hvc1`), then the HEVCDecoderConfigurationRecord.
pub fn hevc_sequence_start(vps: &[u8], sps: &[u8], pps: &[u8]) -> Result<Bytes, HevcError> {
    let record = hevc::hevc_decoder_configuration_record(vps, sps, pps)?;
    let mut body = Vec::with_capacity(5 + record.len());
    body.push(EX_HEADER | FRAME_TYPE_KEY | EX_SEQUENCE_START);
    body.extend_from_slice(&FOURCC_HVC1);
    body.extend_from_slice(&record);
    Ok(Bytes::from(body))
}

/// The Enhanced RTMP HEVC coded-frame tag body (CodedFramesX: no composition time, since
/// dockcast's producers emit no B-frames) for one Annex-B access unit, or `None` when only
/// parameter sets and delimiters were in it.
pub fn hevc_coded_frames(annexb_au: &[u8], keyframe: bool) -> Option<Bytes> {
    let frame_type = if keyframe {
        FRAME_TYPE_KEY
    } else {
        FRAME_TYPE_INTER
    };
    let mut body = Vec::with_capacity(5 + annexb_au.len());
    body.push(EX_HEADER | frame_type | EX_CODED_FRAMES_X);
    body.extend_from_slice(&FOURCC_HVC1);
    hevc::annexb_to_hvcc(annexb_au, &mut body);
    (body.len() > 5).then(|| Bytes::from(body))
}

/// The AVC sequence header tag body: keyframe, packet type 0, composition time 0, then the
/// AVCDecoderConfigurationRecord built from `sps` and `pps` (NAL units without start codes).
pub fn avc_sequence_header(sps: &[u8], pps: &[u8]) -> Result<Bytes, H264Error> {
    let record = avc_decoder_configuration_record(sps, pps)?;
    let mut body = Vec::with_capacity(5 + record.len());
    body.extend_from_slice(&[FRAME_TYPE_KEY | CODEC_ID_AVC, AVC_SEQUENCE_HEADER, 0, 0, 0]);
    body.extend_from_slice(&record);
    Ok(Bytes::from(body))
}

/// The AVC NALU tag body for one Annex-B access unit, or `None` when nothing is left once AUD,
/// SPS and PPS are removed (such a tag would be an empty frame to the server).
///
/// Composition time is 0 because dockcast's encoders emit no B-frames (pts == dts).
pub fn avc_nalu(annexb_au: &[u8], keyframe: bool) -> Option<Bytes> {
    let frame_type = if keyframe {
        FRAME_TYPE_KEY
    } else {
        FRAME_TYPE_INTER
    };
    let mut body = Vec::with_capacity(5 + annexb_au.len());
    body.extend_from_slice(&[frame_type | CODEC_ID_AVC, AVC_NALU, 0, 0, 0]);
    annexb_to_avcc(annexb_au, &mut body);
    (body.len() > 5).then(|| Bytes::from(body))
}

/// A coded-frame tag body: the 5-byte tag header, then each of `nals` behind its 4-byte
/// big-endian length (AVCC/HVCC framing), in one allocation of the exact size; `None` when
/// there are no NAL units (an empty frame to the server). Same output as [`avc_nalu`] and
/// [`hevc_coded_frames`] for the NAL units they keep.
fn length_prefixed(header: [u8; 5], nals: &[&[u8]]) -> Option<Bytes> {
    // A NAL unit over 4 GiB cannot be length-prefixed; the converters skip it too.
    let kept = || nals.iter().filter(|n| u32::try_from(n.len()).is_ok());
    let size: usize = kept().map(|n| 4 + n.len()).sum();
    if size == 0 {
        return None;
    }
    let mut body = Vec::with_capacity(header.len() + size);
    body.extend_from_slice(&header);
    for nal in kept() {
        body.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        body.extend_from_slice(nal);
    }
    Some(Bytes::from(body))
}

/// The AVC end-of-sequence tag body, sent before unpublishing so recorders close the stream.
pub fn avc_end_of_sequence() -> Bytes {
    Bytes::from_static(&[FRAME_TYPE_KEY | CODEC_ID_AVC, AVC_END_OF_SEQUENCE, 0, 0, 0])
}

/// The end-of-sequence tag body for `codec`: AVC packet type 2, or Enhanced RTMP SequenceEnd.
pub fn end_of_sequence(codec: Codec) -> Bytes {
    match codec {
        Codec::H264 => avc_end_of_sequence(),
        Codec::H265 => Bytes::from_static(&[
            EX_HEADER | FRAME_TYPE_KEY | EX_SEQUENCE_END,
            b'h',
            b'v',
            b'c',
            b'1',
        ]),
    }
}

/// What `onMetaData` announces about the video, so players and recorders size themselves before
/// the first frame.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamMetadata {
    /// `videocodecid`: 7 for AVC, [`CODEC_ID_HVC1`] for HEVC.
    pub codec_id: u32,
    /// Width in pixels (from the SPS).
    pub width: u32,
    /// Height in pixels (from the SPS).
    pub height: u32,
    /// Frames per second, when the producer knows it.
    pub framerate: Option<f32>,
    /// Target video bitrate in kbit/s, when the producer knows it.
    pub videodatarate_kbps: Option<u32>,
}

impl StreamMetadata {
    /// The encoder name dockcast announces.
    pub const ENCODER: &'static str = "dockcast";

    /// Converts to rml_rtmp's metadata, which serialises the `@setDataFrame onMetaData` message.
    pub fn to_rml(&self) -> rml_rtmp::sessions::StreamMetadata {
        let mut m = rml_rtmp::sessions::StreamMetadata::new();
        m.video_width = Some(self.width);
        m.video_height = Some(self.height);
        m.video_codec_id = Some(self.codec_id);
        m.video_frame_rate = self.framerate;
        m.video_bitrate_kbps = self.videodatarate_kbps;
        m.encoder = Some(Self::ENCODER.to_string());
        m
    }
}

/// One thing to send on the publishing stream, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// `onMetaData`, sent before the first sequence header and whenever the size changes.
    Metadata(StreamMetadata),
    /// An FLV video tag body with its RTMP timestamp in milliseconds.
    Video {
        /// RTMP timestamp: the frame's pts in ms, clamped so it never decreases; wraps at 2^32.
        timestamp_ms: u32,
        /// FLV video tag body.
        body: Bytes,
    },
}

/// Turns encoded frames into the tag sequence of one RTMP publish.
///
/// Keeps the last parameter sets across connections, because after a reconnect the first
/// keyframe may not carry them inline, while the new connection still needs a sequence header
/// first.
#[derive(Debug, Default)]
pub struct VideoTagger {
    /// Codec of the parameter sets below; a change of codec forgets them.
    codec: Option<Codec>,
    /// H.265 only.
    vps: Option<Bytes>,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    /// Whether the current connection has received the current parameter sets.
    header_sent: bool,
    metadata_sent: Option<(u32, u32, u32)>,
    /// Highest timestamp sent so far; kept across reconnects since pts never restarts.
    last_ms: u64,
    framerate: Option<f32>,
    bitrate_kbps: Option<u32>,
}

impl VideoTagger {
    /// Creates a tagger; `framerate` and `bitrate_kbps` only feed `onMetaData`.
    pub fn new(framerate: Option<f32>, bitrate_kbps: Option<u32>) -> Self {
        Self {
            framerate,
            bitrate_kbps,
            ..Self::default()
        }
    }

    /// Forgets what the previous connection was sent, so the next frame re-announces metadata
    /// and the sequence header. Timestamps keep following pts, which is continuous across
    /// reconnects.
    pub fn new_connection(&mut self) {
        self.header_sent = false;
        self.metadata_sent = None;
    }

    /// The tags to send for `frame`, in order. Empty when the frame cannot be decoded by the
    /// server yet (parameter sets not all known) or carries no slice data.
    pub fn tags_for(&mut self, frame: &EncodedFrame) -> Result<Vec<Outgoing>, TagError> {
        if self.codec != Some(frame.codec) {
            self.codec = Some(frame.codec);
            self.vps = None;
            self.sps = None;
            self.pps = None;
            self.header_sent = false;
        }
        // One pass over the access unit finds both the parameter sets and the NAL units that
        // go into the coded-frame tag: scanning for start codes is the sink's largest cost
        // per frame, so the body is built from these slices instead of a second scan.
        let mut coded: Vec<&[u8]> = Vec::new();
        for nal in nal_units(&frame.data) {
            let slot = match frame.codec {
                Codec::H264 => match NalType::from_header(nal[0]) {
                    NalType::Sps => &mut self.sps,
                    NalType::Pps => &mut self.pps,
                    NalType::Aud => continue,
                    _ => {
                        coded.push(nal);
                        continue;
                    }
                },
                Codec::H265 => match hevc::nal_type(nal) {
                    Some(hevc::NAL_VPS) => &mut self.vps,
                    Some(hevc::NAL_SPS) => &mut self.sps,
                    Some(hevc::NAL_PPS) => &mut self.pps,
                    Some(hevc::NAL_AUD) | None => continue,
                    Some(_) => {
                        coded.push(nal);
                        continue;
                    }
                },
            };
            if slot.as_deref() != Some(nal) {
                *slot = Some(Bytes::copy_from_slice(nal));
                self.header_sent = false;
            }
        }
        let mut out = Vec::new();
        let (Some(sps), Some(pps)) = (self.sps.clone(), self.pps.clone()) else {
            return Ok(out);
        };
        let timestamp_ms = self.timestamp_for(frame);
        if !self.header_sent {
            let (codec_id, width, height, header) = match frame.codec {
                Codec::H264 => {
                    let parsed = Sps::parse(&sps)?;
                    let header = avc_sequence_header(&sps, &pps)?;
                    (u32::from(CODEC_ID_AVC), parsed.width, parsed.height, header)
                }
                Codec::H265 => {
                    let Some(vps) = self.vps.clone() else {
                        return Ok(out);
                    };
                    let parsed = HevcSps::parse(&sps)?;
                    let header = hevc_sequence_start(&vps, &sps, &pps)?;
                    (CODEC_ID_HVC1, parsed.width, parsed.height, header)
                }
            };
            if self.metadata_sent != Some((codec_id, width, height)) {
                out.push(Outgoing::Metadata(StreamMetadata {
                    codec_id,
                    width,
                    height,
                    framerate: self.framerate,
                    videodatarate_kbps: self.bitrate_kbps,
                }));
                self.metadata_sent = Some((codec_id, width, height));
            }
            out.push(Outgoing::Video {
                timestamp_ms,
                body: header,
            });
            self.header_sent = true;
        }
        let frame_type = if frame.keyframe {
            FRAME_TYPE_KEY
        } else {
            FRAME_TYPE_INTER
        };
        let header = match frame.codec {
            Codec::H264 => [frame_type | CODEC_ID_AVC, AVC_NALU, 0, 0, 0],
            Codec::H265 => {
                let [a, b, c, d] = FOURCC_HVC1;
                [EX_HEADER | frame_type | EX_CODED_FRAMES_X, a, b, c, d]
            }
        };
        if let Some(body) = length_prefixed(header, &coded) {
            out.push(Outgoing::Video { timestamp_ms, body });
        }
        Ok(out)
    }

    /// pts in milliseconds, never going backwards (a producer glitch must not make the server
    /// drop or reorder frames).
    fn timestamp_for(&mut self, frame: &EncodedFrame) -> u32 {
        let pts_ms = u64::try_from(frame.pts.as_millis()).unwrap_or(u64::MAX);
        let ms = pts_ms.max(self.last_ms);
        self.last_ms = ms;
        // RTMP timestamps are 32-bit and wrap by design (after ~49.7 days).
        ms as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SPS: [u8; 25] = [
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
    ];
    const PPS: [u8; 5] = [0x68, 0xcb, 0x83, 0xcb, 0x20];

    fn annexb(nals: &[&[u8]]) -> Bytes {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(n);
        }
        Bytes::from(v)
    }

    fn frame(nals: &[&[u8]], pts_ms: u64, keyframe: bool) -> EncodedFrame {
        EncodedFrame {
            data: annexb(nals),
            pts: Duration::from_millis(pts_ms),
            keyframe,
            codec: Codec::H264,
        }
    }

    #[test]
    fn sequence_header_bytes() {
        let body = avc_sequence_header(&SPS[..4], &PPS[..2]).expect("header");
        assert_eq!(
            body.as_ref(),
            &[
                0x17, 0x00, 0, 0, 0, // key | AVC, sequence header, cts 0
                0x01, 0x42, 0xc0, 0x1e, 0xff, 0xe1, // record header
                0x00, 0x04, 0x67, 0x42, 0xc0, 0x1e, // SPS
                0x01, 0x00, 0x02, 0x68, 0xcb, // PPS
            ][..]
        );
    }

    #[test]
    fn nalu_bytes_key_and_inter() {
        let key = avc_nalu(&annexb(&[&[0x09, 0xf0], &SPS, &PPS, &[0x65, 0x88]]), true);
        assert_eq!(
            key.as_deref(),
            Some(&[0x17, 0x01, 0, 0, 0, 0, 0, 0, 2, 0x65, 0x88][..])
        );
        let inter = avc_nalu(&annexb(&[&[0x41, 0x9a, 0x01], &[0x41, 0x00, 0x02]]), false);
        assert_eq!(
            inter.as_deref(),
            Some(&[0x27, 0x01, 0, 0, 0, 0, 0, 0, 3, 0x41, 0x9a, 0x01, 0, 0, 0, 3, 0x41, 0, 2][..])
        );
        assert_eq!(avc_nalu(&annexb(&[&SPS, &PPS]), true), None);
    }

    #[test]
    fn end_of_sequence_bytes() {
        assert_eq!(avc_end_of_sequence().as_ref(), &[0x17, 0x02, 0, 0, 0][..]);
    }

    #[test]
    fn metadata_fields() {
        let m = StreamMetadata {
            codec_id: 7,
            width: 640,
            height: 360,
            framerate: Some(30.0),
            videodatarate_kbps: Some(1000),
        }
        .to_rml();
        assert_eq!(m.video_width, Some(640));
        assert_eq!(m.video_height, Some(360));
        assert_eq!(m.video_codec_id, Some(7));
        assert_eq!(m.video_frame_rate, Some(30.0));
        assert_eq!(m.video_bitrate_kbps, Some(1000));
        assert_eq!(m.encoder.as_deref(), Some("dockcast"));
    }

    #[test]
    fn tagger_sends_metadata_and_header_before_first_frame_and_on_change() {
        let mut t = VideoTagger::new(Some(30.0), None);
        // No parameter sets yet: nothing decodable to send.
        assert!(t
            .tags_for(&frame(&[&[0x41, 0x9a]], 0, false))
            .expect("ok")
            .is_empty());
        let out = t
            .tags_for(&frame(&[&SPS, &PPS, &[0x65, 0x88]], 1000, true))
            .expect("ok");
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[0], Outgoing::Metadata(m) if m.width == 640 && m.height == 360));
        assert!(
            matches!(&out[1], Outgoing::Video { timestamp_ms: 1000, body } if body[..2] == [0x17, 0])
        );
        assert!(
            matches!(&out[2], Outgoing::Video { timestamp_ms: 1000, body } if body[..2] == [0x17, 1])
        );
        // Same parameter sets again: no new header.
        let out = t
            .tags_for(&frame(&[&SPS, &PPS, &[0x65, 0x88]], 1033, true))
            .expect("ok");
        assert_eq!(out.len(), 1);
        assert!(matches!(
            &out[0],
            Outgoing::Video {
                timestamp_ms: 1033,
                ..
            }
        ));
        // Changed PPS: a new sequence header, but no metadata (size unchanged).
        let out = t
            .tags_for(&frame(&[&SPS, &[0x68, 0xce], &[0x65, 0x88]], 1066, true))
            .expect("ok");
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Outgoing::Video { body, .. } if body[..2] == [0x17, 0]));
    }

    #[test]
    fn tagger_timestamps_follow_pts_and_never_go_backwards() {
        let mut t = VideoTagger::default();
        let ts = |out: Vec<Outgoing>| match out.last() {
            Some(Outgoing::Video { timestamp_ms, .. }) => *timestamp_ms,
            other => panic!("unexpected {other:?}"),
        };
        let key = |pts| frame(&[&SPS, &PPS, &[0x65, 0x88]], pts, true);
        let inter = |pts| frame(&[&[0x41, 0x9a]], pts, false);
        assert_eq!(ts(t.tags_for(&key(5000)).expect("ok")), 5000);
        assert_eq!(ts(t.tags_for(&inter(5100)).expect("ok")), 5100);
        assert_eq!(ts(t.tags_for(&inter(5050)).expect("ok")), 5100);
        t.new_connection();
        // Parameter sets are remembered: a keyframe without them still gets a header.
        let out = t
            .tags_for(&frame(&[&[0x65, 0x88]], 9000, true))
            .expect("ok");
        assert_eq!(out.len(), 3);
        assert_eq!(ts(out), 9000);
        // 2^32 ms later the 32-bit RTMP timestamp wraps, as the protocol intends.
        let wrapped = t.tags_for(&inter((1u64 << 32) + 7)).expect("ok");
        assert_eq!(ts(wrapped), 7);
    }

    #[test]
    fn tagger_reports_bad_sps() {
        let mut t = VideoTagger::default();
        let err = t
            .tags_for(&frame(&[&[0x67, 0x42], &PPS, &[0x65, 0x88]], 0, true))
            .expect_err("bad SPS");
        assert!(matches!(err, TagError::H264(H264Error::Truncated { .. })));
    }

    #[test]
    fn hevc_tags_use_enhanced_rtmp_headers() {
        const VPS: [u8; 24] = [
            0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00,
            0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0x95, 0x98, 0x09,
        ];
        const HSPS: [u8; 42] = [
            0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00,
            0x00, 0x03, 0x00, 0x3f, 0xa0, 0x05, 0x02, 0x01, 0x69, 0x65, 0x95, 0x9a, 0x49, 0x32,
            0xbc, 0x05, 0xa0, 0x20, 0x00, 0x00, 0x03, 0x00, 0x20, 0x00, 0x00, 0x03, 0x03, 0xc1,
        ];
        const HPPS: [u8; 7] = [0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40];
        let idr: &[u8] = &[0x26, 0x01, 0xaf, 0x80];
        let mut t = VideoTagger::new(Some(30.0), Some(800));
        let mut key = frame(&[&VPS, &HSPS, &HPPS, idr], 40, true);
        key.codec = Codec::H265;
        let out = t.tags_for(&key).expect("ok");
        assert_eq!(out.len(), 3);
        assert!(
            matches!(&out[0], Outgoing::Metadata(m) if m.codec_id == CODEC_ID_HVC1 && m.width == 640 && m.height == 360)
        );
        assert!(
            matches!(&out[1], Outgoing::Video { body, .. } if body[..5] == *b"\x90hvc1" && body[5] == 1)
        );
        assert!(
            matches!(&out[2], Outgoing::Video { timestamp_ms: 40, body } if body[..] == *b"\x93hvc1\x00\x00\x00\x04\x26\x01\xaf\x80")
        );
        let mut inter = frame(&[&[0x02, 0x01, 0xd0, 0x80]], 73, false);
        inter.codec = Codec::H265;
        let out = t.tags_for(&inter).expect("ok");
        assert!(
            matches!(&out[..], [Outgoing::Video { timestamp_ms: 73, body }] if body[0] == 0xa3)
        );
        assert_eq!(end_of_sequence(Codec::H265).as_ref(), b"\x92hvc1");
        assert_eq!(end_of_sequence(Codec::H264).as_ref(), &[0x17, 2, 0, 0, 0]);
        assert_eq!(CODEC_ID_HVC1, 0x6876_6331);
    }

    proptest::proptest! {
        /// The single-pass body the tagger builds is byte for byte what the two-pass
        /// converters make, for any mix of NAL units after the parameter sets.
        #[test]
        fn tagger_body_matches_the_converters(
            nals in proptest::collection::vec(
                (0u8..=0xff, proptest::collection::vec(1u8..=0xff, 0..40)),
                0..8,
            ),
            keyframe: bool,
            hevc: bool,
        ) {
            let nals: Vec<Vec<u8>> = nals
                .into_iter()
                .map(|(head, mut rest)| {
                    // forbidden_zero_bit clear; no zero bytes, so no start code emulation.
                    let mut nal = vec![(head & 0x7f).max(1)];
                    nal.append(&mut rest);
                    nal
                })
                .collect();
            let refs: Vec<&[u8]> = nals.iter().map(Vec::as_slice).collect();
            let mut t = VideoTagger::new(None, None);
            // Parameter sets known from an earlier frame, so every frame yields a body tag.
            let mut setup = frame(&[&SPS, &PPS, &[0x65, 0x88]], 0, true);
            let mut f = frame(&refs, 40, keyframe);
            if hevc {
                const VPS: [u8; 24] = [
                    0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00,
                    0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0x95, 0x98, 0x09,
                ];
                const HSPS: [u8; 42] = [
                    0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00,
                    0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0xa0, 0x05, 0x02, 0x01, 0x69, 0x65,
                    0x95, 0x9a, 0x49, 0x32, 0xbc, 0x05, 0xa0, 0x20, 0x00, 0x00, 0x03, 0x00,
                    0x20, 0x00, 0x00, 0x03, 0x03, 0xc1,
                ];
                const HPPS: [u8; 7] = [0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40];
                setup = frame(&[&VPS, &HSPS, &HPPS, &[0x26, 0x01, 0xaf, 0x80]], 0, true);
                setup.codec = Codec::H265;
                f.codec = Codec::H265;
            }
            t.tags_for(&setup).expect("parameter sets parse");
            let expected = match f.codec {
                Codec::H264 => avc_nalu(&f.data, keyframe),
                Codec::H265 => hevc_coded_frames(&f.data, keyframe),
            };
            // A frame may itself carry (garbage) parameter sets, which then fail to parse:
            // only frames the tagger accepts are compared.
            if let Ok(tags) = t.tags_for(&f) {
                let body = tags.iter().rev().find_map(|tag| match tag {
                    Outgoing::Video { timestamp_ms: 40, body } if !is_sequence_header(body) => {
                        Some(body.clone())
                    }
                    _ => None,
                });
                proptest::prop_assert_eq!(body, expected);
            }
        }
    }

    /// True for an AVC sequence header or an Enhanced RTMP SequenceStart tag body.
    fn is_sequence_header(body: &[u8]) -> bool {
        (body[0] & 0x0f == CODEC_ID_AVC && body[1] == AVC_SEQUENCE_HEADER)
            || (body[0] & EX_HEADER != 0 && body[0] & 0x0f == EX_SEQUENCE_START)
    }
}
