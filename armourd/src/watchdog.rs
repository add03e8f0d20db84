//! The hardware watchdog (SPEC §12): `/dev/watchdog` or another
//! watchdog character device, fed from the event loop so that a hung
//! armourd stops feeding and the board resets the machine.
//!
//! The kernel's watchdog API: <https://docs.kernel.org/watchdog/watchdog-api.html>.
//! Opening the device starts the timer; `WDIOC_KEEPALIVE` (or any write)
//! restarts it; writing `V` just before closing stops it, unless the driver
//! was built with `nowayout`. The ioctls sit behind [`Device`] so that the
//! feeding, timeout and magic-close logic is tested with a stand-in.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::Duration,
};

pub mod critical;

/// What armourd needs of a watchdog device.
pub trait Device {
    /// Asks for a timeout of `seconds` (`WDIOC_SETTIMEOUT`).
    fn set_timeout(&mut self, seconds: u32) -> io::Result<()>;
    /// The timeout the hardware runs with (`WDIOC_GETTIMEOUT`).
    fn timeout(&mut self) -> io::Result<u32>;
    /// Restarts the timer (`WDIOC_KEEPALIVE`, else a write).
    fn keepalive(&mut self) -> io::Result<()>;
    /// Writes the magic close character `V`: the timer stops once the
    /// device is closed (unless the driver was built with `nowayout`).
    fn magic_close(&mut self) -> io::Result<()>;
}

/// Why the watchdog could not be used.
#[derive(thiserror::Error, Debug)]
pub enum WatchdogError {
    #[error("cannot open watchdog device {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "watchdog device {} is busy: another process holds it (for example the `watchdog` \
         daemon, or systemd with RuntimeWatchdogSec= set in /etc/systemd/system.conf); \
         stop that one, or run armourd without --watchdog",
        path.display()
    )]
    Busy { path: PathBuf },
    #[error(
        "{} is not a watchdog device (expected a character device such as /dev/watchdog or /dev/watchdog0)",
        path.display()
    )]
    NotAWatchdog {
        path: PathBuf,
        #[source]
        source: Option<io::Error>,
    },
    #[error("watchdog device {} refused {what}", path.display())]
    Ioctl {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An open watchdog device and how often it must be fed.
pub struct Watchdog {
    device: Box<dyn Device>,
    /// The magic close was written: dropping it leaves nothing armed.
    closed: bool,
    path: PathBuf,
    timeout: Duration,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Watchdog {
    /// Opens the watchdog at `path` (close-on-exec, so restarted programs
    /// never inherit it), sets `timeout` seconds if given and reads back the
    /// timeout the hardware took.
    pub fn open(path: &Path, timeout: Option<u32>) -> Result<Self, WatchdogError> {
        let device = Hardware::open(path)?;
        let nowayout = device.nowayout;
        let watchdog = Self::start(Box::new(device), path, timeout)?;
        if nowayout {
            log::warn!(
                "watchdog {}: the driver was built with nowayout; once armourd stops, \
                 the machine resets unless something else feeds the watchdog",
                path.display()
            );
        }
        Ok(watchdog)
    }
    /// Takes over an open `device`: sets `timeout` seconds if given, reads
    /// back what the hardware took, and feeds it once.
    pub fn start(
        mut device: Box<dyn Device>,
        path: &Path,
        timeout: Option<u32>,
    ) -> Result<Self, WatchdogError> {
        let ioctl = |what| {
            let path = path.to_path_buf();
            move |source| WatchdogError::Ioctl { path, what, source }
        };
        let result = (|| {
            if let Some(seconds) = timeout {
                device
                    .set_timeout(seconds)
                    .map_err(ioctl("the timeout (WDIOC_SETTIMEOUT)"))?;
            }
            let took = device
                .timeout()
                .map_err(ioctl("reading the timeout (WDIOC_GETTIMEOUT)"))?;
            device.keepalive().map_err(ioctl("a keepalive"))?;
            Ok(took)
        })();
        let took = match result {
            Ok(took) => took,
            Err(err) => {
                // Not armed by armourd, so not left armed.
                let _ = device.magic_close();
                return Err(err);
            }
        };
        match timeout {
            Some(asked) if asked != took => log::warn!(
                "watchdog {}: asked for a {asked} s timeout, the hardware took {took} s",
                path.display()
            ),
            _ => log::info!("watchdog {}: timeout {took} s", path.display()),
        }
        Ok(Self {
            device,
            closed: false,
            path: path.to_path_buf(),
            timeout: Duration::from_secs(took.max(1).into()),
        })
    }

    /// How often the event loop feeds the watchdog: a third of its timeout,
    /// so that one late feed never resets the machine.
    pub fn period(&self) -> Duration {
        self.timeout / 3
    }

    /// The timeout the hardware runs with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Restarts the hardware's timer; a failure is logged (the next feed may work).
    pub fn feed(&mut self) {
        if let Err(err) = self.device.keepalive() {
            log::error!("cannot feed watchdog {}: {err}", self.path.display());
        }
    }

    /// A clean stop: the magic close, so the board is not reset.
    pub fn close(mut self) {
        match self.device.magic_close() {
            Ok(()) => {
                self.closed = true;
                log::info!("watchdog {}: stopped (magic close)", self.path.display())
            }
            Err(err) => log::error!(
                "watchdog {}: the magic close failed ({err}); the machine may reset",
                self.path.display()
            ),
        }
    }
}

impl Drop for Watchdog {
    /// Without [`Watchdog::close`] (armourd stops on an error, or a critical
    /// entry is down) the timer keeps running: said, since the machine resets.
    fn drop(&mut self) {
        if !self.closed {
            log::error!(
                "watchdog {}: left armed; the machine resets within {} s unless armourd \
                 is started again",
                self.path.display(),
                self.timeout.as_secs()
            );
        }
    }
}

/// A real watchdog character device.
#[derive(Debug)]
pub struct Hardware {
    file: File,
    /// `WDIOF_KEEPALIVEPING`: the driver answers `WDIOC_KEEPALIVE`.
    keepalive_ioctl: bool,
    /// The driver was built (or loaded) with `nowayout`.
    nowayout: bool,
}

/// `struct watchdog_info` from `<linux/watchdog.h>`.
#[repr(C)]
struct WatchdogInfo {
    options: u32,
    firmware_version: u32,
    identity: [u8; 32],
}

const WDIOF_KEEPALIVEPING: u32 = 0x8000;

nix::ioctl_read!(wdioc_getsupport, b'W', 0, WatchdogInfo);
nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

impl Hardware {
    fn open(path: &Path) -> Result<Self, WatchdogError> {
        let not_a_watchdog = |source| WatchdogError::NotAWatchdog {
            path: path.to_path_buf(),
            source,
        };
        let open_error = |source: io::Error| match source.raw_os_error() {
            Some(libc::EBUSY) => WatchdogError::Busy {
                path: path.to_path_buf(),
            },
            _ => WatchdogError::Open {
                path: path.to_path_buf(),
                source,
            },
        };
        // Checked before opening: opening a FIFO would block, and anything
        // but a character device cannot be a watchdog.
        let meta = std::fs::metadata(path).map_err(open_error)?;
        if !meta.file_type().is_char_device() {
            return Err(not_a_watchdog(None));
        }
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(open_error)?;
        let mut info = WatchdogInfo {
            options: 0,
            firmware_version: 0,
            identity: [0; 32],
        };
        // SAFETY: `info` is a valid `struct watchdog_info` the kernel fills in.
        if let Err(errno) = unsafe { wdioc_getsupport(file.as_raw_fd(), &mut info) } {
            // Opened, so possibly armed: a magic close in case it is one after all.
            let _ = (&file).write_all(b"V");
            return Err(not_a_watchdog(Some(errno.into())));
        }
        let identity = String::from_utf8_lossy(&info.identity);
        log::info!(
            "watchdog {}: {}",
            path.display(),
            identity.trim_end_matches('\0')
        );
        Ok(Self {
            keepalive_ioctl: info.options & WDIOF_KEEPALIVEPING != 0,
            nowayout: nowayout(&meta),
            file,
        })
    }
}

/// Whether the driver of the device was built with `nowayout`, as its
/// sysfs directory says (`/dev/watchdog` is the misc device 10:130, an
/// alias of `watchdog0`).
fn nowayout(meta: &std::fs::Metadata) -> bool {
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    let dir = if (major, minor) == (10, 130) {
        PathBuf::from("/sys/class/watchdog/watchdog0")
    } else {
        PathBuf::from(format!("/sys/dev/char/{major}:{minor}"))
    };
    std::fs::read_to_string(dir.join("nowayout")).is_ok_and(|text| text.trim() == "1")
}

impl Device for Hardware {
    fn set_timeout(&mut self, seconds: u32) -> io::Result<()> {
        let mut value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
        // SAFETY: the kernel reads and writes one int.
        unsafe { wdioc_settimeout(self.file.as_raw_fd(), &mut value) }?;
        Ok(())
    }

    fn timeout(&mut self) -> io::Result<u32> {
        let mut value: libc::c_int = 0;
        // SAFETY: the kernel writes one int.
        unsafe { wdioc_gettimeout(self.file.as_raw_fd(), &mut value) }?;
        Ok(value.max(0) as u32)
    }

    fn keepalive(&mut self) -> io::Result<()> {
        if self.keepalive_ioctl {
            let mut unused: libc::c_int = 0;
            // SAFETY: the argument is ignored by the kernel.
            unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut unused) }?;
            return Ok(());
        }
        // Any write restarts the timer; a NUL is not the magic character.
        self.file.write_all(b"\0")
    }

    fn magic_close(&mut self) -> io::Result<()> {
        self.file.write_all(b"V")
    }
}

#[cfg(test)]
pub(crate) mod stand_in;
#[cfg(test)]
mod tests;
