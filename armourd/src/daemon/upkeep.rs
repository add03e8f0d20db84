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
    /// `--state-dir`: where armourd keeps what its own restart must not
    /// lose (see `persist`); `None` keeps nothing.
    pub state_dir: Option<std::path::PathBuf>,
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
    pub(super) fn reloading(&self) {
        self.service.notifier.reloading();
    }

    /// A reload is over: ready again, with the new status.
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
        let Some(watchdog) = self.service.watchdog.take() else {
            return;
        };
        if !clean {
            return; // dropped armed, which it logs
        }
        if self.next_feed.is_some() {
            watchdog.close();
        } else {
            log::error!("a critical entry is down: the hardware watchdog is not closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;
    use crate::watchdog::stand_in::StandIn;

    /// An upkeep feeding a stand-in with a 30 s timeout (fed every 10 s).
    fn upkeep(name: &str, now: Instant) -> (crate::watchdog::stand_in::Recording, Upkeep) {
        let (recording, device) = StandIn::new(name);
        let watchdog = Watchdog::start(Box::new(device), Path::new("/dev/stand-in"), Some(30));
        let service = Service {
            watchdog: Some(watchdog.unwrap()),
            ..Service::default()
        };
        (recording, Upkeep::new(service, now))
    }

    fn critical(id: InstanceId, running: bool) -> Vec<View<InstanceId>> {
        vec![View {
            id,
            exe: "/usr/sbin/food".into(),
            running,
            gave_up: false,
            grace: Duration::from_secs(60),
        }]
    }

    const FED_AT_START: &str = "settimeout 30\nkeepalive\n";

    #[test]
    fn the_watchdog_is_fed_every_third_of_its_timeout() {
        let start = Instant::now();
        let (recording, mut upkeep) = upkeep("third", start);
        assert_eq!(
            upkeep.next_deadline(),
            Some(start + Duration::from_secs(10))
        );
        upkeep.tick(start + Duration::from_secs(5), Vec::new());
        assert_eq!(recording.text(), FED_AT_START, "not due yet");
        upkeep.tick(start + Duration::from_secs(10), Vec::new());
        upkeep.tick(start + Duration::from_secs(20), Vec::new());
        assert_eq!(
            recording.text(),
            format!("{FED_AT_START}keepalive\nkeepalive\n")
        );
        upkeep.stop(true);
        assert!(
            recording.text().ends_with('V'),
            "magic close on a clean stop"
        );
    }

    #[test]
    fn a_critical_instance_down_past_its_grace_stops_the_feeding_for_good() {
        let start = Instant::now();
        let (recording, mut upkeep) = upkeep("critical", start);
        let id = InstanceId::for_tests(1);
        // Down from the start: fed at 10 s … 50 s, within the grace.
        for second in (0..60).step_by(10) {
            upkeep.tick(start + Duration::from_secs(second), critical(id, false));
        }
        let fed = recording.text().matches("keepalive").count();
        assert_eq!(fed, 6, "fed at start and every 10 s within the grace");
        upkeep.tick(start + Duration::from_secs(60), critical(id, false));
        upkeep.tick(start + Duration::from_secs(70), critical(id, true));
        upkeep.tick(start + Duration::from_secs(80), critical(id, true));
        assert_eq!(
            recording.text().matches("keepalive").count(),
            fed,
            "no feed after the grace"
        );
        upkeep.stop(true);
        assert!(
            !recording.text().ends_with('V'),
            "left armed: the machine is to reset"
        );
    }

    #[test]
    fn a_critical_instance_back_within_its_grace_keeps_the_feeding() {
        let start = Instant::now();
        let (recording, mut upkeep) = upkeep("back", start);
        let id = InstanceId::for_tests(1);
        upkeep.tick(start + Duration::from_secs(10), critical(id, false));
        upkeep.tick(start + Duration::from_secs(20), critical(id, true));
        upkeep.tick(start + Duration::from_secs(80), critical(id, true));
        assert_eq!(recording.text().matches("keepalive").count(), 4);
    }

    #[test]
    fn stopping_after_an_error_leaves_the_watchdog_armed() {
        let (recording, mut upkeep) = upkeep("error", Instant::now());
        upkeep.stop(false);
        assert_eq!(recording.text(), FED_AT_START);
    }
}
