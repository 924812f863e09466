//! `report.md`: the study's table, the ratios (the paper's and ours), what
//! each policy costs per hour on each link profile of the link emulator
//! (`qemu_tests::link::Profile`), and what
//! a smaller shadow budget costs on the wire.
use std::fmt::Write as _;

use super::results::Row;

/// The link profiles of the link emulator (`qemu-tests/src/link/profile.rs`;
/// the README's `--link`): name and bits per second.
pub const LINKS: &[(&str, f64)] = &[("wifi", 50e6), ("lte", 10e6), ("bt", 2e6)];

/// Megabytes (10^6) per hour at `bytes_per_second`.
pub fn mb_per_hour(bytes_per_second: f64) -> f64 {
    bytes_per_second * 3600.0 / 1e6
}

/// The share of a link of `link_bps` bits per second that a stream of
/// `bytes_per_second` occupies (1.0: all of it).
pub fn link_share(bytes_per_second: f64, link_bps: f64) -> f64 {
    bytes_per_second * 8.0 / link_bps
}

/// `a / b` as `3.1x`, or `-` when `b` is 0.
pub fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.1}x", a as f64 / b as f64)
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e6)
}

/// A share of a link as a percentage; over 100 % the link cannot keep up.
fn share(s: f64) -> String {
    let pct = s * 100.0;
    let text = if pct >= 10.0 {
        format!("{pct:.0} %")
    } else if pct >= 0.1 {
        format!("{pct:.1} %")
    } else {
        format!("{pct:.2} %")
    };
    if s > 1.0 {
        format!("**{text}** (too slow)")
    } else {
        text
    }
}

/// What the report says about how the study was run.
pub struct Context<'a> {
    pub command: &'a str,
    pub kernel: &'a str,
    pub mem_mib: u64,
    pub seconds: u64,
    /// Guest runs at a time (`--jobs`).
    pub jobs: usize,
    /// (workload, policy, why) of runs that gave no row.
    pub failed: &'a [(String, String, String)],
    /// The plots written beside the report (file stems).
    pub plots: &'a [(&'a str, &'a str)],
}

/// What running `jobs` guests at a time does to the figures; `jobs_of`
/// reads the number back.
fn jobs_sentence(jobs: usize) -> String {
    format!(
        "**{jobs} runs at a time** (`--jobs {jobs}`). Each QEMU run uses one host core, and the runs shared the host's \
         cores: the pauses are worse than with one run at a time. The byte columns count what the guest wrote, not \
         how fast: they are not affected while each run had a core of its own; where the runs outnumbered the free \
         cores, a guest that could not keep its workload's pace (dav1d under TCG) did less and wrote less, and its \
         progress/s is lower."
    )
}

/// The `--jobs` an earlier report names (1 when it names none).
pub fn jobs_of(report: &str) -> usize {
    report.lines().find_map(|l| l.strip_prefix("**")?.split_once(" runs at a time**")?.0.parse().ok()).unwrap_or(1)
}

pub fn report(rows: &[Row], cx: &Context) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail: the results of writeln! are ignored.
    let _ = writeln!(o, "# VMsync feasibility study\n");
    let _ = writeln!(
        o,
        "`{}`: every workload × policy in its own guest run, every shadow budget counted in that run (Debian kernel `{}`, {} MiB of guest RAM, \
         each workload run for {} s) under the hypervisor with dirty tracking; every epoch encoded, \
         compressed and sealed exactly as it would be sent.\n",
        cx.command, cx.kernel, cx.mem_mib, cx.seconds
    );
    if cx.jobs > 1 {
        let _ = writeln!(o, "{}\n", jobs_sentence(cx.jobs));
    }
    let _ = writeln!(
        o,
        "**What is counted.** The workload's steady state: every epoch cut after the one the hypervisor \
         cuts at the workload's first progress line, one second into its run. Left out: epoch 1 (the \
         initial full copy of the guest), the epochs of the guest's boot, and the workload's first \
         second (loading the program, filling its first buffers): an initial copy is paid once per \
         pairing of devices, and the paper measured steady-state sync. `seconds` is the time those \
         epochs cover (from the end of that cut to the last cut, at power-off); rates divide by it. \
         For `switch-only` (and a threshold the workload never reaches) the steady state is one \
         epoch, the one a switch at the end of the run would send. Pauses are the guest's at each \
         cut (encoding runs with the guest stopped); progress/s is the workload's own measure \
         (frames, transactions, objects, ticks) per second, so a slowed guest shows there.\n"
    );
    let _ = writeln!(
        o,
        "Columns: `dirty pages` = dirty pages × 4 KiB (what sending whole pages moves, the paper's \
         baseline); `changed` = bytes that differ from the standby's copy; `delta` = our page records \
         (runs of changed bytes); `delta+zstd` = those compressed; `wire` = sealed frames on the link. \
         `paper` = dirty pages / changed (the paper found 3x); `ours` = dirty pages / wire. \
         `shadow` = the active device's shadow budget, percent of guest RAM: pages beyond it lose \
         their shadow (CLOCK: the least recently sent first) and go whole (zstd) when next sent. \
         Workloads, named as the guest runs them: Debian's real programs `dav1d` (playing AV1 at \
         30 fps), `sqlite` (sqlite3 transactions) and `python` (python3 object-graph churn); the \
         synthetic Rust workloads every guest image carries: `video`, `storage` and `browse` (the \
         programs' stand-ins), `idle` (a process that only counts seconds: the kernel's \
         housekeeping), `counter` and `memtouch`.\n"
    );

    let _ = writeln!(o, "## Results (MB = 10^6 bytes)\n");
    let _ = writeln!(
        o,
        "| workload | policy | shadow | seconds | epochs | dirty pages MB | changed MB | delta MB | delta+zstd MB | wire MB | paper | ours | pause median / max µs | faults/s | progress/s |"
    );
    let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let progress = r.progress_rate.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "| {} | {} | {} % | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.0} | {} |",
            r.workload,
            r.policy,
            r.shadow,
            r.seconds,
            r.epochs,
            mb(r.dirty_page_bytes),
            mb(r.changed_bytes),
            mb(r.delta_bytes),
            mb(r.compressed_bytes),
            mb(r.wire_bytes),
            ratio(r.dirty_page_bytes, r.changed_bytes),
            ratio(r.dirty_page_bytes, r.wire_bytes),
            r.pause_us_median,
            r.pause_us_max,
            r.per_second(r.write_faults),
            progress
        );
    }

    let _ = writeln!(o, "\n## Cost per hour on each link\n");
    let _ = writeln!(
        o,
        "What keeping one standby in sync costs at the steady-state rate: MB per hour on the wire \
         (and, for comparison, what whole dirty pages would cost), and the share of each link profile \
         it occupies (over 100 %: the link cannot keep up and the backlog grows).\n"
    );
    let mut head = String::from("| workload | policy | shadow | wire KB/s | wire MB/hour | dirty pages MB/hour |");
    let mut rule = String::from("|---|---|--:|--:|--:|--:|");
    for (name, bps) in LINKS {
        let _ = write!(head, " {name} {:.0} Mbit/s |", bps / 1e6);
        rule += "--:|";
    }
    let _ = writeln!(o, "{head}\n{rule}");
    for r in rows {
        let wire = r.per_second(r.wire_bytes);
        let _ = write!(
            o,
            "| {} | {} | {} % | {:.1} | {:.0} | {:.0} |",
            r.workload,
            r.policy,
            r.shadow,
            wire / 1e3,
            mb_per_hour(wire),
            mb_per_hour(r.per_second(r.dirty_page_bytes))
        );
        for (_, bps) in LINKS {
            let _ = write!(o, " {} |", share(link_share(wire, *bps)));
        }
        let _ = writeln!(o);
    }

    shadow_section(&mut o, rows);
    disk_section(&mut o, rows);

    if !cx.plots.is_empty() {
        let _ = writeln!(o, "\n## Plots\n");
        for (stem, title) in cx.plots {
            let _ = writeln!(o, "{title} ([SVG]({stem}.svg)):\n\n![{title}]({stem}.png)\n");
        }
    }
    if !cx.failed.is_empty() {
        let _ = writeln!(o, "\n## Runs that failed\n");
        for (w, p, why) in cx.failed {
            let _ = writeln!(o, "- {w} × {p}: {why}");
        }
    }
    o
}

/// The guest's disk writes, for the runs that had a disk (`--root-disk`).
fn disk_section(o: &mut String, rows: &[Row]) {
    let with_disk: Vec<(&Row, super::results::DiskBytes)> = rows.iter().filter_map(|r| Some((r, r.disk?))).collect();
    if with_disk.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n## The guest's disk\n");
    let _ = writeln!(
        o,
        "Runs booted from a fresh copy of the root disk (`--root-disk`). What the guest wrote to its disk \
         in the steady state, not sent yet (disk blocks are not synced): `guest writes` = bytes its write \
         requests carried; `dirty blocks` = 4 KiB blocks touched by its writes, discards and \
         write-zeroes, each once per epoch (what sending whole written blocks would move); against \
         `dirty pages`, the same epochs' RAM figure.\n"
    );
    let _ = writeln!(o, "| workload | policy | shadow | guest writes MB | dirty blocks MB | dirty pages MB | blocks / pages | guest writes KB/s |");
    let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|");
    for (r, d) in with_disk {
        let _ = writeln!(
            o,
            "| {} | {} | {} % | {} | {} | {} | {} | {:.1} |",
            r.workload,
            r.policy,
            r.shadow,
            mb(d.guest_bytes),
            mb(d.dirty_bytes),
            mb(r.dirty_page_bytes),
            ratio(d.dirty_bytes, r.dirty_page_bytes),
            r.per_second(d.guest_bytes) / 1e3
        );
    }
}

/// Wire bytes per second per workload × policy at each shadow budget, against the
/// largest budget run (a full shadow when 100 % ran); only when the study
/// ran more than one budget.
fn shadow_section(o: &mut String, rows: &[Row]) {
    let mut budgets: Vec<u8> = rows.iter().map(|r| r.shadow).collect();
    budgets.sort_unstable_by(|a, b| b.cmp(a));
    budgets.dedup();
    if budgets.len() < 2 {
        return;
    }
    let _ = writeln!(o, "\n## Shadow budget\n");
    let _ = writeln!(
        o,
        "Wire KB per second of steady state at each shadow budget (percent of guest RAM kept as \
         shadows on the active device), and in brackets against the {} % budget of the same \
         workload and policy: a page whose shadow was evicted goes whole. All budgets of a \
         workload × policy come from one guest run: it kept the first budget of `--shadows`, and \
         shadow probes counted every cut again at each budget (their own shadows and zstd \
         stream, nothing sent), so every budget was given the same pages; the probe of the run's \
         own budget matched the run's epochs byte for byte (a run where it does not fails).\n",
        budgets[0]
    );
    let mut head = String::from("| workload | policy |");
    let mut rule = String::from("|---|---|");
    for b in &budgets {
        let _ = write!(head, " {b} % |");
        rule += "--:|";
    }
    let _ = writeln!(o, "{head}\n{rule}");
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        let key = (r.workload.as_str(), r.policy.as_str());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let at = |b: u8| rows.iter().find(|x| x.workload == key.0 && x.policy == key.1 && x.shadow == b);
        let base = at(budgets[0]).map(|x| x.per_second(x.wire_bytes));
        let _ = write!(o, "| {} | {} |", key.0, key.1);
        for &b in &budgets {
            let cell = match (at(b), base) {
                (Some(x), Some(base)) if base > 0.0 && b != budgets[0] => {
                    let rate = x.per_second(x.wire_bytes);
                    format!("{:.1} ({:+.1} %)", rate / 1e3, (rate / base - 1.0) * 100.0)
                }
                (Some(x), _) => format!("{:.1}", x.per_second(x.wire_bytes) / 1e3),
                (None, _) => "-".into(),
            };
            let _ = write!(o, " {cell} |");
        }
        let _ = writeln!(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(workload: &str, policy: &str, seconds: f64, dirty: u64, changed: u64, wire: u64) -> Row {
        Row {
            workload: workload.into(),
            policy: policy.into(),
            shadow: 25,
            seconds,
            epochs: 10,
            dirty_pages: dirty / 4096,
            dirty_page_bytes: dirty,
            changed_bytes: changed,
            delta_bytes: changed,
            compressed_bytes: wire,
            wire_bytes: wire,
            write_faults: 200,
            pause_us_median: 150,
            pause_us_max: 900,
            progress_rate: Some(29.96),
            disk: None,
        }
    }

    #[test]
    fn costs_per_hour_and_link_shares() {
        // 1 MB/s is 3600 MB per hour and 8 Mbit/s: 16 % of wifi, 80 % of
        // lte, 400 % of bt.
        assert_eq!(mb_per_hour(1e6), 3600.0);
        let shares: Vec<f64> = LINKS.iter().map(|(_, bps)| link_share(1e6, *bps)).collect();
        assert_eq!(shares, [0.16, 0.8, 4.0]);
        assert_eq!(share(0.16), "16 %");
        assert_eq!(share(0.0123), "1.2 %");
        assert_eq!(share(0.0004), "0.04 %");
        assert_eq!(share(4.0), "**400 %** (too slow)");
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3000, 1000), "3.0x");
        assert_eq!(ratio(1, 0), "-");
    }

    #[test]
    fn report_has_the_table_ratios_costs_and_failures() {
        // 20 s: 40.96 MB of dirty pages, 12 MB changed, 2 MB on the wire (100 KB/s).
        let rows = [row("dav1d", "interval:200ms", 20.0, 40_960_000, 12_000_000, 2_000_000)];
        let failed = [("storage".to_string(), "interval:5s".to_string(), "killed at its deadline".to_string())];
        let cx = Context {
            command: "cargo xtask study",
            kernel: "6.1.0-test",
            mem_mib: 256,
            seconds: 20,
            jobs: 1,
            failed: &failed,
            plots: &[("bytes_per_second", "Bytes per second")],
        };
        let md = report(&rows, &cx);
        assert!(
            md.contains("| dav1d | interval:200ms | 25 % | 20.0 | 10 | 40.96 | 12.00 | 12.00 | 2.00 | 2.00 | 3.4x | 20.5x | 150 / 900 | 10 | 30.0 |"),
            "{md}"
        );
        // 100 KB/s: 360 MB/hour, 0.8 Mbit/s = 1.6 % of wifi, 8.0 % of lte, 40 % of bt.
        assert!(md.contains("| dav1d | interval:200ms | 25 % | 100.0 | 360 | 7373 | 1.6 % | 8.0 % | 40 % |"), "{md}");
        assert!(md.contains("![Bytes per second](bytes_per_second.png)"));
        assert!(md.contains("- storage × interval:5s: killed at its deadline"));
        assert!(md.contains("epoch 1 (the initial full copy of the guest)"), "{md}");
        assert!(md.contains("`dav1d` (playing AV1") && md.contains("`video`, `storage` and `browse` (the programs' stand-ins)"), "{md}");
        assert!(!md.contains("synth-"), "{md}");
        assert!(!md.contains("## Shadow budget"), "one budget: no comparison");
        assert!(!md.contains("at a time"), "one run at a time is not worth a word: {md}");
        assert_eq!(jobs_of(&md), 1);
        assert!(!md.contains("## The guest's disk"), "no run had a disk");
    }

    /// Runs that shared the cores say so, and `--report-only` reads how many.
    #[test]
    fn several_runs_at_a_time_are_said_and_read_back() {
        let cx = Context { command: "cargo xtask study --quick", kernel: "k", mem_mib: 256, seconds: 4, jobs: 2, failed: &[], plots: &[] };
        let md = report(&[row("video", "switch-only", 4.0, 4096, 4096, 100)], &cx);
        assert!(md.contains("**2 runs at a time** (`--jobs 2`)") && md.contains("the pauses are worse than with one run at a time"), "{md}");
        assert!(md.contains("The byte columns count what the guest wrote, not how fast: they are not affected while each run had a core"), "{md}");
        assert_eq!(jobs_of(&md), 2);
        assert_eq!(jobs_of(""), 1);
    }

    #[test]
    fn runs_with_a_disk_show_its_writes() {
        // 20 s: 4 MB written by the guest, 8.192 MB of dirty blocks, 40.96 MB of dirty pages.
        let disk = Some(super::super::results::DiskBytes { dirty_bytes: 8_192_000, guest_bytes: 4_000_000 });
        let rows =
            [Row { disk, ..row("sqlite", "interval:200ms", 20.0, 40_960_000, 12_000_000, 2_000_000) }, row("video", "interval:200ms", 20.0, 4096, 4096, 100)];
        let cx = Context { command: "cargo xtask study --root-disk", kernel: "6.1.0-test", mem_mib: 256, seconds: 20, jobs: 1, failed: &[], plots: &[] };
        let md = report(&rows, &cx);
        assert!(md.contains("## The guest's disk"), "{md}");
        assert!(md.contains("| sqlite | interval:200ms | 25 % | 4.00 | 8.19 | 40.96 | 0.2x | 200.0 |"), "{md}");
        assert!(!md.contains("| video | interval:200ms | 25 % | 0.00"), "a run without a disk has no disk row: {md}");
    }

    #[test]
    fn shadow_budgets_are_compared_with_the_largest() {
        let at = |shadow: u8, wire: u64| Row { shadow, ..row("sqlite", "interval:200ms", 20.0, 4096, 4096, wire) };
        let rows = [at(100, 2_000_000), at(25, 2_100_000), at(10, 3_000_000), Row { workload: "video".into(), ..at(100, 0) }];
        let cx = Context { command: "c", kernel: "k", mem_mib: 256, seconds: 20, jobs: 1, failed: &[], plots: &[] };
        let md = report(&rows, &cx);
        assert!(md.contains("| workload | policy | 100 % | 25 % | 10 % |"), "{md}");
        // 20 s each: 100, 105 and 150 KB/s.
        assert!(md.contains("| sqlite | interval:200ms | 100.0 | 105.0 (+5.0 %) | 150.0 (+50.0 %) |"), "{md}");
        assert!(md.contains("| video | interval:200ms | 0.0 | - | - |"), "{md}");
    }
}
