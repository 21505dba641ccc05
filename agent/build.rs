//! Embeds the eBPF object built by `cargo xtask build-ebpf`, when it exists. Without it the
//! agent still builds (so plain `cargo build`/`cargo test` need no eBPF toolchain) and says
//! at start-up that it has no programs to load.
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(elasti_ebpf_embedded)");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let object = std::env::var_os("ELASTI_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/elasti"));
    println!("cargo::rerun-if-env-changed=ELASTI_EBPF_OBJECT");
    println!("cargo::rerun-if-changed={}", object.display());
    if object.is_file() {
        println!("cargo::rustc-cfg=elasti_ebpf_embedded");
        println!("cargo::rustc-env=ELASTI_EBPF_OBJECT={}", object.display());
    } else {
        println!(
            "cargo::warning=eBPF object {} not found; run `cargo xtask build-ebpf` to embed it",
            object.display()
        );
    }
}
