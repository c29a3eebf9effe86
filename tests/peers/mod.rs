//! Real peers for integration tests: each file starts or drives one independent tool.
//!
//! Test binaries use different subsets of these helpers, hence the dead-code allowance.
#![allow(dead_code)]

pub mod nginx;
pub mod probe;

use std::net::TcpListener;

/// A TCP port on 127.0.0.1 that was free a moment ago, for peers that need a fixed port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}
