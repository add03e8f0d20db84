//! Embeds the eBPF object built by `cargo xtask build` when it exists.
//! Without it the daemon still builds and reports eBPF as not built in.
//! Built by a user other than root (and not by `cargo xtask test`), the
//! unit tests that need root or a message bus are marked ignored, saying
//! why (`cfg(unprivileged)`).

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ebpf_object)");
    // Set by cargo-fuzz: the fuzz targets reach private decoders through `armourd::fuzz`.
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
    println!("cargo::rerun-if-env-changed=ARMOURD_EBPF_OBJECT");
    unprivileged();
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let crate_dir = manifest.join("../armourd-ebpf");
    let object = env::var_os("ARMOURD_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir.join("target/bpfel-unknown-none/release/armourd-ebpf"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("armourd-ebpf.o");
    match fs::copy(&object, &out) {
        Ok(_) => {
            println!("cargo::rerun-if-changed={}", object.display());
            println!("cargo::rustc-cfg=ebpf_object");
        }
        Err(_) => {
            // Cargo reruns a script that watches a missing file on every
            // build, and rebuilds the daemon: watch the nearest folder of the
            // eBPF crate that exists instead, where the object will appear.
            let folders = object.ancestors().skip(1);
            let mut folders = folders.take_while(|dir| dir.starts_with(&crate_dir));
            if let Some(dir) = folders.find(|dir| dir.is_dir()) {
                println!("cargo::rerun-if-changed={}", dir.display());
            }
            println!(
                "cargo::warning=eBPF object {} not found: building without the eBPF backend \
                 (run `cargo xtask build` to build it)",
                object.display()
            );
        }
    }
}

/// Sets `cfg(unprivileged)` when the build (so, as a rule, `cargo test`)
/// runs as a user other than root. `cargo xtask test`, which runs as root,
/// sets `ARMOURD_TESTS_AS_ROOT`; the variables that change with the user
/// make cargo look again when another user builds in the same folder.
fn unprivileged() {
    println!("cargo::rustc-check-cfg=cfg(unprivileged)");
    for var in ["ARMOURD_TESTS_AS_ROOT", "USER", "SUDO_UID", "HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok());
    if env::var_os("ARMOURD_TESTS_AS_ROOT").is_none() && euid.is_some_and(|id| id != 0) {
        println!("cargo::rustc-cfg=unprivileged");
    }
}
