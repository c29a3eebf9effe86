//! The systemd notify protocol: readiness, watchdog, status, reload and stop.
//!
//! Every call is a no-op outside systemd (no `NOTIFY_SOCKET`), so the daemon behaves the same
//! on a terminal, in tests and under other supervisors.

use sd_notify::NotifyState;
use std::time::Duration;
use tracing::debug;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify failed: {e}");
    }
}

/// Config loaded, sources checked, broker answered (or the wait for it ended): systemd may
/// consider the service started.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A one-line summary shown by `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Proof of life; sent from the live manager's loop, so a wedged daemon stops sending it and
/// systemd restarts it.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// SIGHUP is being handled.
pub fn reloading() {
    // systemd 253+ (Type=notify-reload) wants the monotonic time with RELOADING=1.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutting down: sessions are being closed.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// How often to send WATCHDOG=1: half of `WatchdogSec=`, as sd_watchdog_enabled(3)
/// recommends; `None` when no watchdog is configured.
pub fn watchdog_interval() -> Option<Duration> {
    feed_interval(sd_notify::watchdog_enabled())
}

/// Half the watchdog timeout, none for a zero timeout (`WATCHDOG_USEC=0` means no watchdog),
/// and never under 50 ms: a timer of zero period panics, and a tighter one would only spin.
fn feed_interval(timeout: Option<Duration>) -> Option<Duration> {
    timeout
        .filter(|d| !d.is_zero())
        .map(|d| (d / 2).max(Duration::from_millis(50)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_at_half_its_timeout_and_a_zero_timeout_is_none() {
        assert_eq!(
            feed_interval(Some(Duration::from_secs(20))),
            Some(Duration::from_secs(10))
        );
        assert_eq!(feed_interval(None), None);
        assert_eq!(feed_interval(Some(Duration::ZERO)), None);
        assert_eq!(
            feed_interval(Some(Duration::from_micros(1))),
            Some(Duration::from_millis(50))
        );
    }
}
