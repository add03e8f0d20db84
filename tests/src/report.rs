//! The report files the testees append to, parsed into records.

use std::{
    ffi::OsString,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{wait_for, EVENT_TIMEOUT};

/// How one testee process was started: its `start` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Real, effective and saved user id.
    pub uid: [u32; 3],
    /// Real, effective and saved group id.
    pub gid: [u32; 3],
    pub groups: Vec<u32>,
    /// As in `/proc/PID/status`, e.g. `0022`.
    pub umask: String,
    /// Effective capabilities, hex as in `/proc/PID/status`.
    pub capeff: String,
    pub stdout_is_file: bool,
    pub fds: Vec<i32>,
    pub cwd: PathBuf,
    pub exe: PathBuf,
    /// `$TESTEE_MARK`.
    pub mark: Option<OsString>,
    /// `CLOCK_MONOTONIC` when it started, in ns (0 if not recorded).
    pub mono_ns: u64,
    pub argv: Vec<OsString>,
    /// `KEY=VALUE` entries in the order the process got them.
    pub env: Vec<OsString>,
}

/// One line of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Start(Box<Start>),
    /// A forking server's master and the workers it forked.
    Workers {
        master: i32,
        workers: Vec<i32>,
    },
    /// A worker got SIGTERM (and exits 0).
    WorkerTerm(i32),
    /// The process a daemonizing testee left running.
    Daemon(i32),
    /// A line written by a test script: `script PID ARGS…`.
    Script {
        pid: i32,
        args: String,
    },
    /// Anything else, kept for the failure output.
    Other(String),
}

impl Record {
    /// Every pid the record names.
    pub fn pids(&self) -> Vec<i32> {
        match self {
            Record::Start(s) => vec![s.pid],
            Record::Workers { master, workers } => [vec![*master], workers.clone()].concat(),
            Record::WorkerTerm(pid) | Record::Daemon(pid) | Record::Script { pid, .. } => {
                vec![*pid]
            }
            Record::Other(_) => Vec::new(),
        }
    }
}

/// A report file, `$TESTEE_REPORT` of one or more testees.
#[derive(Clone, Debug)]
pub struct Report {
    path: PathBuf,
}

impl Report {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw text (empty if the file does not exist).
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Every complete line, parsed.
    pub fn records(&self) -> Vec<Record> {
        let text = self.text();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete.lines().map(parse_line).collect()
    }

    /// The `start` records, oldest first.
    pub fn starts(&self) -> Vec<Start> {
        self.records()
            .into_iter()
            .filter_map(|r| match r {
                Record::Start(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    /// Waits until there are `n` start records and returns them; panics when
    /// they do not appear within [`EVENT_TIMEOUT`].
    pub fn wait_starts(&self, n: usize) -> Vec<Start> {
        wait_for(EVENT_TIMEOUT, || {
            let starts = self.starts();
            (starts.len() >= n).then_some(starts)
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: expected {n} start records within {EVENT_TIMEOUT:?}, found {}:\n{}",
                self.path.display(),
                self.starts().len(),
                self.text()
            )
        })
    }

    /// Waits for a record `pick` accepts; panics after [`EVENT_TIMEOUT`].
    pub fn wait_record<T>(&self, what: &str, mut pick: impl FnMut(&Record) -> Option<T>) -> T {
        wait_for(EVENT_TIMEOUT, || self.records().iter().find_map(&mut pick)).unwrap_or_else(|| {
            panic!(
                "{}: no {what} record within {EVENT_TIMEOUT:?}:\n{}",
                self.path.display(),
                self.text()
            )
        })
    }

    /// Waits `window` and asserts the number of start records is still `n`:
    /// nothing was restarted.
    pub fn assert_starts_stay(&self, n: usize, window: Duration, why: &str) {
        std::thread::sleep(window);
        let starts = self.starts();
        assert_eq!(
            starts.len(),
            n,
            "{why}: expected {n} start records after {window:?}, found {}:\n{}",
            starts.len(),
            self.text()
        );
    }
}

fn parse_line(line: &str) -> Record {
    let mut words = line.split(' ');
    let parsed = match words.next() {
        Some("start") => parse_start(line).map(|s| Record::Start(Box::new(s))),
        Some("workers") => {
            let pids: Option<Vec<i32>> = words.map(|w| w.parse().ok()).collect();
            pids.filter(|p| !p.is_empty()).map(|p| Record::Workers {
                master: p[0],
                workers: p[1..].to_vec(),
            })
        }
        Some("worker") => {
            let pid = words.next().and_then(|w| w.parse().ok());
            pid.filter(|_| line.ends_with(" got TERM"))
                .map(Record::WorkerTerm)
        }
        Some("daemon") => words
            .next()
            .and_then(|w| w.parse().ok())
            .map(Record::Daemon),
        Some("script") => {
            let pid = words.next().and_then(|w| w.parse().ok());
            pid.map(|pid| Record::Script {
                pid,
                args: words.collect::<Vec<_>>().join(" "),
            })
        }
        _ => None,
    };
    parsed.unwrap_or_else(|| Record::Other(line.to_owned()))
}

fn parse_start(line: &str) -> Option<Start> {
    let field = |name: &str| field(line, name);
    let num = |name: &str| -> Option<i32> { field(name)?.parse().ok() };
    let nums = |name: &str| -> Option<Vec<u32>> {
        field(name)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok())
            .collect()
    };
    let triple = |name: &str| -> Option<[u32; 3]> { nums(name)?.try_into().ok() };
    let strings = |count: &str, name: &str| -> Option<Vec<OsString>> {
        let n: usize = field(count)?.parse().ok()?;
        if n == 0 {
            return Some(Vec::new());
        }
        let items: Option<Vec<_>> = field(name)?.split(',').map(unhex).collect();
        items.filter(|i| i.len() == n)
    };
    Some(Start {
        pid: num("pid")?,
        ppid: num("ppid")?,
        pgid: num("pgid")?,
        sid: num("sid")?,
        uid: triple("uid")?,
        gid: triple("gid")?,
        groups: nums("groups")?,
        umask: field("umask")?.to_owned(),
        capeff: field("capeff")?.to_owned(),
        stdout_is_file: field("stdout")? == "file",
        fds: field("fds")?
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect(),
        cwd: unhex(field("cwd")?)?.into(),
        exe: unhex(field("exe")?)?.into(),
        mark: match field("mark")? {
            "-" => None,
            m => Some(unhex(m.strip_prefix('x')?)?),
        },
        mono_ns: field("mono_ns").and_then(|n| n.parse().ok()).unwrap_or(0),
        argv: strings("argc", "argv")?,
        env: strings("envc", "env")?,
    })
}

/// The value of ` NAME=VALUE` in a start record.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

fn unhex(text: &str) -> Option<OsString> {
    if text.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    Some(OsString::from_vec(bytes?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_record_with_empty_and_binary_args_round_trips() {
        let line =
            "start pid=10 ppid=1 pgid=10 sid=10 uid=65534,65534,65534 gid=1,2,3 groups=100,65534 \
                    umask=0027 capeff=0000000000000000 stdout=file fds=0,1,2 cwd=2f746d70 exe=2f62 \
                    mark=x6869 argc=3 argv=61,,ff envc=0 env=";
        let Record::Start(s) = parse_line(line) else {
            panic!("not a start record")
        };
        assert_eq!(s.pid, 10);
        assert_eq!(s.uid, [65534; 3]);
        assert_eq!(s.groups, vec![100, 65534]);
        assert_eq!(s.cwd, PathBuf::from("/tmp"));
        assert_eq!(s.mark, Some("hi".into()));
        assert_eq!(
            s.argv,
            vec![
                OsString::from("a"),
                OsString::new(),
                OsString::from_vec(vec![0xff])
            ]
        );
        assert!(s.env.is_empty());
    }

    #[test]
    fn other_records_parse() {
        assert_eq!(
            parse_line("workers 5 6 7"),
            Record::Workers {
                master: 5,
                workers: vec![6, 7]
            }
        );
        assert_eq!(parse_line("worker 6 got TERM"), Record::WorkerTerm(6));
        assert_eq!(parse_line("daemon 8"), Record::Daemon(8));
        assert_eq!(
            parse_line("script 9 a b"),
            Record::Script {
                pid: 9,
                args: "a b".into()
            }
        );
        assert_eq!(parse_line("junk"), Record::Other("junk".into()));
    }
}
