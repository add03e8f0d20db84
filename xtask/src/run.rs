//! `cargo xtask run -- ARGS…`: builds, then replaces itself with the daemon.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result};

use crate::{build_cmd, cmd};

#[derive(clap::Args)]
pub struct RunOptions {
    #[command(flatten)]
    build: build_cmd::BuildOptions,
    /// Arguments for armourd, after `--` (e.g. `-- -c armourd.conf -v`)
    #[arg(last = true)]
    args: Vec<OsString>,
}

pub fn run(options: RunOptions) -> Result<()> {
    let built = build_cmd::build(&options.build)?;
    if !cmd::is_root() {
        eprintln!(
            "run: armourd needs root (CAP_BPF and CAP_PERFMON for eBPF, CAP_NET_ADMIN for the \
             proc connector); start this command as root, e.g. `sudo -E cargo xtask run -- …`"
        );
    }
    let mut daemon = Command::new(&built.daemon);
    daemon.args(&options.args);
    let error = daemon.exec();
    Err(error).with_context(|| format!("could not start `{}`", cmd::show(&daemon)))
}
