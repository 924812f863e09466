//! `cargo xtask`: build, run, test and measure VMsync.
mod apt;
mod bench;
mod cpio;
mod demo;
mod guest;
mod image;
mod migration;
mod multi;
mod report;
mod study;
mod switching;
mod test;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and measure VMsync", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download the Debian arm64 kernel and busybox, build the workload
    /// programs and the initramfs; cached under target/guest/.
    Guest {
        /// Rebuild even when the cache is complete.
        #[arg(long)]
        force: bool,
    },
    /// Build the hypervisor and pack a boot image with a guest
    /// (default: the prepared Debian guest) into target/vmsync/vmsync.img.
    Build {
        #[command(flatten)]
        guest: GuestArgs,
        /// Where to write the boot image.
        #[arg(long, default_value = "target/vmsync/vmsync.img")]
        out: PathBuf,
    },
    /// Boot one QEMU device running the hypervisor and the guest, console on
    /// stdout; exits when the guest powers off.
    Run {
        #[command(flatten)]
        guest: GuestArgs,
        /// Boot the kernel directly in QEMU, without the hypervisor (the
        /// baseline for comparisons).
        #[arg(long)]
        plain: bool,
        /// Kill QEMU after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    /// The VMsync demo: one device running the guest and its workload under
    /// the hypervisor with dirty tracking on (or several, kept in sync, the
    /// guest switching among them); the guest's console passes through, and
    /// a summary and a JSON report of every epoch follow.
    Demo {
        /// Number of devices: device 0 runs the guest, the others are
        /// standbys kept in sync over the emulated link (with --switch-at or
        /// --failover-at the guest moves among them).
        #[arg(long, default_value_t = 1)]
        devices: u32,
        /// Link profile between the devices: loopback, wifi (50 Mbit/s,
        /// 5 ms), lte (10 Mbit/s, 40 ms), bt (2 Mbit/s, 30 ms); options as
        /// in `lte,loss=1%,jitter=2`.
        #[arg(long, default_value = "wifi")]
        link: String,
        /// Guest workload: video, storage, browse, idle, counter or memtouch.
        #[arg(long, default_value = "video", conflicts_with = "workload_exec")]
        workload: String,
        /// Run this static arm64 Linux program (copied into the initramfs) as
        /// the workload, with the arguments that follow it. Put it last.
        #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PATH [ARGS]")]
        workload_exec: Option<Vec<String>>,
        /// How long the workload runs, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Epoch policy: interval:<duration>, threshold:<size>, adaptive, switch-only, or off.
        #[arg(long, default_value = "interval:200ms")]
        policy: String,
        /// Keep a second image built only from the encoded epochs and check
        /// it against guest RAM at every cut.
        #[arg(long)]
        verify: bool,
        /// Write the JSON report here (default target/vmsync/report.json).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Guest RAM in MiB.
        #[arg(long, default_value_t = 256)]
        mem: u64,
        /// Move the running guest to another device at these times (seconds
        /// since the devices started, comma-separated). Each sends the
        /// hypervisor's switch command (Ctrl-] "switch") to the target's
        /// console, by default the next device round robin after the one
        /// running the guest. With this or --failover-at every device boots
        /// the same guest and policy, device 0 starting with it; the report
        /// gains "switches" and the guest's verdict, and the command fails if
        /// a switch's digests differ, the guest rebooted or a requested
        /// switch did not happen. Needs --devices 2 or more.
        #[arg(long, value_delimiter = ',', value_name = "S[,S...]")]
        switch_at: Vec<f64>,
        /// The target device (0-based) of each --switch-at, in time order.
        #[arg(long, value_delimiter = ',', value_name = "I[,I...]", requires = "switch_at")]
        switch_to: Vec<usize>,
        /// At this time (seconds since the start) kill the QEMU of the device
        /// running the guest and tell the next device (round robin) to take
        /// over from its last committed epoch (Ctrl-] "failover").
        #[arg(long, value_name = "S")]
        failover_at: Option<f64>,
    },
    /// Run every host test and the QEMU tests (installs QEMU and clang from
    /// Debian packages when missing).
    Test {
        /// Only the host tests and bare-metal builds; no QEMU.
        #[arg(long)]
        host_only: bool,
        /// Only QEMU tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// The feasibility study: one guest run per workload × policy pair
    /// (real Debian programs and synthetic ones), then results.csv,
    /// report.md and plots (PNG, SVG) of the bytes each policy sends.
    Study(study::StudyArgs),
    /// Measurements, as ratios against a baseline in the same run.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
}

/// Which guest to boot. Defaults: the prepared Debian kernel and initramfs.
#[derive(Args, Clone)]
pub struct GuestArgs {
    /// An arm64 Linux `Image` (or `Image.gz`) to boot instead of the prepared one.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// An initramfs to pass to the kernel (default: the prepared one when
    /// --kernel is not given, none otherwise).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// The whole kernel command line.
    #[arg(long, default_value = DEFAULT_APPEND)]
    append: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
}

pub const DEFAULT_APPEND: &str = "console=ttyAMA0 vmsync.workload=counter vmsync.seconds=5";

pub struct ResolvedGuest {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    append: String,
    mem: u64,
}

impl GuestArgs {
    fn resolve(&self) -> Result<ResolvedGuest> {
        let (kernel, initrd) = match &self.kernel {
            Some(k) => (k.clone(), self.initrd.clone()),
            None => {
                let g = guest::prepare(false)?;
                (g.kernel, Some(self.initrd.clone().unwrap_or(g.initrd)))
            }
        };
        Ok(ResolvedGuest { kernel, initrd, append: self.append.clone(), mem: self.mem })
    }
}

fn build_image(g: &ResolvedGuest, out: &std::path::Path) -> Result<()> {
    let hv = image::build_hypervisor()?;
    image::pack(
        &hv,
        &image::GuestSpec { kernel: &g.kernel, initrd: g.initrd.as_deref(), cmdline: &g.append, mem_mib: g.mem, policy: None, verify: false },
        out,
    )?;
    eprintln!("xtask: boot image {} ({} bytes)", out.display(), std::fs::metadata(out)?.len());
    Ok(())
}

fn run(g: &ResolvedGuest, plain: bool, timeout: u64) -> Result<()> {
    apt::ensure_qemu_aarch64()?;
    let mut cmd = if plain {
        let Some(initrd) = &g.initrd else { anyhow::bail!("--plain needs an initrd") };
        qemu_tests::plain_command(&g.kernel, initrd, &g.append, g.mem)
    } else {
        let img = image::out_dir().join("vmsync.img");
        build_image(g, &img)?;
        qemu_tests::qemu_command(&img, qemu_tests::host_mem_mib(g.mem))
    };
    eprintln!("xtask: starting {cmd:?}");
    if timeout == 0 {
        let status = cmd.status()?;
        if !status.success() {
            anyhow::bail!("QEMU exited with {status}");
        }
        return Ok(());
    }
    let out = qemu_tests::run(cmd, std::time::Duration::from_secs(timeout), &[], true)?;
    if out.timed_out() {
        anyhow::bail!("killed after {timeout} s");
    }
    if !out.exited_ok() || out.output.contains("vmsync: error: fatal") {
        anyhow::bail!("the run failed (QEMU status {:?})", out.status);
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Guest { force } => {
            let g = guest::prepare(force)?;
            println!("kernel {} ({})\ninitrd {}", g.kernel.display(), g.kernel_release, g.initrd.display());
            Ok(())
        }
        Cmd::Build { guest, out } => build_image(&guest.resolve()?, &out),
        Cmd::Run { guest, plain, timeout } => run(&guest.resolve()?, plain, timeout),
        Cmd::Demo { devices, link, workload, workload_exec, seconds, policy, verify, report, mem, switch_at, switch_to, failover_at } => {
            if !(1..=4).contains(&devices) {
                anyhow::bail!("--devices {devices}: 1 to 4 devices");
            }
            let devices = devices as usize;
            if !switch_at.is_empty() || failover_at.is_some() {
                // Before building anything: the plan must make sense.
                switching::plan(devices, &switch_at, &switch_to, failover_at)?;
            }
            demo::run(&demo::DemoArgs { devices, link, workload, workload_exec, seconds, policy, verify, report, mem, switch_at, switch_to, failover_at })
        }
        Cmd::Test { host_only, filter } => test::run(host_only, filter.as_deref()),
        Cmd::Bench { what } => bench::run(what),
        Cmd::Study(a) => study::run(&a),
    }
}
