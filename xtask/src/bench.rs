//! `cargo xtask bench`: end-to-end measurements, always as a ratio against
//! a baseline measured in the same run.
use anyhow::{bail, Result};
use clap::Subcommand;
use std::time::Duration;
use sync_core::policy::PolicySpec;

use crate::{apt, cli, guest, image};

mod switch;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Guest boot time to its init, under the hypervisor and under plain
    /// QEMU (same kernel, initrd, command line and CPU model).
    Boot {
        /// Boots of each kind; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// What dirty tracking costs the guest: the workload's own progress with
    /// tracking off and on, same run length, as a ratio; with the epoch
    /// figures (bytes per second, pause, write faults) of the tracked run.
    Tracking {
        /// Guest workload, one with a progress field to compare: video,
        /// storage, browse or memtouch.
        #[arg(long, default_value = "video", value_parser = tracking_workload)]
        workload: String,
        /// Epoch policy of the tracked run: interval:<duration>,
        /// threshold:<size>, adaptive[:<duration>] or switch-only.
        #[arg(long, default_value = "interval:200ms", value_parser = cli::policy)]
        policy: PolicySpec,
        /// Workload run length, seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Moving the running guest to another device through the link
    /// emulator: QEMU's own live migration (xbzrle on; two plain QEMUs) and
    /// a VMsync switch, same guest and link; time from request to the guest
    /// running on the target, bytes during and in the minute before, the
    /// guest's pause, and the ratio (goal: VMsync <= 1/20 of QEMU).
    Switch(switch::SwitchArgs),
}

/// `bench tracking --workload`: a synthetic workload that reports progress.
fn tracking_workload(s: &str) -> Result<String, String> {
    let w = cli::synthetic_workload(s)?;
    if vmsync_workloads::progress_field(&w).is_none() {
        let with: Vec<&str> = cli::SYNTHETIC_WORKLOADS.iter().copied().filter(|w| vmsync_workloads::progress_field(w).is_some()).collect();
        return Err(format!("{w} has no progress field to compare; the workloads with one: {}", with.join(", ")));
    }
    Ok(w)
}

const INIT_MARK: &str = "vmsync-guest: init";
const APPEND: &str = "console=ttyAMA0 vmsync.workload=idle vmsync.seconds=1";
const MEM_MIB: u64 = 256;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(what: BenchCmd) -> Result<()> {
    match what {
        BenchCmd::Boot { runs } => boot(runs.max(1)),
        BenchCmd::Tracking { workload, policy, seconds } => tracking(&workload, &policy.to_string(), seconds),
        BenchCmd::Switch(a) => switch::run(&a),
    }
}

fn boot(runs: usize) -> Result<()> {
    apt::ensure_qemu_aarch64()?;
    let g = guest::prepare(false)?;
    let hv = image::build_hypervisor()?;
    let img = image::out_dir().join("bench-boot.img");
    image::pack(
        &hv,
        &image::GuestSpec { kernel: &g.kernel, initrd: Some(&g.initrd), cmdline: APPEND, mem_mib: MEM_MIB, policy: None, verify: false, shadow: None },
        &img,
    )?;
    let deadline = Duration::from_secs(180);
    let (mut under, mut plain) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("bench boot: run {}/{runs}", i + 1);
        let h = qemu_tests::run(qemu_tests::qemu_command(&img, qemu_tests::host_mem_mib(MEM_MIB)), deadline, &[INIT_MARK], false)?;
        let p = qemu_tests::run(qemu_tests::plain_command(&g.kernel, &g.initrd, APPEND, MEM_MIB), deadline, &[INIT_MARK], false)?;
        match (h.mark(INIT_MARK), p.mark(INIT_MARK)) {
            (Some(a), Some(b)) => {
                under.push(a.as_secs_f64());
                plain.push(b.as_secs_f64());
            }
            _ => bail!("a boot did not reach its init.\nunder the hypervisor:\n{}\nplain:\n{}", h.tail(), p.tail()),
        }
    }
    let (u, p) = (median(under), median(plain));
    println!("boot to init ({runs} runs, median, kernel {})", g.kernel_release);
    println!("  under VMsync   {u:7.2} s");
    println!("  plain QEMU     {p:7.2} s");
    println!("  ratio          {:7.2}x", u / p);
    Ok(())
}

/// The last value of the workload's progress field, and the uptime when it
/// was printed.
fn progress(out: &str, field: &str) -> Option<(u64, f64)> {
    out.lines()
        .filter_map(|l| l.split_once("vmsync-workload: ").map(|(_, r)| r))
        .filter_map(|l| {
            let get = |k: &str| l.split_whitespace().find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='));
            Some((get(field)?.parse().ok()?, get("uptime")?.parse().ok()?))
        })
        .next_back()
}

fn tracking(workload: &str, policy: &str, seconds: u64) -> Result<()> {
    apt::ensure_qemu_aarch64()?;
    let Some(field) = vmsync_workloads::progress_field(workload) else {
        bail!("workload {workload} has no progress field to compare");
    };
    let g = guest::prepare(false)?;
    let hv = image::build_hypervisor()?;
    let append = format!("console=ttyAMA0 vmsync.workload={workload} vmsync.seconds={seconds}");
    let deadline = Duration::from_secs(seconds + 240);
    let mut results = Vec::new();
    for (label, pol) in [("untracked", None), ("tracked", Some(policy))] {
        let img = image::out_dir().join(format!("bench-tracking-{label}.img"));
        image::pack(
            &hv,
            &image::GuestSpec { kernel: &g.kernel, initrd: Some(&g.initrd), cmdline: &append, mem_mib: MEM_MIB, policy: pol, verify: false, shadow: None },
            &img,
        )?;
        eprintln!("bench tracking: {workload}, {label}, {seconds} s");
        let out = qemu_tests::run(qemu_tests::qemu_command(&img, qemu_tests::host_mem_mib(MEM_MIB)), deadline, &[], false)?;
        if !out.exited_ok() {
            bail!("the {label} run failed:\n{}", out.tail());
        }
        let Some(p) = progress(&out.output, field) else { bail!("no progress lines in the {label} run:\n{}", out.tail()) };
        results.push((label, p, out.output));
    }
    let (off, on) = (results[0].1 .0 as f64, results[1].1 .0 as f64);
    println!("tracking cost, workload {workload}, {seconds} s, policy {policy}");
    println!("  progress ({field}) untracked {off:>10.0}");
    println!("  progress ({field}) tracked   {on:>10.0}");
    println!("  ratio tracked/untracked {:>10.3}", on / off.max(1.0));
    let r = crate::report::build(&results[1].2, &crate::report::RunInfo { workload, policy, seconds });
    let s = &r.steady;
    let secs = s.seconds;
    if secs > 0.0 {
        let rate = |v: u64| v as f64 / secs;
        println!(
            "  after epoch 1, per second: dirty-page {:.0} B/s, changed {:.0} B/s, delta {:.0} B/s, compressed {:.0} B/s, sealed {:.0} B/s",
            rate(s.dirty_page_bytes),
            rate(s.changed_bytes),
            rate(s.delta_bytes),
            rate(s.compressed_bytes),
            rate(s.sealed_bytes)
        );
        println!("  dirty-page bytes / compressed bytes {:.1}", s.dirty_page_bytes as f64 / (s.compressed_bytes as f64).max(1.0));
        println!("  write faults {:.0}/s", rate(s.write_faults));
    }
    println!("  pause per epoch: median {} us, max {} us (max includes epoch 1, the initial copy)", r.pause_us.median, r.pause_us.max);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::Parser;

    /// `cargo xtask bench`'s arguments, parsed as clap parses them.
    #[derive(Parser)]
    struct Bench {
        #[command(subcommand)]
        what: BenchCmd,
    }

    fn parse(args: &[&str]) -> Result<BenchCmd, clap::Error> {
        Bench::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|b| b.what)
    }

    /// The first line clap prints for arguments it refuses, which must be a
    /// usage error (exit code 2).
    fn refused(args: &[&str]) -> String {
        let e = parse(args).err().expect("refused");
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::ValueValidation, 2), "{e}");
        e.to_string().lines().next().unwrap().to_string()
    }

    #[test]
    fn defaults_parse() {
        let Ok(BenchCmd::Tracking { workload, policy, seconds }) = parse(&["tracking"]) else { panic!("tracking") };
        assert_eq!((workload.as_str(), policy, seconds), ("video", PolicySpec::Interval { period_ns: 200_000_000 }, 10));
        let Ok(BenchCmd::Switch(a)) = parse(&["switch", "--link", "lte,loss=1%", "--workload", "memtouch"]) else { panic!("switch") };
        assert_eq!((a.link.name.as_str(), a.link.loss, a.workload.as_str()), ("lte", 0.01, "memtouch"));
        let Ok(BenchCmd::Switch(a)) = parse(&["switch"]) else { panic!("switch") };
        assert_eq!((a.link.name.as_str(), a.workload.as_str()), ("wifi", "video"));
    }

    #[test]
    fn bad_input_is_refused_while_parsing() {
        let e = refused(&["tracking", "--workload", "vidoe"]);
        assert!(e.contains("'vidoe'") && e.contains("video, storage, browse, idle, counter, memtouch"), "{e}");
        let e = refused(&["tracking", "--workload", "sqlite"]);
        assert!(e.contains("sqlite runs in the study's guest only (cargo xtask study --workloads sqlite)"), "{e}");
        let e = refused(&["tracking", "--workload", "idle"]);
        assert!(e.contains("idle has no progress field to compare; the workloads with one: video, storage, browse, memtouch"), "{e}");
        let e = refused(&["tracking", "--policy", "threshold:4XB"]);
        assert!(e.contains("'threshold:4XB'") && e.contains("unknown unit"), "{e}");
        let e = refused(&["switch", "--link", "5g"]);
        assert!(e.contains("'5g'") && e.contains("unknown link profile"), "{e}");
        let e = refused(&["switch", "--workload", "dav1d"]);
        assert!(e.contains("dav1d runs in the study's guest only"), "{e}");
    }
}
