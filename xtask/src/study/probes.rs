//! Shadow budgets measured in one guest run: the run keeps its own budget
//! (the first of `--shadows`) and the hypervisor's shadow probes
//! (`shadow_probes=`, `sync_core::probe`) count every cut again at each
//! budget of the list, its own included, logging
//! `vmsync: shadow probe <budget> <epoch line>`. Two runs never write the
//! same pages, so budgets compared across runs measured the runs' noise;
//! here every budget is given the very same pages.
//!
//! The probe of the run's own budget must report the link's own figures,
//! epoch by epoch: that checks the probes against the real encoder at
//! every run, and a run where it does not is an error.
use anyhow::{bail, Context, Result};
use sync_core::stats::{parse_epoch_line, EpochStats, STEADY_STATE_LOG};

use super::results::{self, Row};
use crate::report;

/// The hypervisor's name of a budget (its `ShadowShare` display): `full`
/// for 100, else `P%`.
pub fn label(shadow: u8) -> String {
    if shadow == 100 {
        "full".into()
    } else {
        format!("{shadow}%")
    }
}

/// The guest config line that probes `budgets`.
pub fn config_line(budgets: &[u8]) -> String {
    format!("shadow_probes={}\n", budgets.iter().map(|&b| label(b)).collect::<Vec<_>>().join(","))
}

/// The epochs probe `shadow` counted in `output`, in order.
pub fn epochs(output: &str, shadow: u8) -> Vec<EpochStats> {
    let marker = format!("vmsync: shadow probe {} ", label(shadow));
    output.lines().filter_map(|l| l.find(&marker).map(|i| &l[i + marker.len()..])).filter_map(|l| parse_epoch_line(l.trim()).ok()).collect()
}

/// The rows of one run of `workload` under `policy` that kept `budgets[0]`
/// and probed every budget of `budgets`: the run's own row (from the link's
/// epoch lines), then one row per other budget from its probe's lines.
/// Fails when the own budget's probe differs from the link at any epoch,
/// or a probe logged no steady state.
pub fn rows(workload: &str, policy: &str, budgets: &[u8], progress_field: Option<&str>, output: &str) -> Result<Vec<Row>> {
    let Some(&own) = budgets.first() else { bail!("no shadow budget") };
    let link = report::epochs(output);
    check_own(&link, &epochs(output, own), own)?;
    let own_row = results::row(workload, policy, own, progress_field, output)?;
    let marker = format!("vmsync: {STEADY_STATE_LOG}");
    // Checked by `results::row` above.
    let at = output.find(&marker).context("no steady state")?;
    let (before, after) = output.split_at(at);
    let mut rows = vec![own_row.clone()];
    for &b in &budgets[1..] {
        let start = epochs(before, b).pop().with_context(|| format!("shadow probe {} counted no epoch before the steady state", label(b)))?;
        let steady = epochs(after, b);
        let mut row = results::row_of(workload, policy, b, &start, &steady)?;
        row.progress_rate = own_row.progress_rate;
        rows.push(row);
    }
    Ok(rows)
}

/// The probe of the run's own budget counted exactly the link's epochs.
fn check_own(link: &[EpochStats], probe: &[EpochStats], own: u8) -> Result<()> {
    if link.len() != probe.len() {
        bail!("shadow probe {} counted {} epochs, the link {}: is shadow_probes= on?", label(own), probe.len(), link.len());
    }
    if let Some((l, p)) = link.iter().zip(probe).find(|(l, p)| l != p) {
        bail!("shadow probe {} differs from the link at epoch {}: link `{l}`, probe `{p}`", label(own), l.epoch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: u64, sealed: u64, at_ms: u64) -> EpochStats {
        EpochStats {
            epoch: n,
            dirty_pages: 10,
            sent_pages: 10,
            changed_bytes: sealed,
            encoded_bytes: sealed,
            compressed_bytes: sealed,
            sealed_bytes: sealed,
            pause_us: 100,
            at_ms,
            ..EpochStats::default()
        }
    }

    /// A run keeping 25 % and probing 25 %, full and 10 %: epochs 1 and 2
    /// before the steady state, 3 and 4 in it.
    fn console(own_probe_off_by: u64) -> String {
        let mut s = String::new();
        for (n, at) in [(1, 1000), (2, 2000), (3, 3000), (4, 4000)] {
            let link = epoch(n, 1000 * n, at);
            s += &format!("vmsync: epoch {link}\n");
            s += &format!("vmsync: shadow probe 25% {}\n", EpochStats { sealed_bytes: link.sealed_bytes + own_probe_off_by * (n == 3) as u64, ..link });
            s += &format!("vmsync: shadow probe full {}\n", epoch(n, 900 * n, at));
            s += &format!("vmsync: shadow probe 10% {}\n", epoch(n, 1500 * n, at));
            if n == 2 {
                s += "vmsync-workload: counter=1 checksum=00000000000000ab uptime=5.00 frames=30\n";
                s += &format!("vmsync: {STEADY_STATE_LOG}\n");
            }
        }
        s += "vmsync-workload: counter=2 checksum=00000000000000cd uptime=7.00 frames=90\n";
        s
    }

    #[test]
    fn labels_and_config() {
        assert_eq!(config_line(&[25, 100, 50, 10]), "shadow_probes=25%,full,50%,10%\n");
    }

    #[test]
    fn a_row_per_budget_from_one_run() {
        let rows = rows("dav1d", "interval:200ms", &[25, 100, 10], Some("frames"), &console(0)).unwrap();
        let got: Vec<(u8, u64, u64)> = rows.iter().map(|r| (r.shadow, r.epochs, r.wire_bytes)).collect();
        assert_eq!(got, [(25, 2, 7000), (100, 2, 6300), (10, 2, 10500)]);
        assert!(rows.iter().all(|r| r.seconds == rows[0].seconds && r.progress_rate == Some(30.0)), "{rows:?}");
        // The link's own lines are not a probe's.
        assert_eq!(epochs(&console(0), 100).len(), 4);
        assert_eq!(report::epochs(&console(0)).len(), 4);
    }

    #[test]
    fn an_own_probe_that_differs_from_the_link_fails_the_run() {
        let e = rows("dav1d", "interval:200ms", &[25, 100], Some("frames"), &console(1)).unwrap_err().to_string();
        assert!(e.contains("shadow probe 25% differs from the link at epoch 3"), "{e}");
        let e = rows("dav1d", "interval:200ms", &[50, 100], Some("frames"), &console(0)).unwrap_err().to_string();
        assert!(e.contains("shadow probe 50% counted 0 epochs, the link 4"), "{e}");
    }
}
