//! The kernels the vm-test boots and the qemu that boots them: Debian's
//! packages, fetched with `apt-get download` through a private APT
//! configuration (its own sources, lists and cache under
//! `~/.cache/armourd/vm/apt`; the machine's sources are never touched),
//! unpacked with `dpkg -x` and kept under `~/.cache/armourd/vm`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::cmd;

/// A guest architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "arm64")]
    Arm64,
}

impl Arch {
    /// Debian's name of the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target the guest's programs are built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The serial console the kernel writes to.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }
}

/// A kernel of the matrix: Debian's cloud flavour of one suite. The cloud
/// flavour boots fastest and has everything the guest needs built in (the
/// serial console, initramfs, BPF, the proc connector); FUSE and the
/// watchdog drivers come as modules from the same package.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// What `--kernel` takes and the table shows.
    pub name: &'static str,
    pub arch: Arch,
    /// The Debian suite its metapackage is taken from.
    pub suite: &'static str,
    /// Booted by the short pass of CI (the oldest and the newest).
    pub ci: bool,
}

/// Every kernel `--all` boots, oldest first.
pub const KERNELS: [Kernel; 5] = [
    Kernel {
        name: "5.10",
        arch: Arch::X86_64,
        suite: "bullseye",
        ci: true,
    },
    Kernel {
        name: "6.1",
        arch: Arch::X86_64,
        suite: "bookworm",
        ci: false,
    },
    Kernel {
        name: "6.12",
        arch: Arch::X86_64,
        suite: "bookworm-backports",
        ci: false,
    },
    Kernel {
        name: "newest",
        arch: Arch::X86_64,
        suite: "trixie-backports",
        ci: true,
    },
    Kernel {
        name: "6.12-arm64",
        arch: Arch::Arm64,
        suite: "bookworm-backports",
        ci: false,
    },
];

/// The suites the private APT configuration lists.
const SUITES: [&str; 4] = [
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie-backports",
];
/// How long downloaded package lists are used before `apt-get update`.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A kernel unpacked on the host.
pub struct Unpacked {
    /// The package version, e.g. `6.1.176-1`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// The folder `lib/modules/<release>` with `kernel/…/*.ko[.xz]`.
    pub modules: PathBuf,
}

impl Unpacked {
    /// The module `name` (e.g. `fuse`), decompressed into `dir` when the
    /// package ships it compressed; `None` when it is built in or missing.
    pub fn module(&self, name: &str, dir: &Path) -> Result<Option<PathBuf>> {
        let Some(found) = find_file(&self.modules, &|file: &str| {
            file == format!("{name}.ko") || file == format!("{name}.ko.xz")
        }) else {
            return Ok(None);
        };
        if found.extension().is_some_and(|ext| ext == "ko") {
            return Ok(Some(found));
        }
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
        let out = dir.join(format!("{name}.ko"));
        let data = Command::new("xz")
            .arg("-dc")
            .arg(&found)
            .output()
            .context("xz (xz-utils) is needed to unpack the kernel's modules")?;
        ensure!(
            data.status.success(),
            "xz -dc {} failed: {}",
            found.display(),
            String::from_utf8_lossy(&data.stderr)
        );
        fs::write(&out, data.stdout)
            .with_context(|| format!("could not write {}", out.display()))?;
        Ok(Some(out))
    }
}

impl Unpacked {
    /// The module `name` and the modules it needs (its `.modinfo`
    /// `depends=`), dependencies first; empty when it is built in.
    pub fn module_with_deps(&self, name: &str, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
        let mut order = Vec::new();
        self.add_module(name, dir, &mut order, 0)?;
        Ok(order)
    }

    fn add_module(
        &self,
        name: &str,
        dir: &Path,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<()> {
        if depth > 8 || order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let Some(ko) = self.module(name, dir)? else {
            return Ok(());
        };
        let data = fs::read(&ko).with_context(|| format!("could not read {}", ko.display()))?;
        for dep in modinfo_depends(&data) {
            self.add_module(&dep, dir, order, depth + 1)?;
        }
        order.push((name.to_owned(), ko));
        Ok(())
    }
}

/// The `depends=` list of a module's `.modinfo` strings (NUL-separated
/// `key=value`), without reading the ELF structure: the key is unique.
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &module[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// `~/.cache/armourd/vm`.
pub fn cache_dir() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(cache.join("armourd").join("vm"))
}

/// The private APT configuration: `apt-get`/`apt-cache` with these options
/// read only its own sources and keep their lists and downloads apart.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Writes the configuration and refreshes its lists when they are old.
    pub fn new() -> Result<Apt> {
        let dir = cache_dir()?.join("apt");
        for sub in ["lists/partial", "archives/partial", "parts", "preferences"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("could not create {}", dir.join(sub).display()))?;
        }
        let mut sources = String::new();
        for suite in SUITES {
            sources.push_str(&format!(
                "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {suite} main\n"
            ));
        }
        fs::write(dir.join("sources.list"), sources).context("could not write sources.list")?;
        fs::write(dir.join("status"), "").context("could not write the empty dpkg status")?;
        Self::write_config(&dir)?;
        let apt = Apt { dir };
        let stamp = apt.dir.join("lists/updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if !fresh {
            println!(
                "vm-test: apt-get update (private configuration in {})",
                apt.dir.display()
            );
            let mut update = apt.command("apt-get");
            update.arg("update").arg("-q");
            cmd::run(&mut update).context("could not download Debian's package lists")?;
            fs::write(&stamp, "").context("could not mark the lists fresh")?;
        }
        Ok(apt)
    }

    /// `program` reading only the private configuration: `APT_CONFIG` is
    /// read before the machine's `apt.conf.d`, so that folder is replaced too.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("APT_CONFIG", self.dir.join("apt.conf"));
        command
    }

    fn write_config(dir: &Path) -> Result<()> {
        let d = dir.display();
        let config = format!(
            "Dir::Etc::SourceList \"{d}/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/parts\";\n\
             Dir::Etc::Parts \"{d}/parts\";\n\
             Dir::Etc::Preferences \"{d}/preferences/none\";\n\
             Dir::Etc::PreferencesParts \"{d}/preferences\";\n\
             Dir::State \"{d}\";\n\
             Dir::State::Lists \"{d}/lists\";\n\
             Dir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}\";\n\
             Dir::Cache::Archives \"{d}/archives\";\n\
             APT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; \"arm64\"; }};\n\
             APT::Sandbox::User \"root\";\n\
             Debug::NoLocking \"1\";\n"
        );
        fs::write(dir.join("apt.conf"), config).context("could not write the private apt.conf")
    }

    /// The `Depends` of `package` (`name:arch/suite` or `name:arch`),
    /// without versions and alternatives.
    fn depends(&self, package: &str) -> Result<Vec<String>> {
        let mut show = self.command("apt-cache");
        show.args(["show", package]);
        let text = cmd::output(&mut show)?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .unwrap_or_default();
        Ok(line
            .split(',')
            .filter_map(|dep| dep.split('|').next()?.split_whitespace().next())
            .map(str::to_owned)
            .collect())
    }

    fn version(&self, package: &str) -> Result<String> {
        let mut show = self.command("apt-cache");
        show.args(["show", package]);
        let text = cmd::output(&mut show)?;
        text.lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("apt-cache show {package} gives no version"))
    }

    /// Downloads `packages` into `dir` (kept: a second run downloads nothing).
    fn download(&self, packages: &[String], dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
        let mut download = self.command("apt-get");
        download
            .current_dir(dir)
            .arg("download")
            .arg("-q")
            .args(packages);
        cmd::run(&mut download)
    }
}

/// Downloads (once) and unpacks `kernel`: the cloud metapackage of its
/// suite, the versioned image it depends on and, for newer packaging,
/// the separate binary and modules packages.
pub fn fetch(apt: &Apt, kernel: &Kernel) -> Result<Unpacked> {
    let arch = kernel.arch.debian();
    let meta = format!("linux-image-cloud-{arch}:{arch}/{}", kernel.suite);
    let is_kernel_package = |name: &str| {
        ["linux-image-", "linux-binary-", "linux-modules-"]
            .iter()
            .any(|prefix| {
                name.strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
    };
    let mut packages: Vec<String> = Vec::new();
    let mut todo = apt.depends(&meta)?;
    while let Some(dep) = todo.pop() {
        if !is_kernel_package(&dep) || packages.contains(&dep) {
            continue;
        }
        todo.extend(apt.depends(&format!("{dep}:{arch}"))?);
        packages.push(dep);
    }
    ensure!(
        !packages.is_empty(),
        "{meta} depends on no versioned kernel package: has Debian renamed them?"
    );
    let version = apt.version(&format!("{}:{arch}", packages[0]))?;
    let root = cache_dir()?
        .join("kernels")
        .join(format!("{}-{version}", kernel.name));
    let done = root.join(".unpacked");
    if !done.exists() {
        let debs = cache_dir()?
            .join("debs")
            .join(format!("{}-{version}", kernel.name));
        let qualified: Vec<String> = packages.iter().map(|p| format!("{p}:{arch}")).collect();
        println!("vm-test: downloading {}", packages.join(" "));
        apt.download(&qualified, &debs)?;
        unpack_all(&debs, &root)?;
        fs::write(&done, "").context("could not mark the kernel unpacked")?;
    }
    let vmlinuz = find_file(&root, &|name: &str| {
        name == "vmlinuz" || name.starts_with("vmlinuz-")
    })
    .with_context(|| format!("no vmlinuz in {}", root.display()))?;
    let modules = find_file(&root, &|name: &str| name == "modules.order")
        .and_then(|order| order.parent().map(Path::to_path_buf))
        .or_else(|| {
            fs::read_dir(root.join("usr/lib/modules"))
                .or_else(|_| fs::read_dir(root.join("lib/modules")))
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| p.join("kernel").is_dir())
        })
        .with_context(|| format!("no lib/modules/<release> in {}", root.display()))?;
    Ok(Unpacked {
        version,
        vmlinuz,
        modules,
    })
}

/// A qemu new enough for every kernel: the one from bookworm-backports
/// (Debian 12's qemu 7.2 double-faults 6.12 guests under TCG), unpacked
/// into the cache; its shared libraries are those the distribution's
/// `qemu-system-x86`/`qemu-system-arm` packages installed (`cargo xtask setup`).
pub struct Qemu {
    root: PathBuf,
}

impl Qemu {
    pub fn fetch(apt: &Apt) -> Result<Qemu> {
        let root = cache_dir()?.join("qemu");
        let done = root.join(".unpacked");
        if !done.exists() {
            let suite = "bookworm-backports";
            let packages: Vec<String> = [
                "qemu-system-x86:amd64",
                "qemu-system-arm:amd64",
                "qemu-system-common:amd64",
                "qemu-system-data",
                "seabios",
            ]
            .iter()
            .map(|p| format!("{p}/{suite}"))
            .collect();
            println!("vm-test: downloading qemu from {suite}");
            let debs = cache_dir()?.join("debs").join("qemu");
            apt.download(&packages, &debs)?;
            unpack_all(&debs, &root)?;
            fs::write(&done, "").context("could not mark qemu unpacked")?;
        }
        Ok(Qemu { root })
    }

    /// `qemu-system-<arch>` with its firmware folders.
    pub fn command(&self, arch: Arch) -> Command {
        let program = match arch {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        };
        let mut qemu = Command::new(self.root.join("usr/bin").join(program));
        // Its own modules, never the distribution's qemu's (another build).
        qemu.env(
            "QEMU_MODULE_DIR",
            self.root.join("usr/lib/x86_64-linux-gnu/qemu"),
        );
        qemu.arg("-L")
            .arg(self.root.join("usr/share/qemu"))
            .arg("-L")
            .arg(self.root.join("usr/share/seabios"));
        qemu
    }

    /// Checks that it starts (its libraries are installed).
    pub fn check(&self, arch: Arch) -> Result<()> {
        let mut version = self.command(arch);
        version.arg("--version");
        let out = cmd::output(&mut version).context(
            "qemu does not start: run `cargo xtask setup`, which installs the libraries it needs",
        )?;
        println!("vm-test: {}", out.lines().next().unwrap_or_default());
        Ok(())
    }
}

fn unpack_all(debs: &Path, root: &Path) -> Result<()> {
    fs::create_dir_all(root).with_context(|| format!("could not create {}", root.display()))?;
    for entry in fs::read_dir(debs).with_context(|| format!("could not list {}", debs.display()))? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|ext| ext == "deb") {
            let mut unpack = Command::new("dpkg");
            unpack.arg("-x").arg(&deb).arg(root);
            cmd::run(&mut unpack)?;
        }
    }
    Ok(())
}

/// The first file below `dir` (depth first) whose name satisfies `wanted`.
fn find_file(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let file_type = entry.file_type().ok()?;
        if file_type.is_dir() {
            if let Some(found) = find_file(&path, wanted) {
                return Some(found);
            }
        } else if entry.file_name().to_str().is_some_and(wanted) {
            return Some(path);
        }
    }
    None
}

/// Whether `/dev/kvm` can create a virtual machine (it may exist and still
/// refuse, as in many cloud VMs); only then is `-accel kvm` used.
pub fn kvm_works() -> bool {
    let Ok(kvm) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return false;
    };
    use std::os::fd::AsRawFd as _;
    // KVM_CREATE_VM = _IO(0xAE, 0x01)
    // SAFETY: an ioctl on a file we own; the returned descriptor is closed.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), 0xAE01, 0) };
    if vm < 0 {
        return false;
    }
    // SAFETY: vm is a descriptor the ioctl just gave us.
    unsafe { libc::close(vm) };
    true
}

/// Fails with a hint when a program the vm-test runs on the host is missing.
pub fn need(program: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if !found {
        bail!(
            "{program} is missing: install the Debian package {package} (`cargo xtask setup` does)"
        );
    }
    Ok(())
}

/// The guest's userland besides armourd and the tests: busybox (the shell
/// and tools of `/init`) and util-linux's `setpriv` with the libraries it
/// needs (busybox's `setpriv` cannot drop the bounding set, which the
/// fallback tests do), taken from Debian's packages for the guest's
/// architecture.
pub struct Userland {
    root: PathBuf,
}

impl Userland {
    /// Adds busybox, `/usr/local/bin/setpriv` (first on the guest's PATH)
    /// and the shared libraries of the unpacked packages.
    pub fn add_to(&self, initramfs: &mut super::initramfs::Initramfs) {
        initramfs.copy("/bin/busybox", &self.root.join("bin/busybox"), 0o755);
        initramfs.copy(
            "/usr/local/bin/setpriv",
            &self.root.join("usr/bin/setpriv"),
            0o755,
        );
        for top in ["lib", "lib64", "usr/lib"] {
            self.add_libraries(initramfs, &self.root.join(top));
        }
    }

    /// Follows symlinks, reading absolute targets below the unpacked root.
    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let mut path = path.to_path_buf();
        for _ in 0..16 {
            let meta = fs::symlink_metadata(&path).ok()?;
            if !meta.file_type().is_symlink() {
                return meta.is_file().then_some(path);
            }
            let target = fs::read_link(&path).ok()?;
            path = match target.strip_prefix("/") {
                Ok(inside) => self.root.join(inside),
                Err(_) => path.parent()?.join(target),
            };
        }
        None
    }

    fn add_libraries(&self, initramfs: &mut super::initramfs::Initramfs, dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if is_dir {
                // Not the gconv modules, locales or docs: the libraries.
                if !["gconv", "audit", "share"].contains(&name.as_str()) {
                    self.add_libraries(initramfs, &path);
                }
            } else if name.contains(".so") {
                let inside = path.strip_prefix(&self.root).expect("below the root");
                // Symlinks are copied as the files they name inside the
                // unpacked packages (never the host's): the guest's loader
                // finds either name.
                if let Some(file) = self.resolve(&path) {
                    initramfs.copy(&format!("/{}", inside.display()), &file, 0o755);
                }
            }
        }
    }
}

/// Downloads (once) and unpacks busybox-static, util-linux, libcap-ng0 and
/// libc6 of Debian 12 for `arch`.
pub fn guest_userland(apt: &Apt, arch: Arch) -> Result<Userland> {
    let debian = arch.debian();
    let root = cache_dir()?.join(format!("userland-{debian}"));
    let done = root.join(".unpacked");
    if !done.exists() {
        let packages: Vec<String> = ["busybox-static", "util-linux", "libcap-ng0", "libc6"]
            .iter()
            .map(|p| format!("{p}:{debian}/bookworm"))
            .collect();
        println!(
            "vm-test: downloading the guest's userland ({})",
            packages.join(" ")
        );
        let debs = cache_dir()?.join("debs").join(format!("userland-{debian}"));
        apt.download(&packages, &debs)?;
        unpack_all(&debs, &root)?;
        fs::write(&done, "").context("could not mark the userland unpacked")?;
    }
    Ok(Userland { root })
}
