use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Instant,
};

use super::*;
use crate::backend::ExecEvent;

/// Above any pid_max (2^22): never in /proc.
const NEVER: u32 = 1 << 23;

#[test]
fn a_process_ends_with_the_datagram_of_its_last_thread() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let _guard = runtime.as_ref().unwrap().enter();
    let mut backend =
        ProcConnectorBackend::open_with(false).expect("the proc connector needs root");
    let (pid, other) = (NEVER, NEVER + 1);
    backend.insert(pid, Some(1), HashSet::from([pid, pid + 5]), None);
    backend.insert(other, None, HashSet::from([other]), None);
    let exit = |tid, tgid, code| Message::Exit {
        tid,
        tgid,
        code,
        ktime_ns: 9,
    };
    let thread = |tid| Message::Fork {
        parent: 1,
        child_pid: tid,
        child_tgid: pid,
    };
    let mut out = Vec::new();
    // The leader ends first, a thread is born, a thread dumps core (SIGABRT).
    let mut handle = |batch: &[Message], out: &mut Vec<Event>| {
        backend.pending.extend(batch);
        backend.handle(out);
    };
    let batch = [exit(pid, pid, 0), thread(pid + 6), exit(pid + 6, pid, 0x86)];
    handle(&batch, &mut out);
    handle(&[exit(other, other, 0x200)], &mut out);
    assert_eq!(exits_of(&out, pid), []);
    handle(&[exit(pid + 5, pid, 0x06)], &mut out);
    let aborted = ExitStatus::Signaled {
        signal: libc::SIGABRT,
        core_dumped: true,
    };
    assert_eq!(exits_of(&out, pid), [aborted]);
    assert_eq!(exits_of(&out, other), [ExitStatus::Exited(2)]);
    assert!(matches!(
        out[1],
        Event::Exit {
            start: Some(1),
            ktime_ns: Some(9),
            ..
        }
    ));
    assert!(backend.watched.is_empty());
}

/// Runs `test` with a backend opened inside a tokio runtime.
fn with_backend(test: impl FnOnce(&mut ProcConnectorBackend)) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let mut backend =
        ProcConnectorBackend::open_with(false).expect("the proc connector needs root");
    test(&mut backend);
}

fn exec_message(pid: u32) -> Message {
    Message::Exec {
        pid,
        tgid: pid,
        ktime_ns: 1,
    }
}

fn fork_message(parent: u32, child: u32) -> Message {
    Message::Fork {
        parent,
        child_pid: child,
        child_tgid: child,
    }
}

#[test]
fn datagrams_after_an_unwatched_exec_wait_until_the_daemon_had_it() {
    with_backend(|backend| {
        let (pid, child) = (NEVER, NEVER + 1);
        backend
            .pending
            .extend([exec_message(pid), fork_message(pid, child)]);
        let mut out = Vec::new();
        backend.handle(&mut out);
        assert!(matches!(out[..], [Event::Exec(ExecEvent { pid: p, .. })] if p == pid));
        assert_eq!(backend.pending.len(), 1, "the fork waits");
        // The daemon watched it meanwhile: its child is followed.
        backend.insert(pid, None, HashSet::from([pid]), None);
        backend.handle(&mut out);
        assert_eq!(children_of(&out, pid), [child]);
    });
}

/// Runs `sh -c SCRIPT`, where SCRIPT starts something in the background
/// and prints `$!`; returns the shell's pid, gone, and that something's
/// (not the test's child: the caller kills it).
fn in_background(script: &str) -> (u32, u32) {
    let mut shell = Command::new("/bin/sh")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    shell.wait().unwrap();
    (shell.id(), line.trim().parse().unwrap())
}

/// Starts `/bin/sleep 30` that is not the test's (armourd's) child;
/// returns its pid once its exec has laid out argv. The caller kills it.
fn orphan_sleep() -> u32 {
    let (_, pid) = in_background("/bin/sleep 30 & echo $!");
    let cmdline = format!("/proc/{pid}/cmdline");
    wait_for("its exec", || {
        fs::read(&cmdline).is_ok_and(|a| a.starts_with(b"/bin/sleep"))
    });
    pid
}

/// Marks `key`, the executable of `pid`, as watched and handles `messages`.
fn handle_with_file(
    backend: &mut ProcConnectorBackend,
    pid: u32,
    key: FileKey,
    messages: impl IntoIterator<Item = Message>,
) -> Vec<Event> {
    let exe = format!("/proc/{pid}/exe");
    backend
        .set_file(key, FileMark::Watched, exe.as_ref())
        .unwrap();
    backend.pending.extend(messages);
    let mut out = Vec::new();
    backend.handle(&mut out);
    out
}

#[test]
fn an_exec_of_a_watched_executable_is_watched_and_handed_over_at_once() {
    let pid = orphan_sleep();
    let key = procfs::exe_key(pid).unwrap();
    with_backend(|backend| {
        let out = handle_with_file(
            backend,
            pid,
            key,
            [exec_message(pid), fork_message(pid, NEVER)],
        );
        // SAFETY: plain syscall on a pid this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let [Event::Exec(exec)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!((exec.pid, exec.file), (pid, Some(key)));
        assert_eq!(exec.argv, Some(vec!["/bin/sleep".into(), "30".into()]));
        assert!(exec.env.is_some() && exec.uid.is_some() && exec.start.is_some());
        assert!(backend.watched.contains_key(&pid) && backend.synced);
        assert_eq!(backend.pending.len(), 1, "the daemon has the exec first");
    });
}

#[test]
fn an_exec_of_armourds_own_child_is_watched_without_reading_how_it_started() {
    let sleeper = Proc::spawn("/bin/sleep", &["30"]);
    let pid = sleeper.pid();
    // A vfork parent goes on before its child's exec has laid out argv.
    let cmdline = format!("/proc/{pid}/cmdline");
    wait_for("its exec", || {
        fs::read(&cmdline).is_ok_and(|a| !a.is_empty())
    });
    let key = procfs::exe_key(pid).unwrap();
    with_backend(|backend| {
        let out = handle_with_file(backend, pid, key, [exec_message(pid)]);
        let [Event::Exec(exec)] = &out[..] else {
            panic!("{out:?}")
        };
        // A restart: the daemon knows how it started.
        assert_eq!((exec.pid, exec.file), (pid, Some(key)));
        assert!(exec.argv.is_none() && exec.env.is_none());
        assert_eq!(exec.start, start_ticks(pid));
        assert!(backend.watched.contains_key(&pid) && backend.synced);
    });
}

#[test]
fn a_watched_exec_gone_at_once_is_reported_as_the_fork_it_left_running() {
    // The shell forks a subshell (no exec: it runs the shell too) and ends.
    let (pid, subshell) = in_background("(while :; do sleep 1; done) & echo $!");
    let key = procfs::exe_key(subshell).unwrap();
    with_backend(|backend| {
        let messages = [exec_message(pid), fork_message(pid, subshell)];
        let out = handle_with_file(backend, subshell, key, messages);
        // The read-ahead takes real datagrams: the subshell's own `sleep`
        // children may be reported too; the exec that stands for `pid` is
        // the one looked for.
        let exec = out.iter().find_map(|event| match event {
            Event::Exec(exec) if exec.pid == pid || exec.pid == subshell => Some(exec.clone()),
            _ => None,
        });
        // SAFETY: plain syscall on a pid this test started.
        unsafe { libc::kill(subshell as i32, libc::SIGKILL) };
        let exec = exec.expect("an exec");
        assert_eq!((exec.pid, exec.file), (subshell, Some(key)));
        let argv = exec.argv.unwrap();
        assert_eq!(
            argv.first().map(|a| a.as_os_str()),
            Some("/bin/sh".as_ref())
        );
        assert!(backend.watched.contains_key(&subshell));
    });
}

/// A child of the test, killed (by pid) and reaped when dropped.
struct Proc(Child);

impl Proc {
    fn spawn(program: &str, args: &[&str]) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .spawn();
        Self(child.unwrap_or_else(|e| panic!("this test needs {program}: {e}")))
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    /// Closes its stdin (the scripts below wait for that) and reaps it.
    fn finish(&mut self) {
        drop(self.0.stdin.take());
        self.0.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens a backend, watches `watched`'s pid (among a thousand others that
/// never exist, so that the kernel runs a large filter), runs `end`, and
/// reads until `done` holds for the events (or fails after 10 s), then for
/// `linger`.
fn events(
    mut watched: Proc,
    end: impl FnOnce(&mut Proc),
    linger: Duration,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut backend =
            ProcConnectorBackend::open_with(false).expect("the proc connector needs root");
        (0..1000).for_each(|i| backend.insert(NEVER + i, None, HashSet::new(), None));
        backend.watch(watched.pid()).unwrap();
        assert!(backend.exact);
        end(&mut watched);
        let mut events = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while !done(&events) {
                backend.read(&mut events).await.unwrap();
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("timed out; read {events:?}"));
        let more = async {
            loop {
                backend.read(&mut events).await.unwrap();
            }
        };
        let _ = tokio::time::timeout(linger, more).await;
        let left: Vec<_> = backend.watched.keys().filter(|&&p| p < NEVER).collect();
        assert!(left.is_empty(), "still watched: {left:?}");
        events
    })
}

/// The ends of `of` the events report, or what `/proc` showed of it
/// settles (as the daemon does, by the rules of `race`).
fn exits_of(events: &[Event], of: u32) -> Vec<ExitStatus> {
    let exits = events.iter().filter_map(|event| match *event {
        Event::Exit { pid, status, .. } if pid == of => Some(status),
        Event::Ending(seen) if seen.pid == of => {
            let mut endings = crate::race::Endings::default();
            let ended = endings.settle(vec![seen], |_| false, std::time::Instant::now());
            ended.first().map(|ended| ended.status)
        }
        _ => None,
    });
    exits.collect()
}

fn children_of(events: &[Event], of: u32) -> Vec<u32> {
    let forks = events.iter().filter_map(|event| match *event {
        Event::Fork { parent, child, .. } if parent == of => Some(child),
        _ => None,
    });
    forks.collect()
}

fn has_ended(pid: u32) -> impl Fn(&[Event]) -> bool {
    move |events| !exits_of(events, pid).is_empty()
}

#[test]
fn a_watched_exit_passes_and_an_unwatched_one_is_dropped() {
    let watched = Proc::spawn("/bin/sh", &["-c", "read x; exit 4"]);
    let mut other = Proc::spawn("/bin/sh", &["-c", "read x; exit 0"]);
    let (pid, other_pid) = (watched.pid(), other.pid());
    // The unwatched one ends first: had it passed, it would be read first.
    let end = |watched: &mut Proc| {
        other.finish();
        watched.finish();
    };
    let events = events(watched, end, Duration::ZERO, has_ended(pid));
    assert_eq!(exits_of(&events, pid), [ExitStatus::Exited(4)]);
    assert_eq!(exits_of(&events, other_pid), []);
    assert_eq!(
        children_of(&events, std::process::id()),
        [0u32; 0],
        "forks of unwatched processes"
    );
    let exit = events
        .iter()
        .find(|e| matches!(e, Event::Exit { pid: p, .. } if *p == pid));
    assert!(matches!(
        exit,
        Some(Event::Exit {
            start: Some(_),
            ktime_ns: Some(_),
            ..
        })
    ));
}

#[test]
fn execs_are_reported_and_forked_children_are_watched() {
    let parent = Proc::spawn(
        "/bin/sh",
        &["-c", "read x; (exit 5); /bin/sh -c 'exit 3'; exit $?"],
    );
    let pid = parent.pid();
    let events = events(parent, Proc::finish, Duration::ZERO, has_ended(pid));
    let children = children_of(&events, pid);
    let &[subshell, exec] = children.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(exits_of(&events, subshell), [ExitStatus::Exited(5)]);
    let execs = |e: &Event| matches!(e, Event::Exec(x) if x.pid == exec && x.ktime_ns.is_some());
    assert!(events.iter().any(execs), "{events:?}");
    assert_eq!(exits_of(&events, exec), [ExitStatus::Exited(3)]);
    assert_eq!(exits_of(&events, pid), [ExitStatus::Exited(3)]);
}

#[test]
fn a_double_fork_is_followed() {
    // The middle process forks and ends at once, before the filter holds it.
    let parent = Proc::spawn("/bin/sh", &["-c", "read x; ( /bin/sleep 0.2 & ); exit 0"]);
    let pid = parent.pid();
    let grandchild = |events: &[Event]| {
        let middle = children_of(events, pid).first().copied()?;
        children_of(events, middle).first().copied()
    };
    let done = |events: &[Event]| grandchild(events).is_some_and(|g| has_ended(g)(events));
    let events = events(parent, Proc::finish, Duration::ZERO, done);
    assert_eq!(
        exits_of(&events, grandchild(&events).unwrap()),
        [ExitStatus::Exited(0)]
    );
}

#[test]
fn a_grandchild_ending_before_the_filter_holds_its_parent_ends() {
    let parent = Proc::spawn(
        "/bin/sh",
        &["-c", "read x; ( (exit 7); /bin/sleep 0.1 ); exit 0"],
    );
    let pid = parent.pid();
    let events = events(
        parent,
        Proc::finish,
        Duration::from_millis(200),
        has_ended(pid),
    );
    let middle = children_of(&events, pid)[0];
    let &[grandchild] = children_of(&events, middle).as_slice() else {
        panic!("{events:?}")
    };
    // Read, or found in /proc as a zombie, or already reaped.
    let exits = exits_of(&events, grandchild);
    assert!(
        matches!(exits[..], [ExitStatus::Exited(7) | ExitStatus::Unknown]),
        "{exits:?}"
    );
}

const PYTHON: &str = "/usr/bin/python3";

/// Worker threads: two end at once, four sleep; the process ends (by
/// `exit_group`) with 3 when its stdin closes.
const THREADS: &str = "import os, sys, threading, time
for _ in range(2): threading.Thread(target=time.sleep, args=(0,)).start()
for _ in range(4): threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()
sys.stdin.read()
os._exit(3)";

/// The leader ends first (`pthread_exit`); a worker ends the process with 3.
const LEADER_FIRST: &str = "import ctypes, os, sys, threading, time
def last():
    sys.stdin.read()
    os._exit(3)
threading.Thread(target=last).start()
for _ in range(3): threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()
ctypes.CDLL(None).pthread_exit(None)";

fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a Python `script` that reaches five threads, ends it with `end`,
/// and returns the exits reported for it.
fn multithreaded_exits(script: &str, end: impl FnOnce(&mut Proc)) -> Vec<ExitStatus> {
    let python = Proc::spawn(PYTHON, &["-c", script]);
    let pid = python.pid();
    let tasks = move || fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    wait_for("five threads", || tasks() == 5);
    let linger = Duration::from_millis(300); // a second exit would come now
    exits_of(&events(python, end, linger, has_ended(pid)), pid)
}

#[test]
fn a_multithreaded_exit_is_reported_once_with_its_code() {
    let exits = multithreaded_exits(THREADS, Proc::finish);
    assert_eq!(exits, [ExitStatus::Exited(3)]);
}

#[test]
fn a_multithreaded_kill_is_reported_once_with_its_signal() {
    let exits = multithreaded_exits(THREADS, |python| {
        python.0.kill().unwrap();
        python.0.wait().unwrap();
    });
    let killed = ExitStatus::Signaled {
        signal: libc::SIGKILL,
        core_dumped: false,
    };
    assert_eq!(exits, [killed]);
}

#[test]
fn a_leader_ending_first_is_reported_when_its_last_thread_ends() {
    let exits = multithreaded_exits(LEADER_FIRST, |python| {
        let leader = format!("/proc/{}/stat", python.pid());
        wait_for("the leader to end", || {
            procfs::parse_task_state(&fs::read_to_string(&leader).unwrap_or_default())
                .is_some_and(|s| s.state == b'Z')
        });
        python.finish();
    });
    assert_eq!(exits, [ExitStatus::Exited(3)]);
}

/// A copy of `/bin/sleep` in a directory of its own, removed when dropped.
struct Copy {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Copy {
    fn of_sleep(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("armourd-fan-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::copy("/bin/sleep", &path).unwrap();
        Self { dir, path }
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Reads events of a backend with fanotify, which marks `file`, while
/// `sh -c script` runs, until `done` holds for them (or 10 s pass).
fn fanotify_events(
    file: &Copy,
    script: &str,
    done: impl Fn(u32, &[Event]) -> bool,
) -> (u32, Vec<Event>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut backend =
            ProcConnectorBackend::open_with(true).expect("the proc connector needs root");
        assert!(backend.has_fanotify(), "fanotify needs CAP_SYS_ADMIN");
        let key = crate::files::file_key(&file.path).unwrap();
        backend
            .set_file(key, FileMark::Watched, &file.path)
            .unwrap();
        let mut shell = Proc::spawn("/bin/sh", &["-c", script]);
        let pid = shell.pid();
        drop(shell.0.stdin.take()); // it starts; killed as it drops
        let mut events = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while !done(pid, &events) {
                backend.read(&mut events).await.unwrap();
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("timed out; read {events:?}"));
        (pid, events)
    })
}

fn execs(events: &[Event]) -> Vec<(u32, Option<FileKey>)> {
    let execs = events.iter().filter_map(|event| match event {
        Event::Exec(exec) => Some((exec.pid, exec.file)),
        _ => None,
    });
    execs.collect()
}

#[test]
fn with_fanotify_only_execs_of_marked_files_pass() {
    let file = Copy::of_sleep("marked");
    let key = crate::files::file_key(&file.path).unwrap();
    let trues = file.dir.join("trues");
    let script = format!(
        "read x; for i in 1 2 3 4 5; do /bin/true & echo $! >> {}; wait; done; exec {} 5",
        trues.display(),
        file.path.display()
    );
    let done = |pid, events: &[Event]| execs(events).contains(&(pid, Some(key)));
    let (_, events) = fanotify_events(&file, &script, done);
    let trues: Vec<u32> = (fs::read_to_string(&trues).unwrap().lines())
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(trues.len(), 5);
    // The unwatched execs of the five /bin/true were dropped in the
    // kernel. (The shell and other tests' children are this process's:
    // their execs pass, as a restart's do.)
    let execs = execs(&events);
    assert!(!execs.iter().any(|(p, _)| trues.contains(p)), "{execs:?}");
}

#[test]
fn with_fanotify_an_exec_through_a_symlink_is_seen() {
    let file = Copy::of_sleep("target");
    let key = crate::files::file_key(&file.path).unwrap();
    let link = file.dir.join("link");
    std::os::unix::fs::symlink(&file.path, &link).unwrap();
    let script = format!("read x; exec {} 5", link.display());
    let done = |pid, events: &[Event]| execs(events).contains(&(pid, Some(key)));
    fanotify_events(&file, &script, done);
}
