//! Several devices through the link emulator: device 0 active with the
//! guest, the others standbys. Used by `cargo xtask demo --devices N`.
use anyhow::Result;
use qemu_tests::link::{device_mac, Link, LinkConfig, Profile};
use qemu_tests::{digests, peer_stat, qemu_command, Background, RunOutput};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;


pub const SYNC_PORT: u16 = 7000;

pub fn device_ip(i: usize) -> String {
    format!("169.254.0.{}", i + 1)
}

/// A pairing secret for this run: both ends get it in their config.
pub fn fresh_secret() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut x = (t as u64) ^ ((std::process::id() as u64) << 32);
    (0..32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:02x}", x as u8)
        })
        .collect()
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
    pub snapshot: qemu_tests::link::Snapshot,
}

/// Boots the standbys, then the active device with `active_img`, waits for
/// it to power off, lets the standbys commit, and stops them.
pub fn run(active_img: &Path, standby_imgs: &[&Path], host_mem: u64, profile: Profile, deadline: Duration, echo: bool) -> Result<MultiRun> {
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
    let active = qemu_tests::run(cmd, deadline, &[], echo)?;
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

/// The `standbys` entries of the report: committed epoch, whether its
/// digest equals the active device's at that epoch, and the counters.
pub fn standby_report(r: &MultiRun) -> Value {
    let active_digests = digests(&r.active.output);
    let entries: Vec<Value> = r
        .standbys
        .iter()
        .enumerate()
        .map(|(k, out)| {
            let i = k + 1;
            let commits = digests(out);
            let last = commits.last().cloned();
            let matches = |(e, d): &(u64, String)| active_digests.iter().any(|(ae, ad)| ae == e && ad == d);
            let all_match = !commits.is_empty() && commits.iter().all(matches);
            let received: u64 = r.snapshot.dirs.iter().filter(|d| d.to == i).map(|d| d.bytes).sum();
            json!({
                "name": format!("device-{i}"),
                "committed_epoch": last.as_ref().map(|c| c.0).unwrap_or(0),
                "commits": commits.len(),
                "digest_match": last.as_ref().map(matches).unwrap_or(false),
                "all_commits_match": all_match,
                "reconnects": peer_stat(&r.active.output, k + 1, "reconnects"),
                "full_resyncs": peer_stat(&r.active.output, k + 1, "full_resyncs"),
                "bytes_received": received,
            })
        })
        .collect();
    Value::Array(entries)
}
