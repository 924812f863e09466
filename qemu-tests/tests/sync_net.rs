//! Two and three devices kept in sync over the emulated wifi link: the
//! active device streams its epochs from EL2 over its own TCP/IP stack; each
//! standby commits them and its committed image's digest must equal the
//! active device's guest memory at that epoch.
use qemu_tests::link::Profile;
use qemu_tests::multi::{self, MultiRun};
use qemu_tests::{digests, host_mem_mib, Assets};
use std::path::PathBuf;
use std::time::Duration;

const MEM_MIB: u64 = 128;
const DEADLINE: Duration = Duration::from_secs(420);
const SECRET: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const OTHER_SECRET: &str = "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";

fn images(name: &str, devices: usize, standby_secret: &str) -> (PathBuf, Vec<PathBuf>) {
    let a = Assets::from_env();
    let cmdline = "console=ttyAMA0 vmsync.workload=video vmsync.seconds=4";
    let active = a.image_with(&format!("{name}-a.img"), &a.hypervisor, cmdline, MEM_MIB, &format!("policy=interval:200ms\n{}", multi::active_config(devices, SECRET)));
    let standbys = (1..devices)
        .map(|i| a.image_with(&format!("{name}-{i}.img"), &a.hypervisor, cmdline, MEM_MIB, &multi::standby_config(i, standby_secret)))
        .collect();
    (active, standbys)
}

fn run(name: &str, devices: usize, standby_secret: &str) -> MultiRun {
    let (active, standbys) = images(name, devices, standby_secret);
    let refs: Vec<&std::path::Path> = standbys.iter().map(|p| p.as_path()).collect();
    let r = multi::run(&active, &refs, host_mem_mib(MEM_MIB), Profile::wifi(), DEADLINE, false).expect("starting the devices");
    assert!(!r.active.timed_out(), "the active device did not power off:\n{}", r.active.tail());
    assert!(r.active.exited_ok(), "active QEMU status {:?}:\n{}", r.active.status, r.active.tail());
    r
}

/// Every commit of the standby matches the active device at that epoch,
/// and the standby holds the last epoch cut.
fn assert_in_sync(r: &MultiRun, standby: usize) {
    let active = digests(&r.active.output);
    let commits = digests(&r.standbys[standby]);
    let last_cut = active.last().expect("the active device cut no epoch").0;
    assert!(last_cut >= 20, "only {last_cut} epochs");
    assert!(!commits.is_empty(), "standby {} committed nothing:\n{}", standby + 1, r.standbys[standby]);
    for (e, d) in &commits {
        let want = active.iter().find(|(ae, _)| ae == e).map(|(_, d)| d);
        assert_eq!(want, Some(d), "standby {} epoch {e}: digest differs from the active device's", standby + 1);
    }
    assert_eq!(commits.last().unwrap().0, last_cut, "standby {} did not get the last epoch", standby + 1);
    // It received far more than acks: the epochs went over the link.
    let received: u64 = r.snapshot.dirs.iter().filter(|d| d.to == standby + 1).map(|d| d.bytes).sum();
    assert!(received > 1 << 20, "standby {} received only {received} bytes", standby + 1);
}

#[test]
fn two_devices_over_wifi_stay_in_sync() {
    let r = run("net2", 2, SECRET);
    assert_in_sync(&r, 0);
}

#[test]
fn three_devices_both_standbys_match() {
    let r = run("net3", 3, SECRET);
    assert_in_sync(&r, 0);
    assert_in_sync(&r, 1);
}

#[test]
fn a_standby_with_the_wrong_secret_is_refused_and_receives_nothing() {
    let r = run("netbad", 2, OTHER_SECRET);
    let commits = digests(&r.standbys[0]);
    assert!(commits.is_empty(), "a standby with the wrong secret committed {commits:?}");
    assert!(r.standbys[0].contains("standby: connection closed: bad or tampered input"), "{}", r.standbys[0]);
    assert!(r.active.output.contains("connection dropped"), "{}", r.active.tail());
    // The guest ran on regardless.
    assert!(r.active.output.contains("vmsync-guest: workload video end rc=0"));
}
