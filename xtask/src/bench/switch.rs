//! `cargo xtask bench switch`: moving the running guest from one device to
//! another, two ways, through the link emulator on the same profile in the
//! same run: QEMU's own live migration (the baseline, [`crate::migration`])
//! and a VMsync switch after the standby has been syncing. Goal: VMsync's
//! switch time at most 1/20 of QEMU's migration time.
use anyhow::{bail, Result};
use clap::Args;
use qemu_tests::link::Profile;
use std::time::Duration;

use crate::migration::{qemu_migration, MigrationArgs, MigrationFigures};
use crate::{apt, cli, demo, guest, image};

#[derive(Args, Clone, Debug)]
pub struct SwitchArgs {
    /// Link profile both moves go through: loopback, wifi (50 Mbit/s,
    /// 5 ms), lte (10 Mbit/s, 40 ms), bt (2 Mbit/s, 30 ms); options as in
    /// `lte,loss=1%,jitter=2` (loss does not apply to QEMU's TCP stream).
    #[arg(long, default_value = "wifi", value_parser = cli::link)]
    pub link: Profile,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    pub mem: u64,
    /// Seconds the guest runs its workload (after its first progress line)
    /// before the move is requested; 60 makes "bytes in the minute before"
    /// a whole minute.
    #[arg(long, default_value_t = 60)]
    pub warmup: u64,
    /// Guest workload: video, storage, browse, idle, counter, memtouch or
    /// burst (incompressible writes, then idle).
    #[arg(long, default_value = "video", value_parser = cli::synthetic_workload)]
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

/// A VMsync switch of the same guest (kernel, initrd, command line, RAM)
/// over the same link profile: two devices, the guest on device 0 syncing
/// to device 1 for `warmup` seconds after its first progress line, then
/// device 1 asks for the guest. The switch time is the hypervisor's own
/// figure on device 1 (SwitchRequest sent to the guest's first instruction
/// there, its own clock); bytes are the link emulator's counters, both
/// directions. The guest's pause is at most the switch time (it runs on
/// device 0 until the request arrives).
fn vmsync_switch(a: &SwitchArgs, profile: Profile, kernel: &std::path::Path, initrd: &std::path::Path, append: &str) -> Result<SwitchFigures> {
    use qemu_tests::devices::{device_config, Devices, SwitchOutcome};
    let hv = image::build_hypervisor()?;
    let spec = image::GuestSpec { kernel, initrd: Some(initrd), cmdline: append, mem_mib: a.mem, policy: Some("interval:200ms"), verify: false, shadow: None };
    let secret = crate::pair::fresh_secret()?;
    let imgs: Vec<std::path::PathBuf> = (0..2).map(|i| image::out_dir().join(format!("bench-switch-{i}.img"))).collect();
    for (i, p) in imgs.iter().enumerate() {
        image::pack_extra(&hv, &spec, &device_config(i, 2, 0, &secret), p)?;
    }
    let refs: Vec<&std::path::Path> = imgs.iter().map(|p| p.as_path()).collect();
    let total = |s: &qemu_tests::link::Snapshot| s.dirs.iter().map(|d| d.bytes).sum::<u64>();
    let deadline = Duration::from_secs(a.warmup + a.timeout + 300);
    let outcome = std::sync::Mutex::new(None);
    let run = Devices::start(&refs, qemu_tests::host_mem_mib(a.mem), profile, false)?.run_script(deadline, |c| {
        let progressed = c.wait_line(0, "vmsync-workload: counter=", Duration::from_secs(a.timeout));
        let before = c.link().snapshot();
        if progressed && c.sleep(Duration::from_secs(a.warmup)) {
            let at_request = c.link().snapshot();
            eprintln!("bench switch: asking device 1 for the guest");
            let r = c.switch_and_wait(1, Duration::from_secs(60));
            let after = c.link().snapshot();
            // The guest's next lines on its new device show it went on.
            let lines = c.count(1, "vmsync-workload: counter=");
            let went_on = r == SwitchOutcome::In && c.wait_for(1, Duration::from_secs(30), |o| o.matches("vmsync-workload: counter=").count() >= lines + 2);
            *outcome.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((r, total(&at_request) - total(&before), total(&after) - total(&at_request), at_request.elapsed - before.elapsed, went_on));
        }
        let _ = c.kill(0);
        let _ = c.kill(1);
    })?;
    let Some((r, minute_before, during, window, went_on)) = outcome.into_inner().unwrap_or_else(|e| e.into_inner()) else {
        bail!("the guest's workload never ran on device 0 (consoles: {}-device-K.log)", run.log_prefix.display());
    };
    if r != SwitchOutcome::In {
        bail!("the switch did not happen: {r:?} (consoles: {}-device-K.log)", run.log_prefix.display());
    }
    let t = run.timeline();
    let Some(s) = t.switches.first() else { bail!("no switch in the consoles ({}-device-K.log)", run.log_prefix.display()) };
    let g = run.guest(Some(&a.workload));
    eprintln!(
        "bench switch: VMsync switch at epoch {}, final epoch {} B, digest match {}, old device paused {:?} ms; bytes before over {:.0} s",
        s.epoch,
        s.final_epoch_bytes,
        s.digest_match,
        s.pause_ms,
        window.as_secs_f64()
    );
    Ok(SwitchFigures {
        switch_ms: s.latency_ms as f64,
        bytes_during: during,
        bytes_minute_before: minute_before,
        pause_ms: s.latency_ms as f64,
        guest_continued: went_on && s.digest_match && !g.rebooted && g.counter_continuous && g.time_monotonic,
    })
}

pub fn run(a: &SwitchArgs) -> Result<()> {
    apt::ensure_qemu_aarch64()?;
    let profile = a.link.clone();
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
    let v = vmsync_switch(a, profile.clone(), &g.kernel, &initrd, &append);

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
    row("guest pause (ms; VMsync: at most)", &|c| format!("{:.0}", c.pause_ms));
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
