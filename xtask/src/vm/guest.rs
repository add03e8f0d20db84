//! The guest side: the `/init` script the initramfs runs (busybox `sh`)
//! and the parser of what it prints on the serial console. Every line the
//! host acts on starts with [`MARK`]; the test binaries' own output
//! (`test result: …`) is read between `begin` and `end` marks.

use std::fmt::Write as _;

/// The prefix of the lines the guest's init prints for the host.
pub const MARK: &str = "armourd-vm:";
/// Where the init script finds the daemon and the test binaries.
pub const ARMOURD: &str = "/armourd/armourd";
pub const TESTS_DIR: &str = "/armourd/tests";
pub const MODULES_DIR: &str = "/armourd/modules";

/// What one boot does.
pub enum Plan {
    /// The eBPF load check, the ebpf suite, the fallback tests (eBPF
    /// capabilities dropped), then with the kernel's BTF hidden the
    /// `--backend auto` fall-back and the proc-connector suite.
    Suites {
        /// Test binaries run per backend, with the tests each runs.
        suite: Vec<Selection>,
        /// The fallback tests' binary (all its tests), when the guest can run them.
        fallback: Option<String>,
    },
    /// One watchdog check against the softdog module (see [`Watchdog`]).
    Watchdog(Watchdog),
}

/// One test binary (a file name in [`TESTS_DIR`]) and which of its tests a
/// backend runs.
#[derive(Clone, Debug)]
pub struct Selection {
    pub binary: String,
    /// The scenarios (test names without the backend's module) both
    /// backends run; `None`: every test of the binary.
    pub tests: Option<Vec<String>>,
    /// Scenarios of `tests` the proc-connector suite leaves out.
    pub not_proc_connector: Vec<String>,
}

impl Selection {
    /// Every test of `binary` on both backends.
    pub fn all(binary: &str) -> Selection {
        Selection {
            binary: binary.to_owned(),
            tests: None,
            not_proc_connector: Vec::new(),
        }
    }

    /// The libtest arguments that run this selection's tests of `module`
    /// (`ebpf` or `proc_connector`); `None` when that backend runs none.
    fn filter(&self, module: &str) -> Option<String> {
        let Some(tests) = &self.tests else {
            return Some(format!("{module}::"));
        };
        let names: Vec<String> = tests
            .iter()
            .filter(|t| module != "proc_connector" || !self.not_proc_connector.contains(t))
            .map(|t| format!("{module}::{t}"))
            .collect();
        (!names.is_empty()).then(|| format!("--exact {}", names.join(" ")))
    }
}

/// The watchdog checks; each boots its own guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watchdog {
    /// armourd `--watchdog` feeds it well past the timeout.
    KeptAlive,
    /// armourd stopped with SIGTERM: the magic close disarms it.
    CleanStop,
    /// armourd killed with SIGKILL: the machine resets within the timeout.
    Killed,
    /// A critical entry gives up: armourd stops feeding, the machine resets.
    CriticalGivesUp,
}

impl Watchdog {
    pub const ALL: [Watchdog; 4] = [
        Watchdog::KeptAlive,
        Watchdog::CleanStop,
        Watchdog::Killed,
        Watchdog::CriticalGivesUp,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Watchdog::KeptAlive => "--watchdog keeps the guest alive past the timeout",
            Watchdog::CleanStop => "clean stop (magic close) leaves the guest alive",
            Watchdog::Killed => "armourd SIGKILLed: guest reset within the timeout",
            Watchdog::CriticalGivesUp => "critical entry gives up: guest reset within the timeout",
        }
    }

    /// Whether the check expects the machine to be reset.
    pub fn expects_reset(self) -> bool {
        matches!(self, Watchdog::Killed | Watchdog::CriticalGivesUp)
    }
}

/// softdog's timeout in the watchdog checks, in seconds.
pub const SOFT_MARGIN: u32 = 10;

const PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
# util-linux's setpriv (in /usr/local/bin) before busybox's.
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /root
ip link set lo up 2>/dev/null
say() { echo "armourd-vm: $*"; }
for module in /armourd/modules/*.ko; do
    [ -e "$module" ] || continue
    insmod "$module" $(cat "$module.args" 2>/dev/null) || say "insmod $module failed"
done
say kernel "$(uname -r) $(uname -m)"
: > /tmp/empty.conf
export ARMOURD_BIN=/armourd/armourd
# Starts armourd with the given backend and an empty config, waits until it
# is ready or gone, stops it; its log is left in /tmp/load.log.
load() {
    /armourd/armourd -c /tmp/empty.conf --backend "$1" --dbus none -v > /tmp/load.log 2>&1 &
    pid=$!
    i=0
    while [ $i -lt 900 ] && ! grep -q "ready:" /tmp/load.log && kill -0 $pid 2>/dev/null; do
        sleep 0.2
        i=$((i + 1))
    done
    if kill -0 $pid 2>/dev/null; then
        kill $pid
        wait $pid
    else
        # Gone before it was stopped: say how (a crash writes nothing).
        wait $pid
        echo "armourd ended by itself, status $?" >> /tmp/load.log
    fi
}
# One line: the log's last error, or its last line.
reason() {
    { grep -iE "error|cannot|falling back|by itself" /tmp/load.log || cat /tmp/load.log; } | tail -n 1 | tr -s ' '
}
# run_test SUITE BINARY LIBTEST-ARGS…: one test binary, one test at a time.
run_test() {
    suite=$1
    test=$2
    shift 2
    say begin "$suite" "$test"
    /armourd/tests/"$test" --test-threads=1 "$@"
    say end "$suite" "$test" $?
}
"#;

const EPILOGUE: &str = r#"say done
sync
poweroff -f
"#;

/// The `/init` script for `plan`.
pub fn init_script(plan: &Plan) -> String {
    let mut script = PRELUDE.to_owned();
    match plan {
        Plan::Suites { suite, fallback } => {
            let run_suite = |script: &mut String, name: &str, module: &str| {
                for selection in suite {
                    if let Some(filter) = selection.filter(module) {
                        let _ = writeln!(script, "run_test {name} {} {filter}", selection.binary);
                    }
                }
            };
            script.push_str(
                r#"load ebpf
if grep -q "ready: backend=ebpf" /tmp/load.log; then
    say ebpf-load ok
else
    say ebpf-load failed "$(reason)"
    cat /tmp/load.log
fi
"#,
            );
            run_suite(&mut script, "ebpf", "ebpf");
            if let Some(fallback) = fallback {
                let _ = writeln!(script, "run_test fallback {fallback}");
            }
            script.push_str(
                r#"mount -t tmpfs nobtf /sys/kernel/btf
load auto
if grep -q "ready: backend=proc-connector" /tmp/load.log && grep -q "falling back" /tmp/load.log; then
    say no-btf ok "$(grep "falling back" /tmp/load.log | head -n 1 | tr -s ' ')"
else
    say no-btf failed "$(reason)"
    cat /tmp/load.log
fi
"#,
            );
            run_suite(&mut script, "proc-connector", "proc_connector");
        }
        Plan::Watchdog(check) => script.push_str(&watchdog_script(*check)),
    }
    script.push_str(EPILOGUE);
    script
}

fn watchdog_script(check: Watchdog) -> String {
    let margin = SOFT_MARGIN;
    let wait_past = margin * 3;
    // A copy of busybox named `busybox-…`, so that it runs the applet of its
    // first argument (`sleep`): the watched service.
    let entry = match check {
        // Its first crash gives up (state failed): a critical entry down.
        Watchdog::CriticalGivesUp => "/tmp/busybox-service critical critical-grace=1s give-up=1/1m",
        _ => "/tmp/busybox-service",
    };
    let mut script = format!(
        r#"[ -c /dev/watchdog ] || say watchdog missing
cp /bin/busybox /tmp/busybox-service
/tmp/busybox-service sleep 3600 &
service=$!
echo "{entry}" > /tmp/watchdog.conf
/armourd/armourd -c /tmp/watchdog.conf --backend proc-connector --dbus none --watchdog -v > /tmp/armourd.log 2>&1 &
pid=$!
"#
    );
    script.push_str(
        r#"i=0
while [ $i -lt 300 ] && ! grep -q "ready:" /tmp/armourd.log && kill -0 $pid 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
cat /tmp/armourd.log
grep -q "ready:" /tmp/armourd.log && say watchdog armed
"#,
    );
    match check {
        Watchdog::KeptAlive => {
            let _ = write!(
                script,
                "sleep {wait_past}\nsay watchdog alive-after {wait_past}s\nkill $pid; wait $pid\n"
            );
        }
        Watchdog::CleanStop => {
            let _ = write!(
                script,
                "kill $pid; wait $pid\ncat /tmp/armourd.log | tail -n 3\nsay watchdog stopped\n\
                 sleep {wait_past}\nsay watchdog alive-after {wait_past}s\n"
            );
        }
        Watchdog::Killed => {
            let _ = write!(
                script,
                "kill -9 $pid\nsay watchdog killed\nsleep {wait_past}\nsay watchdog alive-after {wait_past}s\n"
            );
        }
        Watchdog::CriticalGivesUp => {
            let _ = write!(
                script,
                "kill -SEGV $service\ni=0\nwhile [ $i -lt 600 ] && ! grep -q CRITICAL /tmp/armourd.log; do sleep 0.2; i=$((i + 1)); done\n\
                 grep CRITICAL /tmp/armourd.log && say watchdog given-up\n\
                 sleep {wait_past}\nsay watchdog alive-after {wait_past}s\n"
            );
        }
    }
    script
}

/// One suite's outcome, from the `test result:` lines of its binaries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Suite {
    pub passed: u32,
    pub failed: u32,
    /// Binaries that ended with a non-zero status or printed no result.
    pub broken: Vec<String>,
    /// Names of the failed tests (`binary: test`).
    pub failures: Vec<String>,
    /// Whether every binary reported its end.
    pub complete: bool,
}

impl Suite {
    pub fn ok(&self) -> bool {
        self.complete && self.failed == 0 && self.broken.is_empty() && self.passed > 0
    }

    pub fn summary(&self) -> String {
        if !self.complete {
            return format!("INCOMPLETE ({} passed so far)", self.passed);
        }
        if self.ok() {
            format!("pass ({})", self.passed)
        } else if self.passed == 0 && self.failed == 0 && self.broken.is_empty() {
            "no tests ran".to_owned()
        } else {
            let mut text = format!("FAIL ({} passed, {} failed)", self.passed, self.failed);
            if !self.broken.is_empty() {
                let _ = write!(text, " [{}]", self.broken.join(", "));
            }
            text
        }
    }
}

/// What a guest reported.
#[derive(Debug, Default)]
pub struct Report {
    pub kernel: Option<String>,
    /// `Ok(())` or the reason the eBPF backend did not load.
    pub ebpf_load: Option<Result<(), String>>,
    /// The `--backend auto` fall-back with BTF hidden: its warning or why not.
    pub no_btf: Option<Result<String, String>>,
    pub ebpf: Suite,
    pub proc_connector: Suite,
    pub fallback: Suite,
    /// `watchdog …` lines in order.
    pub watchdog: Vec<String>,
    /// The guest's init reached its end (`done`).
    pub done: bool,
}

/// Reads the console output of one boot.
pub fn parse(console: &str) -> Report {
    let mut report = Report::default();
    let mut current: Option<(String, String)> = None;
    let mut seen_result = false;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        // The kernel's messages may share a line with the guest's output.
        let Some(at) = line.find(MARK) else {
            if let Some((suite, binary)) = &current {
                let target = suite_mut(&mut report, suite);
                if let Some(result) = line.trim().strip_prefix("test result: ") {
                    seen_result = true;
                    target.passed += count(result, " passed");
                    target.failed += count(result, " failed");
                } else if let Some(name) = line
                    .strip_prefix("test ")
                    .and_then(|rest| rest.strip_suffix(" ... FAILED"))
                {
                    target.failures.push(format!("{binary}: {name}"));
                }
            }
            continue;
        };
        let rest = line[at + MARK.len()..].trim();
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match key {
            "kernel" => report.kernel = Some(value.to_owned()),
            "ebpf-load" => {
                report.ebpf_load = Some(match value.strip_prefix("failed") {
                    Some(reason) => Err(reason.trim().to_owned()),
                    None => Ok(()),
                });
            }
            "no-btf" => {
                report.no_btf = Some(match value.strip_prefix("failed") {
                    Some(reason) => Err(reason.trim().to_owned()),
                    None => Ok(value.trim_start_matches("ok").trim().to_owned()),
                });
            }
            "begin" => {
                let mut words = value.split_whitespace();
                if let (Some(suite), Some(binary)) = (words.next(), words.next()) {
                    // Incomplete until every begun binary has ended.
                    suite_mut(&mut report, suite).complete = false;
                    current = Some((suite.to_owned(), binary.to_owned()));
                    seen_result = false;
                }
            }
            "end" => {
                let mut words = value.split_whitespace();
                if let (Some(suite), Some(binary), Some(status)) =
                    (words.next(), words.next(), words.next())
                {
                    let target = suite_mut(&mut report, suite);
                    if status != "0" || !seen_result {
                        target.broken.push(format!("{binary} exit {status}"));
                    }
                    target.complete = true;
                }
                current = None;
            }
            "watchdog" => report.watchdog.push(value.to_owned()),
            "done" => report.done = true,
            _ => {}
        }
    }
    report
}

fn suite_mut<'a>(report: &'a mut Report, name: &str) -> &'a mut Suite {
    match name {
        "ebpf" => &mut report.ebpf,
        "fallback" => &mut report.fallback,
        _ => &mut report.proc_connector,
    }
}

/// The number before `what` in `ok. 5 passed; 0 failed; …`.
fn count(result: &str, what: &str) -> u32 {
    result
        .split(';')
        .find_map(|part| part.trim().strip_suffix(what.trim()))
        .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    1.0] Run /init as init process
armourd-vm: kernel 6.1.0-50-cloud-amd64 x86_64
armourd-vm: ebpf-load ok
armourd-vm: begin ebpf restart
running 2 tests
test ebpf::a ... ok
test ebpf::b ... FAILED
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 4 filtered out; finished in 3.2s
armourd-vm: end ebpf restart 101
armourd-vm: begin proc-connector restart
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out; finished in 3.2s
armourd-vm: end proc-connector restart 0
armourd-vm: no-btf ok WARN falling back to the proc connector: no BTF
armourd-vm: done
";

    #[test]
    fn console_gives_counts_failures_and_the_fallback_reason() {
        let report = parse(CONSOLE);
        assert_eq!(
            report.kernel.as_deref(),
            Some("6.1.0-50-cloud-amd64 x86_64")
        );
        assert_eq!(report.ebpf_load, Some(Ok(())));
        assert_eq!((report.ebpf.passed, report.ebpf.failed), (1, 1));
        assert_eq!(report.ebpf.failures, ["restart: ebpf::b"]);
        assert!(!report.ebpf.ok());
        assert!(report.proc_connector.ok(), "{:?}", report.proc_connector);
        assert_eq!(
            report.no_btf,
            Some(Ok(
                "WARN falling back to the proc connector: no BTF".to_owned()
            ))
        );
        assert!(report.done);
    }

    #[test]
    fn named_tests_run_exactly_and_a_backend_may_leave_one_out() {
        let selection = Selection {
            binary: "fork".to_owned(),
            tests: Some(vec!["single".to_owned(), "double".to_owned()]),
            not_proc_connector: vec!["double".to_owned()],
        };
        let script = init_script(&Plan::Suites {
            suite: vec![selection, Selection::all("watch")],
            fallback: None,
        });
        assert!(script.contains("\nrun_test ebpf fork --exact ebpf::single ebpf::double\n"));
        assert!(script.contains("\nrun_test proc-connector fork --exact proc_connector::single\n"));
        assert!(script.contains("\nrun_test ebpf watch ebpf::\n"));
        assert!(script.contains("\nrun_test proc-connector watch proc_connector::\n"));
    }

    #[test]
    fn binary_cut_off_mid_run_leaves_its_suite_incomplete() {
        let report = parse("armourd-vm: begin ebpf watch\ntest ebpf::x ... ok\n");
        assert!(!report.ebpf.complete);
        assert!(!report.ebpf.ok());
        assert!(!report.done);
    }
}
