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
    io,
    time::{Duration, Instant},
};

use armourd_common::{
    Failure, FileKey, PidClass, FAILURE_KINDS, FILE_INTERPRETER, FILE_WATCHED, MAX_WATCHED_PIDS,
};
use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{raw_trace_point::RawTracePointLink, ProgramError},
};
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

mod decode;
mod load;

pub(crate) use decode::decode;
use load::{check_capabilities, load_object, take_map, Loaded, OBJECT};

use super::{Event, FileMark, FilterError};
use crate::{
    btf,
    procfs::{self, Ending},
    race::{self, Late},
};

/// How often a process found ending is looked at again until it has ended.
const ENDING_POLL: Duration = Duration::from_millis(1);

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
            let recorded = &out[before..];
            let recorded = |pid| {
                (recorded.iter())
                    .any(|event| matches!(event, Event::Exit { pid: p, .. } if *p == pid))
            };
            let (late, ended) = race::settle(late, endings, recorded, Instant::now());
            self.late = late;
            for race::Ended { pid, start, status } in ended {
                log::debug!("pid {pid} ended as its watch began: {status}");
                out.push(Event::Exit {
                    pid,
                    start,
                    status,
                    ktime_ns: None,
                });
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
