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

use std::{
    ffi::OsStr,
    io,
    os::unix::ffi::OsStrExt,
    time::{Duration, Instant},
};

use armourd_common::{
    EventKind, ExecRecord, ExitRecord, FileKey, ForkRecord, Header, EXEC_INTERPRETER,
    FILE_INTERPRETER, FILE_WATCHED,
};
use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{raw_trace_point::RawTracePointLink, ProgramError, RawTracePoint},
    EbpfLoader,
};
use tokio::io::unix::AsyncFd;

use super::{Event, ExecEvent, FileMark};
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
    pids: HashMap<MapData, u32, u32>,
    files: HashMap<MapData, FileKey, u32>,
    lost: PerCpuArray<MapData, u64>,
    lost_seen: u64,
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
        let Loaded { links, mut maps } = std::thread::scope(|scope| {
            let loading = scope.spawn(|| load_object(object, &offsets));
            loading.join().unwrap_or(Err(EbpfError::LoaderPanicked))
        })?;
        let mut take_map = |name| take_map(&mut maps, name);
        let ring = RingBuf::try_from(take_map("EVENTS")?).map_err(|source| EbpfError::Map {
            map: "EVENTS",
            source,
        })?;
        let pids =
            HashMap::try_from(take_map("WATCHED_PIDS")?).map_err(|source| EbpfError::Map {
                map: "WATCHED_PIDS",
                source,
            })?;
        let files =
            HashMap::try_from(take_map("WATCHED_FILES")?).map_err(|source| EbpfError::Map {
                map: "WATCHED_FILES",
                source,
            })?;
        let lost = PerCpuArray::try_from(take_map("LOST")?).map_err(|source| EbpfError::Map {
            map: "LOST",
            source,
        })?;
        Ok(Self {
            _links: links,
            // SAFETY: the AsyncFd owns the ring buffer, which owns the map descriptor.
            ring: unsafe { AsyncFd::register(ring) }.map_err(|e| EbpfError::Poll(e.into()))?,
            pids,
            files,
            lost,
            lost_seen: 0,
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
            let lost = self.lost_total();
            if lost > self.lost_seen {
                out.push(Event::Lost {
                    count: lost - self.lost_seen,
                });
                self.lost_seen = lost;
            }
            if out.len() > before {
                return Ok(());
            }
            // Every record was read: the next one wakes the ring up.
            if self.late.is_empty() {
                self.ring.readable_mut().await?.clear_ready();
            } else if let Ok(guard) =
                tokio::time::timeout(ENDING_POLL, self.ring.readable_mut()).await
            {
                guard?.clear_ready();
            }
        }
    }

    fn lost_total(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(self.lost_seen)
    }

    /// Reports events about `pid` from now on.
    pub fn watch(&mut self, pid: u32) -> Result<(), MapError> {
        self.pids.insert(pid, 0, 0)?;
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
        let _ = self.pids.remove(&pid);
        self.late.retain(|late| late.pid != pid);
    }

    /// Marks executions of `file` for reporting.
    pub fn set_file(&mut self, file: FileKey, mark: FileMark) -> Result<(), MapError> {
        let value = match mark {
            FileMark::Watched => FILE_WATCHED,
            FileMark::Interpreter => FILE_INTERPRETER,
        };
        self.files.insert(file, value, 0)
    }

    /// Stops reporting executions of `file`.
    pub fn remove_file(&mut self, file: FileKey) {
        let _ = self.files.remove(&file);
    }
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
}

/// Loads `object` with `offsets` and attaches its programs.
fn load_object(object: &[u8], offsets: &armourd_common::Offsets) -> Result<Loaded, EbpfError> {
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global("OFFSETS", offsets, true)
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
    // The links hold the programs; the rest of the object goes.
    let maps = ebpf
        .maps_mut()
        .map(|(name, _)| name.to_owned())
        .collect::<Vec<_>>();
    let maps = maps
        .into_iter()
        .filter_map(|name| Some((name.clone(), ebpf.take_map(&name)?)))
        .collect();
    Ok(Loaded { links, maps })
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
            .filter(|a| whole(armourd_common::EXEC_ARGS_TRUNCATED) && !a.is_empty()),
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
}
