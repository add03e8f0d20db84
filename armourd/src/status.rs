//! How a process ended: the decoded wait status, and which endings count as
//! clean (SPEC §4).

use std::fmt;

/// The end of a whole process, as its parent's `wait()` would see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(u8),
    /// Killed by `signal`, possibly with a core dump.
    Signaled { signal: i32, core_dumped: bool },
    /// The end was not seen (events were lost); counts as abnormal.
    Unknown,
}

impl ExitStatus {
    /// Decodes a raw wait status (`WIFEXITED`, `WTERMSIG`, `WCOREDUMP`).
    pub fn from_wait_status(raw: u32) -> Self {
        let signal = (raw & 0x7f) as i32;
        if signal == 0 {
            Self::Exited(((raw >> 8) & 0xff) as u8)
        } else {
            Self::Signaled {
                signal,
                core_dumped: raw & 0x80 != 0,
            }
        }
    }

    /// The exit code, or -1 when the process did not exit by itself.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(code) => i32::from(code),
            _ => -1,
        }
    }

    /// The signal that ended the process, or 0.
    pub fn signal(self) -> i32 {
        match self {
            Self::Signaled { signal, .. } => signal,
            _ => 0,
        }
    }

    /// Whether a core dump was written.
    pub fn core_dumped(self) -> bool {
        matches!(
            self,
            Self::Signaled {
                core_dumped: true,
                ..
            }
        )
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Exited(code) => write!(f, "exit code {code}"),
            Self::Signaled {
                signal,
                core_dumped,
            } => {
                match signal_name(signal) {
                    Some(name) => write!(f, "signal SIG{name}")?,
                    None => write!(f, "signal {signal}")?,
                }
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            Self::Unknown => f.write_str("unknown status (events were lost)"),
        }
    }
}

const SIGNALS: [(&str, i32); 31] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// The name of a signal without its `SIG` prefix (`SEGV`).
pub fn signal_name(signal: i32) -> Option<&'static str> {
    SIGNALS
        .iter()
        .find(|(_, n)| *n == signal)
        .map(|(name, _)| *name)
}

/// The number of a signal named `TERM`, `SIGTERM` or `sigterm`.
pub fn signal_number(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, num)| *num)
}

/// Exit codes and signals that count as a clean end (`success=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuccessSet {
    codes: [u64; 4],
    signals: u64,
}

impl Default for SuccessSet {
    /// Exit 0, SIGTERM, SIGINT, SIGHUP, SIGPIPE.
    fn default() -> Self {
        let mut set = Self::empty();
        set.add_code(0);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            set.add_signal(signal);
        }
        set
    }
}

impl SuccessSet {
    /// Nothing is clean.
    pub fn empty() -> Self {
        Self {
            codes: [0; 4],
            signals: 0,
        }
    }

    pub fn add_code(&mut self, code: u8) {
        self.codes[usize::from(code / 64)] |= 1 << (code % 64);
    }

    /// Adds a signal in 1..=63; others are ignored.
    pub fn add_signal(&mut self, signal: i32) {
        if (1..64).contains(&signal) {
            self.signals |= 1 << signal;
        }
    }

    /// Whether `status` is a clean end. A core dump or an unknown status never is.
    pub fn is_clean(&self, status: ExitStatus) -> bool {
        match status {
            ExitStatus::Exited(code) => {
                self.codes[usize::from(code / 64)] & (1 << (code % 64)) != 0
            }
            ExitStatus::Signaled {
                core_dumped: true, ..
            } => false,
            ExitStatus::Signaled { signal, .. } => {
                (1..64).contains(&signal) && self.signals & (1 << signal) != 0
            }
            ExitStatus::Unknown => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exit_code_and_signals() {
        assert_eq!(ExitStatus::from_wait_status(0x300), ExitStatus::Exited(3));
        assert_eq!(
            ExitStatus::from_wait_status(0x9),
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_wait_status(0x86),
            ExitStatus::Signaled {
                signal: 6,
                core_dumped: true
            }
        );
    }

    #[test]
    fn sigterm_is_clean_by_default() {
        let set = SuccessSet::default();
        assert!(set.is_clean(ExitStatus::Exited(0)));
        assert!(set.is_clean(ExitStatus::from_wait_status(libc::SIGTERM as u32)));
        assert!(set.is_clean(ExitStatus::from_wait_status(libc::SIGPIPE as u32)));
    }

    #[test]
    fn crashes_and_error_codes_are_abnormal_by_default() {
        let set = SuccessSet::default();
        assert!(!set.is_clean(ExitStatus::Exited(3)));
        assert!(!set.is_clean(ExitStatus::from_wait_status(libc::SIGSEGV as u32)));
        assert!(!set.is_clean(ExitStatus::from_wait_status(libc::SIGKILL as u32)));
        assert!(!set.is_clean(ExitStatus::Unknown));
    }

    #[test]
    fn a_core_dump_is_never_clean() {
        let mut set = SuccessSet::empty();
        set.add_signal(libc::SIGABRT);
        assert!(set.is_clean(ExitStatus::from_wait_status(6)));
        assert!(!set.is_clean(ExitStatus::from_wait_status(0x86)));
    }

    #[test]
    fn signal_names_parse_with_or_without_prefix() {
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("sigsegv"), Some(11));
        assert_eq!(signal_number("NOPE"), None);
        assert_eq!(signal_name(9), Some("KILL"));
    }

    #[test]
    fn status_is_shown_the_way_users_read_it() {
        assert_eq!(ExitStatus::Exited(3).to_string(), "exit code 3");
        assert_eq!(
            ExitStatus::from_wait_status(0x86).to_string(),
            "signal SIGABRT (core dumped)"
        );
    }
}
