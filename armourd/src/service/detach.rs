//! `-d/--daemon`: the classic double fork. The process that was started
//! waits until the daemon says it is watching, then exits 0 (or 1 when the
//! daemon ended before that), so that an init script knows when the
//! service is up.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::fd::OwnedFd,
};

use nix::unistd::{chdir, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe, setsid, ForkResult};

/// Why armourd could not detach.
#[derive(thiserror::Error, Debug)]
pub enum DetachError {
    #[error("cannot detach: {call} failed")]
    Call {
        call: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot put /dev/null on standard input and output")]
    DevNull(#[source] io::Error),
}

/// The detached daemon's end of the pipe to the process that started it.
#[derive(Debug)]
pub struct Detached {
    ready: Option<File>,
}

impl Detached {
    /// Tells the waiting process that armourd is watching; it exits 0.
    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.ready.take() {
            let _ = pipe.write_all(b"R");
        }
    }
}

/// Detaches from the terminal: forks twice (own session, so that no
/// terminal is ever acquired again), moves to `/` and puts stdio on
/// `/dev/null`. Returns in the daemon; the processes in between exit, the
/// first once the daemon is [`Detached::ready`]. Must be called before any
/// thread exists.
pub fn detach() -> Result<Detached, DetachError> {
    let call = |call| move |source| DetachError::Call { call, source };
    let (read, write) = pipe().map_err(call("pipe"))?;
    // SAFETY: single-threaded here; the child only forks again or exits.
    match unsafe { fork() }.map_err(call("fork"))? {
        ForkResult::Parent { .. } => {
            drop(write);
            std::process::exit(wait_ready(read));
        }
        ForkResult::Child => {}
    }
    drop(read);
    setsid().map_err(call("setsid"))?;
    // SAFETY: as above.
    if let ForkResult::Parent { .. } = unsafe { fork() }.map_err(call("fork"))? {
        // The session leader leaves; the daemon can never regain a terminal.
        // SAFETY: _exit skips the parent's atexit handlers and buffers.
        unsafe { libc::_exit(0) };
    }
    chdir("/").map_err(call("chdir /"))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(DetachError::DevNull)?;
    dup2_stdin(&null).map_err(call("dup2 /dev/null"))?;
    dup2_stdout(&null).map_err(call("dup2 /dev/null"))?;
    dup2_stderr(&null).map_err(call("dup2 /dev/null"))?;
    Ok(Detached {
        ready: Some(File::from(write)),
    })
}

/// In the process that was started: 0 once the daemon is ready, 1 when it
/// ended before.
fn wait_ready(read: OwnedFd) -> i32 {
    let mut byte = [0u8; 1];
    match File::from(read).read(&mut byte) {
        Ok(1) => 0,
        _ => {
            eprintln!(
                "armourd: the daemon stopped before it was watching; see the system log \
                 (or run armourd without -d to see why)"
            );
            1
        }
    }
}
