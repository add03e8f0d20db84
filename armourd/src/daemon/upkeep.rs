//! What the event loop does for the system around armourd (SPEC §12):
//! feeding the hardware watchdog at a third of its timeout (unless a
//! `critical` entry says the machine must reset), pinging the service
//! manager at half of `WATCHDOG_USEC`, and telling it when armourd is
//! ready, reloading and stopping. Both watchdogs are fed from the event
//! loop itself, so a hung armourd stops feeding them.

use std::time::Instant;

use crate::{
    service::{Detached, Notifier},
    supervisor::InstanceId,
    watchdog::{
        critical::{Critical, Verdict, View},
        Watchdog,
    },
};

/// What armourd does for the system around it; all optional.
#[derive(Debug, Default)]
pub struct Service {
    /// `--watchdog`: the open hardware watchdog.
    pub watchdog: Option<Watchdog>,
    /// `sd_notify`, when a service manager asked for it.
    pub notifier: Notifier,
    /// `-d`: the process that waits until armourd is watching.
    pub detached: Option<Detached>,
}

pub(super) struct Upkeep {
    service: Service,
    critical: Critical<InstanceId>,
    next_feed: Option<Instant>,
    next_ping: Option<Instant>,
}

impl Upkeep {
    pub(super) fn new(service: Service, now: Instant) -> Self {
        let next_feed = service.watchdog.as_ref().map(|w| now + w.period());
        let next_ping = service.notifier.ping_every().map(|every| now + every);
        Self {
            service,
            critical: Critical::default(),
            next_feed,
            next_ping,
        }
    }

    /// armourd is watching: the waiting parent exits 0, `READY=1`.
    pub(super) fn ready(&mut self, status: &str) {
        self.service.notifier.ready(status);
        if let Some(detached) = &mut self.service.detached {
            detached.ready();
        }
    }

    /// When [`Upkeep::tick`] has something to do next.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [
            self.next_feed,
            self.next_ping,
            self.critical.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Feeds and pings what is due at `now`; `critical` lists the
    /// instances of critical entries.
    pub(super) fn tick(&mut self, now: Instant, critical: Vec<View<InstanceId>>) {
        if self.next_ping.is_some_and(|due| due <= now) {
            self.service.notifier.ping();
            self.next_ping = self.service.notifier.ping_every().map(|every| now + every);
        }
        let Some(watchdog) = &mut self.service.watchdog else {
            return;
        };
        let verdict = self.critical.check(critical, now);
        if let Verdict::Starve { exe, reason } = verdict {
            if self.next_feed.take().is_some() {
                log::error!(
                    "CRITICAL: {} is down: {reason}; no longer feeding the hardware watchdog, \
                     the machine resets within {} s",
                    exe.display(),
                    watchdog.timeout().as_secs()
                );
            }
            return;
        }
        if self.next_feed.is_some_and(|due| due <= now) {
            watchdog.feed();
            self.next_feed = Some(now + watchdog.period());
        }
    }

    /// A reload begins (`RELOADING=1`); the reload calls [`Upkeep::reloaded`] after.
    #[expect(
        dead_code,
        reason = "for the reload (SIGHUP, D-Bus Reload) of the restart policy work"
    )]
    pub(super) fn reloading(&self) {
        self.service.notifier.reloading();
    }

    /// A reload is over: ready again, with the new status.
    #[expect(
        dead_code,
        reason = "for the reload (SIGHUP, D-Bus Reload) of the restart policy work"
    )]
    pub(super) fn reloaded(&self, status: &str) {
        self.service.notifier.reloaded(status);
    }

    /// A new status line for the service manager.
    pub(super) fn status(&self, status: &str) {
        self.service.notifier.status(status);
    }

    /// Whether a hardware watchdog is fed.
    pub(super) fn has_watchdog(&self) -> bool {
        self.service.watchdog.is_some()
    }

    /// armourd stops: `STOPPING=1`; when `clean`, the magic close, unless a
    /// critical entry means the machine must reset. Otherwise the watchdog
    /// stays armed: the machine resets unless armourd comes back in time.
    pub(super) fn stop(&mut self, clean: bool) {
        self.service.notifier.stopping();
        if let Some(watchdog) = self.service.watchdog.take() {
            if !clean {
                log::error!(
                    "the hardware watchdog is left armed: the machine resets within {} s \
                     unless armourd is started again",
                    watchdog.timeout().as_secs()
                );
            } else if self.next_feed.is_some() {
                watchdog.close();
            } else {
                log::error!("the hardware watchdog is left armed: a critical entry is down");
            }
        }
    }
}
