//! `cargo xtask bench switch`: moving the running guest from one device to
//! another, two ways, through the link emulator on the same profile in the
//! same run: QEMU's own live migration (the baseline, [`crate::migration`])
//! and a VMsync switch after the standby has been syncing. Goal: VMsync's
//! switch time at most 1/20 of QEMU's migration time.
use anyhow::{anyhow, bail, Result};
use clap::Args;
use std::time::Duration;

use crate::migration::{qemu_migration, MigrationArgs, MigrationFigures};
use crate::{apt, demo, guest, image};

#[derive(Args, Clone, Debug)]
pub struct SwitchArgs {
    /// Link profile both moves go through: loopback, wifi (50 Mbit/s,
    /// 5 ms), lte (10 Mbit/s, 40 ms), bt (2 Mbit/s, 30 ms); options as in
    /// `lte,loss=1%,jitter=2` (loss does not apply to QEMU's TCP stream).
    #[arg(long, default_value = "wifi")]
    pub link: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    pub mem: u64,
    /// Seconds the guest runs its workload (after its first progress line)
    /// before the move is requested; 60 makes "bytes in the minute before"
    /// a whole minute.
    #[arg(long, default_value_t = 60)]
    pub warmup: u64,
    /// Guest workload.
    #[arg(long, default_value = "video")]
    pub workload: String,
    /// Give up on a QEMU migration that has not completed after this many
    /// seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// QEMU's xbzrle cache, MiB.
    #[arg(long, default_value_t = 64)]
    pub xbzrle_cache: u64,
}

/// One column of the table: a move of the running guest, measured from the
/// request to the guest running on the target.
#[derive(Debug, Clone)]
pub struct SwitchFigures {
    pub switch_ms: f64,
    /// Bytes over the link from the request to the guest running.
    pub bytes_during: u64,
    /// Bytes over the link in the minute before the request.
    pub bytes_minute_before: u64,
    /// How long the guest did not run.
    pub pause_ms: f64,
    pub guest_continued: bool,
}

impl From<&MigrationFigures> for SwitchFigures {
    fn from(m: &MigrationFigures) -> SwitchFigures {
        SwitchFigures {
            switch_ms: m.switch_ms,
            bytes_during: m.bytes_during,
            bytes_minute_before: m.bytes_minute_before,
            pause_ms: m.pause_ms,
            guest_continued: m.guest_continued,
        }
    }
}

// ---- VMsync switch: to be wired by the hypervisor's switch -----------------

/// A VMsync switch of the same guest (kernel, initrd, command line, RAM)
/// over the same link profile, after the standby has synced for `warmup`.
/// NOT WIRED YET: returns an error until the hypervisor's switch lands.
fn vmsync_switch(_args: &SwitchArgs, _kernel: &std::path::Path, _initrd: &std::path::Path, _append: &str) -> Result<SwitchFigures> {
    bail!("not wired yet")
}

pub fn run(a: &SwitchArgs) -> Result<()> {
    apt::ensure_qemu_aarch64()?;
    let profile: qemu_tests::link::Profile = a.link.parse().map_err(|e| anyhow!("--link {}: {e:?}", a.link))?;
    let g = guest::prepare(false)?;
    // The workload must outlast boot, warm-up and the migration.
    let seconds = a.warmup + a.timeout + 600;
    let (append, initrd, _) = demo::workload_guest(&a.workload, None, seconds, &g.initrd)?;
    eprintln!("bench switch: QEMU live migration, workload {}, {} MiB, link {profile}, warm-up {} s", a.workload, a.mem, a.warmup);
    let q = qemu_migration(&MigrationArgs {
        kernel: &g.kernel,
        initrd: &initrd,
        append: &append,
        mem_mib: a.mem,
        profile: profile.clone(),
        warmup: Duration::from_secs(a.warmup),
        timeout: Duration::from_secs(a.timeout),
        xbzrle_cache_bytes: a.xbzrle_cache << 20,
        work_dir: &image::out_dir(),
    })?;
    eprintln!("bench switch: VMsync switch");
    let v = vmsync_switch(a, &g.kernel, &initrd, &append);

    println!("switch of the running guest, workload {}, {} MiB, link {profile}, kernel {}", a.workload, a.mem, g.kernel_release);
    println!("  {:<34} {:>16} {:>16}", "", "QEMU migration", "VMsync switch");
    let qc = SwitchFigures::from(&q);
    let vc = v.as_ref().ok();
    let row = |name: &str, f: &dyn Fn(&SwitchFigures) -> String| {
        println!("  {name:<34} {:>16} {:>16}", f(&qc), vc.map(f).unwrap_or_else(|| "-".into()));
    };
    row("request to running on target (ms)", &|c| format!("{:.0}", c.switch_ms));
    row("bytes during the switch", &|c| c.bytes_during.to_string());
    row(&format!("bytes in the {:.0} s before", q.minute_window_s), &|c| c.bytes_minute_before.to_string());
    row("guest pause (ms)", &|c| format!("{:.0}", c.pause_ms));
    row("guest continued", &|c| c.guest_continued.to_string());
    println!(
        "  QEMU detail: total-time {:.0} ms, setup {:.0} ms, downtime {:.0} ms (source's view: stop to last byte written), pause {}",
        q.qemu_total_ms,
        q.qemu_setup_ms,
        q.qemu_downtime_ms,
        if q.pause_from_events { "from STOP/RESUME events" } else { "is QEMU's downtime (events missed)" }
    );
    println!(
        "               ram transferred {} B in {} passes, xbzrle {} B in {} pages, progress counter {:?} on the source -> {:?} on the destination",
        q.ram_transferred, q.dirty_sync_count, q.xbzrle_bytes, q.xbzrle_pages, q.last_counter_source, q.first_counter_destination
    );
    match &v {
        Ok(v) => {
            let ratio = v.switch_ms / q.switch_ms;
            println!("  ratio VMsync/QEMU switch time {ratio:.3} (goal <= 0.050: {})", if ratio <= 0.05 { "met" } else { "not met" });
        }
        Err(e) => println!("  ratio VMsync/QEMU switch time: - (VMsync switch: {e})"),
    }
    if !q.guest_continued {
        bail!("the guest did not continue after QEMU's migration");
    }
    match v {
        Ok(v) if !v.guest_continued => bail!("the guest did not continue after the VMsync switch"),
        Ok(_) => Ok(()),
        Err(e) => Err(e.context("VMsync switch")),
    }
}
