//! A payload feed whose `accept()` fails for want of file descriptors: the listener rests
//! instead of being polled and failed again in a loop, and the app's connection, left queued,
//! is taken once descriptors are free again.
//!
//! A binary of its own: the test lowers the process's descriptor limit and fills the table,
//! which would break any test running beside it.

mod fd_table;

use dockcast::media::quality::Rung;
use dockcast::source::feed::{FeedSource, FeedSpec, ACCEPT_REST};
use dockcast::source::VideoSource;
use fd_table::FullTable;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const RUNG: Rung = Rung {
    width: 16,
    height: 16,
    fps: 30,
    bitrate_kbps: 100,
};

#[test]
fn a_feed_out_of_descriptors_rests_its_listener_and_takes_the_app_once_they_are_free() {
    let dir = std::env::temp_dir().join(format!("dockcast-feed-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    let spec: FeedSpec = format!("unix:{}", path.display()).parse().unwrap();
    let mut src = FeedSource::open(&spec).unwrap();
    // The app's socket exists before the table fills; its connection waits in the backlog.
    let _app = UnixStream::connect(&path).unwrap();

    // Fill the table under a low limit, so that the next descriptor, accept()'s, fails.
    let table = FullTable::fill();

    // Three rests' worth of waiting: without a rest the listener would be polled readable and
    // fail again thousands of times in that time.
    let wait = ACCEPT_REST * 3;
    let started = Instant::now();
    while started.elapsed() < wait {
        let got = src.wait_frame(&RUNG, Duration::from_millis(40));
        assert!(matches!(got, Ok(None)), "nothing can have arrived");
    }
    let failed = src.stats().accept_errors;
    let rests = (started.elapsed().as_millis() / ACCEPT_REST.as_millis()) as u64;
    assert!(
        (1..=rests + 1).contains(&failed),
        "{failed} failed accepts in {:?}; one per rest of {ACCEPT_REST:?} expected",
        started.elapsed()
    );
    assert_eq!(src.stats().connections, 0);

    // Descriptors free again: the queued connection is taken after the rest, with no new connect.
    drop(table);
    let deadline = Instant::now() + ACCEPT_REST * 4;
    while src.stats().connections == 0 {
        assert!(
            Instant::now() < deadline,
            "the queued app was never accepted"
        );
        let _ = src.wait_frame(&RUNG, Duration::from_millis(40));
    }
    assert_eq!(src.stats().connections, 1);
    assert_eq!(
        src.stats().accept_errors,
        failed,
        "no failure once descriptors are free"
    );
    drop(src);
    let _ = std::fs::remove_dir_all(&dir);
}
