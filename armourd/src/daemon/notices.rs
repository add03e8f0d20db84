//! What the supervisor's notices become: log lines, and D-Bus signals.

use super::{Daemon, DbusSignal};
use crate::supervisor::Notice;

impl Daemon {
    pub(super) fn notify(&mut self, notice: Notice) {
        match notice {
            Notice::Watching { pid, exe, adopted } => log::info!(
                "{} pid {pid} ({})",
                if adopted { "adopted" } else { "watching" },
                exe.display()
            ),
            Notice::Exited {
                pid,
                exe,
                status,
                will_restart,
            } => {
                let what = if will_restart { "crashed" } else { "ended" };
                let then = if will_restart { "; restarting" } else { "" };
                log::info!("pid {pid} ({}) {what}: {status}{then}", exe.display());
                self.emit(DbusSignal::Exited {
                    pid: pid as i32,
                    exe: exe.display().to_string(),
                    code: status.code(),
                    signal: status.signal(),
                    core_dumped: status.core_dumped(),
                    will_restart,
                });
            }
            Notice::HandedOff { from, to, exe } => log::info!(
                "pid {from} ({}) ended cleanly; watching its child pid {to}",
                exe.display()
            ),
            Notice::Restarted {
                old_pid,
                new_pid,
                exe,
                restarts,
            } => {
                self.latencies.restarted(old_pid, new_pid);
                log::info!(
                    "restarted {}: pid {old_pid} -> pid {new_pid} (restart {restarts})",
                    exe.display()
                );
                self.emit(DbusSignal::Restarted {
                    old_pid: old_pid as i32,
                    new_pid: new_pid as i32,
                    exe: exe.display().to_string(),
                    restarts,
                });
            }
            Notice::RestartFailed {
                exe,
                reason,
                retry_in: Some(retry_in),
            } => log::error!(
                "restarting {} failed: {reason}; trying again in {} s",
                exe.display(),
                retry_in.as_secs_f32()
            ),
            Notice::RestartFailed {
                exe,
                reason,
                retry_in: None,
            } => log::error!("restarting {} failed: {reason}", exe.display()),
            Notice::BackingOff {
                pid,
                exe,
                delay,
                streak,
            } => log::info!(
                "pid {pid} ({}) crashed {streak} times in a row; restarting in {} s",
                exe.display(),
                delay.as_secs_f32()
            ),
            Notice::Failed { pid, exe, crashes } => {
                log::error!(
                    "pid {pid} ({}): {crashes} crashes within the give-up window; giving up \
                     (`armourctl reset {pid}` or a reload starts it again)",
                    exe.display()
                );
                self.emit(DbusSignal::Failed {
                    pid: pid as i32,
                    exe: exe.display().to_string(),
                    crashes,
                });
            }
            Notice::Unwatched { pid, exe, reason } => {
                log::info!("stopped watching pid {pid} ({}): {reason}", exe.display())
            }
        }
    }
}
