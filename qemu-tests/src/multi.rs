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

/// Boots the standbys, then the active device with `active_img`, waits for
/// it to power off, lets the standbys commit, and stops them.
pub fn run(active_img: &Path, standby_imgs: &[&Path], host_mem: u64, profile: Profile, deadline: Duration, echo: bool) -> std::io::Result<MultiRun> {
    let devices = standby_imgs.len() + 1;
    let link = Link::start(LinkConfig::new(devices, profile))?;
    let mut standbys = Vec::new();
    for (k, img) in standby_imgs.iter().enumerate() {
        let i = k + 1;
        let mut cmd = qemu_command(img, host_mem);
        cmd.args(link.qemu_net_args(i, device_mac(i)));
        standbys.push(Background::spawn(cmd)?);
    }
    let mut cmd = qemu_command(active_img, host_mem);
    cmd.args(link.qemu_net_args(0, device_mac(0)));
    let active = crate::run(cmd, deadline, &[], echo)?;
    // The active device flushed its last epoch before powering off; give the
    // standbys a moment to print their commits.
    std::thread::sleep(Duration::from_millis(500));
    let snapshot = link.snapshot();
    let _ = std::fs::write(active_img.with_file_name("link-snapshot.txt"), format!("{snapshot:#?}"));
    let outs: Vec<String> = standbys.into_iter().map(|s| s.stop()).collect();
    // Their consoles, for a look afterwards.
    for (k, o) in outs.iter().enumerate() {
        let _ = std::fs::write(active_img.with_file_name(format!("standby-{}.log", k + 1)), o);
    }
    Ok(MultiRun { active, standbys: outs, snapshot })
}

