//! Embeds the eBPF object built by `cargo xtask build` when it exists.
//! Without it the daemon still builds and reports eBPF as not built in.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ebpf_object)");
    println!("cargo::rerun-if-env-changed=ARMOURD_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("ARMOURD_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest.join("../armourd-ebpf/target/bpfel-unknown-none/release/armourd-ebpf")
        });
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("armourd-ebpf.o");
    match fs::copy(&object, &out) {
        Ok(_) => println!("cargo::rustc-cfg=ebpf_object"),
        Err(_) => println!(
            "cargo::warning=eBPF object {} not found: building without the eBPF backend \
             (run `cargo xtask build` to build it)",
            object.display()
        ),
    }
}
