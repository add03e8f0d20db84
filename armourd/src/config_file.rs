//! The configuration file on disk: read without blocking and never more
//! than [`MAX_SIZE`] bytes, whatever the path names (a FIFO, `/dev/zero`, a
//! huge file), parsed with [`config::parse`], and every entry's path
//! canonicalised so that it compares equal to `/proc/PID/exe`.

use std::{fmt::Write, io, path::Path};

use crate::{
    config::{self, Config, ConfigError, DEFAULT_PATH, MAX_SIZE},
    files::{self, ReadError},
};

/// Reads and parses the file at `path`, then canonicalises every entry's
/// path. A path that does not exist yet is logged, not an error: it may be
/// installed later.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.to_path_buf();
    let bytes = files::read_regular(path, MAX_SIZE).map_err(|error| match error {
        ReadError::NotRegular { kind } => ConfigError::NotRegular { file, kind },
        ReadError::TooLarge { limit } => ConfigError::TooLarge { file, limit },
        ReadError::Io(source) => ConfigError::Read { file, source },
    })?;
    let text = config::decode(bytes, path)?;
    let mut config = config::parse(&text, path)?;
    for entry in &mut config.entries {
        files::canonicalise(entry, path);
    }
    Ok(config)
}

/// Reads the configuration armourd runs with: the file given with `-c`,
/// else [`DEFAULT_PATH`], which may be missing (`Ok(None)`). Start-up and
/// every reload go through here.
pub fn read(path: Option<&Path>) -> Result<Option<Config>, ConfigError> {
    match path {
        Some(path) => load(path).map(Some),
        None => load_default(),
    }
}

/// Loads [`DEFAULT_PATH`]; `Ok(None)` when it does not exist, since armourd
/// then starts with nothing configured (processes can still be watched over
/// D-Bus).
pub fn load_default() -> Result<Option<Config>, ConfigError> {
    load_if_exists(Path::new(DEFAULT_PATH))
}

fn load_if_exists(path: &Path) -> Result<Option<Config>, ConfigError> {
    match load(path) {
        Err(ConfigError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        other => other.map(Some),
    }
}

/// What `armourd --check-config` prints: each entry of `config` (read
/// from `file`) with every option and the executables it matches now.
pub fn report(config: &Config, file: &Path) -> String {
    let found = files::expand(config);
    let mut out = String::new();
    if config.entries.is_empty() {
        let _ = writeln!(out, "{}: no entries", file.display());
    }
    for (index, entry) in config.entries.iter().enumerate() {
        let _ = writeln!(out, "{}:{}: {}", file.display(), entry.line, entry.pattern);
        let _ = writeln!(out, "    {}", config::describe(entry).join(" "));
        let matches: Vec<_> = found.iter().filter(|f| f.entry == index).collect();
        if matches.is_empty() {
            let _ = writeln!(out, "    matches no executable now");
        }
        for file in matches {
            let _ = writeln!(out, "    matches {}", file.path.display());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, path::PathBuf};

    #[test]
    fn missing_file_is_a_read_error_unless_it_is_the_default() {
        let missing = Path::new("/nonexistent/armourd-test.conf");
        assert!(matches!(load(missing), Err(ConfigError::Read { .. })));
        assert!(load_if_exists(missing).unwrap().is_none());
    }

    /// A directory of its own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("armourd-config-test-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The message of loading `path`, which must fail.
    fn load_error(path: &Path) -> String {
        load(path).unwrap_err().to_string()
    }

    #[test]
    fn only_a_regular_file_is_read_and_a_fifo_does_not_block() {
        let dir = TempDir::new("types");
        let fifo = dir.0.join("fifo.conf");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let socket = dir.0.join("socket.conf");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let cases = [
            (fifo.as_path(), "is a FIFO (named pipe), not a regular file"),
            (
                Path::new("/dev/zero"),
                "is a character device, not a regular file",
            ),
            (dir.0.as_path(), "is a directory, not a regular file"),
            (socket.as_path(), "is a socket, not a regular file"),
        ];
        for (path, expected) in cases {
            let message = load_error(path);
            assert!(
                message.starts_with(&format!("configuration file {} {expected}", path.display())),
                "{message}"
            );
            assert!(message.contains("name one with -c"), "{message}");
        }
    }

    #[test]
    fn file_larger_than_the_bound_is_rejected_and_one_at_the_bound_is_read() {
        let dir = TempDir::new("size");
        let path = dir.0.join("armourd.conf");
        let comment = "#".repeat(MAX_SIZE as usize - 1) + "\n";
        fs::write(&path, &comment).unwrap();
        assert_eq!(load(&path).unwrap(), Config::default());
        fs::write(&path, comment + "\n").unwrap();
        let message = load_error(&path);
        assert!(
            message.starts_with(&format!(
                "configuration file {} is larger than 1024 KiB",
                path.display()
            )),
            "{message}"
        );
    }
}
