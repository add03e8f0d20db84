//! Ways to start an original process that armourd must reproduce on
//! restart: another user, a umask, its own session.

use std::{io, os::unix::process::CommandExt, process::Command};

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Launch-context settings for [`Command`], applied in the child between
/// fork and exec with async-signal-safe calls only.
pub trait LaunchExt {
    /// Runs as `uid`/`gid` with exactly the supplementary `groups`.
    fn as_user(&mut self, uid: u32, gid: u32, groups: &[u32]) -> &mut Self;
    /// Runs with this umask.
    fn umask(&mut self, mask: u32) -> &mut Self;
    /// Runs as the leader of a new session (`setsid`).
    fn new_session(&mut self) -> &mut Self;
}

impl LaunchExt for Command {
    fn as_user(&mut self, uid: u32, gid: u32, groups: &[u32]) -> &mut Self {
        let groups = groups.to_vec();
        // SAFETY: the closure only makes async-signal-safe system calls on
        // data allocated before the fork.
        unsafe {
            self.pre_exec(move || {
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))
            })
        }
    }

    fn umask(&mut self, mask: u32) -> &mut Self {
        // SAFETY: umask is async-signal-safe.
        unsafe {
            self.pre_exec(move || {
                libc::umask(mask);
                Ok(())
            })
        }
    }

    fn new_session(&mut self) -> &mut Self {
        // SAFETY: setsid is async-signal-safe.
        unsafe { self.pre_exec(|| check(libc::setsid())) }
    }
}
