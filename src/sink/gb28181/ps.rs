//! MPEG-2 Program Stream muxer for one H.264 video stream, in the layout GB/T 28181 platforms
//! (ZLMediaKit, wvp, SRS) expect: the one ireader/media-server writes inside ZLMediaKit.
//!
//! Per access unit: a pack header; on keyframes a system header and a program stream map
//! (receivers such as GStreamer's `mpegpsdemux` only expose H.264 after a PSM, and a platform
//! joining mid-stream starts at the next keyframe); then the access unit in one or more video
//! PES packets, the first carrying the timestamps. Only the video stream is declared: declaring
//! audio that never comes makes ZLMediaKit wait 10 s for it.

use bytes::{BufMut, Bytes, BytesMut};

/// The 90 kHz clock wraps at 2^33 in every MPEG timestamp field.
const TS_MASK: u64 = (1 << 33) - 1;

/// `program_mux_rate` in 50 B/s units; receivers ignore it but zero is illegal (ireader's value).
const PROGRAM_MUX_RATE: u32 = 6106;

/// SCR runs this far (40 ms at 90 kHz) ahead of the decode time, as ireader does, so a
/// receiver buffering by SCR has the frame before it must be decoded.
const SCR_LEAD: u64 = 3600;

/// Largest `PES_packet_length`: the field is 16 bits and must be set in a program stream.
pub const MAX_PES_PACKET_LENGTH: usize = 0xFFFF;

/// Stream id of the first MPEG video stream.
pub const VIDEO_STREAM_ID: u8 = 0xE0;

/// PSM `stream_type` for H.264.
pub const STREAM_TYPE_H264: u8 = 0x1B;

/// Converts a media time to the 90 kHz clock modulo 2^33, the unit of every PS/RTP timestamp.
pub fn to_90khz(t: std::time::Duration) -> u64 {
    let ticks = t.as_micros().saturating_mul(9) / 100;
    (ticks as u64) & TS_MASK
}

/// Muxes H.264 access units into PS packs; one per sink session.
#[derive(Debug, Default, Clone)]
pub struct PsMuxer {
    // Kept so a receiver can tell a changed map from a repeated one; never changes today.
    psm_version: u8,
}

impl PsMuxer {
    /// A muxer for a video-only H.264 program stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// One pack for one access unit: `data` is Annex-B, `pts`/`dts` on the 90 kHz clock
    /// (`dts` only when it differs, i.e. with B-frames).
    pub fn mux(&self, data: &[u8], pts: u64, dts: Option<u64>, keyframe: bool) -> Bytes {
        let pts = pts & TS_MASK;
        let dts = dts.map(|d| d & TS_MASK).filter(|&d| d != pts);
        let decode_time = dts.unwrap_or(pts);
        let mut out = BytesMut::with_capacity(data.len() + 64 + data.len() / 0xFF00 * 9);
        write_pack_header(&mut out, decode_time.wrapping_sub(SCR_LEAD) & TS_MASK);
        if keyframe {
            write_system_header(&mut out);
            write_psm(&mut out, self.psm_version);
        }
        write_pes(&mut out, data, pts, dts, keyframe);
        out.freeze()
    }
}

/// Pack header (ISO/IEC 13818-1 Table 2-33), 14 bytes, no stuffing.
fn write_pack_header(out: &mut BytesMut, scr: u64) {
    let ext: u64 = 0;
    let rate = PROGRAM_MUX_RATE;
    out.put_slice(&[0, 0, 1, 0xBA]);
    out.put_u8((0x44 | (((scr >> 30) & 7) << 3) | ((scr >> 28) & 3)) as u8);
    out.put_u8((scr >> 20) as u8);
    out.put_u8((0x04 | (((scr >> 15) & 0x1F) << 3) | ((scr >> 13) & 3)) as u8);
    out.put_u8((scr >> 5) as u8);
    out.put_u8((0x04 | ((scr & 0x1F) << 3) | ((ext >> 7) & 3)) as u8);
    out.put_u8((0x01 | ((ext & 0x7F) << 1)) as u8);
    out.put_u8((rate >> 14) as u8);
    out.put_u8((rate >> 6) as u8);
    out.put_u8((0x03 | ((rate & 0x3F) << 2)) as u8);
    out.put_u8(0xF8);
}

/// System header (Table 2-34) declaring the single video stream E0 with a 128 KiB P-STD buffer.
fn write_system_header(out: &mut BytesMut) {
    const RATE_BOUND: u32 = 26234;
    out.put_slice(&[0, 0, 1, 0xBB, 0x00, 0x09]);
    let marked = (1 << 23) | (RATE_BOUND << 1) | 1;
    out.put_slice(&marked.to_be_bytes()[1..]);
    // audio_bound 0, fixed 0, CSPS 0 | audio lock 0, video lock 0, marker, video_bound 1 |
    // packet_rate_restriction 0 + reserved.
    out.put_slice(&[0x00, 0x21, 0x7F]);
    // stream E0, '11', buffer scale 1 (KiB units), size 128.
    out.put_slice(&[VIDEO_STREAM_ID, 0xE0, 0x80]);
}

/// Program stream map (Table 2-41) mapping E0 to H.264, with its CRC-32/MPEG-2.
fn write_psm(out: &mut BytesMut, version: u8) {
    let start = out.len();
    out.put_slice(&[0, 0, 1, 0xBC, 0x00, 0x0E]);
    out.put_u8(0x80 | (version & 0x1F));
    out.put_u8(0x01);
    out.put_u16(0); // program_stream_info_length
    out.put_u16(4); // elementary_stream_map_length
    out.put_slice(&[STREAM_TYPE_H264, VIDEO_STREAM_ID, 0x00, 0x00]);
    let crc = crc32_mpeg2(&out[start..]);
    out.put_u32(crc);
}

/// Video PES packets carrying `data`; the first has the timestamps, the rest continue it.
fn write_pes(out: &mut BytesMut, data: &[u8], pts: u64, dts: Option<u64>, keyframe: bool) {
    let mut first = true;
    let mut rest = data;
    // An empty access unit still gets its timestamped PES so the receiver sees the frame time.
    loop {
        let header_data_len = match (first, dts) {
            (false, _) => 0,
            (true, None) => 5,
            (true, Some(_)) => 10,
        };
        let room = MAX_PES_PACKET_LENGTH - 3 - header_data_len;
        let (chunk, tail) = rest.split_at(rest.len().min(room));
        out.put_slice(&[0, 0, 1, VIDEO_STREAM_ID]);
        out.put_u16((3 + header_data_len + chunk.len()) as u16);
        // '10', not scrambled, data_alignment_indicator on the start of a keyframe.
        out.put_u8(if first && keyframe { 0x84 } else { 0x80 });
        match (first, dts) {
            (false, _) => out.put_slice(&[0x00, 0x00]),
            (true, None) => {
                out.put_slice(&[0x80, 5]);
                put_timestamp(out, 0b0010, pts);
            }
            (true, Some(dts)) => {
                out.put_slice(&[0xC0, 10]);
                put_timestamp(out, 0b0011, pts);
                put_timestamp(out, 0b0001, dts);
            }
        }
        out.put_slice(chunk);
        first = false;
        rest = tail;
        if rest.is_empty() {
            break;
        }
    }
}

/// A 33-bit timestamp in the 5-byte PES layout with marker bits.
fn put_timestamp(out: &mut BytesMut, prefix: u8, ts: u64) {
    out.put_u8((prefix << 4) | ((((ts >> 30) & 7) as u8) << 1) | 1);
    out.put_u16(((((ts >> 15) & 0x7FFF) as u16) << 1) | 1);
    out.put_u16((((ts & 0x7FFF) as u16) << 1) | 1);
}

/// CRC-32/MPEG-2 (poly 0x04C11DB7, init all ones, no reflection, no final xor) as the PSM needs.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = (i as u32) << 24;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04C1_1DB7
                } else {
                    c << 1
                };
                bit += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    data.iter().fold(0xFFFF_FFFF, |crc, &b| {
        (crc << 8) ^ TABLE[(((crc >> 24) as u8) ^ b) as usize]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect()
    }

    /// Bit-by-bit CRC-32/MPEG-2 written from the polynomial, independent of the table version.
    fn crc_bitwise(data: &[u8]) -> u32 {
        let mut crc: u32 = 0xFFFF_FFFF;
        for &byte in data {
            for i in (0..8).rev() {
                let bit = (byte >> i) & 1 == 1;
                let top = crc & 0x8000_0000 != 0;
                crc <<= 1;
                if bit != top {
                    crc ^= 0x04C1_1DB7;
                }
            }
        }
        crc
    }

    #[test]
    fn crc_matches_the_check_value_and_an_independent_implementation() {
        // The catalogued check value of CRC-32/MPEG-2 for "123456789".
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
        assert_eq!(crc_bitwise(b"123456789"), 0x0376_E6E7);
        for len in 0..64usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(crc32_mpeg2(&data), crc_bitwise(&data));
        }
    }

    #[test]
    fn keyframe_pack_is_byte_exact_with_the_notes() {
        let pack = PsMuxer::new().mux(&[0, 0, 0, 1, 0x65, 0xAA], 90_000, None, true);
        let mut want = Vec::new();
        // Pack header for SCR 86400 (= 90000 - 3600), rate 6106.
        want.extend(hex("00 00 01 BA 44 00 16 8C 04 01 00 5F 6B F8"));
        want.extend(hex("00 00 01 BB 00 09 80 CC F5 00 21 7F E0 E0 80"));
        want.extend(hex(
            "00 00 01 BC 00 0E 80 01 00 00 00 04 1B E0 00 00 36 E2 9D 01",
        ));
        want.extend(hex(
            "00 00 01 E0 00 0E 84 80 05 21 00 05 BF 21 00 00 00 01 65 AA",
        ));
        assert_eq!(pack.as_ref(), want.as_slice());
    }

    #[test]
    fn pack_header_scr_bits_round_trip() {
        for scr in [0u64, 1, 86_400, 0x1_2345_6789, TS_MASK] {
            let mut out = BytesMut::new();
            write_pack_header(&mut out, scr);
            let b = &out[4..10];
            let got = (((b[0] as u64 >> 3) & 7) << 30)
                | ((b[0] as u64 & 3) << 28)
                | ((b[1] as u64) << 20)
                | (((b[2] as u64 >> 3) & 0x1F) << 15)
                | ((b[2] as u64 & 3) << 13)
                | ((b[3] as u64) << 5)
                | ((b[4] as u64 >> 3) & 0x1F);
            assert_eq!(got, scr);
            // Marker bits that strict parsers check.
            assert_eq!(b[0] & 0xC4, 0x44);
            assert_eq!(b[2] & 0x04, 0x04);
            assert_eq!(b[4] & 0x04, 0x04);
            assert_eq!(b[5] & 0x01, 0x01);
        }
    }

    #[test]
    fn p_frame_has_no_system_header_or_psm() {
        let pack = PsMuxer::new().mux(&[0, 0, 0, 1, 0x41, 0x9A], 3003, None, false);
        assert_eq!(&pack[..4], &[0, 0, 1, 0xBA]);
        assert_eq!(&pack[14..18], &[0, 0, 1, 0xE0]);
        assert_eq!(pack[20], 0x80, "no data alignment flag on a P-frame");
        assert_eq!(pack.len(), 14 + 9 + 5 + 6);
    }

    #[test]
    fn dts_is_written_only_when_it_differs() {
        let m = PsMuxer::new();
        let same = m.mux(&[1, 2, 3], 9000, Some(9000), false);
        assert_eq!(same[14 + 7], 0x80);
        let b = m.mux(&[1, 2, 3], 9000, Some(6000), false);
        let pes = &b[14..];
        assert_eq!(&pes[6..9], &[0x80, 0xC0, 10]);
        assert_eq!(pes[9] >> 4, 0b0011);
        assert_eq!(pes[14] >> 4, 0b0001);
        // DTS 6000 = 0x1770: middle 15 bits 0, low 15 bits 6000.
        assert_eq!(&pes[14..19], &[0x11, 0x00, 0x01, 0x2E, 0xE1]);
    }

    #[test]
    fn large_access_units_split_into_bounded_pes_packets() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let pack = PsMuxer::new().mux(&data, 1234, None, false);
        let mut pos = 14;
        let mut payload = Vec::new();
        let mut count = 0;
        while pos < pack.len() {
            assert_eq!(&pack[pos..pos + 4], &[0, 0, 1, 0xE0]);
            let len = u16::from_be_bytes([pack[pos + 4], pack[pos + 5]]) as usize;
            let hdr = pack[pos + 8] as usize;
            assert_eq!(hdr, if count == 0 { 5 } else { 0 });
            payload.extend_from_slice(&pack[pos + 9 + hdr..pos + 6 + len]);
            pos += 6 + len;
            count += 1;
        }
        assert_eq!(pos, pack.len());
        assert_eq!(count, 4);
        assert_eq!(payload, data);
    }

    /// Walks a muxed stream with an independent reader: start codes, lengths, and the PSM CRC
    /// checked bit by bit (the `mpeg-ps` crate was tried as the oracle, but 0.6.0 reads
    /// `program_stream_map_length` as excluding the CRC, against ISO/IEC 13818-1 §2.5.4.2 and
    /// every GB receiver, so it rejects correct maps).
    #[test]
    fn stream_structure_and_psm_crc_check_out() {
        let m = PsMuxer::new();
        let mut stream = Vec::new();
        for i in 0..5u64 {
            let au = vec![0, 0, 0, 1, if i == 0 { 0x65 } else { 0x41 }, 0x88, i as u8];
            stream.extend_from_slice(&m.mux(&au, 90_000 + i * 3000, None, i % 4 == 0));
        }
        let mut pos = 0;
        let mut kinds = Vec::new();
        while pos < stream.len() {
            assert_eq!(&stream[pos..pos + 3], &[0, 0, 1]);
            let id = stream[pos + 3];
            let len = if id == 0xBA {
                14
            } else {
                6 + u16::from_be_bytes([stream[pos + 4], stream[pos + 5]]) as usize
            };
            if id == 0xBC {
                let psm = &stream[pos..pos + len];
                let (body, crc) = psm.split_at(len - 4);
                assert_eq!(crc_bitwise(body).to_be_bytes(), crc);
                // The MPEG-2 CRC over data plus its own CRC leaves a zero residue.
                assert_eq!(crc_bitwise(psm), 0);
            }
            kinds.push(id);
            pos += len;
        }
        assert_eq!(pos, stream.len());
        assert_eq!(
            kinds,
            vec![
                0xBA, 0xBB, 0xBC, 0xE0, 0xBA, 0xE0, 0xBA, 0xE0, 0xBA, 0xE0, 0xBA, 0xBB, 0xBC, 0xE0
            ]
        );
    }

    #[test]
    fn clock_conversion_wraps_at_33_bits() {
        assert_eq!(to_90khz(Duration::from_secs(1)), 90_000);
        assert_eq!(to_90khz(Duration::from_millis(40)), 3600);
        let wrap = Duration::from_micros(((1u64 << 33) * 100).div_ceil(9));
        assert!(to_90khz(wrap) < 90);
    }
}
