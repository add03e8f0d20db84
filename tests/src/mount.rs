//! A FUSE file system that never answers: every access below it waits, the
//! way a hung network or FUSE mount makes processes wait. Nothing serves it:
//! the kernel queues each request until the connection goes.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
};

/// A mount of an unanswered FUSE connection; unmounted (lazily, so that
/// waiting processes are let go) and disconnected on drop.
pub struct HungMount {
    target: PathBuf,
    /// The connection: closing it fails every waiting request.
    _device: File,
}

impl HungMount {
    /// Mounts it over `target` (an existing directory), open to every user.
    /// Panics when the kernel has no FUSE: the tests need it.
    pub fn new(target: &Path) -> HungMount {
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap_or_else(|e| panic!("open /dev/fuse (needs FUSE in the kernel): {e}"));
        let options = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            device.as_raw_fd()
        );
        let c = |bytes: &[u8]| CString::new(bytes).expect("no NUL");
        let (source, target_c, fstype, data) = (
            c(b"armourd-test"),
            c(target.as_os_str().as_bytes()),
            c(b"fuse"),
            c(options.as_bytes()),
        );
        // SAFETY: valid C strings that outlive the call.
        let ret = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            ret,
            0,
            "mount fuse on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
        HungMount {
            target: target.to_path_buf(),
            _device: device,
        }
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        let target = CString::new(self.target.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}
