//! `cargo xtask bench`: end-to-end measurements, always as a ratio against
//! a baseline measured in the same run.
use anyhow::{bail, Result};
use clap::Subcommand;
use std::time::Duration;

use crate::{apt, guest, image};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Guest boot time to its init, under the hypervisor and under plain
    /// QEMU (same kernel, initrd, command line and CPU model).
    Boot {
        /// Boots of each kind; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
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
    }
}

fn boot(runs: usize) -> Result<()> {
    apt::ensure_qemu_aarch64()?;
    let g = guest::prepare(false)?;
    let hv = image::build_hypervisor()?;
    let img = image::out_dir().join("bench-boot.img");
    image::pack(&hv, &image::GuestSpec { kernel: &g.kernel, initrd: Some(&g.initrd), cmdline: APPEND, mem_mib: MEM_MIB, policy: None, verify: false }, &img)?;
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
