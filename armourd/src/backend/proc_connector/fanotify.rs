//! Which processes are executing a watched file, for the proc-connector
//! backend: a fanotify group with an inode mark on each watched executable
//! and each watched script's interpreter ([`fanotify(7)`]).
//!
//! The connector's exec datagram does not say which file ran, so without
//! this every exec on the machine wakes armourd. With it, the socket filter
//! passes execs of held processes only ([`super::filter::Execs::Held`]):
//! the kernel reports `FAN_OPEN_EXEC` (Linux 5.0+; `FAN_OPEN` before, which
//! any open for reading triggers too) when `execve` opens a marked file,
//! early, before the exec's datagram is sent at its end; the backend adds
//! that process to the filter and then looks at it (see `learn` in
//! `mod.rs`).
//!
//! Notification marks only: the kernel queues the event and carries on, so
//! armourd never sits in the path of an exec. An inode mark follows the
//! file, not its name: an exec through a symlink or a hard link is seen,
//! and a file replaced under the same name is a new file that the watch
//! list's rescan marks. Globs need no directory marks: a file that appears
//! in a globbed folder is marked once the rescan finds it, and one already
//! running by then is adopted from `/proc` as with the eBPF backend (a
//! directory mark would report every exec of every file in a folder such
//! as `/usr/bin`).
//!
//! `fanotify_init` needs CAP_SYS_ADMIN in the initial user namespace.
//!
//! [`fanotify(7)`]: https://man7.org/linux/man-pages/man7/fanotify.7.html

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use armourd_common::FileKey;
use nix::{
    errno::Errno,
    sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags},
};
use tokio::io::unix::AsyncFd;

/// The environment variable that turns fanotify off (`0`, `off`, `no`,
/// `false`); it is on by default, where it can be (README, "Backends").
pub const DISABLE_VAR: &str = "ARMOURD_FANOTIFY";

/// Why fanotify cannot be used or a file cannot be marked.
#[derive(thiserror::Error, Debug)]
pub enum FanotifyError {
    #[error("fanotify_init failed (needs CAP_SYS_ADMIN and a kernel with CONFIG_FANOTIFY)")]
    Init(#[source] Errno),
    #[error("cannot poll the fanotify descriptor")]
    Poll(#[source] io::Error),
    #[error("cannot open {} to mark it", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mark {} for fanotify", path.display())]
    Mark {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// What a read of the group found.
#[derive(Debug, Default)]
pub(super) struct Opened {
    /// Processes that opened a marked file.
    pub pids: Vec<u32>,
    /// The kernel's queue overflowed: events were lost.
    pub overflowed: bool,
}

/// The fanotify group and its marks.
pub(super) struct ExecWatch {
    group: AsyncFd<Fanotify>,
    /// `FAN_OPEN_EXEC`, or `FAN_OPEN` on kernels before 5.0.
    mask: MaskFlags,
    /// Each marked file, held open (`O_PATH`) so that its mark can be
    /// removed after its name is gone.
    marks: HashMap<FileKey, File>,
}

impl ExecWatch {
    /// Whether the environment turns fanotify off.
    pub fn disabled() -> bool {
        std::env::var(DISABLE_VAR).is_ok_and(|v| matches!(v.trim(), "0" | "off" | "no" | "false"))
    }

    /// Creates the group. Must run inside the tokio runtime.
    pub fn open() -> Result<Self, FanotifyError> {
        let flags = InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK;
        // Event descriptors are opened read-only and closed at once.
        let event_flags = EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE;
        let group = Fanotify::init(flags, event_flags).map_err(FanotifyError::Init)?;
        let mask = open_exec_mask(&group);
        // SAFETY: the AsyncFd owns the group, which owns the descriptor.
        let group =
            unsafe { AsyncFd::register(group) }.map_err(|e| FanotifyError::Poll(e.into()))?;
        Ok(Self {
            group,
            mask,
            marks: HashMap::new(),
        })
    }

    /// Whether execs are told apart from other opens (Linux 5.0+).
    pub fn exec_only(&self) -> bool {
        self.mask == MaskFlags::FAN_OPEN_EXEC
    }

    /// Marks the file `key` found at `path`. A name that leads elsewhere
    /// by now (the file was replaced) is left unmarked: the rescan that
    /// the change triggers marks the new file.
    pub fn mark(&mut self, key: FileKey, path: &Path) -> Result<(), FanotifyError> {
        if self.marks.contains_key(&key) {
            return Ok(());
        }
        let open_error = |source| FanotifyError::Open {
            path: path.to_path_buf(),
            source,
        };
        // O_PATH: no open request reaches a network or FUSE server.
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
            .map_err(open_error)?;
        let meta = file.metadata().map_err(open_error)?;
        let dev = meta.dev();
        let found = FileKey::new(
            meta.ino(),
            nix::sys::stat::major(dev) as u32,
            nix::sys::stat::minor(dev) as u32,
        );
        if found != key {
            log::debug!(
                "fanotify: {} was replaced before it was marked",
                path.display()
            );
            return Ok(());
        }
        self.change(MarkFlags::FAN_MARK_ADD, &file)
            .map_err(|source| FanotifyError::Mark {
                path: path.to_path_buf(),
                source,
            })?;
        self.marks.insert(key, file);
        Ok(())
    }

    /// Removes the mark of `key`, if it has one.
    pub fn unmark(&mut self, key: FileKey) {
        let Some(file) = self.marks.remove(&key) else {
            return;
        };
        if let Err(e) = self.change(MarkFlags::FAN_MARK_REMOVE, &file) {
            log::debug!("fanotify: cannot remove a mark: {e}");
        }
    }

    /// Whether `key` is marked.
    pub fn is_marked(&self, key: &FileKey) -> bool {
        self.marks.contains_key(key)
    }

    /// `fanotify_mark` on the file `file` holds. An `O_PATH` descriptor is
    /// not accepted as the object itself, but its magic link is, and leads
    /// straight to the file.
    fn change(&self, flags: MarkFlags, file: &File) -> Result<(), Errno> {
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        let cwd = nix::fcntl::AT_FDCWD;
        self.group.get_ref().mark(
            flags | MarkFlags::FAN_MARK_INODE,
            self.mask,
            cwd,
            Some(link.as_str()),
        )
    }

    /// Waits until events are queued.
    pub async fn readable(&self) -> io::Result<()> {
        self.group.readable().await.map(|_| ())
    }

    /// Reads every queued event without waiting.
    pub async fn read(&mut self) -> io::Result<Opened> {
        let mut opened = Opened::default();
        let mut guard = self.group.readable().await?;
        loop {
            let events = match guard.get_inner().read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => {
                    guard.clear_ready();
                    return Ok(opened);
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if events.is_empty() {
                guard.clear_ready();
                return Ok(opened);
            }
            for event in events {
                if event.mask().contains(MaskFlags::FAN_Q_OVERFLOW) {
                    opened.overflowed = true;
                    continue;
                }
                // Which file does not matter: only watched ones are marked.
                // The event's descriptor is closed as it drops.
                if let Ok(pid) = u32::try_from(event.pid()) {
                    opened.pids.push(pid);
                }
            }
        }
    }
}

/// `FAN_OPEN_EXEC` where the kernel knows it (5.0+), found by marking
/// armourd's own executable, else `FAN_OPEN`.
fn open_exec_mask(group: &Fanotify) -> MaskFlags {
    let cwd = nix::fcntl::AT_FDCWD;
    let flags = MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_INODE;
    let exe = "/proc/self/exe";
    match group.mark(flags, MaskFlags::FAN_OPEN_EXEC, cwd, Some(exe)) {
        Ok(()) => {
            let remove = MarkFlags::FAN_MARK_REMOVE | MarkFlags::FAN_MARK_INODE;
            let _ = group.mark(remove, MaskFlags::FAN_OPEN_EXEC, cwd, Some(exe));
            MaskFlags::FAN_OPEN_EXEC
        }
        Err(e) => {
            log::debug!("fanotify: no FAN_OPEN_EXEC ({e}): FAN_OPEN instead");
            MaskFlags::FAN_OPEN
        }
    }
}
