use std::{ffi::OsString, path::PathBuf};

use super::*;

const SEGV: ExitStatus = ExitStatus::Signaled {
    signal: libc::SIGSEGV,
    core_dumped: false,
};
const TERM: ExitStatus = ExitStatus::Signaled {
    signal: libc::SIGTERM,
    core_dumped: false,
};

fn spec() -> LaunchSpec {
    LaunchSpec::minimal(
        PathBuf::from("/usr/sbin/food"),
        vec![OsString::from("food"), OsString::from("-f")],
    )
}

fn proc(pid: u32, start: u64) -> ProcId {
    ProcId {
        pid,
        start: Some(start),
    }
}

fn exec(pid: u32, start: u64, leads_group: bool) -> Exec {
    Exec {
        proc: proc(pid, start),
        entry: Some(0),
        spec: spec(),
        leads_group,
        adopted: false,
    }
}

fn supervisor() -> Supervisor {
    Supervisor::new(vec![Policy::default()])
}

fn spawns(actions: &[Action]) -> Vec<InstanceId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { instance, .. } => Some(*instance),
            _ => None,
        })
        .collect()
}

fn signals(actions: &[Action]) -> Vec<(Target, i32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { target, signal } => Some((*target, *signal)),
            _ => None,
        })
        .collect()
}

#[test]
fn crash_restarts_at_once_with_the_captured_spec() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let actions = s.exit(100, Some(7), SEGV, t);
    let Some(Action::Spawn { spec: restart, .. }) =
        actions.iter().find(|a| matches!(a, Action::Spawn { .. }))
    else {
        panic!("no restart in {actions:?}");
    };
    assert_eq!(**restart, spec());
    assert!(actions.contains(&Action::Notify(Notice::Exited {
        pid: 100,
        exe: PathBuf::from("/usr/sbin/food"),
        status: SEGV,
        will_restart: true,
    })));
}

#[test]
fn clean_end_is_not_restarted_and_forgets_the_instance() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let actions = s.exit(100, Some(7), TERM, t);
    assert!(spawns(&actions).is_empty());
    assert!(actions.contains(&Action::Unwatch(100)));
    assert_eq!(s.instances().count(), 0);
}

#[test]
fn success_option_makes_an_exit_code_clean() {
    let mut success = SuccessSet::empty();
    success.add_code(3);
    let mut s = Supervisor::new(vec![Policy {
        success,
        ..Policy::default()
    }]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    assert!(spawns(&s.exit(100, Some(7), ExitStatus::Exited(3), t)).is_empty());
    s.exec(exec(101, 8, false), t);
    // exit 0 is no longer in the list
    assert_eq!(
        spawns(&s.exit(101, Some(8), ExitStatus::Exited(0), t)).len(),
        1
    );
}

#[test]
fn recycled_pid_never_restarts_anything() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    // Another process that got pid 100 later (start time 9) ends.
    assert!(s.exit(100, Some(9), SEGV, t).is_empty());
    assert!(s.is_watched(100));
}

#[test]
fn unwatched_process_is_never_restarted() {
    let mut s = supervisor();
    assert!(s.exit(555, Some(1), SEGV, Instant::now()).is_empty());
}

#[test]
fn spawned_restart_is_watched_and_its_exec_is_not_a_new_instance() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let id = spawns(&s.exit(100, Some(7), SEGV, t))[0];
    let actions = s.spawned(id, Ok(200), t);
    assert!(actions.contains(&Action::Watch(200)));
    assert!(actions.contains(&Action::Notify(Notice::Restarted {
        old_pid: 100,
        new_pid: 200,
        exe: PathBuf::from("/usr/sbin/food"),
        restarts: 1,
    })));
    let mut again = exec(200, 11, false);
    again.spec.argv.push(OsString::from("ignored"));
    assert!(s.exec(again, t).is_empty());
    assert_eq!(s.instances().count(), 1);
    let view = s.instances().next().unwrap();
    assert_eq!((view.pid, view.restarts), (200, 1));
    assert_eq!(*view.spec, spec(), "the restart command stays the original");
    // It crashes in turn: restarted again.
    assert_eq!(spawns(&s.exit(200, Some(11), SEGV, t)), [id]);
}

#[test]
fn exec_seen_after_adoption_replaces_the_spec_read_from_proc() {
    let mut s = supervisor();
    let t = Instant::now();
    // Adopted in the middle of its exec: no command line in /proc yet.
    let mut adopted = exec(100, 7, false);
    adopted.adopted = true;
    adopted.spec.argv.clear();
    s.exec(adopted, t);
    assert_eq!(s.exec(exec(100, 7, false), t), []);
    // Executing itself again later keeps the spec it has.
    let mut again = exec(100, 7, false);
    again.spec.argv.push("--again".into());
    assert_eq!(s.exec(again, t), []);
    let actions = s.exit(100, Some(7), SEGV, t);
    let restart = actions.iter().find_map(|a| match a {
        Action::Spawn { spec, .. } => Some(spec.argv.clone()),
        _ => None,
    });
    assert_eq!(restart, Some(spec().argv));
}

#[test]
fn failed_restart_is_retried_later() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let id = spawns(&s.exit(100, Some(7), SEGV, t))[0];
    let actions = s.spawned(id, Err("execve: No such file or directory".into()), t);
    assert!(matches!(
        &actions[..],
        [Action::Notify(Notice::RestartFailed { .. })]
    ));
    assert_eq!(s.next_deadline(), Some(t + RETRY_DELAY));
    assert!(s.tick(t + RETRY_DELAY / 2).is_empty());
    assert_eq!(spawns(&s.tick(t + RETRY_DELAY)), [id]);
}

#[test]
fn leftovers_are_terminated_before_the_restart() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, true), t);
    s.fork(100, proc(101, 8));
    s.fork(100, proc(102, 8));
    let actions = s.exit(100, Some(7), SEGV, t);
    assert!(spawns(&actions).is_empty(), "waits for the workers");
    let sent = signals(&actions);
    assert!(sent.contains(&(Target::Process(proc(101, 8)), libc::SIGTERM)));
    assert!(sent.contains(&(Target::Group(proc(100, 7)), libc::SIGTERM)));
    assert!(spawns(&s.exit(101, Some(8), TERM, t)).is_empty());
    assert_eq!(spawns(&s.exit(102, Some(8), TERM, t)).len(), 1);
}

#[test]
fn leftovers_get_sigkill_after_the_stop_timeout() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, true), t);
    s.fork(100, proc(101, 8));
    s.exit(100, Some(7), SEGV, t);
    let timeout = Policy::default().stop_timeout;
    assert_eq!(s.next_deadline(), Some(t + timeout));
    let actions = s.tick(t + timeout);
    assert!(signals(&actions).contains(&(Target::Process(proc(101, 8)), libc::SIGKILL)));
    assert!(signals(&actions).contains(&(Target::Group(proc(100, 7)), libc::SIGKILL)));
    assert!(spawns(&actions).is_empty());
    assert_eq!(
        spawns(&s.exit(101, Some(8), ExitStatus::from_wait_status(9), t)).len(),
        1
    );
}

#[test]
fn single_fork_daemon_hands_the_watch_to_its_child() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    s.fork(100, proc(101, 8));
    let actions = s.exit(100, Some(7), ExitStatus::Exited(0), t);
    assert!(actions.contains(&Action::Notify(Notice::HandedOff {
        from: 100,
        to: 101,
        exe: PathBuf::from("/usr/sbin/food"),
    })));
    let id = spawns(&s.exit(101, Some(8), SEGV, t));
    assert_eq!(
        id.len(),
        1,
        "the daemon's crash restarts the original command"
    );
}

#[test]
fn double_fork_daemon_is_followed_to_the_grandchild() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    s.fork(100, proc(101, 8));
    s.exit(100, Some(7), ExitStatus::Exited(0), t);
    s.fork(101, proc(102, 9));
    s.exit(101, Some(8), ExitStatus::Exited(0), t);
    assert_eq!(s.instances().next().unwrap().pid, 102);
    assert_eq!(spawns(&s.exit(102, Some(9), SEGV, t)).len(), 1);
}

#[test]
fn member_executing_a_watched_file_is_a_new_instance() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    s.fork(100, proc(101, 8));
    s.exec(exec(101, 8, false), t);
    assert_eq!(s.instances().count(), 2);
    // The first instance's crash does not wait for the new one.
    assert_eq!(spawns(&s.exit(100, Some(7), SEGV, t)).len(), 1);
}

#[test]
fn member_executing_another_program_leaves_the_instance() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    s.fork(100, proc(101, 8));
    assert_eq!(s.exec_other(101), [Action::Unwatch(101)]);
    // No heir any more: a clean end forgets the instance.
    s.exit(100, Some(7), ExitStatus::Exited(0), t);
    assert_eq!(s.instances().count(), 0);
}

#[test]
fn a_process_the_kernel_cannot_hold_is_no_longer_watched() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    s.fork(100, proc(101, 8));
    // A member leaves its instance; the leader stays watched.
    assert_eq!(s.unheld(101), [Action::Unwatch(101)]);
    assert!(!s.is_watched(101) && s.is_watched(100));
    // A leader leaves too, without a notice, and its idle instance goes.
    assert_eq!(s.unheld(100), [Action::Unwatch(100)]);
    assert_eq!(s.instances().count(), 0);
    assert!(s.unheld(100).is_empty());
}

#[test]
fn unknown_end_after_lost_events_counts_as_a_crash() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    assert_eq!(spawns(&s.exit(100, None, ExitStatus::Unknown, t)).len(), 1);
}

#[test]
fn unwatch_keeps_processes_running_and_forgets_them() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    s.fork(100, proc(101, 8));
    let actions = s.unwatch(101).expect("watched");
    assert!(signals(&actions).is_empty());
    assert!(actions.contains(&Action::Unwatch(100)));
    assert!(!s.is_watched(100));
    assert!(s.unwatch(100).is_none());
}
