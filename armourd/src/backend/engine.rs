//! The backend that runs, chosen at start-up (`--backend`), with the
//! automatic fallback from eBPF to the proc connector.

use std::{io, path::Path};

use armourd_common::FileKey;

use super::{
    ebpf::{EbpfBackend, EbpfError},
    proc_connector::{ProcConnectorBackend, ProcConnectorError},
    Backend, Event, FileMark, FilterError, Seen,
};
use crate::logging::error_chain;

/// Why no backend could start.
#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    #[error("cannot start the eBPF backend")]
    Ebpf(#[source] EbpfError),
    #[error("cannot start the proc-connector backend")]
    ProcConnector(#[source] ProcConnectorError),
}

/// One running backend.
pub enum Engine {
    Ebpf(Box<EbpfBackend>),
    ProcConnector(Box<ProcConnectorBackend>),
}

impl Engine {
    /// Starts the backend `choice` asks for; `Auto` falls back to the proc
    /// connector, with one warning that says why.
    pub fn start(choice: Backend) -> Result<Self, EngineError> {
        let proc_connector = || {
            ProcConnectorBackend::open()
                .map(|b| Self::ProcConnector(Box::new(b)))
                .map_err(EngineError::ProcConnector)
        };
        match choice {
            Backend::Ebpf => EbpfBackend::load()
                .map(|b| Self::Ebpf(Box::new(b)))
                .map_err(EngineError::Ebpf),
            Backend::ProcConnector | Backend::ProcConnectorFanotify => proc_connector(),
            Backend::Auto => match EbpfBackend::load() {
                Ok(b) => Ok(Self::Ebpf(Box::new(b))),
                Err(err) => {
                    log::warn!(
                        "eBPF backend unavailable: {}; falling back to the proc connector",
                        error_chain(&err)
                    );
                    proc_connector()
                }
            },
        }
    }

    /// Which backend this is (never `Auto`).
    pub fn kind(&self) -> Backend {
        match self {
            Self::Ebpf(_) => Backend::Ebpf,
            Self::ProcConnector(b) if b.has_fanotify() => Backend::ProcConnectorFanotify,
            Self::ProcConnector(_) => Backend::ProcConnector,
        }
    }

    /// Waits for events and appends them to `out`. `looking` names the
    /// processes (pid, start time) whose watch began as they were ending,
    /// to be looked at in `/proc` until they have ended (eBPF: see
    /// [`Event::Ending`]; the proc connector looks by itself).
    pub async fn read(
        &mut self,
        out: &mut Vec<Event>,
        looking: &[(u32, Option<u64>)],
    ) -> io::Result<()> {
        match self {
            Self::Ebpf(b) => b.read(out, looking).await,
            Self::ProcConnector(b) => b.read(out).await,
        }
    }

    /// Reports events about `pid` from now on. [`FilterError::Full`]: the
    /// kernel has no room for it, so it is not watched; a watch asked for
    /// must then be refused (no user can fill the room of root's processes:
    /// they have a map of their own). Returns what `/proc` showed of it
    /// once the filter held it, if the backend looks then (eBPF; the proc
    /// connector reports that as [`Event::Ending`] when it has ended).
    pub fn watch(&mut self, pid: u32) -> Result<Option<Seen>, FilterError> {
        match self {
            Self::Ebpf(b) => Ok(Some(b.watch(pid)?)),
            Self::ProcConnector(b) => {
                b.watch(pid)?;
                Ok(None)
            }
        }
    }

    /// Stops reporting events about `pid`.
    pub fn unwatch(&mut self, pid: u32) {
        match self {
            Self::Ebpf(b) => b.unwatch(pid),
            Self::ProcConnector(b) => b.unwatch(pid),
        }
    }

    /// Marks executions of `file`, found at `path`.
    pub fn set_file(
        &mut self,
        file: FileKey,
        mark: FileMark,
        path: &Path,
    ) -> Result<(), FilterError> {
        match self {
            Self::Ebpf(b) => b.set_file(file, mark),
            Self::ProcConnector(b) => Ok(b.set_file(file, mark, path)?),
        }
    }

    /// Whether restarts' execs may be reported without the kernel's time
    /// (the proc connector with fanotify: the filter may hold a restart
    /// only after it executed).
    pub fn may_miss_exec_times(&self) -> bool {
        matches!(self, Self::ProcConnector(b) if b.has_fanotify())
    }

    /// Forgets executions of `file`.
    pub fn remove_file(&mut self, file: FileKey) {
        match self {
            Self::Ebpf(b) => b.remove_file(file),
            Self::ProcConnector(b) => b.remove_file(file),
        }
    }
}
