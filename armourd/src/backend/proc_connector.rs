//! The fallback backend: the netlink proc connector (`NETLINK_CONNECTOR`,
//! `CN_IDX_PROC`) behind a classic BPF socket filter, regenerated whenever
//! the watched set changes, that drops exits of unwatched processes in the
//! kernel (see `filter.rs`).
//!
//! Needs Linux 2.6.15+ (`CONFIG_PROC_EVENTS`) and CAP_NET_ADMIN (or root), in
//! the initial user and PID namespaces (elsewhere the kernel ignores the
//! subscription, which `open` detects). On 6.6+ the subscription also asks
//! the kernel for fork, exec and exit events only. Kernel facts:
//! [`cn_proc.h`], [`cn_proc.c`], and `do_exit` in [`exit.c`].
//!
//! A process ends once, when its last thread is gone, but the connector
//! reports every thread, and reports it only after the thread has left
//! `/proc` and may have let the parent reap the process: `/proc` cannot tell
//! whether the last datagram has come. So each watched process keeps its set
//! of live threads: read from `/proc` once the filter holds it, then kept by
//! the datagrams of new and ended threads. The datagram that empties the set
//! is the last one (if `/proc` still shows live threads, whose creation was
//! not seen, they join the set), and carries the wait status the parent
//! sees: a group exit gives every remaining thread the group's code, and
//! threads that end one by one (`pthread_exit`) normally share the leader's.
//! The core-dump flag is taken from whichever thread dumped.
//!
//! The filter acts when the kernel sends a datagram, so whatever a process
//! did before the regenerated filter held it was filtered by the old one.
//! Hence:
//!
//! - An exec of a watched executable (as `set_file` marks it) is watched at
//!   once, as the eBPF backend's kernel half does, and the filter is
//!   regenerated before the next datagram is handled. Datagrams that follow
//!   an exec of an unwatched process and concern it wait until the daemon
//!   has had the exec: it may watch that process (a script, say).
//! - Children are added in user space as their fork is read. Until the
//!   regenerated filter holds a child, its datagrams pass only while its
//!   parent is watched and alive (an orphan's name the reaper as parent);
//!   its own forks pass because forks by young processes do (see
//!   [`Forks`]; with forks of watched parents only, a double fork that
//!   daemonizes would go unseen).
//! - So every process the filter did not hold when it was added (a child,
//!   an exec, a process watched on request) is looked up in `/proc` once the
//!   filter holds it: one that still runs will be reported by its last
//!   datagram; for one that ended, what `/proc` showed of its end (its
//!   zombie's wait status, or nothing once reaped) is reported as
//!   [`Event::Ending`], for the daemon to settle, after the datagrams
//!   already queued, which may still report it exactly, and after the
//!   events those bring (a daemon's child before its parent's end).
//!
//! With fanotify (see `fanotify.rs`; CAP_SYS_ADMIN), execs are filtered
//! in the kernel too: the filter passes only those of the watched set and
//! of the processes fanotify saw opening a watched executable or a watched
//! script's interpreter ("learnt" ones). The fanotify event comes as
//! `execve` opens the file, before the exec's datagram, and the race
//! between them closes by order: the process is added to the filter, then
//! looked at in `/proc` once the datagrams queued are handled. If it runs
//! a marked file already, or has ended, its exec may have been judged by
//! the old filter, and it is reported from `/proc` (twice at worst, which
//! the daemon takes as the same exec); else its datagram passes the new
//! filter. A learnt process leaves the filter when its exec's datagram was
//! handled, when it ends, or after [`LEARNT_TTL`] (a failed exec).
//! A learnt process that runs no marked file yet once the filter holds it
//! has not executed it: its exec's datagram will pass, no look is needed.
//! armourd's own children (restarts, hooks) are held from their fork: when
//! the fork is read before the child executes, its exec's datagram passes;
//! else the exec is found as any other, without the kernel's timestamp (a
//! restart's is then the time its spawning thread saw it execute). Nothing
//! is attached before a restart is spawned, which would delay it. A
//! fanotify event of an exec whose datagram was handled needs no look
//! either.
//! The same holds for a watched process's child that executed before the
//! filter held it: its exec is reported from `/proc` if its executable is
//! no longer its parent's. Without fanotify every exec passes, as the
//! connector alone cannot say which file ran.
//!
//! [`cn_proc.h`]: https://github.com/torvalds/linux/blob/master/include/uapi/linux/cn_proc.h
//! [`cn_proc.c`]: https://github.com/torvalds/linux/blob/master/drivers/connector/cn_proc.c
//! [`exit.c`]: https://github.com/torvalds/linux/blob/master/kernel/exit.c

mod exec;
pub mod fanotify;
pub(crate) mod filter;
mod forks;
mod socket;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io,
    os::fd::{AsFd, FromRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use armourd_common::FileKey;
use fanotify::{ExecWatch, DISABLE_VAR};
use filter::{Execs, Message, CN_IDX_PROC};
use forks::Forks;
use libc::{c_int, sockaddr_nl, socklen_t};
use socket::{attach, await_ack, netlink_address, receive_batch, send_op, set_rcvbuf};
use tokio::io::{unix::AsyncFd, Interest};

use super::{Event, FileMark, Seen};
use crate::{
    logging::error_chain,
    procfs::{self, live_threads},
    status::ExitStatus,
};

/// `enum proc_cn_mcast_op`.
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
/// Receive buffer for bursts (forced past `rmem_max` with CAP_NET_ADMIN).
const RCVBUF: c_int = 4 << 20;
/// Datagrams read per [`ProcConnectorBackend::read`], to bound its latency.
const BATCH: usize = 256;
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a process learnt from fanotify stays in the filter when
/// neither its exec nor its end was seen (its exec failed).
const LEARNT_TTL: Duration = Duration::from_secs(30);

/// Why the proc-connector backend cannot run.
#[derive(thiserror::Error, Debug)]
pub enum ProcConnectorError {
    #[error("cannot open a NETLINK_CONNECTOR socket (needs a kernel with CONFIG_PROC_EVENTS)")]
    Socket(#[source] io::Error),
    #[error("cannot join the proc connector's group (needs CAP_NET_ADMIN: run armourd as root)")]
    Bind(#[source] io::Error),
    #[error("cannot subscribe to process events (needs CAP_NET_ADMIN: run armourd as root)")]
    Subscribe(#[source] io::Error),
    #[error(
        "the kernel did not acknowledge the subscription to process events within {ACK_TIMEOUT:?} \
         (armourd must run in the initial user and PID namespaces, not in a container)"
    )]
    NoAck,
    #[error("cannot attach the socket filter for {watched} watched processes")]
    Filter {
        watched: usize,
        #[source]
        source: io::Error,
    },
    #[error("cannot poll the netlink socket (armourd must open it inside the tokio runtime)")]
    Poll(#[source] io::Error),
}

/// A watched process.
#[derive(Clone, Debug, Default)]
struct Watched {
    /// Start time in clock ticks since boot, to tell a recycled pid.
    start: Option<u64>,
    /// Its threads not yet reported ended.
    threads: HashSet<u32>,
    /// The signal a thread dumped core for (0: none).
    cored: u32,
    /// Whether the attached filter holds it; its threads were read from
    /// `/proc` once it did.
    filtered: bool,
    /// The executable it ran when it was added (a child: its parent's).
    exe: Option<FileKey>,
}

/// The subscribed socket, the watched set and its filter.
pub struct ProcConnectorBackend {
    socket: AsyncFd<OwnedFd>,
    watched: HashMap<u32, Watched>,
    /// Executables whose execs are watched at once.
    files: HashSet<FileKey>,
    /// Whether the attached filter reflects `watched`.
    synced: bool,
    /// Whether the attached filter holds every watched pid.
    exact: bool,
    /// What the attached filter was made of (its pids sorted): the same
    /// again is not attached again (a restart held from its fork as a
    /// learnt process, then watched, changes nothing the filter sees).
    attached: (Vec<u32>, filter::Ages, Execs),
    /// Decoded and not yet handled, oldest first.
    pending: VecDeque<Message>,
    /// Found without a live thread once the filter held them, with what
    /// `/proc` showed of their end then; reported once the datagrams
    /// queued before are handled.
    ended: Vec<Seen>,
    /// The socket buffer overflowed since the last report.
    lost: bool,
    buf: Vec<u8>,
    /// Which forks the filter passes by age: see [`Forks`].
    forks: Forks,
    /// Which processes are executing a watched file; `None`: every exec
    /// passes the filter.
    execs: Option<ExecWatch>,
    /// Processes fanotify saw opening a watched file, held by the filter
    /// until their exec is handled or they end, and when they were.
    learnt: HashMap<u32, Instant>,
    /// armourd's own children learnt at their fork, to look at once the
    /// filter holds them.
    own_children: Vec<u32>,
    /// Processes the filter held before they executed: their exec's
    /// datagram passes, so their fanotify event needs no look in `/proc`
    /// (a restart's exec is reported by its datagram, with its time).
    awaited: HashSet<u32>,
    /// armourd's own executable, which its children run until they execute.
    own_exe: Option<FileKey>,
    /// Processes whose exec of a marked file made them watched since
    /// fanotify was last read, and that file: the fanotify event of that
    /// exec, queued before its datagram, needs no look in `/proc` while the
    /// process still runs it (later execs of a watched process pass).
    executed: HashMap<u32, FileKey>,
    /// Processes to look at in `/proc` once the datagrams queued are
    /// handled: their exec may have been dropped by an older filter.
    unseen: Vec<u32>,
}

impl ProcConnectorBackend {
    /// Opens and subscribes the socket, with fanotify unless the
    /// environment turns it off ([`DISABLE_VAR`]) or it is unavailable
    /// (said once). Must run inside the tokio runtime.
    pub fn open() -> Result<Self, ProcConnectorError> {
        Self::open_with(!ExecWatch::disabled())
    }

    /// [`Self::open`], with fanotify if `fanotify` (and available).
    pub fn open_with(fanotify: bool) -> Result<Self, ProcConnectorError> {
        tokio::runtime::Handle::try_current()
            .map_err(|e| ProcConnectorError::Poll(io::Error::other(e)))?;
        let flags = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, flags, libc::NETLINK_CONNECTOR) };
        if raw < 0 {
            return Err(ProcConnectorError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_rcvbuf(fd.as_fd());
        let execs = open_exec_watch(fanotify);
        let mode = if execs.is_some() {
            Execs::Held
        } else {
            Execs::All
        };
        // Filter first, so that nothing unfiltered is queued once bound.
        let forks = Forks::read();
        let attached = (vec![std::process::id()], forks.ages(), mode);
        let initial = filter::filter(&attached.0, attached.1, attached.2);
        attach(fd.as_fd(), &initial.insns)
            .map_err(|source| ProcConnectorError::Filter { watched: 0, source })?;
        let address = netlink_address(CN_IDX_PROC);
        let address_len = size_of::<sockaddr_nl>() as socklen_t;
        // SAFETY: `address` is a valid sockaddr_nl of that length.
        if unsafe { libc::bind(raw, (&raw const address).cast(), address_len) } < 0 {
            return Err(ProcConnectorError::Bind(io::Error::last_os_error()));
        }
        // The acknowledgement carries our `ack` plus one (its `seq` is the kernel's).
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let nonce = std::process::id() ^ (nanos << 8);
        send_op(fd.as_fd(), nonce, &[PROC_CN_MCAST_LISTEN])
            .map_err(ProcConnectorError::Subscribe)?;
        let mut buf = vec![0; 8192];
        let pending = await_ack(fd.as_fd(), nonce.wrapping_add(1), &mut buf)?;
        // Linux 6.6+: only these events (older kernels ignore this form).
        use filter::{PROC_EVENT_EXEC, PROC_EVENT_EXIT, PROC_EVENT_FORK};
        let wanted = [
            PROC_CN_MCAST_LISTEN,
            PROC_EVENT_FORK | PROC_EVENT_EXEC | PROC_EVENT_EXIT,
        ];
        if let Err(e) = send_op(fd.as_fd(), nonce, &wanted) {
            log::debug!("proc connector: no event type subscription: {e}");
        }
        // SAFETY: the AsyncFd owns `fd`, which stays open as long as it does.
        let socket = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| ProcConnectorError::Poll(e.into()))?;
        Ok(Self {
            socket,
            watched: HashMap::new(),
            synced: true,
            exact: true,
            attached,
            files: HashSet::new(),
            pending: pending.into(),
            ended: Vec::new(),
            lost: false,
            buf,
            forks,
            execs,
            learnt: HashMap::new(),
            own_children: Vec::new(),
            awaited: HashSet::new(),
            own_exe: procfs::exe_key(std::process::id()).ok(),
            executed: HashMap::new(),
            unseen: Vec::new(),
        })
    }

    /// Whether fanotify tells which processes execute watched files.
    pub fn has_fanotify(&self) -> bool {
        self.execs.is_some()
    }

    fn execs_mode(&self) -> Execs {
        match &self.execs {
            None => Execs::All,
            Some(_) => Execs::Held,
        }
    }

    /// Every exec passes the filter from now on, for `why`.
    fn drop_fanotify(&mut self, why: &str) {
        if self.execs.take().is_some() {
            log::warn!(
                "proc connector: fanotify no longer used ({why}): every exec on the machine wakes armourd"
            );
            self.learnt.clear();
            self.own_children.clear();
            self.awaited.clear();
            self.synced = false;
        }
    }

    /// Waits for the socket or fanotify; true when fanotify has events.
    /// The socket first: a restart's fork, queued before its child runs,
    /// is then read before the child's fanotify event, and the filter may
    /// hold the child before it executes (its exec's datagram then passes,
    /// with the kernel's time).
    async fn wait(&self) -> io::Result<bool> {
        let Some(watch) = &self.execs else {
            return Ok(false);
        };
        tokio::select! {
            biased;
            ready = self.socket.readable() => ready.map(|_| false),
            ready = watch.readable() => ready.map(|()| true),
        }
    }

    /// Holds in the filter the processes fanotify saw opening a watched
    /// file, then looks at them: one that runs no marked file yet has not
    /// executed it, and its exec's datagram will pass; any other is looked
    /// at again once the datagrams queued are handled.
    async fn learn(&mut self, out: &mut Vec<Event>) {
        let Some(watch) = &mut self.execs else {
            return;
        };
        let opened = match watch.read().await {
            Ok(opened) => opened,
            Err(e) => return self.drop_fanotify(&format!("cannot read its events: {e}")),
        };
        if opened.overflowed {
            log::warn!("fanotify: its queue overflowed, execs of watched files were lost");
            out.push(Event::Lost { count: 1 });
        }
        let now = Instant::now();
        let before = self.learnt.len();
        self.learnt
            .retain(|pid, at| now.duration_since(*at) < LEARNT_TTL || self.unseen.contains(pid));
        let learnt = &self.learnt;
        self.awaited.retain(|pid| learnt.contains_key(pid));
        let own = std::process::id();
        let mut fresh = Vec::new();
        for pid in opened.pids {
            // Watched ones too: the filter may have taken one after its
            // exec (a restart, watched as its spawn returns), unless it
            // held it before or its exec's datagram came.
            let seen = (self.executed.remove(&pid))
                .is_some_and(|key| procfs::exe_key(pid).is_ok_and(|now| now == key));
            if pid == own || self.awaited.contains(&pid) || seen {
                continue;
            }
            log::trace!("fanotify: {pid} opened a watched file");
            if self.learnt.insert(pid, now).is_none() {
                self.synced = false;
            }
            if !self.unseen.contains(&pid) {
                self.unseen.push(pid);
                fresh.push(pid);
            }
        }
        if self.learnt.len() != before {
            self.synced = false;
        }
        self.executed.clear();
        // Before the looks in /proc.
        self.sync_filter();
        if !self.synced {
            return;
        }
        let marked = |key| self.execs.as_ref().is_some_and(|w| w.is_marked(&key));
        let before_exec: Vec<u32> = (fresh.into_iter())
            .filter(|&pid| procfs::exe_key(pid).is_ok_and(|key| !marked(key)))
            .collect();
        for pid in before_exec {
            log::trace!("fanotify: {pid} held before its exec");
            self.unseen.retain(|&p| p != pid);
            self.awaited.insert(pid);
        }
    }

    /// Reports the execs that older filters may have dropped (see the
    /// module's documentation), once the datagrams queued are handled.
    fn report_unseen(&mut self, out: &mut Vec<Event>) {
        for pid in std::mem::take(&mut self.unseen) {
            let exe = procfs::exe_key(pid).ok();
            if self.learnt.contains_key(&pid) {
                let marked = |key| self.execs.as_ref().is_some_and(|w| w.is_marked(&key));
                match exe {
                    // Ended: every datagram it sent was handled, and none
                    // was its exec's. A watched one (learnt again by a
                    // second event of one exec: a script, then its
                    // interpreter) is reported by its own end, not as an
                    // exec of nothing, which would take it for another
                    // program.
                    None => {
                        self.learnt.remove(&pid);
                        self.synced = false;
                        if self.watched.contains_key(&pid) {
                            self.awaited.remove(&pid);
                            continue;
                        }
                    }
                    // Its exec is over once argv is laid out (the datagram
                    // follows at once, perhaps through the old filter).
                    Some(key) if marked(key) && laid_out(pid) => {}
                    Some(_) => {
                        log::trace!("proc connector: {pid} still executing");
                        continue; // its exec's datagram will pass
                    }
                }
                log::debug!("proc connector: exec of {pid} seen from /proc");
                out.push(Event::Exec(self.exec_seen(pid)));
                // Handled: as if its datagram had come.
                if self.learnt.remove(&pid).is_some() {
                    self.synced = false;
                }
                self.awaited.remove(&pid);
            } else if let Some(watched) = self.watched.get(&pid) {
                if exe.is_some() && exe != watched.exe && laid_out(pid) {
                    log::debug!("proc connector: {pid} executed before the filter held it");
                    out.push(Event::Exec(self.exec_seen(pid)));
                }
            }
        }
    }

    /// Waits for datagrams and appends their events to `out`. A full socket
    /// buffer (`ENOBUFS`) becomes [`Event::Lost`], never an error.
    pub async fn read(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        let before = out.len();
        loop {
            // Before the next datagram is handled; not before the events
            // of the last ones were handed over, which may start a restart.
            self.sync_filter();
            let mut drained = false;
            let waits = self.ended.is_empty() && self.unseen.is_empty();
            if self.pending.is_empty() && waits && self.wait().await? {
                self.learn(out).await;
            } else if self.pending.is_empty() {
                let (buf, pending) = (&mut self.buf, &mut self.pending);
                let received = if waits {
                    let mut guard = self.socket.readable().await?;
                    let received = receive_batch(guard.get_inner().as_fd(), buf, BATCH, pending)?;
                    if received.drained {
                        guard.clear_ready();
                    }
                    received
                } else {
                    receive_batch(self.socket.get_ref().as_fd(), buf, BATCH, pending)?
                };
                drained = received.drained;
                self.lost |= received.lost;
            }
            self.handle(out);
            if drained && self.pending.is_empty() {
                self.report_unseen(out);
                self.report_ended(out);
            }
            if std::mem::take(&mut self.lost) {
                log::warn!("proc connector: the socket buffer overflowed, events were lost");
                out.push(Event::Lost { count: 1 });
                // Thread datagrams were lost too: every set is read afresh.
                let pids: Vec<u32> = self.watched.keys().copied().collect();
                self.look_up(&pids);
            }
            if out.len() > before {
                return Ok(());
            }
        }
    }

    /// Handles pending datagrams in order, up to one that concerns a
    /// process whose exec this call handed over unwatched (the daemon may
    /// watch it first), or up to the exec of a watched executable.
    fn handle(&mut self, out: &mut Vec<Event>) {
        let mut execs = HashSet::new();
        while let Some(&message) = self.pending.front() {
            if concerns(message).is_some_and(|pid| execs.contains(&pid)) {
                break;
            }
            self.pending.pop_front();
            match message {
                Message::Exec {
                    pid,
                    tgid,
                    ktime_ns,
                } if pid == tgid => {
                    if self.learnt.remove(&pid).is_some() {
                        self.synced = false;
                    }
                    self.awaited.remove(&pid);
                    let (exec, newly_watched) = self.on_exec(pid, Some(ktime_ns));
                    // Only an exec of a marked file has a fanotify event.
                    let marked = |key| self.execs.as_ref().is_some_and(|w| w.is_marked(&key));
                    let watched = self.watched.contains_key(&exec.pid);
                    if let Some(key) = exec.file.filter(|&k| watched && marked(k)) {
                        if self.executed.len() < 1024 {
                            self.executed.insert(exec.pid, key);
                        }
                    }
                    out.push(Event::Exec(exec));
                    if newly_watched {
                        // At once: the daemon reads its launch context
                        // from /proc, perhaps just before it ends.
                        break;
                    }
                    if !self.watched.contains_key(&pid) {
                        execs.insert(pid);
                    }
                }
                Message::Fork {
                    parent,
                    child_pid,
                    child_tgid,
                } => self.on_fork(parent, child_pid, child_tgid, out),
                Message::Exit {
                    tid,
                    tgid,
                    code,
                    ktime_ns,
                } => self.on_exit(tid, tgid, code, ktime_ns, out),
                Message::Exec { .. } | Message::Ack { .. } => {}
            }
        }
    }

    /// Follows a new thread, or adds a watched process's new child.
    fn on_fork(&mut self, parent: u32, tid: u32, tgid: u32, out: &mut Vec<Event>) {
        if tid != tgid {
            if let Some(watched) = self.watched.get_mut(&tgid) {
                watched.threads.insert(tid);
            }
            return;
        }
        if self.forks.created(tgid) {
            self.synced = false;
        }
        if parent == std::process::id() {
            if self.execs.is_some() {
                // A restart or a hook: held before it executes (it would be
                // learnt only as it does), so that its exec's datagram, with
                // the kernel's timestamp, passes.
                if self.learnt.insert(tgid, Instant::now()).is_none() {
                    self.synced = false;
                    self.own_children.push(tgid);
                }
            }
            // armourd's own restarts and hooks pass because armourd's pid
            // is in every filter: they are not forks passed for their age.
            return;
        }
        if !self.watched.contains_key(&parent) {
            // Passed for its age only: once too many did, the filter is
            // made anew with a newer window.
            self.forks.stale += 1;
            if self.forks.stale >= Forks::STALE {
                self.synced = false;
            }
            return;
        }
        if self.watched.contains_key(&tgid) {
            return;
        }
        let start = start_ticks(tgid);
        let exe = self.watched.get(&parent).and_then(|p| p.exe);
        self.insert(tgid, start, HashSet::from([tgid]), exe);
        out.push(Event::Fork {
            parent,
            child: tgid,
            start,
        });
    }

    /// Reports the process ended if `tid` was its last thread.
    fn on_exit(&mut self, tid: u32, tgid: u32, code: u32, ktime_ns: u64, out: &mut Vec<Event>) {
        // A learnt process whose exec may have been dropped is looked at first.
        if tid == tgid && !self.unseen.contains(&tgid) && self.learnt.remove(&tgid).is_some() {
            self.synced = false;
        }
        if tid == tgid {
            self.awaited.remove(&tgid);
        }
        let Some(watched) = self.watched.get_mut(&tgid) else {
            return;
        };
        let signal = code & 0x7f;
        if code & 0x80 != 0 && signal != 0 {
            watched.cored = signal;
        }
        watched.threads.remove(&tid);
        if watched.threads.is_empty() && !watched.filtered {
            // Threads whose creation was not seen (made by a child before the
            // filter held it) are still in /proc. Once the filter holds a
            // process, its set is exact: read from /proc then, and kept by
            // the datagrams of every thread created since.
            watched.threads = live_threads(tgid, watched.start);
        }
        if watched.threads.is_empty() {
            let core = if signal != 0 && signal == watched.cored {
                0x80
            } else {
                0
            };
            let status = ExitStatus::from_wait_status(code | core);
            out.push(self.end(tgid, status, Some(ktime_ns)));
        }
    }

    /// Reads the threads of `pids`, which the filter holds: those left run
    /// on and will be reported by datagrams; a process without any ended
    /// before, and perhaps its last datagram was dropped.
    fn look_up(&mut self, pids: &[u32]) {
        for &pid in pids {
            let Some(watched) = self.watched.get_mut(&pid) else {
                continue;
            };
            let live = live_threads(pid, watched.start);
            if live.is_empty() {
                // Read now: its zombie may be reaped by the time it is reported.
                let start = watched.start;
                let ending = procfs::ending(pid, start);
                self.ended.push(Seen { pid, start, ending });
            } else {
                watched.threads = live;
            }
        }
    }

    /// Reports what `/proc` shows of the end of the processes found
    /// ended that no datagram reported since; they are no longer watched.
    fn report_ended(&mut self, out: &mut Vec<Event>) {
        for seen in std::mem::take(&mut self.ended) {
            let Seen { pid, start, ending } = seen;
            if self.watched.get(&pid).is_some_and(|w| w.start == start) {
                log::debug!("proc connector: {pid} ended before the filter held it: {ending:?}");
                self.forget(pid);
                out.push(Event::Ending(seen));
            }
        }
    }

    fn end(&mut self, pid: u32, status: ExitStatus, ktime_ns: Option<u64>) -> Event {
        let start = self.forget(pid);
        Event::Exit {
            pid,
            start,
            status,
            ktime_ns,
        }
    }

    /// Stops watching `pid`, which ended; returns its start time.
    fn forget(&mut self, pid: u32) -> Option<u64> {
        self.synced = false;
        self.watched.remove(&pid).and_then(|w| w.start)
    }

    fn insert(
        &mut self,
        pid: u32,
        start: Option<u64>,
        threads: HashSet<u32>,
        exe: Option<FileKey>,
    ) {
        self.watched.insert(
            pid,
            Watched {
                start,
                threads,
                exe,
                ..Watched::default()
            },
        );
        self.synced = false;
    }

    /// Reports events about `pid` from now on.
    pub fn watch(&mut self, pid: u32) -> Result<(), ProcConnectorError> {
        if self.watched.contains_key(&pid) {
            return Ok(());
        }
        // Its threads are read once the filter holds it.
        let exe = procfs::exe_key(pid).ok();
        self.insert(pid, start_ticks(pid), HashSet::from([pid]), exe);
        self.try_sync_filter()
    }

    /// Stops reporting events about `pid`. The filter follows before the
    /// next datagram is handled (until then it passes a few more).
    pub fn unwatch(&mut self, pid: u32) {
        if self.watched.remove(&pid).is_some() {
            self.synced = false;
        }
    }

    /// Watches every exec of `file`, found at `path`, from the moment it
    /// is read, when it is a watched executable (an interpreter's execs are
    /// left to the daemon). With fanotify, both are marked; a file that
    /// cannot be marked makes every exec pass the filter again.
    pub fn set_file(
        &mut self,
        file: FileKey,
        mark: FileMark,
        path: &Path,
    ) -> Result<(), ProcConnectorError> {
        match mark {
            FileMark::Watched => self.files.insert(file),
            FileMark::Interpreter => self.files.remove(&file),
        };
        if let Some(watch) = &mut self.execs {
            if let Err(e) = watch.mark(file, path) {
                self.drop_fanotify(&error_chain(&e));
            }
        }
        Ok(())
    }

    /// Stops watching execs of `file` at once.
    pub fn remove_file(&mut self, file: FileKey) {
        self.files.remove(&file);
        if let Some(watch) = &mut self.execs {
            watch.unmark(file);
        }
    }

    fn sync_filter(&mut self) {
        if let Err(e) = self.try_sync_filter() {
            log::error!("proc connector: {e}; will retry (meanwhile the old filter drops events)");
        }
    }

    fn try_sync_filter(&mut self) -> Result<(), ProcConnectorError> {
        if self.synced {
            return Ok(());
        }
        let mut pids: Vec<u32> = self.watched.keys().copied().collect();
        pids.extend(self.learnt.keys().copied());
        // armourd itself counts as a watched parent: the exit of a process it
        // just restarted passes even before the filter holds that process.
        pids.push(std::process::id());
        pids.sort_unstable();
        pids.dedup();
        let made_of = (pids, self.forks.ages(), self.execs_mode());
        let exact = if made_of == self.attached {
            self.exact
        } else {
            let (pids, ages, execs) = &made_of;
            let filter = filter::filter(pids, *ages, *execs);
            attach(self.socket.get_ref().as_fd(), &filter.insns).map_err(|source| {
                ProcConnectorError::Filter {
                    watched: pids.len(),
                    source,
                }
            })?;
            self.attached = made_of;
            filter.exact
        };
        let pids = &self.attached.0;
        match (self.exact, exact) {
            (true, false) => log::warn!(
                "proc connector: {} watched processes do not fit in a socket filter \
                 ({} instructions at most): every fork and exit reaches armourd",
                pids.len(),
                filter::BPF_MAXINSNS
            ),
            (false, true) => {
                log::info!("proc connector: the socket filter holds the watched processes again")
            }
            _ => {}
        }
        let mut held = Vec::new();
        for (&pid, watched) in &mut self.watched {
            if !watched.filtered {
                watched.filtered = true;
                held.push(pid);
            }
        }
        self.exact = exact;
        self.synced = true;
        self.forks.attached();
        self.look_up(&held);
        // armourd's children held now: one still running armourd has not
        // executed, and its exec's datagram will pass; one that has may
        // have executed before (a restart whose fork was read late).
        for pid in std::mem::take(&mut self.own_children) {
            if !self.learnt.contains_key(&pid) {
                continue;
            }
            let exe = procfs::exe_key(pid).ok();
            if self.own_exe.is_some() && exe == self.own_exe {
                log::trace!("proc connector: {pid}, armourd's child, held before its exec");
                self.awaited.insert(pid);
            } else if !self.unseen.contains(&pid) {
                log::trace!(
                    "proc connector: {pid}, armourd's child, held after its exec ({exe:?})"
                );
                self.unseen.push(pid);
            }
        }
        if self.execs.is_some() {
            // Its exec, if it executed before, was dropped (a learnt
            // process is looked at as such).
            for pid in held {
                let learnt = self.learnt.contains_key(&pid) || self.awaited.contains(&pid);
                if !self.unseen.contains(&pid) && !learnt {
                    self.unseen.push(pid);
                }
            }
        }
        Ok(())
    }
}

/// The fanotify group, unless turned off or unavailable (said once).
fn open_exec_watch(wanted: bool) -> Option<ExecWatch> {
    if !wanted {
        log::info!(
            "proc connector: fanotify turned off by {DISABLE_VAR}: every exec on the machine wakes armourd"
        );
        return None;
    }
    match ExecWatch::open() {
        Ok(watch) => {
            if !watch.exec_only() {
                log::info!(
                    "proc connector: this kernel has no FAN_OPEN_EXEC (Linux 5.0+): \
                     reads of watched executables wake armourd too"
                );
            }
            Some(watch)
        }
        Err(e) => {
            log::warn!(
                "proc connector: fanotify unavailable: {}; every exec on the machine wakes armourd",
                error_chain(&e)
            );
            None
        }
    }
}

/// Whether `pid`'s exec, if it was executing, is over: its new argv is
/// laid out (`/proc/PID/cmdline` reads empty in the middle of an exec).
fn laid_out(pid: u32) -> bool {
    procfs::cmdline(pid).is_ok_and(|argv| !argv.is_empty())
}

fn start_ticks(pid: u32) -> Option<u64> {
    procfs::stat(pid).ok().map(|stat| stat.start_ticks)
}

/// The process a message is about: the forking one for a new process.
fn concerns(message: Message) -> Option<u32> {
    match message {
        Message::Fork {
            parent,
            child_pid,
            child_tgid,
        } => Some(if child_pid == child_tgid {
            parent
        } else {
            child_tgid
        }),
        Message::Exit { tgid, .. } => Some(tgid),
        Message::Exec { .. } | Message::Ack { .. } => None,
    }
}

impl Drop for ProcConnectorBackend {
    fn drop(&mut self) {
        // Before 6.6, closing the socket did not count the listener out.
        let _ = send_op(self.socket.get_ref().as_fd(), 0, &[PROC_CN_MCAST_IGNORE]);
    }
}

#[cfg(test)]
mod tests;
