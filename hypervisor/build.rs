//! Selects the board description under `targets/` (default
//! `qemu-virt-aarch64`, or `VMSYNC_BOARD`) and hands its linker script to
//! the bare-metal link.
use std::path::PathBuf;

fn main() {
    let board = std::env::var("VMSYNC_BOARD").unwrap_or_else(|_| "qemu-virt-aarch64".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dir = manifest.join("../targets").join(&board);
    let dir = dir.canonicalize().unwrap_or_else(|_| panic!("no board description at {}", dir.display()));
    println!("cargo:rerun-if-env-changed=VMSYNC_BOARD");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rustc-env=VMSYNC_BOARD_DIR={}", dir.display());
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-none") {
        println!("cargo:rustc-link-arg-bins=-T{}", dir.join("linker.ld").display());
    }
}
