use std::{ffi::OsString, path::PathBuf};

use super::*;
use crate::{spawn::SpawnError, status::SuccessSet};

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
fn an_exec_of_the_program_a_leader_runs_needs_nothing_read_unless_it_was_adopted() {
    let mut s = supervisor();
    let t = Instant::now();
    let food = Path::new("/usr/sbin/food");
    s.exec(exec(100, 7, false), t);
    assert!(s.leads_running(100, Some(7), 0, food));
    assert!(s.leads_running(100, None, 0, food));
    assert!(!s.leads_running(100, Some(8), 0, food), "another process");
    assert!(!s.leads_running(100, Some(7), 1, food), "another entry");
    assert!(!s.leads_running(100, Some(7), 0, Path::new("/usr/sbin/bard")));
    assert!(!s.leads_running(101, Some(7), 0, food));
    let adopted = Exec {
        adopted: true,
        ..exec(300, 9, false)
    };
    s.exec(adopted, t);
    assert!(
        !s.leads_running(300, Some(9), 0, food),
        "its exec tells how it started"
    );
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
    // It crashes in turn after a healthy run: restarted again at once.
    let later = t + RestartPolicy::DEFAULT_STABLE_AFTER;
    assert_eq!(spawns(&s.exit(200, Some(11), SEGV, later)), [id]);
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
fn watched_program_executing_another_watched_program_is_an_instance_of_the_second() {
    let mut s = Supervisor::new(vec![Policy::default(), Policy::default()]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let bard = LaunchSpec::minimal(
        PathBuf::from("/usr/sbin/bard"),
        vec![OsString::from("bard"), OsString::from("-x")],
    );
    let second = Exec {
        entry: Some(1),
        spec: bard.clone(),
        ..exec(100, 7, false)
    };
    let actions = s.exec(second, t);
    assert!(actions.contains(&Action::Notify(Notice::Unwatched {
        pid: 100,
        exe: PathBuf::from("/usr/sbin/food"),
        reason: "it executed another watched program",
    })));
    assert!(actions.contains(&Action::Watch(100)));
    let views: Vec<_> = s.instances().map(|v| (v.pid, v.spec.exe.clone())).collect();
    assert_eq!(views, [(100, PathBuf::from("/usr/sbin/bard"))]);
    let actions = s.exit(100, Some(7), SEGV, t);
    let restarts: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { spec, .. } => Some((**spec).clone()),
            _ => None,
        })
        .collect();
    assert_eq!(restarts, [bard]);
}

#[test]
fn failed_restart_is_retried_later_through_the_backoff() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let id = spawns(&s.exit(100, Some(7), SEGV, t))[0];
    let actions = s.spawned(
        id,
        Err(SpawnError::Exec {
            exe: "/usr/bin/x".into(),
            step: "execve",
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        }),
        t,
    );
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
fn an_unseen_end_hands_off_to_the_chosen_fork() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    s.fork(100, proc(101, 8));
    s.fork(101, proc(102, 9));
    s.fork(100, proc(103, 10));
    assert_eq!(
        s.forked_by(100),
        [proc(101, 8), proc(103, 10), proc(102, 9)],
        "nearest first"
    );
    assert_eq!(s.forked_by(101), [proc(102, 9)]);
    let actions = s.handed_off(100, Some(7), 102, t);
    assert!(spawns(&actions).is_empty() && signals(&actions).is_empty());
    assert!(actions.contains(&Action::Notify(Notice::HandedOff {
        from: 100,
        to: 102,
        exe: PathBuf::from("/usr/sbin/food"),
    })));
    assert_eq!(s.instances().next().unwrap().pid, 102);
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

fn policy(restart: RestartPolicy) -> Policy {
    Policy {
        restart,
        name: "/usr/sbin/food".into(),
        ..Policy::default()
    }
}

fn hooks(actions: &[Action]) -> Vec<HookRun> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Hook(run) => Some(run.clone()),
            _ => None,
        })
        .collect()
}

/// Crashes the instance's current process `n` times in a row, each
/// restart spawned when due; the times of the spawns.
fn crash_loop(s: &mut Supervisor, t: Instant, n: u32) -> Vec<Duration> {
    let mut now = t;
    let mut pid = 100;
    let mut spawned_at = Vec::new();
    for _ in 0..n {
        let mut actions = s.exit(pid, None, ExitStatus::Exited(3), now);
        if spawns(&actions).is_empty() {
            let Some(due) = s.next_deadline() else {
                break;
            };
            now = due;
            actions = s.tick(now);
        }
        let Some(&id) = spawns(&actions).first() else {
            break;
        };
        spawned_at.push(now - t);
        pid += 1;
        s.spawned(id, Ok(pid), now);
    }
    spawned_at
}

#[test]
fn crash_loop_restarts_at_once_then_backs_off_doubling() {
    let mut s = Supervisor::new(vec![policy(RestartPolicy::default())]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let ms = Duration::from_millis;
    assert_eq!(
        crash_loop(&mut s, t, 5),
        [ms(0), ms(100), ms(300), ms(700), ms(1500)]
    );
    let view = s.instances().next().unwrap();
    assert_eq!((view.restarts, view.crash_streak), (5, 5));
}

#[test]
fn backoff_state_says_when_the_restart_is_due() {
    let mut s = Supervisor::new(vec![policy(RestartPolicy::default())]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let id = spawns(&s.exit(100, Some(7), SEGV, t))[0];
    s.spawned(id, Ok(101), t);
    let actions = s.exit(101, None, SEGV, t);
    assert!(spawns(&actions).is_empty());
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Notify(Notice::BackingOff { streak: 2, .. }))));
    let view = s.instances().next().unwrap();
    let due = t + Duration::from_millis(100);
    assert_eq!(view.state, State::Backoff { deadline: due });
    assert_eq!(view.next_restart, Some(due));
    assert_eq!(s.next_deadline(), Some(due));
}

#[test]
fn give_up_fails_the_instance_until_reset() {
    let mut s = Supervisor::new(vec![policy(RestartPolicy {
        give_up: Some(GiveUp {
            crashes: 3,
            window: Duration::from_secs(60),
        }),
        ..RestartPolicy::default()
    })]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    assert_eq!(
        crash_loop(&mut s, t, 10).len(),
        2,
        "the third crash gives up"
    );
    let view = s.instances().next().unwrap();
    assert_eq!(view.state, State::Failed);
    let hour = Duration::from_secs(3600);
    assert!(spawns(&s.tick(t + hour)).is_empty(), "stays down");
    let (count, actions) = s.reset(&Selector::Pid(view.pid), t);
    assert_eq!(count, 1);
    assert_eq!(spawns(&actions), [view.id]);
    assert_eq!(s.instances().next().unwrap().crash_streak, 0);
}

#[test]
fn giving_up_says_so_once_with_the_crash_count() {
    let mut s = Supervisor::new(vec![policy(RestartPolicy {
        give_up: Some(GiveUp {
            crashes: 1,
            window: Duration::from_secs(60),
        }),
        ..RestartPolicy::default()
    })]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let actions = s.exit(100, Some(7), SEGV, t);
    assert!(spawns(&actions).is_empty());
    assert!(actions.contains(&Action::Notify(Notice::Failed {
        pid: 100,
        exe: PathBuf::from("/usr/sbin/food"),
        crashes: 1,
    })));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Notify(Notice::Exited {
            will_restart: false,
            ..
        })
    )));
    assert_eq!(s.instances().count(), 1, "a failed instance is kept");
}

#[test]
fn reset_by_executable_restarts_every_failed_instance_of_it() {
    let mut s = Supervisor::new(vec![policy(RestartPolicy {
        give_up: Some(GiveUp {
            crashes: 1,
            window: Duration::from_secs(60),
        }),
        ..RestartPolicy::default()
    })]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    s.exec(exec(200, 8, false), t);
    s.exit(100, Some(7), SEGV, t);
    s.exit(200, Some(8), SEGV, t);
    let (count, actions) = s.reset(&Selector::Exe("/usr/sbin/food".into()), t);
    assert_eq!((count, spawns(&actions).len()), (2, 2));
    let (count, _) = s.reset(&Selector::Exe("/usr/sbin/other".into()), t);
    assert_eq!(count, 0);
}

#[test]
fn on_crash_hook_is_told_about_the_crash_and_does_not_replace_the_restart() {
    let mut s = Supervisor::new(vec![Policy {
        on_crash: Some("logger crashed".into()),
        ..policy(RestartPolicy::default())
    }]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let actions = s.exit(100, Some(7), SEGV, t);
    assert_eq!(spawns(&actions).len(), 1);
    let [run] = &hooks(&actions)[..] else {
        panic!("one hook in {actions:?}");
    };
    assert_eq!(
        (run.kind, run.event, run.pid, run.status, run.restarts),
        (HookKind::OnCrash, HookEvent::Crashed, 100, SEGV, 0)
    );
    assert_eq!(&*run.command, "logger crashed");
    assert_eq!(&*run.key, "/usr/sbin/food");
}

#[test]
fn on_crash_hook_hears_of_giving_up() {
    let mut s = Supervisor::new(vec![Policy {
        on_crash: Some("true".into()),
        ..policy(RestartPolicy {
            give_up: Some(GiveUp {
                crashes: 1,
                window: Duration::from_secs(1),
            }),
            ..RestartPolicy::default()
        })
    }]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let runs = hooks(&s.exit(100, Some(7), SEGV, t));
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].event, HookEvent::GaveUp);
}

#[test]
fn clean_end_runs_no_hook() {
    let mut s = Supervisor::new(vec![Policy {
        on_crash: Some("true".into()),
        ..policy(RestartPolicy::default())
    }]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    assert!(hooks(&s.exit(100, Some(7), TERM, t)).is_empty());
}

fn recovering() -> (Supervisor, Instant, Vec<Action>) {
    let mut s = Supervisor::new(vec![Policy {
        recover: Some("/etc/init.d/food restart".into()),
        ..policy(RestartPolicy::default())
    }]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let actions = s.exit(100, Some(7), SEGV, t);
    (s, t, actions)
}

#[test]
fn recover_command_replaces_the_restart_and_its_process_takes_over() {
    let (mut s, t, actions) = recovering();
    assert!(spawns(&actions).is_empty());
    let runs = hooks(&actions);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].kind, HookKind::Recover);
    assert_eq!(&*runs[0].command, "/etc/init.d/food restart");
    // The init script starts the program: an exec of the watched file.
    let actions = s.exec(exec(300, 9, true), t);
    assert!(actions.contains(&Action::Notify(Notice::Restarted {
        old_pid: 100,
        new_pid: 300,
        exe: PathBuf::from("/usr/sbin/food"),
        restarts: 1,
    })));
    assert_eq!(s.instances().count(), 1, "no new instance");
    assert!(s.is_watched(300));
    let view = s.instances().next().unwrap();
    assert_eq!((view.state, view.crash_streak), (State::Running, 1));
}

#[test]
fn recover_command_that_starts_nothing_counts_as_a_failed_restart() {
    let (mut s, t, actions) = recovering();
    let id = hooks(&actions)[0].instance;
    assert_eq!(s.next_deadline(), None, "waits while the command runs");
    s.recover_ended(id, t);
    let due = t + RECOVER_GRACE;
    assert_eq!(s.next_deadline(), Some(due));
    let actions = s.tick(due);
    assert!(matches!(
        &actions[..],
        [Action::Notify(Notice::RestartFailed { .. })]
    ));
    let Some(State::Backoff { deadline }) = s.instances().next().map(|v| v.state) else {
        panic!("not backing off");
    };
    let runs = hooks(&s.tick(deadline));
    assert_eq!(runs[0].kind, HookKind::Recover, "tried again");
}

#[test]
fn reload_lets_removed_entries_go_and_keeps_the_counters_of_others() {
    let mut s = Supervisor::new(vec![Policy::default(), Policy::default()]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let mut other = exec(200, 8, false);
    other.entry = Some(1);
    s.exec(other, t);
    let id = spawns(&s.exit(200, Some(8), SEGV, t))[0];
    s.spawned(id, Ok(201), t);
    // Entry 0 is gone; entry 1 is now the first, with give-up.
    let changed = policy(RestartPolicy {
        give_up: Some(GiveUp {
            crashes: 1,
            window: Duration::from_secs(1),
        }),
        ..RestartPolicy::default()
    });
    let actions = s.reconfigure(vec![changed], &[None, Some(0)], t);
    assert!(actions.contains(&Action::Unwatch(100)));
    assert!(signals(&actions).is_empty(), "its process keeps running");
    assert!(!s.is_watched(100));
    let view = s.instances().next().unwrap();
    assert_eq!((view.pid, view.entry, view.restarts), (201, Some(0), 1));
    // The new options apply to the running instance at once.
    let later = t + Duration::from_secs(60);
    assert!(spawns(&s.exit(201, None, SEGV, later)).is_empty());
    assert_eq!(s.instances().next().unwrap().state, State::Failed);
}

#[test]
fn reload_lets_a_failed_instance_start_again() {
    let give_up = policy(RestartPolicy {
        give_up: Some(GiveUp {
            crashes: 1,
            window: Duration::from_secs(1),
        }),
        ..RestartPolicy::default()
    });
    let mut s = Supervisor::new(vec![give_up.clone()]);
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    s.exit(100, Some(7), SEGV, t);
    let actions = s.reconfigure(vec![give_up], &[Some(0)], t);
    assert_eq!(spawns(&actions).len(), 1);
}

#[test]
fn a_spawn_outcome_after_its_process_came_and_went_changes_nothing() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(exec(100, 7, false), t);
    let id = spawns(&s.exit(100, Some(7), SEGV, t))[0];
    // Its exec was reported first, then it crashed at once.
    s.spawned(id, Ok(200), t);
    s.exit(200, None, SEGV, t);
    // The spawn's own outcome arrives late.
    assert!(s.spawned(id, Ok(200), t).is_empty());
    assert!(!s.is_watched(200));
    let view = s.instances().next().unwrap();
    assert_eq!(view.restarts, 1);
    assert!(matches!(view.state, State::Backoff { .. }));
}

#[test]
fn adopted_leader_is_known_until_its_exec_is_reported() {
    let mut s = supervisor();
    let t = Instant::now();
    s.exec(
        Exec {
            adopted: true,
            ..exec(100, 7, false)
        },
        t,
    );
    assert!(s.adopted_leader(100, Some(7)));
    assert!(!s.adopted_leader(100, Some(8)), "another process, same pid");
    assert!(!s.adopted_leader(101, Some(7)));
    s.exec(exec(100, 7, false), t);
    assert!(!s.adopted_leader(100, Some(7)), "its exec was reported");
}
