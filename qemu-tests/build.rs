//! The QEMU tests need the images and guest that `cargo xtask test` builds
//! and names in `VMSYNC_TEST_*`. Built without them (a plain `cargo test
//! --workspace`), the tests that boot QEMU are marked ignored, each with the
//! command to run instead, rather than failing on a missing variable.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(vmsync_test_assets)");
    println!("cargo::rerun-if-env-changed=VMSYNC_TEST_HYPERVISOR");
    if std::env::var_os("VMSYNC_TEST_HYPERVISOR").is_some() {
        println!("cargo::rustc-cfg=vmsync_test_assets");
    }
}
