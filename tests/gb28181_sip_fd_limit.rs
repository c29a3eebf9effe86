//! SIP over TCP whose `accept()` fails for want of file descriptors: the listener rests instead
//! of being failed again in a loop, and the platform's connection, left queued, is taken once
//! descriptors are free again.
//!
//! A binary of its own: the test lowers the process's descriptor limit and fills the table,
//! which would break any test running beside it.

mod fd_table;

use dockcast::sink::gb28181::transport::{Inbound, SipIo};
use dockcast::sink::gb28181::SipTransport;
use dockcast::source::feed::ACCEPT_REST;
use fd_table::FullTable;
use std::io::Write;
use std::time::{Duration, Instant};

/// CPU time this process has used so far, user and system.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for the call to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for the call to fill in.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[tokio::test(flavor = "current_thread")]
async fn sip_over_tcp_out_of_descriptors_rests_its_listener_and_takes_the_platform_later() {
    let mut io = SipIo::bind(
        SipTransport::Tcp,
        "127.0.0.1:0".parse().expect("addr"),
        Duration::from_secs(5),
        vec!["127.0.0.1".parse().expect("ip")],
    )
    .await
    .expect("bind");
    let addr = io.local_addr().expect("addr");
    // The platform connects before the table fills and sends a request; it waits in the
    // backlog.
    let mut platform = std::net::TcpStream::connect(addr).expect("connect");
    platform
        .write_all(
            b"OPTIONS sip:34020000001320000001@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("send");

    // Fill the table under a low limit, so that the next descriptor, accept()'s, fails.
    let table = FullTable::fill();

    // Three rests' worth of waiting: retried at once, accept() would fail again in a loop for
    // all that time, burning a core.
    let wait = ACCEPT_REST * 3;
    let (cpu, started) = (cpu_time(), Instant::now());
    let got = tokio::time::timeout(wait, io.recv()).await;
    let (cpu, waited) = (cpu_time() - cpu, started.elapsed());
    assert!(got.is_err(), "nothing can have arrived: {got:?}");
    assert!(
        cpu < waited / 4,
        "{cpu:?} of CPU in {waited:?} of waiting: accept() was retried in a loop"
    );

    // Descriptors free again: the queued connection is taken after the rest, with no new
    // connect, and its request arrives.
    drop(table);
    match tokio::time::timeout(ACCEPT_REST * 4, io.recv()).await {
        Ok(Inbound::Message(from, data)) => {
            assert_eq!(from, platform.local_addr().expect("addr"));
            assert!(data.starts_with(b"OPTIONS "));
        }
        other => panic!("the queued platform was never heard: {other:?}"),
    }
}
