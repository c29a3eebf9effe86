//! dockcast: the live-stream gateway that sits beside a DJI Dock.
//!
//! The crate is a library plus the `dockcast` binary. Protocol logic lives in pure modules
//! (`cloud`, `live::manager`, `sink::rtmp::flv`, `media::h264`) that take bytes and time and
//! return bytes and decisions; the tokio tasks in `link`, `live::actor` and the sink shells only
//! move bytes between sockets and those cores.

pub mod backoff;
pub mod cloud;
pub mod config;
pub mod ctl;
pub mod health;
pub mod link;
pub mod live;
pub mod media;
pub mod sink;
pub mod source;
pub mod systemd;
