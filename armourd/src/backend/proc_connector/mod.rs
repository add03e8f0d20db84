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
//! Children are added in user space as their fork is read. Until the
//! regenerated filter holds a child, its datagrams still pass as those of a
//! watched process's child, and its own forks pass because every fork of a
//! new process does (with forks of watched parents only, a double fork that
//! daemonizes would go unseen). Only a grandchild that ends in that window
//! is not seen ending: it is then found ended in `/proc`.
//!
//! [`cn_proc.h`]: https://github.com/torvalds/linux/blob/master/include/uapi/linux/cn_proc.h
//! [`cn_proc.c`]: https://github.com/torvalds/linux/blob/master/drivers/connector/cn_proc.c
//! [`exit.c`]: https://github.com/torvalds/linux/blob/master/kernel/exit.c

mod filter;

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use armourd_common::FileKey;
use filter::{Message, CN_IDX_PROC, CN_VAL_PROC};
use libc::{c_int, sockaddr_nl, socklen_t};
use tokio::io::{unix::AsyncFd, Interest};

use super::{Event, ExecEvent, FileMark};
use crate::status::ExitStatus;

/// `enum proc_cn_mcast_op`.
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
/// Receive buffer for bursts (forced past `rmem_max` with CAP_NET_ADMIN).
const RCVBUF: c_int = 4 << 20;
/// Datagrams read per [`ProcConnectorBackend::read`], to bound its latency.
const BATCH: usize = 256;
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// Whether the attached filter holds it.
    filtered: bool,
}

/// The subscribed socket, the watched set and its filter.
pub struct ProcConnectorBackend {
    socket: AsyncFd<OwnedFd>,
    watched: HashMap<u32, Watched>,
    /// Whether the attached filter reflects `watched`.
    synced: bool,
    /// Whether the attached filter holds every watched pid.
    exact: bool,
    /// Decoded and not yet handled (from `open`, or the batch in progress).
    pending: Vec<Message>,
    /// Watched processes that may have ended before the filter held them.
    recheck: Vec<u32>,
    buf: Vec<u8>,
}

impl ProcConnectorBackend {
    /// Opens and subscribes the socket. Must run inside the tokio runtime.
    pub fn open() -> Result<Self, ProcConnectorError> {
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
        // Filter first, so that nothing unfiltered is queued once bound.
        let initial = filter::filter(&[std::process::id()]);
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
            pending,
            recheck: Vec::new(),
            buf,
        })
    }

    /// Waits for datagrams and appends their events to `out`. A full socket
    /// buffer (`ENOBUFS`) becomes [`Event::Lost`], never an error.
    pub async fn read(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        let mut lost = false;
        if self.pending.is_empty() && self.recheck.is_empty() {
            let mut guard = self.socket.readable().await?;
            let fd = guard.get_inner().as_fd();
            for _ in 0..BATCH {
                match receive(fd, &mut self.buf) {
                    Ok(Some(len)) => filter::decode(&self.buf[..len], &mut self.pending),
                    Ok(None) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => lost = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let batch = std::mem::take(&mut self.pending);
        let unsure = self.handle(&batch, out);
        self.pending = batch;
        self.pending.clear();
        self.sync_filter();
        let recheck = std::mem::take(&mut self.recheck);
        for pid in unsure.into_iter().chain(recheck) {
            self.end_if_ended(pid, out);
        }
        if lost {
            log::warn!("proc connector: the socket buffer overflowed, events were lost");
            out.push(Event::Lost { count: 1 });
            // Thread datagrams were lost too: start the sets afresh.
            for (&pid, watched) in &mut self.watched {
                let live = live_threads(pid, watched.start);
                if !live.is_empty() {
                    watched.threads = live;
                }
            }
        }
        self.sync_filter();
        Ok(())
    }

    /// Handles datagrams in order. Returns the children added whose parent
    /// the filter did not hold: their exits may have been dropped.
    fn handle(&mut self, batch: &[Message], out: &mut Vec<Event>) -> Vec<u32> {
        let mut unsure = Vec::new();
        for message in batch {
            match *message {
                Message::Exec {
                    pid,
                    tgid,
                    ktime_ns,
                } if pid == tgid => {
                    // Only the thread that executed is left, now under `pid`.
                    if let Some(watched) = self.watched.get_mut(&pid) {
                        watched.threads = HashSet::from([pid]);
                    }
                    let ktime_ns = Some(ktime_ns);
                    out.push(Event::Exec(ExecEvent {
                        pid,
                        ktime_ns,
                        ..ExecEvent::default()
                    }));
                }
                Message::Fork {
                    parent,
                    child_pid,
                    child_tgid,
                } => {
                    let child = self.on_fork(parent, child_pid, child_tgid, out);
                    unsure.extend(child);
                }
                Message::Exit {
                    tid,
                    tgid,
                    code,
                    ktime_ns,
                } => {
                    self.on_exit(tid, tgid, code, ktime_ns, out);
                }
                Message::Exec { .. } | Message::Ack { .. } => {}
            }
        }
        unsure
    }

    /// Follows a new thread, or adds a watched process's new child; returns
    /// the child if the filter did not hold its parent.
    fn on_fork(&mut self, parent: u32, tid: u32, tgid: u32, out: &mut Vec<Event>) -> Option<u32> {
        if tid != tgid {
            self.watched.get_mut(&tgid).map(|w| w.threads.insert(tid));
            return None;
        }
        let filtered = self.watched.get(&parent)?.filtered;
        if self.watched.contains_key(&tgid) {
            return None;
        }
        let start = start_ticks(tgid);
        self.insert(tgid, start, HashSet::from([tgid]));
        out.push(Event::Fork {
            parent,
            child: tgid,
            start,
        });
        (!filtered).then_some(tgid)
    }

    /// Reports the process ended if `tid` was its last thread.
    fn on_exit(&mut self, tid: u32, tgid: u32, code: u32, ktime_ns: u64, out: &mut Vec<Event>) {
        let Some(watched) = self.watched.get_mut(&tgid) else {
            return;
        };
        let signal = code & 0x7f;
        if code & 0x80 != 0 && signal != 0 {
            watched.cored = signal;
        }
        watched.threads.remove(&tid);
        if watched.threads.is_empty() {
            // Threads whose creation was not seen (made by a child before the
            // filter held it) are still in /proc.
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

    /// Reports `pid` ended if it has, though its exit was not read.
    fn end_if_ended(&mut self, pid: u32, out: &mut Vec<Event>) {
        let Some(start) = self.watched.get(&pid).map(|w| w.start) else {
            return;
        };
        if live_threads(pid, start).is_empty() {
            let status =
                zombie_status(pid, start).map_or(ExitStatus::Unknown, ExitStatus::from_wait_status);
            log::debug!("proc connector: {pid} ended before the filter held its parent: {status}");
            out.push(self.end(pid, status, None));
        }
    }

    fn end(&mut self, pid: u32, status: ExitStatus, ktime_ns: Option<u64>) -> Event {
        let start = self.watched.remove(&pid).and_then(|w| w.start);
        self.synced = false;
        Event::Exit {
            pid,
            start,
            status,
            ktime_ns,
        }
    }

    fn insert(&mut self, pid: u32, start: Option<u64>, threads: HashSet<u32>) {
        self.watched.insert(
            pid,
            Watched {
                start,
                threads,
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
        let start = start_ticks(pid);
        self.insert(pid, start, HashSet::from([pid]));
        self.try_sync_filter()?;
        // Read once the filter holds it: later threads come as datagrams.
        let live = live_threads(pid, start);
        if live.is_empty() {
            // Its exit may have come before the filter held it.
            self.recheck.push(pid);
        } else if let Some(watched) = self.watched.get_mut(&pid) {
            watched.threads = live;
        }
        Ok(())
    }

    /// Stops reporting events about `pid`.
    pub fn unwatch(&mut self, pid: u32) {
        if self.watched.remove(&pid).is_some() {
            self.synced = false;
            self.sync_filter();
        }
    }

    /// No kernel-side file filter exists here: every exec is reported.
    pub fn set_file(&mut self, _file: FileKey, _mark: FileMark) -> Result<(), ProcConnectorError> {
        Ok(())
    }

    /// See [`Self::set_file`].
    pub fn remove_file(&mut self, _file: FileKey) {}

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
        // armourd itself counts as a watched parent: the exit of a process it
        // just restarted passes even before the filter holds that process.
        pids.push(std::process::id());
        let filter = filter::filter(&pids);
        attach(self.socket.get_ref().as_fd(), &filter.insns).map_err(|source| {
            ProcConnectorError::Filter {
                watched: pids.len(),
                source,
            }
        })?;
        match (self.exact, filter.exact) {
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
        self.watched.values_mut().for_each(|w| w.filtered = true);
        self.exact = filter.exact;
        self.synced = true;
        Ok(())
    }
}

impl Drop for ProcConnectorBackend {
    fn drop(&mut self) {
        // Before 6.6, closing the socket did not count the listener out.
        let _ = send_op(self.socket.get_ref().as_fd(), 0, &[PROC_CN_MCAST_IGNORE]);
    }
}

fn netlink_address(groups: u32) -> sockaddr_nl {
    // SAFETY: sockaddr_nl is plain integers; all zero is valid.
    let mut address: sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as u16;
    address.nl_groups = groups;
    address
}

fn set_rcvbuf(fd: BorrowedFd) {
    if setsockopt(fd, libc::SO_RCVBUFFORCE, &RCVBUF).is_err() {
        if let Err(e) = setsockopt(fd, libc::SO_RCVBUF, &RCVBUF) {
            log::warn!(
                "proc connector: cannot enlarge the socket buffer ({e}): bursts may lose events"
            );
        }
    }
}

fn attach(fd: BorrowedFd, insns: &[libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_ptr().cast_mut(),
    };
    setsockopt(fd, libc::SO_ATTACH_FILTER, &program)
}

fn setsockopt<T>(fd: BorrowedFd, option: c_int, value: &T) -> io::Result<()> {
    let (value, len): (*const T, _) = (value, size_of::<T>() as socklen_t);
    // SAFETY: `value` points to a live T of `len` bytes; the kernel copies it.
    if unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, option, value.cast(), len) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `PROC_CN_MCAST_*` (`words`) to the kernel.
fn send_op(fd: BorrowedFd, ack: u32, words: &[u32]) -> io::Result<()> {
    let payload = 4 * words.len();
    let mut message = Vec::with_capacity(36 + payload);
    message.extend(((36 + payload) as u32).to_ne_bytes()); // nlmsg_len
    message.extend((libc::NLMSG_DONE as u16).to_ne_bytes());
    message.extend([0; 10]); // nlmsg_flags, nlmsg_seq, nlmsg_pid
    for word in [CN_IDX_PROC, CN_VAL_PROC, 0, ack] {
        message.extend(word.to_ne_bytes()); // cb_id, seq, ack
    }
    message.extend((payload as u16).to_ne_bytes());
    message.extend(0u16.to_ne_bytes()); // flags
    words
        .iter()
        .for_each(|word| message.extend(word.to_ne_bytes()));
    let kernel = netlink_address(0);
    let kernel_len = size_of::<sockaddr_nl>() as socklen_t;
    let (data, to) = (message.as_ptr().cast(), (&raw const kernel).cast());
    // SAFETY: buffer and address are valid for the lengths given.
    let sent = unsafe { libc::sendto(fd.as_raw_fd(), data, message.len(), 0, to, kernel_len) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the kernel's acknowledgement `ack` of the subscription,
/// keeping the events that arrive meanwhile.
fn await_ack(fd: BorrowedFd, ack: u32, buf: &mut [u8]) -> Result<Vec<Message>, ProcConnectorError> {
    let deadline = Instant::now() + ACK_TIMEOUT;
    let mut messages = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProcConnectorError::NoAck);
        }
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. EINTR just polls again, to the same deadline.
        unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as c_int) };
        loop {
            match receive(fd, buf) {
                Ok(Some(len)) => filter::decode(&buf[..len], &mut messages),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(ProcConnectorError::Subscribe(e)),
            }
        }
        let answer = messages.iter().find_map(|m| match *m {
            Message::Ack { ack: a, err } if a == ack => Some(err),
            _ => None,
        });
        match answer {
            Some(0) => {
                messages.retain(|m| !matches!(m, Message::Ack { .. }));
                return Ok(messages);
            }
            Some(err) => {
                let error = io::Error::from_raw_os_error(err as i32);
                return Err(ProcConnectorError::Subscribe(error));
            }
            None => {}
        }
    }
}

/// Receives one datagram; `None` when it did not come from the kernel.
fn receive(fd: BorrowedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut from = netlink_address(0);
    let mut from_len = size_of::<sockaddr_nl>() as socklen_t;
    let (data, from_ptr) = (buf.as_mut_ptr().cast(), (&raw mut from).cast());
    // SAFETY: buffer and address are valid for the lengths given.
    let len =
        unsafe { libc::recvfrom(fd.as_raw_fd(), data, buf.len(), 0, from_ptr, &mut from_len) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((from.nl_pid == 0).then_some(len as usize))
}

/// Fields of a `/proc/…/stat` file (proc(5)).
struct Stat {
    state: u8,
    /// Field 22, in clock ticks since boot.
    start: u64,
    /// Field 52 (Linux 3.5+), in wait status form.
    exit_code: Option<u32>,
}

fn stat(path: &str) -> Option<Stat> {
    let text = fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name, from field 3 (state).
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    Some(Stat {
        state: *fields.first()?.as_bytes().first()?,
        start: fields.get(19)?.parse().ok()?,
        exit_code: fields.get(49).and_then(|code| code.parse().ok()),
    })
}

fn start_ticks(pid: u32) -> Option<u64> {
    stat(&format!("/proc/{pid}/stat")).map(|stat| stat.start)
}

fn dead(state: u8) -> bool {
    matches!(state, b'Z' | b'X')
}

/// The threads of process `pid` (started at `start`) that have not ended.
fn live_threads(pid: u32, start: Option<u64>) -> HashSet<u32> {
    let alive = |path: String| stat(&path).is_some_and(|s| !dead(s.state));
    let Some(leader) = stat(&format!("/proc/{pid}/stat")) else {
        return HashSet::new();
    };
    if start.is_some_and(|start| start != leader.start) {
        return HashSet::new(); // reaped, and the pid recycled
    }
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashSet::new();
    };
    (tasks.flatten())
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .filter(|tid| alive(format!("/proc/{pid}/task/{tid}/stat")))
        .collect()
}

/// The wait status of `pid` if it is a zombie (not yet reaped).
fn zombie_status(pid: u32, start: Option<u64>) -> Option<u32> {
    let stat = stat(&format!("/proc/{pid}/stat"))?;
    let same = start.is_none_or(|start| start == stat.start);
    stat.exit_code.filter(|_| same && stat.state == b'Z')
}

#[cfg(test)]
mod tests;
