//! The control socket: armourd's interface served to root alone, peer to
//! peer, on a unix socket of its own (default [`DEFAULT_PATH`]).
//!
//! Every call made through a message bus passes through the bus daemon,
//! which serves its connections in turn: however armourd orders its own
//! queues, root's call waits in the bus daemon while other users flood it
//! (SPEC §7). On the control socket nothing stands between root and
//! armourd: the socket is a regular D-Bus connection without a bus, so
//! `armourctl` (and any D-Bus library) calls the same methods on it, and
//! its requests go into root's queue, which the event loop reads first.
//!
//! Only root reaches it: the socket's folder is created `0700`, the socket
//! is `0600`, each connection's peer credentials are checked when it is
//! accepted (a peer other than uid 0 is closed at once), and the D-Bus
//! handshake checks the uid the client claims against them. At most
//! [`MAX_PEERS`] connections are served at once; more are closed (logged
//! once). Signals are not sent here: `armourctl monitor` listens on the bus.

use std::{
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use tokio::{
    net::{UnixListener, UnixStream},
    task::JoinHandle,
};
use zbus::{connection, Connection, Guid};

use super::{Callers, Gate, Interface, Queues, OBJECT_PATH};

/// Where the control socket is made when `--dbus system` is used and no
/// other path is given.
pub const DEFAULT_PATH: &str = "/run/armourd/control";

/// Connections served at once; root has no reason to hold more.
pub const MAX_PEERS: usize = 16;

/// Why the control socket could not be served, or reached.
#[derive(thiserror::Error, Debug)]
pub enum ControlError {
    #[error("cannot create the control socket's folder {path}")]
    Folder {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket: remove it, or give another --control-socket")]
    NotASocket { path: PathBuf },
    #[error("{path} is served by another process: is another armourd running?")]
    InUse { path: PathBuf },
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to armourd's control socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot talk D-Bus on the control socket {path}")]
    Handshake {
        path: PathBuf,
        #[source]
        source: zbus::Error,
    },
}

/// The served control socket; dropping it stops serving and removes it.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    accepting: JoinHandle<()>,
}

impl ControlSocket {
    /// Makes the socket at `path` and serves the interface on each
    /// connection of root's; `backend` is the `Backend` property and
    /// requests go to `queues`. A socket left by an armourd that ended is
    /// replaced; one another process serves is not.
    pub async fn serve(
        path: &Path,
        backend: &'static str,
        queues: Queues,
    ) -> Result<Self, ControlError> {
        let listener = listen(path).await?;
        log::info!(
            "serving root's calls on the control socket {}",
            path.display()
        );
        let peers = Arc::new(Peers::default());
        let accepting = tokio::spawn(accept(listener, path.to_owned(), backend, queues, peers));
        Ok(Self {
            path: path.to_owned(),
            accepting,
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.accepting.abort();
        // Another armourd may have taken the path over since; only a
        // socket is ever removed.
        if is_socket(&self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Connects to the control socket at `path` as a client (root's `armourctl`).
pub async fn connect(path: &Path) -> Result<Connection, ControlError> {
    // Connecting to a unix socket does not wait for the server.
    let stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.to_owned(),
            source,
        })?;
    connection::Builder::unix_stream(stream)
        .p2p()
        .build()
        .await
        .map_err(|source| ControlError::Handshake {
            path: path.to_owned(),
            source,
        })
}

/// The folder (`0700`, made when missing) and the listening socket (`0600`).
async fn listen(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)
            .map_err(|source| ControlError::Folder {
                path: folder.to_owned(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
            })
        }
        Ok(_) => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_owned(),
                });
            }
            // Left by an armourd that ended without removing it.
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
    let failed = |source| ControlError::Listen {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    Ok(listener)
}

/// Whether `path` is a socket (not following a symlink).
fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The connections being served.
#[derive(Debug, Default)]
struct Peers {
    count: AtomicUsize,
    /// Whether a connection beyond [`MAX_PEERS`] was logged already.
    refused_logged: AtomicBool,
    /// Whether a connection of a uid other than root's was logged already.
    stranger_logged: AtomicBool,
}

/// Serves each connection root makes, until dropped.
async fn accept(
    listener: UnixListener,
    path: PathBuf,
    backend: &'static str,
    queues: Queues,
    peers: Arc<Peers>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                log::warn!("control socket: cannot accept a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                log::debug!("control socket: no credentials of a peer ({e}); closed");
                continue;
            }
        };
        if uid != 0 {
            // Only a loosened mode lets anyone else connect: said once.
            if !peers.stranger_logged.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "control socket: uid {uid} connected (only root may; closed): \
                     is {} or its folder open to others?",
                    path.display()
                );
            }
            continue;
        }
        if peers.count.fetch_add(1, Ordering::AcqRel) >= MAX_PEERS {
            peers.count.fetch_sub(1, Ordering::AcqRel);
            if !peers.refused_logged.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "control socket: more than {MAX_PEERS} connections at once; \
                     closing the newest"
                );
            }
            continue;
        }
        let peers = Arc::clone(&peers);
        let queues = queues.clone();
        tokio::spawn(async move {
            serve_peer(stream, backend, queues).await;
            peers.count.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Serves the interface to one peer (uid 0) until it hangs up.
async fn serve_peer(stream: UnixStream, backend: &'static str, queues: Queues) {
    let iface = Interface {
        backend,
        queues,
        gate: Gate::default(),
        callers: Callers::Peer(0),
        root_only: true,
    };
    let conn = match stream.into_std() {
        Ok(stream) => build_peer(stream, iface).await,
        Err(e) => Err(zbus::Error::InputOutput(Arc::new(e))),
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            log::debug!("control socket: handshake failed: {e}");
            return;
        }
    };
    // The connection serves while it is held: hold it until the peer hangs up.
    conn.closed().await;
}

/// The server end of a peer-to-peer D-Bus connection serving `iface`.
async fn build_peer(
    stream: std::os::unix::net::UnixStream,
    iface: Interface,
) -> zbus::Result<Connection> {
    connection::Builder::unix_stream(stream)
        .server(Guid::generate())
        .p2p()
        .serve_at(OBJECT_PATH, iface)
        .build()
        .await
}
