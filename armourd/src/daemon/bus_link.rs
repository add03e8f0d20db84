//! Keeps armourd on the bus: connects, serves both names, emits the
//! signals the event loop hands over, and when the bus goes away (the
//! bus daemon restarted) connects again, 100 ms after, then twice as long
//! each time up to 10 s. The event loop never waits for any of it: it only
//! hands signals to a bounded queue, which this task empties, dropping
//! what comes while there is no bus (nobody could receive it).

use std::time::Duration;

use tokio::sync::mpsc;

use super::requests::DbusSignal;
use crate::dbus::{self, DbusError, Queues, Service};

/// The first wait before connecting again.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two tries.
const LAST_RETRY: Duration = Duration::from_secs(10);
/// How long one try may take (a bus that accepts but never answers):
/// start-up does not wait longer for the first.
pub(super) const TRY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a try at serving armourd on the bus failed.
#[derive(thiserror::Error, Debug)]
pub(super) enum LinkError {
    #[error("{error}{}", cause_text(error))]
    Dbus { error: DbusError },
    #[error("the {bus} bus did not answer within {} s", TRY_TIMEOUT.as_secs())]
    Timeout { bus: dbus::Bus },
}

/// `": cause"` of `error`: zbus repeats its cause in its own text, so one
/// level is enough.
fn cause_text(error: &DbusError) -> String {
    std::error::Error::source(error)
        .map(|c| format!(": {c}"))
        .unwrap_or_default()
}

/// One try at serving armourd on `bus`.
pub(super) async fn connect(
    bus: dbus::Bus,
    backend: &'static str,
    queues: Queues,
) -> Result<Service, LinkError> {
    match tokio::time::timeout(TRY_TIMEOUT, Service::start(bus, backend, queues)).await {
        Ok(Ok(service)) => Ok(service),
        Ok(Err(error)) => Err(LinkError::Dbus { error }),
        Err(_) => Err(LinkError::Timeout { bus }),
    }
}

/// Runs for as long as armourd does: serves on `bus` through `service`
/// while it lasts, connecting again whenever there is none.
pub(super) async fn run(
    bus: dbus::Bus,
    backend: &'static str,
    queues: Queues,
    mut service: Option<Service>,
    mut signals: mpsc::Receiver<DbusSignal>,
) {
    let mut delay = FIRST_RETRY;
    loop {
        if let Some(serving) = service.take() {
            delay = FIRST_RETRY;
            if !emit_until_closed(&serving, &mut signals).await {
                return;
            }
            log::warn!("lost the connection to the {bus} bus; connecting again");
        }
        // No bus: wait, dropping what the event loop hands over meanwhile.
        let mut dropped = 0u64;
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                signal = signals.recv() => match signal {
                    Some(_) => dropped += 1,
                    None => return,
                },
            }
        }
        delay = (delay * 2).min(LAST_RETRY);
        match connect(bus, backend, queues.clone()).await {
            Ok(serving) => {
                log::info!(
                    "back on the {bus} bus{}",
                    if dropped > 0 {
                        format!(" ({dropped} signals were not emitted while it was away)")
                    } else {
                        String::new()
                    }
                );
                service = Some(serving);
            }
            Err(reason) => log::debug!(
                "still no {bus} bus ({reason}); trying again in {} s",
                delay.as_secs_f32()
            ),
        }
    }
}

/// Emits the signals as they come until the connection closes (true) or
/// armourd stops (false).
async fn emit_until_closed(service: &Service, signals: &mut mpsc::Receiver<DbusSignal>) -> bool {
    loop {
        let signal = tokio::select! {
            biased;
            () = service.closed() => return true,
            signal = signals.recv() => match signal {
                Some(signal) => signal,
                None => return false,
            },
        };
        emit(service, signal).await;
    }
}

async fn emit(service: &Service, signal: DbusSignal) {
    match signal {
        DbusSignal::Exited {
            pid,
            exe,
            code,
            signal,
            core_dumped,
            will_restart,
        } => {
            service
                .process_exited(pid, &exe, code, signal, core_dumped, will_restart)
                .await
        }
        DbusSignal::Restarted {
            old_pid,
            new_pid,
            exe,
            restarts,
        } => {
            service
                .process_restarted(old_pid, new_pid, &exe, restarts)
                .await
        }
        DbusSignal::Failed { pid, exe, crashes } => {
            service.process_failed(pid, &exe, crashes).await
        }
    }
}
