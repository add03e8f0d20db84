//! What `GetProcesses` and `ListProcesses` say about the watched processes,
//! and how it goes into and comes out of D-Bus values.

use std::collections::{BTreeMap, HashMap};

use zbus::{OwnedVariant, Variant};

use super::DbusError;

/// The states a watched process can be in, as `GetProcesses` names them.
pub const STATES: [&str; 4] = ["running", "restarting", "backoff", "failed"];

/// One watched process, as `GetProcesses` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: i32,
    pub exe: String,
    /// The command line, decoded lossily as UTF-8.
    pub argv: Vec<String>,
    /// One of [`STATES`] (`unknown` when a newer daemon sent something else).
    pub state: &'static str,
    pub restarts: u32,
    /// The last exit code, or -1 when the process has not exited by itself.
    pub last_exit_code: i32,
    /// The signal that ended the process last, or 0.
    pub last_signal: i32,
    pub last_core_dumped: bool,
    /// Since when the process has been in `state`, in µs since the Unix epoch.
    pub since_us: u64,
    /// Crashes in a row since it last ran for `stable-after`.
    pub crash_streak: u32,
    /// In state `backoff`: when the next restart is due, in µs since the
    /// Unix epoch; else 0.
    pub next_restart_us: u64,
}

impl ProcessInfo {
    /// The `a{sv}` that `GetProcesses` sends for this process.
    pub fn to_dict(&self) -> HashMap<&'static str, Variant<'static>> {
        HashMap::from([
            ("pid", Variant::from(self.pid)),
            ("exe", Variant::from(self.exe.clone())),
            ("argv", Variant::from(self.argv.clone())),
            ("state", Variant::from(self.state)),
            ("restarts", Variant::from(self.restarts)),
            ("last_exit_code", Variant::from(self.last_exit_code)),
            ("last_signal", Variant::from(self.last_signal)),
            ("last_core_dumped", Variant::from(self.last_core_dumped)),
            ("since", Variant::from(self.since_us)),
            ("crash_streak", Variant::from(self.crash_streak)),
            ("next_restart", Variant::from(self.next_restart_us)),
        ])
    }

    /// Reads back one entry of `GetProcesses`.
    pub fn from_dict(dict: &HashMap<String, OwnedVariant>) -> Result<Self, DbusError> {
        let state: String = field(dict, "state")?;
        Ok(Self {
            pid: field(dict, "pid")?,
            exe: field(dict, "exe")?,
            argv: field(dict, "argv")?,
            state: STATES
                .into_iter()
                .find(|s| *s == state)
                .unwrap_or("unknown"),
            restarts: field(dict, "restarts")?,
            last_exit_code: field(dict, "last_exit_code")?,
            last_signal: field(dict, "last_signal")?,
            last_core_dumped: field(dict, "last_core_dumped")?,
            since_us: field(dict, "since")?,
            // Older daemons do not send these.
            crash_streak: field(dict, "crash_streak").unwrap_or(0),
            next_restart_us: field(dict, "next_restart").unwrap_or(0),
        })
    }
}

fn field<T>(dict: &HashMap<String, OwnedVariant>, key: &'static str) -> Result<T, DbusError>
where
    T: TryFrom<OwnedVariant>,
{
    dict.get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
        .ok_or(DbusError::BadEntry { key })
}

/// The value `ListProcesses` gives an executable: its pid, or its pids when
/// several instances run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pids {
    One(i32),
    Many(Vec<i32>),
}

impl From<Pids> for Variant<'static> {
    fn from(pids: Pids) -> Self {
        match pids {
            Pids::One(pid) => Variant::from(pid),
            Pids::Many(pids) => Variant::from(pids),
        }
    }
}

/// Groups the running processes by executable for `ListProcesses`; a
/// process that is restarting, backing off or given up has no live pid.
pub fn group_by_exe(processes: &[ProcessInfo]) -> BTreeMap<String, Pids> {
    let mut by_exe: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for p in processes.iter().filter(|p| p.state == "running") {
        by_exe.entry(p.exe.clone()).or_default().push(p.pid);
    }
    by_exe
        .into_iter()
        .map(|(exe, mut pids)| {
            pids.sort_unstable();
            let value = match pids[..] {
                [pid] => Pids::One(pid),
                _ => Pids::Many(pids),
            };
            (exe, value)
        })
        .collect()
}
