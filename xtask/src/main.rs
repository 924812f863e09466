//! `cargo xtask`: build, run, test and measure VMsync.
mod apt;
mod bench;
mod cli;
mod cpio;
mod demo;
mod guest;
mod image;
mod migration;
mod multi;
mod pair;
mod report;
mod study;
mod switching;
mod test;
mod toolchain;

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
        /// Also build the root disk target/guest/root.ext4 (ext4: busybox,
        /// the workloads, the study's Debian programs), which the guest
        /// boots with `root=/dev/vda`.
        #[arg(long)]
        root_disk: bool,
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
        /// A raw disk image (whole 512-byte sectors) attached to the board
        /// as a virtio-blk device. The hypervisor drives it and gives the
        /// guest a virtio disk of the same size over it (/dev/vda once the
        /// guest loads virtio_blk); its writes land in the file. With
        /// --plain the guest drives the device itself.
        #[arg(long, value_name = "RAW_IMAGE", conflicts_with = "root_disk")]
        disk: Option<PathBuf>,
        /// Boot from the root disk: a fresh copy of target/guest/root.ext4
        /// (built when needed) as target/vmsync/run-root.ext4, and
        /// `root=/dev/vda` added to the command line.
        #[arg(long)]
        root_disk: bool,
    },
    /// The VMsync demo: a guest kept in sync and moved between devices.
    ///
    /// By default two devices over emulated wifi, the guest and its
    /// workload on device 0, moved to device 1 halfway through the workload
    /// and back near the end; a status line a second while it runs
    /// (the consoles go to target/vmsync/demo-device-K.log), then a summary
    /// (switch latencies, digests, bytes on the link against whole dirty
    /// pages) and a JSON report. Fails when a check or the workload does.
    Demo(demo::DemoArgs),
    /// Run every host test and the QEMU tests (installs QEMU and clang from
    /// Debian packages when missing).
    Test {
        /// Only the host tests and bare-metal builds; no QEMU.
        #[arg(long)]
        host_only: bool,
        /// Only QEMU tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Also the long QEMU tests (big guests: a 512 MiB standby joining,
        /// a 2 GiB guest), tens of minutes under TCG.
        #[arg(long)]
        long: bool,
    },
    /// The feasibility study: one guest run per workload × policy pair
    /// (real Debian programs and synthetic ones), then results.csv,
    /// report.md and plots (PNG, SVG) of the bytes each policy sends.
    Study(study::StudyArgs),
    /// Pair a set of devices: one fresh pairing secret from the OS's
    /// randomness, written into the guest config (`secret=`) of every boot
    /// image given, in place (all images are checked before any is
    /// written). The secret is never printed or logged.
    Pair {
        /// The boot images of the devices to pair (at least two), e.g.
        /// target/vmsync/demo.img target/vmsync/demo-1.img; each must sync
        /// (`peer=` or `role=standby` in its config).
        #[arg(required = true, num_args = 2.., value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
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
        &image::GuestSpec { kernel: &g.kernel, initrd: g.initrd.as_deref(), cmdline: &g.append, mem_mib: g.mem, policy: None, verify: false, shadow: None },
        out,
    )?;
    eprintln!("xtask: boot image {} ({} bytes)", out.display(), std::fs::metadata(out)?.len());
    Ok(())
}

/// Checks `--disk`: a file of whole 512-byte sectors, at least one.
fn check_disk(path: &std::path::Path) -> Result<()> {
    let len = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("--disk {}: {e}", path.display()))?.len();
    if len == 0 || len % 512 != 0 {
        anyhow::bail!("--disk {}: {len} bytes; a raw disk image is whole 512-byte sectors (e.g. truncate -s 64M disk.img)", path.display());
    }
    Ok(())
}

fn run(g: &ResolvedGuest, plain: bool, timeout: u64, disk: Option<&std::path::Path>) -> Result<()> {
    if let Some(d) = disk {
        check_disk(d)?;
    }
    apt::ensure_qemu_aarch64()?;
    let mut cmd = if plain {
        let Some(initrd) = &g.initrd else { anyhow::bail!("--plain needs an initrd") };
        qemu_tests::plain_command(&g.kernel, initrd, &g.append, g.mem)
    } else {
        let img = image::out_dir().join("vmsync.img");
        build_image(g, &img)?;
        qemu_tests::qemu_command(&img, qemu_tests::host_mem_mib(g.mem))
    };
    if let Some(d) = disk {
        qemu_tests::attach_disk(&mut cmd, d);
    }
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
        Cmd::Guest { force, root_disk } => {
            let (g, disk) = if root_disk {
                let d = guest::prepare_root_disk(force)?;
                (d.guest, Some(d.image))
            } else {
                (guest::prepare(force)?, None)
            };
            println!("kernel {} ({})\ninitrd {}", g.kernel.display(), g.kernel_release, g.initrd.display());
            if let Some(disk) = disk {
                println!("root disk {} (boot with root=/dev/vda)", disk.display());
            }
            Ok(())
        }
        Cmd::Build { guest, out } => build_image(&guest.resolve()?, &out),
        Cmd::Run { guest, plain, timeout, disk, root_disk } => {
            if !root_disk {
                return run(&guest.resolve()?, plain, timeout, disk.as_deref());
            }
            // The prepared initramfs unless one is given: it mounts the disk.
            let d = guest::prepare_root_disk(false)?;
            let g = ResolvedGuest {
                kernel: guest.kernel.unwrap_or(d.guest.kernel),
                initrd: Some(guest.initrd.unwrap_or(d.guest.initrd)),
                append: format!("{} root=/dev/vda", guest.append),
                mem: guest.mem,
            };
            std::fs::create_dir_all(image::out_dir())?;
            let copy = qemu_tests::disk_copy(&d.image, &image::out_dir(), "run-root.ext4")?;
            run(&g, plain, timeout, Some(&copy))
        }
        Cmd::Demo(a) => {
            // Bad input exits here with clap's error (code 2), before
            // anything is built or booted.
            let d = a.check().unwrap_or_else(|e| e.exit());
            demo::run(&d)
        }
        Cmd::Test { host_only, filter, long } => test::run(host_only, filter.as_deref(), long),
        Cmd::Pair { images } => pair::run(&images),
        Cmd::Bench { what } => bench::run(what),
        Cmd::Study(a) => study::run(&a),
    }
}
