//! The seed inputs of each fuzz target: a few real-looking files of `/proc`,
//! configuration files, and records and datagrams as the kernel writes them,
//! built from `armourd-common`'s types and the proc connector's layout. They
//! are written afresh before every run, so they follow the types.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use armourd_common::{
    EventKind, ExecRecord, ExitRecord, FileKey, ForkRecord, Header, SpawnedRecord, ARGS_MAX,
    ENV_MAX, EXEC_INTERPRETER, EXEC_WAS_WATCHED, EXEC_WATCHED_FILE, FILENAME_MAX,
};

/// Writes the seeds of `target` into the folder `dir`, which is emptied first.
pub fn write(target: &str, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("could not empty {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let seeds = match target {
        "config" => config(),
        "ebpf_record" => ebpf_record(),
        "netlink" => netlink(),
        "procfs" => procfs(),
        "state" => state(),
        _ => Vec::new(),
    };
    for (name, bytes) in seeds {
        let path = dir.join(name);
        fs::write(&path, bytes).with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

type Seeds = Vec<(&'static str, Vec<u8>)>;

/// State files as armourd writes them, and a few it must refuse.
fn state() -> Seeds {
    let text = |name, text: &str| (name, text.as_bytes().to_vec());
    vec![
        text(
            "state",
            "armourd-state 1\nboot 6c1f2a0e-8d7b-4c55-9a51-0f1d6f7c3b2a\n\
             instance pid=812 start=1934 dev=8:1 ino=393231 by=- restarts=2 streak=1 \
             crashes=51873000000,51874000000 exe=/usr/sbin/food\n\
             instance pid=9 start=0 dev=0:42 ino=7 by=1000 restarts=0 streak=0 crashes=- \
             exe=/opt/my%20app/x%3D%25%FF\n",
        ),
        text("empty", "armourd-state 1\nboot 1\n"),
        text("newer", "armourd-state 2\nboot 1\n"),
        text(
            "cut",
            "armourd-state 1\nboot 1\ninstance pid=1 start=2 dev=8:1 ino=3 by=- re",
        ),
    ]
}

fn config() -> Seeds {
    let text = |name, text: &str| (name, text.as_bytes().to_vec());
    vec![
        text(
            "armourd.conf",
            "# Watched executables, one per line.\n\
             /usr/sbin/food\n\
             /usr/sbin/bard success=0,3,TERM stop-timeout=10s\n\
             \"/opt/my app/bin/server\" stop-timeout=1.5s\n\
             /opt/*/bin/worker-[0-9]* success=SIGHUP,2 # comment\n\
             \t/usr/local/bin/\"a \\\"quoted\\\" name\"   stop-timeout=250ms\n\
             \n\
             /srv/[!.]*/run?.sh stop-timeout=2m success=sigint\n",
        ),
        text("bad-list.conf", "/usr/bin/a success=0,,TERM\n"),
        text("bad-path.conf", "usr/bin/a\n"),
        text("bad-quote.conf", "\"/usr/bin/a b\n"),
        text(
            "bad-duration.conf",
            "/usr/bin/a stop-timeout=5\n/usr/bin/b stop-timeout=1.s\n",
        ),
        text("bad-glob.conf", "/usr/bin/[a\n"),
        text("bad-option.conf", "/usr/bin/a success=0 success=1 =2 foo\n"),
        (
            "not-utf8.conf",
            b"/usr/bin/\xff\xfe success=0\r\n/x\0y\n".to_vec(),
        ),
    ]
}

fn procfs() -> Seeds {
    let text = |name, text: &str| (name, text.as_bytes().to_vec());
    vec![
        text(
            "stat",
            "1234 (sshd) S 1 1234 1234 0 -1 4194560 1536 0 0 0 3 5 0 0 20 0 1 0 1520 \
             15872000 2048 18446744073709551615 1 1 0 0 0 0 0 4096 81925 0 0 0 17 1 0 0 \
             0 0 0 0 0 0 0 0 0 0 0\n",
        ),
        text(
            "stat-zombie",
            "4321 (a (b) Z c) Z 77 4321 4321 0 -1 4228108 90 0 0 0 0 0 0 0 20 0 1 0 98765 \
             0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 \
             0 139\n",
        ),
        text(
            "stat-exiting",
            "99 (worker) R 98 98 1 34816 98 4194372 0 0 0 0 0 0 0 0 20 0 3 0 5 0 0 0\n",
        ),
        text(
            "status",
            "Name:\tfood\nUmask:\t0027\nState:\tS (sleeping)\nTgid:\t1234\nPid:\t1234\n\
             PPid:\t1\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n\
             FDSize:\t64\nGroups:\t4 24 27 100 \nThreads:\t1\n",
        ),
        text(
            "status-old",
            "Name:\tx\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n",
        ),
        (
            "cmdline",
            b"/usr/bin/python3\0-m\0http.server\0\0--bind\0::\0".to_vec(),
        ),
        (
            "environ",
            b"PATH=/usr/bin:/bin\0HOME=/root\0LANG=C.UTF-8\0".to_vec(),
        ),
        text("shebang", "#!/bin/sh -e\necho hello\n"),
        text("shebang-env", "#!  /usr/bin/env python3\nprint()\n"),
        text("fd-file", "/var/log/food.log"),
        text("fd-deleted", "/tmp/out.log (deleted)"),
        text("fd-pipe", "pipe:[40212]"),
        text("fd-tty", "/dev/pts/3"),
    ]
}

/// The ebpf_record target's first byte: how the record is laid out.
const PADDED: u8 = 1 << 1;
const MISALIGNED: u8 = 1;

fn ebpf_record() -> Seeds {
    let header = |kind: EventKind, tgid| Header {
        kind: kind as u32,
        tgid,
        start_boottime_ns: 12_345_670_000_000,
        ktime_ns: 12_400_000_000_000,
    };
    let exit = ExitRecord {
        header: header(EventKind::Exit, 4242),
        status: 0x8b, // SIGSEGV, core dumped
        _pad: 0,
    };
    let fork = ForkRecord {
        header: header(EventKind::Fork, 4243),
        parent_tgid: 4242,
        _pad: 0,
    };
    let mut exec = ExecRecord {
        header: header(EventKind::Exec, 4244),
        file: FileKey::new(1_048_601, 8, 1),
        uid: 1000,
        gid: 100,
        flags: EXEC_WATCHED_FILE,
        args_len: 0,
        env_len: 0,
        filename_len: 0,
        filename: [0; FILENAME_MAX],
        args: [0; ARGS_MAX],
        env: [0; ENV_MAX],
    };
    exec.args_len = fill(&mut exec.args, b"/usr/sbin/food\0-f\0\0--port=80\0");
    exec.env_len = fill(&mut exec.env, b"PATH=/usr/bin\0LANG=C\0");
    let mut script = exec;
    script.flags = EXEC_INTERPRETER | EXEC_WAS_WATCHED;
    script.filename_len = fill(&mut script.filename, b"/usr/local/bin/run.sh");
    script.args_len = fill(&mut script.args, b"/bin/sh\0/usr/local/bin/run.sh\0");
    script.env_len = 0;
    let record = |layout: u8, bytes: Vec<u8>| {
        let mut seed = vec![layout];
        seed.extend(bytes);
        // Padding puts back the zeros an exec record ends with.
        if layout & PADDED != 0 {
            let end = seed.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            seed.truncate(end);
        }
        seed
    };
    vec![
        ("exit", record(0, bytes_of(&exit))),
        ("fork", record(0, bytes_of(&fork))),
        (
            "spawned",
            record(
                0,
                bytes_of(&SpawnedRecord {
                    header: header(EventKind::Spawned, 4245),
                    file: FileKey::new(1_048_601, 8, 1),
                    uid: 0,
                    gid: 0,
                }),
            ),
        ),
        ("exec", record(PADDED, bytes_of(&exec))),
        ("exec-whole", record(0, bytes_of(&exec))),
        (
            "exec-misaligned",
            record(PADDED | MISALIGNED, bytes_of(&exec)),
        ),
        ("exec-script", record(PADDED, bytes_of(&script))),
        (
            "header-only",
            record(0, bytes_of(&header(EventKind::Exit, 1))),
        ),
    ]
}

/// Copies `value` into the start of `area`; returns its length.
fn fill(area: &mut [u8], value: &[u8]) -> u32 {
    area[..value.len()].copy_from_slice(value);
    value.len() as u32
}

/// The bytes of a record as the kernel half writes it.
fn bytes_of<T: Copy>(record: &T) -> Vec<u8> {
    // SAFETY: the records are repr(C) integers and integer arrays with
    // explicit padding, so every byte of them is initialised.
    let bytes = unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), size_of::<T>())
    };
    bytes.to_vec()
}

/// `enum what` of the proc connector's `struct proc_event`.
const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// One netlink message of the proc connector (`linux/connector.h`,
/// `linux/cn_proc.h`): `nlmsghdr`, `cn_msg`, then `proc_event` with `data`
/// as its union.
fn proc_event(what: u32, ack: u32, data: &[u32]) -> Vec<u8> {
    let event_len = 16 + 4 * data.len();
    let len = 16 + 20 + event_len;
    let mut message = Vec::with_capacity(len);
    message.extend((len as u32).to_ne_bytes()); // nlmsg_len
    message.extend((libc::NLMSG_DONE as u16).to_ne_bytes()); // nlmsg_type
    message.extend(0u16.to_ne_bytes()); // nlmsg_flags
    message.extend(7u32.to_ne_bytes()); // nlmsg_seq
    message.extend(0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    for word in [1, 1, 7, ack] {
        message.extend(u32::to_ne_bytes(word)); // cb_id.idx, cb_id.val, seq, ack
    }
    message.extend((event_len as u16).to_ne_bytes()); // len
    message.extend(0u16.to_ne_bytes()); // flags
    message.extend(what.to_ne_bytes());
    message.extend(1u32.to_ne_bytes()); // cpu
    message.extend(12_400_000_000_000u64.to_ne_bytes()); // timestamp_ns
    data.iter()
        .for_each(|word| message.extend(word.to_ne_bytes()));
    message
}

fn netlink() -> Seeds {
    let fork = proc_event(PROC_EVENT_FORK, 0, &[4242, 4242, 4243, 4243]);
    let thread = proc_event(PROC_EVENT_FORK, 0, &[4242, 1, 4250, 4242]);
    let exec = proc_event(PROC_EVENT_EXEC, 0, &[4243, 4243]);
    let exit = proc_event(PROC_EVENT_EXIT, 0, &[4243, 4243, 0x8b, 17, 4242, 4242]);
    let mut several = fork.clone();
    several.extend(&exit);
    let mut foreign = exec.clone();
    foreign[16..20].copy_from_slice(&2u32.to_ne_bytes()); // another connector
    vec![
        ("ack", proc_event(PROC_EVENT_NONE, 0x1234_5679, &[0])),
        ("fork", fork),
        ("fork-thread", thread),
        ("exec", exec),
        ("exit", exit),
        ("several", several),
        ("foreign", foreign),
    ]
}
