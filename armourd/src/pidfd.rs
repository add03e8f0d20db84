//! Signals that reach exactly the process meant, never one that took over
//! its pid. A process is named by pid and start time ([`ProcId`]); a pidfd
//! (`pidfd_open`, Linux 5.3+) pins the process while its start time is
//! checked in `/proc`, and the signal goes through that pidfd
//! (`pidfd_send_signal`). Without pidfds (older kernels) the start time is
//! checked right before `kill`, which leaves only the moment between the two.
//!
//! <https://man7.org/linux/man-pages/man2/pidfd_open.2.html>

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::{procfs, supervisor::ProcId};

/// What became of a signal.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Delivered.
    Yes,
    /// The process is gone, or its pid now names another process.
    Gone,
}

/// Sends `signal` to the process `proc`, if it still is that process.
pub fn signal_process(proc: ProcId, signal: i32) -> io::Result<Sent> {
    let pidfd = match open(proc.pid) {
        Ok(pidfd) => Some(pidfd),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(Sent::Gone),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
        Err(e) => return Err(e),
    };
    // Checked with the process pinned by its pidfd: a pid reused before
    // the open shows another start time.
    if !is_same(proc) {
        return Ok(Sent::Gone);
    }
    let sent = match &pidfd {
        Some(pidfd) => send(pidfd, signal),
        // SAFETY: kill has no memory arguments.
        None => check(unsafe { libc::kill(proc.pid as libc::pid_t, signal) }.into()),
    };
    match sent {
        Ok(()) => Ok(Sent::Yes),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(Sent::Gone),
        Err(e) => Err(e),
    }
}

/// Sends `signal` to the process group that `leader` led. The group is
/// taken to be gone if a process other than `leader` now has its pid: a
/// pid is not given out again while a group of that number has members,
/// so a new process with it means the old group emptied.
pub fn signal_group(leader: ProcId, signal: i32) -> io::Result<Sent> {
    if procfs::stat(leader.pid).is_ok() && !is_same(leader) {
        return Ok(Sent::Gone);
    }
    // SAFETY: killpg has no memory arguments.
    match check(unsafe { libc::killpg(leader.pid as libc::pid_t, signal) }.into()) {
        Ok(()) => Ok(Sent::Yes),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(Sent::Gone),
        Err(e) => Err(e),
    }
}

/// Whether `proc.pid` still names the process started at `proc.start`
/// (a zombie included; a process whose start is unknown is taken as is).
fn is_same(proc: ProcId) -> bool {
    match proc.start {
        None => true,
        Some(start) => procfs::stat(proc.pid).is_ok_and(|s| s.start_ticks == start),
    }
}

/// A pidfd for `pid`.
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: a system call with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) };
    check(fd)?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` through `pidfd`.
pub fn send(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: a system call on a live descriptor; no siginfo (NULL).
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd() as libc::c_long,
            signal as libc::c_long,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_long,
        )
    })
}

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn child() -> (std::process::Child, ProcId) {
        let child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = procfs::stat(pid).unwrap().start_ticks;
        (
            child,
            ProcId {
                pid,
                start: Some(start),
            },
        )
    }

    #[test]
    fn a_signal_reaches_the_process_it_names() {
        let (mut child, proc) = child();
        assert_eq!(signal_process(proc, libc::SIGKILL).unwrap(), Sent::Yes);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&child.wait().unwrap()),
            Some(libc::SIGKILL)
        );
    }

    #[test]
    fn a_process_with_another_start_time_is_left_alone() {
        let (mut child, proc) = child();
        let other = ProcId {
            start: proc.start.map(|s| s + 1),
            ..proc
        };
        assert_eq!(signal_process(other, libc::SIGKILL).unwrap(), Sent::Gone);
        assert_eq!(signal_group(other, libc::SIGKILL).unwrap(), Sent::Gone);
        assert!(child.try_wait().unwrap().is_none(), "still running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_process_that_ended_and_was_reaped_is_gone() {
        let (mut child, proc) = child();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(signal_process(proc, libc::SIGTERM).unwrap(), Sent::Gone);
    }
}
