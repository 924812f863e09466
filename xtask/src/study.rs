//! `cargo xtask study`: the feasibility study (issue 7). How much must be
//! sent to keep a standby in sync, per workload and sync policy: one guest
//! run under the hypervisor per workload × policy pair, in turn, then
//! `results.csv`, `report.md` and the plots in the output directory.
mod markdown;
mod plots;
mod results;

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sync_core::policy::PolicySpec;

use crate::{apt, demo, guest, image};

/// Study workload names and the guest's (init.sh) names. The plain names
/// are Debian's real programs in the study initramfs; `synth-*` are the
/// synthetic Rust stand-ins of the dirty-tracking issue.
const WORKLOADS: &[(&str, &str)] = &[
    ("video", "dav1d"),
    ("storage", "sqlite"),
    ("browse", "python"),
    ("idle", "idle"),
    ("synth-video", "video"),
    ("synth-storage", "storage"),
    ("synth-browse", "browse"),
    ("counter", "counter"),
    ("memtouch", "memtouch"),
];
const DEFAULT_WORKLOADS: &[&str] = &["video", "storage", "browse", "idle", "synth-video", "synth-storage", "synth-browse"];
const DEFAULT_POLICIES: &[&str] = &["interval:50ms", "interval:200ms", "interval:1s", "interval:5s", "threshold:4MiB", "switch-only"];
const DEFAULT_SECONDS: u64 = 20;
/// `--quick`, the CI form: one real and one synthetic video, a short and
/// the longest interval, a few seconds each.
const QUICK_WORKLOADS: &[&str] = &["video", "synth-video"];
const QUICK_POLICIES: &[&str] = &["interval:200ms", "switch-only"];
const QUICK_SECONDS: u64 = 4;
/// Per run, on top of the workload's seconds: boot (the study initramfs
/// unpacks some 50 MiB), the initial copy and the last cut, under TCG.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(240);

#[derive(Args)]
pub struct StudyArgs {
    /// Workloads, comma-separated: video (Debian's dav1d playing AV1),
    /// storage (sqlite3), browse (python3), idle, synth-video,
    /// synth-storage, synth-browse (the synthetic stand-ins), counter,
    /// memtouch. [default: video,storage,browse,idle,synth-video,synth-storage,synth-browse]
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Epoch policies, comma-separated. [default: interval:50ms,interval:200ms,interval:1s,interval:5s,threshold:4MiB,switch-only]
    #[arg(long, value_delimiter = ',')]
    policies: Option<Vec<String>>,
    /// How long each workload runs, in seconds. [default: 20; 4 with --quick]
    #[arg(long)]
    seconds: Option<u64>,
    /// Where results.csv, report.md and the plots go. [default: target/study/]
    #[arg(long)]
    out: Option<PathBuf>,
    /// The short form for CI: workloads video,synth-video, policies
    /// interval:200ms,switch-only, 4 s each (other options still apply).
    #[arg(long)]
    quick: bool,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Keep the rows already in the output directory's results.csv and run
    /// only the pairs it lacks (after an interrupted or partly failed study).
    #[arg(long)]
    resume: bool,
    /// Run no guest: rewrite report.md and the plots from the results.csv
    /// (and console logs) already in the output directory.
    #[arg(long)]
    report_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Workload {
    /// As the study reports it.
    name: &'static str,
    /// As the guest's init runs it (`vmsync.workload=`).
    init: &'static str,
}

#[derive(Debug, PartialEq)]
struct Plan {
    workloads: Vec<Workload>,
    policies: Vec<String>,
    seconds: u64,
    out: PathBuf,
    mem: u64,
}

fn workload(name: &str) -> Result<Workload> {
    WORKLOADS.iter().find(|(n, _)| *n == name).map(|&(name, init)| Workload { name, init }).with_context(|| {
        let known: Vec<&str> = WORKLOADS.iter().map(|w| w.0).collect();
        format!("unknown workload {name:?}; the study knows {}", known.join(", "))
    })
}

/// The runs the arguments ask for (defaults filled in, names checked).
fn plan(a: &StudyArgs) -> Result<Plan> {
    let (dw, dp, ds) = if a.quick { (QUICK_WORKLOADS, QUICK_POLICIES, QUICK_SECONDS) } else { (DEFAULT_WORKLOADS, DEFAULT_POLICIES, DEFAULT_SECONDS) };
    let owned = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let names = a.workloads.clone().unwrap_or_else(|| owned(dw));
    let policies = a.policies.clone().unwrap_or_else(|| owned(dp));
    let workloads = names.iter().map(|n| workload(n.trim())).collect::<Result<Vec<_>>>()?;
    let policies: Vec<String> = policies.iter().map(|p| p.trim().to_string()).collect();
    for p in &policies {
        // The hypervisor parses the same spec from the guest config.
        PolicySpec::parse(p).map_err(|e| anyhow::anyhow!("policy {p:?}: {e:?}"))?;
        if p == "off" {
            bail!("policy off: the study needs dirty tracking");
        }
    }
    if workloads.is_empty() || policies.is_empty() {
        bail!("nothing to run: give at least one workload and one policy");
    }
    let seconds = a.seconds.unwrap_or(ds);
    if seconds < 2 {
        bail!("--seconds {seconds}: a rate needs at least two of the workload's per-second lines");
    }
    let out = a.out.clone().unwrap_or_else(|| guest::workspace_root().join("target").join("study"));
    Ok(Plan { workloads, policies, seconds, out, mem: a.mem })
}

/// A file name for a policy spec (`interval:50ms` → `interval-50ms`).
fn file_stem(workload: &str, policy: &str) -> String {
    format!("{workload}_{}", policy.replace([':', '/'], "-"))
}

/// The tests in qemu-tests/tests/study.rs, which check what `quick` wrote
/// (`cargo xtask test --filter` runs the quick study when one may run).
pub const QUICK_TESTS: &[&str] = &["study_quick_files", "study_quick_video_inequality"];

/// `cargo xtask study --quick --out <out>`, from `cargo xtask test`. What an
/// earlier run left in `out` goes first: the tests must see this run's files.
pub fn quick(out: &Path) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    let a =
        StudyArgs { workloads: None, policies: None, seconds: None, out: Some(out.to_path_buf()), quick: true, mem: 256, report_only: false, resume: false };
    run_as(&a, &format!("cargo xtask study --quick --out {}", out.display()))
}

pub fn run(a: &StudyArgs) -> Result<()> {
    run_as(a, &format!("cargo xtask {}", std::env::args().skip(1).collect::<Vec<_>>().join(" ")))
}

/// The study; `command` is how the report names it.
fn run_as(a: &StudyArgs, command: &str) -> Result<()> {
    let plan = plan(a)?;
    if a.report_only {
        return report_only(&plan, command);
    }
    apt::ensure_qemu_aarch64()?;
    // Before the long part: a missing font should not cost the whole study.
    plots::load_font()?;
    let g = guest::prepare_study(false)?;
    let logs = plan.out.join("logs");
    let work = plan.out.join("work");
    for d in [&logs, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Every run boots this copy: other builds overwrite target/vmsync/ while
    // a long study runs, and one study must measure one hypervisor.
    let hv = work.join("hypervisor.bin");
    let built = image::build_hypervisor()?;
    std::fs::copy(&built, &hv).with_context(|| format!("copying {} to {}", built.display(), hv.display()))?;
    let img = work.join("guest.img");

    let pairs: Vec<(Workload, &str)> = plan.workloads.iter().flat_map(|w| plan.policies.iter().map(move |p| (*w, p.as_str()))).collect();
    eprintln!(
        "study: {} runs ({} workloads × {} policies, {} s each), console logs in {}",
        pairs.len(),
        plan.workloads.len(),
        plan.policies.len(),
        plan.seconds,
        logs.display()
    );
    let csv = plan.out.join("results.csv");
    let mut rows = if a.resume { kept_rows(&csv, &pairs)? } else { Vec::new() };
    let todo = pairs.iter().filter(|(w, p)| !has_row(&rows, w.name, p)).count();
    let started = Instant::now();
    let mut ran = 0;
    let mut failed: Vec<(String, String, String)> = Vec::new();
    for (i, (w, policy)) in pairs.iter().enumerate() {
        eprint!("study: [{}/{}] {} × {policy} ... ", i + 1, pairs.len(), w.name);
        if has_row(&rows, w.name, policy) {
            eprintln!("kept from {} (--resume)", csv.display());
            continue;
        }
        let _ = std::io::stderr().flush();
        let t = Instant::now();
        let log = logs.join(format!("{}.log", file_stem(w.name, policy)));
        let outcome = run_pair(&plan, &g, &hv, *w, policy, &img, &log);
        ran += 1;
        let left = started.elapsed().as_secs_f64() / ran as f64 * (todo - ran) as f64;
        let timing = format!("{:.0} s; about {:.0} min left", t.elapsed().as_secs_f64(), left / 60.0);
        match outcome {
            Ok(row) => {
                eprintln!(
                    "{:.2} MB wire, dirty pages / changed {}, dirty pages / wire {} ({timing})",
                    row.wire_bytes as f64 / 1e6,
                    markdown::ratio(row.dirty_page_bytes, row.changed_bytes),
                    markdown::ratio(row.dirty_page_bytes, row.wire_bytes)
                );
                rows.push(row);
            }
            Err(e) => {
                eprintln!("FAILED: {e:#} ({timing})");
                failed.push((w.name.to_string(), policy.to_string(), format!("{e:#}")));
            }
        }
        // After every run, so an interrupted study keeps what it measured
        // (and `--resume` goes on from there).
        rows = in_plan_order(rows, &pairs);
        write(&csv, &results::csv(&rows))?;
    }

    // 35 MB, and rebuilt for every run.
    let _ = std::fs::remove_file(&img);
    let plots = plots::write_all(&plan.out, &rows)?;
    let cx = markdown::Context { command, kernel: &g.kernel_release, mem_mib: plan.mem, seconds: plan.seconds, failed: &failed, plots: &plots };
    write(&plan.out.join("report.md"), &markdown::report(&rows, &cx))?;
    eprintln!("study: {ran} runs in {:.1} min; results in {}", started.elapsed().as_secs_f64() / 60.0, plan.out.display());
    if !failed.is_empty() {
        bail!("{} of {ran} runs failed (listed in report.md; consoles in {}); --resume runs only those again", failed.len(), logs.display());
    }
    Ok(())
}

fn has_row(rows: &[results::Row], workload: &str, policy: &str) -> bool {
    rows.iter().any(|r| r.workload == workload && r.policy == policy)
}

/// `--resume`: the rows of an earlier results.csv that this study asks for.
fn kept_rows(csv: &Path, pairs: &[(Workload, &str)]) -> Result<Vec<results::Row>> {
    let text = match std::fs::read_to_string(csv) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", csv.display())),
    };
    let rows = results::parse_csv(&text).with_context(|| format!("parsing {}", csv.display()))?;
    Ok(in_plan_order(rows, pairs))
}

/// The rows of `pairs`, in their order (workload by workload); others dropped.
fn in_plan_order(rows: Vec<results::Row>, pairs: &[(Workload, &str)]) -> Vec<results::Row> {
    let rank = |r: &results::Row| pairs.iter().position(|(w, p)| w.name == r.workload && *p == r.policy);
    let mut ranked: Vec<(usize, results::Row)> = rows.into_iter().filter_map(|r| Some((rank(&r)?, r))).collect();
    ranked.sort_by_key(|(i, _)| *i);
    ranked.dedup_by_key(|(i, _)| *i);
    ranked.into_iter().map(|(_, r)| r).collect()
}

/// `--report-only`: report.md and the plots from an earlier study's
/// results.csv; the kernel and run length from its console logs.
fn report_only(plan: &Plan, command: &str) -> Result<()> {
    let csv = plan.out.join("results.csv");
    let text = std::fs::read_to_string(&csv).with_context(|| format!("reading {} (run the study first)", csv.display()))?;
    let rows = results::parse_csv(&text).with_context(|| format!("parsing {}", csv.display()))?;
    let (mut kernel, mut seconds) = (None, None);
    let mut logs: Vec<PathBuf> = std::fs::read_dir(plan.out.join("logs")).into_iter().flatten().filter_map(|e| Some(e.ok()?.path())).collect();
    logs.sort();
    if let Some(log) = logs.first() {
        let out = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
        kernel = out.lines().find_map(|l| l.split_once("vmsync-guest: uname ").map(|(_, k)| k.trim().to_string()));
        seconds = out.lines().find(|l| l.contains("vmsync: guest command line")).and_then(|l| crate::report::field(l, "vmsync.seconds"));
    }
    // The study's own command, as the report it replaces names it.
    let old = std::fs::read_to_string(plan.out.join("report.md")).unwrap_or_default();
    let command = old.lines().find_map(|l| l.strip_prefix('`')?.split_once('`').map(|(c, _)| c.to_string())).unwrap_or_else(|| command.to_string());
    let plots = plots::write_all(&plan.out, &rows)?;
    let kernel = kernel.unwrap_or_else(|| "unknown".into());
    let cx = markdown::Context { command: &command, kernel: &kernel, mem_mib: plan.mem, seconds: seconds.unwrap_or(plan.seconds), failed: &[], plots: &plots };
    write(&plan.out.join("report.md"), &markdown::report(&rows, &cx))?;
    eprintln!("study: report.md and plots rewritten from {} ({} rows)", csv.display(), rows.len());
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// One guest run of `w` under `policy`, its console kept in `log`.
fn run_pair(plan: &Plan, g: &guest::GuestAssets, hv: &Path, w: Workload, policy: &str, img: &Path, log: &Path) -> Result<results::Row> {
    let (cmdline, initrd, _) = demo::workload_guest(w.init, None, plan.seconds, &g.initrd)?;
    // No verify: it hashes all of guest RAM at every cut.
    let spec = image::GuestSpec { kernel: &g.kernel, initrd: Some(&initrd), cmdline: &cmdline, mem_mib: plan.mem, policy: Some(policy), verify: false };
    image::pack(hv, &spec, img)?;
    let deadline = Duration::from_secs(plan.seconds) + BOOT_ALLOWANCE;
    let cmd = qemu_tests::qemu_command(img, qemu_tests::host_mem_mib(plan.mem));
    let out = qemu_tests::run(cmd, deadline, &[], false).context("starting QEMU")?;
    write(log, &out.output)?;
    if out.timed_out() {
        bail!("killed at its deadline ({} s); console in {}", deadline.as_secs(), log.display());
    }
    if !out.exited_ok() || out.output.contains("vmsync: error: fatal") {
        bail!("the run failed (QEMU status {:?}); console in {}", out.status, log.display());
    }
    match results::workload_rc(&out.output, w.init).as_deref() {
        Some("0") => {}
        Some(rc) => bail!("the workload exited with {rc}; console in {}", log.display()),
        None => bail!("the workload never finished; console in {}", log.display()),
    }
    results::row(w.name, policy, vmsync_workloads::progress_field(w.init), &out.output).with_context(|| format!("console in {}", log.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut StudyArgs)) -> StudyArgs {
        let mut a = StudyArgs { workloads: None, policies: None, seconds: None, out: None, quick: false, mem: 256, report_only: false, resume: false };
        f(&mut a);
        a
    }

    #[test]
    fn defaults_are_the_real_programs_and_the_synthetic_ones() {
        let p = plan(&args(|_| {})).unwrap();
        let names: Vec<(&str, &str)> = p.workloads.iter().map(|w| (w.name, w.init)).collect();
        assert_eq!(
            names,
            [
                ("video", "dav1d"),
                ("storage", "sqlite"),
                ("browse", "python"),
                ("idle", "idle"),
                ("synth-video", "video"),
                ("synth-storage", "storage"),
                ("synth-browse", "browse")
            ]
        );
        assert_eq!(p.policies, DEFAULT_POLICIES);
        assert_eq!(p.seconds, 20);
        assert!(p.out.ends_with("target/study"));
    }

    #[test]
    fn quick_is_short_and_options_still_apply() {
        let p = plan(&args(|a| a.quick = true)).unwrap();
        assert_eq!(p.workloads.iter().map(|w| w.name).collect::<Vec<_>>(), ["video", "synth-video"]);
        assert_eq!(p.policies, ["interval:200ms", "switch-only"]);
        assert_eq!(p.seconds, 4);
        let p = plan(&args(|a| {
            a.quick = true;
            a.seconds = Some(3);
            a.out = Some("x".into());
        }))
        .unwrap();
        assert_eq!((p.seconds, p.out), (3, PathBuf::from("x")));
    }

    #[test]
    fn bad_names_are_refused() {
        let e = plan(&args(|a| a.workloads = Some(vec!["vidoe".into()]))).unwrap_err().to_string();
        assert!(e.contains("vidoe") && e.contains("synth-video"), "{e}");
        assert!(plan(&args(|a| a.policies = Some(vec!["interval:fast".into()]))).is_err());
        assert!(plan(&args(|a| a.policies = Some(vec!["off".into()]))).is_err());
        assert!(plan(&args(|a| a.seconds = Some(1))).is_err());
    }

    #[test]
    fn log_names() {
        assert_eq!(file_stem("synth-video", "interval:50ms"), "synth-video_interval-50ms");
    }
}
