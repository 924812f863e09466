//! The demo's status line, once a second, read from the consoles so far:
//! who runs the guest, the last epoch it cut, the bytes of the epochs sent,
//! and how far each standby's committed epoch trails it.
use qemu_tests::switching::{self, POWERED_OFF};
use std::time::Duration;

use crate::report;
use crate::switching::WORKLOAD_START;

/// Where the guest is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Booting,
    Workload,
    /// The workload ended with this status (as the guest's init printed it).
    WorkloadEnded(String),
    PoweredOff,
}

/// A standby's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standby {
    pub device: usize,
    /// Its last commit since it became a standby.
    pub committed: Option<u64>,
    pub running: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The device that runs the guest (it starts on device 0).
    pub holder: usize,
    /// The last epoch the holder cut (any device's, before its first).
    pub epoch: Option<u64>,
    /// Sealed bytes of every epoch cut so far, on every device.
    pub sent_bytes: u64,
    pub standbys: Vec<Standby>,
    pub phase: Phase,
}

/// The status after `outputs` (each device's console so far); `running[i]`
/// says whether device `i`'s QEMU still runs.
pub fn status(outputs: &[String], running: &[bool]) -> Status {
    let t = switching::timeline(outputs, 0);
    let holder = t.last_holder().unwrap_or(0);
    let epochs: Vec<Vec<sync_core::stats::EpochStats>> = outputs.iter().map(|o| report::epochs(o)).collect();
    // The holder's epochs since it took the guest (last time); until it
    // cuts one, the newest anywhere (the one it took the guest at).
    let since = t.segments.last().map(|s| s.start).unwrap_or(0);
    let current = outputs.get(holder).and_then(|o| o.get(since..)).and_then(|o| report::epochs(o).last().map(|e| e.epoch));
    let epoch = current.or_else(|| epochs.iter().flatten().map(|e| e.epoch).max());
    let sent_bytes = epochs.iter().flatten().map(|e| e.sealed_bytes).sum();
    let standbys = (0..outputs.len())
        .filter(|&d| d != holder)
        .map(|d| {
            // Commits from an earlier stint as a standby do not count.
            let since = t.segments.iter().filter(|s| s.device == d).map(|s| s.end).max().unwrap_or(0);
            let committed = switching::last_commit(outputs[d].get(since..).unwrap_or("")).map(|c| c.0);
            Standby { device: d, committed, running: running.get(d).copied().unwrap_or(true) }
        })
        .collect();
    Status { holder, epoch, sent_bytes, standbys, phase: phase(outputs) }
}

fn phase(outputs: &[String]) -> Phase {
    if outputs.iter().any(|o| o.contains(POWERED_OFF)) {
        return Phase::PoweredOff;
    }
    let workload_lines = || outputs.iter().flat_map(|o| o.lines()).filter_map(|l| l.split_once(WORKLOAD_START).map(|(_, r)| r));
    if let Some(rc) = workload_lines().find_map(|r| r.split_once(" end rc=").map(|(_, rc)| rc.trim().to_string())) {
        return Phase::WorkloadEnded(rc);
    }
    if workload_lines().any(|r| r.ends_with(" start")) {
        return Phase::Workload;
    }
    Phase::Booting
}

/// One line: `[  12 s] device-0 runs the guest (workload) | epoch 37 |
/// sent 4.21 MB | device-1 committed 36 (lag 1)`.
pub fn line(s: &Status, elapsed: Duration, devices: usize) -> String {
    let phase = match &s.phase {
        Phase::Booting => "booting".to_string(),
        Phase::Workload => "workload running".to_string(),
        Phase::WorkloadEnded(rc) => format!("workload ended rc={rc}"),
        Phase::PoweredOff => "powered off".to_string(),
    };
    let mut o = format!("[{:>4} s] device-{} runs the guest ({phase})", elapsed.as_secs(), s.holder);
    match s.epoch {
        Some(e) => o += &format!(" | epoch {e}"),
        None => o += " | no epoch yet",
    }
    let mb = s.sent_bytes as f64 / 1e6;
    if devices > 1 {
        o += &format!(" | sent {mb:.2} MB");
    } else {
        o += &format!(" | sealed {mb:.2} MB (one device, no link)");
    }
    for sb in &s.standbys {
        o += &match (sb.running, sb.committed, s.epoch) {
            (false, ..) => format!(" | device-{} down", sb.device),
            (true, None, _) => format!(" | device-{} no commit yet", sb.device),
            (true, Some(c), Some(e)) => format!(" | device-{} committed {c} (lag {})", sb.device, e.saturating_sub(c)),
            (true, Some(c), None) => format!(" | device-{} committed {c}", sb.device),
        };
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: u64, sealed: u64) -> String {
        format!(
            "vmsync: epoch epoch={e} dirty_pages=2 dirty_bytes=8192 sent_pages=2 changed_bytes=100 encoded_bytes=120 compressed_bytes=80 sealed_bytes={sealed} write_faults=2 pause_us=100 zero_pages=0 same_pages=0 full_pages=0 delta_pages=2 at_ms={}\n",
            e * 200
        )
    }

    fn commit(e: u64) -> String {
        format!("vmsync: standby committed epoch={e} digest={:064x}\n", e)
    }

    #[test]
    fn booting_then_epochs_and_a_trailing_standby() {
        let outs = vec!["Booting Linux on physical CPU 0x0\n".to_string(), "vmsync: standby: holding epoch 0\n".to_string()];
        let s = status(&outs, &[true, true]);
        assert_eq!(
            s,
            Status { holder: 0, epoch: None, sent_bytes: 0, standbys: vec![Standby { device: 1, committed: None, running: true }], phase: Phase::Booting }
        );
        assert_eq!(
            line(&s, Duration::from_millis(2500), 2),
            "[   2 s] device-0 runs the guest (booting) | no epoch yet | sent 0.00 MB | device-1 no commit yet"
        );
        let outs = vec![
            format!("{}vmsync-guest: workload video start\n{}{}", epoch(1, 1_000_000), epoch(2, 500_000), epoch(3, 10_000)),
            format!("{}{}", commit(1), commit(2)),
        ];
        let s = status(&outs, &[true, true]);
        assert_eq!((s.holder, s.epoch, s.sent_bytes, s.phase.clone()), (0, Some(3), 1_510_000, Phase::Workload));
        assert_eq!(
            line(&s, Duration::from_secs(14), 2),
            "[  14 s] device-0 runs the guest (workload running) | epoch 3 | sent 1.51 MB | device-1 committed 2 (lag 1)"
        );
        let s = status(&outs, &[true, false]);
        assert!(line(&s, Duration::from_secs(15), 2).ends_with("| device-1 down"));
    }

    #[test]
    fn after_a_switch_the_new_holder_counts_and_old_commits_do_not() {
        let ip = |i: usize| format!("169.254.0.{}", i + 1);
        let d = format!("{:064x}", 2);
        let a = format!(
            "vmsync-guest: workload video start\n{}{}vmsync: digest epoch=2 d={d}\nvmsync: switch: out epoch=2 to={} pause_ms=9 final_epoch_bytes=100 digest={d}\n",
            epoch(1, 1000),
            epoch(2, 100),
            ip(1)
        );
        let b = format!("{}{}vmsync: switch: in epoch=2 from={} latency_ms=33 final_epoch_bytes=100 digest={d}\n{}", commit(1), commit(2), ip(0), epoch(3, 50));
        let s = status(&[a.clone(), b.clone()], &[true, true]);
        assert_eq!((s.holder, s.epoch, s.sent_bytes), (1, Some(3), 1150));
        // Device 0 has committed nothing since it handed the guest over.
        assert_eq!(s.standbys, vec![Standby { device: 0, committed: None, running: true }]);
        let s = status(&[a + &commit(3), b], &[true, true]);
        assert_eq!(
            line(&s, Duration::from_secs(30), 2),
            "[  30 s] device-1 runs the guest (workload running) | epoch 3 | sent 0.00 MB | device-0 committed 3 (lag 0)"
        );
    }

    #[test]
    fn back_on_the_first_device_its_old_epochs_do_not_count() {
        let ip = |i: usize| format!("169.254.0.{}", i + 1);
        let (d2, d3) = (format!("{:064x}", 2), format!("{:064x}", 3));
        let a = format!(
            "{}{}vmsync: switch: out epoch=2 to={} pause_ms=9 final_epoch_bytes=100 digest={d2}\n{}vmsync: switch: in epoch=3 from={} latency_ms=30 final_epoch_bytes=10 digest={d3}\n",
            epoch(1, 1000),
            epoch(2, 100),
            ip(1),
            commit(3),
            ip(1)
        );
        let b = format!(
            "{}vmsync: switch: in epoch=2 from={} latency_ms=33 final_epoch_bytes=100 digest={d2}\n{}vmsync: switch: out epoch=3 to={} pause_ms=8 final_epoch_bytes=10 digest={d3}\n",
            commit(2),
            ip(0),
            epoch(3, 50),
            ip(0)
        );
        let s = status(&[a.clone(), b.clone()], &[true, true]);
        assert_eq!((s.holder, s.epoch), (0, Some(3)), "not epoch 2, device-0's last before it handed over");
        let s = status(&[a + &epoch(4, 5), b + &commit(4)], &[true, true]);
        assert_eq!((s.holder, s.epoch, s.standbys[0].committed), (0, Some(4), Some(4)));
    }

    #[test]
    fn the_workload_end_and_power_off_show() {
        let outs = vec![format!("vmsync-guest: workload video start\n{}vmsync-guest: workload video end rc=3\n", epoch(1, 10))];
        let s = status(&outs, &[true]);
        assert_eq!(s.phase, Phase::WorkloadEnded("3".into()));
        assert_eq!(
            line(&s, Duration::from_secs(21), 1),
            "[  21 s] device-0 runs the guest (workload ended rc=3) | epoch 1 | sealed 0.00 MB (one device, no link)"
        );
        let outs = vec![outs[0].clone() + "vmsync: guest powered off (PSCI SYSTEM_OFF)\n"];
        assert_eq!(status(&outs, &[false]).phase, Phase::PoweredOff);
    }
}
