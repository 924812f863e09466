//! Switching the running guest between devices over the emulated wifi
//! link: A → B → A, A → B → C → A, a switch asked for during a cut (fails
//! cleanly, a later one succeeds), and a failover after the active
//! device's QEMU is killed. The guest's own console lines prove it went on:
//! its counter and memory checksum continue, its uptime never goes back,
//! the kernel does not boot again.
use qemu_tests::devices::{device_config, run_scripted, DevicesControl, DevicesRun, SwitchOutcome};
use qemu_tests::link::Profile;
use qemu_tests::{host_mem_mib, Assets};
use std::path::PathBuf;
use std::time::Duration;

const MEM_MIB: u64 = 128;
const DEADLINE: Duration = Duration::from_secs(480);
const SECRET: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";
const WORKLOAD: &str = "video";
const SWITCH_WAIT: Duration = Duration::from_secs(40);

/// One multi-device run at a time: each is two or three emulated CPUs.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn images(name: &str, devices: usize, seconds: u64) -> Vec<PathBuf> {
    let a = Assets::from_env();
    let cmdline = format!("console=ttyAMA0 vmsync.workload={WORKLOAD} vmsync.seconds={seconds}");
    (0..devices)
        .map(|i| {
            let config = format!("policy=interval:200ms\n{}", device_config(i, devices, 0, SECRET));
            a.image_with(&format!("{name}-{i}.img"), &a.hypervisor, &cmdline, MEM_MIB, &config)
        })
        .collect()
}

fn run(name: &str, devices: usize, seconds: u64, script: impl FnOnce(&DevicesControl) + Send) -> DevicesRun {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let imgs = images(name, devices, seconds);
    let refs: Vec<&std::path::Path> = imgs.iter().map(|p| p.as_path()).collect();
    run_scripted(&refs, host_mem_mib(MEM_MIB), Profile::wifi(), DEADLINE, false, script).expect("starting the devices")
}

/// Waits until the guest's workload is running and `standby` has committed
/// an epoch of it (so it holds a recent image to switch to).
fn wait_steady(c: &DevicesControl, holder: usize, standby: usize) {
    let lines = c.count(holder, "vmsync-workload: counter=");
    assert!(
        c.wait_for(holder, Duration::from_secs(240), |o| o.matches("vmsync-workload: counter=").count() >= lines.max(1) + 2),
        "the workload does not run on device {holder}:\n{}",
        tail(&c.output(holder))
    );
    let commits = c.count(standby, "vmsync: standby committed epoch=");
    assert!(
        c.wait_for(standby, Duration::from_secs(120), |o| o.matches("vmsync: standby committed epoch=").count() > commits + 2),
        "device {standby} commits nothing:\n{}",
        tail(&c.output(standby))
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn switch(c: &DevicesControl, to: usize) {
    let r = c.switch_and_wait(to, SWITCH_WAIT);
    assert_eq!(r, SwitchOutcome::In, "switch to device {to}:\n{}", c.outputs().iter().map(|o| tail(o)).collect::<Vec<_>>().join("\n-----\n"));
}

/// Everything a run with switches must show: the guest powered off on the
/// last holder, every switch's digests match, and the guest went on.
fn assert_guest_continued(r: &DevicesRun, holders: &[usize]) {
    let t = r.timeline();
    assert!(!r.timed_out, "the guest did not power off in time");
    assert!(r.powered_off_ok(), "the guest did not power off cleanly: {:?} {:?}", r.powered_off, r.statuses);
    assert_eq!(t.holders(), holders, "who ran the guest: {t:#?}");
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    for s in &t.switches {
        assert!(s.digest_match, "switch {s:?}: the image moved is not the guest's");
        assert!(s.latency_ms < 10_000, "switch {s:?} took too long");
    }
    let g = r.guest(Some(WORKLOAD));
    assert!(!g.rebooted, "the kernel booted {} times", g.boots);
    assert!(g.counter_continuous, "the guest's counter or checksum broke: {:?}", g.problems);
    assert!(g.time_monotonic, "the guest's uptime went backward: {:?}", g.problems);
    assert_eq!(g.checksums_verified, Some(true), "{:?}", g.problems);
    assert!(g.lines >= 10, "only {} guest lines", g.lines);
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_to_b_and_back_over_wifi() {
    let ram = MEM_MIB << 20;
    let r = run("sw2", 2, 20, |c| {
        wait_steady(c, 0, 1);
        switch(c, 1);
        let at_first = c.link().snapshot();
        // B runs the guest and syncs A (now its standby) with deltas only.
        wait_steady(c, 1, 0);
        switch(c, 0);
        let back = c.link().snapshot();
        let to_a: u64 =
            back.dirs.iter().filter(|d| d.to == 0).map(|d| d.bytes).sum::<u64>() - at_first.dirs.iter().filter(|d| d.to == 0).map(|d| d.bytes).sum::<u64>();
        assert!(to_a < ram / 8, "B sent A {to_a} bytes between the switches: not deltas");
    });
    assert_guest_continued(&r, &[0, 1, 0]);
    let t = r.timeline();
    assert!(t.switches[1].final_epoch_bytes < ram / 16, "{:?}", t.switches[1]);
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn round_the_three_devices() {
    let r = run("sw3", 3, 25, |c| {
        wait_steady(c, 0, 1);
        wait_steady(c, 0, 2);
        switch(c, 1);
        wait_steady(c, 1, 2);
        switch(c, 2);
        wait_steady(c, 2, 0);
        switch(c, 0);
    });
    assert_guest_continued(&r, &[0, 1, 2, 0]);
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_switch_during_a_cut_fails_cleanly_and_a_later_one_succeeds() {
    let r = run("swcut", 2, 25, |c| {
        wait_steady(c, 0, 1);
        c.link().cut(0, 1).expect("cutting the link");
        match c.switch_and_wait(1, SWITCH_WAIT) {
            SwitchOutcome::Failed(why) => assert!(why.contains("no handover"), "{why}"),
            other => panic!("a switch over a cut link: {other:?}"),
        }
        c.link().restore(0, 1).expect("restoring the link");
        // The guest kept running on A, and B catches up again.
        wait_steady(c, 0, 1);
        switch(c, 1);
    });
    assert_guest_continued(&r, &[0, 1]);
    assert_eq!(r.timeline().failed.len(), 1, "{:?}", r.timeline().failed);
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn failover_after_the_active_device_dies() {
    let r = run("swfail", 2, 20, |c| {
        wait_steady(c, 0, 1);
        c.kill(0).expect("killing device 0");
        let r = c.failover_and_wait(1, SWITCH_WAIT);
        assert_eq!(r, SwitchOutcome::In, "failover:\n{}", tail(&c.output(1)));
    });
    let t = r.timeline();
    assert_eq!(t.holders(), [0, 1], "{t:#?}");
    let s = &t.switches[0];
    assert!(s.digest_match, "{s:?}");
    // B resumed from its last committed epoch: A's digest of that epoch.
    assert!(r.powered_off_ok(), "the guest did not power off on B");
    let g = r.guest(Some(WORKLOAD));
    assert!(!g.rebooted, "the kernel booted {} times", g.boots);
    assert!(g.counter_continuous && g.time_monotonic, "{:?}", g.problems);
}

/// `vmsync: standby committed epoch=E digest=D` lines of `out` from `from`
/// on: (epoch, digest).
fn commits_from(out: &str, from: usize) -> Vec<(u64, String)> {
    let text = out.get(from..).unwrap_or("");
    text.lines()
        .filter_map(|l| l.split_once("vmsync: standby committed ").map(|(_, r)| r))
        .filter_map(|r| Some((kv(r, "epoch")?.parse().ok()?, kv(r, "digest")?.to_string())))
        .collect()
}

fn kv<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    qemu_tests::switching::kv(rest, key)
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_partition_a_failover_and_the_heal_leave_one_guest() {
    use qemu_tests::switching::{cut_digests, FAILOVER, FENCED};
    /// How long A may run the guest after the heal.
    const FENCE_WITHIN: Duration = Duration::from_secs(30);
    // A's console length at the heal, and how long its fence took.
    let at_heal = std::sync::Mutex::new(None::<(usize, Duration)>);
    let r = run("swsplit", 3, 90, |c| {
        wait_steady(c, 0, 1);
        wait_steady(c, 0, 2);
        c.link().isolate(0).expect("cutting A off");
        // A runs on, unaware; B takes over from its last commit.
        assert!(c.sleep(Duration::from_secs(2)));
        let r = c.failover_and_wait(1, SWITCH_WAIT);
        assert_eq!(r, SwitchOutcome::In, "failover:\n{}", tail(&c.output(1)));
        // Both run the guest for a while: A's lines go on past B's resume point.
        let lines = c.count(0, "vmsync-workload: counter=");
        assert!(
            c.wait_for(0, Duration::from_secs(60), |o| o.matches("vmsync-workload: counter=").count() >= lines + 5),
            "A stopped running its guest while cut off:\n{}",
            tail(&c.output(0))
        );
        let from = c.output(0).len();
        c.link().rejoin(0).expect("healing");
        let healed = c.elapsed();
        assert!(
            c.wait_for(0, FENCE_WITHIN, |o| o[from..].contains(FENCED)),
            "A was not fenced within {} s of the heal:\n{}",
            FENCE_WITHIN.as_secs(),
            tail(&c.output(0))
        );
        *at_heal.lock().unwrap() = Some((from, c.elapsed() - healed));
        // A is a standby of B's term now: it is resynced and commits.
        let fence = c.output(0).rfind(FENCED).unwrap_or(0);
        assert!(c.wait_for(0, Duration::from_secs(180), |o| !commits_from(o, fence).is_empty()), "A commits nothing after its fence:\n{}", tail(&c.output(0)));
    });
    let (heal_at, fenced_after) = at_heal.into_inner().unwrap().expect("the script reached the heal");
    eprintln!("A fenced {:.1} s after the heal", fenced_after.as_secs_f64());
    let (a, b, cc) = (&r.outputs[0], &r.outputs[1], &r.outputs[2]);
    let t = r.timeline();
    assert_eq!(t.holders(), [0, 1], "{t:#?}");
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let s = &t.switches[0];
    assert!(s.kind == qemu_tests::switching::SwitchKind::Failover && s.digest_match, "{s:?}");
    assert!(r.powered_off_ok() && r.powered_off == Some(1), "the guest did not power off cleanly on B: {:?} {:?}", r.powered_off, r.statuses);

    // One guest after the heal: nothing on A after its fence line, nothing ever on C.
    let fence = heal_at + a[heal_at..].find(FENCED).expect("A's fence line");
    assert_eq!(a[fence..].matches("vmsync-workload:").count(), 0, "A ran its guest after its fence line:\n{}", &a[fence..]);
    assert_eq!(cc.matches("vmsync-workload:").count(), 0, "C ran a guest");
    assert!(a[heal_at..fence].matches("vmsync-workload:").count() <= 30, "A ran its guest long after the heal");
    assert!(t.segments[0].end < heal_at, "A's segment ends at its cut of the failover's epoch, before the heal");

    // B's term: what B cut after it took over. A and C commit it.
    let b_cuts = cut_digests(&[b[b.find(FAILOVER).expect("B's failover line")..].to_string()]);
    let a_after = commits_from(a, fence);
    assert!(!a_after.is_empty() && a_after.iter().all(|c| b_cuts.contains(c)), "A's commits after its fence are not B's cuts: {a_after:?}");
    let c_last = commits_from(cc, 0).pop().expect("C committed");
    assert!(b_cuts.contains(&c_last), "C's last commit {c_last:?} is not one of B's cuts");
    // Every committed digest agrees with a cut of that epoch by the device that was active.
    let all_cuts = cut_digests(&r.outputs);
    for (i, o) in r.outputs.iter().enumerate() {
        for c in commits_from(o, 0) {
            assert!(all_cuts.contains(&c), "device {i} committed {c:?}, which no active device cut");
        }
    }

    // The guest went on across the failover, A's history past it left out.
    let g = r.guest(Some(WORKLOAD));
    assert!(!g.rebooted, "the kernel booted {} times", g.boots);
    assert!(g.counter_continuous && g.time_monotonic, "{:?}", g.problems);
    assert_eq!(g.checksums_verified, Some(true), "{:?}", g.problems);
    assert!(g.lines >= 10, "only {} guest lines", g.lines);
}
