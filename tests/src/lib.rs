//! Harness for armourd's integration tests: they start the real daemon as
//! root against real processes (copies of the `testee` program) on the real
//! kernel (SPEC §10).
//!
//! - [`Sandbox`]: a temporary directory per test with its own copies of the
//!   testee, its config file and report files; on drop it kills, by pid,
//!   every process the test started or that recorded itself in a report
//!   (restarts, workers, daemons) and checks that none is left.
//! - [`Daemon`]: the armourd process, its log collected in the background
//!   and printed when the test fails.
//! - [`Report`]: the records the testees append (`start`, `workers`, …).
//! - [`Bus`]: a private `dbus-daemon` per test and the D-Bus clients that
//!   talk to armourd on it (`dbus-send`, `dbus-monitor`, `armourctl`, dbus-python).
//! - [`HungMount`]: a FUSE mount that never answers, like a hung network mount.
//! - [`backend_tests!`]: instantiates each test once per event backend.
//!
//! Waits poll with short sleeps and generous timeouts: a timeout only means
//! "it never happened", never "it was too slow" (timings belong in
//! `cargo xtask bench`).

pub mod bus;
mod daemon;
mod launch;
mod mount;
pub mod process;
mod report;
mod sandbox;

use std::{
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

pub use bus::{Bus, Scene, Value};
pub use daemon::{armourctl_bin, armourd_bin, Daemon};
pub use launch::LaunchExt;
pub use mount::HungMount;
pub use report::{Record, Report, Start};
pub use sandbox::Sandbox;

/// How long to wait for something that should happen (a restart, a record).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to watch for something that must not happen (a restart of a
/// cleanly ended or unwatched process).
pub const QUIET_WINDOW: Duration = Duration::from_millis(1500);

// armourd's own file of the enum (it needs only clap).
#[path = "../../armourd/src/backend/kind.rs"]
mod backend_kind;

/// An event backend of armourd: the daemon's own enum. The proc connector
/// runs as `ProcConnectorFanotify` (with fanotify, the default) and as
/// `ProcConnector` (fanotify turned off by `ARMOURD_FANOTIFY=off`).
pub use backend_kind::Backend;

/// How armourd is started to run a backend: `--backend`, and the
/// environment added.
pub trait Launch {
    /// The value of `--backend`.
    fn flag(self) -> &'static str;
    /// The environment armourd needs for this variant.
    fn env(self) -> &'static [(&'static str, &'static str)];
}

impl Launch for Backend {
    fn flag(self) -> &'static str {
        self.choice().name()
    }

    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Backend::ProcConnector => &[("ARMOURD_FANOTIFY", "off")],
            Backend::ProcConnectorFanotify => &[("ARMOURD_FANOTIFY", "on")],
            _ => &[],
        }
    }
}

static TESTEE: OnceLock<PathBuf> = OnceLock::new();

/// The built testee program, which tests copy into their sandbox.
pub(crate) fn testee_bin() -> &'static PathBuf {
    TESTEE
        .get()
        .expect("tests must be run through backend_tests!")
}

/// Runs one instance of a test: called by [`backend_tests!`].
pub fn run(backend: Backend, testee: &str, test: fn(Backend)) {
    TESTEE.get_or_init(|| PathBuf::from(testee));
    assert!(
        // SAFETY: geteuid takes nothing and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "the integration tests start armourd and load eBPF programs: run them as root \
         (`cargo xtask test`, or `sudo -E cargo test -p armourd-tests`)"
    );
    test(backend)
}

/// Instantiates tests `fn NAME(backend: Backend)` once per event backend,
/// as `ebpf::NAME`, `proc_connector::NAME` (with fanotify) and
/// `proc_plain::NAME` (without); run one backend's with a cargo
/// test filter such as `ebpf::`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $crate::backend_tests!(@instances ebpf, Ebpf, $($name),*);
        $crate::backend_tests!(@instances proc_connector, ProcConnectorFanotify, $($name),*);
        $crate::backend_tests!(@instances proc_plain, ProcConnector, $($name),*);
    };
    (@instances $module:ident, $backend:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    $crate::run($crate::Backend::$backend, env!("CARGO_BIN_EXE_testee"), super::$name)
                }
            )*
        }
    };
}

/// Polls `condition` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || condition().then_some(())).is_some()
}

/// Polls `probe` every 20 ms until it gives a value or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
