//! The state file on disk: checked before its text is looked at, and
//! written whole (a temporary file, fsync, rename), so that armourd killed
//! at any moment leaves the old file or the new one, never half of one.

use std::{
    fs::{self, DirBuilder, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use super::{parse, path_in, render, State, StateError};
use crate::files;

/// The largest state file armourd reads: far beyond the records of every
/// process the kernel maps can hold (some 200 bytes each).
pub const MAX_LEN: u64 = 16 << 20;

/// Why the state file or its folder is not used.
#[derive(thiserror::Error, Debug)]
pub enum FileError {
    #[error("{path}: it is not a regular file (a symlink, a folder, a device, …)")]
    NotRegular { path: PathBuf },
    #[error("{path}: owned by uid {owner}, not by armourd's uid {ours}")]
    Foreign {
        path: PathBuf,
        owner: u32,
        ours: u32,
    },
    #[error("{path}: mode {mode:o} lets other users write it")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path}: larger than {MAX_LEN} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: not text")]
    NotText { path: PathBuf },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}")]
    Format {
        path: PathBuf,
        #[source]
        source: StateError,
    },
}

impl FileError {
    /// The file was not written by this armourd as it is now: to be
    /// ignored and replaced, never trusted (as opposed to an I/O error).
    pub fn is_untrusted(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (mode 0700) if it is missing, and checks that it is a
/// folder of armourd's uid that no other user may write to: whoever can
/// write there could put a state file of their own in place.
pub fn prepare_dir(dir: &Path) -> Result<(), FileError> {
    match DirBuilder::new().mode(0o700).recursive(true).create(dir) {
        Ok(()) => {}
        Err(source) => return Err(io_error(dir)(source)),
    }
    let metadata = fs::symlink_metadata(dir).map_err(io_error(dir))?;
    if !metadata.is_dir() {
        return Err(FileError::NotRegular {
            path: dir.to_path_buf(),
        });
    }
    check_owner(dir, &metadata)
}

/// Foreign: another owner, or writable by group or others.
fn check_owner(path: &Path, metadata: &fs::Metadata) -> Result<(), FileError> {
    let ours = nix::unistd::geteuid().as_raw();
    if metadata.uid() != ours {
        return Err(FileError::Foreign {
            path: path.to_path_buf(),
            owner: metadata.uid(),
            ours,
        });
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(FileError::Writable {
            path: path.to_path_buf(),
            mode: metadata.mode() & 0o7777,
        });
    }
    Ok(())
}

/// The state in `dir`, `None` when there is no state file.
pub fn read(dir: &Path) -> Result<Option<State>, FileError> {
    let path = path_in(dir);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // A symlink (O_NOFOLLOW), or a socket.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => {
            return Err(FileError::NotRegular { path })
        }
        Err(source) => return Err(FileError::Io { path, source }),
    };
    let metadata = file.metadata().map_err(io_error(&path))?;
    if !metadata.is_file() {
        return Err(FileError::NotRegular { path });
    }
    check_owner(&path, &metadata)?;
    if metadata.len() > MAX_LEN {
        return Err(FileError::TooLarge { path });
    }
    let bytes = files::read_bounded(file, MAX_LEN)
        .map_err(io_error(&path))?
        .ok_or_else(|| FileError::TooLarge { path: path.clone() })?;
    let text = String::from_utf8(bytes).map_err(|_| FileError::NotText { path: path.clone() })?;
    parse(&text)
        .map(Some)
        .map_err(|source| FileError::Format { path, source })
}

/// Replaces the state file in `dir` with `state`.
pub fn write(dir: &Path, state: &State) -> Result<(), FileError> {
    let path = path_in(dir);
    let temporary = dir.join("state.new");
    // Left over by an armourd killed while writing.
    match fs::remove_file(&temporary) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(&temporary)(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(io_error(&temporary))?;
    file.write_all(render(state).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temporary))?;
    drop(file);
    fs::rename(&temporary, &path).map_err(io_error(&path))?;
    // The rename itself reaches the disk with the folder.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}
