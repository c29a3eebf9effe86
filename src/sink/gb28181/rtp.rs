//! RTP packetizer for PS over RTP (payload type 96), shaped the way ZLMediaKit's receiver
//! needs it: it delimits frames by timestamp change and drops a whole frame on a sequence gap,
//! so each frame gets one timestamp, the marker goes on its last packet, and sequence numbers
//! never skip.

use bytes::{BufMut, Bytes, BytesMut};

/// Payload type GB/T 28181 platforms offer for PS (`a=rtpmap:96 PS/90000`).
pub const PAYLOAD_TYPE_PS: u8 = 96;

/// Fixed RTP header size (no CSRC, no extension).
pub const HEADER_LEN: usize = 12;

/// Largest RTP packet (header included): ZLMediaKit's `videoMtuSize`, safe under a 1500 MTU
/// with IP/UDP headers and below ZLMediaKit's TCP "looks like `$`" ambiguity. The default, and
/// the most `gb28181.rtp_packet_bytes` may ask for.
pub const MAX_PACKET_LEN: usize = 1400;

/// Smallest RTP packet `gb28181.rtp_packet_bytes` may ask for: enough for a path with a small
/// MTU (a VPN, PPPoE inside a tunnel) without tripling the packet rate.
pub const MIN_PACKET_LEN: usize = 500;

/// Packetizes PS packs into RTP packets for one SSRC; one per media session (per INVITE).
#[derive(Debug, Clone)]
pub struct Packetizer {
    ssrc: u32,
    seq: u16,
    payload_type: u8,
    max_payload: usize,
}

impl Packetizer {
    /// A packetizer for `ssrc` (the platform's `y=` value) starting at sequence `first_seq`,
    /// with packets of up to [`MAX_PACKET_LEN`] bytes.
    pub fn new(ssrc: u32, first_seq: u16) -> Self {
        Self::with_max_packet(ssrc, first_seq, MAX_PACKET_LEN)
    }

    /// Like [`Packetizer::new`], with packets of up to `max_packet_len` bytes, header included
    /// (kept within [`MIN_PACKET_LEN`]..=[`MAX_PACKET_LEN`]), for a path whose MTU is smaller.
    pub fn with_max_packet(ssrc: u32, first_seq: u16, max_packet_len: usize) -> Self {
        Self {
            ssrc,
            seq: first_seq,
            payload_type: PAYLOAD_TYPE_PS,
            max_payload: max_packet_len.clamp(MIN_PACKET_LEN, MAX_PACKET_LEN) - HEADER_LEN,
        }
    }

    /// The SSRC every packet carries.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number the next packet will carry.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// Splits one frame's PS bytes into RTP packets, all with `timestamp` (90 kHz), the last
    /// one marked. An empty frame yields no packet.
    pub fn packetize(&mut self, frame: &[u8], timestamp: u32) -> Vec<Bytes> {
        let max_payload = self.max_payload;
        let count = frame.len().div_ceil(max_payload);
        let mut out = Vec::with_capacity(count);
        for (i, chunk) in frame.chunks(max_payload).enumerate() {
            let marker = i + 1 == count;
            let mut p = BytesMut::with_capacity(HEADER_LEN + chunk.len());
            p.put_u8(0x80); // V=2, no padding, no extension, no CSRC
            p.put_u8((u8::from(marker) << 7) | self.payload_type);
            p.put_u16(self.seq);
            p.put_u32(timestamp);
            p.put_u32(self.ssrc);
            p.put_slice(chunk);
            out.push(p.freeze());
            self.seq = self.seq.wrapping_add(1);
        }
        out
    }
}

/// Prefixes an RTP packet with its RFC 4571 length for RTP over TCP.
///
/// Packets are at most [`MAX_PACKET_LEN`] bytes, so the length always fits; a longer input is a
/// caller bug and is reported instead of being truncated into a corrupt stream.
pub fn frame_rfc4571(packet: &[u8]) -> Option<Bytes> {
    let len = u16::try_from(packet.len()).ok()?;
    let mut out = BytesMut::with_capacity(2 + packet.len());
    out.put_u16(len);
    out.put_slice(packet);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_marker_and_contiguous_sequence() {
        let mut p = Packetizer::new(0x05F5_E101, 65_534);
        let frame: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let pkts = p.packetize(&frame, 0x0102_0304);
        assert_eq!(pkts.len(), 3);
        let mut joined = Vec::new();
        for (i, pkt) in pkts.iter().enumerate() {
            assert!(pkt.len() <= MAX_PACKET_LEN);
            assert_eq!(pkt[0], 0x80);
            assert_eq!(pkt[1] & 0x7F, 96);
            assert_eq!(pkt[1] >> 7 == 1, i == 2, "marker only on the last packet");
            let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
            assert_eq!(seq, 65_534u16.wrapping_add(i as u16));
            assert_eq!(&pkt[4..8], &[1, 2, 3, 4]);
            assert_eq!(&pkt[8..12], &[0x05, 0xF5, 0xE1, 0x01]);
            joined.extend_from_slice(&pkt[12..]);
        }
        assert_eq!(joined, frame);
        assert_eq!(pkts[0].len(), MAX_PACKET_LEN);
        assert_eq!(p.next_seq(), 1);
        // The next frame continues the numbering without a gap.
        let next = p.packetize(&[9; 10], 5);
        assert_eq!(u16::from_be_bytes([next[0][2], next[0][3]]), 1);
        assert_eq!(next[0][1], 0x80 | 96);
    }

    #[test]
    fn a_smaller_packet_size_is_honoured_and_kept_in_range() {
        let frame = vec![7u8; 3000];
        let pkts = Packetizer::with_max_packet(1, 0, 600).packetize(&frame, 0);
        assert_eq!(pkts.len(), 6);
        assert!(pkts.iter().all(|p| p.len() <= 600));
        assert_eq!(pkts[0].len(), 600);
        let tiny = Packetizer::with_max_packet(1, 0, 10).packetize(&frame, 0);
        assert_eq!(tiny[0].len(), MIN_PACKET_LEN);
        let huge = Packetizer::with_max_packet(1, 0, 9000).packetize(&frame, 0);
        assert_eq!(huge[0].len(), MAX_PACKET_LEN);
    }

    #[test]
    fn empty_frame_sends_nothing() {
        let mut p = Packetizer::new(1, 0);
        assert!(p.packetize(&[], 0).is_empty());
        assert_eq!(p.next_seq(), 0);
    }

    #[test]
    fn rfc4571_prefix_is_the_big_endian_length() {
        let f = frame_rfc4571(&[0xAA; 300]).expect("fits");
        assert_eq!(&f[..2], &[0x01, 0x2C]);
        assert_eq!(f.len(), 302);
        assert!(frame_rfc4571(&vec![0; 70_000]).is_none());
    }
}
