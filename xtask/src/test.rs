//! `cargo xtask test`: builds both halves, then runs every test of the
//! workspace against the built daemon. Integration tests need root.

use std::ffi::OsString;

use anyhow::{bail, Context as _, Result};

use crate::{build_cmd, cmd};

#[derive(clap::Args)]
pub struct TestOptions {
    /// Extra arguments for `cargo test`, after `--` (e.g. `cargo xtask test -- -- --nocapture`)
    #[arg(last = true)]
    args: Vec<OsString>,
}

pub fn test(options: TestOptions) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the integration tests start the real daemon on the real kernel and need root; \
             run `cargo xtask test` as root (e.g. `sudo -E cargo xtask test`)"
        );
    }
    let built = build_cmd::build(&build_cmd::BuildOptions {
        debug: false,
        target: None,
    })?;
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(cmd::workspace_root())
        .args(["test", "--workspace", "--release", "--no-fail-fast"])
        .args(&options.args)
        .env("ARMOURD_BIN", &built.daemon)
        // The same as for the build, so cargo reuses it instead of rebuilding.
        .env("ARMOURD_EBPF_OBJECT", &built.ebpf_object)
        // As root every unit test runs, also those a user's `cargo test`
        // marks ignored for want of root or a bus.
        .env("ARMOURD_TESTS_AS_ROOT", "1");
    // Every integration test starts a daemon and a crowd of processes; one
    // at a time they do not starve each other on a small machine.
    if std::env::var_os("RUST_TEST_THREADS").is_none() {
        cargo.env("RUST_TEST_THREADS", "1");
    }
    println!(
        "test: {} (ARMOURD_BIN={})",
        cmd::show(&cargo),
        built.daemon.display()
    );
    cmd::run(&mut cargo).context("tests failed")
}
