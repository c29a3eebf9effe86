//! Media types shared by sources, the encoder and the sinks.

pub mod frame;
pub mod h264;
