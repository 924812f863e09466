//! Whether the guest provably continued across switches, from what it
//! printed itself: the workload's per-second lines (`vmsync-workload:
//! counter=N checksum=HEX uptime=S ...`) and the kernel's boot banner, read
//! across the devices in the order they ran the guest ([`Timeline`]).
//!
//! Rules:
//! - `rebooted`: the Linux banner (`Booting Linux on physical CPU`) appears
//!   more than once in the guest's merged console.
//! - `counter_continuous`: each line's counter is the previous one + 1, and
//!   every checksum equals what the host recomputes for the workload at that
//!   progress (when the workload is one the host can recompute: counter,
//!   idle, video, memtouch, browse). Across a failover the guest resumes an
//!   older epoch, so the lines printed after that epoch on the lost device
//!   come again: there the counter may go back by up to
//!   [`FAILOVER_MAX_REPEAT`] (next ≥ previous + 1 − that, and ≥ 1), never
//!   forward by more than 1.
//! - `time_monotonic`: uptime never decreases from line to line, except
//!   across a failover, where it may go back by at most
//!   [`FAILOVER_MAX_UPTIME_BACK_MS`].
//! - A workload line that a hypervisor log line interrupted (the logger
//!   starts its line on a fresh one) is joined with the guest's next line of
//!   text, within a device or across a switch, when the join is a
//!   well-formed line and the fragment was directly followed by a
//!   hypervisor line or the segment's end.
use crate::switching::{SwitchKind, Timeline};
use vmsync_workloads::{browse, counter, memtouch, parse_line, video, Line, LINE_PREFIX};

pub const LINUX_BANNER: &str = "Booting Linux on physical CPU";
/// Per-second lines a failover may repeat (the guest resumes the last
/// committed epoch, which is at most this many seconds old).
pub const FAILOVER_MAX_REPEAT: u64 = 3;
/// How far uptime may go back across a failover: as far as the repeated
/// lines [`FAILOVER_MAX_REPEAT`] allows reach (a tighter bound failed a
/// failover under load that repeated two lines, 2.2 s back).
pub const FAILOVER_MAX_UPTIME_BACK_MS: u64 = FAILOVER_MAX_REPEAT * 1000;

/// A workload line and the timeline segment whose console it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLine {
    pub line: Line,
    pub segment: usize,
}

/// The guest's side of a run, read from its own console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLines {
    pub lines: Vec<GuestLine>,
    /// Linux boot banners seen.
    pub boots: usize,
    /// Workload lines that could not be read.
    pub unreadable: Vec<String>,
}

fn is_hypervisor_line(l: &str) -> bool {
    l.starts_with("vmsync: ")
}

/// Every token after the prefix is `key=value` with a plain key and value,
/// the checksum has 16 hex digits and the uptime reads.
fn well_formed(text: &str) -> Option<Line> {
    let rest = &text[text.find(LINE_PREFIX)? + LINE_PREFIX.len()..];
    let plain = |s: &str, extra: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(c));
    if !rest.split_whitespace().all(|t| t.split_once('=').is_some_and(|(k, v)| plain(k, "") && plain(v, ".-"))) {
        return None;
    }
    let l = parse_line(text)?;
    (l.field("checksum")?.len() == 16 && l.uptime_ms.is_some()).then_some(l)
}

/// The workload lines of the guest in the order it printed them.
pub fn guest_lines(outputs: &[String], t: &Timeline) -> GuestLines {
    let mut g = GuestLines { lines: Vec::new(), boots: 0, unreadable: Vec::new() };
    // A workload line fragment directly followed by a hypervisor line or
    // the segment's end: (text, segment).
    let mut pending: Option<(String, usize)> = None;
    // A line that is not well-formed still counts when its checksum is whole.
    let flush = |g: &mut GuestLines, p: (String, usize)| match parse_line(&p.0) {
        Some(line) if line.field("checksum").is_some_and(|c| c.len() == 16) => g.lines.push(GuestLine { line, segment: p.1 }),
        _ => g.unreadable.push(p.0),
    };
    for (k, seg) in t.segments.iter().enumerate() {
        let text = &outputs[seg.device][seg.start..seg.end];
        let lines: Vec<&str> = text.lines().collect();
        for (j, l) in lines.iter().enumerate() {
            if is_hypervisor_line(l) {
                continue;
            }
            if l.contains(LINUX_BANNER) {
                g.boots += 1;
            }
            if let Some(p) = pending.take() {
                // A start of the prefix ("v", "vmsync-work") after a line
                // that reads whole begins the next line: joined, it would
                // often still read ("dropped=8v").
                let next_line = !l.is_empty() && LINE_PREFIX.starts_with(l) && well_formed(&p.0).is_some();
                let joined = format!("{}{l}", p.0);
                if !l.contains(LINE_PREFIX) && !next_line {
                    if let Some(line) = well_formed(&joined) {
                        g.lines.push(GuestLine { line, segment: p.1 });
                        continue;
                    }
                }
                flush(&mut g, p);
            }
            let interrupted = lines.get(j + 1).is_none_or(|n| is_hypervisor_line(n));
            if !l.contains(LINE_PREFIX) {
                // The prefix itself cut by hypervisor lines ("vmsync-work").
                if interrupted && !l.is_empty() && LINE_PREFIX.starts_with(l) {
                    pending = Some((l.to_string(), k));
                }
                continue;
            }
            match well_formed(l) {
                Some(_) if !interrupted => flush(&mut g, (l.to_string(), k)),
                _ if interrupted => pending = Some((l.to_string(), k)),
                _ => flush(&mut g, (l.to_string(), k)),
            }
        }
    }
    if let Some(p) = pending.take() {
        flush(&mut g, p);
    }
    g
}

/// The checksum the host expects on each line, for workloads it can
/// recompute (the guest's default sizes); `None` for the others.
pub fn expected_checksums(workload: &str, lines: &[Line]) -> Option<Vec<u64>> {
    let progress = |l: &Line| -> Option<u64> {
        match workload {
            "counter" | "idle" => Some(l.counter),
            "video" => l.field("frames")?.parse().ok(),
            "memtouch" => l.field("periods")?.parse().ok(),
            "browse" => l.field("ticks")?.parse().ok(),
            _ => None,
        }
    };
    let wanted: Vec<Option<u64>> = lines.iter().map(progress).collect();
    if !matches!(workload, "counter" | "idle" | "video" | "memtouch" | "browse") {
        return None;
    }
    let mut points: Vec<u64> = wanted.iter().flatten().copied().collect();
    points.sort_unstable();
    points.dedup();
    // One forward pass over the progress values, checksum at each.
    let mut at: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    match workload {
        "idle" => {
            let sum = counter::WorkingSet::checksum_after(1, 0);
            at.extend(points.iter().map(|&p| (p, sum)));
        }
        "counter" => {
            let mut ws = counter::WorkingSet::new(counter::DEFAULT_MIB);
            for &p in &points {
                while ws.steps() < p {
                    ws.step();
                }
                at.insert(p, ws.checksum());
            }
        }
        "video" => {
            let mut v = video::Video::new();
            for &p in &points {
                while v.frames() < p {
                    v.render_frame();
                }
                at.insert(p, v.checksum());
            }
        }
        "memtouch" => {
            let mut m = memtouch::MemTouch::new(memtouch::DEFAULT_MIB);
            for &p in &points {
                while m.periods() < p {
                    m.touch();
                }
                at.insert(p, m.checksum());
            }
        }
        _ => {
            let mut b = browse::Browse::new();
            for &p in &points {
                while b.ticks() < p {
                    b.tick();
                }
                at.insert(p, b.checksum());
            }
        }
    }
    // A line without its progress field can match nothing.
    Some(wanted.iter().map(|w| w.and_then(|p| at.get(&p).copied()).unwrap_or(!0)).collect())
}

/// What the guest shows about the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestVerdict {
    pub rebooted: bool,
    pub boots: usize,
    pub counter_continuous: bool,
    pub time_monotonic: bool,
    /// Some(true): every checksum recomputed and equal; None: the workload's
    /// checksums are not recomputable here (only continuity was checked).
    pub checksums_verified: Option<bool>,
    pub lines: usize,
    pub first_counter: Option<u64>,
    pub last_counter: Option<u64>,
    /// What broke a rule, in words.
    pub problems: Vec<String>,
}

/// Checks the guest's lines against the rules of this module. `workload`
/// names the guest's workload for the checksum check (`None`: skip it).
pub fn verdict(outputs: &[String], t: &Timeline, workload: Option<&str>) -> GuestVerdict {
    let g = guest_lines(outputs, t);
    verdict_of(&g, t, workload)
}

pub fn verdict_of(g: &GuestLines, t: &Timeline, workload: Option<&str>) -> GuestVerdict {
    let mut problems: Vec<String> = g.unreadable.iter().map(|l| format!("unreadable workload line: {l:?}")).collect();
    let lines: Vec<&Line> = g.lines.iter().map(|l| &l.line).collect();
    let failover_between = |a: usize, b: usize| (a..b).any(|k| t.switches.get(k).is_some_and(|s| s.kind == SwitchKind::Failover));
    let mut counter_ok = !lines.is_empty();
    let mut time_ok = !lines.is_empty();
    if lines.is_empty() {
        problems.push("the guest printed no workload line".into());
    }
    for w in g.lines.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let failover = failover_between(a.segment, b.segment);
        let (pa, pb) = (a.line.counter, b.line.counter);
        let counter_fine = if failover { pb >= 1 && pb <= pa + 1 && pb + FAILOVER_MAX_REPEAT > pa } else { pb == pa + 1 };
        if !counter_fine {
            counter_ok = false;
            problems.push(format!("counter {pa} -> {pb}{}", if failover { " across a failover" } else { "" }));
        }
        if let (Some(ua), Some(ub)) = (a.line.uptime_ms, b.line.uptime_ms) {
            let back = if failover { FAILOVER_MAX_UPTIME_BACK_MS } else { 0 };
            if ub + back < ua {
                time_ok = false;
                problems.push(format!("uptime {ua} ms -> {ub} ms{}", if failover { " across a failover" } else { "" }));
            }
        }
    }
    let owned: Vec<Line> = lines.iter().map(|l| (*l).clone()).collect();
    let checksums_verified = workload.and_then(|w| expected_checksums(w, &owned)).map(|want| {
        let mut ok = true;
        for (l, w) in owned.iter().zip(want) {
            if l.checksum != w {
                ok = false;
                problems.push(format!("counter {}: checksum {:016x}, the host computes {w:016x}", l.counter, l.checksum));
            }
        }
        ok
    });
    if checksums_verified == Some(false) {
        counter_ok = false;
    }
    GuestVerdict {
        rebooted: g.boots > 1,
        boots: g.boots,
        counter_continuous: counter_ok,
        time_monotonic: time_ok,
        checksums_verified,
        lines: lines.len(),
        first_counter: lines.first().map(|l| l.counter),
        last_counter: lines.last().map(|l| l.counter),
        problems,
    }
}
