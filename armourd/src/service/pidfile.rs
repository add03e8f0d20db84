//! The pid file: created (or taken over) and locked with `flock` before
//! armourd detaches, so that a second armourd on the same file is refused
//! while the first runs, and removed when armourd stops.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

/// Where `-d` writes its pid when `--pidfile` names no other file.
pub const DEFAULT_PIDFILE: &str = "/run/armourd.pid";

/// Why the pid file could not be used.
#[derive(thiserror::Error, Debug)]
pub enum PidFileError {
    #[error(
        "cannot create pid file {}: its folder {} does not exist (create it, or pick another file with --pidfile)",
        path.display(), folder.display()
    )]
    NoFolder { path: PathBuf, folder: PathBuf },
    #[error("cannot create pid file {} (pick a writable place with --pidfile)", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "armourd is already running{} (pid file {} is locked); stop it first, or give this one another --pidfile",
        pid.map(|p| format!(" as pid {p}")).unwrap_or_default(), path.display()
    )]
    Running { path: PathBuf, pid: Option<u32> },
    #[error("cannot write pid file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A locked pid file; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: Flock<File>,
}

impl PidFile {
    /// Creates or opens the file at `path` and locks it. Leaves no file
    /// behind when it fails.
    pub fn lock(path: &Path) -> Result<Self, PidFileError> {
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| match path.parent() {
                Some(folder)
                    if source.kind() == io::ErrorKind::NotFound
                        && !folder.as_os_str().is_empty() =>
                {
                    PidFileError::NoFolder {
                        path: path.to_path_buf(),
                        folder: folder.to_path_buf(),
                    }
                }
                _ => PidFileError::Create {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => file,
            Err((mut file, _)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(PidFileError::Running {
                    path: path.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
        };
        let pidfile = Self {
            path: path.to_path_buf(),
            file,
        };
        if created {
            return Ok(pidfile);
        }
        // A stale file from an armourd that was killed: emptied until the
        // pid is written.
        pidfile
            .file
            .set_len(0)
            .map_err(|source| PidFileError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(pidfile)
    }

    /// Writes this process's pid (after detaching: the daemon's own).
    pub fn write_pid(&mut self) -> Result<(), PidFileError> {
        let pid = std::process::id();
        let result = (|| {
            self.file.set_len(0)?;
            self.file.rewind()?;
            writeln!(&mut *self.file, "{pid}")?;
            self.file.flush()
        })();
        result.map_err(|source| PidFileError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked, so that no other armourd can have
        // taken it over in between.
        if let Err(err) = fs::remove_file(&self.path) {
            log::warn!("cannot remove pid file {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("armourd-pid-{}-{name}", std::process::id()))
    }

    #[test]
    fn the_pid_is_written_and_the_file_removed_when_dropped() {
        let path = temp("write");
        let mut pidfile = PidFile::lock(&path).unwrap();
        pidfile.write_pid().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(pidfile);
        assert!(!path.exists());
    }

    #[test]
    fn a_second_lock_is_refused_and_names_the_running_pid() {
        let path = temp("second");
        let mut first = PidFile::lock(&path).unwrap();
        first.write_pid().unwrap();
        let err = PidFile::lock(&path).unwrap_err();
        assert!(
            matches!(err, PidFileError::Running { pid: Some(p), .. } if p == std::process::id()),
            "{err}"
        );
        assert!(err.to_string().contains("already running"), "{err}");
        drop(first);
    }

    #[test]
    fn a_missing_folder_is_named_and_nothing_is_created() {
        let path = temp("missing-folder").join("armourd.pid");
        let err = PidFile::lock(&path).unwrap_err();
        assert!(matches!(err, PidFileError::NoFolder { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!path.parent().unwrap().exists());
    }

    #[test]
    fn a_stale_file_is_taken_over() {
        let path = temp("stale");
        fs::write(&path, "999999999\n").unwrap();
        let mut pidfile = PidFile::lock(&path).unwrap();
        pidfile.write_pid().unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
    }
}
