//! A stand-in watchdog device for tests: a file that records what was
//! done to it, read back by the tests.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::Device;

/// Writes one line per request; the magic close is the byte `V` alone.
#[derive(Debug)]
pub(crate) struct StandIn {
    file: File,
    /// What the "hardware" accepts: timeouts are rounded up to 10 s steps.
    timeout: u32,
    pub(crate) refuse_timeout: bool,
}

impl Device for StandIn {
    fn set_timeout(&mut self, seconds: u32) -> io::Result<()> {
        if self.refuse_timeout {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.timeout = seconds.div_ceil(10) * 10;
        writeln!(self.file, "settimeout {seconds}")
    }
    fn timeout(&mut self) -> io::Result<u32> {
        Ok(self.timeout)
    }
    fn keepalive(&mut self) -> io::Result<()> {
        writeln!(self.file, "keepalive")
    }
    fn magic_close(&mut self) -> io::Result<()> {
        self.file.write_all(b"V")
    }
}

pub(crate) struct Recording(PathBuf);

impl StandIn {
    /// A stand-in recording into a file of its own, and that recording.
    pub(crate) fn new(name: &str) -> (Recording, Self) {
        let path = std::env::temp_dir().join(format!("armourd-wd-{}-{name}", std::process::id()));
        let file = File::create(&path).expect("create the stand-in");
        let device = StandIn {
            file,
            timeout: 60,
            refuse_timeout: false,
        };
        (Recording(path), device)
    }
}

impl Recording {
    /// Everything done to the stand-in so far.
    pub(crate) fn text(&self) -> String {
        fs::read_to_string(&self.0).expect("read the stand-in back")
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
