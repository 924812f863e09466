//! `cargo xtask study`: the feasibility study (issue 7). How much must be
//! sent to keep a standby in sync, per workload, sync policy and shadow
//! budget: one guest run under the hypervisor per workload × policy, up
//! to `--jobs` at a time (`schedule`), keeping the first shadow budget and
//! counting the others with shadow probes in the same run (`probes`), then
//! `results.csv`, `report.md` and the plots in the output directory.
mod markdown;
mod plots;
mod probes;
pub(crate) mod results;
mod schedule;

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sync_core::policy::PolicySpec;

use crate::{apt, cli, demo, guest, image};

/// The study's workloads are named as the guest's init runs them
/// (`vmsync.workload=`, [`cli::study_workload`]): Debian's real programs
/// `dav1d`, `sqlite` and `python` (in the study initramfs only), and the
/// synthetic Rust ones every guest image carries.
const DEFAULT_WORKLOADS: &[&str] = &["dav1d", "sqlite", "python", "idle", "video", "storage", "browse"];
const DEFAULT_POLICIES: &[&str] = &["interval:50ms", "interval:200ms", "interval:1s", "interval:5s", "threshold:4MiB", "switch-only"];
const DEFAULT_SECONDS: u64 = 20;
/// `--quick`, the CI form: real video playback (dav1d) and its synthetic
/// stand-in, a short interval and switch-only, a few seconds each.
const QUICK_WORKLOADS: &[&str] = &["dav1d", "video"];
const QUICK_POLICIES: &[&str] = &["interval:200ms", "switch-only"];
const QUICK_SECONDS: u64 = 4;
/// Guest runs at a time: `--quick` fills the two cores `cargo xtask test`
/// is sized for (each QEMU run uses one).
const DEFAULT_JOBS: usize = 1;
const QUICK_JOBS: usize = 2;
/// Shadow budgets (percent of guest RAM, 100: full): the run's own first,
/// then those its probes count. The study's: the figure; `--quick`:
/// the default budget against a full shadow.
const DEFAULT_SHADOWS: &[u8] = &[cli::DEFAULT_SHADOW, 100, 50, 10];
const QUICK_SHADOWS: &[u8] = &[cli::DEFAULT_SHADOW, 100];
/// Per run, on top of the workload's seconds: boot (the study initramfs
/// unpacks some 50 MiB), the initial copy and the last cut, under TCG.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(240);

#[derive(Args)]
pub struct StudyArgs {
    /// Workloads, comma-separated: Debian's real programs dav1d (playing
    /// AV1), sqlite (sqlite3 transactions) and python (python3 object-graph
    /// churn), and the synthetic ones every guest carries: video, storage,
    /// browse (the programs' stand-ins), idle, counter, memtouch, burst.
    /// [default: dav1d,sqlite,python,idle,video,storage,browse]
    #[arg(long, value_delimiter = ',', value_parser = cli::study_workload, value_name = "W[,W...]")]
    workloads: Option<Vec<String>>,
    /// Epoch policies, comma-separated: interval:<duration>,
    /// threshold:<size>, adaptive[:<duration>] or switch-only.
    /// [default: interval:50ms,interval:200ms,interval:1s,interval:5s,threshold:4MiB,switch-only]
    #[arg(long, value_delimiter = ',', value_parser = cli::policy, value_name = "P[,P...]")]
    policies: Option<Vec<PolicySpec>>,
    /// Shadow budgets of the active device, comma-separated, at most 4:
    /// percent of guest RAM (1 to 100) or full. Each run keeps the first;
    /// shadow probes count every budget in the same run, checked against
    /// the run's own. [default: 25,full,50,10; 25,full with --quick]
    #[arg(long, value_delimiter = ',', value_parser = cli::shadow, value_name = "P[,P...]")]
    shadows: Option<Vec<u8>>,
    /// How long each workload runs, in seconds, at least 2. [default: 20; 4 with --quick]
    #[arg(long, value_parser = seconds)]
    seconds: Option<u64>,
    /// Where results.csv, report.md and the plots go. [default: target/study/]
    #[arg(long)]
    out: Option<PathBuf>,
    /// The short form for CI: workloads dav1d,video, policies
    /// interval:200ms,switch-only, shadows 25,full, 4 s each (other
    /// options still apply).
    #[arg(long)]
    quick: bool,
    /// Guest runs at a time, at least 1; results.csv, report.md and the
    /// plots come out the same whichever run ends first. Each QEMU run uses
    /// one core: with N > 1 the runs share the cores, so each run takes
    /// longer and the pause column is worse than with one run at a time.
    /// The byte columns count what the guest wrote, not how fast: they are
    /// not affected while each run has a core of its own (N at most the
    /// free cores); beyond that a guest that cannot keep its workload's
    /// pace (dav1d under TCG) does less and writes less, as progress/s
    /// shows. After a run fails no new run starts.
    /// [default: 1; 2 with --quick]
    #[arg(long, value_parser = jobs, value_name = "N")]
    jobs: Option<usize>,
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
    /// Boot each run from a fresh copy of the root disk (`cargo xtask
    /// guest --root-disk`, `root=/dev/vda`): the storage and sqlite
    /// workloads keep their files on it, and results.csv gets what the
    /// guest wrote to its disk (disk_dirty_bytes, disk_guest_bytes).
    #[arg(long)]
    root_disk: bool,
}

/// `--jobs`: at least one run at a time.
fn jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("give 1 or more runs at a time".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `--seconds`: a rate needs two of the workload's per-second lines.
fn seconds(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 2 => Ok(n),
        Ok(_) => Err("a rate needs at least two of the workload's per-second lines: give 2 or more".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, PartialEq)]
struct Plan {
    /// As the guest's init runs them (`vmsync.workload=`) and the study
    /// reports them.
    workloads: Vec<String>,
    /// Canonical spec strings (`PolicySpec`'s `Display`), as the hypervisor
    /// parses them from the guest config.
    policies: Vec<String>,
    /// Percent of guest RAM kept as shadows (100: full).
    shadows: Vec<u8>,
    seconds: u64,
    out: PathBuf,
    mem: u64,
    /// Guest runs at a time (at least 1).
    jobs: usize,
    /// `--root-disk`: every run boots a copy of this base image (set once
    /// it is built, in `run_as`).
    disk_base: Option<PathBuf>,
}

/// The runs the arguments ask for, defaults filled in (clap has checked
/// every name and policy).
fn plan(a: &StudyArgs) -> Result<Plan> {
    let (dw, dp, ds) = if a.quick { (QUICK_WORKLOADS, QUICK_POLICIES, QUICK_SECONDS) } else { (DEFAULT_WORKLOADS, DEFAULT_POLICIES, DEFAULT_SECONDS) };
    let dshadows = if a.quick { QUICK_SHADOWS } else { DEFAULT_SHADOWS };
    let owned = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Each asked for twice is run once: `full` and `100` are one budget,
    // `interval:1000ms` and `interval:1s` one policy. Two runs of one
    // workload × policy would also write the same files, at once with
    // `--jobs`.
    let workloads = first_of_each(a.workloads.clone().unwrap_or_else(|| owned(dw)));
    let policies = first_of_each(match &a.policies {
        Some(p) => p.iter().map(PolicySpec::to_string).collect(),
        None => owned(dp),
    });
    let shadows = first_of_each(a.shadows.clone().unwrap_or_else(|| dshadows.to_vec()));
    if workloads.is_empty() || policies.is_empty() || shadows.is_empty() {
        bail!("nothing to run: give at least one workload, one policy and one shadow budget");
    }
    if shadows.len() > MAX_SHADOWS {
        bail!("at most {MAX_SHADOWS} shadow budgets: each is a shadow probe of the run (the hypervisor's `shadow_probes=`)");
    }
    let seconds = a.seconds.unwrap_or(ds);
    let out = a.out.clone().unwrap_or_else(|| guest::workspace_root().join("target").join("study"));
    let jobs = a.jobs.unwrap_or(if a.quick { QUICK_JOBS } else { DEFAULT_JOBS });
    Ok(Plan { workloads, policies, shadows, seconds, out, mem: a.mem, jobs, disk_base: None })
}

/// `items` without repeats, each where it first came.
fn first_of_each<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// A file name for a policy spec (`interval:50ms` → `interval-50ms`), as
/// studies named logs before the shadow budget was an axis.
fn file_stem(workload: &str, policy: &str) -> String {
    format!("{workload}_{}", policy.replace([':', '/'], "-"))
}

/// A run's console log name: `file_stem`, then the run's own shadow budget.
fn log_stem(run: &Run) -> String {
    format!("{}_shadow-{}", file_stem(run.0, run.1), run.2)
}

/// Most shadow budgets a study compares (the hypervisor's `MAX_PROBES`).
const MAX_SHADOWS: usize = 4;

/// One row: workload, policy, shadow budget (percent of guest RAM). A
/// guest run is that of its first budget, whose probes give the others.
type Run<'a> = (&'a str, &'a str, u8);

/// The tests in qemu-tests/tests/study.rs, which check what `quick` wrote
/// (`cargo xtask test --filter` runs the quick study when one may run).
pub const QUICK_TESTS: &[&str] = &["study_quick_files", "study_quick_dav1d_inequality", "study_quick_shadow_probes"];

/// `cargo xtask study --quick --out <out>`, from `cargo xtask test`. What an
/// earlier run left in `out` goes first: the tests must see this run's files.
pub fn quick(out: &Path) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    let a = StudyArgs {
        workloads: None,
        policies: None,
        shadows: None,
        seconds: None,
        out: Some(out.to_path_buf()),
        quick: true,
        jobs: None,
        mem: 256,
        report_only: false,
        resume: false,
        root_disk: false,
    };
    run_as(&a, &format!("cargo xtask study --quick --out {}", out.display()))
}

pub fn run(a: &StudyArgs) -> Result<()> {
    run_as(a, &format!("cargo xtask {}", std::env::args().skip(1).collect::<Vec<_>>().join(" ")))
}

/// The study; `command` is how the report names it.
fn run_as(a: &StudyArgs, command: &str) -> Result<()> {
    let mut plan = plan(a)?;
    if a.report_only {
        return report_only(&plan, command);
    }
    apt::ensure_qemu_aarch64()?;
    // Before the long part: a missing font should not cost the whole study.
    plots::load_font()?;
    // The root disk's /init is the study initramfs's (one init.sh, the
    // same virtio modules): it mounts the disk and switch_roots into it.
    if a.root_disk {
        plan.disk_base = Some(guest::prepare_root_disk(false)?.image);
    }
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

    let shadows = &plan.shadows;
    let own = shadows[0];
    let pairs: Vec<Run> =
        plan.workloads.iter().flat_map(|w| plan.policies.iter().flat_map(move |p| shadows.iter().map(move |&s| (w.as_str(), p.as_str(), s)))).collect();
    let runs: Vec<Run> = pairs.iter().copied().filter(|r| r.2 == own).collect();
    let probed: Vec<String> = shadows.iter().map(|&s| probes::label(s)).collect();
    eprintln!(
        "study: {} runs ({} workloads × {} policies, {} s each, shadow budget {}{}), console logs in {}",
        runs.len(),
        plan.workloads.len(),
        plan.policies.len(),
        plan.seconds,
        probes::label(own),
        if shadows.len() > 1 { format!(", shadow probes {}", probed.join(",")) } else { String::new() },
        logs.display()
    );
    let csv = plan.out.join("results.csv");
    let rows = if a.resume { kept_rows(&plan.out, &pairs)? } else { Vec::new() };
    let done = |rows: &[results::Row], &(w, p, _): &Run| shadows.iter().all(|&s| has_row(rows, &(w, p, s)));
    for i in (0..runs.len()).filter(|&i| done(&rows, &runs[i])) {
        eprintln!("study: {}: kept from {} (--resume)", schedule::name(&runs, i), csv.display());
    }
    // The plan indices of the runs to do, in plan order.
    let todo: Vec<usize> = (0..runs.len()).filter(|&i| !done(&rows, &runs[i])).collect();
    let jobs = plan.jobs.min(todo.len()).max(1);
    if jobs > 1 {
        eprintln!("study: {} runs, {jobs} at a time: they share the cores, so each takes longer and pauses more than alone (see --help)", todo.len());
    }
    let started = Instant::now();
    let run = |run: &Run| {
        // Each run has its own image and console log (`log_stem` names one
        // workload × policy × budget), so two runs never share a path;
        // QEMU's serial console is its stdio and it has no monitor or
        // network, so they share no port either.
        let img = work.join(format!("{}.img", log_stem(run)));
        let log = logs.join(format!("{}.log", log_stem(run)));
        let got = run_pair(&plan, &g, &hv, run, &img, &log);
        // 35 MB, and made afresh for every run.
        let _ = std::fs::remove_file(&img);
        got
    };
    // After every run, so an interrupted study keeps what it measured (and
    // `--resume` goes on from there).
    let save = |rows: &[results::Row]| write(&csv, &results::csv(rows));
    let schedule::Collected { rows, failed, ran, not_started } = schedule::run_all(&runs, &todo, &pairs, jobs, rows, run, save)?;
    let plots = plots::write_all(&plan.out, &plotted(&rows))?;
    let cx = markdown::Context { command, kernel: &g.kernel_release, mem_mib: plan.mem, seconds: plan.seconds, jobs, failed: &failed, plots: &plots };
    write(&plan.out.join("report.md"), &markdown::report(&rows, &cx))?;
    eprintln!("study: {ran} runs in {:.1} min; results in {}", started.elapsed().as_secs_f64() / 60.0, plan.out.display());
    if let Some((w, what, why)) = failed.first() {
        bail!(
            "{} of {ran} runs failed, the first in plan order {w} × {what}: {why}{} (all listed in report.md; consoles in {}); --resume runs only the runs without results",
            failed.len(),
            if not_started > 0 { format!("; {not_started} runs not started after the failure") } else { String::new() },
            logs.display()
        );
    }
    Ok(())
}

fn has_row(rows: &[results::Row], run: &Run) -> bool {
    rows.iter().any(|r| is_run(r, run))
}

fn is_run(r: &results::Row, &(w, p, s): &Run) -> bool {
    r.workload == w && r.policy == p && r.shadow == s
}

/// `--resume`: the rows of an earlier results.csv in `out` that this study
/// asks for.
fn kept_rows(out: &Path, pairs: &[Run]) -> Result<Vec<results::Row>> {
    Ok(earlier_rows(out)?.map(|rows| in_plan_order(rows, pairs)).unwrap_or_default())
}

/// The rows of an earlier study's results.csv in `out` (None: it has none).
/// A study from before the workloads were named as the guest names them is
/// renamed, its results.csv rewritten and its console logs moved.
fn earlier_rows(out: &Path) -> Result<Option<Vec<results::Row>>> {
    let csv = out.join("results.csv");
    let text = match std::fs::read_to_string(&csv) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", csv.display())),
    };
    let mut rows = results::parse_csv(&text).with_context(|| format!("parsing {}", csv.display()))?;
    if rename_old(&mut rows, &out.join("logs"))? {
        write(&csv, &results::csv(&rows))?;
        eprintln!("study: {} named the workloads the old way; renamed (video is dav1d now, synth-video is video, ...)", csv.display());
    }
    Ok(Some(rows))
}

/// Old study names and new: `video`, `storage` and `browse` were Debian's
/// dav1d, sqlite3 and python3, and `synth-*` the synthetic workloads that
/// now have the plain names. The real programs come first: renaming them
/// frees the names (and log files) the synthetic ones take.
const OLD_NAMES: &[(&str, &str)] =
    &[("video", "dav1d"), ("storage", "sqlite"), ("browse", "python"), ("synth-video", "video"), ("synth-storage", "storage"), ("synth-browse", "browse")];

/// Renames the rows of a study that used the old names, and their console
/// logs in `logs`; false (and nothing renamed) for a study with the new
/// names. An old study shows a `synth-` row, or a `video`, `storage` or
/// `browse` row whose console log ran the real program.
fn rename_old(rows: &mut [results::Row], logs: &Path) -> Result<bool> {
    let log = |w: &str, policy: &str| logs.join(format!("{}.log", file_stem(w, policy)));
    let ran = |r: &results::Row, program: &str| {
        std::fs::read_to_string(log(&r.workload, &r.policy)).is_ok_and(|t| t.contains(&format!("vmsync-guest: workload {program} start")))
    };
    let old = rows.iter().any(|r| r.workload.starts_with("synth-") || OLD_NAMES[..3].iter().any(|&(o, program)| r.workload == o && ran(r, program)));
    if !old {
        return Ok(false);
    }
    for &(o, new) in OLD_NAMES {
        for r in rows.iter_mut().filter(|r| r.workload == o) {
            let (from, to) = (log(o, &r.policy), log(new, &r.policy));
            if from.exists() {
                std::fs::rename(&from, &to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
            }
            r.workload = new.to_string();
        }
    }
    Ok(true)
}

/// The rows of `pairs`, in their order (workload by workload); others dropped.
fn in_plan_order(rows: Vec<results::Row>, pairs: &[Run]) -> Vec<results::Row> {
    let rank = |r: &results::Row| pairs.iter().position(|run| is_run(r, run));
    let mut ranked: Vec<(usize, results::Row)> = rows.into_iter().filter_map(|r| Some((rank(&r)?, r))).collect();
    ranked.sort_by_key(|(i, _)| *i);
    ranked.dedup_by_key(|(i, _)| *i);
    ranked.into_iter().map(|(_, r)| r).collect()
}

/// `--report-only`: report.md and the plots from an earlier study's
/// results.csv; the kernel and run length from its console logs.
fn report_only(plan: &Plan, command: &str) -> Result<()> {
    let csv = plan.out.join("results.csv");
    let Some(rows) = earlier_rows(&plan.out)? else { bail!("no {} (run the study first)", csv.display()) };
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
    let plots = plots::write_all(&plan.out, &plotted(&rows))?;
    let kernel = kernel.unwrap_or_else(|| "unknown".into());
    let cx = markdown::Context {
        command: &command,
        kernel: &kernel,
        mem_mib: plan.mem,
        seconds: seconds.unwrap_or(plan.seconds),
        // As the report it replaces says the runs went.
        jobs: markdown::jobs_of(&old),
        failed: &[],
        plots: &plots,
    };
    write(&plan.out.join("report.md"), &markdown::report(&rows, &cx))?;
    eprintln!("study: report.md and plots rewritten from {} ({} rows)", csv.display(), rows.len());
    Ok(())
}

/// The rows the plots show: those of the first row's shadow budget (the
/// plots compare workloads and policies; report.md compares budgets).
fn plotted(rows: &[results::Row]) -> Vec<results::Row> {
    rows.iter().filter(|r| Some(r.shadow) == rows.first().map(|f| f.shadow)).cloned().collect()
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// One guest run of `w` under `policy` with `shadow` percent of guest RAM
/// as shadows, its console kept in `log`: its row, then (with more than one
/// budget) a row per other budget of the plan from the run's probes.
fn run_pair(plan: &Plan, g: &guest::GuestAssets, hv: &Path, &(w, policy, shadow): &Run, img: &Path, log: &Path) -> Result<Vec<results::Row>> {
    let (mut cmdline, initrd, _) = demo::workload_guest(w, None, plan.seconds, &g.initrd)?;
    // A fresh copy of the root disk per run (named for the run, so runs
    // never share one): each workload starts from the same files.
    let disk = match &plan.disk_base {
        Some(base) => {
            cmdline.push_str(" root=/dev/vda");
            let dir = img.parent().unwrap_or(Path::new("."));
            Some(qemu_tests::disk_copy(base, dir, &format!("{}.ext4", log_stem(&(w, policy, shadow))))?)
        }
        None => None,
    };
    // No verify: it hashes all of guest RAM at every cut.
    let spec = image::GuestSpec {
        kernel: &g.kernel,
        initrd: Some(&initrd),
        cmdline: &cmdline,
        mem_mib: plan.mem,
        policy: Some(policy),
        verify: false,
        shadow: Some(shadow),
    };
    // Every budget probed, the run's own too: its probe is checked against
    // the link (`probes::rows`).
    let extra = if plan.shadows.len() > 1 { probes::config_line(&plan.shadows) } else { String::new() };
    image::pack_extra(hv, &spec, &extra, img)?;
    // Each probe encodes every cut again, the initial copy too (tens of MB
    // under TCG) with the guest paused: the boot's allowance once more each.
    let probes = if plan.shadows.len() > 1 { plan.shadows.len() as u32 } else { 0 };
    let deadline = Duration::from_secs(plan.seconds) + BOOT_ALLOWANCE * (1 + probes);
    let mut cmd = qemu_tests::qemu_command(img, qemu_tests::host_mem_mib(plan.mem));
    if let Some(d) = &disk {
        qemu_tests::attach_disk(&mut cmd, d);
    }
    let out = qemu_tests::run(cmd, deadline, &[], false).context("starting QEMU")?;
    if let Some(d) = &disk {
        let _ = std::fs::remove_file(d);
    }
    write(log, &out.output)?;
    if out.timed_out() {
        bail!("killed at its deadline ({} s); console in {}", deadline.as_secs(), log.display());
    }
    if !out.exited_ok() || out.output.contains("vmsync: error: fatal") {
        bail!("the run failed (QEMU status {:?}); console in {}", out.status, log.display());
    }
    match results::workload_rc(&out.output, w).as_deref() {
        Some("0") => {}
        Some(rc) => bail!("the workload exited with {rc}; console in {}", log.display()),
        None => bail!("the workload never finished; console in {}", log.display()),
    }
    let progress = vmsync_workloads::progress_field(w);
    let mut rows = if plan.shadows.len() > 1 {
        probes::rows(w, policy, &plan.shadows, progress, &out.output)
    } else {
        results::row(w, policy, shadow, progress, &out.output).map(|r| vec![r])
    }
    .with_context(|| format!("console in {}", log.display()))?;
    if disk.is_some() {
        // Either line: a hypervisor log line may cut one of them.
        if !["/dev/vda mounted", "vmsync-guest: root-disk "].iter().any(|l| out.output.contains(l)) {
            bail!("the guest never mounted its root disk; console in {}", log.display());
        }
    } else {
        // No disk: its columns stay empty (not 0 bytes written).
        rows.iter_mut().for_each(|r| r.disk = None);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::{CommandFactory, Parser};

    /// `cargo xtask study`'s arguments, parsed as clap parses them.
    #[derive(Parser)]
    struct Study {
        #[command(flatten)]
        a: StudyArgs,
    }

    fn parse(args: &[&str]) -> Result<StudyArgs, clap::Error> {
        Study::try_parse_from(std::iter::once("study").chain(args.iter().copied())).map(|s| s.a)
    }

    fn plan_of(args: &[&str]) -> Plan {
        plan(&parse(args).unwrap()).unwrap()
    }

    /// The first line clap prints for arguments it refuses, which must be a
    /// usage error (exit code 2).
    fn refused(args: &[&str]) -> String {
        let e = parse(args).err().expect("refused");
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::ValueValidation, 2), "{e}");
        e.to_string().lines().next().unwrap().to_string()
    }

    #[test]
    fn defaults_are_the_real_programs_and_the_synthetic_ones() {
        let p = plan_of(&[]);
        assert_eq!(p.workloads, ["dav1d", "sqlite", "python", "idle", "video", "storage", "browse"]);
        assert_eq!(p.policies, DEFAULT_POLICIES);
        assert_eq!(p.seconds, 20);
        assert!(p.out.ends_with("target/study"));
    }

    #[test]
    fn quick_is_short_and_options_still_apply() {
        let p = plan_of(&["--quick"]);
        assert_eq!(p.workloads, ["dav1d", "video"]);
        assert_eq!(p.policies, ["interval:200ms", "switch-only"]);
        assert_eq!(p.seconds, 4);
        assert_eq!(p.shadows, [25, 100]);
        assert_eq!(plan_of(&[]).shadows, [25, 100, 50, 10]);
        assert_eq!(plan_of(&["--shadows", "10,full,100"]).shadows, [10, 100], "full and 100 are one budget");
        assert!(plan(&parse(&["--shadows", "5,10,20,30,40"]).unwrap()).unwrap_err().to_string().contains("at most 4 shadow budgets"));
        let p = plan_of(&["--quick", "--seconds", "3", "--out", "x"]);
        assert_eq!((p.seconds, p.out), (3, PathBuf::from("x")));
    }

    /// Every run has its own console log and image (named by `log_stem`),
    /// which runs going at once rely on.
    #[test]
    fn a_run_asked_for_twice_is_run_once() {
        let p = plan_of(&["--workloads", "video,dav1d,video", "--policies", "interval:1s,switch-only,interval:1000ms"]);
        assert_eq!(p.workloads, ["video", "dav1d"]);
        assert_eq!(p.policies, ["interval:1s", "switch-only"]);
        let own = p.shadows[0];
        let mut stems: Vec<String> = p.workloads.iter().flat_map(|w| p.policies.iter().map(move |q| log_stem(&(w.as_str(), q.as_str(), own)))).collect();
        let n = stems.len();
        stems.sort();
        stems.dedup();
        assert_eq!(stems.len(), n, "{stems:?}");
    }

    #[test]
    fn jobs_are_one_and_two_with_quick() {
        assert_eq!(plan_of(&[]).jobs, 1);
        assert_eq!(plan_of(&["--quick"]).jobs, 2);
        assert_eq!(plan_of(&["--quick", "--jobs", "1"]).jobs, 1);
        assert_eq!(plan_of(&["--jobs", "3"]).jobs, 3);
        let e = refused(&["--jobs", "0"]);
        assert!(e.contains("give 1 or more"), "{e}");
    }

    #[test]
    fn lists_are_comma_separated_and_policies_canonical() {
        let p = plan_of(&["--workloads", "sqlite,memtouch", "--policies", "interval:1000ms,threshold:4M,adaptive:50ms"]);
        assert_eq!(p.workloads, ["sqlite", "memtouch"]);
        assert_eq!(p.policies, ["interval:1s", "threshold:4MiB", "adaptive"]);
    }

    #[test]
    fn bad_input_is_refused_while_parsing() {
        let e = refused(&["--workloads", "dav1d,vidoe"]);
        assert!(e.contains("'vidoe'") && e.contains("dav1d, sqlite, python, video, storage, browse, idle, counter, memtouch"), "{e}");
        let e = refused(&["--workloads", "synth-video"]);
        assert!(e.contains("synth-video is now called video"), "{e}");
        let e = refused(&["--policies", "interval:200ms,interval:fast"]);
        assert!(e.contains("'interval:fast'") && e.contains("the value must start with a decimal number"), "{e}");
        let e = refused(&["--policies", "off"]);
        assert!(e.contains("unknown policy (one of interval:<duration>"), "{e}");
        let e = refused(&["--seconds", "1"]);
        assert!(e.contains("at least two"), "{e}");
        let e = refused(&["--seconds", "x"]);
        assert!(e.contains("invalid digit"), "{e}");
    }

    /// `--help` names the defaults the code uses.
    #[test]
    fn help_tells_the_defaults() {
        let help = Study::command().render_long_help().to_string();
        for list in [DEFAULT_WORKLOADS, DEFAULT_POLICIES, QUICK_WORKLOADS, QUICK_POLICIES] {
            assert!(help.contains(&list.join(",")), "{} not in\n{help}", list.join(","));
        }
        for list in [DEFAULT_SHADOWS, QUICK_SHADOWS] {
            let names: Vec<String> = list.iter().map(|&s| if s == 100 { "full".into() } else { s.to_string() }).collect();
            assert!(help.contains(&names.join(",")), "{} not in\n{help}", names.join(","));
        }
        assert!(help.contains(&format!("[default: {DEFAULT_SECONDS}; {QUICK_SECONDS} with --quick]")), "{help}");
        assert!(help.contains(&format!("[default: {DEFAULT_JOBS}; {QUICK_JOBS} with --quick]")), "{help}");
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for truth in ["the pause column is worse than with one run at a time", "The byte columns count what the guest wrote, not how fast"] {
            assert!(flat.contains(truth), "{truth} not in\n{help}");
        }
        for w in cli::STUDY_WORKLOADS.iter().chain(cli::SYNTHETIC_WORKLOADS) {
            assert!(help.contains(w), "{w} not in\n{help}");
        }
        assert!(!help.contains("synth-"), "{help}");
    }

    #[test]
    fn root_disk_is_asked_for_and_off_by_default() {
        assert!(parse(&["--root-disk", "--workloads", "sqlite,storage"]).unwrap().root_disk);
        assert!(!parse(&[]).unwrap().root_disk);
        // The base image is found when the study runs, not when it plans.
        assert_eq!(plan_of(&["--root-disk"]).disk_base, None);
    }

    #[test]
    fn log_names() {
        assert_eq!(file_stem("dav1d", "interval:50ms"), "dav1d_interval-50ms");
    }

    /// An output directory with `rows` (workload, policy) in results.csv and
    /// a console log per row running `program`.
    fn old_study(name: &str, rows: &[(&str, &str, Option<&str>)]) -> PathBuf {
        let out = std::env::temp_dir().join(format!("vmsync-study-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(out.join("logs")).unwrap();
        let mut csv = format!("{}\n", results::CSV_HEADER);
        for (w, p, program) in rows {
            csv += &format!("{w},{p},25,2.0,1,1,4096,1,1,1,1,1,1,1,30.00,,\n");
            if let Some(program) = program {
                std::fs::write(out.join("logs").join(format!("{}.log", file_stem(w, p))), format!("vmsync-guest: workload {program} start\n")).unwrap();
            }
        }
        std::fs::write(out.join("results.csv"), csv).unwrap();
        out
    }

    fn names(rows: &[results::Row]) -> Vec<(&str, &str)> {
        rows.iter().map(|r| (r.workload.as_str(), r.policy.as_str())).collect()
    }

    fn log(out: &Path, stem: &str) -> Option<String> {
        std::fs::read_to_string(out.join("logs").join(format!("{stem}.log"))).ok()
    }

    #[test]
    fn an_old_study_is_renamed() {
        let out = old_study("synth", &[("video", "switch-only", Some("dav1d")), ("synth-video", "switch-only", Some("video")), ("idle", "switch-only", None)]);
        let rows = earlier_rows(&out).unwrap().unwrap();
        assert_eq!(names(&rows), [("dav1d", "switch-only"), ("video", "switch-only"), ("idle", "switch-only")]);
        assert_eq!(log(&out, "dav1d_switch-only").as_deref(), Some("vmsync-guest: workload dav1d start\n"));
        assert_eq!(log(&out, "video_switch-only").as_deref(), Some("vmsync-guest: workload video start\n"));
        assert_eq!(log(&out, "synth-video_switch-only"), None);
        // Written back: the next read finds the new names.
        assert_eq!(names(&earlier_rows(&out).unwrap().unwrap()), names(&rows));
        std::fs::remove_dir_all(&out).unwrap();

        // No synth- row: the console log tells.
        let out = old_study("logs", &[("storage", "interval:1s", Some("sqlite"))]);
        assert_eq!(names(&earlier_rows(&out).unwrap().unwrap()), [("sqlite", "interval:1s")]);
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn a_new_study_is_kept() {
        let out = old_study("new", &[("dav1d", "switch-only", Some("dav1d")), ("video", "switch-only", Some("video")), ("browse", "switch-only", None)]);
        let rows = earlier_rows(&out).unwrap().unwrap();
        assert_eq!(names(&rows), [("dav1d", "switch-only"), ("video", "switch-only"), ("browse", "switch-only")]);
        assert!(log(&out, "video_switch-only").is_some());
        let kept = kept_rows(&out, &[("browse", "switch-only", 25), ("dav1d", "switch-only", 25), ("dav1d", "interval:1s", 25), ("video", "switch-only", 10)])
            .unwrap();
        assert_eq!(names(&kept), [("browse", "switch-only"), ("dav1d", "switch-only")]);
        std::fs::remove_dir_all(&out).unwrap();
        assert_eq!(earlier_rows(&out).unwrap(), None);
    }
}
