//! How far a process is in ending, from the `stat` files of its threads
//! (`/proc/PID/task/TID/stat`, proc(5)). A thread sets `PF_EXITING` (field
//! 9) when it enters `do_exit`, passes the `sched_process_exit` tracepoint,
//! then turns into a zombie (`Z`) in `exit_notify`, and the proc connector
//! reports it after that ([`exit.c`]). Field 52, the wait status of an
//! ended task, needs Linux 3.5+.
//!
//! [`exit.c`]: https://github.com/torvalds/linux/blob/master/kernel/exit.c

use std::{collections::HashSet, fs};

/// `PF_EXITING` of `include/linux/sched.h`.
const PF_EXITING: u64 = 0x4;

/// What a task's `stat` says about its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskState {
    /// The state letter (`R`, `S`, `Z`, …).
    pub state: u8,
    /// It has entered `do_exit`.
    pub exiting: bool,
    /// Start time in clock ticks after boot (field 22).
    pub start_ticks: u64,
    /// Its wait status once it ended (field 52).
    pub exit_code: Option<u32>,
}

impl TaskState {
    /// It ended (`Z`) or is being reaped (`X`).
    pub fn dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X')
    }

    /// It has neither ended nor begun to.
    pub fn running(&self) -> bool {
        !self.dead() && !self.exiting
    }
}

/// Parses the text of a task's `stat`.
pub fn parse_task_state(text: &str) -> Option<TaskState> {
    let fields = super::stat_fields(text)?;
    let flags: u64 = fields.get(6)?.parse().ok()?;
    Some(TaskState {
        state: *fields.first()?.as_bytes().first()?,
        exiting: flags & PF_EXITING != 0,
        start_ticks: fields.get(19)?.parse().ok()?,
        exit_code: fields.get(49).and_then(|code| code.parse().ok()),
    })
}

fn read(path: &str) -> Option<TaskState> {
    parse_task_state(&fs::read_to_string(path).ok()?)
}

/// The state of process `pid`'s leader, if it is the process that started
/// at `start_ticks` (when known).
fn leader(pid: u32, start_ticks: Option<u64>) -> Option<TaskState> {
    let leader = read(&format!("/proc/{pid}/stat"))?;
    // Else reaped, and the pid recycled.
    start_ticks
        .is_none_or(|start| start == leader.start_ticks)
        .then_some(leader)
}

/// The states of process `pid`'s threads, by thread id.
fn threads(pid: u32) -> impl Iterator<Item = (u32, TaskState)> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks.flatten().filter_map(move |task| {
        let tid: u32 = task.file_name().to_str()?.parse().ok()?;
        Some((tid, read(&format!("/proc/{pid}/task/{tid}/stat"))?))
    })
}

/// The threads of process `pid` (started at `start_ticks`, when known)
/// that have not ended; those in `do_exit` count.
pub fn live_threads(pid: u32, start_ticks: Option<u64>) -> HashSet<u32> {
    if leader(pid, start_ticks).is_none() {
        return HashSet::new();
    }
    let live = threads(pid).filter(|(_, state)| !state.dead());
    live.map(|(tid, _)| tid).collect()
}

/// How far a process is in ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A thread has not begun to exit.
    Running,
    /// Every thread has begun to exit, and one has not finished.
    Exiting,
    /// Ended, a zombie not yet reaped, with its wait status.
    Ended(Option<u32>),
    /// Reaped, or it never was.
    Gone,
}

/// How far process `pid` (started at `start_ticks`, when known) is in ending.
pub fn ending(pid: u32, start_ticks: Option<u64>) -> Ending {
    let Some(leader) = leader(pid, start_ticks) else {
        return Ending::Gone;
    };
    if leader.running() {
        return Ending::Running;
    }
    let mut ended = leader.dead();
    for (_, state) in threads(pid) {
        if state.running() {
            return Ending::Running;
        }
        ended &= state.dead();
    }
    match leader.state {
        b'Z' if ended => Ending::Ended(leader.exit_code),
        b'X' => Ending::Gone,
        _ => Ending::Exiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stat` of a task in state `state` with flags `flags`, started at 55,
    /// ended with wait status 9 (SIGKILL).
    fn stat(state: char, flags: u64) -> String {
        let mut fields = vec!["0".to_owned(); 50];
        fields[0] = state.to_string();
        fields[6] = flags.to_string();
        fields[19] = "55".into();
        fields[49] = "9".into();
        format!("42 (a (b) c) {}", fields.join(" "))
    }

    #[test]
    fn a_thread_in_do_exit_is_exiting_not_running() {
        let state = parse_task_state(&stat('R', 0x40_0044)).unwrap();
        assert!(state.exiting && !state.dead() && !state.running());
        assert_eq!((state.start_ticks, state.exit_code), (55, Some(9)));
        assert!(parse_task_state(&stat('S', 0x40_0040)).unwrap().running());
    }

    #[test]
    fn a_zombie_is_dead_with_its_wait_status() {
        let state = parse_task_state(&stat('Z', 0x40_0044)).unwrap();
        assert!(state.dead() && !state.running());
        assert_eq!(state.exit_code, Some(9));
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert_eq!(parse_task_state("42 (a) R 1 2 3"), None);
    }

    #[test]
    fn this_process_runs_and_a_missing_one_is_gone() {
        let pid = std::process::id();
        assert_eq!(ending(pid, None), Ending::Running);
        assert!(live_threads(pid, None).contains(&pid));
        // Above the kernel's pid limit (PID_MAX_LIMIT is 2^22).
        assert_eq!(ending(1 << 23, None), Ending::Gone);
        assert!(live_threads(1 << 23, None).is_empty());
    }
}
