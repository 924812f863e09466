//! Two and three devices kept in sync over the emulated wifi link: the
//! active device streams its epochs from EL2 over its own TCP/IP stack; each
//! standby commits them and its committed image's digest must equal the
//! active device's guest memory at that epoch.
use qemu_tests::link::{Filter, FlipAt, Links, Profile};
use qemu_tests::multi::{self, Control, MultiRun};
use qemu_tests::{digests, host_mem_mib, peer_stat, Assets};
use std::path::PathBuf;
use std::time::Duration;

const MEM_MIB: u64 = 128;
const DEADLINE: Duration = Duration::from_secs(420);
const SECRET: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const OTHER_SECRET: &str = "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";

fn images(name: &str, devices: usize, standby_secret: &str, seconds: u64) -> (PathBuf, Vec<PathBuf>) {
    let a = Assets::from_env();
    let cmdline = &format!("console=ttyAMA0 vmsync.workload=video vmsync.seconds={seconds}");
    let active =
        a.image_with(&format!("{name}-a.img"), &a.hypervisor, cmdline, MEM_MIB, &format!("policy=interval:200ms\n{}", multi::active_config(devices, SECRET)));
    let standbys =
        (1..devices).map(|i| a.image_with(&format!("{name}-{i}.img"), &a.hypervisor, cmdline, MEM_MIB, &multi::standby_config(i, standby_secret))).collect();
    (active, standbys)
}

fn run(name: &str, devices: usize, standby_secret: &str) -> MultiRun {
    scripted(name, devices, standby_secret, 4, None)
}

/// One multi-device run at a time: each is two or three emulated CPUs
/// already, on a two-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn scripted(name: &str, devices: usize, standby_secret: &str, seconds: u64, script: Option<multi::Script>) -> MultiRun {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (active, standbys) = images(name, devices, standby_secret, seconds);
    let refs: Vec<&std::path::Path> = standbys.iter().map(|p| p.as_path()).collect();
    let r = multi::run_scripted(&active, &refs, host_mem_mib(MEM_MIB), Profile::wifi(), DEADLINE, false, script).expect("starting the devices");
    assert!(!r.active.timed_out(), "the active device did not power off:\n{}", r.active.tail());
    assert!(r.active.exited_ok(), "active QEMU status {:?}:\n{}", r.active.status, r.active.tail());
    r
}

/// Every commit of the standby matches the active device at that epoch,
/// and the standby holds the last epoch cut.
fn assert_in_sync(r: &MultiRun, standby: usize) {
    let active = digests(&r.active.output);
    // After a restart only the new incarnation's commits count.
    let out = r.standbys[standby].rsplit("--- restarted ---").next().unwrap_or("");
    let commits = digests(out);
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
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn two_devices_over_wifi_stay_in_sync() {
    let r = run("net2", 2, SECRET);
    assert_in_sync(&r, 0);
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn three_devices_both_standbys_match() {
    let r = run("net3", 3, SECRET);
    assert_in_sync(&r, 0);
    assert_in_sync(&r, 1);
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_standby_with_the_wrong_secret_is_refused_and_receives_nothing() {
    let r = run("netbad", 2, OTHER_SECRET);
    let commits = digests(&r.standbys[0]);
    assert!(commits.is_empty(), "a standby with the wrong secret committed {commits:?}");
    // The active side finds the standby's Confirm does not open and drops
    // the connection; the standby never served it (no key proved).
    assert!(r.standbys[0].contains("standby: handshake from") && !r.standbys[0].contains("standby: connection 1 from"), "{}", r.standbys[0]);
    assert!(r.active.output.contains("connection dropped"), "{}", r.active.tail());
    // The guest ran on regardless.
    assert!(r.active.output.contains("vmsync-guest: workload video end rc=0"));
}

/// Waits until standby 1 committed `epoch` or a later one (the initial
/// copy is over and sync is in its steady state). A catch-up commits at
/// its final cut only, so not every epoch has a commit of its own.
fn after_commit(c: &Control, epoch: u64) -> bool {
    c.wait_standby(1, Duration::from_secs(240), |o| digests(o).iter().any(|(e, _)| *e >= epoch))
}

fn delivered_to(r: &MultiRun, device: usize) -> u64 {
    r.snapshot.dirs.iter().filter(|d| d.to == device).map(|d| d.bytes).sum()
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_three_second_cut_resumes_without_a_full_resync() {
    let at_restore = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mark = at_restore.clone();
    let r = scripted(
        "netcut",
        2,
        SECRET,
        12,
        Some(Box::new(move |c: &Control| {
            assert!(after_commit(c, 5), "no steady state to cut in");
            c.link.cut(0, 1).unwrap();
            std::thread::sleep(Duration::from_secs(3));
            c.link.restore(0, 1).unwrap();
            let received: u64 = c.link.snapshot().dirs.iter().filter(|d| d.to == 1).map(|d| d.bytes).sum();
            *mark.lock().unwrap() = Some(received);
        })),
    );
    assert_in_sync(&r, 0);
    assert_eq!(peer_stat(&r.active.output, 1, "full_resyncs"), Some(0), "{}", r.active.tail());
    let before = at_restore.lock().unwrap().expect("the cut never happened");
    let after = delivered_to(&r, 1) - before;
    assert!(after < (MEM_MIB << 20) / 4, "{after} bytes after the restore: that is a full copy, not a resume");
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_flipped_bit_is_rejected_and_the_session_recovers() {
    let r = scripted(
        "netflip",
        2,
        SECRET,
        12,
        Some(Box::new(|c: &Control| {
            assert!(after_commit(c, 5), "no steady state to corrupt");
            // Checksums fixed up: TCP delivers the bad byte; only the AEAD can catch it.
            c.link.flip_bit(Filter::tcp_payload(Links::Dir { from: 0, to: 1 }), FlipAt::Random, true).unwrap();
        })),
    );
    assert!(r.standbys[0].contains("standby: connection closed: bad or tampered input"), "the corruption was not caught:\n{}", r.standbys[0]);
    assert!(r.active.output.contains("connected holding epoch") && peer_stat(&r.active.output, 1, "reconnects").unwrap_or(0) >= 1);
    assert_eq!(peer_stat(&r.active.output, 1, "full_resyncs"), Some(0));
    assert_in_sync(&r, 0);
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_standby_restarted_from_scratch_gets_a_full_resync_then_matches() {
    let r = scripted(
        "netrestart",
        2,
        SECRET,
        12,
        Some(Box::new(|c: &Control| {
            assert!(after_commit(c, 5), "no steady state to restart in");
            c.restart_standby(1).unwrap();
        })),
    );
    assert!(peer_stat(&r.active.output, 1, "full_resyncs").unwrap_or(0) >= 1, "{}", r.active.tail());
    assert_in_sync(&r, 0);
}

/// The workload's per-second counter on the first of its lines at or after
/// line `from` of `out` (its lines are a clock in the console's order).
fn counter_from(out: &str, from: usize) -> Option<u64> {
    out.lines().skip(from).find_map(|l| l.split_once("vmsync-workload: counter=").and_then(|(_, r)| r.split_whitespace().next()?.parse().ok()))
}

/// Issue 15: a guest writing incompressible data several times faster than
/// LTE carries, for seconds, with a small link budget: the guest never
/// stops, the active device never runs out of memory or drops the standby,
/// and once the writer stops the standby catches up within about what it
/// owes over the link rate, then holds every epoch with matching digests.
/// The guest's first copy goes over wifi (it is the whole booted guest);
/// the link turns to LTE once the standby committed it, before the burst.
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_write_burst_faster_than_lte_is_caught_up_and_stays_in_sync() {
    const START_S: u64 = 12;
    const WRITE_S: u64 = 6;
    const SECONDS: u64 = 30;
    const BURST_MIB: u64 = 4;
    const BUDGET_MIB: u64 = 4;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let a = Assets::from_env();
    let args = format!("--mib,{BURST_MIB},--start-seconds,{START_S},--write-seconds,{WRITE_S}");
    let cmdline = &format!("console=ttyAMA0 vmsync.workload=burst vmsync.seconds={SECONDS} vmsync.args={args}");
    let config = format!("policy=interval:200ms\nlink_budget={BUDGET_MIB}MiB\n{}", multi::active_config(2, SECRET));
    let active = a.image_with("burst-a.img", &a.hypervisor, cmdline, MEM_MIB, &config);
    let standby = a.image_with("burst-1.img", &a.hypervisor, cmdline, MEM_MIB, &multi::standby_config(1, SECRET));
    let script = Box::new(|c: &Control| {
        assert!(c.wait_standby(1, Duration::from_secs(120), |o| o.contains("standby committed epoch=")), "no first copy");
        c.link.set_profile(Links::All, Profile::lte()).unwrap();
    });
    let r = multi::run_scripted(&active, &[standby.as_path()], host_mem_mib(MEM_MIB), Profile::wifi(), DEADLINE, false, Some(script))
        .expect("starting the devices");
    let out = &r.active.output;
    let _ = std::fs::write(active.with_file_name("burst-active.log"), out);
    assert!(!r.active.timed_out(), "the active device did not power off:\n{}", r.active.tail());
    assert!(out.contains("vmsync-guest: workload burst end rc=0"), "the guest's workload did not finish:\n{}", r.active.tail());
    assert!(!out.contains("heap region") && !out.contains("OutOfMemory"), "an allocation failed:\n{}", r.active.tail());
    assert!(out.contains("catching up as epoch"), "the burst never put the standby behind its budget:\n{}", r.active.tail());
    assert_eq!(peer_stat(out, 1, "reconnects"), Some(0), "the standby was dropped:\n{}", r.active.tail());
    let peak = peer_stat(out, 1, "peak_queued").expect("no peer line");
    assert!(peak <= BUDGET_MIB << 20, "{peak} bytes queued, over the budget");
    assert_in_sync(&r, 0);
    // The clock: the workload's per-second lines, in console order.
    let lines: Vec<&str> = out.lines().collect();
    let first_ack = lines.iter().position(|l| l.contains("vmsync: ack standby=1 ")).expect("no ack");
    let start = lines.iter().position(|l| l.contains("writing=true")).expect("the writer never wrote");
    assert!(first_ack < start, "the first copy was not committed before the burst");
    let stop = lines.iter().rposition(|l| l.contains("writing=true")).unwrap_or(start) + 1;
    let caught = lines.iter().rposition(|l| l.contains("sync: standby 1 caught up")).expect("never caught up");
    let end = lines.iter().position(|l| l.contains("workload burst end")).unwrap_or(lines.len());
    assert!(caught > stop && caught < end, "the standby was not caught up between the writer's stop and the workload's end");
    let took = counter_from(out, caught).unwrap_or(SECONDS) - counter_from(out, stop).unwrap_or(0);
    // What it can owe at the stop: its queue (the budget) and the burst
    // region, at LTE's 10 Mbit/s.
    let bound = ((BUDGET_MIB + BURST_MIB) << 20) * 8 / 10_000_000 + 4;
    eprintln!(
        "burst over lte: caught up {took} s after the writer stopped (bound {bound} s); peak queued {peak} bytes; catch-ups {:?} finished of {:?}, owed {:?} pages, streamed {:?} + final {:?} pages, {:?} catch-up bytes",
        peer_stat(out, 1, "catchups_finished"),
        peer_stat(out, 1, "catchups_started"),
        peer_stat(out, 1, "owed_pages"),
        peer_stat(out, 1, "streamed_pages"),
        peer_stat(out, 1, "final_pages"),
        peer_stat(out, 1, "catchup_bytes"),
    );
    assert!(took <= bound, "the standby caught up {took} s after the writer stopped (bound {bound} s)");
}
