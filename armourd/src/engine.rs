//! The backend that runs, chosen at start-up (`--backend`).

use std::io;

use armourd_common::FileKey;

use crate::{
    backend::{
        ebpf::{EbpfBackend, EbpfError},
        Event, FileMark, Kind,
    },
    daemon::{BackendChoice, DaemonError},
};

/// Why a backend failed to start.
#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("the proc-connector backend is not available in this version")]
    ProcConnectorMissing,
}

/// One running backend.
pub enum Engine {
    Ebpf(Box<EbpfBackend>),
}

impl Engine {
    /// Starts the backend `choice` asks for.
    pub fn start(choice: BackendChoice) -> Result<Self, DaemonError> {
        match choice {
            BackendChoice::Ebpf | BackendChoice::Auto => EbpfBackend::load()
                .map(|b| Self::Ebpf(Box::new(b)))
                .map_err(|e| DaemonError::Backend {
                    backend: Kind::Ebpf.name(),
                    source: e.into(),
                }),
            BackendChoice::ProcConnector => Err(DaemonError::Backend {
                backend: Kind::ProcConnector.name(),
                source: EngineError::ProcConnectorMissing,
            }),
        }
    }

    /// Which backend this is.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Ebpf(_) => Kind::Ebpf,
        }
    }

    /// Waits for events and appends them to `out`.
    pub async fn read(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        match self {
            Self::Ebpf(b) => b.read(out).await,
        }
    }

    /// Reports events about `pid` from now on.
    pub fn watch(&mut self, pid: u32) -> Result<(), String> {
        match self {
            Self::Ebpf(b) => b.watch(pid).map_err(|e| e.to_string()),
        }
    }

    /// Stops reporting events about `pid`.
    pub fn unwatch(&mut self, pid: u32) {
        match self {
            Self::Ebpf(b) => b.unwatch(pid),
        }
    }

    /// Marks executions of `file`.
    pub fn set_file(&mut self, file: FileKey, mark: FileMark) -> Result<(), String> {
        match self {
            Self::Ebpf(b) => b.set_file(file, mark).map_err(|e| e.to_string()),
        }
    }

    /// Forgets executions of `file`.
    pub fn remove_file(&mut self, file: FileKey) {
        match self {
            Self::Ebpf(b) => b.remove_file(file),
        }
    }
}
