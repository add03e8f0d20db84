//! The eBPF backend: loads `armourd-ebpf` (raw tracepoints on
//! `sched_process_{exec,fork,exit}`), hands it the running kernel's offsets,
//! and reads its ring buffer through tokio's `AsyncFd`.
//!
//! Needs Linux 5.8+ (ring buffer) with BTF, and CAP_BPF + CAP_PERFMON (or root).
//!
//! The kernel reports a process's end only if the map of watched pids held
//! it when its last thread passed `sched_process_exit`. A watch that user
//! space begins (an adoption, an exec of a script, a request) may come
//! later than that: the process may have been killed as it was found. So
//! each watch looks at the process once the map holds it; one whose every
//! thread has entered `do_exit` is reported ended, with its zombie's wait
//! status, unless its own record comes (it passed the tracepoint after the
//! map held it).
//!
//! Watched pids live in two maps, root's and everyone else's (by the real
//! uid, [`PidClass`]): a user who forks or watches thousands of processes
//! fills only the second. A watch that no map can hold fails with
//! [`FilterError::Full`]. What the kernel half could not do (a full map or
//! ring buffer, a failed read) it counts per CPU, and logs through aya-log,
//! whose records are read here too.

use std::{
    ffi::OsStr,
    io,
    os::unix::ffi::OsStrExt,
    time::{Duration, Instant},
};

use armourd_common::{
    EventKind, ExecRecord, ExitRecord, Failure, FileKey, ForkRecord, Header, PidClass,
    SpawnedRecord, EXEC_INTERPRETER, FAILURE_KINDS, FILE_INTERPRETER, FILE_WATCHED,
    MAX_WATCHED_PIDS,
};
use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{raw_trace_point::RawTracePointLink, ProgramError, RawTracePoint},
    EbpfLoader,
};
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

use super::{Event, ExecEvent, FileMark, FilterError};
use crate::{
    btf,
    launch::split_nul,
    procfs::{self, Ending},
    status::ExitStatus,
};

#[cfg(ebpf_object)]
static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/armourd-ebpf.o"
)));
#[cfg(not(ebpf_object))]
static OBJECT: Option<&[u8]> = None;

/// How often a process found ending is looked at again until it has ended.
const ENDING_POLL: Duration = Duration::from_millis(1);
/// How long a process may take to end (a thread stuck in `do_exit`) before
/// it counts as ended anyway.
const ENDING_MAX: Duration = Duration::from_secs(1);

const PROGRAMS: [&str; 3] = [
    "sched_process_exit",
    "sched_process_fork",
    "sched_process_exec",
];

/// Bytes of the ring buffer of the programs' log (aya-log's default is 128
/// KiB; mapped here, it would add that twice to the resident set). Logs
/// are rare and short (some 200 bytes each).
const LOG_BYTES: u32 = 16 * 1024;

/// The maps of watched pids, indexed by [`PidClass`].
const PID_MAPS: [&str; 2] = ["ROOT_PIDS", "USER_PIDS"];

/// Why the eBPF backend cannot run.
#[derive(thiserror::Error, Debug)]
pub enum EbpfError {
    #[error("this armourd was built without its eBPF object (build it with `cargo xtask build`)")]
    NotBuiltIn,
    #[error(
        "the kernel has no BTF at {} (needs CONFIG_DEBUG_INFO_BTF)",
        btf::VMLINUX
    )]
    NoBtf,
    #[error("armourd lacks {0} (run it as root, or grant CAP_BPF and CAP_PERFMON)")]
    MissingCapability(&'static str),
    #[error(transparent)]
    Offsets(#[from] btf::BtfError),
    #[error("cannot load the eBPF object (needs Linux 5.8+ with ring buffers, and CAP_BPF + CAP_PERFMON or root)")]
    Load(#[source] aya::EbpfError),
    #[error("the thread loading the eBPF object panicked (a bug in armourd: please report it)")]
    LoaderPanicked,
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("the kernel rejected program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot poll the ring buffer")]
    Poll(#[source] io::Error),
    #[error("cannot read the log of the eBPF programs")]
    Log(#[source] aya_log::Error),
}

/// A process whose watch began as it was ending.
#[derive(Clone, Copy, Debug)]
struct Late {
    pid: u32,
    start: Option<u64>,
    since: Instant,
}

/// The loaded programs and the maps armourd talks to.
pub struct EbpfBackend {
    /// Owns the programs and their links: dropping it detaches them.
    /// Keep the programs attached; dropping them detaches them.
    _links: Vec<RawTracePointLink>,
    ring: AsyncFd<RingBuf<MapData>>,
    /// What the programs log (rarely: failures), handed to `log`.
    log: AsyncFd<EbpfLogger<&'static dyn log::Log>>,
    /// Indexed by [`PidClass`].
    pids: [HashMap<MapData, u32, u32>; 2],
    files: HashMap<MapData, FileKey, u32>,
    failures: PerCpuArray<MapData, u64>,
    /// The totals of [`Self::failures`] already reported, by [`Failure`].
    failures_seen: [u64; FAILURE_KINDS as usize],
    ns_per_tick: u64,
    /// Watched as they were ending: reported ended unless the kernel does.
    late: Vec<Late>,
}

impl EbpfBackend {
    /// Loads and attaches the programs. Must run inside the tokio runtime.
    pub fn load() -> Result<Self, EbpfError> {
        let object = OBJECT.ok_or(EbpfError::NotBuiltIn)?;
        if !std::path::Path::new(btf::VMLINUX).exists() {
            return Err(EbpfError::NoBtf);
        }
        check_capabilities()?;
        let offsets = btf::kernel_offsets()?;
        // aya's loader parses the kernel's BTF (some 20 MiB) even though
        // these programs need none of it. Loading on a thread of its own
        // leaves that in the allocator's arena of that thread, to be given
        // back whole, not strewn among what the daemon keeps.
        let Loaded {
            links,
            mut maps,
            log,
        } = std::thread::scope(|scope| {
            let loading = scope.spawn(|| load_object(object, &offsets));
            loading.join().unwrap_or(Err(EbpfError::LoaderPanicked))
        })?;
        let mut take_map = |name| take_map(&mut maps, name);
        let ring = RingBuf::try_from(take_map("EVENTS")?).map_err(|source| EbpfError::Map {
            map: "EVENTS",
            source,
        })?;
        let mut pid_map = |map| {
            HashMap::try_from(take_map(map)?).map_err(|source| EbpfError::Map { map, source })
        };
        let pids = [pid_map(PID_MAPS[0])?, pid_map(PID_MAPS[1])?];
        let files =
            HashMap::try_from(take_map("WATCHED_FILES")?).map_err(|source| EbpfError::Map {
                map: "WATCHED_FILES",
                source,
            })?;
        let failures =
            PerCpuArray::try_from(take_map("FAILURES")?).map_err(|source| EbpfError::Map {
                map: "FAILURES",
                source,
            })?;
        Ok(Self {
            _links: links,
            // SAFETY: the AsyncFd owns the ring buffer, which owns the map descriptor.
            ring: unsafe { AsyncFd::register(ring) }.map_err(|e| EbpfError::Poll(e.into()))?,
            // SAFETY: as above, for the log's ring buffer.
            log: unsafe { AsyncFd::register(log) }.map_err(|e| EbpfError::Poll(e.into()))?,
            pids,
            files,
            failures,
            failures_seen: [0; FAILURE_KINDS as usize],
            ns_per_tick: 1_000_000_000 / procfs::clock_ticks_per_second(),
            late: Vec::new(),
        })
    }

    /// Waits for records and appends their events to `out`.
    pub async fn read(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        let before = out.len();
        loop {
            // Looked at before the records are read: the kernel writes the
            // record of an end before the process turns into a zombie.
            let endings: Vec<Ending> = (self.late.iter())
                .map(|late| procfs::ending(late.pid, late.start))
                .collect();
            let ns_per_tick = self.ns_per_tick;
            let ring = self.ring.get_mut();
            while let Some(item) = ring.next() {
                match decode(&item, ns_per_tick) {
                    Some(event) => out.push(event),
                    None => log::warn!(
                        "ignored a malformed eBPF record of {} bytes (kernel half and daemon out of step?)",
                        item.len()
                    ),
                }
            }
            let late = std::mem::take(&mut self.late);
            let (late, ended) = settle(late, endings, &out[before..], Instant::now());
            self.late = late;
            out.extend(ended);
            let totals = self.failure_totals();
            out.extend(failure_events(&self.failures_seen, &totals));
            self.failures_seen = totals;
            if out.len() > before {
                return Ok(());
            }
            // Every record was read: the next one wakes the ring up.
            if self.late.is_empty() {
                self.wait().await?;
            } else if let Ok(woken) = tokio::time::timeout(ENDING_POLL, self.wait()).await {
                woken?;
            }
        }
    }

    /// Waits until the ring buffer has records; hands what the programs
    /// logged meanwhile to `log`.
    async fn wait(&mut self) -> io::Result<()> {
        loop {
            tokio::select! {
                biased;
                ready = self.ring.readable_mut() => {
                    ready?.clear_ready();
                    return Ok(());
                }
                ready = self.log.readable_mut() => {
                    let mut guard = ready?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        }
    }

    /// The totals of the failure counters, summed over the CPUs; what was
    /// seen already for a counter that cannot be read.
    fn failure_totals(&self) -> [u64; FAILURE_KINDS as usize] {
        let mut totals = self.failures_seen;
        for failure in Failure::ALL {
            if let Ok(per_cpu) = self.failures.get(&(failure as u32), 0) {
                totals[failure as usize] = per_cpu.iter().sum();
            }
        }
        totals
    }

    /// Whether either map holds `pid`.
    fn holds(&self, pid: u32) -> bool {
        self.pids.iter().any(|map| map.get(&pid, 0).is_ok())
    }

    /// Reports events about `pid` from now on. One the kernel holds already
    /// (a fork, an exec of a watched file) stays in the map it is in;
    /// another goes into the map of its real uid's class.
    pub fn watch(&mut self, pid: u32) -> Result<(), FilterError> {
        if !self.holds(pid) {
            // Gone: it is looked at below, as the least privileged.
            let uid = procfs::status(pid).map_or(u32::MAX, |status| status.uid);
            let class = PidClass::of_uid(uid);
            let map = PID_MAPS[class as usize];
            match self.pids[class as usize].insert(pid, 0, 0) {
                Ok(()) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    return Err(FilterError::Full {
                        pid,
                        class,
                        capacity: MAX_WATCHED_PIDS,
                    })
                }
                Err(source) => return Err(FilterError::Map { map, source }),
            }
        }
        // Looked at once the map holds it: a thread not yet in `do_exit`
        // will pass the tracepoint with the map holding the process.
        let start = procfs::stat(pid).ok().map(|stat| stat.start_ticks);
        if procfs::ending(pid, start) != Ending::Running {
            let since = Instant::now();
            self.late.retain(|late| late.pid != pid);
            self.late.push(Late { pid, start, since });
        }
        Ok(())
    }

    /// Stops reporting events about `pid`.
    pub fn unwatch(&mut self, pid: u32) {
        // Absent already when the kernel removed it at its exit.
        for map in &mut self.pids {
            let _ = map.remove(&pid);
        }
        self.late.retain(|late| late.pid != pid);
    }

    /// Marks executions of `file` for reporting.
    pub fn set_file(&mut self, file: FileKey, mark: FileMark) -> Result<(), FilterError> {
        let value = match mark {
            FileMark::Watched => FILE_WATCHED,
            FileMark::Interpreter => FILE_INTERPRETER,
        };
        (self.files.insert(file, value, 0)).map_err(|source| FilterError::Map {
            map: "WATCHED_FILES",
            source,
        })
    }

    /// Stops reporting executions of `file`.
    pub fn remove_file(&mut self, file: FileKey) {
        let _ = self.files.remove(&file);
    }
}

/// The events that the growth of the failure counters from `seen` to
/// `totals` calls for: records lost (a full ring buffer, a failed read) and
/// processes the kernel could not hold (a full map).
fn failure_events(seen: &[u64], totals: &[u64]) -> Vec<Event> {
    let (mut lost, mut unheld) = (0, 0);
    for failure in Failure::ALL {
        let i = failure as usize;
        let new = totals[i].saturating_sub(seen[i]);
        if failure.loses_records() {
            lost += new;
        } else {
            unheld += new;
        }
    }
    let mut events = Vec::new();
    if lost > 0 {
        events.push(Event::Lost { count: lost });
    }
    if unheld > 0 {
        events.push(Event::Unheld { count: unheld });
    }
    events
}

/// What became of the processes found ending, given how far each is in
/// ending now (`endings`, read before the records in `recorded`): those
/// whose end the kernel recorded after all are dropped, those ended are
/// reported (one stuck in `do_exit` for [`ENDING_MAX`] too), and those
/// still ending are kept.
fn settle(
    late: Vec<Late>,
    endings: Vec<Ending>,
    recorded: &[Event],
    now: Instant,
) -> (Vec<Late>, Vec<Event>) {
    let (mut kept, mut ended) = (Vec::new(), Vec::new());
    for (late, ending) in late.into_iter().zip(endings) {
        let recorded = (recorded.iter())
            .any(|event| matches!(event, Event::Exit { pid, .. } if *pid == late.pid));
        let status = match ending {
            // A thread runs (it was in an exec): the kernel will report it.
            _ if recorded => continue,
            Ending::Running => continue,
            Ending::Ended(status) => {
                status.map_or(ExitStatus::Unknown, ExitStatus::from_wait_status)
            }
            Ending::Gone => ExitStatus::Unknown,
            Ending::Exiting if now.duration_since(late.since) < ENDING_MAX => {
                kept.push(late);
                continue;
            }
            Ending::Exiting => ExitStatus::Unknown,
        };
        log::debug!("pid {} ended as its watch began: {status}", late.pid);
        ended.push(Event::Exit {
            pid: late.pid,
            start: late.start,
            status,
            ktime_ns: None,
        });
    }
    (kept, ended)
}

/// CAP_BPF and CAP_PERFMON (Linux 5.8+), or CAP_SYS_ADMIN for both.
fn check_capabilities() -> Result<(), EbpfError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(effective) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return Ok(()); // unknown: let the kernel decide
    };
    let has = |cap: u32| effective & (1 << cap) != 0;
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Err(EbpfError::MissingCapability("CAP_BPF"));
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        return Err(EbpfError::MissingCapability("CAP_PERFMON"));
    }
    Ok(())
}

/// What armourd keeps of the loaded object.
struct Loaded {
    links: Vec<RawTracePointLink>,
    maps: Vec<(String, aya::maps::Map)>,
    log: EbpfLogger<&'static dyn log::Log>,
}

/// Loads `object` with `offsets` and attaches its programs.
fn load_object(object: &[u8], offsets: &armourd_common::Offsets) -> Result<Loaded, EbpfError> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let log_bytes = u32::try_from(page).map_or(LOG_BYTES, |page| LOG_BYTES.max(page));
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global("OFFSETS", offsets, true)
        .override_global("DAEMON_TGID", &std::process::id(), true)
        .map_max_entries("AYA_LOGS", log_bytes)
        .load(object)
        .map_err(EbpfError::Load)?;
    let mut links = Vec::new();
    for program in PROGRAMS {
        let tracepoint: &mut RawTracePoint = ebpf
            .program_mut(program)
            .ok_or(EbpfError::Missing(program))?
            .try_into()
            .map_err(|source| EbpfError::Program { program, source })?;
        let link = tracepoint
            .load()
            .and_then(|()| tracepoint.attach(program))
            .and_then(|id| tracepoint.take_link(id))
            .map_err(|source| EbpfError::Program { program, source })?;
        links.push(link);
    }
    let log = EbpfLogger::init(&mut ebpf).map_err(EbpfError::Log)?;
    // The links hold the programs; the rest of the object goes.
    let maps = ebpf
        .maps_mut()
        .map(|(name, _)| name.to_owned())
        .collect::<Vec<_>>();
    let maps = maps
        .into_iter()
        .filter_map(|name| Some((name.clone(), ebpf.take_map(&name)?)))
        .collect();
    Ok(Loaded { links, maps, log })
}

fn take_map(
    maps: &mut Vec<(String, aya::maps::Map)>,
    name: &'static str,
) -> Result<aya::maps::Map, EbpfError> {
    let index = (maps.iter().position(|(n, _)| n == name)).ok_or(EbpfError::Missing(name))?;
    Ok(maps.swap_remove(index).1)
}

/// Reads a `T` from the start of `bytes`, if it is long enough.
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: long enough, and T is a repr(C) record of plain integers.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Turns one ring buffer record into an event.
pub(crate) fn decode(bytes: &[u8], ns_per_tick: u64) -> Option<Event> {
    let header: Header = read(bytes)?;
    let start = Some(header.start_boottime_ns / ns_per_tick);
    Some(match EventKind::from_raw(header.kind)? {
        EventKind::Exit => {
            let record: ExitRecord = read(bytes)?;
            Event::Exit {
                pid: header.tgid,
                start,
                status: ExitStatus::from_wait_status(record.status),
                ktime_ns: Some(header.ktime_ns),
            }
        }
        EventKind::Fork => {
            let record: ForkRecord = read(bytes)?;
            Event::Fork {
                parent: record.parent_tgid,
                child: header.tgid,
                start,
            }
        }
        EventKind::Exec => Event::Exec(decode_exec(bytes, start)?),
        EventKind::Spawned => {
            // What armourd started: the spawner has its command line.
            let record: SpawnedRecord = read(bytes)?;
            Event::Exec(ExecEvent {
                pid: header.tgid,
                start,
                file: Some(record.file),
                uid: Some(record.uid),
                gid: Some(record.gid),
                ktime_ns: Some(header.ktime_ns),
                ..ExecEvent::default()
            })
        }
    })
}

fn decode_exec(bytes: &[u8], start: Option<u64>) -> Option<ExecEvent> {
    let aligned = bytes.as_ptr().align_offset(align_of::<ExecRecord>()) == 0;
    if bytes.len() < size_of::<ExecRecord>() || !aligned {
        return None;
    }
    // SAFETY: checked length and alignment (ring buffer records are
    // 8-byte aligned); every bit pattern is a valid ExecRecord.
    let record = unsafe { &*bytes.as_ptr().cast::<ExecRecord>() };
    let area = |buf: &[u8], len: u32| buf.get(..len as usize).map(split_nul);
    // A truncated area is read from /proc instead.
    let whole = |flag: u32| record.flags & flag == 0;
    Some(ExecEvent {
        pid: record.header.tgid,
        start,
        file: Some(record.file),
        argv: area(&record.args, record.args_len)
            .filter(|_| whole(armourd_common::EXEC_ARGS_TRUNCATED)),
        env: area(&record.env, record.env_len)
            .filter(|_| whole(armourd_common::EXEC_ENV_TRUNCATED)),
        uid: Some(record.uid),
        gid: Some(record.gid),
        filename: (record.flags & EXEC_INTERPRETER != 0)
            .then(|| record.filename.get(..record.filename_len as usize))
            .flatten()
            .map(|name| OsStr::from_bytes(name).to_owned()),
        ktime_ns: Some(record.header.ktime_ns),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn late(pid: u32, since: Instant) -> Late {
        Late {
            pid,
            start: Some(5),
            since,
        }
    }

    #[test]
    fn processes_found_ending_are_reported_once_ended_unless_recorded() {
        let now = Instant::now();
        let killed = 9; // wait status of SIGKILL
        let lates = vec![
            late(1, now),
            late(2, now),
            late(3, now),
            late(4, now),
            late(5, now),
        ];
        let endings = vec![
            Ending::Ended(Some(killed)),
            Ending::Gone,
            Ending::Exiting,
            Ending::Ended(Some(killed)),
            Ending::Running,
        ];
        let recorded = [Event::Exit {
            pid: 4,
            start: Some(5),
            status: ExitStatus::from_wait_status(killed),
            ktime_ns: Some(1),
        }];
        let (kept, ended) = settle(lates, endings, &recorded, now);
        assert_eq!(kept.iter().map(|l| l.pid).collect::<Vec<_>>(), [3]);
        let sigkill = ExitStatus::from_wait_status(killed);
        let exit = |pid, status| Event::Exit {
            pid,
            start: Some(5),
            status,
            ktime_ns: None,
        };
        assert_eq!(ended, [exit(1, sigkill), exit(2, ExitStatus::Unknown)]);
    }

    #[test]
    fn full_maps_leave_processes_unheld_and_other_failures_lose_records() {
        let seen = [1, 0, 0, 5];
        let totals = [3, 1, 2, 9]; // ring full, read failed, root's map, users' map
        assert_eq!(
            failure_events(&seen, &totals),
            [Event::Lost { count: 3 }, Event::Unheld { count: 6 }]
        );
        assert_eq!(failure_events(&totals, &totals), []);
        // A counter read as lower than before (a CPU gone) reports nothing.
        assert_eq!(failure_events(&[0, 0, 0, 7], &[0, 0, 0, 2]), []);
    }

    #[test]
    fn a_process_stuck_ending_counts_as_ended_after_a_while() {
        let then = Instant::now();
        let (kept, ended) = settle(
            vec![late(7, then)],
            vec![Ending::Exiting],
            &[],
            then + ENDING_MAX,
        );
        assert!(kept.is_empty());
        assert!(matches!(
            ended[..],
            [Event::Exit {
                pid: 7,
                status: ExitStatus::Unknown,
                ..
            }]
        ));
    }

    #[test]
    fn a_restarts_short_record_is_its_exec_without_a_command_line() {
        let record = SpawnedRecord {
            header: Header {
                kind: EventKind::Spawned as u32,
                tgid: 77,
                start_boottime_ns: 5_000_000_000,
                ktime_ns: 9,
            },
            file: FileKey::new(3, 8, 1),
            uid: 0,
            gid: 0,
        };
        // SAFETY: a repr(C) record of integers, viewed as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&record as *const SpawnedRecord).cast::<u8>(),
                size_of::<SpawnedRecord>(),
            )
        };
        let Some(Event::Exec(exec)) = decode(bytes, 10_000_000) else {
            panic!("not an exec");
        };
        assert_eq!(
            (exec.pid, exec.start, exec.ktime_ns),
            (77, Some(500), Some(9))
        );
        assert_eq!(exec.file, Some(FileKey::new(3, 8, 1)));
        assert!(exec.argv.is_none() && exec.env.is_none());
    }
}
