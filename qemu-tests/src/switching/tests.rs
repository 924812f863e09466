//! Synthetic consoles written by hand after the switch's log lines (docs/protocol.md, "Switch").
use super::*;
use crate::guest_check::{self, verdict};
use vmsync_workloads::counter::{WorkingSet, DEFAULT_MIB};

/// A 64-hex digest for epoch `e` (`salt` makes a different one).
fn d(e: u64, salt: u64) -> String {
    format!("{:064x}", e * 1000 + salt)
}

/// The `counter` workload's line at `n` (real checksum), uptime `n + 4` s.
fn wl(n: u64) -> String {
    wl_at(n, (n + 4) * 1000)
}

fn wl_at(n: u64, uptime_ms: u64) -> String {
    let sum = WorkingSet::checksum_after(DEFAULT_MIB, n);
    format!("vmsync-workload: counter={n} checksum={sum:016x} uptime={}.{:02}\n", uptime_ms / 1000, (uptime_ms % 1000) / 10)
}

const BOOT: &str = "Booting Linux on physical CPU 0x0000000000 [0x411fd070]\nLinux version 6.1.0-test\nvmsync-guest: init\n";

/// Active: epochs `e0..=e1` cut, one workload line after each of the first `counters`.
fn active(epochs: std::ops::RangeInclusive<u64>, counters: std::ops::RangeInclusive<u64>) -> String {
    let mut s = String::new();
    let mut cs = counters;
    for e in epochs {
        s += &format!("vmsync: digest epoch={e} d={}\n", d(e, 0));
        s += &format!("vmsync: epoch epoch={e} dirty_pages=1\n");
        if let Some(c) = cs.next() {
            s += &wl(c);
        }
    }
    for c in cs {
        s += &wl(c);
    }
    s
}

fn standby(epochs: std::ops::RangeInclusive<u64>) -> String {
    epochs.map(|e| format!("vmsync: standby committed epoch={e} digest={}\n", d(e, 0))).collect()
}

fn out_line(e: u64, to: usize) -> String {
    format!("vmsync: switch: out epoch={e} to={} pause_ms=15 final_epoch_bytes=40960 digest={}\n", device_ip(to), d(e, 0))
}

fn in_line(e: u64, from: usize, latency: u64) -> String {
    format!(
        "vmsync: switch: request sent at_ms=1000\nvmsync: switch: in epoch={e} from={} latency_ms={latency} final_epoch_bytes=40960 digest={}\n",
        device_ip(from),
        d(e, 0)
    )
}

/// A → B → C → A over three devices; the guest powers off on A.
fn abca() -> Vec<String> {
    let a = format!(
        "{BOOT}{}{}{}{}{}vmsync-guest: poweroff\nvmsync: guest powered off (PSCI SYSTEM_OFF)\n",
        active(1..=3, 1..=3),
        out_line(3, 1),
        standby(4..=9),
        in_line(9, 2, 41),
        active(10..=11, 8..=9)
    );
    let b = format!("{}{}{}{}{}", standby(1..=3), in_line(3, 0, 38), active(4..=6, 4..=5), out_line(6, 2), standby(7..=11));
    let c = format!("{}{}{}{}{}", standby(1..=6), in_line(6, 1, 45), active(7..=9, 6..=7), out_line(9, 0), standby(10..=11));
    vec![a, b, c]
}

#[test]
fn a_b_c_a_timeline_and_guest() {
    let outs = abca();
    let t = timeline(&outs, 0);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(t.holders(), vec![0, 1, 2, 0]);
    let pairs: Vec<(usize, usize, u64, u64)> = t.switches.iter().map(|s| (s.from, s.to, s.epoch, s.latency_ms)).collect();
    assert_eq!(pairs, vec![(0, 1, 3, 38), (1, 2, 6, 45), (2, 0, 9, 41)]);
    assert!(t.switches.iter().all(|s| s.digest_match && s.kind == SwitchKind::Switch && s.final_epoch_bytes == 40960 && s.pause_ms == Some(15)));
    assert!(t.failed.is_empty());
    // The guest's console: A's boot, then the holders in turn.
    let console = t.guest_console(&outs);
    assert!(console.starts_with("Booting Linux"));
    assert!(!console.contains("standby committed"));
    assert!(console.trim_end().ends_with("vmsync: guest powered off (PSCI SYSTEM_OFF)"));
    let v = verdict(&outs, &t, Some("counter"));
    assert_eq!(v.problems, Vec::<String>::new());
    assert!(!v.rebooted && v.counter_continuous && v.time_monotonic, "{v:?}");
    assert_eq!(v.checksums_verified, Some(true));
    assert_eq!((v.lines, v.first_counter, v.last_counter, v.boots), (9, Some(1), Some(9), 1));
    assert_eq!(last_commit(&outs[1]).map(|c| c.0), Some(11));
    assert_eq!(cut_digests(&outs).len(), 11);
}

#[test]
fn a_digest_that_differs_is_a_mismatch() {
    // The out digest differs from the in digest.
    let mut outs = abca();
    outs[1] = outs[1].replace(
        &format!("epoch=6 to={} pause_ms=15 final_epoch_bytes=40960 digest={}", device_ip(2), d(6, 0)),
        &format!("epoch=6 to={} pause_ms=15 final_epoch_bytes=40960 digest={}", device_ip(2), d(6, 1)),
    );
    let t = timeline(&outs, 0);
    assert_eq!(t.holders(), vec![0, 1, 2, 0]);
    assert_eq!(t.switches.iter().map(|s| s.digest_match).collect::<Vec<_>>(), vec![true, false, true]);
    // Both sides agree, but the new device committed something else at that epoch.
    let mut outs = abca();
    outs[2] = outs[2].replace(&format!("standby committed epoch=6 digest={}", d(6, 0)), &format!("standby committed epoch=6 digest={}", d(6, 7)));
    let t = timeline(&outs, 0);
    assert_eq!(t.switches.iter().map(|s| s.digest_match).collect::<Vec<_>>(), vec![true, false, true]);
}

#[test]
fn a_failed_switch_leaves_the_guest_where_it_was_and_a_later_one_succeeds() {
    let a = format!(
        "{BOOT}{}vmsync: warning: switch: failed: standby 169.254.0.2 unreachable\n{}{}{}",
        active(1..=4, 1..=4),
        active(5..=7, 5..=7),
        out_line(7, 1),
        standby(8..=9)
    );
    let b = format!(
        "{}vmsync: console: switch requested\nvmsync: switch: request sent at_ms=9000\nvmsync: warning: switch: failed: no answer from 169.254.0.1\n{}{}{}vmsync: guest powered off (PSCI SYSTEM_OFF)\n",
        standby(1..=3),
        standby(4..=7),
        in_line(7, 0, 52),
        active(8..=9, 8..=10)
    );
    let outs = vec![a, b];
    let t = timeline(&outs, 0);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(t.holders(), vec![0, 1]);
    assert_eq!(t.switches.len(), 1);
    assert!(t.switches[0].digest_match);
    assert_eq!(
        t.failed,
        vec![
            FailedSwitch { device: 0, reason: "standby 169.254.0.2 unreachable".into() },
            FailedSwitch { device: 1, reason: "no answer from 169.254.0.1".into() }
        ]
    );
    let v = verdict(&outs, &t, Some("counter"));
    assert!(v.counter_continuous && v.time_monotonic && !v.rebooted, "{v:?}");
    assert_eq!(v.last_counter, Some(10));
}

/// A killed mid-line after epoch 5; B last committed epoch 4 and fails over.
fn failover_run(resume_at: u64, resume_uptime_ms: u64) -> Vec<String> {
    let a = format!("{BOOT}{}vmsync-workload: counter=6 chec", active(1..=5, 1..=5));
    let b = format!(
        "{}vmsync: console: failover requested\nvmsync: switch: failover epoch=4 latency_ms=25 digest={}\n{}{}vmsync: guest powered off (PSCI SYSTEM_OFF)\n",
        standby(1..=4),
        d(4, 0),
        wl_at(resume_at, resume_uptime_ms),
        active(5..=7, resume_at + 1..=resume_at + 3)
    );
    vec![a, b]
}

#[test]
fn a_failover_resumes_from_the_last_committed_epoch() {
    // Counter 5 again (the epoch-4 state printed it once before), uptime back 0.5 s.
    let outs = failover_run(5, 8_500);
    let t = timeline(&outs, 0);
    assert_eq!(t.holders(), vec![0, 1]);
    assert_eq!(t.switches.len(), 1);
    let s = &t.switches[0];
    assert_eq!((s.kind, s.from, s.to, s.epoch, s.latency_ms, s.digest_match), (SwitchKind::Failover, 0, 1, 4, 25, true));
    let v = verdict(&outs, &t, Some("counter"));
    assert!(v.counter_continuous && v.time_monotonic && !v.rebooted, "{v:?}");
    // The half line A printed as it died is noted, not counted.
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert_eq!(v.last_counter, Some(8));

    // The failover digest must be what A cut at that epoch.
    let mut bad = failover_run(5, 8_500);
    bad[1] = bad[1].replace(&format!("failover epoch=4 latency_ms=25 digest={}", d(4, 0)), &format!("failover epoch=4 latency_ms=25 digest={}", d(4, 9)));
    assert!(!timeline(&bad, 0).switches[0].digest_match);

    // Back to counter 1 is a reset, not a failover's repeat; 3.5 s back in
    // time is too far (the bound is 3 s), 3 s is not.
    let outs = failover_run(1, 8_500);
    let v = verdict(&outs, &timeline(&outs, 0), Some("counter"));
    assert!(!v.counter_continuous, "{v:?}");
    let outs = failover_run(5, 6_000);
    let v = verdict(&outs, &timeline(&outs, 0), Some("counter"));
    assert!(v.counter_continuous && v.time_monotonic, "{v:?}");
    let outs = failover_run(5, 5_500);
    let v = verdict(&outs, &timeline(&outs, 0), Some("counter"));
    assert!(v.counter_continuous && !v.time_monotonic, "{v:?}");
}

/// A cut off from B after epoch 4 (B committed it), B fails over from 4
/// while A runs on to epoch 9 unaware; after the heal B's term fences A,
/// which then commits B's epochs as its standby.
fn split_brain_run(fenced: bool) -> Vec<String> {
    let fence = if fenced {
        "vmsync: warning: fence: term 2 of this guest runs on another device (ours is 1): the guest stopped here at epoch 9 (not committed past the other term's take-over); this device is a standby now\n"
    } else {
        ""
    };
    let a = format!("{BOOT}{}{fence}{}", active(1..=9, 1..=9), if fenced { standby(7..=8) } else { String::new() });
    let b = format!(
        "{}vmsync: console: failover requested\nvmsync: switch: failover epoch=4 latency_ms=25 digest={}\n{}vmsync: guest powered off (PSCI SYSTEM_OFF)\n",
        standby(1..=4),
        d(4, 0),
        active(5..=8, 4..=8)
    );
    vec![a, b]
}

#[test]
fn after_a_partition_a_holder_that_ran_on_until_fenced_ends_at_its_cut_of_the_failover_epoch() {
    let outs = split_brain_run(true);
    let t = timeline(&outs, 0);
    assert_eq!(t.holders(), vec![0, 1]);
    let cut4 = format!("vmsync: digest epoch=4 d={}\n", d(4, 0));
    assert_eq!(t.segments[0].end, outs[0].find(&cut4).unwrap() + cut4.len(), "A's segment ends at its cut of epoch 4");
    assert!(t.switches[0].digest_match && t.switches[0].kind == SwitchKind::Failover, "{:?}", t.switches);
    let v = verdict(&outs, &t, Some("counter"));
    assert!(v.counter_continuous && v.time_monotonic && !v.rebooted, "{v:?}");
    assert_eq!((v.lines, v.last_counter), (8, Some(8)), "A's lines 5 to 9 ran on a lost history");
    // Unfenced, A still runs the guest: its lines past epoch 4 are the guest's, and B's go back too far.
    let outs = split_brain_run(false);
    let t = timeline(&outs, 0);
    assert_eq!(t.segments[0].end, outs[0].len());
    assert!(!verdict(&outs, &t, Some("counter")).counter_continuous);
}

#[test]
fn a_second_boot_banner_is_a_reboot_and_a_reset_counter_breaks_continuity() {
    let a = format!("{BOOT}{}{}", active(1..=3, 1..=3), out_line(3, 1));
    let b = format!("{}{}{BOOT}{}vmsync: guest powered off (PSCI SYSTEM_OFF)\n", standby(1..=3), in_line(3, 0, 30), active(4..=5, 1..=2));
    let outs = vec![a, b];
    let t = timeline(&outs, 0);
    let v = verdict(&outs, &t, Some("counter"));
    assert!(v.rebooted && !v.counter_continuous, "{v:?}");
    assert_eq!(v.boots, 2);
}

#[test]
fn time_going_back_across_a_switch_is_not_monotonic() {
    let a = format!("{BOOT}{}{}", active(1..=3, 1..=3), out_line(3, 1));
    // Counter continues but uptime jumps back a second on B.
    let b = format!("{}{}{}{}", standby(1..=3), in_line(3, 0, 30), wl_at(4, 6_000), wl_at(5, 7_000));
    let outs = vec![a, b];
    let v = verdict(&outs, &timeline(&outs, 0), Some("counter"));
    assert!(v.counter_continuous && !v.time_monotonic, "{v:?}");
}

#[test]
fn a_wrong_checksum_breaks_continuity() {
    let a = format!("{BOOT}{}{}", active(1..=3, 1..=3), out_line(3, 1));
    let b = format!("{}{}vmsync-workload: counter=4 checksum=0123456789abcdef uptime=8.00\n{}", standby(1..=3), in_line(3, 0, 30), wl(5));
    let outs = vec![a, b];
    let t = timeline(&outs, 0);
    let v = verdict(&outs, &t, Some("counter"));
    assert!(!v.counter_continuous && v.time_monotonic, "{v:?}");
    assert_eq!(v.checksums_verified, Some(false));
    // Without a workload to recompute, only the counter is checked.
    let v = verdict(&outs, &t, None);
    assert!(v.counter_continuous && v.checksums_verified.is_none());
}

#[test]
fn workload_lines_cut_by_a_log_line_or_a_switch_are_joined() {
    let l3 = wl(3);
    let (l3a, l3b) = l3.split_at(40);
    let l5 = wl(5);
    let (l5a, l5b) = l5.split_at(25);
    // Within A: the logger starts its line on a fresh one.
    let a = format!("{BOOT}{}{}{l3a}\nvmsync: epoch epoch=3 dirty_pages=1\n{l3b}{}{l5a}\n{}", wl(1), wl(2), wl(4), out_line(5, 1));
    // Across the switch: the rest of counter 5 comes out on B.
    let b = format!("{}{}{l5b}{}", standby(1..=5), in_line(5, 0, 30), wl(6));
    let outs = vec![a, b];
    let t = timeline(&outs, 0);
    let g = guest_check::guest_lines(&outs, &t);
    assert!(g.unreadable.is_empty(), "{:?}", g.unreadable);
    assert_eq!(g.lines.iter().map(|l| l.line.counter).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    let v = verdict(&outs, &t, Some("counter"));
    assert!(v.counter_continuous && v.time_monotonic && v.problems.is_empty(), "{v:?}");
}

/// The workload's own prefix cut by two hypervisor lines (seen in a run:
/// "vmsync-work", the digest and epoch lines of a cut, then "load: ...").
#[test]
fn a_workload_prefix_cut_by_hypervisor_lines_is_joined() {
    let l2 = wl(2);
    let (l2a, l2b) = l2.split_at(11);
    assert_eq!(l2a, "vmsync-work");
    let a = format!("{BOOT}{}{l2a}\nvmsync: digest epoch=3 d=00\nvmsync: epoch epoch=3 dirty_pages=1\n{l2b}{}", wl(1), wl(3));
    let outs = vec![a];
    let t = timeline(&outs, 0);
    let g = guest_check::guest_lines(&outs, &t);
    assert!(g.unreadable.is_empty(), "{:?}", g.unreadable);
    assert_eq!(g.lines.iter().map(|l| l.line.counter).collect::<Vec<_>>(), vec![1, 2, 3]);
}

/// A whole line followed by a log line, then the next line's prefix cut
/// after its first byte (seen in a run: "...dropped=8", a log line, "v", a
/// log line, "msync-workload: counter=17 ..."). The "v" starts the next
/// line: it is not the end of the one before ("dropped=8v" would read).
#[test]
fn a_workload_prefix_cut_after_one_byte_is_joined() {
    let line = |n: u64| format!("vmsync-workload: counter={n} checksum={:016x} uptime={n}.00 frames={} dropped=8\n", n * 7, n * 30);
    let l2 = line(2);
    let (l2a, l2b) = l2.split_at(1);
    let a = format!("{BOOT}{}vmsync: epoch epoch=3 dirty_pages=1\n{l2a}\nvmsync: ack standby=1 epoch=3 at_ms=5\n{l2b}{}", line(1), line(3));
    let outs = vec![a];
    let t = timeline(&outs, 0);
    let g = guest_check::guest_lines(&outs, &t);
    assert!(g.unreadable.is_empty(), "{:?}", g.unreadable);
    let read: Vec<_> = g.lines.iter().map(|l| (l.line.counter, l.line.field("dropped").map(str::to_string))).collect();
    assert_eq!(read, (1..=3).map(|n| (n, Some("8".to_string()))).collect::<Vec<_>>());
}

#[test]
fn an_out_without_its_in_is_a_problem() {
    let a = format!("{BOOT}{}{}", active(1..=3, 1..=3), out_line(3, 1));
    let b = standby(1..=3);
    let t = timeline(&[a, b], 0);
    assert_eq!(t.holders(), vec![0]);
    assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
}

#[test]
fn video_checksums_are_recomputed_from_frames() {
    use vmsync_workloads::video::Video;
    let line = |n: u64, frames: u64| {
        format!("vmsync-workload: counter={n} checksum={:016x} uptime={}.00 frames={frames} dropped=0\n", Video::checksum_after(frames), n + 4)
    };
    let a = format!("{BOOT}{}{}{}", line(1, 30), line(2, 58), out_line(1, 1));
    let b = format!("{}{}{}", standby(1..=1), in_line(1, 0, 30), line(3, 90));
    let outs = vec![a, b];
    let v = verdict(&outs, &timeline(&outs, 0), Some("video"));
    assert!(v.counter_continuous && v.checksums_verified == Some(true), "{v:?}");
}

#[test]
fn device_addresses() {
    assert_eq!(device_of_ip("169.254.0.3"), Some(2));
    assert_eq!(device_of_ip("169.254.0.1:7000"), Some(0));
    assert_eq!(device_of_ip("10.0.0.1"), None);
    assert_eq!(kv("epoch=3 to=169.254.0.2 digest=ab", "to"), Some("169.254.0.2"));
}
