//! `cargo xtask demo`: one device, the guest and its workload under the
//! hypervisor with dirty tracking, its console passed through, then the
//! summary and the JSON report.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{apt, guest, image, multi, report, switching};

pub struct DemoArgs {
    pub devices: usize,
    pub link: String,
    pub workload: String,
    pub workload_exec: Option<Vec<String>>,
    pub seconds: u64,
    pub policy: String,
    pub verify: bool,
    pub report: Option<PathBuf>,
    pub mem: u64,
    /// Seconds from the devices' start at which to move the guest.
    pub switch_at: Vec<f64>,
    /// The target of each switch (default: the next device, round robin).
    pub switch_to: Vec<usize>,
    /// When to kill the device running the guest and fail over to the next.
    pub failover_at: Option<f64>,
}

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

pub fn run(a: &DemoArgs) -> Result<()> {
    apt::ensure_qemu_aarch64()?;
    let g = guest::prepare(false)?;
    let (append, initrd, name) = workload_guest(&a.workload, a.workload_exec.as_deref(), a.seconds, &g.initrd)?;
    let policy = (a.policy != "off").then_some(a.policy.as_str());
    if a.verify && policy.is_none() {
        bail!("--verify needs a policy other than off");
    }
    let hv = image::build_hypervisor()?;
    let img = image::out_dir().join("demo.img");
    let spec = image::GuestSpec { kernel: &g.kernel, initrd: Some(&initrd), cmdline: &append, mem_mib: a.mem, policy, verify: a.verify };
    let deadline = Duration::from_secs(a.seconds + 300);
    let host_mem = qemu_tests::host_mem_mib(a.mem);
    if !a.switch_at.is_empty() || a.failover_at.is_some() {
        return run_switching(a, &hv, &spec, &name, host_mem, deadline);
    }
    let (out, multi) = if a.devices > 1 {
        if policy.is_none() {
            bail!("--devices {} needs a policy other than off", a.devices);
        }
        let profile: qemu_tests::link::Profile = a.link.parse().map_err(|e| anyhow::anyhow!("--link {}: {e:?}", a.link))?;
        let secret = multi::fresh_secret();
        image::pack_extra(&hv, &spec, &multi::active_config(a.devices, &secret), &img)?;
        let mut standby_imgs = Vec::new();
        for i in 1..a.devices {
            let p = image::out_dir().join(format!("demo-standby-{i}.img"));
            image::pack_extra(&hv, &image::GuestSpec { policy: None, verify: false, ..spec }, &multi::standby_config(i, &secret), &p)?;
            standby_imgs.push(p);
        }
        eprintln!("xtask demo: {} devices over {}, workload {name}, policy {}, {} s", a.devices, a.link, a.policy, a.seconds);
        let refs: Vec<&std::path::Path> = standby_imgs.iter().map(|p| p.as_path()).collect();
        let m = multi::run(&img, &refs, host_mem, profile, deadline, true)?;
        (m.active.clone(), Some(m))
    } else {
        image::pack(&hv, &spec, &img)?;
        eprintln!("xtask demo: one device, workload {name}, policy {}, verify {}, {} s", a.policy, if a.verify { "on" } else { "off" }, a.seconds);
        let cmd = qemu_tests::qemu_command(&img, host_mem);
        (qemu_tests::run(cmd, deadline, &[], true)?, None)
    };
    let mut r = report::build(&out.output, &report::RunInfo { workload: &name, policy: &a.policy, seconds: a.seconds });
    if let Some(m) = &multi {
        r["standbys"] = multi::standby_report(m);
        r["totals"]["wire_bytes"] = m.snapshot.delivered_bytes().into();
        r["link"] = a.link.clone().into();
        for s in r["standbys"].as_array().cloned().unwrap_or_default() {
            println!(
                "standby {}: committed epoch {}, digest match {}, reconnects {}, full resyncs {}, received {} bytes",
                s["name"], s["committed_epoch"], s["digest_match"], s["reconnects"], s["full_resyncs"], s["bytes_received"]
            );
        }
    }
    let path = a.report.clone().unwrap_or_else(|| image::out_dir().join("report.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{}report: {}", report::summary(&r), path.display());
    if out.timed_out() {
        bail!("the guest did not power off in time");
    }
    if !out.exited_ok() || out.output.contains("vmsync: error: fatal") {
        bail!("the run failed (QEMU status {:?})", out.status);
    }
    if let Some(st) = r["standbys"].as_array() {
        if st.iter().any(|s| s["digest_match"] != true) {
            bail!("a standby's committed image does not match the active device");
        }
    }
    if r["verify"]["mismatches"].as_u64().unwrap_or(0) > 0 {
        bail!("verify found mismatches: a write escaped tracking");
    }
    Ok(())
}

/// `--switch-at` / `--failover-at`: every device boots the same guest spec
/// (policy included) with its `device_config`; device 0 starts with the
/// guest and the host moves it at the given times.
fn run_switching(a: &DemoArgs, hv: &Path, spec: &image::GuestSpec, name: &str, host_mem: u64, deadline: Duration) -> Result<()> {
    if spec.policy.is_none() {
        bail!("switching needs a policy other than off");
    }
    let actions = switching::plan(a.devices, &a.switch_at, &a.switch_to, a.failover_at)?;
    if let Some(last) = actions.last() {
        if last.at() > Duration::from_secs(a.seconds + 60) {
            eprintln!(
                "xtask demo: warning: {:.0} s is long after the workload's {} s: the guest may have powered off by then",
                last.at().as_secs_f64(),
                a.seconds
            );
        }
    }
    let profile: qemu_tests::link::Profile = a.link.parse().map_err(|e| anyhow::anyhow!("--link {}: {e:?}", a.link))?;
    let secret = multi::fresh_secret();
    let mut imgs = Vec::new();
    for i in 0..a.devices {
        let p = image::out_dir().join(if i == 0 { "demo.img".to_string() } else { format!("demo-{i}.img") });
        image::pack_extra(hv, spec, &qemu_tests::devices::device_config(i, a.devices, 0, &secret), &p)?;
        imgs.push(p);
    }
    eprintln!(
        "xtask demo: {} devices over {}, workload {name}, policy {}, {} s; {}",
        a.devices,
        a.link,
        a.policy,
        a.seconds,
        actions
            .iter()
            .map(|x| match x {
                switching::Action::Switch { at, to } =>
                    format!("switch at {:.1} s{}", at.as_secs_f64(), to.map(|t| format!(" to device-{t}")).unwrap_or_default()),
                switching::Action::Failover { at } => format!("failover at {:.1} s", at.as_secs_f64()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let refs: Vec<&Path> = imgs.iter().map(|p| p.as_path()).collect();
    let missed = std::sync::atomic::AtomicUsize::new(0);
    let run = qemu_tests::devices::Devices::start(&refs, host_mem, profile, true)?.run_script(deadline, |c| {
        missed.store(switching::drive(c, &actions), std::sync::atomic::Ordering::Relaxed);
    })?;
    let t = run.timeline();
    let v = run.guest(a.workload_exec.is_none().then_some(a.workload.as_str()));
    let mut r = report::build(&t.guest_console(&run.outputs), &report::RunInfo { workload: name, policy: &a.policy, seconds: a.seconds });
    r["link"] = a.link.clone().into();
    switching::add_to_report(&mut r, &run, &t, &v);
    let path = a.report.clone().unwrap_or_else(|| image::out_dir().join("report.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{}report: {}", report::summary(&r), path.display());
    println!("consoles: {}-device-K.log", run.log_prefix.display());
    for l in switching::switch_lines(&t) {
        println!("{l}");
    }
    for f in &t.failed {
        println!("failed switch on device-{}: {}", f.device, f.reason);
    }
    for p in &t.problems {
        println!("timeline: {p}");
    }
    println!("{}", switching::guest_line(&v));
    for p in v.problems.iter().take(10) {
        println!("guest: {p}");
    }
    for d in r["devices"].as_array().cloned().unwrap_or_default() {
        println!(
            "{}: held the guest {} time(s), {} at the end, committed epoch {}, digest match {}, received {} bytes",
            d["name"].as_str().unwrap_or(""),
            d["held_guest"],
            d["role_at_end"].as_str().unwrap_or(""),
            d["committed_epoch"],
            d["digest_match"],
            d["bytes_received"]
        );
    }
    if run.timed_out {
        bail!("the guest did not power off in time");
    }
    if run.outputs.iter().any(|o| o.contains("vmsync: error: fatal")) {
        bail!("a device failed (vmsync: error: fatal)");
    }
    if !run.powered_off_ok() {
        bail!("the guest did not power off cleanly (powered off on {:?}, QEMU statuses {:?})", run.powered_off, run.statuses);
    }
    if t.switches.iter().any(|s| !s.digest_match) {
        bail!("a switch's digests do not match");
    }
    if v.rebooted {
        bail!("the guest rebooted");
    }
    let missed = missed.load(std::sync::atomic::Ordering::Relaxed);
    if missed > 0 {
        bail!("{missed} of {} requested switches did not happen", actions.len());
    }
    if let Some(d) = r["devices"].as_array() {
        if d.iter().any(|d| d["digest_match"] == false) {
            bail!("a standby's committed image does not match the guest at that epoch");
        }
    }
    if r["verify"]["mismatches"].as_u64().unwrap_or(0) > 0 {
        bail!("verify found mismatches: a write escaped tracking");
    }
    Ok(())
}
