//! `cargo xtask deb`: a Debian package made by cargo-deb from the files
//! `cargo xtask install` lays out, staged in `target/deb-root`. Installs
//! cargo-deb when it is missing.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};

use crate::{build_cmd, cmd, dist};

pub fn deb() -> Result<()> {
    ensure_cargo_deb()?;
    let built = build_cmd::build(&build_cmd::BuildOptions { debug: false })?;
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
    println!("deb: the package is in {}", out.display());
    Ok(())
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
