//! The demo's JSON report, read from what the guest and the hypervisor
//! printed: `vmsync: epoch ...` lines (sync-core's stats format), the
//! totals, the verify summary, the guest's `uname` and progress lines.
use serde_json::{json, Value};
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

pub fn build(out: &str, info: &RunInfo) -> Value {
    let epochs = epochs(out);
    let kernel = after(out, "vmsync-guest: uname ").next().unwrap_or("unknown");
    let per_epoch: Vec<Value> = epochs
        .iter()
        .map(|e| {
            json!({
                "epoch": e.epoch, "dirty_pages": e.dirty_pages, "dirty_page_bytes": e.dirty_page_bytes(),
                "changed_bytes": e.changed_bytes, "delta_bytes": e.encoded_bytes,
                "compressed_bytes": e.compressed_bytes, "wire_bytes": e.sealed_bytes,
                "write_faults": e.write_faults, "pause_us": e.pause_us,
                "sent_pages": e.sent_pages, "at_ms": e.at_ms, "zero_pages": e.zero_pages, "same_pages": e.same_pages,
                "full_pages": e.full_pages, "delta_pages": e.delta_pages,
            })
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
    let verify = after(out, "vmsync: verify checks=").next().map(|l| {
        let l = format!("checks={l}");
        json!({ "checks": field(&l, "checks").unwrap_or(0), "mismatches": field(&l, "mismatches").unwrap_or(0) })
    });
    let traps = after(out, "vmsync: traps: ").next().unwrap_or("");
    json!({
        "arch": "aarch64",
        "kernel": kernel,
        "workload": info.workload,
        "policy": info.policy,
        "seconds": info.seconds,
        "epochs": per_epoch,
        "totals": {
            "dirty_pages": sum(|e| e.dirty_pages), "dirty_page_bytes": sum(|e| e.dirty_page_bytes()),
            "changed_bytes": sum(|e| e.changed_bytes), "delta_bytes": sum(|e| e.encoded_bytes),
            "compressed_bytes": sum(|e| e.compressed_bytes), "wire_bytes": sum(|e| e.sealed_bytes),
            "sealed_bytes": sum(|e| e.sealed_bytes), "write_faults": sum(|e| e.write_faults),
        },
        "steady": {
            "epochs": steady.len(),
            "seconds": steady_seconds,
            "dirty_page_bytes": ssum(|e| e.dirty_page_bytes()), "changed_bytes": ssum(|e| e.changed_bytes),
            "delta_bytes": ssum(|e| e.encoded_bytes), "compressed_bytes": ssum(|e| e.compressed_bytes),
            "wire_bytes": ssum(|e| e.sealed_bytes), "sealed_bytes": ssum(|e| e.sealed_bytes), "write_faults": ssum(|e| e.write_faults),
        },
        "pause_us": { "median": median(epochs.iter().map(|e| e.pause_us).collect()), "max": epochs.iter().map(|e| e.pause_us).max().unwrap_or(0) },
        "verify": verify.unwrap_or(json!({"checks": 0, "mismatches": 0})),
        "guest": { "progress": progress(out), "powered_off": out.contains("vmsync: guest powered off") },
        "traps": traps,
    })
}

/// A human summary of a report.
pub fn summary(r: &Value) -> String {
    let t = &r["totals"];
    let s = &r["steady"];
    let mb = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1e6;
    let ratio = |a: &Value, b: &Value| {
        let (a, b) = (a.as_u64().unwrap_or(0) as f64, b.as_u64().unwrap_or(0) as f64);
        if b > 0.0 {
            format!("{:.1}x", a / b)
        } else {
            "-".into()
        }
    };
    let mut o = String::new();
    o += &format!(
        "workload {} | policy {} | {} s | kernel {}\n",
        r["workload"].as_str().unwrap_or(""),
        r["policy"].as_str().unwrap_or(""),
        r["seconds"],
        r["kernel"].as_str().unwrap_or("")
    );
    o += &format!("{:<22}{:>14}{:>14}\n", "", "all epochs", "after epoch 1");
    for (name, key) in [
        ("dirty-page bytes", "dirty_page_bytes"),
        ("changed bytes", "changed_bytes"),
        ("delta bytes", "delta_bytes"),
        ("delta+zstd bytes", "compressed_bytes"),
        ("sealed epoch bytes", "sealed_bytes"),
    ] {
        o += &format!("{:<22}{:>12.2} MB{:>12.2} MB\n", name, mb(&t[key]), mb(&s[key]));
    }
    o += &format!("dirty-page / sealed   {:>14}{:>14}\n", ratio(&t["dirty_page_bytes"], &t["sealed_bytes"]), ratio(&s["dirty_page_bytes"], &s["sealed_bytes"]));
    o += &format!(
        "epochs {} | pause median {} us, max {} us | verify checks {} mismatches {}\n",
        r["epochs"].as_array().map(|a| a.len()).unwrap_or(0),
        r["pause_us"]["median"],
        r["pause_us"]["max"],
        r["verify"]["checks"],
        r["verify"]["mismatches"]
    );
    o
}

/// What went over the link against what sending every dirty page whole
/// would have taken (without a link: the sealed epochs instead).
pub fn link_line(r: &Value) -> String {
    let t = &r["totals"];
    let dirty = t["dirty_page_bytes"].as_u64().unwrap_or(0);
    let (what, bytes) = match t["link_bytes"].as_u64() {
        Some(b) => (format!("on the link ({}, every direction, TCP/IP and acks included)", r["link"].as_str().unwrap_or("emulated")), b),
        None => ("sealed epochs (one device: no link)".to_string(), t["sealed_bytes"].as_u64().unwrap_or(0)),
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
vmsync: guest powered off (PSCI SYSTEM_OFF)\n";

    #[test]
    fn report_from_console() {
        let r = build(OUT, &RunInfo { workload: "video", policy: "interval:200ms", seconds: 2 });
        assert_eq!(r["kernel"], "6.1.0-test");
        assert_eq!(r["epochs"].as_array().unwrap().len(), 2);
        assert_eq!(r["totals"]["dirty_page_bytes"], 49152);
        assert_eq!(r["totals"]["wire_bytes"], 1120);
        assert_eq!(r["steady"]["changed_bytes"], 100);
        assert_eq!(r["verify"]["checks"], 2);
        assert_eq!(r["verify"]["mismatches"], 0);
        assert_eq!(r["guest"]["progress"], 2);
        assert_eq!(r["pause_us"]["max"], 500);
        assert!(summary(&r).contains("after epoch 1"));
        assert_eq!(link_line(&r), "sealed epochs (one device: no link): 0.00 MB against 0.05 MB of whole dirty pages: 43.9x less");
    }

    #[test]
    fn the_link_line_uses_the_emulators_count() {
        let mut r = build(OUT, &RunInfo { workload: "video", policy: "interval:200ms", seconds: 2 });
        r["link"] = "wifi".into();
        r["totals"]["link_bytes"] = 4096.into();
        assert_eq!(link_line(&r), "on the link (wifi, every direction, TCP/IP and acks included): 0.00 MB against 0.05 MB of whole dirty pages: 12.0x less");
    }
}
