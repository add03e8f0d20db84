//! Restarts run on threads of their own, never on the event loop.
//!
//! A restarted program's child shares armourd's memory and holds the thread
//! that clones it until it executes the program. What it does before that
//! — change to its working directory, open its log files, execute a file —
//! touches paths its owner controls: a hung mount or a file that blocks
//! would hold that thread. So each spawn runs on a worker thread while the
//! event loop goes on; a child that has not executed its program by
//! [`SPAWN_TIMEOUT`] is killed and its restart fails (to be retried).
//!
//! One spawn per uid runs at a time, so one user's hung restarts delay no
//! other user's; restarts of configured entries are started before those of
//! processes watched on request. Idle workers are kept, a few, so that a
//! restart does not wait for a thread to be created.

use std::{
    collections::VecDeque,
    sync::{mpsc as std_mpsc, Arc},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::latency::monotonic_ns;
use crate::{
    launch::LaunchSpec,
    pidfd,
    spawn::{self, ChildSlot, SpawnError},
    supervisor::InstanceId,
};

/// How long a child may take to reach its program before it is killed.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a killed child may take to go (it may be stuck where SIGKILL
/// waits) before its restart is given up as failed and its worker left to it.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// Workers for unprivileged uids at most; root always gets one more.
const MAX_WORKERS: usize = 8;
/// Idle workers kept for the next restarts.
const IDLE_KEPT: usize = 2;
/// A worker's own stack: the spawn's child has a stack of its own.
const WORKER_STACK: usize = 128 * 1024;

/// A restart to carry out.
#[derive(Debug)]
pub struct Job {
    pub instance: InstanceId,
    pub spec: Arc<LaunchSpec>,
    /// Of a configuration entry (started before requested watches).
    pub configured: bool,
}

/// The outcome of a [`Job`].
#[derive(Debug)]
pub struct Done {
    pub instance: InstanceId,
    pub result: Result<u32, SpawnError>,
    /// When the spawn was handed to a worker (`CLOCK_MONOTONIC` ns).
    pub began_ns: u64,
    /// When the worker saw the child execute its program: the kernel lets
    /// the spawning thread go once the exec has replaced the child's
    /// memory (`CLONE_VFORK`). `None` for a spawn that failed.
    pub executed_ns: Option<u64>,
    /// The kernel reported the exec first ([`Spawner::claim`]): only
    /// `executed_ns` is news.
    pub claimed: bool,
}

/// What the worker hands back.
struct Report {
    job: u64,
    result: Result<u32, SpawnError>,
    executed_ns: u64,
}

/// An order for a worker.
struct Order {
    job: u64,
    spec: Arc<LaunchSpec>,
    slot: Arc<ChildSlot>,
}

struct Worker {
    orders: std_mpsc::Sender<Order>,
}

struct Running {
    job: u64,
    instance: InstanceId,
    uid: u32,
    exe: std::path::PathBuf,
    slot: Arc<ChildSlot>,
    worker: Worker,
    began_ns: u64,
    deadline: Instant,
    /// The child was killed at its deadline.
    killed: bool,
    /// The child's exec was seen: the restart is done, whatever the worker says.
    claimed: bool,
}

/// The restarts waiting and under way.
pub struct Spawner {
    waiting: VecDeque<(u64, Job)>,
    running: Vec<Running>,
    idle: Vec<Worker>,
    next_job: u64,
    next_worker: usize,
    reports: mpsc::UnboundedSender<Report>,
    incoming: mpsc::UnboundedReceiver<Report>,
    /// Outcomes decided here (a child given up on), handed out first.
    decided: VecDeque<Done>,
}

impl Spawner {
    /// A spawner with one worker ready.
    pub fn new() -> Self {
        let (reports, incoming) = mpsc::unbounded_channel();
        let mut spawner = Self {
            waiting: VecDeque::new(),
            running: Vec::new(),
            idle: Vec::new(),
            next_job: 0,
            next_worker: 0,
            reports,
            incoming,
            decided: VecDeque::new(),
        };
        if let Some(worker) = spawner.hire() {
            spawner.idle.push(worker);
        }
        spawner
    }

    /// Queues a restart and starts it if it may run now.
    pub fn submit(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        // Configured entries first, each group in order.
        let at = if job.configured {
            self.waiting
                .iter()
                .position(|(_, j)| !j.configured)
                .unwrap_or(self.waiting.len())
        } else {
            self.waiting.len()
        };
        self.waiting.insert(at, (id, job));
        self.dispatch();
    }

    /// Whether restarts are waiting or under way.
    pub fn is_busy(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Claims the child `pid` as restarted: the kernel reported its exec
    /// before its worker reported the spawn. Returns its instance and when
    /// its spawn began; the worker's report is then ignored.
    pub fn claim(&mut self, pid: u32) -> Option<(InstanceId, u64)> {
        let running =
            (self.running.iter_mut()).find(|r| !r.claimed && r.slot.pid() == Some(pid))?;
        running.claimed = true;
        Some((running.instance, running.began_ns))
    }

    /// The next finished restart.
    pub async fn done(&mut self) -> Done {
        loop {
            if let Some(done) = self.decided.pop_front() {
                return done;
            }
            // The spawner holds a sender itself: the channel never closes.
            let Some(report) = self.incoming.recv().await else {
                return std::future::pending().await;
            };
            if let Some(done) = self.finish(report) {
                return done;
            }
        }
    }

    /// When [`Spawner::expire`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        (self.running.iter())
            .filter(|r| !r.claimed)
            .map(|r| r.deadline)
            .min()
    }

    /// Kills children that hung past their deadline; gives up on those
    /// that do not go after that.
    pub fn expire(&mut self, now: Instant) {
        let mut given_up = Vec::new();
        for (index, running) in self.running.iter_mut().enumerate() {
            if running.deadline > now || running.claimed {
                continue;
            }
            if running.killed {
                given_up.push(index);
                continue;
            }
            running.killed = true;
            running.deadline = now + KILL_GRACE;
            if let Some(pid) = running.slot.take() {
                log::warn!(
                    "restart of {} (pid {pid}, uid {}) did not reach its program within {} s \
                     (a hung mount or file in its working directory, log files or \
                     executable?); killing it and trying again later",
                    running.exe.display(),
                    running.uid,
                    SPAWN_TIMEOUT.as_secs()
                );
                kill(pid);
            }
        }
        for index in given_up.into_iter().rev() {
            let running = self.running.remove(index);
            log::error!(
                "restart of {} (uid {}) is stuck in the kernel after SIGKILL; \
                 leaving its thread to it",
                running.exe.display(),
                running.uid
            );
            // Its worker's orders channel is dropped with it: the thread
            // ends once its spawn returns.
            self.decided.push_back(Done {
                instance: running.instance,
                result: Err(SpawnError::Hung { exe: running.exe }),
                began_ns: monotonic_ns(),
                executed_ns: None,
                claimed: false,
            });
        }
        self.dispatch();
    }

    /// Takes a worker's report: frees its worker and uid for the next job.
    fn finish(&mut self, report: Report) -> Option<Done> {
        let index = self.running.iter().position(|r| r.job == report.job)?;
        let running = self.running.remove(index);
        if self.idle.len() < IDLE_KEPT {
            self.idle.push(running.worker);
        }
        self.dispatch();
        Some(Done {
            instance: running.instance,
            executed_ns: report.result.is_ok().then_some(report.executed_ns),
            result: report.result,
            began_ns: running.began_ns,
            claimed: running.claimed,
        })
    }

    /// Starts every waiting job whose uid has none under way, on an idle
    /// worker or a new one.
    fn dispatch(&mut self) {
        let mut index = 0;
        while index < self.waiting.len() {
            let uid = self.waiting[index].1.spec.uid;
            let uid_busy = self.running.iter().any(|r| r.uid == uid);
            let root_reserve = uid == 0 && !self.running.iter().any(|r| r.uid == 0);
            let room = self.running.len() < MAX_WORKERS || root_reserve;
            if uid_busy || !room {
                index += 1;
                continue;
            }
            let Some(worker) = self.idle.pop().or_else(|| self.hire()) else {
                return;
            };
            let slot = Arc::new(ChildSlot::default());
            let (job, ref queued) = self.waiting[index];
            let order = Order {
                job,
                spec: Arc::clone(&queued.spec),
                slot: Arc::clone(&slot),
            };
            // Before the order goes: the worker may take this CPU at once.
            let began_ns = monotonic_ns();
            if worker.orders.send(order).is_err() {
                // Its thread ended (it cannot, but then: a new one next time).
                return;
            }
            let (job, Job { instance, spec, .. }) =
                self.waiting.remove(index).expect("index in range");
            self.running.push(Running {
                job,
                instance,
                uid,
                exe: spec.exe.clone(),
                slot,
                worker,
                began_ns,
                deadline: Instant::now() + SPAWN_TIMEOUT,
                killed: false,
                claimed: false,
            });
        }
    }

    /// A new worker thread; `None` (logged) if none can be created now.
    fn hire(&mut self) -> Option<Worker> {
        let id = self.next_worker;
        self.next_worker += 1;
        let (orders, inbox) = std_mpsc::channel::<Order>();
        let reports = self.reports.clone();
        let started = std::thread::Builder::new()
            .name(format!("spawn-{id}"))
            .stack_size(WORKER_STACK)
            .spawn(move || work(&inbox, &reports));
        match started {
            Ok(_) => Some(Worker { orders }),
            Err(err) => {
                log::error!("cannot start a thread for restarts: {err}; trying again later");
                None
            }
        }
    }
}

/// A worker: spawns what it is ordered to until its orders channel closes.
fn work(inbox: &std_mpsc::Receiver<Order>, reports: &mpsc::UnboundedSender<Report>) {
    while let Ok(order) = inbox.recv() {
        let result = spawn::spawn(&order.spec, &order.slot);
        let executed_ns = monotonic_ns();
        // The spec goes before the report: the daemon may drop the instance.
        drop(order.spec);
        let report = Report {
            job: order.job,
            result,
            executed_ns,
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

/// SIGKILLs a child that hangs before its exec, through a pidfd.
fn kill(pid: u32) {
    let result = pidfd::open(pid).and_then(|pidfd| pidfd::send(&pidfd, libc::SIGKILL));
    if let Err(err) = result {
        log::warn!("cannot kill the hung restart pid {pid}: {err}");
    }
}
