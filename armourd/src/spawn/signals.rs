//! Signals around the spawn: none may reach a handler of armourd's while
//! the child runs in armourd's memory, and the new program starts with the
//! default disposition for every signal and none blocked ([`signal(7)`]:
//! exec resets handled signals to the default but keeps ignored ones, and
//! keeps the mask).
//!
//! [`signal(7)`]: https://man7.org/linux/man-pages/man7/signal.7.html

use std::{
    ffi::{c_int, c_void},
    ptr,
    sync::OnceLock,
};

use super::{check, Failure};

/// Blocks every signal in the calling thread while it lives, so no signal
/// handler runs in the child, which shares this memory. A C library may
/// keep its internal signals unblocked (glibc does; musl, which the release
/// build links, does not); it only ever sends them to threads it knows,
/// never to the child.
pub(super) struct SignalsBlocked {
    old: libc::sigset_t,
}

impl SignalsBlocked {
    pub(super) fn new() -> Self {
        // SAFETY: valid pointers to sigset_t values, initialised by sigfillset
        // and pthread_sigmask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            Self { old }
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, ptr::null_mut()) };
    }
}

/// The size of the kernel's `sigset_t` (`_NSIG / 8`), which
/// `rt_sigaction` and `rt_sigprocmask` insist on.
const KERNEL_SIGSET_BYTES: libc::c_long = if cfg!(any(target_arch = "mips", target_arch = "mips64"))
{
    16
} else {
    8
};

/// Sets the disposition of every signal that has not the default one in
/// armourd to the default — also ignored ones, which exec would keep, and
/// the C library's internal ones, which its `sigaction` may refuse to touch — then
/// unblocks them all. Raw system calls: an all-zero kernel `struct
/// sigaction` is `SIG_DFL` with no flags and an empty mask.
pub(super) fn reset_signals(changed: &[c_int]) -> Result<(), Failure> {
    let default_action = [0u64; 8];
    let empty_set = [0u64; 2];
    for &signal in changed {
        // SAFETY: pointers to zeroed locals larger than the kernel's structs.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                libc::c_long::from(signal),
                default_action.as_ptr(),
                ptr::null_mut::<c_void>(),
                KERNEL_SIGSET_BYTES,
            )
        };
    }
    // SAFETY: as above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::c_long::from(libc::SIG_SETMASK),
            empty_set.as_ptr(),
            ptr::null_mut::<c_void>(),
            KERNEL_SIGSET_BYTES,
        )
    };
    check("sigprocmask", ret)
}

/// The signals whose disposition in this process is not the default (a
/// handler, or ignored), read at the first spawn: armourd sets its
/// dispositions (the Rust runtime ignores SIGPIPE; tokio's handlers) before
/// it restarts anything and never changes them afterwards. Resetting these
/// only spares the child five dozen system calls.
pub(super) fn changed_signals() -> &'static [c_int] {
    static CHANGED: OnceLock<Vec<c_int>> = OnceLock::new();
    CHANGED.get_or_init(|| {
        // Signals are 1..=64 on Linux (_NSIG is 65).
        (1..65)
            .filter(|&signal| {
                // SAFETY: a null new action only reads the current one into
                // a zeroed local.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    // The C library may refuse its internal signals: reset
                    // them anyway.
                    libc::sigaction(signal, ptr::null(), &mut action) != 0
                        || action.sa_sigaction != libc::SIG_DFL
                }
            })
            .collect()
    })
}
