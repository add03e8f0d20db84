//! `cargo xtask setup`: installs what the build needs when it is missing:
//! the nightly toolchain's `rust-src` and `bpf-linker` for the eBPF half,
//! the musl target for the static daemon; and `cargo-fuzz` for
//! `cargo xtask fuzz`, which the build does not need.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args)]
pub struct SetupOptions {
    /// Reinstall bpf-linker even when a usable one is present
    /// (honours CARGO_INSTALL_ROOT, like `cargo install`)
    #[arg(long)]
    pub reinstall_bpf_linker: bool,
}

/// Makes sure nightly with `rust-src` and `bpf-linker` exist; returns the
/// `bpf-linker` to use.
pub fn setup(options: &SetupOptions) -> Result<PathBuf> {
    nightly_rust_src()?;
    static_target()?;
    if !options.reinstall_bpf_linker {
        if let Some(linker) = usable_bpf_linker() {
            return Ok(linker);
        }
    }
    install_bpf_linker()
}

/// Makes sure nightly and `cargo fuzz` work, installing cargo-fuzz from
/// crates.io when it is missing.
pub fn cargo_fuzz() -> Result<()> {
    nightly_rust_src()?;
    if cargo_fuzz_version().is_some() {
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (for `cargo xtask fuzz`); this takes a minute or two");
    let mut install = cmd::cargo();
    install
        .args(["install", "cargo-fuzz", "--locked"])
        .env_remove("RUSTFLAGS");
    cmd::run(&mut install).context("could not install cargo-fuzz, which the fuzz targets need")?;
    let version = cargo_fuzz_version();
    ensure!(
        version.is_some(),
        "`cargo fuzz` does not work after installing cargo-fuzz (is {} on PATH?)",
        install_bin_dir().map_or("cargo's bin folder".into(), |dir| dir.display().to_string())
    );
    Ok(())
}

/// What `cargo fuzz --version` says, if it runs.
fn cargo_fuzz_version() -> Option<String> {
    let out = cmd::cargo().args(["fuzz", "--version"]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn rustup() -> Command {
    let mut rustup = Command::new("rustup");
    // Never let rustup install a whole toolchain behind our back.
    rustup.env("RUSTUP_AUTO_INSTALL", "0");
    rustup
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = cmd::output(rustup().args(["toolchain", "list"]))
        .context("rustup is needed to set up the nightly toolchain (https://rustup.rs)")?;
    // `nightly-<host>`, not a dated `nightly-2025-01-01-<host>`.
    let has_nightly = toolchains
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|t| {
            t.strip_prefix("nightly-")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_alphabetic()))
        });
    if !has_nightly {
        println!("setup: installing the nightly toolchain with rust-src (for the eBPF half)");
        let args = [
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ];
        return cmd::run(rustup().args(args));
    }
    let installed =
        cmd::output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !installed
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src-"))
    {
        println!("setup: adding rust-src to the nightly toolchain (for the eBPF half)");
        cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// The target the daemon is built for: the host's architecture with musl,
/// which links statically, so that no shared C library is mapped into the
/// daemon (about 1.5 MiB of its resident set with glibc).
pub fn daemon_target() -> String {
    format!("{}-unknown-linux-musl", env::consts::ARCH)
}

/// Adds the daemon's target to the toolchain that builds it.
fn static_target() -> Result<()> {
    rust_target(&daemon_target())
}

/// Adds `target` to the toolchain that builds the daemon when it is missing.
pub fn rust_target(target: &str) -> Result<()> {
    let mut list = rustup();
    list.current_dir(cmd::workspace_root())
        .args(["target", "list", "--installed"]);
    if cmd::output(&mut list)?.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    println!("setup: adding the {target} target (the daemon is linked statically)");
    let mut add = rustup();
    add.current_dir(cmd::workspace_root())
        .args(["target", "add", target]);
    cmd::run(&mut add)
}

/// A `bpf-linker` of the right version that starts (its libLLVM is still
/// there), on `PATH` or where `cargo install` puts it.
fn usable_bpf_linker() -> Option<PathBuf> {
    let in_path = PathBuf::from("bpf-linker");
    [
        Some(in_path),
        install_bin_dir().map(|dir| dir.join("bpf-linker")),
    ]
    .into_iter()
    .flatten()
    .find(|linker| bpf_linker_version(linker).is_some_and(|v| version_fits(&v)))
}

fn bpf_linker_version(linker: &Path) -> Option<String> {
    let out = Command::new(linker).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| {
        text.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    })
}

fn version_fits(version: &str) -> bool {
    let minor = BPF_LINKER_VERSION.rsplit_once('.').expect("x.y.z").0;
    version
        .strip_prefix(minor)
        .is_some_and(|patch| patch.starts_with('.'))
}

/// `$CARGO_INSTALL_ROOT/bin`, else `$CARGO_HOME/bin`, else `~/.cargo/bin`.
fn install_bin_dir() -> Option<PathBuf> {
    let root = env::var_os("CARGO_INSTALL_ROOT")
        .or_else(|| env::var_os("CARGO_HOME"))
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
    Some(root.join("bin"))
}

/// Builds `bpf-linker` against the libLLVM that ships with nightly, so that
/// no system LLVM is needed and its LLVM matches rustc's.
fn install_bpf_linker() -> Result<PathBuf> {
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let (prefix, major) = llvm_prefix(Path::new(sysroot.trim()))?;
    println!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} \
         (LLVM_PREFIX={}); this takes a minute or two",
        prefix.display()
    );
    let features = format!("llvm-{major}");
    let install = |locked: bool| {
        let mut install = cmd::cargo();
        install.args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ]);
        install.args(["--no-default-features", "--features", &features]);
        if locked {
            install.arg("--locked");
        }
        cmd::run(install.env("LLVM_PREFIX", &prefix).env_remove("RUSTFLAGS"))
    };
    if let Err(error) = install(true) {
        println!("setup: {error:#}; retrying without --locked");
        install(false)?;
    }
    let linker = install_bin_dir()
        .context("HOME is not set")?
        .join("bpf-linker");
    let version = bpf_linker_version(&linker);
    ensure!(
        version.as_deref().is_some_and(version_fits),
        "{} does not work after installing it (version {version:?}), see the messages above",
        linker.display()
    );
    Ok(linker)
}

/// A folder `<prefix>/lib` with `libLLVM.so` and the versioned name, both
/// pointing at the nightly sysroot's `libLLVM.so.<version>-rust-…` file.
/// It lives in the user's cache (not in `target/`): the installed
/// `bpf-linker` finds libLLVM through it (rpath), so it must outlive
/// `cargo clean`. Returns the prefix and LLVM's major version.
fn llvm_prefix(sysroot: &Path) -> Result<(PathBuf, u32)> {
    let lib = sysroot.join("lib");
    let mut names: Vec<String> = fs::read_dir(&lib)
        .with_context(|| format!("could not list {}", lib.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("libLLVM.so."))
        .collect();
    names.sort();
    let Some(name) = names.first() else {
        bail!(
            "no libLLVM.so.* in {}: is this a rustup nightly toolchain?",
            lib.display()
        );
    };
    let major: String = name["libLLVM.so.".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let major = major
        .parse()
        .with_context(|| format!("no LLVM version in the name {name}"))?;

    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let prefix = cache.join("armourd-llvm");
    let links = prefix.join("lib");
    if links.exists() {
        fs::remove_dir_all(&links)
            .with_context(|| format!("could not empty {}", links.display()))?;
    }
    fs::create_dir_all(&links).with_context(|| format!("could not create {}", links.display()))?;
    for link in ["libLLVM.so", name.as_str()] {
        symlink(lib.join(name), links.join(link)).with_context(|| {
            format!(
                "could not create the symlink {}",
                links.join(link).display()
            )
        })?;
    }
    Ok((prefix, major))
}

/// Debian packages `cargo xtask vm-test` needs on the host: the qemu of the
/// distribution brings the shared libraries of the newer qemu the vm-test
/// unpacks from bookworm-backports; xz unpacks the kernels' modules.
const VM_PACKAGES: [&str; 4] = ["qemu-system-x86", "qemu-system-arm", "xz-utils", "dpkg"];

/// Installs the [`VM_PACKAGES`] that are missing (needs root and apt).
pub fn vm_packages() -> Result<()> {
    let missing: Vec<&str> = VM_PACKAGES
        .into_iter()
        .filter(|package| {
            !Command::new("dpkg")
                .args(["-s", package])
                .output()
                .is_ok_and(|out| {
                    out.status.success()
                        && String::from_utf8_lossy(&out.stdout)
                            .contains("Status: install ok installed")
                })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    ensure!(
        cmd::is_root(),
        "the vm-test needs the Debian packages {}: install them as root \
         (`apt-get install --no-install-recommends {0}`) or run `cargo xtask setup` as root",
        missing.join(" ")
    );
    println!(
        "setup: installing {} (for `cargo xtask vm-test`)",
        missing.join(" ")
    );
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("could not install the packages the vm-test needs")
}
