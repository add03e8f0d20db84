//! Notifications to a service manager (`sd_notify(3)`): `READY=1` once
//! armourd watches, `STATUS=`, `WATCHDOG=1` pings at half of
//! `WATCHDOG_USEC` from the event loop, `RELOADING=1` and `STOPPING=1`.
//! Without `NOTIFY_SOCKET` every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Talks to the service manager that started armourd, if any.
#[derive(Debug, Default)]
pub struct Notifier {
    /// Half of `WATCHDOG_USEC`, when the manager asked for pings.
    ping_every: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as the
    /// service manager set them.
    pub fn from_env() -> Self {
        Self {
            ping_every: sd_notify::watchdog_enabled().map(|usec| usec / 2),
        }
    }

    /// How often [`Notifier::ping`] must be called, if at all.
    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// armourd is watching.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A new status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    /// armourd's event loop still runs.
    pub fn ping(&self) {
        send(&[NotifyState::Watchdog]);
    }

    /// A reload begins; [`Notifier::reloaded`] ends it.
    pub fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading];
        // systemd ≥ 253 wants the time with RELOADING=1 (Type=notify-reload).
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        send(&states);
    }

    /// A reload is over (done or rejected): back to ready.
    pub fn reloaded(&self, status: &str) {
        self.ready(status);
    }

    /// armourd is stopping.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        log::debug!("cannot notify the service manager: {err}");
    }
}
