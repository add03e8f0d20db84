//! testee: the one program the integration tests run under armourd's watch.
//!
//! Its behaviour is chosen by environment variables, so argv stays free for
//! the argv tests:
//!
//! - `TESTEE_REPORT`: a file to which it appends, in one `write` per line,
//!   a `start …` record describing how it was started (ids, groups, umask,
//!   cwd, argv, environment, descriptors…) and the other records below.
//! - `TESTEE_MODE`: `sleep` (default), `fork-workers=N` (forks N workers
//!   without exec; they record `worker PID got TERM` on SIGTERM and exit 0;
//!   the master records `workers MASTER W1 W2 …`), `daemon1` (forks once,
//!   the parent exits 0, the child records `daemon PID`), `daemon2` (forks,
//!   the child calls setsid and forks again, parent and intermediate exit 0,
//!   the grandchild records `daemon PID`).
//! - `TESTEE_MODE=exit`: exits with `TESTEE_EXIT_CODE` at once, unless the
//!   file named by `TESTEE_RUN_IF` exists (then it sleeps).
//! - `TESTEE_DAEMONIZE_WHEN`: `daemon1` and `daemon2` fork once the file it
//!   names exists (instead of after a short pause).
//! - `TESTEE_REAP=1`: run as `testee PROGRAM ARGS…`, it becomes a child
//!   subreaper, runs PROGRAM as its child and reaps every process that
//!   ends below it at once (as a busy init does); it writes no record.
//! - `TESTEE_EXIT_CODE`: the exit code on SIGUSR1 (default 3).
//! - `TESTEE_CORE=1`: raise RLIMIT_CORE to unlimited so a fatal signal dumps core.
//! - `TESTEE_MARK`: recorded (hex) in the start record, to prove env is kept.
//!
//! It also writes `started PID` to stdout so a stdout file can be checked
//! for append. std and libc only.

use std::{
    ffi::OsStr,
    fs::OpenOptions,
    io::Write,
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
};

static EXIT_CODE: AtomicI32 = AtomicI32::new(3);
static GOT_TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    // Only async-signal-safe calls here.
    // SAFETY: _exit is async-signal-safe and takes no pointer.
    unsafe { libc::_exit(EXIT_CODE.load(Ordering::Relaxed)) }
}

extern "C" fn on_term(_: libc::c_int) {
    GOT_TERM.store(true, Ordering::Relaxed);
}

fn main() {
    if std::env::var_os("TESTEE_REAP").is_some() {
        reap();
    }
    if let Some(code) = std::env::var("TESTEE_EXIT_CODE")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        EXIT_CODE.store(code, Ordering::Relaxed);
    }
    if std::env::var_os("TESTEE_CORE").is_some_and(|v| v == "1") {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: `unlimited` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &unlimited) } != 0 {
            eprintln!(
                "testee: setrlimit(RLIMIT_CORE): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    // Rust's runtime catches SIGSEGV and SIGBUS to report stack overflows;
    // a SIGSEGV sent with kill(2) must kill the testee like any program.
    // SAFETY: restoring the default action of a signal; no pointer, no handler.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
    set_handler(libc::SIGUSR1, on_usr1);

    if std::env::var_os("TESTEE_REPORT").is_some() {
        append(&start_record());
    }
    let started = format!("started {}\n", std::process::id());
    // Ignore errors: stdout may be closed or a broken pipe.
    // SAFETY: the pointer and length are those of `started`, alive during the call.
    unsafe { libc::write(1, started.as_ptr().cast(), started.len()) };

    let mode = std::env::var("TESTEE_MODE").unwrap_or_else(|_| "sleep".into());
    match mode.as_str() {
        "sleep" => sleep_forever(),
        "exit" => exit_at_once(),
        "daemon1" => daemon1(),
        "daemon2" => daemon2(),
        _ => match mode
            .strip_prefix("fork-workers=")
            .and_then(|n| n.parse().ok())
        {
            Some(n) => fork_workers(n),
            None => {
                eprintln!("testee: unknown TESTEE_MODE {mode:?}");
                std::process::exit(64);
            }
        },
    }
}

fn set_handler(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction is valid; `handler` is an extern "C" fn that only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// Appends one line to `$TESTEE_REPORT` in a single `write`, so lines of
/// concurrent writers never interleave.
fn append(line: &str) {
    let Some(path) = std::env::var_os("TESTEE_REPORT") else {
        return;
    };
    let mut line = line.to_owned();
    line.push('\n');
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o666)
        .open(&path);
    match file.and_then(|mut f| f.write(line.as_bytes())) {
        Ok(n) if n == line.len() => {}
        Ok(n) => eprintln!("testee: short write to report: {n} of {}", line.len()),
        Err(e) => eprintln!("testee: cannot append to {}: {e}", path.to_string_lossy()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_list<'a>(items: impl Iterator<Item = &'a [u8]>) -> String {
    items.map(hex).collect::<Vec<_>>().join(",")
}

/// `start pid=… ppid=… pgid=… sid=… uid=R,E,S gid=R,E,S groups=… umask=…
/// capeff=… stdout=file|other fds=… cwd=HEX exe=HEX mark=-|xHEX argc=N
/// argv=HEX,… envc=N env=HEX,…`
fn start_record() -> String {
    let (mut ruid, mut euid, mut suid) = (0, 0, 0);
    let (mut rgid, mut egid, mut sgid) = (0, 0, 0);
    // SAFETY: the pointers are to local integers that outlive the calls.
    unsafe {
        libc::getresuid(&mut ruid, &mut euid, &mut suid);
        libc::getresgid(&mut rgid, &mut egid, &mut sgid);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let status_field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| "?".into())
    };
    let cwd = std::env::current_dir()
        .map(|d| hex(d.as_os_str().as_bytes()))
        .unwrap_or_default();
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|d| hex(d.as_os_str().as_bytes()))
        .unwrap_or_default();
    let mark = match std::env::var_os("TESTEE_MARK") {
        Some(m) => format!("x{}", hex(m.as_bytes())),
        None => "-".into(),
    };
    let argv: Vec<_> = std::env::args_os().collect();
    let env: Vec<Vec<u8>> = std::env::vars_os()
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
        .collect();
    format!(
        "start pid={} ppid={} pgid={} sid={} uid={ruid},{euid},{suid} gid={rgid},{egid},{sgid} \
         groups={} umask={} capeff={} stdout={} fds={} cwd={cwd} exe={exe} mark={mark} \
         mono_ns={} argc={} argv={} envc={} env={}",
        std::process::id(),
        // SAFETY: getppid takes nothing and cannot fail.
        unsafe { libc::getppid() },
        // SAFETY: getpgrp takes nothing and cannot fail.
        unsafe { libc::getpgrp() },
        // SAFETY: getsid(0) asks about this process; no pointer.
        unsafe { libc::getsid(0) },
        groups()
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        status_field("Umask:"),
        status_field("CapEff:"),
        if stdout_is_file() { "file" } else { "other" },
        open_fds()
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        monotonic_ns(),
        argv.len(),
        hex_list(argv.iter().map(|a| OsStr::as_bytes(a))),
        env.len(),
        hex_list(env.iter().map(Vec::as_slice)),
    )
}

fn groups() -> Vec<u32> {
    // SAFETY: a count of 0 with a null list only asks for the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut list = vec![0; n.max(0) as usize];
    // SAFETY: `list` has room for `n` entries.
    let n = unsafe { libc::getgroups(n, list.as_mut_ptr()) };
    list.truncate(n.max(0) as usize);
    list
}

fn stdout_is_file() -> bool {
    // SAFETY: a zeroed `stat` is a valid value of a plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a local that outlives the call.
    unsafe { libc::fstat(1, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG }
}

/// Open descriptors, probed with `fcntl` so that probing opens none.
fn open_fds() -> Vec<i32> {
    (0..1024)
        // SAFETY: F_GETFD on a descriptor number; no pointer.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect()
}

/// `CLOCK_MONOTONIC` now, in ns: when the process started, for tests that
/// look at the spacing of restarts.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a local that outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// `TESTEE_MODE=exit`: exits with `TESTEE_EXIT_CODE` at once (a crash
/// loop), unless the file `$TESTEE_RUN_IF` exists: then it sleeps.
fn exit_at_once() -> ! {
    let runs = std::env::var_os("TESTEE_RUN_IF").is_some_and(|p| std::path::Path::new(&p).exists());
    if !runs {
        std::process::exit(EXIT_CODE.load(Ordering::Relaxed));
    }
    sleep_forever()
}

fn sleep_forever() -> ! {
    loop {
        // SAFETY: pause takes nothing.
        unsafe { libc::pause() };
    }
}

/// A forking server: the master forks `n` workers without exec. Workers get
/// the SIGTERM handler and a blocked SIGTERM from before the fork, so a
/// SIGTERM sent at any time after the `workers` record is recorded.
fn fork_workers(n: usize) -> ! {
    // SAFETY: a zeroed sigset_t is a valid (then emptied) set.
    let mut term: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a zeroed sigset_t is a valid set.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the sets are locals that outlive the calls.
    unsafe {
        libc::sigemptyset(&mut term);
        libc::sigaddset(&mut term, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &term, &mut old);
    }
    set_handler(libc::SIGTERM, on_term);
    let mut workers = Vec::new();
    for _ in 0..n {
        // SAFETY: the testee is single-threaded here: the child may run any code.
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            0 => worker(&old),
            pid => workers.push(pid),
        }
    }
    // SAFETY: `old` is the mask saved above; restoring the default action takes no pointer.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    let pids: Vec<_> = workers.iter().map(i32::to_string).collect();
    append(&format!(
        "workers {} {}",
        std::process::id(),
        pids.join(" ")
    ));
    sleep_forever()
}

fn worker(unblocked: &libc::sigset_t) -> ! {
    while !GOT_TERM.load(Ordering::Relaxed) {
        // Atomically unblocks SIGTERM and waits: no lost wake-up.
        // SAFETY: `unblocked` is a valid set that outlives the call.
        unsafe { libc::sigsuspend(unblocked) };
    }
    append(&format!("worker {} got TERM", std::process::id()));
    // SAFETY: _exit takes no pointer; the worker has nothing to flush.
    unsafe { libc::_exit(0) }
}

fn fork_or_die() -> libc::pid_t {
    // SAFETY: the testee is single-threaded: the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        panic!("fork: {}", std::io::Error::last_os_error());
    }
    pid
}

/// Real daemons read their configuration before they detach. A program
/// that detaches within microseconds of its exec can outrun the proc
/// connector backend, which must look at /proc to learn what was executed
/// (a limitation the README states); this pause keeps the tests about
/// following daemons, not about that race.
fn start_up() {
    let Some(when) = std::env::var_os("TESTEE_DAEMONIZE_WHEN") else {
        std::thread::sleep(std::time::Duration::from_millis(100));
        return;
    };
    while !std::path::Path::new(&when).exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `TESTEE_REAP`: runs argv[1..] as a child and reaps everything that ends
/// below this process, until nothing is left.
fn reap() -> ! {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        panic!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut args = std::env::args_os().skip(1);
    let program = args.next().expect("TESTEE_REAP: no program to run");
    let spawned = (std::process::Command::new(&program))
        .args(args)
        .env_remove("TESTEE_REAP")
        .spawn();
    if let Err(e) = spawned {
        panic!("TESTEE_REAP: cannot run {program:?}: {e}");
    }
    loop {
        let mut status = 0;
        // SAFETY: waits for any child; `status` outlives the call.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
        {
            std::process::exit(0);
        }
    }
}

fn daemon1() -> ! {
    start_up();
    if fork_or_die() != 0 {
        // SAFETY: _exit takes no pointer; the parent has nothing to flush.
        unsafe { libc::_exit(0) }
    }
    append(&format!("daemon {}", std::process::id()));
    sleep_forever()
}

fn daemon2() -> ! {
    start_up();
    if fork_or_die() != 0 {
        // SAFETY: _exit takes no pointer; the parent has nothing to flush.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: setsid takes no pointer.
    unsafe { libc::setsid() };
    if fork_or_die() != 0 {
        // SAFETY: _exit takes no pointer; the parent has nothing to flush.
        unsafe { libc::_exit(0) }
    }
    append(&format!("daemon {}", std::process::id()));
    sleep_forever()
}
