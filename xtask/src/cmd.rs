//! Helpers shared by the commands: running programs, paths, privileges.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The target directory of the workspace: `$CARGO_TARGET_DIR` or `target/`.
pub fn target_dir() -> Result<PathBuf> {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::path::absolute(dir).context("could not resolve CARGO_TARGET_DIR"),
        None => Ok(workspace_root().join("target")),
    }
}

/// The cargo that runs this xtask (the proxy on `PATH` when unknown).
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The command line of `cmd` as a user would type it, for messages.
pub fn show(cmd: &Command) -> String {
    // `cargo`, not `/root/.rustup/toolchains/…/bin/cargo`.
    let program = Path::new(cmd.get_program());
    let program = if program.ends_with("cargo") {
        "cargo".as_ref()
    } else {
        program.as_os_str()
    };
    let mut line = program.to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with inherited stdio and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    ensure!(status.success(), "`{}` failed ({status})", show(cmd));
    Ok(())
}

/// Runs `cmd` and returns its standard output; fails unless it succeeds.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        show(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", show(cmd)))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
