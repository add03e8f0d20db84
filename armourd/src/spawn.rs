//! Starting a process from a [`LaunchSpec`]: the only place that forks and
//! execs (SPEC §5).
//!
//! It works like glibc's `posix_spawn`: everything that allocates is
//! prepared first, then `clone(CLONE_VM | CLONE_VFORK)` runs the child on a
//! stack of its own in the parent's memory while the calling thread waits
//! until the child has executed the program or failed. No page tables are
//! copied, which keeps restarts fast. Because the memory is shared, the
//! child only makes async-signal-safe calls, never allocates or panics, and
//! sets ids with raw system calls (glibc's `setuid` would signal the
//! parent's other threads to change theirs too). A failure in the child is
//! written into a slot of the shared memory, which the parent reads once it
//! resumes; nothing there means the exec succeeded.

use std::{
    borrow::Cow,
    ffi::{c_int, c_void, CStr, CString, OsStr},
    fs, io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    ptr,
    sync::atomic::{AtomicI32, AtomicU8, Ordering},
};

use crate::launch::{LaunchSpec, StdioTarget};
use signals::{changed_signals, reset_signals, SignalsBlocked};

/// Why a process could not be started.
#[derive(thiserror::Error, Debug)]
pub enum SpawnError {
    /// The spec cannot be passed to `execve`.
    #[error("cannot start the process: {what}")]
    Prepare { what: &'static str },
    /// No new process could be created (out of memory or process slots).
    #[error("cannot create a process")]
    Fork(#[source] io::Error),
    /// The new process failed at `step` before it could execute `exe`.
    #[error("cannot start {}: {step} failed", exe.display())]
    Exec {
        exe: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// The new process did not reach its exec in time (a hung mount, a
    /// file that blocks) and was killed.
    #[error("cannot start {}: it hung before executing the program and was killed", exe.display())]
    Hung { exe: PathBuf },
}

/// The child of a spawn under way, as other threads see it: its pid, which
/// the kernel stores before the child first runs, and who decides its fate
/// (the spawning thread once the child executed, or a killer before that).
#[derive(Debug, Default)]
pub struct ChildSlot {
    tid: AtomicI32,
    owner: AtomicU8,
}

const UNDECIDED: u8 = 0;
const SPAWNED: u8 = 1;
const KILLED: u8 = 2;

impl ChildSlot {
    /// The child's pid, once it exists.
    pub fn pid(&self) -> Option<u32> {
        u32::try_from(self.tid.load(Ordering::Acquire))
            .ok()
            .filter(|&pid| pid > 0)
    }

    /// Takes the child away from its spawn, to kill it: its spawn then fails
    /// as [`SpawnError::Hung`]. `None` when the spawn is over (or not begun):
    /// the pid is no longer the taker's to kill.
    pub fn take(&self) -> Option<u32> {
        let pid = self.pid()?;
        let taken =
            (self.owner).compare_exchange(UNDECIDED, KILLED, Ordering::AcqRel, Ordering::Acquire);
        taken.is_ok().then_some(pid)
    }
}

/// Starts a process as `spec` says and returns its pid once it executes
/// `spec.exe`. The caller reaps it; a child that failed before its exec is
/// reaped here. The calling thread waits until then; `slot` lets other
/// threads see the child meanwhile (and kill it, should it hang).
pub fn spawn(spec: &LaunchSpec, slot: &ChildSlot) -> Result<u32, SpawnError> {
    let prepared = Prepared::new(spec)?;
    let (pid, clone_error, failure) = STACK.with_borrow_mut(|stack| {
        let stack = match stack {
            Some(stack) => stack,
            None => stack.insert(Stack::new().map_err(SpawnError::Fork)?),
        };
        let _blocked = SignalsBlocked::new();
        let pinned = PinnedToThisCpu::new();
        let mut shared = Shared {
            prepared: &prepared,
            // SAFETY: gettid has no preconditions.
            parent: unsafe { libc::gettid() },
            affinity: pinned.saved,
            failure: None,
            nested_stack: stack.middle(),
            nested_tid: slot.tid.as_ptr(),
            nested_pid: 0,
        };
        slot.tid.store(0, Ordering::Release);
        slot.owner.store(UNDECIDED, Ordering::Release);
        // SAFETY: `child_main` only reads `shared` but for writing
        // `shared.failure`, and `shared` outlives the call: CLONE_VFORK
        // suspends this thread until the child has executed the program or
        // exited. The stack top is the page-aligned end of a live mapping
        // that no other child uses meanwhile (it is this thread's). All
        // signals are blocked so no handler of ours runs on the child's stack.
        // CLONE_PARENT_SETTID has the kernel store the child's pid in
        // `slot` before the child first runs.
        let pid = unsafe {
            libc::clone(
                child_main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID | libc::SIGCHLD,
                ptr::addr_of_mut!(shared).cast(),
                slot.tid.as_ptr(),
            )
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: the child wrote these slots, if at all, before the clone returned.
        let (failure, nested_pid) = unsafe {
            (
                ptr::read_volatile(ptr::addr_of!(shared.failure)),
                ptr::read_volatile(ptr::addr_of!(shared.nested_pid)),
            )
        };
        // The intermediate child of a nested spawn has exited; its child
        // (armourd's too, by CLONE_PARENT) is the restart.
        let pid = if prepared.nested && pid > 0 {
            reap(pid);
            if nested_pid > 0 {
                nested_pid
            } else {
                pid
            }
        } else {
            pid
        };
        Ok::<_, SpawnError>((pid, clone_error, failure))
    })?;
    // Whoever takes the slot first decides: a killer kills the child; once
    // taken here, the child is the restart.
    let taken_by_killer = (slot.owner)
        .compare_exchange(UNDECIDED, SPAWNED, Ordering::AcqRel, Ordering::Acquire)
        .is_err();
    if pid < 0 {
        return Err(SpawnError::Fork(clone_error));
    }
    if taken_by_killer {
        reap(pid);
        return Err(SpawnError::Hung {
            exe: spec.exe.clone(),
        });
    }
    let Some((step, errno)) = failure else {
        return Ok(pid as u32);
    };
    reap(pid);
    Err(SpawnError::Exec {
        exe: spec.exe.clone(),
        step,
        source: io::Error::from_raw_os_error(errno),
    })
}

/// Waits for a child that failed before its exec (it has exited already).
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: plain system call on our own child; ECHILD (someone else reaped
    // it) is fine.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

/// A file the child opens as one of its standard descriptors.
struct StdioOpen {
    path: Cow<'static, CStr>,
    flags: c_int,
}

/// Everything the child needs, allocated before the clone.
struct Prepared {
    exe: CString,
    // The pointer arrays point into these.
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// Unprivileged and already in exactly these groups: setgroups's EPERM
    /// changes nothing.
    groups_already_set: bool,
    umask: libc::mode_t,
    session_leader: bool,
    stdio: [StdioOpen; 3],
    /// The signals to reset to their default disposition.
    changed_signals: &'static [c_int],
    /// `cgroup.procs` of the cgroup to join, open for writing.
    cgroup_procs: Option<OwnedFd>,
    /// The namespaces to join: (descriptor, `CLONE_NEW*` flag). The
    /// descriptors belong to the spec, which outlives the spawn.
    namespaces: Vec<(c_int, c_int)>,
    /// Another pid namespace: joining it places only the joiner's
    /// children there, so the child forks once more (see [`enter_place`]).
    nested: bool,
}

fn c_string(bytes: &OsStr, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(bytes.as_bytes()).map_err(|_| SpawnError::Prepare { what })
}

fn c_strings(list: &[std::ffi::OsString], what: &'static str) -> Result<Vec<CString>, SpawnError> {
    list.iter().map(|s| c_string(s, what)).collect()
}

/// A NULL-terminated array of pointers into `strings`.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain([ptr::null()])
        .collect()
}

impl Prepared {
    fn new(spec: &LaunchSpec) -> Result<Self, SpawnError> {
        let argv = c_strings(&spec.argv, "argv contains a NUL byte")?;
        let env = c_strings(&spec.env, "the environment contains a NUL byte")?;
        let stdio = |i: usize, flags| -> Result<StdioOpen, SpawnError> {
            let path = match &spec.stdio[i] {
                StdioTarget::Null => Cow::Borrowed(c"/dev/null"),
                StdioTarget::File(path) => Cow::Owned(c_string(
                    path.as_os_str(),
                    "a stdio path contains a NUL byte",
                )?),
            };
            let flags = flags | libc::O_NOCTTY | libc::O_CLOEXEC;
            Ok(StdioOpen { path, flags })
        };
        let append = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT;
        let groups_already_set = !nix::unistd::geteuid().is_root() && {
            let mut current: Vec<u32> = nix::unistd::getgroups()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.as_raw())
                .collect();
            let mut wanted = spec.groups.clone();
            current.sort_unstable();
            wanted.sort_unstable();
            current == wanted
        };
        Ok(Self {
            exe: c_string(
                spec.place.exe.as_ref().unwrap_or(&spec.exe).as_os_str(),
                "the executable path contains a NUL byte",
            )?,
            argv_ptrs: pointers(&argv),
            env_ptrs: pointers(&env),
            _argv: argv,
            _env: env,
            cwd: c_string(
                spec.cwd.as_os_str(),
                "the working directory contains a NUL byte",
            )?,
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.groups.clone(),
            groups_already_set,
            umask: spec.umask & 0o7777,
            session_leader: spec.session_leader,
            stdio: [
                stdio(0, libc::O_RDONLY)?,
                stdio(1, append)?,
                stdio(2, append)?,
            ],
            changed_signals: changed_signals(),
            cgroup_procs: spec
                .place
                .cgroup
                .as_deref()
                .and_then(|dir| open_cgroup(dir, spec)),
            namespaces: (spec.place.namespaces.iter())
                .map(|joined| (joined.raw_fd(), joined.flag))
                .collect(),
            nested: spec.place.other_pids(),
        })
    }
}

/// Opens `cgroup.procs` of the cgroup `dir` a restart joins. A cgroup that
/// is gone (its unit stopped) is said and left: the restart runs in
/// armourd's then, as it would have had nobody recorded it.
fn open_cgroup(dir: &Path, spec: &LaunchSpec) -> Option<OwnedFd> {
    let procs = dir.join("cgroup.procs");
    match fs::OpenOptions::new().write(true).open(&procs) {
        Ok(file) => Some(file.into()),
        Err(err) => {
            log::warn!(
                "restarting {} in armourd's cgroup: cannot open {} ({err}); the cgroup it ran in is gone",
                spec.exe.display(),
                procs.display()
            );
            None
        }
    }
}

/// What parent and child share: the child reads `prepared`, `parent` and
/// `affinity`, and reports a failure in `failure`.
struct Shared<'a> {
    prepared: &'a Prepared,
    /// The thread that clones the child.
    parent: libc::pid_t,
    /// The CPUs the cloning thread may run on, when it was pinned to one.
    affinity: Option<libc::cpu_set_t>,
    failure: Option<(&'static str, c_int)>,
    /// For a nested spawn: where the grandchild's stack ends, where the
    /// kernel stores its pid, and the pid the child read back.
    nested_stack: *mut c_void,
    nested_tid: *mut libc::pid_t,
    nested_pid: libc::pid_t,
}

thread_local! {
    /// The stack of the children this thread clones, one at a time, made at
    /// the first and kept: mapping it anew would cost every restart.
    static STACK: std::cell::RefCell<Option<Stack>> = const { std::cell::RefCell::new(None) };
}

/// Pins the calling thread to the CPU it runs on while it lives, so that a
/// child cloned meanwhile starts there: that CPU is free, since the thread
/// is suspended until the child executes, whereas an idle CPU would first
/// have to be woken (slow on virtual machines, where it shows as restart
/// latency of up to milliseconds). As soon as it starts, the child lets
/// itself run on the `saved` CPUs again and moves this thread to the other
/// ones, so that, woken as the child executes, it does not take the CPU the
/// child is executing on.
struct PinnedToThisCpu {
    saved: Option<libc::cpu_set_t>,
}

impl PinnedToThisCpu {
    fn new() -> Self {
        let size = size_of::<libc::cpu_set_t>();
        // SAFETY: pointers to live cpu_set_t values of `size` bytes.
        let saved = unsafe {
            let mut saved: libc::cpu_set_t = std::mem::zeroed();
            let mut here: libc::cpu_set_t = std::mem::zeroed();
            let cpu = libc::sched_getcpu();
            let pinned = cpu >= 0 && libc::sched_getaffinity(0, size, &mut saved) == 0 && {
                libc::CPU_SET(cpu as usize, &mut here);
                libc::sched_setaffinity(0, size, &here) == 0
            };
            pinned.then_some(saved)
        };
        Self { saved }
    }
}

impl Drop for PinnedToThisCpu {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the mask saved by `new` (the child did already,
            // unless it failed before).
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), saved) };
        }
    }
}

/// The child's stack: an anonymous mapping with a guard page below it.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    /// Two halves: the child's on top, and below it that of the child's
    /// child when it forks again (another pid namespace). Pages that are
    /// never touched cost nothing.
    const SIZE: usize = 256 * 1024;

    fn new() -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = Self::SIZE + page;
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the first page of the mapping we own; an overflow faults
        // there instead of writing below the mapping.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The highest address: stacks grow down on every Linux architecture
    /// Rust supports but PA-RISC.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }

    /// The top of the lower half (16-byte aligned, as the mapping's size is).
    fn middle(&self) -> *mut c_void {
        // SAFETY: within the mapping, above the guard page.
        unsafe { self.base.cast::<u8>().add(self.len - Self::SIZE / 2).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used: the child has executed
        // another program or exited.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// A failed step in the child and its errno.
type Failure = (&'static str, c_int);

/// The child: runs on its own stack in the parent's memory.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    let shared = arg.cast::<Shared>();
    // SAFETY: `arg` is the `Shared` of `spawn`, alive while the parent waits.
    let (prepared, parent, affinity) = unsafe {
        (
            (*shared).prepared,
            (*shared).parent,
            (*shared).affinity.as_ref(),
        )
    };
    if let Some(affinity) = affinity {
        // Started on the parent's CPU. The parent, woken as this child
        // executes, goes on elsewhere (if it may run elsewhere at all), not
        // in this child's way; it puts its own CPUs back itself. The child
        // stays here but may move from now on.
        let size = size_of::<libc::cpu_set_t>();
        // SAFETY: pointers to cpu_set_t values of `size` bytes that outlive
        // the calls. Setting a mask it had already cannot fail; if it did,
        // the program would run on one CPU, which beats not running at all.
        unsafe {
            let mut elsewhere = *affinity;
            // The system call: the C library's `sched_getcpu` may read
            // the parent's thread data, which this child shares.
            let mut here: libc::c_uint = 0;
            let null = ptr::null_mut::<c_void>();
            if libc::syscall(libc::SYS_getcpu, &mut here, null, null) == 0 {
                libc::CPU_CLR(here as usize, &mut elsewhere);
            }
            let parent_mask = if libc::CPU_COUNT(&elsewhere) > 0 {
                &elsewhere
            } else {
                affinity
            };
            libc::sched_setaffinity(parent, size, parent_mask);
            libc::sched_setaffinity(0, size, affinity);
        }
    }
    let result = enter_place(prepared).and_then(|()| {
        if prepared.nested {
            // SAFETY: `shared` as above.
            unsafe { spawn_nested(shared) }
        } else {
            run_child(prepared).map(|never| match never {})
        }
    });
    // SAFETY: as above; the parent reads the slot only after we exit.
    unsafe {
        if let Err(failure) = result {
            ptr::write_volatile(ptr::addr_of_mut!((*shared).failure), Some(failure));
            libc::_exit(127)
        }
        libc::_exit(0)
    }
}

/// Joins the cgroup and the namespaces the process ran in: the cgroup
/// first, while its folder is still reachable the way it was opened,
/// the mount namespace last (it changes the child's root and working
/// directory). Only system calls on descriptors opened before the clone.
fn enter_place(p: &Prepared) -> Result<(), Failure> {
    if let Some(procs) = &p.cgroup_procs {
        // "0" moves the writer itself.
        // SAFETY: a live descriptor, opened before the clone, and one byte
        // of a static buffer.
        let written = unsafe { libc::write(procs.as_raw_fd(), c"0".as_ptr().cast(), 1) };
        check("join the cgroup", written as libc::c_long)?;
    }
    for &(fd, flag) in &p.namespaces {
        // SAFETY: a live namespace descriptor, opened before the clone.
        let joined = unsafe { libc::setns(fd, flag) };
        check(setns_step(flag), joined.into())?;
    }
    Ok(())
}

fn setns_step(flag: c_int) -> &'static str {
    match flag {
        libc::CLONE_NEWCGROUP => "join the cgroup namespace",
        libc::CLONE_NEWIPC => "join the ipc namespace",
        libc::CLONE_NEWUTS => "join the uts namespace",
        libc::CLONE_NEWNET => "join the net namespace",
        libc::CLONE_NEWPID => "join the pid namespace",
        _ => "join the mount namespace",
    }
}

/// In the child, after joining another pid namespace: clones the process
/// that becomes the restart (the first in that namespace, and armourd's
/// child by CLONE_PARENT, so that armourd reaps it) and waits, as its own
/// parent waits, until that one executed the program or failed; its pid
/// goes to the parent and to the slot other threads see. A pid namespace
/// whose init has ended takes no new process (ENOMEM): the container is
/// gone, and the restart fails saying so.
///
/// # Safety
///
/// `shared` is the `Shared` of `spawn`, alive while the parent waits.
unsafe fn spawn_nested(shared: *mut Shared) -> Result<(), Failure> {
    // SAFETY: as the caller promises; the grandchild runs on the other
    // half of the stack, below this child's frames.
    let pid = unsafe {
        libc::clone(
            nested_main,
            (*shared).nested_stack,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT | libc::CLONE_PARENT_SETTID,
            shared.cast(),
            (*shared).nested_tid,
        )
    };
    if pid < 0 {
        let step = match errno() {
            libc::ENOMEM => "fork in the pid namespace (its init has ended)",
            _ => "fork in the pid namespace",
        };
        return Err((step, errno()));
    }
    // SAFETY: as above.
    unsafe { ptr::write_volatile(ptr::addr_of_mut!((*shared).nested_pid), pid) };
    Ok(())
}

/// The restart in another pid namespace: the grandchild of the spawning
/// thread, its child for the kernel (CLONE_PARENT).
extern "C" fn nested_main(arg: *mut c_void) -> c_int {
    let shared = arg.cast::<Shared>();
    // SAFETY: `arg` is the `Shared` of `spawn`, alive while both wait.
    let prepared = unsafe { (*shared).prepared };
    let Err(failure) = run_child(prepared);
    // SAFETY: as above; read once both have let go.
    unsafe {
        ptr::write_volatile(ptr::addr_of_mut!((*shared).failure), Some(failure));
        libc::_exit(127)
    }
}

/// This thread's errno (in the child: the suspended parent thread's).
fn errno() -> c_int {
    // SAFETY: __errno_location always returns a valid pointer.
    unsafe { *libc::__errno_location() }
}

/// `Err` with the current errno when a call returned -1.
fn check(step: &'static str, ret: libc::c_long) -> Result<(), Failure> {
    if ret == -1 {
        Err((step, errno()))
    } else {
        Ok(())
    }
}

const OPEN_STEPS: [&str; 3] = ["open stdin", "open stdout", "open stderr"];
const DUP_STEPS: [&str; 3] = ["dup2 stdin", "dup2 stdout", "dup2 stderr"];

/// The steps of the child in order; returns only on failure. Only
/// async-signal-safe calls, no allocation, nothing that can panic.
fn run_child(p: &Prepared) -> Result<std::convert::Infallible, Failure> {
    // Every call below is a system call on numbers or on pointers into
    // `p`, which outlives the child's use of it; none of them allocates.
    if p.session_leader {
        // SAFETY: setsid takes no pointer and does not allocate.
        check("setsid", unsafe { libc::setsid() }.into())?;
    } else {
        // SAFETY: setpgid takes no pointer and does not allocate.
        check("setpgid", unsafe { libc::setpgid(0, 0) }.into())?;
    }
    reset_signals(p.changed_signals)?;
    set_ids(p)?;
    // SAFETY: umask takes no pointer and cannot fail.
    unsafe { libc::umask(p.umask) };
    // SAFETY: `p.cwd` is a NUL-terminated string that outlives the call.
    check("chdir", unsafe { libc::chdir(p.cwd.as_ptr()) }.into())?;
    for (target, ((stdio, open), dup)) in (0..).zip(p.stdio.iter().zip(OPEN_STEPS).zip(DUP_STEPS)) {
        let mut fd = open_stdio(stdio);
        if fd == -1 {
            // A log file that cannot be opened any more (its folder removed,
            // its permissions changed, a FIFO put in its place) must not
            // keep the service down.
            // SAFETY: a static NUL-terminated path; open does not allocate.
            fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
        check(open, fd.into())?;
        let ret = if fd == target {
            // SAFETY: fcntl on a descriptor number; no pointer.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
        } else {
            // SAFETY: dup2 on descriptor numbers; no pointer.
            unsafe { libc::dup2(fd, target) }
        };
        check(dup, ret.into())?;
    }
    close_on_exec_from_3()?;
    // SAFETY: `p` holds the NUL-terminated strings and the NULL-terminated pointer arrays, and outlives the call.
    unsafe { libc::execve(p.exe.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr()) };
    Err(("execve", errno()))
}

/// Opens a standard descriptor's file without ever waiting: without
/// O_NONBLOCK a FIFO put in place of a log file (by whoever owns its
/// folder) would block here until a peer opens it. Only a regular file or
/// a character device is kept, in blocking mode as the program expects;
/// anything else is closed and -1 returned.
fn open_stdio(stdio: &StdioOpen) -> c_int {
    // SAFETY: system calls on a path that outlives them and a local stat buffer.
    unsafe {
        let fd = libc::open(stdio.path.as_ptr(), stdio.flags | libc::O_NONBLOCK, 0o644);
        if fd == -1 {
            return -1;
        }
        let mut stat: libc::stat = std::mem::zeroed();
        let kind = if libc::fstat(fd, &mut stat) == 0 {
            stat.st_mode & libc::S_IFMT
        } else {
            0
        };
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let usable = matches!(kind, libc::S_IFREG | libc::S_IFCHR)
            && flags != -1
            && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) != -1;
        if !usable {
            libc::close(fd);
            return -1;
        }
        fd
    }
}

/// Groups, then gid, then uid — real, effective and saved — with raw system
/// calls: glibc's wrappers would ask the parent's other threads to follow.
fn set_ids(p: &Prepared) -> Result<(), Failure> {
    // SAFETY: system calls with integer arguments and a pointer to
    // `p.groups`, which outlives the call.
    unsafe {
        // Arguments go through C varargs: widen them to a full register.
        let ret = libc::syscall(
            libc::SYS_setgroups,
            p.groups.len() as libc::c_long,
            p.groups.as_ptr(),
        );
        if !(ret == -1 && errno() == libc::EPERM && p.groups_already_set) {
            check("setgroups", ret)?;
        }
        let (uid, gid) = (libc::c_long::from(p.uid), libc::c_long::from(p.gid));
        check("setgid", libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        check("setuid", libc::syscall(libc::SYS_setresuid, uid, uid, uid))
    }
}

/// Marks every descriptor from 3 up close-on-exec, so none of armourd's
/// leaks into the new program. `CLOSE_RANGE_CLOEXEC` needs Linux 5.11; older
/// kernels get a loop up to the descriptor limit.
fn close_on_exec_from_3() -> Result<(), Failure> {
    // SAFETY: system calls with integer arguments and a pointer to a local.
    unsafe {
        let (first, last) = (3 as libc::c_ulong, libc::c_ulong::from(u32::MAX));
        let flags = libc::c_ulong::from(libc::CLOSE_RANGE_CLOEXEC);
        if libc::syscall(libc::SYS_close_range, first, last, flags) == 0 {
            return Ok(());
        }
        if !matches!(errno(), libc::ENOSYS | libc::EINVAL) {
            return Err(("close_range", errno()));
        }
        let mut limit: libc::rlimit = std::mem::zeroed();
        check(
            "getrlimit",
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit).into(),
        )?;
        // At most the kernel's default `fs.nr_open`: an unlimited limit would
        // take billions of calls.
        let max = c_int::try_from(limit.rlim_cur.min(1 << 20)).unwrap_or(1 << 20);
        for fd in 3..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        Ok(())
    }
}

mod signals;
#[cfg(test)]
mod tests;
