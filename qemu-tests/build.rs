//! The QEMU tests need the images and guest that `cargo xtask test` builds
//! and names in `VMSYNC_TEST_*`. Built without them (a plain `cargo test
//! --workspace`), the tests that boot QEMU are marked ignored, each with the
//! command to run instead, rather than failing on a missing variable.
//! The long ones (big guests, minutes under TCG) also need
//! `VMSYNC_TEST_LONG=1`, which `cargo xtask test --long` sets.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(vmsync_test_assets)");
    println!("cargo::rustc-check-cfg=cfg(vmsync_test_long)");
    println!("cargo::rerun-if-env-changed=VMSYNC_TEST_HYPERVISOR");
    println!("cargo::rerun-if-env-changed=VMSYNC_TEST_LONG");
    if std::env::var_os("VMSYNC_TEST_HYPERVISOR").is_some() {
        println!("cargo::rustc-cfg=vmsync_test_assets");
    }
    if std::env::var_os("VMSYNC_TEST_LONG").is_some_and(|v| v == "1") {
        println!("cargo::rustc-cfg=vmsync_test_long");
    }
}
