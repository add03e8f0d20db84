//! `cargo xtask build`: the eBPF object with nightly for `bpfel-unknown-none`,
//! then the daemon with that object embedded.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};

use crate::{cmd, setup};

const BPF_TARGET: &str = "bpfel-unknown-none";

#[derive(clap::Args)]
pub struct BuildOptions {
    /// Build the daemon with the dev profile (target/<arch>-unknown-linux-musl/debug/armourd);
    /// the eBPF object is always optimised
    #[arg(long)]
    pub debug: bool,
    /// Build the daemon for this target instead of the host's
    /// `<arch>-unknown-linux-musl` (e.g. `aarch64-unknown-linux-musl`: linked
    /// with `rust-lld` and the target's own musl, no cross compiler needed)
    #[arg(long, value_name = "TRIPLE")]
    pub target: Option<String>,
}

/// What a build leaves behind (absolute paths).
pub struct Built {
    pub daemon: PathBuf,
    /// Handed to the daemon's build script as `ARMOURD_EBPF_OBJECT`.
    pub ebpf_object: PathBuf,
}

/// Sets up, then builds both halves.
pub fn build(options: &BuildOptions) -> Result<Built> {
    let linker = setup::setup(&setup::SetupOptions {
        reinstall_bpf_linker: false,
    })?;
    let ebpf_object = build_ebpf(&linker)?;
    let daemon = build_daemon(options, &ebpf_object)?;
    println!("build: the daemon is {}", daemon.display());
    Ok(Built {
        daemon,
        ebpf_object,
    })
}

/// Environment that would leak the host build's settings into the BPF build
/// (and the fuzz build, which sets its own flags).
pub const HOST_ONLY_ENV: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO",
];

fn build_ebpf(linker: &Path) -> Result<PathBuf> {
    let crate_dir = cmd::workspace_root().join("armourd-ebpf");
    // Its own target directory, the one armourd/build.rs looks in by default.
    let target_dir = crate_dir.join("target");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(&crate_dir)
        .args([
            "+nightly",
            "build",
            "--release",
            "-Z",
            "build-std=core",
            "--target",
            BPF_TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir);
    for name in HOST_ONLY_ENV {
        cargo.env_remove(name);
    }
    // rustc calls `bpf-linker` by name: make sure the one set-up found is first.
    if let Some(dir) = linker.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        let path = env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(dir.to_path_buf()).chain(env::split_paths(&path));
        cargo.env("PATH", env::join_paths(paths).context("PATH holds a ':'")?);
    }
    println!("build: eBPF half ({})", cmd::show(&cargo));
    cmd::run(&mut cargo).context("building the eBPF half failed")?;
    let object = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join("armourd-ebpf");
    ensure!(
        object.is_file(),
        "the eBPF build left no object at {}",
        object.display()
    );
    Ok(object)
}

fn build_daemon(options: &BuildOptions, object: &Path) -> Result<PathBuf> {
    let target = options.target.clone().unwrap_or_else(setup::daemon_target);
    if options.target.is_some() {
        setup::rust_target(&target)?;
    }
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(cmd::workspace_root())
        .args(["build", "-p", "armourd", "--bins", "--target", &target]);
    if !options.debug {
        cargo.arg("--release");
    }
    cargo.env("ARMOURD_EBPF_OBJECT", object);
    cross_linker(&mut cargo, &target);
    println!("build: daemon ({})", cmd::show(&cargo));
    cmd::run(&mut cargo).context("building the daemon failed")?;
    let profile = if options.debug { "debug" } else { "release" };
    Ok(cmd::target_dir()?
        .join(target)
        .join(profile)
        .join("armourd"))
}

/// For test programs (the integration tests, the testee) built for
/// `target` with the release profile: they need no whole-program
/// optimisation, and linking each with LTO and one codegen unit took most
/// of their build (the daemon keeps the release profile).
pub fn test_programs(cargo: &mut Command, target: &str) {
    cargo
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16");
    cross_linker(cargo, target);
}

/// For a static musl target of another architecture than the host's:
/// link with `rust-lld` and the musl start files that come with the
/// target (`link-self-contained`), so that no cross gcc is needed.
pub fn cross_linker(cargo: &mut Command, target: &str) {
    if target == setup::daemon_target() {
        return;
    }
    let key = target.to_uppercase().replace('-', "_");
    cargo
        .env(format!("CARGO_TARGET_{key}_LINKER"), "rust-lld")
        .env(
            format!("CARGO_TARGET_{key}_RUSTFLAGS"),
            "-C link-self-contained=yes",
        );
}
