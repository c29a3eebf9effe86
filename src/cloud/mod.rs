//! The DJI Cloud API live-stream model, free of IO.
//!
//! Everything the daemon says to and hears from the cloud about live streams passes through
//! here as bytes in and bytes out: services requests become typed [`services::Command`]s (or a
//! typed refusal that still knows whom to answer), replies and `state` pushes are encoded, and
//! stream URLs are parsed per `url_type` with their secrets kept out of logs. No MQTT, no tokio,
//! no clock: callers pass timestamps in, which keeps every function here testable with the byte
//! vectors of the DJI documentation.

pub mod error;
pub mod ids;
pub mod services;
pub mod state;
pub mod url;

pub use error::LiveErrorCode;
pub use ids::{CameraPosition, IdError, Lens, UrlType, VideoId, VideoQuality};
pub use services::{decode_request, encode_reply, Command, DecodeError, Request, RequestHeader};
pub use state::{
    encode_capacity, encode_status, services_reply_topic, services_topic, state_topic,
    CapacityCamera, CapacityDevice, CapacityVideo, LiveCapacity, LiveStatus,
};
pub use url::{
    mask_keep_prefix, redact_url_str, AgoraUrl, Gb28181Url, RtmpUrl, RtspUrl, StreamUrl, UrlError,
    WhipUrl,
};
