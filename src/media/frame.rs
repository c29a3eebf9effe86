//! The frame types that cross module boundaries.

use bytes::Bytes;
use std::time::Duration;

/// Video codec of an encoded frame; sinks decide from it how to packetize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 / AVC.
    H264,
    /// H.265 / HEVC (Annex-B with VPS/SPS/PPS inline before an IRAP). RTMP carries it as
    /// Enhanced RTMP (`hvc1`); sinks without HEVC support must refuse it, not mislabel it.
    H265,
}

impl Codec {
    /// The name operators know it by, for log lines and errors.
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "H.264",
            Codec::H265 => "H.265",
        }
    }
}

/// One encoded access unit on its way to a sink.
///
/// `data` is the whole access unit in Annex-B form (start codes included, parameter sets inline
/// before an IDR). It is a `Bytes` so that fanning a frame out to several sinks clones a handle,
/// never the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// Annex-B access unit.
    pub data: Bytes,
    /// Presentation time on the session's media clock, which starts at zero and never goes
    /// backwards across lens switches, quality changes or sink reconnects.
    pub pts: Duration,
    /// True for an IDR (or a recovery point a decoder can start on).
    pub keyframe: bool,
    /// Codec of `data`.
    pub codec: Codec,
}

/// One raw picture in I420 (planar Y, then U, then V, each plane tightly packed).
///
/// It is the only raw format that crosses a module boundary: capture formats are converted to
/// it once, and the encoder reads it without another copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// Width in pixels (even).
    pub width: usize,
    /// Height in pixels (even).
    pub height: usize,
    /// `width * height * 3 / 2` bytes.
    pub data: Vec<u8>,
}

impl RawFrame {
    /// A black picture of the given size, to be drawn into and reused frame after frame.
    pub fn black(width: usize, height: usize) -> Self {
        let luma = width * height;
        let mut data = vec![16u8; luma + luma / 2];
        data[luma..].fill(128);
        RawFrame {
            width,
            height,
            data,
        }
    }

    /// The three planes, mutably, so a source can draw without index arithmetic of its own.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let luma = self.width * self.height;
        let (y, uv) = self.data.split_at_mut(luma);
        let (u, v) = uv.split_at_mut(luma / 4);
        (y, u, v)
    }

    /// The three planes.
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let luma = self.width * self.height;
        let (y, uv) = self.data.split_at(luma);
        let (u, v) = uv.split_at(luma / 4);
        (y, u, v)
    }
}
