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
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
