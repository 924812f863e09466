//! `cargo xtask demo` with 2 or more devices (by default, or with
//! `--switch-at S[,S...] [--switch-to i,...] [--failover-at S]`): N
//! symmetric devices (`qemu_tests::devices`), the guest moved between them
//! at the planned times, and the report's `switches`, `guest` and `devices`
//! entries.
use anyhow::{bail, Result};
use qemu_tests::devices::{DevicesControl, DevicesRun, SwitchOutcome};
use qemu_tests::guest_check::GuestVerdict;
use qemu_tests::switching::{self, SwitchKind, Timeline};
use std::time::Duration;

use crate::report;

/// How long one switch or failover may take before the script moves on.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Ask `to` (default: the next running device after the holder) for the guest.
    Switch { at: Duration, to: Option<usize> },
    /// Kill the holder's QEMU and tell the next running device to take over.
    Failover { at: Duration },
}

impl Action {
    pub fn at(&self) -> Duration {
        match self {
            Action::Switch { at, .. } | Action::Failover { at } => *at,
        }
    }
}

fn seconds(s: f64, flag: &str) -> Result<Duration> {
    if !s.is_finite() || s < 0.0 {
        bail!("{flag} {s}: not a time in seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// What a demo's switching run does, and when.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// In time order.
    pub actions: Vec<Action>,
    pub clock: Clock,
}

/// Where a plan's times count from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The devices' start (`--switch-at`, `--failover-at`).
    DevicesStart,
    /// The guest's `vmsync-guest: workload ... start` line on device 0 (the
    /// default plan: boot time varies, the workload's length does not).
    WorkloadStart,
}

/// The guest's init prints this (then the workload's name) as the workload starts.
pub const WORKLOAD_START: &str = "vmsync-guest: workload ";

/// The default plan of a demo with 2 or more devices: the guest moves to
/// device 1 halfway through the workload and back to device 0 at 85 %.
pub fn default_plan(seconds: u64) -> Plan {
    let at = |f: f64| Duration::from_secs_f64(seconds as f64 * f);
    Plan { actions: vec![Action::Switch { at: at(0.5), to: Some(1) }, Action::Switch { at: at(0.85), to: Some(0) }], clock: Clock::WorkloadStart }
}

/// The plan in words, for the demo's first lines.
pub fn describe(p: &Plan) -> String {
    let since = match p.clock {
        Clock::DevicesStart => "after the devices start",
        Clock::WorkloadStart => "into the workload",
    };
    let steps: Vec<String> = p
        .actions
        .iter()
        .map(|x| match x {
            Action::Switch { at, to } => format!("switch{} at {:.1} s", to.map(|t| format!(" to device-{t}")).unwrap_or_default(), at.as_secs_f64()),
            Action::Failover { at } => format!("failover at {:.1} s", at.as_secs_f64()),
        })
        .collect();
    format!("{} {since}", steps.join(", "))
}

/// The device after `from` (round robin) that is not in `dead`.
fn next_alive(from: usize, devices: usize, alive: impl Fn(usize) -> bool) -> Option<usize> {
    (1..devices).map(|k| (from + k) % devices).find(|&d| alive(d))
}

/// The actions in time order, checked by walking them through assuming each
/// succeeds: targets exist, are alive and do not already hold the guest.
pub fn plan(devices: usize, switch_at: &[f64], switch_to: &[usize], failover_at: Option<f64>) -> Result<Vec<Action>> {
    if devices < 2 {
        bail!("--switch-at and --failover-at need --devices 2 or more");
    }
    if !switch_to.is_empty() && switch_to.len() != switch_at.len() {
        bail!("--switch-to gives {} devices for {} --switch-at times", switch_to.len(), switch_at.len());
    }
    if let Some(&d) = switch_to.iter().find(|&&d| d >= devices) {
        bail!("--switch-to {d}: devices are 0 to {}", devices - 1);
    }
    let mut actions = Vec::new();
    for (k, &s) in switch_at.iter().enumerate() {
        actions.push(Action::Switch { at: seconds(s, "--switch-at")?, to: switch_to.get(k).copied() });
    }
    if let Some(s) = failover_at {
        actions.push(Action::Failover { at: seconds(s, "--failover-at")? });
    }
    actions.sort_by_key(|a| a.at());
    let (mut holder, mut dead) = (0usize, vec![false; devices]);
    for a in &actions {
        let t = a.at().as_secs_f64();
        match a {
            Action::Switch { to, .. } => {
                let Some(target) = to.or_else(|| next_alive(holder, devices, |d| !dead[d])) else { bail!("the switch at {t} s has no device to go to") };
                if target == holder {
                    bail!("the switch at {t} s goes to device {target}, which runs the guest then");
                }
                if dead[target] {
                    bail!("the switch at {t} s goes to device {target}, killed by the failover before it");
                }
                holder = target;
            }
            Action::Failover { .. } => {
                dead[holder] = true;
                let Some(target) = next_alive(holder, devices, |d| !dead[d]) else { bail!("the failover at {t} s leaves no device") };
                holder = target;
            }
        }
    }
    Ok(actions)
}

/// How long the default plan waits for the workload to start.
const WORKLOAD_START_TIMEOUT: Duration = Duration::from_secs(600);

/// Carries out `plan` on the running devices, printing what happened;
/// returns how many actions did not succeed.
pub fn drive(c: &DevicesControl, plan: &Plan) -> usize {
    let n = c.devices();
    let origin = match plan.clock {
        Clock::DevicesStart => Duration::ZERO,
        Clock::WorkloadStart => {
            if !c.wait_line(0, WORKLOAD_START, WORKLOAD_START_TIMEOUT) {
                eprintln!("xtask demo: the workload never started on device-0; no switch");
                return plan.actions.len();
            }
            c.elapsed()
        }
    };
    let mut missed = 0;
    for (k, a) in plan.actions.iter().enumerate() {
        if !c.at(origin + a.at()) {
            eprintln!("xtask demo: the run ended before {:.1} s", (origin + a.at()).as_secs_f64());
            return missed + plan.actions.len() - k;
        }
        let holder = c.holder().unwrap_or(0);
        let t = c.elapsed().as_secs_f64();
        let (what, target, outcome) = match a {
            Action::Switch { to, .. } => {
                let Some(target) = to.or_else(|| next_alive(holder, n, |d| c.running(d))) else {
                    eprintln!("xtask demo: {t:.1} s: no device to switch to");
                    missed += 1;
                    continue;
                };
                if target == holder {
                    eprintln!("xtask demo: {t:.1} s: device-{target} already runs the guest; switch skipped");
                    missed += 1;
                    continue;
                }
                eprintln!("xtask demo: {t:.1} s: switch device-{holder} -> device-{target} requested");
                ("switch", target, c.switch_and_wait(target, SWITCH_TIMEOUT))
            }
            Action::Failover { .. } => {
                if let Err(e) = c.kill(holder) {
                    eprintln!("xtask demo: {t:.1} s: killing device-{holder}: {e}");
                }
                let Some(target) = next_alive(holder, n, |d| c.running(d)) else {
                    eprintln!("xtask demo: {t:.1} s: no device left to fail over to");
                    return missed + 1;
                };
                eprintln!("xtask demo: {t:.1} s: device-{holder} killed; failover to device-{target} requested");
                ("failover", target, c.failover_and_wait(target, SWITCH_TIMEOUT))
            }
        };
        let t = c.elapsed().as_secs_f64();
        match outcome {
            SwitchOutcome::In => eprintln!("xtask demo: {t:.1} s: {what} to device-{target} done"),
            SwitchOutcome::Failed(why) => {
                missed += 1;
                eprintln!("xtask demo: {t:.1} s: {what} to device-{target} failed: {why}")
            }
            SwitchOutcome::TimedOut => {
                missed += 1;
                eprintln!("xtask demo: {t:.1} s: {what} to device-{target}: no answer in {} s", SWITCH_TIMEOUT.as_secs())
            }
        }
    }
    missed
}

fn name(i: usize) -> String {
    format!("device-{i}")
}

/// The report's `switches` entries.
pub fn switches_json(t: &Timeline) -> Vec<report::SwitchEntry> {
    t.switches
        .iter()
        .map(|s| report::SwitchEntry {
            kind: match s.kind {
                SwitchKind::Switch => report::SwitchKind::Switch,
                SwitchKind::Failover => report::SwitchKind::Failover,
            },
            from: name(s.from),
            to: name(s.to),
            epoch: s.epoch,
            latency_ms: s.latency_ms,
            final_epoch_bytes: s.final_epoch_bytes,
            pause_ms: s.pause_ms,
            digest_match: s.digest_match,
        })
        .collect()
}

/// The guest's verdict, as the report's `guest` keys.
pub fn guest_json(v: &GuestVerdict) -> report::Continuity {
    report::Continuity {
        rebooted: v.rebooted,
        counter_continuous: v.counter_continuous,
        time_monotonic: v.time_monotonic,
        checksums_verified: v.checksums_verified,
        boots: v.boots as u64,
        lines: v.lines as u64,
        first_counter: v.first_counter,
        last_counter: v.last_counter,
        problems: v.problems.clone(),
    }
}

/// One entry per device: its part in the run, its last commit as a
/// standby (matched against the digest the guest's holders cut at that
/// epoch, the last one if a failover cut it twice), the bytes it received,
/// its lag as a standby from the lag lines of whichever device was active
/// (the most it was owed; when it was last back in step, ms since that
/// device started, null if it never lagged).
pub fn devices_json(outputs: &[String], t: &Timeline, received: &[u64], killed: &[bool], powered_off: Option<usize>) -> Vec<report::DeviceEntry> {
    let cut = switching::cut_digests(std::slice::from_ref(&t.guest_console(outputs)));
    let last_holder = t.last_holder();
    outputs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let commit = switching::last_commit(out);
            let was_killed = killed.get(i).copied().unwrap_or(false);
            let standby_at_end = last_holder != Some(i) && !was_killed;
            let matches = commit.as_ref().map(|(e, d)| cut.iter().rev().find(|(ce, _)| ce == e).is_some_and(|(_, cd)| cd == d));
            let lag = qemu_tests::lag_summary(outputs.iter().map(|o| o.as_str()), i);
            report::DeviceEntry {
                name: name(i),
                held_guest: t.segments.iter().filter(|s| s.device == i).count() as u64,
                role_at_end: if was_killed {
                    report::Role::Killed
                } else if standby_at_end {
                    report::Role::Standby
                } else {
                    report::Role::Active
                },
                committed_epoch: commit.as_ref().map(|c| c.0),
                digest_match: standby_at_end.then(|| matches.unwrap_or(false)),
                bytes_received: received.get(i).copied().unwrap_or(0),
                powered_off: powered_off == Some(i),
                max_lag_bytes: lag.max_lag_bytes,
                caught_up_at_ms: lag.caught_up_at_ms,
            }
        })
        .collect()
}

/// Adds the switching run's keys to a report built from the guest's
/// console (`report::build`).
pub fn add_to_report(r: &mut report::Report, run: &DevicesRun, t: &Timeline, v: &GuestVerdict) {
    let received: Vec<u64> = (0..run.devices()).map(|i| run.received(i)).collect();
    let killed: Vec<bool> = run.killed.iter().map(|k| k.is_some()).collect();
    r.switches = Some(switches_json(t));
    r.failed_switches = Some(t.failed.iter().map(|f| report::FailedSwitch { device: name(f.device), reason: f.reason.clone() }).collect());
    r.timeline_problems = Some(t.problems.clone());
    r.guest.continuity = Some(guest_json(v));
    r.devices = Some(devices_json(&run.outputs, t, &received, &killed, run.powered_off));
    // The encoder's `sealed_bytes` stay as the guest's console gives them;
    // the link's count is a figure of its own.
    r.totals.link_bytes = Some(run.snapshot.delivered_bytes());
}

/// One line per switch.
pub fn switch_lines(t: &Timeline) -> Vec<String> {
    t.switches
        .iter()
        .map(|s| {
            let kind = match s.kind {
                SwitchKind::Switch => "switch",
                SwitchKind::Failover => "failover",
            };
            let pause = s.pause_ms.map(|p| format!(", guest paused {p} ms on the old device")).unwrap_or_default();
            format!(
                "{kind} device-{} -> device-{} at epoch {}: latency {} ms, final epoch {} bytes{pause}, digests {}",
                s.from,
                s.to,
                s.epoch,
                s.latency_ms,
                s.final_epoch_bytes,
                if s.digest_match { "match" } else { "DIFFER" }
            )
        })
        .collect()
}

pub fn guest_line(v: &GuestVerdict) -> String {
    let yes = |b: bool| if b { "yes" } else { "NO" };
    format!(
        "guest: rebooted {}, counter continuous {} ({} lines, {:?} -> {:?}, checksums {}), uptime monotonic {}",
        if v.rebooted { "YES" } else { "no" },
        yes(v.counter_continuous),
        v.lines,
        v.first_counter,
        v.last_counter,
        match v.checksums_verified {
            Some(true) => "verified",
            Some(false) => "WRONG",
            None => "not recomputable for this workload",
        },
        yes(v.time_monotonic)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_robin_explicit_and_failover() {
        let p = plan(3, &[30.0, 20.0], &[], Some(40.0)).unwrap();
        assert_eq!(
            p,
            vec![
                Action::Switch { at: Duration::from_secs(20), to: None },
                Action::Switch { at: Duration::from_secs(30), to: None },
                Action::Failover { at: Duration::from_secs(40) }
            ]
        );
        assert!(plan(3, &[20.0, 30.0], &[2, 0], None).is_ok());
        assert!(plan(1, &[20.0], &[], None).is_err());
        assert!(plan(2, &[20.0], &[0], None).is_err(), "device 0 holds the guest then");
        assert!(plan(2, &[20.0, 30.0], &[1], None).is_err(), "one target for two times");
        assert!(plan(2, &[20.0], &[2], None).is_err());
        assert!(plan(2, &[-1.0], &[], None).is_err());
        // After the failover from 0 to 1, 0 is gone.
        assert!(plan(3, &[30.0], &[0], Some(20.0)).is_err());
        assert!(plan(2, &[30.0], &[], Some(20.0)).is_err(), "nowhere to switch to");
        assert!(plan(2, &[], &[], Some(20.0)).is_ok());
    }

    #[test]
    fn the_default_plan_goes_and_comes_back_within_the_workload() {
        let p = default_plan(20);
        assert_eq!(p.clock, Clock::WorkloadStart);
        assert_eq!(p.actions, vec![Action::Switch { at: Duration::from_secs(10), to: Some(1) }, Action::Switch { at: Duration::from_secs(17), to: Some(0) }]);
        assert_eq!(describe(&p), "switch to device-1 at 10.0 s, switch to device-0 at 17.0 s into the workload");
        let explicit = Plan { actions: plan(3, &[20.0], &[], Some(30.0)).unwrap(), clock: Clock::DevicesStart };
        assert_eq!(describe(&explicit), "switch at 20.0 s, failover at 30.0 s after the devices start");
    }

    #[test]
    fn next_alive_skips_dead_devices() {
        assert_eq!(next_alive(0, 3, |_| true), Some(1));
        assert_eq!(next_alive(2, 3, |_| true), Some(0));
        assert_eq!(next_alive(0, 3, |d| d != 1), Some(2));
        assert_eq!(next_alive(0, 2, |d| d == 0), None);
    }

    fn dg(e: u64, salt: u64) -> String {
        format!("{:064x}", e * 10 + salt)
    }

    #[test]
    fn report_entries_from_consoles() {
        let ip = |i: usize| format!("169.254.0.{}", i + 1);
        let a = format!(
            "Booting Linux on physical CPU 0x0\nvmsync: digest epoch=1 d={}\nvmsync-workload: counter=1 checksum=0000000000000001 uptime=5.00\nvmsync: switch: out epoch=1 to={} pause_ms=9 final_epoch_bytes=100 digest={}\nvmsync: standby committed epoch=2 digest={}\n",
            dg(1, 0),
            ip(1),
            dg(1, 0),
            dg(2, 0)
        );
        let b = format!(
            "vmsync: standby committed epoch=1 digest={}\nvmsync: switch: in epoch=1 from={} latency_ms=33 final_epoch_bytes=100 digest={}\nvmsync: lag standby=1 addr=169.254.0.1 epochs=1 owed_pages=2 queued_bytes=10 owed_bytes=8202 drain_bps=0 in_step=0 at_ms=7000\nvmsync: lag standby=1 addr=169.254.0.1 epochs=0 owed_pages=0 queued_bytes=0 owed_bytes=0 drain_bps=9000 in_step=1 at_ms=7400\nvmsync: digest epoch=2 d={}\nvmsync-workload: counter=2 checksum=0000000000000002 uptime=6.00\nvmsync: guest powered off (PSCI SYSTEM_OFF)\n",
            dg(1, 0),
            ip(0),
            dg(1, 0),
            dg(2, 0)
        );
        let outs = vec![a, b];
        let t = switching::timeline(&outs, 0);
        let s = switches_json(&t);
        assert_eq!((s[0].from.as_str(), s[0].to.as_str()), ("device-0", "device-1"));
        assert_eq!(s[0].latency_ms, 33);
        assert_eq!(s[0].final_epoch_bytes, 100);
        assert!(s[0].digest_match);
        assert_eq!(serde_json::to_value(&s[0]).unwrap()["kind"], "switch");
        let d = devices_json(&outs, &t, &[10, 20], &[false, false], Some(1));
        assert_eq!(serde_json::to_value(&d[0]).unwrap()["role_at_end"], "standby");
        assert_eq!(d[0].committed_epoch, Some(2));
        assert_eq!(d[0].digest_match, Some(true));
        assert_eq!(d[1].role_at_end, report::Role::Active);
        assert_eq!(d[1].digest_match, None);
        assert_eq!(serde_json::to_value(&d[1]).unwrap()["digest_match"], serde_json::Value::Null);
        assert_eq!(d[1].bytes_received, 20);
        assert!(d[1].powered_off);
        // Device 1, active, printed device 0's lag; device 1 never lagged.
        assert_eq!((d[0].max_lag_bytes, d[0].caught_up_at_ms), (8202, Some(7400)));
        assert_eq!((d[1].max_lag_bytes, d[1].caught_up_at_ms), (0, None));
        let v = qemu_tests::guest_check::verdict(&outs, &t, None);
        let g = guest_json(&v);
        assert!(!g.rebooted);
        assert!(g.counter_continuous);
        assert!(g.time_monotonic);
        assert!(switch_lines(&t)[0].contains("latency 33 ms") && switch_lines(&t)[0].ends_with("digests match"));
        assert!(guest_line(&v).contains("rebooted no"));
        // The guest's console feeds the usual report: both devices' epochs.
        let r = crate::report::build(&t.guest_console(&outs), &crate::report::RunInfo { workload: "counter", policy: "interval:200ms", seconds: 2 });
        assert_eq!(r.guest.progress, Some(2));
    }
}
