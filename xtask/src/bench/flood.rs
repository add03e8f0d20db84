//! The D-Bus flood (issue 14, finding 3): on a private `dbus-daemon` with
//! the system bus's default policy and the policy file the repository
//! ships, armourd watches many services while connections of uid 65534
//! send `GetProcesses` as fast as they can without reading a reply. Root
//! calls `ListProcesses` meanwhile, one call after the other; services are
//! crashed during the flood. Measured: root's reply latencies, armourd's
//! peak VmRSS, and those crashes' restart latencies (armourd's own lines).
//!
//! Everything runs on a unix socket in a temporary directory; the flooder
//! sends a bounded number of calls and every process started here is
//! killed, by pid, when the scene is dropped.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::{counters, latencies, log_lines, memory, pids_of, signal, wait_for};

/// In place of a bus name: root calls on armourd's control socket.
pub const CONTROL_SOCKET: &str = "control socket";

/// Services crashed, one every 100 ms, from 0.5 s into the flood.
pub const CRASHES: usize = 10;

/// How the flood is made.
#[derive(Clone, Copy)]
pub struct FloodOptions {
    /// Services armourd watches (each `GetProcesses` reply lists them all).
    pub services: usize,
    /// Connections of uid 65534.
    pub connections: usize,
    /// `GetProcesses` calls each connection sends.
    pub calls: usize,
    /// How long root keeps calling.
    pub seconds: u64,
    /// The bus name root calls, or [`CONTROL_SOCKET`].
    pub root_name: &'static str,
}

/// What the flood did to root's calls, memory and a restart.
pub struct FloodReport {
    pub options: FloodOptions,
    /// Root's `ListProcesses` round trips, in order, µs.
    pub root_us: Vec<u64>,
    /// Root's calls that failed (timed out or refused).
    pub root_failed: usize,
    /// How long the flooder took to hand all its calls to the bus.
    pub sent_after: Option<Duration>,
    pub peak_rss_kib: u64,
    /// The restart latencies of the services crashed during the flood, µs.
    pub restart_us: Vec<u64>,
    /// Their steps, as [`super::Report::steps_us`].
    pub restart_steps_us: Vec<[u64; 3]>,
    /// CPU seconds armourd and the bus used from the flood's start until
    /// root's last call.
    pub armourd_cpu_s: f64,
    pub bus_cpu_s: f64,
}

/// The unprivileged flooder's uid and gid (`nobody`).
const NOBODY: u32 = 65534;

/// The bus: the system bus's default policy, then armourd's policy file.
const BUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=SOCKET</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  </policy>
  <include>INCLUDE</include>
</busconfig>
"#;

/// argv: address, connections, calls. Connects, prints `connected`, waits
/// for a line on stdin, sends every call without reading a reply, prints
/// `sent`, then keeps the connections open until stdin closes.
const FLOODER: &str = r#"
import sys
import dbus, dbus.lowlevel

address, conns, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buses = [dbus.bus.BusConnection(address) for _ in range(conns)]
print("connected", flush=True)
sys.stdin.readline()
for _ in range(calls):
    for bus in buses:
        bus.send_message(dbus.lowlevel.MethodCallMessage(
            "com.github.Armourd", "/com/github/armourd", "com.github.Armourd", "GetProcesses"))
for bus in buses:
    bus.flush()
print("sent", flush=True)
sys.stdin.read()
"#;

/// argv: address, seconds, bus name (empty: the address is armourd's
/// control socket, without a bus). Connects, prints `ready`, waits for a
/// line on stdin, then calls `ListProcesses` one call after the other for
/// the given time and prints each round trip in µs (`ok N` or `failed N NAME`).
const ROOT_CALLER: &str = r#"
import sys, time
import dbus

address, seconds, name = sys.argv[1], float(sys.argv[2]), sys.argv[3] or None
if name:
    conn = dbus.bus.BusConnection(address)
else:
    conn = dbus.connection.Connection(address)
print("ready", flush=True)
sys.stdin.readline()
end = time.monotonic() + seconds
while time.monotonic() < end:
    began = time.monotonic()
    try:
        conn.call_blocking(name, "/com/github/armourd", "com.github.Armourd",
                           "ListProcesses", "", (), timeout=30)
        print("ok", int((time.monotonic() - began) * 1e6), flush=True)
    except dbus.exceptions.DBusException as e:
        print("failed", int((time.monotonic() - began) * 1e6), e.get_dbus_name(), flush=True)
"#;

/// The temporary directory, the bus, armourd, the services and the clients;
/// dropping it kills them all by pid.
struct Scene {
    dir: PathBuf,
    children: Vec<Child>,
    services: Vec<PathBuf>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        // Clients first, armourd (started before them) next, the bus last.
        for child in self.children.iter_mut().rev() {
            signal(child.id(), libc::SIGTERM);
            let _ = child.wait();
        }
        for service in &self.services {
            for pid in pids_of(service) {
                signal(pid, libc::SIGKILL);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Scene {
    fn spawn(&mut self, cmd: &mut Command, what: &str) -> Result<&mut Child> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }
}

/// Measures one flood against `daemon` on `backend`.
pub fn measure(daemon: &Path, backend: &str, options: FloodOptions) -> Result<FloodReport> {
    let dir = std::env::temp_dir()
        .canonicalize()?
        .join(format!("armourd-flood-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    // The flooder (uid 65534) must reach the socket.
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut scene = Scene {
        dir: dir.clone(),
        children: Vec::new(),
        services: Vec::new(),
    };

    let address = start_bus(&mut scene)?;
    let sleep = fs::canonicalize("/usr/bin/sleep")?;
    let mut config = String::new();
    for n in 0..options.services {
        let service = dir.join(format!("flood-service-{n:03}"));
        fs::copy(&sleep, &service)?;
        config.push_str(&format!("{}\n", service.display()));
        scene.services.push(service);
    }
    let config_path = dir.join("armourd.conf");
    fs::write(&config_path, config)?;
    for service in scene.services.clone() {
        // Adopted by armourd at start-up; killed when the scene is dropped.
        let mut cmd = Command::new(&service);
        cmd.arg("1000000").stdin(Stdio::null());
        scene.spawn(&mut cmd, "a service")?;
    }

    let control = dir.join("control");
    let mut cmd = super::armourd(daemon, &config_path, backend);
    cmd.args(["--dbus", "session", "-v", "--control-socket"])
        .arg(&control)
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let armourd = scene.spawn(&mut cmd, "armourd")?;
    let armourd_pid = armourd.id();
    let lines = log_lines(armourd);
    // armourd says it is ready and that it serves on the bus, in either order.
    let serving_line = if options.root_name == CONTROL_SOCKET {
        "serving root's calls on the control socket".to_owned()
    } else {
        format!("serving {} on", options.root_name)
    };
    let (mut ready, mut serving) = (None, false);
    while ready.is_none() || !serving {
        let line = wait_for(&lines, Duration::from_secs(20), |l| {
            l.contains("ready") || l.contains(&serving_line)
        })
        .context("armourd did not get ready on the bus")?;
        serving |= line.contains(&serving_line);
        if line.contains("ready") {
            ready = Some(line);
        }
    }
    let ready = ready.unwrap_or_default();
    ensure!(
        ready.contains(&format!("{} watched", options.services)),
        "armourd does not watch the {} services: {ready}",
        options.services
    );

    let (root_address, root_name) = if options.root_name == CONTROL_SOCKET {
        (format!("unix:path={}", control.display()), "")
    } else {
        (address.clone(), options.root_name)
    };
    let mut cmd = python(
        &root_address,
        ROOT_CALLER,
        &[&options.seconds.to_string(), root_name],
    );
    let caller = scene.spawn(&mut cmd, "root's caller")?;
    let (mut caller_in, caller_out) = pipes(caller);
    expect(&caller_out, "ready", "root's caller")?;

    let mut cmd = python(
        &address,
        FLOODER,
        &[&options.connections.to_string(), &options.calls.to_string()],
    );
    // As root, std also drops the supplementary groups.
    cmd.uid(NOBODY).gid(NOBODY);
    let flooder = scene.spawn(&mut cmd, "the flooder")?;
    let (mut flooder_in, flooder_out) = pipes(flooder);
    expect(&flooder_out, "connected", "the flooder")?;

    let bus_pid = scene.children[0].id();
    let cpu_before = [counters(armourd_pid)?.0, counters(bus_pid)?.0];
    let sampler = RssSampler::start(armourd_pid);
    let began = Instant::now();
    writeln!(flooder_in, "go")?;
    // When the flooder has handed all its calls to the bus.
    let sent = thread::spawn(move || {
        flooder_out
            .iter()
            .any(|line| line == "sent")
            .then(|| began.elapsed())
    });
    // Let the flood reach armourd's queue in the bus before root calls.
    thread::sleep(Duration::from_millis(100));
    writeln!(caller_in, "go")?;
    // Crash services one after the other while the flood is under way.
    thread::sleep(Duration::from_millis(400));
    let mut restart_us = Vec::new();
    let mut restart_steps_us = Vec::new();
    for service in scene.services.iter().take(CRASHES) {
        // A restart not seen shows as a missed target.
        let Ok((latencies, steps)) = latencies(service, &lines, 1) else {
            break;
        };
        restart_us.extend(latencies);
        restart_steps_us.extend(steps);
        thread::sleep(Duration::from_millis(80));
    }

    let mut root_us = Vec::new();
    let mut root_failed = 0;
    let deadline = began + Duration::from_secs(options.seconds + 60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match caller_out.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(line) => {
                let mut words = line.split(' ');
                match (words.next(), words.next().and_then(|n| n.parse().ok())) {
                    (Some("ok"), Some(us)) => root_us.push(us),
                    (Some("failed"), _) => root_failed += 1,
                    _ => bail!("root's caller printed `{line}`"),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("root's caller did not finish"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let peak_rss_kib = sampler.peak().max(memory(armourd_pid)?[0]);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_s = |pid, before| counters(pid).map(|(ticks, _)| (ticks - before) as f64 / hz);
    let armourd_cpu_s = cpu_s(armourd_pid, cpu_before[0])?;
    let bus_cpu_s = cpu_s(bus_pid, cpu_before[1])?;
    drop(flooder_in);
    let sent_after = sent.join().ok().flatten();
    ensure!(
        !root_us.is_empty() || root_failed > 0,
        "root's caller made no call"
    );
    Ok(FloodReport {
        options,
        root_us,
        root_failed,
        sent_after,
        peak_rss_kib,
        restart_us,
        restart_steps_us,
        armourd_cpu_s,
        bus_cpu_s,
    })
}

/// Starts the bus in `scene`'s directory; returns its address.
fn start_bus(scene: &mut Scene) -> Result<String> {
    let shipped = super::cmd::workspace_root().join("dbus/com.github.Armourd.conf");
    let shipped = shipped
        .canonicalize()
        .with_context(|| format!("{}", shipped.display()))?;
    let config = scene.dir.join("bus.conf");
    fs::write(
        &config,
        BUS_CONFIG
            .replace("SOCKET", &scene.dir.join("bus.sock").display().to_string())
            .replace("INCLUDE", &shipped.display().to_string()),
    )?;
    let mut cmd = Command::new("dbus-daemon");
    cmd.arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--nopidfile", "--print-address"])
        .stdin(Stdio::null())
        // It warns that it cannot raise its descriptor limit: not of interest here.
        .stderr(Stdio::null())
        .stdout(Stdio::piped());
    let bus = scene.spawn(&mut cmd, "dbus-daemon (is dbus installed?)")?;
    let stdout = bus.stdout.take().expect("piped");
    let mut address = String::new();
    BufReader::new(stdout).read_line(&mut address)?;
    let address = address.trim().to_owned();
    ensure!(
        address.starts_with("unix:"),
        "dbus-daemon gave no address: `{address}`"
    );
    Ok(address)
}

/// `/usr/bin/python3 -c SCRIPT ADDRESS ARGS…` with piped stdin and stdout.
fn python(address: &str, script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script, address])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd
}

/// A child's stdin, and its stdout's lines.
fn pipes(child: &mut Child) -> (ChildStdin, Receiver<String>) {
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (stdin, rx)
}

fn expect(lines: &Receiver<String>, wanted: &str, who: &str) -> Result<()> {
    match lines.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if line == wanted => Ok(()),
        Ok(line) => bail!("{who} printed `{line}`, not `{wanted}`"),
        Err(_) => bail!("{who} did not print `{wanted}` (is python3-dbus installed?)"),
    }
}

/// Samples a process's VmRSS every millisecond; remembers the highest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (done, high) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok([rss, ..]) = memory(pid) {
                    high.fetch_max(rss, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(1));
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the highest VmRSS seen, KiB.
    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}
