//! GB/T 28181 device sink: registers to a platform as a device and streams MPEG-PS over RTP
//! when the platform INVITEs.

pub mod manscdp;
pub mod ps;
pub mod rtp;
pub mod sdp;
pub mod sip;
