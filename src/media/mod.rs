//! Media types shared by sources, the encoder and the sinks.

pub mod decoder;
pub mod encoder;
pub mod frame;
pub mod h264;
pub mod hevc;
pub mod pipeline;
pub mod quality;
pub mod scale;
