//! The report side of `cargo xtask demo --devices N --no-switch`: device 0
//! runs the guest, the others follow as standbys (configs from
//! `qemu_tests::multi`; the run is `qemu_tests::devices`).
use qemu_tests::link::Snapshot;
use qemu_tests::{digests, lag_summary, peer_stat};

use crate::report::StandbyEntry;

pub use qemu_tests::multi::{active_config, standby_config};

/// The `standbys` entries of the report: committed epoch, whether its
/// digest equals the active device's at that epoch, the counters, and its
/// lag (the most bytes it was owed; when it was last back in step, ms
/// since the active device started, null if it never lagged).
/// `active` is device 0's console, `standbys[k]` device k+1's.
pub fn standby_report(active: &str, standbys: &[String], snapshot: &Snapshot) -> Vec<StandbyEntry> {
    let active_digests = digests(active);
    standbys
        .iter()
        .enumerate()
        .map(|(k, out)| {
            let i = k + 1;
            let commits = digests(out);
            let last = commits.last().cloned();
            let matches = |(e, d): &(u64, String)| active_digests.iter().any(|(ae, ad)| ae == e && ad == d);
            let all_match = !commits.is_empty() && commits.iter().all(matches);
            let received: u64 = snapshot.dirs.iter().filter(|d| d.to == i).map(|d| d.bytes).sum();
            let lag = lag_summary([active], i);
            StandbyEntry {
                name: format!("device-{i}"),
                committed_epoch: last.as_ref().map(|c| c.0).unwrap_or(0),
                commits: commits.len() as u64,
                digest_match: last.as_ref().map(matches).unwrap_or(false),
                all_commits_match: all_match,
                reconnects: peer_stat(active, k + 1, "reconnects"),
                full_resyncs: peer_stat(active, k + 1, "full_resyncs"),
                bytes_received: received,
                max_lag_bytes: lag.max_lag_bytes,
                caught_up_at_ms: lag.caught_up_at_ms,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_entries_carry_their_lag() {
        let active = "vmsync: lag standby=1 addr=169.254.0.2 epochs=4 owed_pages=100 queued_bytes=5000 owed_bytes=414600 drain_bps=0 in_step=0 at_ms=9000\n\
                      vmsync: lag standby=1 addr=169.254.0.2 epochs=2 owed_pages=10 queued_bytes=5000 owed_bytes=45960 drain_bps=800000 in_step=0 at_ms=10000\n\
                      vmsync: lag standby=1 addr=169.254.0.2 epochs=0 owed_pages=0 queued_bytes=0 owed_bytes=0 drain_bps=700000 in_step=1 at_ms=10400\n";
        let r = standby_report(active, &[String::new(), String::new()], &Snapshot::default());
        assert_eq!(r[0].max_lag_bytes, 414_600);
        assert_eq!(r[0].caught_up_at_ms, Some(10_400));
        assert_eq!(r[1].max_lag_bytes, 0);
        assert_eq!(r[1].caught_up_at_ms, None, "device 2 never lagged");
    }
}
