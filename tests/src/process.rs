//! Looking at and signalling processes by pid, through `/proc` and `kill(2)`.
//! Never by name: tests run in parallel and must touch only their own.

use std::path::Path;

/// Sends `signal` to `pid`; false if there is no such process.
pub fn kill(pid: i32, signal: i32) -> bool {
    assert!(pid > 0, "refusing to signal pid {pid}");
    // SAFETY: kill takes no pointer; `pid` is checked positive, so no group is hit.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`, …) and the parent
/// pid, or `None` when the process is gone.
pub fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse
    // after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is running (exists and is neither a zombie nor dead).
pub fn is_alive(pid: i32) -> bool {
    matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X' && state != 'x')
}

fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// A kernel thread (`PF_KTHREAD` in the flags of `/proc/PID/stat`): a
/// process with no executable.
pub fn kernel_thread() -> Option<i32> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    all_pids().into_iter().find(|pid| {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let flags = text.rfind(')').and_then(|end| {
            text[end + 1..]
                .split_whitespace()
                .nth(6)?
                .parse::<u64>()
                .ok()
        });
        flags.is_some_and(|f| f & PF_KTHREAD != 0)
    })
}

/// Zombie children of `parent`: processes it has not reaped.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| matches!(stat(pid), Some(('Z', ppid)) if ppid == parent))
        .collect()
}

/// Live processes that belong to the directory `dir`: their executable is in
/// it or their command line names something in it (scripts run by an
/// interpreter). This process itself is never included.
pub fn living_under(dir: &Path) -> Vec<i32> {
    let mut prefix = dir.as_os_str().as_encoded_bytes().to_vec();
    prefix.push(b'/');
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && is_alive(pid))
        .filter(|&pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.into_os_string().into_encoded_bytes())
                .unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            exe.starts_with(&prefix) || contains(&cmdline, &prefix)
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
