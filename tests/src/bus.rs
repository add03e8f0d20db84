//! A private message bus per test: a `dbus-daemon` listening on a socket
//! in the test's sandbox, that any uid may use (with a policy that allows
//! everything, or the system bus's with armourd's policy file), and the
//! clients the tests talk to armourd with (`dbus-send`, `dbus-monitor`,
//! `armourctl`, dbus-python). Every client runs with a timeout; every
//! long-running one is killed, by pid, when its guard is dropped.

mod client;
mod monitor;
mod value;

use std::{
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
};

pub use client::{run, Background, Output};
pub use monitor::Monitor;
pub use value::Value;

use crate::{daemon::armourctl_bin, Backend, Daemon, LaunchExt, Report, Sandbox, EVENT_TIMEOUT};

/// armourd's bus name, object path and interface (SPEC §7).
pub const ARMOURD: &str = "com.github.Armourd";
pub const OBJECT_PATH: &str = "/com/github/armourd";

/// A bus configuration: where it listens and its policy.
const CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=SOCKET</listen>
  <auth>EXTERNAL</auth>
POLICY
</busconfig>
"#;

/// Anyone may connect, own names, send, receive and monitor: the tests
/// check armourd's own authorization, not the bus's.
const OPEN_POLICY: &str = r#"  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>"#;

/// The default policy of the system bus (dbus's `system.conf`: nothing
/// may be owned or called unless a service's policy file allows it),
/// then the policy file the repository ships (INCLUDE).
const SYSTEM_POLICY: &str = r#"  <policy context="default">
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
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>INCLUDE</include>"#;

/// Where most D-Bus tests start: a sandbox with a private bus, the testee
/// `svc` with its report, and armourd answering on the bus, with `svc` in
/// its configuration or nothing configured. Fields drop in order: armourd
/// first, the sandbox last.
pub struct Scene {
    pub daemon: Daemon,
    /// How many processes armourd watched when it got ready.
    pub watched: usize,
    pub report: Report,
    pub svc: PathBuf,
    pub bus: Bus,
    pub sb: Sandbox,
}

impl Scene {
    /// On a bus that lets anyone do anything.
    pub fn start(backend: Backend, svc_configured: bool) -> Scene {
        Self::start_on(Bus::start, backend, svc_configured)
    }

    /// On a bus with the system bus's policy (see
    /// [`Bus::start_with_system_policy`]).
    pub fn start_with_system_policy(backend: Backend, svc_configured: bool) -> Scene {
        Self::start_on(Bus::start_with_system_policy, backend, svc_configured)
    }

    fn start_on(bus: fn(&Sandbox) -> Bus, backend: Backend, svc_configured: bool) -> Scene {
        let sb = Sandbox::new();
        let bus = bus(&sb);
        let svc = sb.testee("svc");
        let report = sb.report("svc");
        sb.write_config(&if svc_configured {
            format!("{}\n", svc.display())
        } else {
            "# nothing configured\n".to_owned()
        });
        let (daemon, watched) = bus.daemon(&sb, backend);
        Scene {
            daemon,
            watched,
            report,
            svc,
            bus,
            sb,
        }
    }
}

/// Where [`Bus::daemon`] has armourd make its control socket: in a folder
/// armourd makes (mode 0700) in the sandbox.
pub fn control_socket(sandbox: &Sandbox) -> PathBuf {
    sandbox.path("ctl/control")
}

/// A private `dbus-daemon`; dropping it kills it by pid.
pub struct Bus {
    child: Child,
    address: String,
    log: PathBuf,
    /// Its configuration file, to start it again with (see [`Bus::restart`]).
    config: PathBuf,
    socket: PathBuf,
}

impl Bus {
    /// Starts a bus that allows everything, listening on `bus.sock` in the
    /// sandbox (the sandbox is mode 0755 and dbus-daemon makes the socket
    /// 0777, so uid 65534 can connect), and waits for its address.
    pub fn start(sandbox: &Sandbox) -> Bus {
        Self::start_with(sandbox, OPEN_POLICY.to_owned())
    }

    /// Starts a bus with the system bus's default policy and the policy
    /// file the repository ships for armourd (`dbus/com.github.Armourd.conf`).
    pub fn start_with_system_policy(sandbox: &Sandbox) -> Bus {
        let shipped =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dbus/com.github.Armourd.conf");
        let shipped = shipped
            .canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e}", shipped.display()));
        Self::start_with(
            sandbox,
            SYSTEM_POLICY.replace("INCLUDE", &shipped.display().to_string()),
        )
    }

    fn start_with(sandbox: &Sandbox, policy: String) -> Bus {
        let socket = sandbox.path("bus.sock");
        assert!(
            socket.as_os_str().len() < 108,
            "{} is too long for a unix socket address: shorten the test's name or TMPDIR",
            socket.display()
        );
        let config = sandbox.path("bus.conf");
        let text = CONFIG
            .replace("SOCKET", &socket.display().to_string())
            .replace("POLICY", &policy);
        fs::write(&config, text).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let log = sandbox.path("bus.log");
        let (child, address) = Self::spawn(&config, &log);
        let bus = Bus {
            child,
            address,
            log,
            config,
            socket,
        };
        assert!(
            bus.address.starts_with("unix:"),
            "dbus-daemon gave no address within {EVENT_TIMEOUT:?}:\n{}",
            bus.log_text()
        );
        bus
    }

    /// Kills the bus (SIGKILL, as if it crashed) and starts a new one
    /// with the same configuration at the same address; blocks until it
    /// listens. `between` runs while there is no bus.
    pub fn restart(&mut self, between: impl FnOnce()) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed bus leaves its socket behind; a new one would not bind.
        let _ = fs::remove_file(&self.socket);
        between();
        let (child, address) = Self::spawn(&self.config, &self.log);
        self.child = child;
        self.address = address;
        assert!(
            self.address.starts_with("unix:"),
            "the new dbus-daemon gave no address within {EVENT_TIMEOUT:?}:\n{}",
            self.log_text()
        );
    }

    /// Whether `name` has an owner on the bus.
    pub fn has_owner(&self, name: &str) -> bool {
        let reply = self.send(
            None,
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            &[&format!("string:{name}")],
        );
        reply.value() == Value::Bool(true)
    }

    /// Starts dbus-daemon with `config`, its stderr appended to `log`;
    /// returns it and the address it printed (empty if none came).
    fn spawn(config: &std::path::Path, log: &std::path::Path) -> (Child, String) {
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open bus.log");
        let mut cmd = Command::new("dbus-daemon");
        cmd.arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dbus-daemon (is dbus installed?): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // dbus-daemon prints its address once; it writes nothing more.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let address = rx
            .recv_timeout(EVENT_TIMEOUT)
            .unwrap_or_default()
            .trim()
            .to_owned();
        (child, address)
    }

    /// The address, for `DBUS_SESSION_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts armourd with `--dbus session` on this bus, and its control
    /// socket at [`control_socket`], and waits until it is ready; returns it
    /// and the number of processes it watches. It is given the bus socket's
    /// path without the bus's guid, like the system bus's address, so that
    /// it can connect to a bus started again there.
    pub fn daemon(&self, sandbox: &Sandbox, backend: Backend) -> (Daemon, usize) {
        let control = control_socket(sandbox);
        let address = format!("unix:path={}", self.socket.display());
        Daemon::ready_with(
            sandbox,
            backend,
            &[
                "--dbus",
                "session",
                "--control-socket",
                control.to_str().expect("the sandbox's path is UTF-8"),
            ],
            &[("DBUS_SESSION_BUS_ADDRESS", &address)],
        )
    }

    /// A command running `program` with only `PATH` and this bus as the
    /// session bus in its environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DBUS_SESSION_BUS_ADDRESS", self.address())
            .current_dir("/")
            .stdin(Stdio::null());
        cmd
    }

    /// `dbus-send --print-reply` of `INTERFACE.METHOD ARGS…` to `dest` at
    /// `path`, as root or as `caller` (uid = gid, no supplementary groups).
    pub fn send(
        &self,
        caller: Option<u32>,
        dest: &str,
        path: &str,
        method: &str,
        args: &[&str],
    ) -> Reply {
        let mut cmd = self.command("dbus-send");
        cmd.arg(format!("--bus={}", self.address()))
            .args(["--print-reply", "--reply-timeout=30000"])
            .arg(format!("--dest={dest}"))
            .args([path, method])
            .args(args);
        if let Some(uid) = caller {
            cmd.as_user(uid, uid, &[]);
        }
        Reply::from(run(&mut cmd))
    }

    /// Calls `INTERFACE.METHOD` on armourd's object as root.
    pub fn call(&self, method: &str, args: &[&str]) -> Reply {
        self.send(None, ARMOURD, OBJECT_PATH, method, args)
    }

    /// Calls `com.github.Armourd.METHOD(int32 pid)` as `caller` (root if
    /// `None`) and returns the result code.
    pub fn pid_call(&self, caller: Option<u32>, method: &str, pid: i32) -> u32 {
        let method = format!("{ARMOURD}.{method}");
        let reply = self.send(
            caller,
            ARMOURD,
            OBJECT_PATH,
            &method,
            &[&format!("int32:{pid}")],
        );
        match reply.value() {
            Value::Uint32(code) => code,
            other => panic!("{method}({pid}) returned {other:?}, not a uint32"),
        }
    }

    /// `WatchProcess(pid)` as root.
    pub fn watch(&self, pid: i32) -> u32 {
        self.pid_call(None, "WatchProcess", pid)
    }

    /// `UnwatchProcess(pid)` as root.
    pub fn unwatch(&self, pid: i32) -> u32 {
        self.pid_call(None, "UnwatchProcess", pid)
    }

    /// The `GetProcesses` entry of `pid`, or `None` if it is not listed.
    pub fn process(&self, pid: i32) -> Option<Value> {
        let list = self.call(&format!("{ARMOURD}.GetProcesses"), &[]).value();
        let Value::Array(entries) = list else {
            panic!("GetProcesses returned {list:?}, not an array");
        };
        entries
            .into_iter()
            .find(|e| e.get("pid") == Some(&Value::Int32(pid)))
    }

    /// A property of armourd's interface.
    pub fn property(&self, name: &str) -> Value {
        self.call(
            "org.freedesktop.DBus.Properties.Get",
            &[&format!("string:{ARMOURD}"), &format!("string:{name}")],
        )
        .value()
        .unboxed()
        .clone()
    }

    /// Starts `dbus-monitor` on this bus and waits until it monitors.
    pub fn monitor(&self) -> Monitor {
        let mut cmd = self.command("dbus-monitor");
        cmd.args(["--address", self.address()]);
        let monitor = Monitor(Background::spawn(&mut cmd));
        // It sees its own NameLost once it has become a monitor.
        monitor
            .0
            .wait_stdout("dbus-monitor ready", |t| t.contains("member=NameLost"));
        monitor
    }

    /// `armourctl --session ARGS…` on this bus.
    pub fn armourctl(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(armourctl_bin());
        cmd.arg("--session").args(args);
        cmd
    }

    /// `armourctl --control-socket SOCKET ARGS…`: past this bus.
    pub fn armourctl_at(&self, socket: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(armourctl_bin());
        cmd.arg("--control-socket").arg(socket).args(args);
        cmd
    }

    /// Runs `/usr/bin/python3 -c SCRIPT ADDRESS ARGS…` (dbus-python).
    pub fn python(&self, script: &str, args: &[&str]) -> Output {
        let mut cmd = self.command("/usr/bin/python3");
        cmd.args(["-c", script, self.address()]).args(args);
        run(&mut cmd)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- dbus-daemon log -----\n{}", self.log_text());
        }
    }
}

/// A `dbus-send --print-reply` call's outcome.
#[derive(Debug)]
pub struct Reply(Output);

impl From<Output> for Reply {
    fn from(output: Output) -> Self {
        Reply(output)
    }
}

impl Reply {
    /// The reply's values; panics if the call failed.
    pub fn values(&self) -> Vec<Value> {
        let out = &self.0;
        assert_eq!(out.code, Some(0), "the call failed: {out:?}");
        // The first line is `method return time=… reply_serial=…`.
        let body = out.stdout.split_once('\n').map_or("", |(_, body)| body);
        value::parse(body)
            .unwrap_or_else(|e| panic!("cannot read the reply ({e}):\n{}", out.stdout))
    }

    /// The one value of the reply; panics otherwise.
    pub fn value(&self) -> Value {
        let mut values = self.values();
        assert_eq!(values.len(), 1, "one value expected: {values:?}");
        values.remove(0)
    }

    /// The raw text dbus-send printed for a successful call.
    pub fn text(&self) -> &str {
        assert_eq!(self.0.code, Some(0), "the call failed: {:?}", self.0);
        &self.0.stdout
    }

    /// The D-Bus error name of a failed call; panics if it succeeded.
    pub fn error(&self) -> String {
        self.error_name().unwrap_or_else(|| {
            panic!(
                "an error was expected, the call succeeded:\n{}",
                self.0.stdout
            )
        })
    }

    /// The D-Bus error name of a failed call, `None` if it succeeded.
    pub fn error_name(&self) -> Option<String> {
        let out = &self.0;
        if out.code == Some(0) {
            return None;
        }
        // `Error org.freedesktop.DBus.Error.X: message`
        let name = out
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("Error "))
            .and_then(|l| l.split(':').next())
            .unwrap_or_else(|| panic!("dbus-send failed without an error name: {out:?}"));
        Some(name.to_owned())
    }
}
