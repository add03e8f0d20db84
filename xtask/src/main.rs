//! `cargo xtask …`: sets up the eBPF toolchain, builds both halves, runs the
//! daemon (plain or with a demo), runs every test and fuzzes the parsers.

mod bench;
mod build_cmd;
mod cmd;
mod deb;
mod demo;
mod dist;
mod fuzz;
mod run;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test armourd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the fuzz targets need when missing (nightly rust-src,
    /// bpf-linker, the musl target, cargo-fuzz; qemu's libraries and xz for the vm-test)
    Setup(setup::SetupOptions),
    /// Build the eBPF object and the static daemon (target/<arch>-unknown-linux-musl/release/armourd)
    Build(build_cmd::BuildOptions),
    /// Build, then run the daemon in the foreground with the given arguments
    Run(run::RunOptions),
    /// Build, then show a watched process crashing and being restarted
    Demo,
    /// Build, then run every test (integration tests need root)
    Test(test::TestOptions),
    /// Build, then install binaries, service files, D-Bus policy, example config, man pages, completions
    Install(dist::InstallOptions),
    /// Build, then make a .deb with cargo-deb (target/debian/); installs cargo-deb when missing
    Deb,
    /// Build, then measure restart latency, CPU, wake-ups and memory; writes BENCHMARKS.md
    Bench(bench::BenchOptions),
    /// Boot Debian's kernels under qemu and run the suite in each guest on both backends
    VmTest(vm::VmTestOptions),
    /// Run the fuzz targets (cargo-fuzz) for a bounded time or number of inputs each
    Fuzz(fuzz::FuzzOptions),
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Setup(options) => setup::setup(&options)
            .and_then(|_| setup::cargo_fuzz())
            .and_then(|()| setup::vm_packages()),
        Command::Build(options) => build_cmd::build(&options).map(drop),
        Command::Run(options) => run::run(options),
        Command::Demo => demo::demo(),
        Command::Test(options) => test::test(options),
        Command::Bench(options) => bench::bench(&options),
        Command::Install(options) => dist::install(&options),
        Command::Deb => deb::deb(),
        Command::Fuzz(options) => fuzz::fuzz(&options),
        Command::VmTest(options) => vm::vm_test(&options),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
