//! `cargo xtask deb`: a Debian package made by cargo-deb from the files
//! `cargo xtask install` lays out, staged in `target/deb-root`, then checked
//! with `dpkg-deb -I`/`-c` and `dpkg -i` into a throwaway root. Installs
//! cargo-deb when it is missing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};

use crate::{build_cmd, cmd, dist};

pub fn deb() -> Result<()> {
    ensure_cargo_deb()?;
    let built = build_cmd::build(&build_cmd::BuildOptions {
        debug: false,
        target: None,
    })?;
    let root = cmd::workspace_root();
    // Where the assets of armourd/Cargo.toml's [package.metadata.deb] are.
    let staging = root.join("target/deb-root");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot empty {}", staging.display()))?;
    }
    dist::stage(&built.daemon, &staging, Path::new("/usr"), false)?;
    let out = root.join("target/debian");
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(&root)
        .args([
            "deb",
            "-p",
            "armourd",
            "--no-build",
            "--no-strip",
            "--output",
        ])
        .arg(&out);
    println!("deb: {}", cmd::show(&cargo));
    cmd::run(&mut cargo).context("cargo-deb failed")?;
    let package = newest_deb(&out)?;
    check(&package, &staging)?;
    println!(
        "deb: {} (checked with dpkg-deb -I and -c, and dpkg -i into a throwaway root)",
        package.display()
    );
    Ok(())
}

/// The .deb cargo-deb just wrote.
fn newest_deb(folder: &Path) -> Result<PathBuf> {
    let mut debs: Vec<_> = fs::read_dir(folder)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop()
        .with_context(|| format!("cargo-deb left no .deb in {}", folder.display()))
}

/// `dpkg-deb -I` names the package; `dpkg-deb -c` lists every staged file.
fn check(package: &Path, staging: &Path) -> Result<()> {
    let info = cmd::output(Command::new("dpkg-deb").arg("-I").arg(package))?;
    ensure!(
        info.contains("Package: armourd"),
        "dpkg-deb -I: no armourd package:\n{info}"
    );
    let listing = cmd::output(Command::new("dpkg-deb").arg("-c").arg(package))?;
    let mut missing = Vec::new();
    for file in staged(staging)? {
        let rel = file.strip_prefix(staging)?.display().to_string();
        // cargo-deb compresses man pages.
        let found = |name: &str| listing.lines().any(|l| l.ends_with(name));
        if !found(&format!("./{rel}")) && !found(&format!("./{rel}.gz")) {
            missing.push(rel);
        }
    }
    ensure!(missing.is_empty(), "the .deb lacks {missing:?}:\n{listing}");
    install_into_throwaway_root(package)
}

/// `dpkg -i` into an empty root of its own: the package unpacks and is
/// configured (`ii`) without touching this machine's.
fn install_into_throwaway_root(package: &Path) -> Result<()> {
    let root = cmd::workspace_root().join("target/deb-check");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let admin = root.join("var/lib/dpkg");
    fs::create_dir_all(admin.join("info"))?;
    fs::create_dir_all(admin.join("updates"))?;
    fs::write(admin.join("status"), "")?;
    let mut dpkg = Command::new("dpkg");
    dpkg.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-not-root", "-i"])
        .arg(package);
    cmd::output(&mut dpkg)?;
    let listed = cmd::output(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["-l", "armourd"]),
    )?;
    ensure!(
        listed.lines().any(|l| l.starts_with("ii  armourd")),
        "dpkg -i into {} did not install armourd:\n{listed}",
        root.display()
    );
    ensure!(
        root.join("usr/sbin/armourd").is_file(),
        "no /usr/sbin/armourd after dpkg -i"
    );
    fs::remove_dir_all(&root)?;
    Ok(())
}

fn staged(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(folder)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(staged(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// Installs cargo-deb from crates.io unless `cargo deb` already works.
fn ensure_cargo_deb() -> Result<()> {
    let present = cmd::cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        return Ok(());
    }
    let mut install = cmd::cargo();
    install.args(["install", "cargo-deb", "--locked"]);
    println!("deb: cargo-deb is missing; {}", cmd::show(&install));
    cmd::run(&mut install).context("cannot install cargo-deb")
}
