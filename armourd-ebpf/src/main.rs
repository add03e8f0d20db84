//! armourd's kernel half: raw tracepoints on `sched_process_exec`,
//! `sched_process_fork` and `sched_process_exit` that report, through one
//! ring buffer, only what concerns watched processes and watched executables.
//!
//! Needs Linux 5.8+ (raw tracepoints: 4.17, ring buffer: 5.8). Raw
//! tracepoints attach through `bpf_raw_tracepoint_open`, so tracefs need not
//! be mounted, and by name, so the loader needs no kernel BTF: structure
//! offsets come from user space in [`OFFSETS`] and every kernel structure is
//! read with `bpf_probe_read_kernel`. The tracepoint signatures are in
//! <https://github.com/torvalds/linux/blob/master/include/trace/events/sched.h>.
//!
//! Watched processes are kept in two maps by the class of their real uid
//! ([`PidClass`]): root's and everyone else's, so that no user can fill the
//! room root's processes need. Whatever goes wrong about a watched process
//! (a full map, a full ring buffer, a failed read) is counted in
//! [`FAILURES`] for user space to reconcile, and logged (aya-log) rarely;
//! nothing on the common path logs.
#![no_std]
#![no_main]

use armourd_common::{
    EventKind, ExecRecord, ExitRecord, Failure, FileKey, ForkRecord, Header, Offsets, PidClass,
    SpawnedRecord,
    ARGS_MAX, ENV_MAX, EXEC_ARGS_TRUNCATED, EXEC_ENV_TRUNCATED, EXEC_INTERPRETER, EXEC_WAS_WATCHED,
    EXEC_WATCHED_FILE, FAILURE_KINDS, FILE_INTERPRETER, FILE_WATCHED, MAX_WATCHED_FILES,
    MAX_WATCHED_PIDS, RING_BUF_BYTES, SIGNAL_GROUP_EXIT,
};
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;

// `read_user` masks lengths with `N - 1`.
const _: () = assert!(ARGS_MAX.is_power_of_two() && ENV_MAX.is_power_of_two());

/// Member offsets of the running kernel, set by the loader.
#[unsafe(no_mangle)]
// SAFETY: Offsets is integers only, so all zeroes is a valid value (the
// loader overrides it before any program runs).
static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

/// armourd's process id, set by the loader: the execs of its children (its
/// restarts) get a short record.
#[unsafe(no_mangle)]
static DAEMON_TGID: u32 = 0;

/// Thread-group ids of watched processes of [`PidClass::Root`] (value unused).
#[map]
static ROOT_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_WATCHED_PIDS, 0);

/// Thread-group ids of watched processes of [`PidClass::User`]: what any
/// user can fill by forking, kept apart from root's.
#[map]
static USER_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_WATCHED_PIDS, 0);

/// Watched executables and interpreters of watched scripts.
#[map]
static WATCHED_FILES: HashMap<FileKey, u32> = HashMap::with_max_entries(MAX_WATCHED_FILES, 0);

/// Records for user space.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

/// How often each [`Failure`] happened, per CPU.
#[map]
static FAILURES: PerCpuArray<u64> = PerCpuArray::with_max_entries(FAILURE_KINDS, 0);

macro_rules! off {
    ($field:ident) => {
        // SAFETY: a plain read of a global the loader filled in.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(OFFSETS.$field)) as usize }
    };
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read<T>(base: *const u8, offset: usize) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address itself.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T) }
}

/// Whether either map holds `tgid`.
#[inline(always)]
fn watched(tgid: u32) -> bool {
    ROOT_PIDS.get_ptr(&tgid).is_some() || USER_PIDS.get_ptr(&tgid).is_some()
}

/// Puts `tgid` into the map of `class`; fails when that map is full.
#[inline(always)]
fn hold(tgid: u32, class: PidClass) -> Result<(), i32> {
    match class {
        PidClass::Root => ROOT_PIDS.insert(&tgid, &0, BPF_ANY as u64),
        PidClass::User => USER_PIDS.insert(&tgid, &0, BPF_ANY as u64),
    }
}

/// Takes `tgid` out of whichever map holds it; false if none did.
#[inline(always)]
fn release(tgid: u32) -> bool {
    ROOT_PIDS.remove(&tgid).is_ok() || USER_PIDS.remove(&tgid).is_ok()
}

/// The real uid of `task`.
#[inline(always)]
fn real_uid(task: *const u8) -> Result<u32, i32> {
    let cred: *const u8 = read(task, off!(task_real_cred))?;
    read(cred, off!(cred_uid))
}

fn real_gid(task: *const u8) -> Result<u32, i32> {
    let cred: *const u8 = read(task, off!(task_real_cred))?;
    read(cred, off!(cred_gid))
}

/// Counts `failure` about `pid` for user space, which reconciles. Logs it
/// the 1st, 2nd, 4th, 8th… time on this CPU only: a user who can cause one
/// at will (a full map) cannot flood the log.
#[inline(always)]
fn fail(ctx: &RawTracePointContext, failure: Failure, pid: u32) {
    let Some(counter) = FAILURES.get_ptr_mut(failure as u32) else {
        return;
    };
    // SAFETY: a per-CPU slot, so nothing else writes it concurrently.
    let count = unsafe {
        *counter += 1;
        *counter
    };
    if count & (count - 1) != 0 {
        return;
    }
    match failure {
        Failure::RingFull => warn!(
            ctx,
            "ring buffer full: a record about pid {} is lost ({} on this CPU so far)", pid, count
        ),
        Failure::ReadFailed => warn!(
            ctx,
            "a kernel read failed: a record about pid {} is lost ({} on this CPU so far)",
            pid,
            count
        ),
        Failure::RootMapFull => warn!(
            ctx,
            "the map of root's watched processes is full: pid {} is not watched ({} on this CPU so far)",
            pid,
            count
        ),
        Failure::UserMapFull => warn!(
            ctx,
            "the map of unprivileged watched processes is full: pid {} is not watched ({} on this CPU so far)",
            pid,
            count
        ),
    }
}

fn header(kind: EventKind, tgid: u32, start_boottime_ns: u64) -> Header {
    Header {
        kind: kind as u32,
        tgid,
        start_boottime_ns,
        // SAFETY: a helper without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_sched_process_exit(&ctx);
    0
}

/// `sched_process_exit(struct task_struct *p, ...)` runs for every ending
/// thread; the one that finds `signal->live` at zero reports the process.
/// Everything the record needs is read before the map changes, so that a
/// failed read is counted, never silently lost.
fn try_sched_process_exit(ctx: &RawTracePointContext) -> Result<(), i32> {
    let task: *const u8 = ctx.arg(0);
    let tgid: u32 = read(task, off!(task_tgid))?;
    if !watched(tgid) {
        return Ok(());
    }
    let signal: Result<*const u8, i32> = read(task, off!(task_signal));
    let live: Result<i32, i32> = signal.and_then(|signal| read(signal, off!(signal_live)));
    let (Ok(signal), Ok(live)) = (signal, live) else {
        // Whether this was the last thread is unknown; it stays in the map
        // until user space, reconciling, finds the process gone.
        fail(ctx, Failure::ReadFailed, tgid);
        return Ok(());
    };
    if live != 0 {
        return Ok(());
    }
    let record = exit_record(task, signal, tgid);
    // Removal is atomic: of threads ending at once, exactly one reports.
    if !release(tgid) {
        return Ok(());
    }
    match record {
        Ok(record) => {
            if EVENTS.output::<ExitRecord>(&record, 0).is_err() {
                fail(ctx, Failure::RingFull, tgid);
            }
        }
        Err(_) => fail(ctx, Failure::ReadFailed, tgid),
    }
    Ok(())
}

#[inline(always)]
fn exit_record(task: *const u8, signal: *const u8, tgid: u32) -> Result<ExitRecord, i32> {
    let leader: *const u8 = read(task, off!(task_group_leader))?;
    let flags: u32 = read(signal, off!(signal_flags))?;
    let status: i32 = if flags & SIGNAL_GROUP_EXIT != 0 {
        read(signal, off!(signal_group_exit_code))?
    } else {
        read(leader, off!(task_exit_code))?
    };
    let start: u64 = read(leader, off!(task_start_boottime))?;
    Ok(ExitRecord {
        header: header(EventKind::Exit, tgid, start),
        status: status as u32,
        _pad: 0,
    })
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let _ = try_sched_process_fork(&ctx);
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`
/// runs before the child first runs, so the child is watched from its start,
/// in the map of its real uid's class (its parent's, copied at fork).
fn try_sched_process_fork(ctx: &RawTracePointContext) -> Result<(), i32> {
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    let parent_tgid: u32 = read(parent, off!(task_tgid))?;
    if !watched(parent_tgid) {
        return Ok(());
    }
    let (record, class) = match fork_record(child, parent_tgid) {
        Ok(Some(forked)) => forked,
        Ok(None) => return Ok(()), // a new thread, not a new process
        Err(_) => {
            fail(ctx, Failure::ReadFailed, parent_tgid);
            return Ok(());
        }
    };
    let child_tgid = record.header.tgid;
    // Reported even when its map is full: user space then fails to hold
    // it too, and knows it is not watched.
    if hold(child_tgid, class).is_err() {
        fail(ctx, Failure::map_full(class), child_tgid);
    }
    if EVENTS.output::<ForkRecord>(&record, 0).is_err() {
        fail(ctx, Failure::RingFull, child_tgid);
    }
    Ok(())
}

/// The record of a new process and its class; `None` for a new thread.
#[inline(always)]
fn fork_record(child: *const u8, parent_tgid: u32) -> Result<Option<(ForkRecord, PidClass)>, i32> {
    let child_tgid: u32 = read(child, off!(task_tgid))?;
    if child_tgid == parent_tgid {
        return Ok(None);
    }
    let start: u64 = read(child, off!(task_start_boottime))?;
    let uid = real_uid(child)?;
    let record = ForkRecord {
        header: header(EventKind::Fork, child_tgid, start),
        parent_tgid,
        _pad: 0,
    };
    Ok(Some((record, PidClass::of_uid(uid))))
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let _ = try_sched_process_exec(&ctx);
    0
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
/// runs once the new program is mapped, before it runs: its argument and
/// environment areas are intact.
fn try_sched_process_exec(ctx: &RawTracePointContext) -> Result<(), i32> {
    let task: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    let tgid: u32 = read(task, off!(task_tgid))?;
    let Ok(file) = file_key(bprm) else {
        // The file may have been a watched one.
        fail(ctx, Failure::ReadFailed, tgid);
        return Ok(());
    };
    // SAFETY: the value is a plain u32.
    let mark = unsafe { WATCHED_FILES.get(&file) }.copied().unwrap_or(0);
    let was_watched = watched(tgid);
    let mut flags = if was_watched { EXEC_WAS_WATCHED } else { 0 };
    match mark {
        FILE_WATCHED => {
            flags |= EXEC_WATCHED_FILE;
            // One already watched stays in the map it is in.
            if !was_watched {
                match real_uid(task) {
                    Ok(uid) => {
                        let class = PidClass::of_uid(uid);
                        if hold(tgid, class).is_err() {
                            fail(ctx, Failure::map_full(class), tgid);
                        }
                    }
                    // Reported unwatched; user space tries to hold it.
                    Err(_) => fail(ctx, Failure::ReadFailed, tgid),
                }
            }
        }
        FILE_INTERPRETER => flags |= EXEC_INTERPRETER,
        // Still watched: user space, which knows which files are watched
        // (the map may be being refilled), decides and unwatches it.
        _ if was_watched => {}
        _ => return Ok(()),
    }
    if mark == FILE_WATCHED && spawned_by_daemon(task) {
        let record = SpawnedRecord {
            header: header(EventKind::Spawned, tgid, read(task, off!(task_start_boottime))?),
            file,
            uid: real_uid(task)?,
            gid: real_gid(task)?,
        };
        if EVENTS.output::<SpawnedRecord>(&record, 0).is_err() {
            fail(ctx, Failure::RingFull, tgid);
        }
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        fail(ctx, Failure::RingFull, tgid);
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at reserved ring buffer memory of the right size.
    let filled = unsafe { fill_exec(&mut *record, task, bprm, tgid, file, flags) };
    match filled {
        Ok(()) => entry.submit(0),
        Err(_) => {
            entry.discard(0);
            fail(ctx, Failure::ReadFailed, tgid);
        }
    }
    Ok(())
}

/// Whether `task`'s parent is armourd: a restart reaching its program
/// (a restart in another pid namespace too, which armourd's child clones
/// with CLONE_PARENT).
#[inline(always)]
fn spawned_by_daemon(task: *const u8) -> bool {
    // SAFETY: a plain read of a global the loader filled in.
    let daemon = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(DAEMON_TGID)) };
    let parent = read::<*const u8>(task, off!(task_real_parent));
    daemon != 0 && parent.and_then(|p| read::<u32>(p, off!(task_tgid))) == Ok(daemon)
}

fn file_key(bprm: *const u8) -> Result<FileKey, i32> {
    let file: *const u8 = read(bprm, off!(binprm_file))?;
    let inode: *const u8 = read(file, off!(file_inode))?;
    let ino: u64 = read(inode, off!(inode_ino))?;
    let sb: *const u8 = read(inode, off!(inode_sb))?;
    let dev: u32 = read(sb, off!(sb_dev))?;
    Ok(FileKey { ino, dev, _pad: 0 })
}

/// Copies `len` bytes (1 to `N`, a power of two) from the user address
/// `src` to the start of `dst`. The length reaches the helper masked in the
/// register it is passed in, from a value the compiler cannot see through:
/// a bound checked on a copy that was spilled to the stack is lost by the
/// verifier of kernels before 6.3 (5.10 and 6.1 rejected the program with
/// "R2 min value is negative"), and the compiler would drop a mask it can
/// prove redundant.
#[inline(always)]
unsafe fn read_user<const N: usize>(
    src: *const u8,
    dst: &mut [u8; N],
    len: usize,
) -> Result<(), i32> {
    let below = len.wrapping_sub(1);
    // SAFETY: a read of a local.
    let opaque = unsafe { core::ptr::read_volatile(&below) };
    let size = (opaque & (N - 1)) + 1;
    // SAFETY: `dst` holds `N` ≥ `size` bytes; the helper checks `src`.
    let ret =
        unsafe { generated::bpf_probe_read_user(dst.as_mut_ptr().cast(), size as u32, src.cast()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(ret as i32)
    }
}

#[inline(always)]
unsafe fn fill_exec(
    record: &mut ExecRecord,
    task: *const u8,
    bprm: *const u8,
    tgid: u32,
    file: FileKey,
    mut flags: u32,
) -> Result<(), i32> {
    let start: u64 = read(task, off!(task_start_boottime))?;
    record.header = header(EventKind::Exec, tgid, start);
    record.file = file;
    let cred: *const u8 = read(task, off!(task_real_cred))?;
    record.uid = read(cred, off!(cred_uid))?;
    record.gid = read(cred, off!(cred_gid))?;

    let mm: *const u8 = read(task, off!(task_mm))?;
    let arg_start: u64 = read(mm, off!(mm_arg_start))?;
    let arg_end: u64 = read(mm, off!(mm_arg_end))?;
    let mut len = arg_end.wrapping_sub(arg_start) as usize;
    if len > ARGS_MAX {
        len = ARGS_MAX;
        flags |= EXEC_ARGS_TRUNCATED;
    }
    record.args_len = 0;
    if len > 0 && len <= ARGS_MAX {
        // SAFETY: the helper checks the user address.
        unsafe { read_user(arg_start as *const u8, &mut record.args, len)? };
        record.args_len = len as u32;
    }

    let env_start: u64 = read(mm, off!(mm_env_start))?;
    let env_end: u64 = read(mm, off!(mm_env_end))?;
    let mut len = env_end.wrapping_sub(env_start) as usize;
    if len > ENV_MAX {
        len = ENV_MAX;
        flags |= EXEC_ENV_TRUNCATED;
    }
    record.env_len = 0;
    if len > 0 && len <= ENV_MAX {
        // SAFETY: as above.
        unsafe { read_user(env_start as *const u8, &mut record.env, len)? };
        record.env_len = len as u32;
    }

    record.filename_len = 0;
    if flags & EXEC_INTERPRETER != 0 {
        let name: *const u8 = read(bprm, off!(binprm_filename))?;
        // SAFETY: the helper checks the kernel address.
        if let Ok(bytes) = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut record.filename) } {
            record.filename_len = bytes.len() as u32;
        }
    }
    record.flags = flags;
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
