//! Several devices through the link emulator: device 0 active with the
//! guest, the others standbys (`cargo xtask demo --devices N` and the
//! networked-sync tests).
use std::path::Path;
use std::time::Duration;

use crate::link::{device_mac, Link, LinkConfig, Profile};
use crate::{qemu_command, Background, RunOutput};

pub const SYNC_PORT: u16 = 7000;

pub fn device_ip(i: usize) -> String {
    format!("169.254.0.{}", i + 1)
}

/// Config lines of the active device (device 0).
pub fn active_config(devices: usize, secret: &str) -> String {
    let mut c = format!("net_ip={}\nsecret={secret}\n", device_ip(0));
    for i in 1..devices {
        c += &format!("peer={}:{SYNC_PORT}\n", device_ip(i));
    }
    c
}

/// Config lines of standby `i`.
pub fn standby_config(i: usize, secret: &str) -> String {
    format!("role=standby\nnet_ip={}\nlisten={SYNC_PORT}\nsecret={secret}\n", device_ip(i))
}

pub struct MultiRun {
    pub active: RunOutput,
    pub standbys: Vec<String>,
    pub snapshot: crate::link::Snapshot,
}

/// What a fault script running beside the devices can do: drive the link
/// and watch or restart the standbys.
pub struct Control {
    pub link: crate::link::LinkHandle,
    standbys: std::sync::Arc<std::sync::Mutex<Vec<Standby>>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

struct Standby {
    cmd: Vec<std::ffi::OsString>,
    running: Option<Background>,
    /// Output of earlier incarnations (before a restart).
    earlier: String,
}

impl Standby {
    fn spawn(&mut self) -> std::io::Result<()> {
        let mut c = std::process::Command::new(&self.cmd[0]);
        c.args(&self.cmd[1..]);
        self.running = Some(Background::spawn(c)?);
        Ok(())
    }
}

impl Control {
    /// Everything standby `i` (1-based) printed so far, restarts included.
    pub fn standby_output(&self, i: usize) -> String {
        let g = self.standbys.lock().expect("standby table");
        let s = &g[i - 1];
        s.earlier.clone() + &s.running.as_ref().map(|b| b.output()).unwrap_or_default()
    }

    /// Waits until standby `i`'s output satisfies `pred` (or the run ends);
    /// true if it did.
    pub fn wait_standby(&self, i: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout && !self.done.load(std::sync::atomic::Ordering::Relaxed) {
            if pred(&self.standby_output(i)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Whether the active device has powered off (the run is ending).
    pub fn finished(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Kills standby `i` and boots it again from its image: it comes back
    /// holding nothing.
    pub fn restart_standby(&self, i: usize) -> std::io::Result<()> {
        let mut g = self.standbys.lock().expect("standby table");
        let s = &mut g[i - 1];
        if let Some(b) = s.running.take() {
            s.earlier += &b.stop();
            s.earlier += "\n--- restarted ---\n";
        }
        s.spawn()
    }
}

/// Boots the standbys, then the active device with `active_img`, waits for
/// it to power off, lets the standbys commit, and stops them.
pub fn run(active_img: &Path, standby_imgs: &[&Path], host_mem: u64, profile: Profile, deadline: Duration, echo: bool) -> std::io::Result<MultiRun> {
    run_scripted(active_img, standby_imgs, host_mem, profile, deadline, echo, None)
}

/// A fault script: runs on its own thread beside the devices.
pub type Script = Box<dyn FnOnce(&Control) + Send>;

/// `run`, with a script on its own thread driving faults while it runs.
pub fn run_scripted(
    active_img: &Path,
    standby_imgs: &[&Path],
    host_mem: u64,
    profile: Profile,
    deadline: Duration,
    echo: bool,
    script: Option<Script>,
) -> std::io::Result<MultiRun> {
    run_with_hosts(active_img, standby_imgs, 0, host_mem, profile, deadline, echo, script)
}

/// `run_scripted` with `hosts` more devices on the link after the standbys
/// that no QEMU takes: the script plays them (`crate::third_host`).
#[allow(clippy::too_many_arguments)]
pub fn run_with_hosts(
    active_img: &Path,
    standby_imgs: &[&Path],
    hosts: usize,
    host_mem: u64,
    profile: Profile,
    deadline: Duration,
    echo: bool,
    script: Option<Script>,
) -> std::io::Result<MultiRun> {
    let devices = standby_imgs.len() + 1 + hosts;
    let link = Link::start(LinkConfig::new(devices, profile))?;
    let mut table = Vec::new();
    for (k, img) in standby_imgs.iter().enumerate() {
        let i = k + 1;
        let mut cmd = qemu_command(img, host_mem);
        cmd.args(link.qemu_net_args(i, device_mac(i)));
        let argv = std::iter::once(cmd.get_program().to_os_string()).chain(cmd.get_args().map(|a| a.to_os_string())).collect();
        let mut s = Standby { cmd: argv, running: None, earlier: String::new() };
        s.spawn()?;
        table.push(s);
    }
    let standbys = std::sync::Arc::new(std::sync::Mutex::new(table));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control = Control { link: link.handle(), standbys: standbys.clone(), done: done.clone() };
    let script_thread = script.map(|f| std::thread::spawn(move || f(&control)));
    let mut cmd = qemu_command(active_img, host_mem);
    cmd.args(link.qemu_net_args(0, device_mac(0)));
    let active = crate::run(cmd, deadline, &[], echo)?;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = script_thread {
        let _ = t.join();
    }
    // The active device flushed its last epoch before powering off; give the
    // standbys a moment to print their commits.
    std::thread::sleep(Duration::from_millis(500));
    let snapshot = link.snapshot();
    let _ = std::fs::write(active_img.with_file_name("link-snapshot.txt"), format!("{snapshot:#?}"));
    let mut outs = Vec::new();
    for s in standbys.lock().expect("standby table").iter_mut() {
        let mut o = core::mem::take(&mut s.earlier);
        if let Some(b) = s.running.take() {
            o += &b.stop();
        }
        outs.push(o);
    }
    // Their consoles, for a look afterwards.
    for (k, o) in outs.iter().enumerate() {
        let _ = std::fs::write(active_img.with_file_name(format!("standby-{}.log", k + 1)), o);
    }
    Ok(MultiRun { active, standbys: outs, snapshot })
}
