//! The report side of `cargo xtask demo --devices N --no-switch`: device 0
//! runs the guest, the others follow as standbys (configs from
//! `qemu_tests::multi`; the run is `qemu_tests::devices`).
use qemu_tests::link::Snapshot;
use qemu_tests::{digests, peer_stat};
use serde_json::{json, Value};

pub use qemu_tests::multi::{active_config, standby_config};

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

/// The `standbys` entries of the report: committed epoch, whether its
/// digest equals the active device's at that epoch, and the counters.
/// `active` is device 0's console, `standbys[k]` device k+1's.
pub fn standby_report(active: &str, standbys: &[String], snapshot: &Snapshot) -> Value {
    let active_digests = digests(active);
    let entries: Vec<Value> = standbys
        .iter()
        .enumerate()
        .map(|(k, out)| {
            let i = k + 1;
            let commits = digests(out);
            let last = commits.last().cloned();
            let matches = |(e, d): &(u64, String)| active_digests.iter().any(|(ae, ad)| ae == e && ad == d);
            let all_match = !commits.is_empty() && commits.iter().all(matches);
            let received: u64 = snapshot.dirs.iter().filter(|d| d.to == i).map(|d| d.bytes).sum();
            json!({
                "name": format!("device-{i}"),
                "committed_epoch": last.as_ref().map(|c| c.0).unwrap_or(0),
                "commits": commits.len(),
                "digest_match": last.as_ref().map(matches).unwrap_or(false),
                "all_commits_match": all_match,
                "reconnects": peer_stat(active, k + 1, "reconnects"),
                "full_resyncs": peer_stat(active, k + 1, "full_resyncs"),
                "bytes_received": received,
            })
        })
        .collect();
    Value::Array(entries)
}
