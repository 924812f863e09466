//! Dirty tracking is exact: with `verify=on` the hypervisor applies every
//! epoch, as encoded and sealed for the wire, to a second image and
//! compares it with the whole of guest RAM at each cut.
use qemu_tests::{epochs, host_mem_mib, qemu_command, run, verify_summary, Assets, RunOutput};
use std::path::Path;
use std::time::Duration;

/// Small guest RAM: each verify check hashes all of it.
const MEM_MIB: u64 = 128;
const DEADLINE: Duration = Duration::from_secs(300);
const MIN_EPOCHS: usize = 10;

fn tracked_run(name: &str, hypervisor: &Path, workload: &str, seconds: u64) -> RunOutput {
    let a = Assets::from_env();
    let cmdline = format!("console=ttyAMA0 vmsync.workload={workload} vmsync.seconds={seconds}");
    let img = a.image_with(name, hypervisor, &cmdline, MEM_MIB, "policy=interval:200ms\nverify=on\n");
    let out = run(qemu_command(&img, host_mem_mib(MEM_MIB)), DEADLINE, &[], false).expect("starting QEMU");
    assert!(!out.timed_out(), "{workload}: no power-off within {DEADLINE:?}:\n{}", out.tail());
    assert!(out.exited_ok(), "{workload}: QEMU status {:?}:\n{}", out.status, out.tail());
    assert!(out.output.contains(&format!("vmsync-guest: workload {workload} end rc=0")), "{workload} did not finish:\n{}", out.tail());
    out
}

fn video_run() -> &'static RunOutput {
    static RUN: std::sync::OnceLock<RunOutput> = std::sync::OnceLock::new();
    RUN.get_or_init(|| tracked_run("track-video.img", &Assets::from_env().hypervisor, "video", 4))
}

fn assert_exact(workload: &str) {
    let a = Assets::from_env();
    let owned;
    let out = if workload == "video" {
        video_run()
    } else {
        owned = tracked_run(&format!("track-{workload}.img"), &a.hypervisor, workload, 4);
        &owned
    };
    let e = epochs(&out.output);
    let (checks, mismatches) = verify_summary(&out.output).unwrap_or_else(|| panic!("no verify summary:\n{}", out.tail()));
    assert!(e.len() >= MIN_EPOCHS, "{workload}: only {} epochs", e.len());
    assert_eq!(checks as usize, e.len(), "{workload}: one check per epoch");
    assert_eq!(mismatches, 0, "{workload}: writes escaped tracking:\n{}", out.tail());
    assert_eq!(out.lines_with("result=match").count(), e.len(), "{workload}: per-epoch verdicts");
    // Tracking saw the guest write (not a silently idle run).
    let faults: u64 = e.iter().skip(1).map(|s| s.write_faults).sum();
    assert!(faults > if workload == "idle" { 0 } else { 100 }, "{workload}: only {faults} write faults");
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn verify_video_is_exact() {
    assert_exact("video");
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn verify_storage_is_exact() {
    assert_exact("storage");
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn verify_browse_is_exact() {
    assert_exact("browse");
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn verify_idle_is_exact() {
    assert_exact("idle");
}

/// The check can fail: a build that leaves one page per epoch writable
/// after the cut lets the guest's later writes to it escape.
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn negative_control_is_caught() {
    let a = Assets::from_env();
    let out = tracked_run("track-negative.img", &a.hypervisor_negative, "video", 4);
    let (checks, mismatches) = verify_summary(&out.output).expect("no verify summary");
    assert!(checks >= MIN_EPOCHS as u64);
    assert!(mismatches > 0, "skipping a re-protect went unnoticed:\n{}", out.tail());
    assert!(out.lines_with("result=mismatch").next().is_some());
}

/// The paper's effect on the video workload, and zstd earning its keep.
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn video_sends_less_than_its_dirty_pages() {
    let out = video_run();
    // Epoch 1 is the initial copy of the whole guest; the steady state is
    // what the paper measured.
    let steady: Vec<_> = epochs(&out.output).into_iter().filter(|e| e.epoch > 1).collect();
    let dirty: u64 = steady.iter().map(|e| e.dirty_page_bytes()).sum();
    let changed: u64 = steady.iter().map(|e| e.changed_bytes).sum();
    let delta: u64 = steady.iter().map(|e| e.encoded_bytes).sum();
    let compressed: u64 = steady.iter().map(|e| e.compressed_bytes).sum();
    assert!(dirty > changed, "dirty-page bytes {dirty} <= changed bytes {changed}");
    assert!(compressed < delta, "zstd did not shrink the deltas: {compressed} >= {delta}");
}
