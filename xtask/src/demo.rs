//! `cargo xtask demo`: the devices (by default two over wifi, the guest
//! moving to the standby and back), the guest and its workload under the
//! hypervisor with dirty tracking, a status line a second while they run
//! (their consoles go to files), then the summary and the JSON report.
mod args;
mod status;
mod verdict;

use anyhow::{bail, Context, Result};
use qemu_tests::devices::{DevicesControl, DevicesRun};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub use args::{Demo, DemoArgs};
use args::{Mode, Workload};

use crate::{apt, guest, image, multi, report, switching};

/// Guest path of a program given with `--workload-exec`.
const EXEC_PATH: &str = "/bin/vmsync-exec";

/// The kernel command line and initrd for a workload (a named one, or a
/// program copied into the initramfs).
pub fn workload_guest(workload: &str, exec: Option<&[String]>, seconds: u64, base_initrd: &Path) -> Result<(String, PathBuf, String)> {
    let mut append = format!("console=ttyAMA0 vmsync.seconds={seconds}");
    match exec {
        None => {
            append += &format!(" vmsync.workload={workload}");
            Ok((append, base_initrd.to_path_buf(), workload.to_string()))
        }
        Some([path, args @ ..]) => {
            let host = Path::new(path);
            if !host.is_file() {
                bail!("--workload-exec {path}: no such file");
            }
            if args.iter().any(|a| a.contains(',') || a.contains(' ')) {
                bail!("--workload-exec arguments may not contain ',' or spaces (they travel on the kernel command line)");
            }
            let out = image::out_dir().join("initrd-exec.cpio.gz");
            guest::initrd_with_files(base_initrd, &[(EXEC_PATH, host)], &out)?;
            append += &format!(" vmsync.exec={EXEC_PATH}");
            if !args.is_empty() {
                append += &format!(" vmsync.args={}", args.join(","));
            }
            let name = host.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "exec".into());
            Ok((append, out, name))
        }
        Some([]) => bail!("--workload-exec needs a program"),
    }
}

/// How long the devices may run past the workload's own seconds (boot,
/// switches, the last epochs, power-off) before they are stopped.
const SLACK: Duration = Duration::from_secs(300);

pub fn run(d: &Demo) -> Result<()> {
    apt::ensure_qemu_aarch64()?;
    let g = guest::prepare(false)?;
    let (append, initrd, name, init_name) = match &d.workload {
        Workload::Named(w) => {
            let (append, initrd, name) = workload_guest(w, None, d.seconds, &g.initrd)?;
            (append, initrd, name, w.clone())
        }
        Workload::Exec { path, args } => {
            let exec: Vec<String> = std::iter::once(path.to_string_lossy().into_owned()).chain(args.iter().cloned()).collect();
            let (append, initrd, name) = workload_guest("", Some(&exec), d.seconds, &g.initrd)?;
            (append, initrd, name, EXEC_PATH.to_string())
        }
    };
    let hv = image::build_hypervisor()?;
    let policy = d.policy.map(|p| p.to_string());
    let spec = image::GuestSpec {
        kernel: &g.kernel,
        initrd: Some(&initrd),
        cmdline: &append,
        mem_mib: d.mem,
        policy: policy.as_deref(),
        verify: d.verify,
        shadow: d.shadow,
    };
    let imgs = images(d, &hv, &spec)?;
    eprintln!("xtask demo: {}", headline(d, &name));
    if let Mode::Switch(p) = &d.mode {
        let late = p.actions.last().filter(|a| p.clock == switching::Clock::DevicesStart && a.at() > Duration::from_secs(d.seconds + 60));
        if let Some(a) = late {
            eprintln!(
                "xtask demo: warning: {:.0} s is long after the workload's {} s: the guest may have powered off by then",
                a.at().as_secs_f64(),
                d.seconds
            );
        }
    }
    let (run, driven) = start_and_watch(d, &imgs)?;
    finish(d, &run, &driven, &name, &init_name)
}

/// One line for the start: devices, link, workload, policy, plan.
fn headline(d: &Demo, name: &str) -> String {
    let devices = match d.devices {
        1 => "one device".to_string(),
        n => format!("{n} devices over {}", d.link),
    };
    let plan = match &d.mode {
        Mode::One => String::new(),
        Mode::Follow => "; the guest stays on device-0 (--no-switch)".into(),
        Mode::Switch(p) => format!("; {}", switching::describe(p)),
    };
    format!("{devices}, workload {name} for {} s, policy {}, verify {}{plan}", d.seconds, d.policy_text(), if d.verify { "on" } else { "off" })
}

/// The boot images, device 0's first: `demo.img`, then `demo-standby-K.img`
/// (standbys that only follow) or `demo-K.img` (devices that may run the
/// guest).
fn images(d: &Demo, hv: &Path, spec: &image::GuestSpec) -> Result<Vec<PathBuf>> {
    let out = image::out_dir();
    let img = out.join("demo.img");
    let secret = crate::pair::fresh_secret()?;
    match &d.mode {
        Mode::One => {
            image::pack(hv, spec, &img)?;
            Ok(vec![img])
        }
        Mode::Follow => {
            image::pack_extra(hv, spec, &multi::active_config(d.devices, &secret), &img)?;
            let mut imgs = vec![img];
            for i in 1..d.devices {
                let p = out.join(format!("demo-standby-{i}.img"));
                image::pack_extra(hv, &image::GuestSpec { policy: None, verify: false, ..*spec }, &multi::standby_config(i, &secret), &p)?;
                imgs.push(p);
            }
            Ok(imgs)
        }
        Mode::Switch(_) => {
            // Every device boots the same guest spec (policy included).
            let mut imgs = vec![img];
            for i in 1..d.devices {
                imgs.push(out.join(format!("demo-{i}.img")));
            }
            for (i, p) in imgs.iter().enumerate() {
                image::pack_extra(hv, spec, &qemu_tests::devices::device_config(i, d.devices, 0, &secret), p)?;
            }
            Ok(imgs)
        }
    }
}

/// Boots the devices, names their console files, prints a status line a
/// second and carries out the switch plan until the guest powers off.
fn start_and_watch(d: &Demo, imgs: &[PathBuf]) -> Result<(DevicesRun, switching::Driven)> {
    let host_mem = qemu_tests::host_mem_mib(d.mem);
    let devices = match d.mode {
        // No NIC: the single device of old.
        Mode::One => qemu_tests::devices::Devices::start_with(1, qemu_tests::link::Profile::loopback(), &imgs[0], d.console, |_, _| {
            qemu_tests::qemu_command(&imgs[0], host_mem)
        }),
        _ => {
            let refs: Vec<&Path> = imgs.iter().map(|p| p.as_path()).collect();
            qemu_tests::devices::Devices::start(&refs, host_mem, d.link.clone(), d.console)
        }
    }
    .context("starting QEMU")?;
    let logs: Vec<String> = devices.log_paths().iter().map(|p| p.display().to_string()).collect();
    println!("consoles: {} ({})", logs.join(", "), if d.console { "shown here too" } else { "--console shows them here" });
    let plan = match &d.mode {
        Mode::Switch(p) => Some(p),
        _ => None,
    };
    let driven = Mutex::new(switching::Driven::default());
    let run = devices.run_script(Duration::from_secs(d.seconds) + SLACK, |c| {
        std::thread::scope(|s| {
            s.spawn(|| status_lines(c));
            match plan {
                Some(p) => *driven.lock().unwrap_or_else(|e| e.into_inner()) = switching::drive(c, p),
                None => stop_when_device_0_dies(c),
            }
        })
    })?;
    Ok((run, driven.into_inner().unwrap_or_else(|e| e.into_inner())))
}

/// Without switches device 0 runs the guest throughout: when its QEMU
/// ends without the guest powering off, the standbys have nothing left to
/// follow, so the run ends there rather than at the deadline.
fn stop_when_device_0_dies(c: &DevicesControl) {
    while c.sleep(Duration::from_millis(200)) {
        if !c.running(0) {
            if !c.output(0).contains(qemu_tests::switching::POWERED_OFF) {
                c.stop();
            }
            return;
        }
    }
}

/// A status line at every whole second until the run ends.
fn status_lines(c: &DevicesControl) {
    let mut next = Duration::from_secs(1);
    while c.at(next) {
        let running: Vec<bool> = (0..c.devices()).map(|i| c.running(i)).collect();
        let n = c.devices();
        let link = c.link();
        let cut_off: String = (0..n).filter(|&i| n > 1 && (0..n).all(|j| j == i || link.is_cut(i, j))).map(|i| format!(" | device-{i} cut off")).collect();
        println!("{}{cut_off}", status::line(&status::status(&c.outputs(), &running), c.elapsed(), n));
        next = Duration::from_secs(c.elapsed().as_secs() + 1);
    }
}

/// The report, the summary and the verdict of a finished run.
fn finish(d: &Demo, run: &DevicesRun, driven: &switching::Driven, name: &str, init_name: &str) -> Result<()> {
    let t = run.timeline();
    let console = match d.mode {
        Mode::Switch(_) => t.guest_console(&run.outputs),
        _ => run.outputs[0].clone(),
    };
    let mut r = report::build(&console, &report::RunInfo { workload: name, policy: &d.policy_text(), seconds: d.seconds });
    let mut guest = None;
    match &d.mode {
        Mode::One => {}
        Mode::Follow => {
            r.link = Some(d.link.name.clone());
            r.standbys = Some(multi::standby_report(&run.outputs[0], &run.outputs[1..], &run.snapshot));
            r.totals.link_bytes = Some(run.snapshot.delivered_bytes());
        }
        Mode::Switch(_) => {
            r.link = Some(d.link.name.clone());
            let named = match &d.workload {
                Workload::Named(w) => Some(w.as_str()),
                Workload::Exec { .. } => None,
            };
            let v = run.guest(named);
            switching::add_to_report(&mut r, run, &t, &v);
            guest = Some(v);
        }
    }
    let workload = verdict::workload(&console, init_name);
    verdict::add_to_report(&mut r, &workload);
    std::fs::write(&d.report, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", d.report.display()))?;

    println!("\n{}{}", report::summary(&r), report::link_line(&r));
    let or_null = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    for s in r.standbys.iter().flatten() {
        println!(
            "standby {}: committed epoch {}, digest match {}, reconnects {}, full resyncs {}, received {} bytes",
            s.name,
            s.committed_epoch,
            s.digest_match,
            or_null(s.reconnects),
            or_null(s.full_resyncs),
            s.bytes_received
        );
    }
    if let Some(v) = &guest {
        for l in switching::switch_lines(&t) {
            println!("{l}");
        }
        for f in &t.failed {
            println!("failed switch on device-{}: {}", f.device, f.reason);
        }
        for p in &t.problems {
            println!("timeline: {p}");
        }
        for l in switching::heal_lines(&run.outputs, driven) {
            println!("{l}");
        }
        println!("{}", switching::guest_line(v));
        for p in v.problems.iter().take(10) {
            println!("guest: {p}");
        }
        for dev in r.devices.iter().flatten() {
            // Only a standby's last commit is checked against the guest.
            let digest = match dev.digest_match {
                Some(true) => ", digest matches",
                Some(false) => ", digest DIFFERS",
                None => "",
            };
            let role = match dev.role_at_end {
                report::Role::Active => "active",
                report::Role::Standby => "standby",
                report::Role::Killed => "killed",
            };
            println!(
                "{}: held the guest {} time(s), {role} at the end, last committed epoch {}{digest}, received {} bytes",
                dev.name,
                dev.held_guest,
                or_null(dev.committed_epoch),
                dev.bytes_received
            );
        }
    }
    println!("{}", verdict::workload_line(name, &workload));
    println!("report: {}", d.report.display());
    let logs: Vec<String> = (0..run.devices()).map(|k| format!("{}-device-{k}.log", run.log_prefix.display())).collect();
    println!("consoles: {}", logs.join(", "));

    let planned = match &d.mode {
        Mode::Switch(p) => p.actions.len(),
        _ => 0,
    };
    let facts = verdict::Facts {
        timed_out: run.timed_out,
        unclean: unclean(d, run),
        fatal: run.outputs.iter().any(|o| o.contains("vmsync: error: fatal")),
        missed: driven.missed.clone(),
        planned,
        two_at_once: switching::two_at_once(&run.outputs, driven),
        workload: Some(workload),
    };
    let problems = verdict::problems(&r, &facts);
    if !problems.is_empty() {
        bail!("the demo failed: {}", problems.join("; "));
    }
    println!("demo: passed");
    Ok(())
}

/// Why the guest did not power off cleanly, if it did not (a timeout is
/// told apart).
fn unclean(d: &Demo, run: &DevicesRun) -> Option<String> {
    if run.timed_out {
        return None;
    }
    let ok = match d.mode {
        Mode::Switch(_) => run.powered_off_ok(),
        // Device 0 runs the guest throughout.
        _ => run.statuses[0].is_some_and(|s| s.success()),
    };
    (!ok).then(|| format!("powered off on {:?}, QEMU statuses {:?}", run.powered_off.map(|i| format!("device-{i}")), run.statuses))
}
