//! Whether a demo run passed: what went wrong, read from the report and
//! the run's facts, as sentences for the summary and the error.
use crate::report::{Report, Role, WorkloadRc};

use crate::study::results::workload_rc;

/// How the guest's workload fared, from its init's
/// `vmsync-guest: workload NAME start` / `... end rc=N` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    NeverStarted,
    /// It started but its end line never came (the guest died or was cut off).
    NoEnd,
    /// Its exit status.
    Ended(String),
}

/// The outcome of the workload the init knows as `init_name` (a workload
/// name, or the path of a `--workload-exec` program in the guest).
pub fn workload(console: &str, init_name: &str) -> Workload {
    if let Some(rc) = workload_rc(console, init_name) {
        return Workload::Ended(rc);
    }
    if console.contains(&format!("vmsync-guest: workload {init_name} start")) {
        Workload::NoEnd
    } else {
        Workload::NeverStarted
    }
}

/// The report's `guest.workload_started` and `guest.workload_rc`.
pub fn add_to_report(r: &mut Report, w: &Workload) {
    r.guest.workload_started = Some(*w != Workload::NeverStarted);
    r.guest.workload_rc = match w {
        Workload::Ended(rc) => Some(rc.parse::<i64>().map(WorkloadRc::Code).unwrap_or_else(|_| WorkloadRc::Text(rc.clone()))),
        _ => None,
    };
}

/// The summary's line about the workload `name`.
pub fn workload_line(name: &str, w: &Workload) -> String {
    match w {
        Workload::Ended(rc) if rc == "0" => format!("workload {name}: ran to its end, rc=0"),
        Workload::Ended(rc) => format!("workload {name}: FAILED, exited with rc={rc}"),
        Workload::NoEnd => format!("workload {name}: FAILED, started but never ended"),
        Workload::NeverStarted => format!("workload {name}: FAILED, never started"),
    }
}

/// What the report cannot say about a run.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub timed_out: bool,
    /// Why the device that ran the guest last did not power off cleanly.
    pub unclean: Option<String>,
    /// A device printed `vmsync: error: fatal`.
    pub fatal: bool,
    /// Planned steps (switches, failovers, the partition and its heal)
    /// that did not happen, named, of how many.
    pub missed: Vec<String>,
    pub planned: usize,
    /// How two devices ran the guest at once after the heal, if they did.
    pub two_at_once: Vec<String>,
    pub workload: Option<Workload>,
}

/// Everything that went wrong; empty when the run passed.
pub fn problems(r: &Report, f: &Facts) -> Vec<String> {
    let mut p = Vec::new();
    if f.timed_out {
        p.push("the guest did not power off in time".to_string());
    }
    if f.fatal {
        p.push("a device failed (vmsync: error: fatal)".into());
    }
    if let Some(why) = &f.unclean {
        p.push(format!("the guest did not power off cleanly ({why})"));
    }
    match &f.workload {
        Some(Workload::Ended(rc)) if rc != "0" => p.push(format!("the workload exited with rc={rc}")),
        Some(Workload::NoEnd) => p.push("the workload started but never ended".into()),
        Some(Workload::NeverStarted) => p.push("the workload never started".into()),
        _ => {}
    }
    if r.switches.iter().flatten().any(|s| !s.digest_match) {
        p.push("a switch's digests do not match".into());
    }
    if !f.missed.is_empty() {
        p.push(format!("{} of {} planned steps did not happen: {}", f.missed.len(), f.planned, f.missed.join(", ")));
    }
    p.extend(f.two_at_once.iter().cloned());
    if let Some(d) = &r.devices {
        let active = d.iter().filter(|d| d.role_at_end == Role::Active).count();
        if active != 1 {
            p.push(format!("{active} devices were active at the end, not one"));
        }
    }
    if r.guest.continuity.as_ref().is_some_and(|c| c.rebooted) {
        p.push("the guest rebooted".into());
    }
    if r.standbys.iter().flatten().any(|s| !s.digest_match) {
        p.push("a standby's committed image does not match the active device".into());
    }
    if r.devices.iter().flatten().any(|d| d.digest_match == Some(false)) {
        p.push("a standby's committed image does not match the guest at that epoch".into());
    }
    let mismatches = r.verify.mismatches;
    if mismatches > 0 {
        p.push(format!("verify found {mismatches} mismatches: a write escaped tracking"));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Continuity, DeviceEntry, StandbyEntry, SwitchEntry};

    /// The report of a run that passed every check.
    fn good_report() -> Report {
        let switch = SwitchEntry { digest_match: true, ..SwitchEntry::default() };
        let mut r = Report {
            switches: Some(vec![switch.clone(), switch]),
            devices: Some(vec![
                DeviceEntry { digest_match: None, role_at_end: Role::Active, ..DeviceEntry::default() },
                DeviceEntry { digest_match: Some(true), role_at_end: Role::Standby, ..DeviceEntry::default() },
            ]),
            ..Report::default()
        };
        r.guest.continuity = Some(Continuity::default());
        r
    }

    #[test]
    fn the_workload_outcome_comes_from_the_init_lines() {
        let start = "vmsync-guest: workload video start\n";
        assert_eq!(workload("Booting Linux\n", "video"), Workload::NeverStarted);
        assert_eq!(workload(start, "video"), Workload::NoEnd);
        assert_eq!(workload(&format!("{start}vmsync-guest: workload video end rc=0\n"), "video"), Workload::Ended("0".into()));
        let exec = "vmsync-guest: workload /bin/vmsync-exec start\nvmsync-guest: workload /bin/vmsync-exec end rc=127\n";
        assert_eq!(workload(exec, "/bin/vmsync-exec"), Workload::Ended("127".into()));
        // A hypervisor line cutting the end line in two (workload_rc copes).
        let cut = format!("{start}vmsync-guest: workload video en\nvmsync: epoch epoch=9\nd rc=3\n");
        assert_eq!(workload(&cut, "video"), Workload::Ended("3".into()));
        let mut r = Report::default();
        add_to_report(&mut r, &Workload::Ended("3".into()));
        assert_eq!((r.guest.workload_started, &r.guest.workload_rc), (Some(true), &Some(WorkloadRc::Code(3))));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!((&v["guest"]["workload_started"], &v["guest"]["workload_rc"]), (&serde_json::json!(true), &serde_json::json!(3)));
        add_to_report(&mut r, &Workload::NeverStarted);
        assert_eq!((r.guest.workload_started, &r.guest.workload_rc), (Some(false), &None));
        assert_eq!(serde_json::to_value(&r).unwrap()["guest"]["workload_rc"], serde_json::Value::Null);
        assert_eq!(workload_line("video", &Workload::Ended("0".into())), "workload video: ran to its end, rc=0");
        assert_eq!(workload_line("prog", &Workload::Ended("3".into())), "workload prog: FAILED, exited with rc=3");
    }

    #[test]
    fn a_good_run_has_no_problems_and_each_fault_is_named() {
        let ok = Facts { planned: 2, workload: Some(Workload::Ended("0".into())), ..Facts::default() };
        assert_eq!(problems(&good_report(), &ok), Vec::<String>::new());
        let failed = Facts { workload: Some(Workload::Ended("3".into())), ..ok.clone() };
        assert_eq!(problems(&good_report(), &failed), ["the workload exited with rc=3"]);
        let missed = vec!["the failover at 22.0 s".to_string(), "the heal at 35.0 s".to_string()];
        let never = Facts { workload: Some(Workload::NeverStarted), timed_out: true, missed, ..ok.clone() };
        assert_eq!(
            problems(&good_report(), &never),
            [
                "the guest did not power off in time",
                "the workload never started",
                "2 of 2 planned steps did not happen: the failover at 22.0 s, the heal at 35.0 s"
            ]
        );
        let split = Facts { two_at_once: vec!["two devices ran the guest at once after the heal: device-0 was not fenced within 30 s".into()], ..ok.clone() };
        let mut r = good_report();
        r.devices.as_mut().unwrap()[1].role_at_end = Role::Active;
        r.devices.as_mut().unwrap()[1].digest_match = None;
        assert_eq!(
            problems(&r, &split),
            ["two devices ran the guest at once after the heal: device-0 was not fenced within 30 s", "2 devices were active at the end, not one"]
        );
        let mut r = good_report();
        r.switches.as_mut().unwrap()[1].digest_match = false;
        r.devices.as_mut().unwrap()[1].digest_match = Some(false);
        r.guest.continuity.as_mut().unwrap().rebooted = true;
        r.verify.mismatches = 4;
        r.standbys = Some(vec![StandbyEntry { digest_match: false, ..StandbyEntry::default() }]);
        assert_eq!(
            problems(&r, &ok),
            [
                "a switch's digests do not match",
                "the guest rebooted",
                "a standby's committed image does not match the active device",
                "a standby's committed image does not match the guest at that epoch",
                "verify found 4 mismatches: a write escaped tracking",
            ]
        );
    }
}
