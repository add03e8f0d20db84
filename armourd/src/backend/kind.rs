//! Which backend: the one enum of `--backend`, of what the daemon runs and
//! of the tests. Only clap in here: `cargo xtask` includes this file with
//! the command line's to write the man page and shell completions.

/// An event backend (`--backend`); [`Backend::Auto`] only as a choice,
/// never as the backend that runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// eBPF, falling back to the proc connector with one warning.
    Auto,
    Ebpf,
    ProcConnector,
}

impl Backend {
    /// The name used on the command line, in the log and on D-Bus.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ebpf => "ebpf",
            Self::ProcConnector => "proc-connector",
        }
    }
}
