//! Which backend: the one enum of `--backend`, of what the daemon runs and
//! of the tests. Only clap in here: `cargo xtask` includes this file with
//! the command line's to write the man page and shell completions.

/// An event backend (`--backend`); [`Backend::Auto`] only as a choice,
/// never as the backend that runs; [`Backend::ProcConnectorFanotify`] only
/// as what runs, never as a choice (`proc-connector` uses fanotify when it
/// can).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// eBPF, falling back to the proc connector with one warning.
    Auto,
    Ebpf,
    ProcConnector,
    /// The proc connector, with fanotify telling which processes execute
    /// watched files (so that other execs are dropped in the kernel too).
    #[value(skip)]
    ProcConnectorFanotify,
}

impl Backend {
    /// The name used on the command line, in the log and on D-Bus.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ebpf => "ebpf",
            Self::ProcConnector => "proc-connector",
            Self::ProcConnectorFanotify => "proc-connector+fanotify",
        }
    }

    /// The `--backend` that runs it.
    pub fn choice(self) -> Self {
        match self {
            Self::ProcConnectorFanotify => Self::ProcConnector,
            other => other,
        }
    }

    /// Whether this is the proc connector, with or without fanotify.
    pub fn is_proc_connector(self) -> bool {
        matches!(self, Self::ProcConnector | Self::ProcConnectorFanotify)
    }
}
