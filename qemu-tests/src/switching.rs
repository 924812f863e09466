//! Who ran the guest when, read from the consoles of a switching run
//! (docs/protocol.md, "Switch"): the `vmsync: switch: ...` lines of every device
//! become a [`Timeline`] of guest segments and the switches between them.
//!
//! Rules:
//! - The guest starts on `first_active` at the start of its output.
//! - A segment ends at the holder's next `vmsync: switch: out epoch=E
//!   to=IP` line; the guest continues on device IP right after its
//!   `vmsync: switch: in epoch=E` line (the first one with that epoch after
//!   where that device's last segment ended).
//! - A holder without a further `switch: out` line keeps the guest to the
//!   end of its output (it powered off, was killed, or the run ended). Then
//!   if another device logged `vmsync: switch: failover` after its last
//!   segment, the guest continues there (a failover from the holder). A
//!   `switch: in ... from=<holder>` without the holder's `switch: out` is
//!   also followed, and noted in [`Timeline::problems`].
//! - `digest_match` of a switch: the `in` and `out` digests are equal and
//!   agree with every other record of that epoch that exists: the new
//!   device's `standby committed epoch=E` and the old device's `digest
//!   epoch=E` (the last of each before the switch lines). Of a failover: the
//!   failover digest equals the old holder's `digest epoch=E` (required) and
//!   the new device's own commit of E, if logged.
//! - `vmsync: warning: switch: failed: <reason>` lines, on any device, are
//!   [`FailedSwitch`]es: the guest stays where it was.
//! - A holder that ran on after a failover (cut off from the others, unaware
//!   of it) until a higher term fenced it (`vmsync: warning: fence: term`,
//!   after the failover's epoch was cut there): its segment ends at its cut
//!   of the epoch the failover resumed from (`vmsync: digest epoch=E`, the
//!   last before the fence line). What it ran past that is a history the
//!   guest lost, not part of the guest's console; its console is read on
//!   from the fence line.

pub const SWITCH_REQUEST: &str = "vmsync: switch: request sent";
pub const SWITCH_IN: &str = "vmsync: switch: in ";
pub const SWITCH_OUT: &str = "vmsync: switch: out ";
pub const FAILOVER: &str = "vmsync: switch: failover ";
pub const SWITCH_FAILED: &str = "vmsync: warning: switch: failed: ";
pub const POWERED_OFF: &str = "vmsync: guest powered off";
/// A running guest stopped by a higher term of its lineage (the device is a
/// standby from here on).
pub const FENCED: &str = "vmsync: warning: fence: term ";

/// The network address of device `i` in a run (`169.254.0.(i+1)`).
pub fn device_ip(i: usize) -> String {
    crate::multi::device_ip(i)
}

/// The device index of `169.254.0.(i+1)` (a `:port` suffix is ignored).
pub fn device_of_ip(ip: &str) -> Option<usize> {
    let host = ip.split(':').next()?;
    let last: usize = host.strip_prefix("169.254.0.")?.parse().ok()?;
    last.checked_sub(1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchKind {
    /// Both sides took part: SwitchRequest, final epoch, handover.
    Switch,
    /// The old device was gone; the new one resumed its last committed epoch.
    Failover,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    pub kind: SwitchKind,
    /// Device indices.
    pub from: usize,
    pub to: usize,
    pub epoch: u64,
    /// The new device's figure (request sent to guest resumed; for a
    /// failover the command to guest resumed).
    pub latency_ms: u64,
    /// Bytes the new device received in the final epoch (0 for a failover).
    pub final_epoch_bytes: u64,
    /// How long the old device held the guest paused (switch only).
    pub pause_ms: Option<u64>,
    pub digest: String,
    pub digest_match: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedSwitch {
    pub device: usize,
    pub reason: String,
}

/// A stretch of one device's console during which it ran the guest:
/// `outputs[device][start..end]`. Segment k+1 follows segment k through
/// `switches[k]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub device: usize,
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// In the order the guest ran them.
    pub segments: Vec<Segment>,
    pub switches: Vec<Switch>,
    pub failed: Vec<FailedSwitch>,
    /// Inconsistencies between the consoles (an `out` without its `in`, ...).
    pub problems: Vec<String>,
}

impl Timeline {
    /// The device that ran the guest last.
    pub fn last_holder(&self) -> Option<usize> {
        self.segments.last().map(|s| s.device)
    }

    /// The holders in order (`[0, 1, 0]` for A → B → A).
    pub fn holders(&self) -> Vec<usize> {
        self.segments.iter().map(|s| s.device).collect()
    }

    /// The consoles of the holders, each over its segment, in order: the
    /// guest's own console with the hypervisor lines of whoever was active.
    pub fn guest_console(&self, outputs: &[String]) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            let part = &outputs[seg.device][seg.start..seg.end];
            s += part;
            if !part.is_empty() && !part.ends_with('\n') {
                s.push('\n');
            }
        }
        s
    }
}

/// A console line found at byte offsets `start..end` (end past its newline).
#[derive(Clone, Copy, Debug)]
struct Found<'a> {
    start: usize,
    end: usize,
    /// The text after the marker.
    rest: &'a str,
}

/// Lines of `out` from `from` on that contain `marker`.
fn lines_with<'a>(out: &'a str, from: usize, marker: &'a str) -> impl Iterator<Item = Found<'a>> + 'a {
    let mut at = from.min(out.len());
    // Start at a line boundary.
    if at > 0 && !out[..at].ends_with('\n') {
        at = out[at..].find('\n').map(|i| at + i + 1).unwrap_or(out.len());
    }
    std::iter::from_fn(move || loop {
        if at >= out.len() {
            return None;
        }
        let start = at;
        let end = out[at..].find('\n').map(|i| at + i + 1).unwrap_or(out.len());
        at = end;
        let line = &out[start..end];
        if let Some(i) = line.find(marker) {
            return Some(Found { start, end, rest: line[i + marker.len()..].trim_end() });
        }
    })
}

/// `key=value` of a space-separated record.
pub fn kv<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    rest.split_whitespace().find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

fn num(rest: &str, key: &str) -> Option<u64> {
    kv(rest, key)?.parse().ok()
}

/// The last digest of `epoch` in `out[..before]`: a `digest epoch=E d=`
/// line when `cut` (the active side), a `standby committed epoch=E digest=`
/// line otherwise.
fn digest_before(out: &str, before: usize, epoch: u64, cut: bool) -> Option<&str> {
    let (marker, key) = if cut { ("vmsync: digest ", "d") } else { ("vmsync: standby committed ", "digest") };
    lines_with(&out[..before.min(out.len())], 0, marker).filter(|f| num(f.rest, "epoch") == Some(epoch)).filter_map(|f| kv(f.rest, key)).last()
}

/// Reads the timeline of a run whose guest started on `first_active`.
pub fn timeline(outputs: &[String], first_active: usize) -> Timeline {
    let n = outputs.len();
    let mut t = Timeline::default();
    for (d, out) in outputs.iter().enumerate() {
        for f in lines_with(out, 0, SWITCH_FAILED) {
            t.failed.push(FailedSwitch { device: d, reason: f.rest.to_string() });
        }
        for f in lines_with(out, 0, SWITCH_OUT) {
            if num(f.rest, "epoch").is_none() || kv(f.rest, "to").and_then(device_of_ip).filter(|&d| d < n).is_none() {
                t.problems.push(format!("device-{d}: unreadable switch out line: {}", f.rest));
            }
        }
    }
    if first_active >= n {
        return t;
    }
    // Where each device's console has been read up to.
    let mut cursor = vec![0usize; n];
    let (mut holder, mut start) = (first_active, 0usize);
    // Each step consumes at least one line, so this bound is never the limit.
    for _ in 0..10_000 {
        let out = &outputs[holder];
        let readable = |f: &Found| Some((num(f.rest, "epoch")?, kv(f.rest, "to").and_then(device_of_ip).filter(|&d| d < n)?));
        if let Some((o, (epoch, to))) = lines_with(out, start, SWITCH_OUT).find_map(|f| Some((f, readable(&f)?))) {
            t.segments.push(Segment { device: holder, start, end: o.start });
            cursor[holder] = o.end;
            let Some(i) = lines_with(&outputs[to], cursor[to], SWITCH_IN).find(|f| num(f.rest, "epoch") == Some(epoch)) else {
                t.problems.push(format!("device-{holder} handed the guest to device-{to} at epoch {epoch}, which never logged switch: in"));
                return t;
            };
            let din = kv(i.rest, "digest").unwrap_or("");
            let dout = kv(o.rest, "digest").unwrap_or("");
            let committed = digest_before(&outputs[to], i.start, epoch, false);
            let cut = digest_before(out, o.start, epoch, true);
            let digest_match = !din.is_empty() && din == dout && committed.is_none_or(|c| c == din) && cut.is_none_or(|c| c == din);
            if let Some(f) = kv(i.rest, "from").and_then(device_of_ip) {
                if f != holder {
                    t.problems.push(format!("device-{to} switch: in epoch={epoch} names device-{f}, but device-{holder} handed over"));
                }
            }
            t.switches.push(Switch {
                kind: SwitchKind::Switch,
                from: holder,
                to,
                epoch,
                latency_ms: num(i.rest, "latency_ms").unwrap_or(0),
                final_epoch_bytes: num(i.rest, "final_epoch_bytes").unwrap_or(0),
                pause_ms: num(o.rest, "pause_ms"),
                digest: din.to_string(),
                digest_match,
            });
            holder = to;
            start = i.end;
            continue;
        }
        // The holder kept the guest to the end of its console.
        t.segments.push(Segment { device: holder, start, end: out.len() });
        cursor[holder] = out.len();
        let holder_ip = device_ip(holder);
        // A switch: in naming the holder with no switch: out on its side.
        let orphan_in = (0..n)
            .filter(|&d| d != holder)
            .find_map(|d| lines_with(&outputs[d], cursor[d], SWITCH_IN).find(|f| kv(f.rest, "from").and_then(device_of_ip) == Some(holder)).map(|f| (d, f)));
        if let Some((d, i)) = orphan_in {
            t.problems.push(format!("device-{d} logged switch: in from {holder_ip} without a switch: out on device-{holder}"));
            t.switches.push(Switch {
                kind: SwitchKind::Switch,
                from: holder,
                to: d,
                epoch: num(i.rest, "epoch").unwrap_or(0),
                latency_ms: num(i.rest, "latency_ms").unwrap_or(0),
                final_epoch_bytes: num(i.rest, "final_epoch_bytes").unwrap_or(0),
                pause_ms: None,
                digest: kv(i.rest, "digest").unwrap_or("").to_string(),
                digest_match: false,
            });
            holder = d;
            start = i.end;
            continue;
        }
        // A failover on a device that has not held the guest since.
        let failover = (0..n)
            .filter(|&d| d != holder)
            .filter_map(|d| lines_with(&outputs[d], cursor[d], FAILOVER).next().map(|f| (d, f)))
            .min_by_key(|(_, f)| num(f.rest, "epoch"));
        let Some((d, f)) = failover else { break };
        let epoch = num(f.rest, "epoch").unwrap_or(0);
        if let Some(fence) = lines_with(out, start, FENCED).next() {
            let cut = lines_with(&out[..fence.start], start, "vmsync: digest ").filter(|c| num(c.rest, "epoch") == Some(epoch)).last();
            if let (Some(cut), Some(seg)) = (cut, t.segments.last_mut()) {
                seg.end = cut.end;
            }
            cursor[holder] = fence.end;
        }
        let digest = kv(f.rest, "digest").unwrap_or("");
        let cut = digest_before(out, out.len(), epoch, true);
        let committed = digest_before(&outputs[d], f.start, epoch, false);
        let digest_match = !digest.is_empty() && cut == Some(digest) && committed.is_none_or(|c| c == digest);
        t.switches.push(Switch {
            kind: SwitchKind::Failover,
            from: holder,
            to: d,
            epoch,
            latency_ms: num(f.rest, "latency_ms").unwrap_or(0),
            final_epoch_bytes: 0,
            pause_ms: None,
            digest: digest.to_string(),
            digest_match,
        });
        holder = d;
        start = f.end;
    }
    t
}

/// The last `(epoch, digest)` a device committed as a standby.
pub fn last_commit(out: &str) -> Option<(u64, String)> {
    lines_with(out, 0, "vmsync: standby committed ").filter_map(|f| Some((num(f.rest, "epoch")?, kv(f.rest, "digest")?.to_string()))).last()
}

/// Every `(epoch, digest)` cut by some device while active (`vmsync: digest
/// epoch=E d=HEX`), over all consoles.
pub fn cut_digests(outputs: &[String]) -> Vec<(u64, String)> {
    outputs.iter().flat_map(|o| lines_with(o, 0, "vmsync: digest ").filter_map(|f| Some((num(f.rest, "epoch")?, kv(f.rest, "d")?.to_string())))).collect()
}

#[cfg(test)]
mod tests;
