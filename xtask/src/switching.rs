//! `cargo xtask demo` with 2 or more devices (by default, or with
//! `--switch-at S[,S...] [--switch-to i,...] [--failover-at S]
//! [--partition-at S:I [--heal-at S]]`): N symmetric devices
//! (`qemu_tests::devices`), the guest moved between them at the planned
//! times, links cut and restored, and the report's `switches`, `guest` and
//! `devices` entries.
use anyhow::{bail, Result};
use qemu_tests::devices::{DevicesControl, DevicesRun, SwitchOutcome};
use qemu_tests::guest_check::GuestVerdict;
use qemu_tests::switching::{self, SwitchKind, Timeline, FENCED};
use std::time::Duration;

use crate::cli::PartitionAt;
use crate::report;

/// How long one switch or failover may take before the script moves on.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a partition or a failover waits for the standbys' first commits
/// (a 256 MiB guest's first copy takes over a minute under TCG).
const FIRST_COMMIT_TIMEOUT: Duration = Duration::from_secs(600);
/// After the heal, how soon a device that ran the guest cut off must be
/// fenced (stop its guest on meeting the higher term).
pub const FENCE_WITHIN: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Ask `to` (default: the next running device after the holder) for the guest.
    Switch { at: Duration, to: Option<usize> },
    /// Tell the next reachable device to take over. The holder's QEMU is
    /// killed first, unless the holder is cut off: then it runs on, unaware.
    Failover { at: Duration },
    /// Cut every link of `device`.
    Partition { at: Duration, device: usize },
    /// Restore the links the partition cut.
    Heal { at: Duration },
}

impl Action {
    pub fn at(&self) -> Duration {
        match self {
            Action::Switch { at, .. } | Action::Failover { at } | Action::Partition { at, .. } | Action::Heal { at } => *at,
        }
    }

    /// The step in words, as the summary names a missed one.
    pub fn name(&self) -> String {
        let t = self.at().as_secs_f64();
        match self {
            Action::Switch { to: Some(d), .. } => format!("the switch to device-{d} at {t:.1} s"),
            Action::Switch { to: None, .. } => format!("the switch at {t:.1} s"),
            Action::Failover { .. } => format!("the failover at {t:.1} s"),
            Action::Partition { device, .. } => format!("the partition of device-{device} at {t:.1} s"),
            Action::Heal { .. } => format!("the heal at {t:.1} s"),
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
    /// The devices' start (`--switch-at`, `--failover-at`, `--partition-at`).
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
            Action::Partition { at, device } => format!("device-{device} cut off at {:.1} s", at.as_secs_f64()),
            Action::Heal { at } => format!("heal at {:.1} s", at.as_secs_f64()),
        })
        .collect();
    format!("{} {since}", steps.join(", "))
}

/// The device after `from` (round robin) that is not in `dead`.
fn next_alive(from: usize, devices: usize, alive: impl Fn(usize) -> bool) -> Option<usize> {
    (1..devices).map(|k| (from + k) % devices).find(|&d| alive(d))
}

/// The steps asked for on the command line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Steps<'a> {
    pub switch_at: &'a [f64],
    pub switch_to: &'a [usize],
    pub failover_at: Option<f64>,
    pub partition_at: Option<PartitionAt>,
    pub heal_at: Option<f64>,
}

/// The actions in time order, checked by walking them through assuming each
/// succeeds: targets exist, are alive, reachable and do not already hold
/// the guest; a partition that a failover leaves running the guest is healed.
pub fn plan(devices: usize, st: &Steps) -> Result<Vec<Action>> {
    if devices < 2 {
        bail!("--switch-at, --failover-at and --partition-at need --devices 2 or more");
    }
    let (switch_at, switch_to) = (st.switch_at, st.switch_to);
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
    if let Some(s) = st.failover_at {
        actions.push(Action::Failover { at: seconds(s, "--failover-at")? });
    }
    if let Some(p) = st.partition_at {
        if p.device >= devices {
            bail!("--partition-at {}:{}: devices are 0 to {}", p.at, p.device, devices - 1);
        }
        actions.push(Action::Partition { at: seconds(p.at, "--partition-at")?, device: p.device });
    }
    match (st.heal_at, st.partition_at) {
        (Some(_), None) => bail!("--heal-at restores the links --partition-at cuts: it needs --partition-at"),
        (Some(h), Some(p)) if h <= p.at => bail!("--heal-at {h} must come after the partition at {} s", p.at),
        (Some(h), Some(_)) => actions.push(Action::Heal { at: seconds(h, "--heal-at")? }),
        (None, _) => {}
    }
    // Stable: at equal times the order above (switches, failover, partition, heal).
    actions.sort_by_key(|a| a.at());
    let (mut holder, mut dead) = (0usize, vec![false; devices]);
    // The device cut off now, and one that runs the guest cut off.
    let (mut cut, mut ran_on): (Option<usize>, Option<usize>) = (None, None);
    for a in &actions {
        let t = a.at().as_secs_f64();
        match a {
            Action::Switch { to, .. } => {
                if cut == Some(holder) {
                    bail!("the switch at {t} s would start on device {holder}, which is cut off then");
                }
                let Some(target) = to.or_else(|| next_alive(holder, devices, |d| !dead[d] && cut != Some(d) && ran_on != Some(d))) else {
                    bail!("the switch at {t} s has no device to go to")
                };
                if target == holder {
                    bail!("the switch at {t} s goes to device {target}, which runs the guest then");
                }
                if dead[target] {
                    bail!("the switch at {t} s goes to device {target}, killed by the failover before it");
                }
                if cut == Some(target) {
                    bail!("the switch at {t} s goes to device {target}, which is cut off then");
                }
                if ran_on == Some(target) {
                    bail!("the switch at {t} s goes to device {target}, which runs the guest cut off then");
                }
                holder = target;
            }
            Action::Failover { .. } => {
                if cut == Some(holder) {
                    ran_on = Some(holder);
                } else {
                    dead[holder] = true;
                }
                let Some(target) = next_alive(holder, devices, |d| !dead[d] && cut != Some(d) && ran_on != Some(d)) else {
                    bail!("the failover at {t} s leaves no device that can take the guest over")
                };
                holder = target;
            }
            Action::Partition { device, .. } => {
                if dead[*device] {
                    bail!("the partition at {t} s cuts off device {device}, killed by the failover before it");
                }
                cut = Some(*device);
            }
            Action::Heal { .. } => {
                cut = None;
                // Fenced by the higher term: a standby from here on.
                ran_on = None;
            }
        }
    }
    if let Some(d) = ran_on {
        bail!("the failover leaves device {d} running the guest cut off to the end: --heal-at must end the partition");
    }
    Ok(actions)
}

/// How long the default plan waits for the workload to start.
const WORKLOAD_START_TIMEOUT: Duration = Duration::from_secs(600);

/// A device a failover left running the guest cut off from the others
/// (unaware, as a real one would be).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RanOn {
    pub device: usize,
    /// How long after the heal its fence line came; None: not within
    /// [`FENCE_WITHIN`] (or never healed).
    pub fenced_after: Option<Duration>,
}

/// What [`drive`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Driven {
    /// Planned steps that did not happen, named ([`Action::name`]).
    pub missed: Vec<String>,
    pub ran_on: Vec<RanOn>,
    /// Each device's console length (bytes) when the heal restored the links.
    pub heal_offsets: Option<Vec<usize>>,
}

/// Whether device `d` committed an epoch since it last ran the guest.
fn committed_since_it_held(outputs: &[String], d: usize) -> bool {
    let t = switching::timeline(outputs, 0);
    let since = t.segments.iter().filter(|s| s.device == d).map(|s| s.end).max().unwrap_or(0);
    switching::last_commit(outputs[d].get(since..).unwrap_or("")).is_some()
}

/// Waits until each of `standbys` (that still runs) committed its first
/// epoch, at most [`FIRST_COMMIT_TIMEOUT`]; returns how long it waited.
fn wait_first_commits(c: &DevicesControl, standbys: &[usize], before: &str) -> Duration {
    let start = c.elapsed();
    let waiting: Vec<usize> = standbys.iter().copied().filter(|&d| !committed_since_it_held(&c.outputs(), d)).collect();
    if waiting.is_empty() {
        return Duration::ZERO;
    }
    let names: Vec<String> = waiting.iter().map(|&d| name(d)).collect();
    eprintln!("xtask demo: {:.1} s: waiting for the first commit of {} before {before}", start.as_secs_f64(), names.join(", "));
    for &d in &waiting {
        while !committed_since_it_held(&c.outputs(), d) {
            if !c.running(d) || c.elapsed() >= start + FIRST_COMMIT_TIMEOUT || !c.sleep(Duration::from_millis(250)) {
                eprintln!("xtask demo: {:.1} s: device-{d} has committed nothing; going on", c.elapsed().as_secs_f64());
                break;
            }
        }
    }
    let waited = c.elapsed() - start;
    eprintln!("xtask demo: {:.1} s: waited {:.1} s for first commits; the later steps move as much", c.elapsed().as_secs_f64(), waited.as_secs_f64());
    waited
}

/// Carries out `plan` on the running devices, printing what happened.
/// A partition or a failover first waits for every standby it needs to
/// have committed an epoch (otherwise a failover finds nothing to resume);
/// the steps after it move by that wait.
pub fn drive(c: &DevicesControl, plan: &Plan) -> Driven {
    let n = c.devices();
    let mut out = Driven::default();
    let origin = match plan.clock {
        Clock::DevicesStart => Duration::ZERO,
        Clock::WorkloadStart => {
            if !c.wait_line(0, WORKLOAD_START, WORKLOAD_START_TIMEOUT) {
                eprintln!("xtask demo: the workload never started on device-0; no switch");
                out.missed = plan.actions.iter().map(Action::name).collect();
                return out;
            }
            c.elapsed()
        }
    };
    let mut shift = Duration::ZERO;
    // The device cut off now.
    let mut cut: Option<usize> = None;
    for (k, a) in plan.actions.iter().enumerate() {
        if !c.at(origin + a.at() + shift) {
            eprintln!("xtask demo: the run ended before {:.1} s", (origin + a.at() + shift).as_secs_f64());
            out.missed.extend(plan.actions[k..].iter().map(Action::name));
            return out;
        }
        let ran_on = |d: usize, o: &Driven| o.ran_on.iter().any(|r| r.device == d);
        let holder = c.holder().unwrap_or(0);
        match a {
            Action::Partition { .. } => {
                let standbys: Vec<usize> = (0..n).filter(|&d| d != holder && c.running(d) && !ran_on(d, &out)).collect();
                shift += wait_first_commits(c, &standbys, "the partition");
            }
            Action::Failover { .. } => {
                let standbys: Vec<usize> = (0..n).filter(|&d| d != holder && c.running(d) && cut != Some(d) && !ran_on(d, &out)).collect();
                shift += wait_first_commits(c, &standbys, "the failover");
            }
            _ => {}
        }
        let t = c.elapsed().as_secs_f64();
        let (what, target, outcome) = match a {
            Action::Switch { to, .. } => {
                let Some(target) = to.or_else(|| next_alive(holder, n, |d| c.running(d) && cut != Some(d) && !ran_on(d, &out))) else {
                    eprintln!("xtask demo: {t:.1} s: no device to switch to");
                    out.missed.push(a.name());
                    continue;
                };
                if target == holder {
                    eprintln!("xtask demo: {t:.1} s: device-{target} already runs the guest; switch skipped");
                    out.missed.push(a.name());
                    continue;
                }
                eprintln!("xtask demo: {t:.1} s: switch device-{holder} -> device-{target} requested");
                ("switch", target, c.switch_and_wait(target, SWITCH_TIMEOUT))
            }
            Action::Failover { .. } => {
                if cut == Some(holder) {
                    // A real device cut off from the others goes on running its guest.
                    out.ran_on.push(RanOn { device: holder, fenced_after: None });
                } else if let Err(e) = c.kill(holder) {
                    eprintln!("xtask demo: {t:.1} s: killing device-{holder}: {e}");
                }
                let Some(target) = next_alive(holder, n, |d| c.running(d) && cut != Some(d) && !ran_on(d, &out)) else {
                    eprintln!("xtask demo: {t:.1} s: no device left to fail over to");
                    out.missed.extend(plan.actions[k..].iter().map(Action::name));
                    return out;
                };
                if cut == Some(holder) {
                    eprintln!("xtask demo: {t:.1} s: device-{holder} is cut off and runs on, unaware; failover to device-{target} requested");
                } else {
                    eprintln!("xtask demo: {t:.1} s: device-{holder} killed; failover to device-{target} requested");
                }
                ("failover", target, c.failover_and_wait(target, SWITCH_TIMEOUT))
            }
            Action::Partition { device, .. } => {
                match c.link().isolate(*device) {
                    Ok(()) => {
                        cut = Some(*device);
                        eprintln!("xtask demo: {t:.1} s: every link of device-{device} cut");
                    }
                    Err(e) => {
                        eprintln!("xtask demo: {t:.1} s: cutting device-{device} off: {e}");
                        out.missed.push(a.name());
                    }
                }
                continue;
            }
            Action::Heal { .. } => {
                heal(c, cut.take(), &mut out, a);
                continue;
            }
        };
        let t = c.elapsed().as_secs_f64();
        match outcome {
            SwitchOutcome::In => eprintln!("xtask demo: {t:.1} s: {what} to device-{target} done"),
            SwitchOutcome::Failed(why) => {
                out.missed.push(a.name());
                eprintln!("xtask demo: {t:.1} s: {what} to device-{target} failed: {why}")
            }
            SwitchOutcome::TimedOut => {
                out.missed.push(a.name());
                eprintln!("xtask demo: {t:.1} s: {what} to device-{target}: no answer in {} s", SWITCH_TIMEOUT.as_secs())
            }
        }
    }
    out
}

/// Restores the links of the device cut off, then waits up to
/// [`FENCE_WITHIN`] for each device that ran the guest cut off to be fenced.
fn heal(c: &DevicesControl, cut: Option<usize>, out: &mut Driven, a: &Action) {
    let t = c.elapsed().as_secs_f64();
    let Some(d) = cut else {
        eprintln!("xtask demo: {t:.1} s: no device is cut off; nothing to heal");
        out.missed.push(a.name());
        return;
    };
    let offsets: Vec<usize> = c.outputs().iter().map(|o| o.len()).collect();
    if let Err(e) = c.link().rejoin(d) {
        eprintln!("xtask demo: {t:.1} s: restoring the links of device-{d}: {e}");
        out.missed.push(a.name());
        return;
    }
    eprintln!("xtask demo: {t:.1} s: the links of device-{d} restored");
    let healed = c.elapsed();
    for r in out.ran_on.iter_mut().filter(|r| r.fenced_after.is_none()) {
        let from = offsets[r.device];
        let left = FENCE_WITHIN.saturating_sub(c.elapsed() - healed);
        if c.wait_for(r.device, left, |o| o.get(from..).is_some_and(|o| o.contains(FENCED))) {
            let after = c.elapsed() - healed;
            r.fenced_after = Some(after);
            eprintln!(
                "xtask demo: {:.1} s: device-{} fenced {:.1} s after the heal: its guest stopped, it follows the new term",
                c.elapsed().as_secs_f64(),
                r.device,
                after.as_secs_f64()
            );
        } else {
            eprintln!("xtask demo: {:.1} s: device-{} still runs the guest {} s after the heal", c.elapsed().as_secs_f64(), r.device, FENCE_WITHIN.as_secs());
        }
    }
    out.heal_offsets = Some(offsets);
}

/// Workload lines in `out[from..]`.
fn guest_lines_after(out: &str, from: usize) -> usize {
    out.get(from..).unwrap_or("").matches(vmsync_workloads::LINE_PREFIX).count()
}

/// Whether two devices ran the guest at once after the heal, in words
/// (empty: they did not): a device that ran the guest cut off and was not
/// fenced within [`FENCE_WITHIN`] of the heal, or printed guest lines after
/// its fence line.
pub fn two_at_once(outputs: &[String], d: &Driven) -> Vec<String> {
    let mut p = Vec::new();
    for r in &d.ran_on {
        let out = &outputs[r.device];
        let fence = d.heal_offsets.as_ref().and_then(|o| {
            let from = o[r.device].min(out.len());
            out[from..].find(FENCED).map(|f| from + f)
        });
        match (r.fenced_after, fence) {
            (Some(_), Some(f)) => {
                let n = guest_lines_after(out, f);
                if n > 0 {
                    p.push(format!("device-{} ran the guest after its fence line ({n} guest lines)", r.device));
                }
            }
            _ => p.push(format!("two devices ran the guest at once after the heal: device-{} was not fenced within {} s", r.device, FENCE_WITHIN.as_secs())),
        }
    }
    p
}

/// The summary's lines about the heal: who was fenced how soon, and the
/// guest's lines on each device since the heal.
pub fn heal_lines(outputs: &[String], d: &Driven) -> Vec<String> {
    let Some(offsets) = &d.heal_offsets else { return Vec::new() };
    let mut l: Vec<String> = d
        .ran_on
        .iter()
        .map(|r| match r.fenced_after {
            Some(a) => format!("after the heal: device-{} (it ran the guest cut off) fenced {:.1} s later", r.device, a.as_secs_f64()),
            None => format!("after the heal: device-{} (it ran the guest cut off) NOT fenced within {} s", r.device, FENCE_WITHIN.as_secs()),
        })
        .collect();
    let counts: Vec<String> = outputs.iter().enumerate().map(|(i, o)| format!("device-{i} {}", guest_lines_after(o, offsets[i]))).collect();
    l.push(format!("guest lines since the heal: {}", counts.join(", ")));
    l
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

/// One entry per device: its part in the run (active at the end: the last
/// holder, or a device still running the guest it ran cut off), its last commit as a
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
            // A device that ran the guest cut off and was never fenced still runs it.
            let ran_to_end = t.segments.iter().any(|s| s.device == i && s.end == out.len());
            let standby_at_end = last_holder != Some(i) && !ran_to_end && !was_killed;
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

    /// A plan of switches and a failover only.
    fn plan(devices: usize, switch_at: &[f64], switch_to: &[usize], failover_at: Option<f64>) -> Result<Vec<Action>> {
        super::plan(devices, &Steps { switch_at, switch_to, failover_at, ..Steps::default() })
    }

    fn partitioned(devices: usize, switch_at: &[f64], failover_at: Option<f64>, cut: (f64, usize), heal_at: Option<f64>) -> Result<Vec<Action>> {
        let partition_at = Some(PartitionAt { at: cut.0, device: cut.1 });
        super::plan(devices, &Steps { switch_at, failover_at, partition_at, heal_at, ..Steps::default() })
    }

    fn err(r: Result<Vec<Action>>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn a_partition_a_failover_and_the_heal_plan_and_their_bad_combinations() {
        let secs = Duration::from_secs;
        let p = partitioned(3, &[], Some(22.0), (20.0, 0), Some(35.0)).unwrap();
        assert_eq!(p, vec![Action::Partition { at: secs(20), device: 0 }, Action::Failover { at: secs(22) }, Action::Heal { at: secs(35) }]);
        assert_eq!(
            describe(&Plan { actions: p.clone(), clock: Clock::DevicesStart }),
            "device-0 cut off at 20.0 s, failover at 22.0 s, heal at 35.0 s after the devices start"
        );
        assert_eq!(p.iter().map(Action::name).collect::<Vec<_>>(), ["the partition of device-0 at 20.0 s", "the failover at 22.0 s", "the heal at 35.0 s"]);
        // Two devices: they meet on each other's port after the heal.
        assert!(partitioned(2, &[], Some(22.0), (20.0, 0), Some(35.0)).is_ok());
        // After the heal the fenced device 0 is a standby again: a switch may go to it.
        assert!(partitioned(2, &[50.0], Some(22.0), (20.0, 0), Some(35.0)).is_ok());
        // A standby cut off, the holder killed: the failover goes to the device not cut off.
        assert!(partitioned(3, &[], Some(22.0), (20.0, 1), None).is_ok());
        assert!(partitioned(3, &[], None, (20.0, 1), Some(30.0)).is_ok(), "a partition and its heal alone");
        assert!(err(partitioned(3, &[], Some(22.0), (20.0, 0), None)).contains("device 0 running the guest cut off to the end: --heal-at"));
        // A failover after the heal kills device 0 as usual.
        assert!(partitioned(3, &[], Some(40.0), (20.0, 0), Some(35.0)).is_ok());
        assert!(err(partitioned(2, &[], Some(22.0), (20.0, 1), Some(35.0))).contains("leaves no device that can take the guest over"));
        assert!(err(partitioned(3, &[21.0], None, (20.0, 0), Some(35.0))).contains("would start on device 0, which is cut off"));
        // Round robin goes round the device cut off; naming it is refused.
        assert_eq!(partitioned(3, &[21.0], None, (20.0, 1), Some(35.0)).unwrap()[1], Action::Switch { at: secs(21), to: None });
        let across =
            Steps { switch_at: &[21.0], switch_to: &[1], partition_at: Some(PartitionAt { at: 20.0, device: 1 }), heal_at: Some(35.0), ..Steps::default() };
        assert!(err(super::plan(3, &across)).contains("goes to device 1, which is cut off then"));
        assert!(err(partitioned(2, &[21.0], None, (20.0, 1), Some(35.0))).contains("has no device to go to"));
        assert!(err(partitioned(3, &[], Some(22.0), (20.0, 3), Some(35.0))).contains("--partition-at 20:3: devices are 0 to 2"));
        assert!(err(partitioned(3, &[], Some(22.0), (20.0, 0), Some(20.0))).contains("--heal-at 20 must come after the partition at 20 s"));
        assert!(err(partitioned(3, &[], Some(10.0), (20.0, 0), Some(30.0))).contains("cuts off device 0, killed by the failover before it"));
        let heal_alone = super::plan(3, &Steps { heal_at: Some(30.0), ..Steps::default() });
        assert!(err(heal_alone).contains("it needs --partition-at"));
    }

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
