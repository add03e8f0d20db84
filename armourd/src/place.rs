//! Where a process runs, besides its files: the namespaces and the cgroup
//! it was in when its watch began, so that its restart lands there too
//! and a container's program is never started on the host (SPEC §5).
//!
//! Namespaces are compared with armourd's own by inode number when the
//! watch begins (a `stat` of each `/proc/PID/ns/*` link: no descriptor
//! for a process in armourd's namespaces, the usual case, and nothing at
//! all at its restart). Those that differ are held open from then on: a
//! crashed process's namespaces can no longer be reached through its pid
//! (a pidfd's `setns` needs a live process), and only an open handle keeps
//! a namespace that may be empty by then. Each namespace is opened once,
//! however many watched processes run in it (a container's thousand
//! workers hold six descriptors, not six thousand).
//!
//! Joined at restart: cgroup, ipc, uts, net, pid (for the restart's own
//! child: Linux moves only a caller's children into a pid namespace, see
//! `spawn`) and mnt. Not joined: the user namespace — joining one needs a
//! process that shares its memory with nobody, while the restart's child
//! shares armourd's until its exec, and the ids armourd read are the
//! host's, not the namespace's — so a process in another user namespace
//! is not watched, with a log line that says why; the time namespace
//! (only checkpoint/restore uses one) is not followed.
//!
//! The cgroup is the cgroup2 (unified hierarchy) one, recorded as a path
//! and opened at restart, so that a cgroup the service manager created
//! again for the unit is the one joined. Minimum kernel: 3.8 for
//! `/proc/PID/ns` (older kernels: everything counts as armourd's), 4.6 for
//! cgroup namespaces, 4.5 for cgroup2.
//! <https://man7.org/linux/man-pages/man2/setns.2.html>

use std::{
    collections::HashMap,
    fmt, fs, io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, Weak},
};

/// Why the place of a process could not be captured.
#[derive(thiserror::Error, Debug)]
pub enum PlaceError {
    /// The process ended before its namespaces could be read.
    #[error("process {pid} ended before its namespaces could be read")]
    Gone { pid: u32 },
    /// A namespace of the process could not be read or opened.
    #[error("cannot open the {kind} namespace of process {pid}")]
    Open {
        pid: u32,
        kind: &'static str,
        #[source]
        source: io::Error,
    },
    /// The process runs in a user namespace other than armourd's.
    #[error(
        "process {pid} runs in another user namespace (a rootless container), which armourd \
         cannot restart it in; it is not watched"
    )]
    UserNamespace { pid: u32 },
}

/// The namespaces joined at restart, in the order they are joined, with
/// their `setns` flag.
const KINDS: [(&str, libc::c_int); 6] = [
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
];

/// A namespace: the device and inode of its `nsfs` file.
type NsId = (u64, u64);

/// One namespace a restart joins.
#[derive(Clone)]
pub struct Joined {
    /// Its name in `/proc/PID/ns`.
    pub kind: &'static str,
    /// Its `CLONE_NEW*` flag, for `setns`.
    pub flag: libc::c_int,
    id: NsId,
    fd: Arc<OwnedFd>,
}

impl Joined {
    /// The descriptor to hand `setns`.
    pub fn raw_fd(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }
}

impl PartialEq for Joined {
    fn eq(&self, other: &Self) -> bool {
        self.flag == other.flag && self.id == other.id
    }
}

impl Eq for Joined {}

impl fmt::Debug for Joined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:[{}]", self.kind, self.id.1)
    }
}

/// Where a restart runs. The default is armourd's own place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    /// The namespaces that differ from armourd's, held open.
    pub namespaces: Vec<Joined>,
    /// The cgroup2 folder (e.g. `/sys/fs/cgroup/system.slice/food.service`)
    /// when it differs from armourd's.
    pub cgroup: Option<PathBuf>,
    /// The executable's path in the process's own mount namespace, when
    /// that is another (the spec's `exe` is the path armourd sees, which
    /// logs and D-Bus show).
    pub exe: Option<PathBuf>,
}

impl Place {
    /// Whether the restart changes its mount namespace: paths it opens
    /// (executable, working directory, stdio) are the process's then.
    pub fn other_mounts(&self) -> bool {
        self.namespaces.iter().any(|j| j.flag == libc::CLONE_NEWNS)
    }

    /// Whether the restart goes into another pid namespace.
    pub fn other_pids(&self) -> bool {
        self.namespaces.iter().any(|j| j.flag == libc::CLONE_NEWPID)
    }

    /// Where process `pid` runs. Namespaces equal to armourd's are not
    /// opened; the others are, or shared with a watch that holds them.
    pub fn of(pid: u32) -> Result<Place, PlaceError> {
        let own = own();
        let mut namespaces = Vec::new();
        if let Some(user) = own.user {
            match ns_id(pid, "user") {
                Ok(id) if id != user => return Err(PlaceError::UserNamespace { pid }),
                Ok(_) => {}
                Err(source) => return Err(error(pid, "user", source)),
            }
        }
        for (&(kind, flag), mine) in KINDS.iter().zip(&own.namespaces) {
            let Some(mine) = *mine else { continue };
            let id = ns_id(pid, kind).map_err(|e| error(pid, kind, e))?;
            if id != mine {
                let fd = shared_fd(pid, kind, id)?;
                namespaces.push(Joined { kind, flag, id, fd });
            }
        }
        let cgroup = match (&own.cgroup, cgroup_path(pid)) {
            (Some((mount, mine)), Some(theirs)) if &theirs != mine => {
                Some(mount.join(theirs.trim_start_matches('/')))
            }
            _ => None,
        };
        let mut place = Place {
            namespaces,
            cgroup,
            exe: None,
        };
        if place.other_mounts() {
            let link =
                fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| error(pid, "mnt", e))?;
            let bytes = link.as_os_str().as_encoded_bytes();
            let own = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
            // SAFETY: a prefix of the bytes of an OsStr ending before ASCII.
            place.exe = Some(PathBuf::from(unsafe {
                std::ffi::OsStr::from_encoded_bytes_unchecked(own)
            }));
        }
        Ok(place)
    }
}

fn error(pid: u32, kind: &'static str, source: io::Error) -> PlaceError {
    match source.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => PlaceError::Gone { pid },
        _ => PlaceError::Open { pid, kind, source },
    }
}

/// armourd's own place, read once.
struct Own {
    user: Option<NsId>,
    /// Per entry of [`KINDS`]; `None` where the kernel has no such namespace.
    namespaces: Vec<Option<NsId>>,
    /// The cgroup2 mount point and armourd's cgroup path below it.
    cgroup: Option<(PathBuf, String)>,
}

fn own() -> &'static Own {
    static OWN: OnceLock<Own> = OnceLock::new();
    OWN.get_or_init(|| {
        let own_id = |kind| ns_id_at(&Path::new("/proc/self/ns").join(kind)).ok();
        let mount = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| cgroup2_mount(&text));
        let cgroup = mount.zip(
            fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|t| unified_path(&t)),
        );
        Own {
            user: own_id("user"),
            namespaces: KINDS.iter().map(|(kind, _)| own_id(kind)).collect(),
            cgroup,
        }
    })
}

fn ns_id_at(path: &Path) -> io::Result<NsId> {
    let meta = fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn ns_id(pid: u32, kind: &str) -> io::Result<NsId> {
    ns_id_at(Path::new(&format!("/proc/{pid}/ns/{kind}")))
}

/// The descriptor of namespace `id`, opened through `pid` unless a watch
/// holds it already.
fn shared_fd(pid: u32, kind: &'static str, id: NsId) -> Result<Arc<OwnedFd>, PlaceError> {
    static OPEN: Mutex<Option<HashMap<NsId, Weak<OwnedFd>>>> = Mutex::new(None);
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let open = open.get_or_insert_with(HashMap::new);
    if let Some(fd) = open.get(&id).and_then(Weak::upgrade) {
        return Ok(fd);
    }
    let file = fs::File::open(format!("/proc/{pid}/ns/{kind}")).map_err(|e| error(pid, kind, e))?;
    // The process may have changed namespace between the stat and the
    // open: what is held must be what was compared.
    let meta = file.metadata().map_err(|e| error(pid, kind, e))?;
    if (meta.dev(), meta.ino()) != id {
        return Err(PlaceError::Gone { pid });
    }
    let fd = Arc::new(OwnedFd::from(file));
    open.retain(|_, weak| weak.strong_count() > 0);
    open.insert(id, Arc::downgrade(&fd));
    Ok(fd)
}

/// The mount point of the cgroup2 file system in `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mounted, after) = line.split_once(" - ")?;
        if after.split_ascii_whitespace().next()? != "cgroup2" {
            return None;
        }
        let point = mounted.split_ascii_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(point)))
    })
}

/// Undoes mountinfo's `\040`-style escapes of blanks and backslashes.
fn unescape_octal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The unified hierarchy's path (`0::/system.slice/food.service`) in the
/// text of `/proc/PID/cgroup`.
fn unified_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_end_matches(" (deleted)").to_owned())
}

/// The cgroup2 path of process `pid`, relative to armourd's view.
fn cgroup_path(pid: u32) -> Option<String> {
    unified_path(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The number of pid namespaces process `pid` is seen in (`NSpid:` of its
/// status, readable while it is a zombie): more than one means it runs in
/// a pid namespace below armourd's. `None` when it cannot be read.
pub fn pid_depth(pid: u32) -> Option<usize> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_pid_depth(&status)
}

fn parse_pid_depth(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .map(|pids| pids.split_ascii_whitespace().count())
}

/// A new cgroup2 folder for a test (armourd's cgroup2 mount must exist).
#[cfg(test)]
pub(crate) fn tests_cgroup(name: &str) -> PathBuf {
    let (mount, _) = own().cgroup.as_ref().expect("a cgroup2 mount");
    let dir = mount.join(format!("armourd-test-{name}-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("a cgroup2 folder");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mount_is_found_among_v1_hierarchies() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn mount_point_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_octal(r"/x\"), r"/x\");
    }

    #[test]
    fn unified_path_is_the_line_of_hierarchy_0() {
        let text = "4:memory:/x\n0::/system.slice/food.service\n";
        assert_eq!(
            unified_path(text).as_deref(),
            Some("/system.slice/food.service")
        );
        assert_eq!(unified_path("4:memory:/x\n"), None);
    }

    #[test]
    fn pid_depth_counts_the_namespaces_of_nspid() {
        assert_eq!(parse_pid_depth("Name:\tx\nNSpid:\t4242\t1\n"), Some(2));
        assert_eq!(parse_pid_depth("NSpid:\t17\n"), Some(1));
        assert_eq!(parse_pid_depth("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_is_in_armourds_place() {
        let place = Place::of(std::process::id()).expect("own place");
        assert_eq!(place, Place::default());
    }
}
