//! GB/T 28181 device sink: registers to a platform as a device and streams MPEG-PS over RTP
//! when the platform INVITEs.

pub mod dialog;
pub mod manscdp;
pub mod ps;
pub mod register;
pub mod rtp;
pub mod sdp;
pub mod sip;
pub mod ua;
