//! The frame types that cross module boundaries.

use bytes::Bytes;
use std::time::Duration;

/// Video codec of an encoded frame; sinks decide from it how to packetize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 / AVC.
    H264,
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
