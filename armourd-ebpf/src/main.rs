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
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user_buf,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use armourd_common::{
    EventKind, ExecRecord, ExitRecord, FileKey, ForkRecord, Header, Offsets, ARGS_MAX, ENV_MAX,
    EXEC_ARGS_TRUNCATED, EXEC_ENV_TRUNCATED, EXEC_INTERPRETER, EXEC_WAS_WATCHED,
    EXEC_WATCHED_FILE, FILE_INTERPRETER, FILE_WATCHED, MAX_WATCHED_FILES, MAX_WATCHED_PIDS,
    RING_BUF_BYTES, SIGNAL_GROUP_EXIT,
};

/// Member offsets of the running kernel, set by the loader.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

/// Thread-group ids of watched processes (value unused).
#[map]
static WATCHED_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_WATCHED_PIDS, 0);

/// Watched executables and interpreters of watched scripts.
#[map]
static WATCHED_FILES: HashMap<FileKey, u32> = HashMap::with_max_entries(MAX_WATCHED_FILES, 0);

/// Records for user space.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

/// Records that did not fit into [`EVENTS`], per CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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

fn count_lost() {
    if let Some(counter) = LOST.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, so nothing else writes it concurrently.
        unsafe { *counter += 1 };
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
fn try_sched_process_exit(ctx: &RawTracePointContext) -> Result<(), i32> {
    let task: *const u8 = ctx.arg(0);
    let tgid: u32 = read(task, off!(task_tgid))?;
    if WATCHED_PIDS.get_ptr(&tgid).is_none() {
        return Ok(());
    }
    let signal: *const u8 = read(task, off!(task_signal))?;
    let live: i32 = read(signal, off!(signal_live))?;
    if live != 0 {
        return Ok(());
    }
    // Removal is atomic: of threads ending at once, exactly one reports.
    if WATCHED_PIDS.remove(&tgid).is_err() {
        return Ok(());
    }
    let leader: *const u8 = read(task, off!(task_group_leader))?;
    let flags: u32 = read(signal, off!(signal_flags))?;
    let status: i32 = if flags & SIGNAL_GROUP_EXIT != 0 {
        read(signal, off!(signal_group_exit_code))?
    } else {
        read(leader, off!(task_exit_code))?
    };
    let start: u64 = read(leader, off!(task_start_boottime))?;
    let record = ExitRecord {
        header: header(EventKind::Exit, tgid, start),
        status: status as u32,
        _pad: 0,
    };
    if EVENTS.output::<ExitRecord>(&record, 0).is_err() {
        count_lost();
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let _ = try_sched_process_fork(&ctx);
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`
/// runs before the child first runs, so the child is watched from its start.
fn try_sched_process_fork(ctx: &RawTracePointContext) -> Result<(), i32> {
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    let parent_tgid: u32 = read(parent, off!(task_tgid))?;
    if WATCHED_PIDS.get_ptr(&parent_tgid).is_none() {
        return Ok(());
    }
    let child_tgid: u32 = read(child, off!(task_tgid))?;
    if child_tgid == parent_tgid {
        return Ok(()); // a new thread, not a new process
    }
    let _ = WATCHED_PIDS.insert(&child_tgid, &0, BPF_ANY as u64);
    let start: u64 = read(child, off!(task_start_boottime))?;
    let record = ForkRecord {
        header: header(EventKind::Fork, child_tgid, start),
        parent_tgid,
        _pad: 0,
    };
    if EVENTS.output::<ForkRecord>(&record, 0).is_err() {
        count_lost();
    }
    Ok(())
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
    let file = file_key(bprm)?;
    // SAFETY: the value is a plain u32.
    let mark = unsafe { WATCHED_FILES.get(&file) }.copied().unwrap_or(0);
    let was_watched = WATCHED_PIDS.get_ptr(&tgid).is_some();
    let mut flags = if was_watched { EXEC_WAS_WATCHED } else { 0 };
    match mark {
        FILE_WATCHED => {
            flags |= EXEC_WATCHED_FILE;
            let _ = WATCHED_PIDS.insert(&tgid, &0, BPF_ANY as u64);
        }
        FILE_INTERPRETER => flags |= EXEC_INTERPRETER,
        // Still watched: user space, which knows which files are watched
        // (the map may be being refilled), decides and unwatches it.
        _ if was_watched => {}
        _ => return Ok(()),
    }
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_lost();
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at reserved ring buffer memory of the right size.
    let filled = unsafe { fill_exec(&mut *record, task, bprm, tgid, file, flags) };
    match filled {
        Ok(()) => entry.submit(0),
        Err(_) => {
            entry.discard(0);
            count_lost();
        }
    }
    Ok(())
}

fn file_key(bprm: *const u8) -> Result<FileKey, i32> {
    let file: *const u8 = read(bprm, off!(binprm_file))?;
    let inode: *const u8 = read(file, off!(file_inode))?;
    let ino: u64 = read(inode, off!(inode_ino))?;
    let sb: *const u8 = read(inode, off!(inode_sb))?;
    let dev: u32 = read(sb, off!(sb_dev))?;
    Ok(FileKey { ino, dev, _pad: 0 })
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
        unsafe { bpf_probe_read_user_buf(arg_start as *const u8, &mut record.args[..len])? };
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
        unsafe { bpf_probe_read_user_buf(env_start as *const u8, &mut record.env[..len])? };
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
