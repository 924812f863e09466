//! The feasibility study's short form: `cargo xtask test` runs
//! `cargo xtask study --quick` (two workloads: Debian's dav1d and the
//! synthetic video, its stand-in; two policies, a few seconds each; the
//! run's shadow budget of 25 % and a shadow probe of a full shadow) before the QEMU tests and names its
//! output directory in `VMSYNC_TEST_STUDY_DIR`; these tests check what it
//! wrote. Keep the test names in step with `QUICK_TESTS` in xtask/src/study.rs.
use std::path::PathBuf;

/// The disk's two columns are empty: the quick study runs without a disk.
const HEADER: &str = "workload,policy,shadow_pct,seconds,epochs,dirty_pages,dirty_page_bytes,changed_bytes,delta_bytes,compressed_bytes,wire_bytes,write_faults,pause_us_median,pause_us_max,progress_rate,disk_dirty_bytes,disk_guest_bytes";
const QUICK_WORKLOADS: [&str; 2] = ["dav1d", "video"];
const QUICK_POLICIES: [&str; 2] = ["interval:200ms", "switch-only"];
/// The run's own shadow budget, then the probed one (percent; 100: full).
const QUICK_SHADOWS: [u8; 2] = [25, 100];
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

fn dir() -> PathBuf {
    std::env::var_os("VMSYNC_TEST_STUDY_DIR")
        .unwrap_or_else(|| panic!("VMSYNC_TEST_STUDY_DIR is not set: run the QEMU tests through `cargo xtask test`"))
        .into()
}

fn read(name: &str) -> Vec<u8> {
    let p = dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// One row of results.csv: the two names, then the numbers by column name.
struct Row {
    workload: String,
    policy: String,
    values: Vec<(&'static str, f64)>,
}

impl Row {
    fn get(&self, column: &str) -> f64 {
        self.values.iter().find(|(c, _)| *c == column).unwrap_or_else(|| panic!("no column {column}")).1
    }
}

fn rows() -> Vec<Row> {
    let text = String::from_utf8(read("results.csv")).expect("results.csv is UTF-8");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(HEADER), "results.csv header");
    let columns: Vec<&'static str> = HEADER.split(',').collect();
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), columns.len(), "fields in {line:?}");
            let values = columns[2..]
                .iter()
                .zip(&f[2..])
                // progress_rate is empty for a workload without a progress
                // field, the disk's columns for a run without a disk.
                .filter(|(_, v)| !v.is_empty())
                .map(|(c, v)| (*c, v.parse::<f64>().unwrap_or_else(|_| panic!("{c}={v:?} in {line:?} is not a number"))))
                .collect();
            Row { workload: f[0].to_string(), policy: f[1].to_string(), values }
        })
        .collect()
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "reads the quick study's output: run it with `cargo xtask test`")]
fn study_quick_files() {
    let rows = rows();
    for w in QUICK_WORKLOADS {
        for p in QUICK_POLICIES {
            let r = rows.iter().find(|r| r.workload == w && r.policy == p && r.get("shadow_pct") == 25.0).unwrap_or_else(|| panic!("no row for {w} × {p}"));
            assert!(r.get("seconds") > 1.0, "{w} × {p}: steady state of {} s", r.get("seconds"));
            assert!(r.get("epochs") >= 1.0, "{w} × {p}: no steady epoch");
            assert!(r.get("progress_rate") > 0.0, "{w} × {p}: the workload made no progress");
            assert!(!r.values.iter().any(|(c, _)| c.starts_with("disk_")), "{w} × {p}: a run without a disk has empty disk columns");
        }
    }
    assert_eq!(rows.len(), QUICK_WORKLOADS.len() * QUICK_POLICIES.len() * QUICK_SHADOWS.len());
    let report = String::from_utf8(read("report.md")).expect("report.md is UTF-8");
    for part in ["| dav1d | interval:200ms |", "| video | switch-only |", "Cost per hour", "wifi 50 Mbit/s", "bytes_per_second.png"] {
        assert!(report.contains(part), "report.md has no {part:?}:\n{report}");
    }
    for stem in ["bytes_per_second", "bytes_vs_interval"] {
        let png = read(&format!("{stem}.png"));
        assert!(png.starts_with(PNG_MAGIC) && png.len() > 1000, "{stem}.png is not a PNG ({} bytes)", png.len());
        let svg = String::from_utf8(read(&format!("{stem}.svg"))).expect("SVG is UTF-8");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{stem}.svg is not an SVG");
        assert!(svg.contains("<text") && svg.contains("<rect"), "{stem}.svg has no text or shapes");
    }
}

/// The paper's effect on real video playback (Debian's dav1d), and ours:
/// whole dirty pages move more than the bytes that changed, and delta +
/// zstd moves less than that.
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "reads the quick study's output: run it with `cargo xtask test`")]
fn study_quick_dav1d_inequality() {
    let rows = rows();
    let dav1d: Vec<&Row> = rows.iter().filter(|r| r.workload == "dav1d" && r.get("shadow_pct") == 25.0).collect();
    assert_eq!(dav1d.len(), QUICK_POLICIES.len());
    for r in dav1d {
        let (dirty, changed, compressed) = (r.get("dirty_page_bytes"), r.get("changed_bytes"), r.get("compressed_bytes"));
        assert!(changed > 0.0, "dav1d × {}: nothing changed", r.policy);
        assert!(dirty >= changed, "dav1d × {}: dirty-page bytes {dirty} < changed bytes {changed}", r.policy);
        assert!(changed >= compressed, "dav1d × {}: changed bytes {changed} < compressed bytes {compressed}", r.policy);
    }
}

/// The quick study's shadow probes: each run kept 25 % and probed 25 % and
/// full in the same run; results.csv has a row per budget, and in each
/// run's console the probe of the run's own budget logged exactly the
/// link's epoch lines (the study fails a run where it did not; checked
/// here from the console itself).
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "reads the quick study's output: run it with `cargo xtask test`")]
fn study_quick_shadow_probes() {
    let rows = rows();
    for w in QUICK_WORKLOADS {
        for p in QUICK_POLICIES {
            let at = |s: u8| rows.iter().find(|r| r.workload == w && r.policy == p && r.get("shadow_pct") == s as f64);
            let (own, full) = (at(25).unwrap_or_else(|| panic!("no 25 % row for {w} × {p}")), at(100).unwrap_or_else(|| panic!("no full row for {w} × {p}")));
            // Same run: same steady span and epochs.
            assert_eq!((own.get("seconds"), own.get("epochs")), (full.get("seconds"), full.get("epochs")), "{w} × {p}");
            assert!(full.get("wire_bytes") > 0.0, "{w} × {p}: the full probe counted nothing");
            let log = String::from_utf8(read(&format!("logs/{w}_{}_shadow-25.log", p.replace(':', "-")))).expect("console is UTF-8");
            let lines =
                |marker: &str| -> Vec<String> { log.lines().filter_map(|l| l.find(marker).map(|i| l[i + marker.len()..].trim().to_string())).collect() };
            let (link, probe, probe_full) = (lines("vmsync: epoch "), lines("vmsync: shadow probe 25% "), lines("vmsync: shadow probe full "));
            assert!(link.len() >= 2, "{w} × {p}: {} epoch lines", link.len());
            assert_eq!(probe, link, "{w} × {p}: the 25 % probe differs from the link");
            assert_eq!(probe_full.len(), link.len(), "{w} × {p}: the full probe missed cuts");
        }
    }
    let report = String::from_utf8(read("report.md")).expect("report.md is UTF-8");
    assert!(report.contains("## Shadow budget") && report.contains("| workload | policy | 100 % | 25 % |"), "{report}");
}
