//! One study row from one run's console: the workload's steady state, that
//! is every epoch the hypervisor cut after the one at the workload's first
//! progress line, one second into its run (`sync_core::stats::STEADY_STATE_LOG`),
//! and `results.csv`.
//!
//! Left out: epoch 1 (the initial full copy of the guest), every epoch cut
//! while the guest booted, and the workload's first second (loading the
//! program, filling its first buffers). The paper measured steady-state
//! sync; an initial copy is paid once per pairing of devices, not per hour.
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use sync_core::stats::{EpochStats, STEADY_STATE_LOG};

use crate::report;

/// The columns of `results.csv`, named as in the demo's JSON report.
/// The last two are empty for a run without a disk.
pub const CSV_HEADER: &str = "workload,policy,shadow_pct,seconds,epochs,dirty_pages,dirty_page_bytes,changed_bytes,delta_bytes,compressed_bytes,wire_bytes,write_faults,pause_us_median,pause_us_max,progress_rate,disk_dirty_bytes,disk_guest_bytes";

/// The header of a results.csv from before the disk's columns (its runs
/// had no disk).
const CSV_HEADER_NO_DISK: &str = "workload,policy,shadow_pct,seconds,epochs,dirty_pages,dirty_page_bytes,changed_bytes,delta_bytes,compressed_bytes,wire_bytes,write_faults,pause_us_median,pause_us_max,progress_rate";

/// The header of a results.csv from before the shadow budget was a column
/// (every run then kept a full shadow).
const CSV_HEADER_FULL_SHADOW: &str = "workload,policy,seconds,epochs,dirty_pages,dirty_page_bytes,changed_bytes,delta_bytes,compressed_bytes,wire_bytes,write_faults,pause_us_median,pause_us_max,progress_rate";

/// Totals over a run's steady-state epochs.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub workload: String,
    pub policy: String,
    /// The active device's shadow budget, percent of guest RAM (100: full).
    pub shadow: u8,
    /// Time the steady epochs cover: from the end of the cut at the
    /// workload's first progress line to the last cut (at power-off).
    pub seconds: f64,
    pub epochs: u64,
    pub dirty_pages: u64,
    pub dirty_page_bytes: u64,
    pub changed_bytes: u64,
    pub delta_bytes: u64,
    pub compressed_bytes: u64,
    /// Sealed frames: what the link carries.
    pub wire_bytes: u64,
    pub write_faults: u64,
    pub pause_us_median: u64,
    pub pause_us_max: u64,
    /// The workload's progress field per second (None: it has none, as idle).
    pub progress_rate: Option<f64>,
    /// What the guest wrote to its disk in the steady state (None: the run
    /// had no disk). Not sent yet: disk blocks are not synced.
    pub disk: Option<DiskBytes>,
}

/// The guest's disk writes over a run's steady epochs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskBytes {
    /// Blocks written × 4 KiB, each block once per epoch: what sending
    /// whole written blocks would move (the disk's `dirty_page_bytes`).
    pub dirty_bytes: u64,
    /// Bytes the guest's write requests carried.
    pub guest_bytes: u64,
}

impl Row {
    /// `bytes` per second of steady state (0 when no time was covered).
    pub fn per_second(&self, bytes: u64) -> f64 {
        if self.seconds > 0.0 {
            bytes as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The steady-state row of a run of `workload` (as the guest's init names
/// it) under `policy` with `shadow` percent of guest RAM as shadows, whose
/// guest program reports progress in `progress_field`.
pub fn row(workload: &str, policy: &str, shadow: u8, progress_field: Option<&str>, output: &str) -> Result<Row> {
    let marker = format!("vmsync: {STEADY_STATE_LOG}");
    let Some(at) = output.find(&marker) else {
        bail!("the hypervisor never logged the workload's steady state (`{marker}`): did it print no progress line?");
    };
    let (before, after) = output.split_at(at);
    let start = report::epochs(before).pop().context("no epoch was cut at the workload's first progress line")?;
    let steady = report::epochs(after);
    let mut row = row_of(workload, policy, shadow, &start, &steady)?;
    row.progress_rate = progress_field.and_then(|f| progress_rate(output, f));
    Ok(row)
}

/// The row of the `steady` epochs after the `start` cut (no progress rate:
/// the caller's, from the console).
pub fn row_of(workload: &str, policy: &str, shadow: u8, start: &EpochStats, steady: &[EpochStats]) -> Result<Row> {
    let seconds = match steady.last() {
        Some(last) => {
            if last.at_ms == 0 {
                bail!("the epoch lines carry no at_ms: this hypervisor build is older than the study");
            }
            // The guest resumes after the start cut's pause.
            let from_ms = start.at_ms as f64 + start.pause_us as f64 / 1000.0;
            ((last.at_ms as f64 - from_ms) / 1000.0).max(0.0)
        }
        None => 0.0,
    };
    let sum = |f: fn(&EpochStats) -> u64| steady.iter().map(f).sum::<u64>();
    Ok(Row {
        workload: workload.to_string(),
        policy: policy.to_string(),
        shadow,
        seconds,
        epochs: steady.len() as u64,
        dirty_pages: sum(|e| e.dirty_pages),
        dirty_page_bytes: sum(|e| e.dirty_page_bytes()),
        changed_bytes: sum(|e| e.changed_bytes),
        delta_bytes: sum(|e| e.encoded_bytes),
        compressed_bytes: sum(|e| e.compressed_bytes),
        wire_bytes: sum(|e| e.sealed_bytes),
        write_faults: sum(|e| e.write_faults),
        pause_us_median: report::median(steady.iter().map(|e| e.pause_us).collect()),
        pause_us_max: steady.iter().map(|e| e.pause_us).max().unwrap_or(0),
        progress_rate: None,
        disk: Some(DiskBytes { dirty_bytes: sum(|e| e.disk_dirty_bytes()), guest_bytes: sum(|e| e.disk_guest_bytes) }),
    })
}

/// The workload's progress per second of guest time, between its first and
/// its last per-second line (start-up before the first line is left out).
pub fn progress_rate(output: &str, field: &str) -> Option<f64> {
    let points: Vec<(u64, f64)> =
        output.lines().filter_map(vmsync_workloads::parse_line).filter_map(|l| Some((l.uptime_ms?, l.field(field)?.parse::<f64>().ok()?))).collect();
    let (first, last) = (points.first()?, points.last()?);
    let ms = last.0.checked_sub(first.0).filter(|&ms| ms > 0)?;
    Some((last.1 - first.1) / (ms as f64 / 1000.0))
}

/// What the guest's init said its workload exited with (`rc=` of
/// `vmsync-guest: workload NAME end rc=N`), if it said so.
pub fn workload_rc(output: &str, init_name: &str) -> Option<String> {
    let end = format!("vmsync-guest: workload {init_name} end rc=");
    // The hypervisor starts each log line on a fresh line, so one can cut a
    // guest line in two: look in the console with those lines taken out
    // and the guest's pieces joined, too.
    [output.to_string(), without_log_lines(output)].iter().find_map(|text| {
        let rest = &text[text.find(&end)? + end.len()..];
        let rc: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
        (!rc.is_empty()).then_some(rc)
    })
}

/// The console without the hypervisor's `vmsync: ` lines, the lines on
/// either side of each joined (where a log line cut a guest line, that
/// restores it; elsewhere it glues two lines, which `workload_rc` can bear).
fn without_log_lines(output: &str) -> String {
    let mut out = String::with_capacity(output.len());
    let mut cut = false;
    for line in output.lines() {
        if line.starts_with("vmsync: ") {
            cut = true;
            continue;
        }
        if !out.is_empty() && !cut {
            out.push('\n');
        }
        out.push_str(line);
        cut = false;
    }
    out
}

/// `results.csv`: the header and one line per row.
pub fn csv(rows: &[Row]) -> String {
    let mut s = format!("{CSV_HEADER}\n");
    for r in rows {
        let rate = r.progress_rate.map(|v| format!("{v:.2}")).unwrap_or_default();
        let disk = r.disk.map(|d| format!("{},{}", d.dirty_bytes, d.guest_bytes)).unwrap_or_else(|| ",".into());
        // Infallible: writing to a String cannot fail.
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{},{},{},{},{},{},{},{},{},{},{},{disk}",
            r.workload,
            r.policy,
            r.shadow,
            r.seconds,
            r.epochs,
            r.dirty_pages,
            r.dirty_page_bytes,
            r.changed_bytes,
            r.delta_bytes,
            r.compressed_bytes,
            r.wire_bytes,
            r.write_faults,
            r.pause_us_median,
            r.pause_us_max,
            rate
        );
    }
    s
}

/// Reads `results.csv` back (the inverse of `csv`); one from before the
/// shadow column reads as full shadows, one from before the disk's columns
/// as runs without a disk.
pub fn parse_csv(text: &str) -> Result<Vec<Row>> {
    let mut lines = text.lines();
    let header = lines.next().context("empty CSV")?;
    let (with_shadow, with_disk) = match header {
        CSV_HEADER => (true, true),
        CSV_HEADER_NO_DISK => (true, false),
        CSV_HEADER_FULL_SHADOW => (false, false),
        _ => bail!("unexpected CSV header {header:?}"),
    };
    lines
        .enumerate()
        .map(|(i, line)| {
            let mut f: Vec<&str> = line.split(',').collect();
            if !with_shadow && f.len() >= 2 {
                f.insert(2, "100");
            }
            if !with_disk {
                f.extend(["", ""]);
            }
            if f.len() != 17 {
                bail!("line {}: {} fields, not {}", i + 2, f.len(), 17 - 2 * !with_disk as usize - !with_shadow as usize);
            }
            let shadow = f.remove(2).parse::<u8>().ok().filter(|p| (1..=100).contains(p)).with_context(|| format!("line {}: shadow_pct", i + 2))?;
            let n = |k: usize| f[k].parse::<u64>().with_context(|| format!("line {}: field {} = {:?}", i + 2, k + 1, f[k]));
            Ok(Row {
                workload: f[0].to_string(),
                policy: f[1].to_string(),
                shadow,
                seconds: f[2].parse().with_context(|| format!("line {}: seconds {:?}", i + 2, f[2]))?,
                epochs: n(3)?,
                dirty_pages: n(4)?,
                dirty_page_bytes: n(5)?,
                changed_bytes: n(6)?,
                delta_bytes: n(7)?,
                compressed_bytes: n(8)?,
                wire_bytes: n(9)?,
                write_faults: n(10)?,
                pause_us_median: n(11)?,
                pause_us_max: n(12)?,
                progress_rate: if f[13].is_empty() { None } else { Some(f[13].parse().with_context(|| format!("line {}: progress_rate {:?}", i + 2, f[13]))?) },
                disk: match (f[14], f[15]) {
                    ("", "") => None,
                    _ => Some(DiskBytes { dirty_bytes: n(14)?, guest_bytes: n(15)? }),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: u64, dirty: u64, changed: u64, at_ms: u64, pause_us: u64) -> String {
        let e = EpochStats {
            epoch: n,
            dirty_pages: dirty,
            sent_pages: dirty,
            changed_bytes: changed,
            encoded_bytes: changed + 10,
            compressed_bytes: changed / 2,
            sealed_bytes: changed / 2 + 40,
            write_faults: dirty,
            pause_us,
            at_ms,
            disk_dirty_blocks: dirty / 10,
            disk_guest_bytes: dirty * 100,
            ..EpochStats::default()
        };
        format!("vmsync: epoch {e}\n")
    }

    /// Boot epochs 1 and 2, the cut at the workload's first progress line
    /// (3), then two steady epochs; the workload's lines two guest seconds
    /// apart.
    fn console() -> String {
        let mut s = String::new();
        s += &epoch(1, 5000, 5000 * 4096, 1000, 900_000);
        s += &epoch(2, 300, 90_000, 2000, 5000);
        s += "vmsync-guest: workload dav1d start\n";
        s += "vmsync-workload: counter=1 checksum=00000000000000ab uptime=5.00 frames=30\n";
        s += &epoch(3, 200, 60_000, 2400, 100_000);
        s += &format!("vmsync: {STEADY_STATE_LOG}\n");
        s += &epoch(4, 100, 1000, 3500, 300);
        s += "vmsync-workload: counter=2 checksum=00000000000000cd uptime=7.00 frames=90\n";
        s += &epoch(5, 50, 500, 4500, 100);
        s
    }

    #[test]
    fn steady_state_is_after_the_first_progress_cut() {
        let r = row("dav1d", "interval:1s", 25, Some("frames"), &console()).unwrap();
        assert_eq!(r.epochs, 2);
        assert_eq!(r.dirty_pages, 150);
        assert_eq!(r.dirty_page_bytes, 150 * 4096);
        assert_eq!(r.changed_bytes, 1500);
        assert_eq!(r.delta_bytes, 1520);
        assert_eq!(r.compressed_bytes, 750);
        assert_eq!(r.wire_bytes, 830);
        assert_eq!(r.write_faults, 150);
        assert_eq!(r.disk, Some(DiskBytes { dirty_bytes: 15 * 4096, guest_bytes: 15_000 }), "the disk's steady epochs, 10 + 5 blocks");
        // From 2400 ms + the start cut's 100 ms pause to 4500 ms.
        assert!((r.seconds - 2.0).abs() < 1e-9, "{}", r.seconds);
        assert_eq!((r.pause_us_median, r.pause_us_max), (300, 300));
        // 60 frames in 2 guest seconds.
        assert_eq!(r.progress_rate, Some(30.0));
        assert_eq!(r.per_second(r.wire_bytes), 415.0);
    }

    #[test]
    fn a_run_without_the_steady_state_cut_is_an_error() {
        let out = console().replace(&format!("vmsync: {STEADY_STATE_LOG}\n"), "");
        let e = row("dav1d", "interval:1s", 25, Some("frames"), &out).unwrap_err().to_string();
        assert!(e.contains("steady state"), "{e}");
    }

    #[test]
    fn no_progress_field_no_rate() {
        let r = row("idle", "switch-only", 25, None, &console()).unwrap();
        assert_eq!(r.progress_rate, None);
        assert_eq!(progress_rate(&console(), "transactions"), None);
    }

    #[test]
    fn workload_exit_code_even_when_a_log_line_cuts_it() {
        assert_eq!(workload_rc("vmsync-guest: workload dav1d end rc=0\n", "dav1d").as_deref(), Some("0"));
        assert_eq!(workload_rc("vmsync-guest: workload dav1d end rc=3\n", "dav1d").as_deref(), Some("3"));
        // As the hypervisor's logger prints it when its line interrupts the guest's.
        let cut = "vmsync-gues\nvmsync: epoch epoch=9 dirty_pages=1\nt: workload browse end rc=0\nvmsync-guest: interrupts-begin\n";
        assert_eq!(workload_rc(cut, "browse").as_deref(), Some("0"));
        assert_eq!(workload_rc(cut, "video"), None);
        assert_eq!(workload_rc("vmsync-guest: workload browse start\n", "browse"), None);
    }

    #[test]
    fn csv_round_trips_with_the_exact_header() {
        let mut a = row("dav1d", "interval:1s", 25, Some("frames"), &console()).unwrap();
        let mut b = row("idle", "switch-only", 25, None, &console()).unwrap();
        a.seconds = 19.875;
        b.seconds = 20.5;
        let text = csv(&[a.clone(), b.clone()]);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER));
        assert_eq!(lines.next(), Some("dav1d,interval:1s,25,19.875,2,150,614400,1500,1520,750,830,150,300,300,30.00,61440,15000"));
        assert!(lines.next().is_some_and(|l| l.ends_with(",300,300,,61440,15000")), "idle has an empty progress_rate");
        assert_eq!(parse_csv(&text).unwrap(), vec![a.clone(), b.clone()]);
        // A run without a disk: empty cells, read back as None.
        let no_disk = Row { disk: None, ..b.clone() };
        let text = csv(std::slice::from_ref(&no_disk));
        assert!(text.lines().nth(1).is_some_and(|l| l.ends_with(",300,300,,,")), "{text}");
        assert_eq!(parse_csv(&text).unwrap(), vec![no_disk]);
        // A study from before the disk's columns had no disk.
        let old = parse_csv(&format!("{CSV_HEADER_NO_DISK}\ndav1d,interval:1s,25,19.875,2,150,614400,1500,1520,750,830,150,300,300,30.00\n")).unwrap();
        assert_eq!(old, vec![Row { disk: None, ..a.clone() }]);
        assert!(parse_csv("workload,policy\n").is_err());
        // A study from before the shadow column kept full shadows.
        let old = parse_csv(&format!("{CSV_HEADER_FULL_SHADOW}\ndav1d,interval:1s,19.875,2,150,614400,1500,1520,750,830,150,300,300,30.00\n")).unwrap();
        assert_eq!(old, vec![Row { shadow: 100, disk: None, ..a.clone() }]);
        assert!(parse_csv(&format!("{CSV_HEADER}\ndav1d,interval:1s,0,19.875,2,150,614400,1500,1520,750,830,150,300,300,30.00\n")).is_err());
        assert!(parse_csv(&format!("{CSV_HEADER}\ndav1d,x,1\n")).is_err());
    }
}
