//! The demo's JSON report, read from what the guest and the hypervisor
//! printed: `vmsync: epoch ...` lines (sync-core's stats format), the
//! totals, the verify summary, the guest's `uname` and progress lines.
//! Its types, and the schema version, are in [`schema`]; docs/report.md
//! describes each field.
mod schema;

pub use schema::*;
use sync_core::stats::{parse_epoch_line, EpochStats};

pub struct RunInfo<'a> {
    pub workload: &'a str,
    pub policy: &'a str,
    pub seconds: u64,
}

/// Everything after `marker` on lines that contain it.
fn after<'a>(out: &'a str, marker: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    out.lines().filter_map(move |l| l.find(marker).map(|i| l[i + marker.len()..].trim()))
}

/// `key=value` of a space-separated line.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

pub fn epochs(out: &str) -> Vec<EpochStats> {
    after(out, "vmsync: epoch ").filter_map(|l| parse_epoch_line(l).ok()).collect()
}

/// The last progress counter the guest's workload printed.
pub fn progress(out: &str) -> Option<u64> {
    after(out, "vmsync-workload: ").filter_map(|l| field(l, "counter")).last()
}

pub fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

pub fn build(out: &str, info: &RunInfo) -> Report {
    let epochs = epochs(out);
    let kernel = after(out, "vmsync-guest: uname ").next().unwrap_or("unknown");
    let per_epoch: Vec<EpochEntry> = epochs
        .iter()
        .map(|e| EpochEntry {
            epoch: e.epoch,
            dirty_pages: e.dirty_pages,
            dirty_page_bytes: e.dirty_page_bytes(),
            changed_bytes: e.changed_bytes,
            delta_bytes: e.encoded_bytes,
            compressed_bytes: e.compressed_bytes,
            sealed_bytes: e.sealed_bytes,
            write_faults: e.write_faults,
            pause_us: e.pause_us,
            sent_pages: e.sent_pages,
            at_ms: e.at_ms,
            zero_pages: e.zero_pages,
            same_pages: e.same_pages,
            full_pages: e.full_pages,
            delta_pages: e.delta_pages,
        })
        .collect();
    let sum = |f: fn(&EpochStats) -> u64| epochs.iter().map(f).sum::<u64>();
    // Epoch 1 carries the whole initial image; the steady-state figures
    // leave it out (`steady`), the totals keep it.
    let steady: Vec<&EpochStats> = epochs.iter().filter(|e| e.epoch > 1).collect();
    // Wall time the steady epochs cover: from the cut of epoch 1 to the last.
    let steady_seconds = match (epochs.iter().find(|e| e.epoch == 1), steady.last()) {
        (Some(first), Some(last)) => last.at_ms.saturating_sub(first.at_ms) as f64 / 1000.0,
        _ => 0.0,
    };
    let ssum = |f: fn(&EpochStats) -> u64| steady.iter().map(|e| f(e)).sum::<u64>();
    let verify = after(out, "vmsync: verify checks=")
        .next()
        .map(|l| {
            let l = format!("checks={l}");
            Verify { checks: field(&l, "checks").unwrap_or(0), mismatches: field(&l, "mismatches").unwrap_or(0) }
        })
        .unwrap_or_default();
    let traps = after(out, "vmsync: traps: ").next().unwrap_or("");
    let heap = after(out, "vmsync: heap ").last().and_then(|l| Some(Heap { peak_bytes: field(l, "peak_bytes")?, size_bytes: field(l, "size_bytes")? }));
    Report {
        schema: SCHEMA,
        arch: "aarch64".into(),
        kernel: kernel.into(),
        workload: info.workload.into(),
        policy: info.policy.into(),
        seconds: info.seconds,
        epochs: per_epoch,
        totals: Totals {
            dirty_pages: sum(|e| e.dirty_pages),
            dirty_page_bytes: sum(|e| e.dirty_page_bytes()),
            changed_bytes: sum(|e| e.changed_bytes),
            delta_bytes: sum(|e| e.encoded_bytes),
            compressed_bytes: sum(|e| e.compressed_bytes),
            sealed_bytes: sum(|e| e.sealed_bytes),
            write_faults: sum(|e| e.write_faults),
            link_bytes: None,
        },
        steady: Steady {
            epochs: steady.len() as u64,
            seconds: steady_seconds,
            dirty_page_bytes: ssum(|e| e.dirty_page_bytes()),
            changed_bytes: ssum(|e| e.changed_bytes),
            delta_bytes: ssum(|e| e.encoded_bytes),
            compressed_bytes: ssum(|e| e.compressed_bytes),
            sealed_bytes: ssum(|e| e.sealed_bytes),
            write_faults: ssum(|e| e.write_faults),
        },
        pause_us: Pause { median: median(epochs.iter().map(|e| e.pause_us).collect()), max: epochs.iter().map(|e| e.pause_us).max().unwrap_or(0) },
        verify,
        guest: Guest { progress: progress(out), powered_off: out.contains("vmsync: guest powered off"), ..Guest::default() },
        traps: traps.into(),
        heap,
        ..Report::default()
    }
}

/// A human summary of a report.
pub fn summary(r: &Report) -> String {
    let (t, s) = (&r.totals, &r.steady);
    let mb = |v: u64| v as f64 / 1e6;
    let ratio = |a: u64, b: u64| if b > 0 { format!("{:.1}x", a as f64 / b as f64) } else { "-".into() };
    let mut o = String::new();
    o += &format!("workload {} | policy {} | {} s | kernel {}\n", r.workload, r.policy, r.seconds, r.kernel);
    o += &format!("{:<22}{:>14}{:>14}\n", "", "all epochs", "after epoch 1");
    for (name, all, after) in [
        ("dirty-page bytes", t.dirty_page_bytes, s.dirty_page_bytes),
        ("changed bytes", t.changed_bytes, s.changed_bytes),
        ("delta bytes", t.delta_bytes, s.delta_bytes),
        ("delta+zstd bytes", t.compressed_bytes, s.compressed_bytes),
        ("sealed epoch bytes", t.sealed_bytes, s.sealed_bytes),
    ] {
        o += &format!("{:<22}{:>12.2} MB{:>12.2} MB\n", name, mb(all), mb(after));
    }
    o += &format!("dirty-page / sealed   {:>14}{:>14}\n", ratio(t.dirty_page_bytes, t.sealed_bytes), ratio(s.dirty_page_bytes, s.sealed_bytes));
    o += &format!(
        "epochs {} | pause median {} us, max {} us | verify checks {} mismatches {}\n",
        r.epochs.len(),
        r.pause_us.median,
        r.pause_us.max,
        r.verify.checks,
        r.verify.mismatches
    );
    if let Some(h) = &r.heap {
        o += &format!("hypervisor heap: peak {:.1} MiB of {:.1} MiB\n", h.peak_bytes as f64 / 1048576.0, h.size_bytes as f64 / 1048576.0);
    }
    o
}

/// What went over the link against what sending every dirty page whole
/// would have taken (without a link: the sealed epochs instead).
pub fn link_line(r: &Report) -> String {
    let t = &r.totals;
    let dirty = t.dirty_page_bytes;
    let (what, bytes) = match t.link_bytes {
        Some(b) => (format!("on the link ({}, every direction, TCP/IP and acks included)", r.link.as_deref().unwrap_or("emulated")), b),
        None => ("sealed epochs (one device: no link)".to_string(), t.sealed_bytes),
    };
    let times = if bytes > 0 { format!(": {:.1}x less", dirty as f64 / bytes as f64) } else { String::new() };
    format!("{what}: {:.2} MB against {:.2} MB of whole dirty pages{times}", bytes as f64 / 1e6, dirty as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "vmsync-guest: uname 6.1.0-test\n\
vmsync: epoch epoch=1 dirty_pages=10 dirty_bytes=40960 sent_pages=10 changed_bytes=40960 encoded_bytes=41000 compressed_bytes=900 sealed_bytes=1000 write_faults=0 pause_us=500 zero_pages=0 same_pages=0 full_pages=10 delta_pages=0\n\
vmsync-workload: counter=1 checksum=ab uptime=1.0\n\
vmsync: epoch epoch=2 dirty_pages=2 dirty_bytes=8192 sent_pages=2 changed_bytes=100 encoded_bytes=120 compressed_bytes=80 sealed_bytes=120 write_faults=2 pause_us=100 zero_pages=0 same_pages=0 full_pages=0 delta_pages=2\n\
vmsync-workload: counter=2 checksum=cd uptime=2.0\n\
vmsync: verify checks=2 mismatches=0\n\
vmsync: heap used_bytes=100 peak_bytes=5000 size_bytes=9000\n\
vmsync: guest powered off (PSCI SYSTEM_OFF)\n";

    #[test]
    fn report_from_console() {
        let r = build(OUT, &RunInfo { workload: "video", policy: "interval:200ms", seconds: 2 });
        assert_eq!(r.kernel, "6.1.0-test");
        assert_eq!(r.epochs.len(), 2);
        assert_eq!(r.totals.dirty_page_bytes, 49152);
        assert_eq!(r.totals.sealed_bytes, 1120);
        assert_eq!(r.totals.link_bytes, None);
        assert_eq!(r.steady.changed_bytes, 100);
        assert_eq!(r.steady.sealed_bytes, 120);
        assert_eq!(r.epochs[1].sealed_bytes, 120);
        assert_eq!((r.verify.checks, r.verify.mismatches), (2, 0));
        assert_eq!(r.guest.progress, Some(2));
        assert_eq!(r.pause_us.max, 500);
        assert_eq!(r.heap, Some(Heap { peak_bytes: 5000, size_bytes: 9000 }));
        assert!(summary(&r).contains("after epoch 1"));
        assert_eq!(link_line(&r), "sealed epochs (one device: no link): 0.00 MB against 0.05 MB of whole dirty pages: 43.9x less");
    }

    #[test]
    fn the_link_line_uses_the_emulators_count() {
        let mut r = build(OUT, &RunInfo { workload: "video", policy: "interval:200ms", seconds: 2 });
        r.link = Some("wifi".into());
        r.totals.link_bytes = Some(4096);
        assert_eq!(link_line(&r), "on the link (wifi, every direction, TCP/IP and acks included): 0.00 MB against 0.05 MB of whole dirty pages: 12.0x less");
    }

    /// A report with every optional part present, as a switching run with
    /// a link writes it (plus a follow run's `standbys`).
    fn full_report() -> Report {
        let mut r = build(OUT, &RunInfo { workload: "video", policy: "interval:200ms", seconds: 2 });
        r.link = Some("wifi".into());
        r.totals.link_bytes = Some(4096);
        r.guest.workload_started = Some(true);
        r.guest.workload_rc = Some(WorkloadRc::Code(0));
        r.guest.continuity = Some(Continuity {
            checksums_verified: Some(true),
            first_counter: Some(1),
            last_counter: Some(2),
            problems: vec!["p".into()],
            ..Continuity::default()
        });
        r.standbys = Some(vec![StandbyEntry {
            name: "device-1".into(),
            reconnects: Some(0),
            full_resyncs: Some(0),
            caught_up_at_ms: Some(7),
            ..StandbyEntry::default()
        }]);
        r.switches = Some(vec![SwitchEntry { kind: SwitchKind::Failover, pause_ms: Some(3), ..SwitchEntry::default() }]);
        r.failed_switches = Some(vec![FailedSwitch { device: "device-1".into(), reason: "r".into() }]);
        r.timeline_problems = Some(vec!["t".into()]);
        r.devices = Some(vec![DeviceEntry {
            role_at_end: Role::Killed,
            committed_epoch: Some(1),
            digest_match: Some(true),
            caught_up_at_ms: Some(1),
            ..DeviceEntry::default()
        }]);
        r
    }

    #[test]
    fn a_report_round_trips_through_json() {
        for r in [full_report(), build(OUT, &RunInfo { workload: "video", policy: "switch-only", seconds: 2 })] {
            let text = serde_json::to_string_pretty(&r).unwrap();
            let back: Report = serde_json::from_str(&text).unwrap();
            assert_eq!(back, r, "{text}");
        }
        // A text exit status stays text; an unknown field is ignored.
        let mut r = full_report();
        r.guest.workload_rc = Some(WorkloadRc::Text("killed".into()));
        let mut v = serde_json::to_value(&r).unwrap();
        v["added_later"] = 1.into();
        assert_eq!(serde_json::from_value::<Report>(v).unwrap(), r);
    }

    #[test]
    fn the_schema_version_is_written_and_the_byte_figures_stay_apart() {
        let v = serde_json::to_value(full_report()).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        // With a link, the encoder's figure keeps its meaning and the
        // link's count has its own name; the old ambiguous name is gone.
        assert_eq!((v["totals"]["sealed_bytes"].as_u64(), v["totals"]["link_bytes"].as_u64()), (Some(1120), Some(4096)));
        assert!(v["totals"].get("wire_bytes").is_none() && v["steady"].get("wire_bytes").is_none() && v["epochs"][0].get("wire_bytes").is_none());
        // One device: no link, so no link figure.
        let one = serde_json::to_value(build(OUT, &RunInfo { workload: "video", policy: "switch-only", seconds: 2 })).unwrap();
        assert!(one["totals"].get("link_bytes").is_none() && one.get("link").is_none() && one.get("devices").is_none());
        assert_eq!(one["schema"], SCHEMA);
    }

    /// Every field path of a JSON value: `totals.sealed_bytes`,
    /// `epochs[].epoch`; an array of strings is a leaf.
    fn paths(v: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    out.insert(p.clone());
                    paths(x, &p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for x in a.iter().filter(|x| x.is_object()) {
                    paths(x, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_field_is_documented() {
        let doc = include_str!("../../docs/report.md");
        let mut fields = std::collections::BTreeSet::new();
        paths(&serde_json::to_value(full_report()).unwrap(), "", &mut fields);
        // The rows of docs/report.md's tables: "| `path` | type | unit | meaning |".
        let rows: std::collections::BTreeSet<String> =
            doc.lines().filter_map(|l| l.strip_prefix("| `")?.split_once("` |").map(|(p, _)| p.to_string())).collect();
        let undocumented: Vec<&String> = fields.difference(&rows).collect();
        let unknown: Vec<&String> = rows.difference(&fields).collect();
        assert!(undocumented.is_empty(), "fields without a row in docs/report.md: {undocumented:?}");
        assert!(unknown.is_empty(), "rows of docs/report.md that name no field: {unknown:?}");
        assert!(doc.contains(&format!("now **{SCHEMA}**")), "docs/report.md names another schema version");
        // Its example is a report of this version.
        let example = doc.split("```json\n").nth(1).and_then(|e| e.split("```").next()).expect("docs/report.md has a JSON example");
        let r: Report = serde_json::from_str(example).expect("the example parses as a Report");
        assert_eq!(r.schema, SCHEMA);
    }
}
