//! `cargo xtask test`: the one test command. Host tests of every crate,
//! bare-metal builds, then the QEMU tests against freshly built images.
use anyhow::Result;
use std::time::Instant;

use crate::{apt, guest, image, study, toolchain};

/// The QEMU tests that boot the root disk (qemu-tests/tests/root_disk.rs):
/// `cargo xtask test` builds it when its filter selects one of them. Each
/// name holds "root_disk", so `--filter root_disk` runs them all.
pub const ROOT_DISK_TESTS: &[&str] = &[
    "sqlite_runs_on_a_copy_of_the_root_disk",
    "without_its_root_disk_the_guest_stays_in_the_initramfs",
    "root_disk_epochs_count_the_storage_workloads_writes",
    "root_disk_epochs_count_a_known_write",
];

fn step(name: &str) -> Instant {
    eprintln!("\nxtask test: == {name} ==");
    Instant::now()
}

fn done(t: Instant) {
    eprintln!("xtask test: done in {:.1} s", t.elapsed().as_secs_f64());
}

pub fn run(host_only: bool, filter: Option<&str>, long: bool) -> Result<()> {
    let all = Instant::now();
    // The bare-metal targets from rustup; zstd's C is cross-built for them
    // with clang.
    toolchain::ensure()?;
    apt::ensure_clang()?;

    let t = step("host tests (every crate but the QEMU tests)");
    image::run_checked(image::cargo().args(["test", "--workspace", "--exclude", "qemu-tests"]))?;
    done(t);

    let t = step("sync-core for the bare-metal targets");
    for target in ["aarch64-unknown-none", "x86_64-unknown-none"] {
        image::run_checked(image::cargo().args(["build", "--release", "-p", "sync-core", "--target", target]))?;
    }
    done(t);

    let t = step("hypervisor image");
    let hv = image::build_hypervisor()?;
    // The negative control of the dirty-tracking tests: a build that must fail --verify.
    let hv_negative = image::build_hypervisor_variant(Some("negative-control"))?;
    done(t);
    if host_only {
        eprintln!("xtask test: host tests passed ({:.0} s); QEMU tests skipped (--host-only)", all.elapsed().as_secs_f64());
        return Ok(());
    }

    apt::ensure_qemu_aarch64()?;
    let t = step("guest assets");
    let g = guest::prepare(false)?;
    done(t);

    // The study's short form, before the QEMU tests (its two guests at a
    // time fill the two cores); the QEMU tests check its files
    // (qemu-tests/tests/study.rs). A failure here shows there, after the
    // other QEMU tests ran.
    let study_dir = image::workspace_root().join("target/qemu-tests/study");
    if filter.is_none_or(|f| study::QUICK_TESTS.iter().any(|name| name.contains(f))) {
        let t = step("cargo xtask study --quick");
        if let Err(e) = study::quick(&study_dir) {
            eprintln!("xtask test: the quick study failed: {e:#}");
        }
        done(t);
    }

    // The root disk only for the tests that boot it: building it the first
    // time downloads the study's programs.
    let root_disk = if filter.is_none_or(|f| ROOT_DISK_TESTS.iter().any(|name| name.contains(f))) {
        let t = step("root disk");
        let d = guest::prepare_root_disk(false)?;
        done(t);
        Some(d.image)
    } else {
        None
    };

    let t = step("QEMU tests");
    let work = image::workspace_root().join("target/qemu-tests");
    std::fs::create_dir_all(&work)?;
    let mut cmd = image::cargo();
    cmd.args(["test", "--release", "-p", "qemu-tests", "--"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    // Each QEMU run is one emulated CPU: two at a time fills two cores.
    cmd.args(["--test-threads", "2"]);
    cmd.env("VMSYNC_TEST_HYPERVISOR", &hv)
        .env("VMSYNC_TEST_HYPERVISOR_NEGATIVE", &hv_negative)
        .env("VMSYNC_TEST_KERNEL", &g.kernel)
        .env("VMSYNC_TEST_INITRD", &g.initrd)
        .env("VMSYNC_TEST_KERNEL_RELEASE", &g.kernel_release)
        .env("VMSYNC_TEST_WORKDIR", &work)
        .env("VMSYNC_TEST_STUDY_DIR", &study_dir)
        // qemu-tests/build.rs turns the long tests on (cfg vmsync_test_long).
        .env("VMSYNC_TEST_LONG", if long { "1" } else { "0" });
    if let Some(disk) = &root_disk {
        cmd.env("VMSYNC_TEST_ROOT_DISK", disk);
    }
    image::run_checked(&mut cmd)?;
    done(t);
    eprintln!("xtask test: all passed in {:.0} s", all.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_disk_tests_exist_and_match_their_filter() {
        let file = include_str!("../../qemu-tests/tests/root_disk.rs");
        for name in ROOT_DISK_TESTS {
            assert!(name.contains("root_disk"), "{name}: `--filter root_disk` must select it");
            assert!(file.contains(&format!("fn {name}()")), "no test {name} in qemu-tests/tests/root_disk.rs");
        }
    }
}
