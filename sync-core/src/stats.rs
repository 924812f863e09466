//! Per-epoch sync figures and their totals, with a one-line `key=value`
//! rendering that the hypervisor prints and host tests parse back.
//!
//! Line formats (space-separated, keys in this order, all integers):
//!   `epoch=3 dirty_pages=.. dirty_bytes=.. changed_bytes=.. ...`
//!   `epochs=12 dirty_pages=.. dirty_bytes=.. changed_bytes=.. ...`
//! `dirty_bytes` is always dirty_pages × 4096 (what sending whole pages
//! would have moved; the paper's baseline). The epoch line ends with the
//! guest's disk writes in the epoch (`disk_dirty_blocks`,
//! `disk_guest_bytes`, both optional when parsed: lines of older builds
//! read as 0), the totals line before `max_pause_us` likewise.

use core::fmt;

use crate::delta::{EncodeOutcome, RecordKind};

const PAGE_BYTES: u64 = 4096;
/// The unit the guest's disk writes are tracked in.
pub const DISK_BLOCK_BYTES: u64 = 4096;

/// What the hypervisor logs (after its `vmsync: ` prefix) right after the
/// epoch it cuts at the guest workload's first progress line (one second
/// into its run, start-up done): the epochs printed after this line are the
/// workload's steady state.
pub const STEADY_STATE_LOG: &str = "sync: workload running; later epochs are its steady state";

/// Figures of one epoch (one standby's stream of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochStats {
    pub epoch: u64,
    /// Pages written in the epoch (dirty set size).
    pub dirty_pages: u64,
    /// Pages sent in the epoch: dirty pages, plus on a resume the pages
    /// changed since the standby's last committed epoch.
    pub sent_pages: u64,
    /// Bytes that differ from the shadow (a page sent whole counts 4096).
    pub changed_bytes: u64,
    /// Page records before compression.
    pub encoded_bytes: u64,
    /// After zstd.
    pub compressed_bytes: u64,
    /// Sealed frames of the epoch on the wire (headers and tags included).
    pub sealed_bytes: u64,
    /// Stage-2 write faults taken in the epoch.
    pub write_faults: u64,
    /// Guest pause for the cut, microseconds.
    pub pause_us: u64,
    /// Records by kind.
    pub zero_pages: u64,
    pub same_pages: u64,
    pub full_pages: u64,
    pub delta_pages: u64,
    /// When the epoch was cut, milliseconds since sync started (optional
    /// in the line; 0 when absent). Rates per second divide by these.
    pub at_ms: u64,
    /// 4 KiB blocks of the guest's disk touched by its completed write,
    /// discard and write-zeroes requests in the epoch (not sent yet).
    pub disk_dirty_blocks: u64,
    /// Bytes the guest's completed write requests carried in the epoch.
    pub disk_guest_bytes: u64,
}

impl EpochStats {
    pub fn new(epoch: u64) -> Self {
        Self { epoch, ..Self::default() }
    }

    /// Counts one encoded page: the link's epoch and a shadow probe's
    /// (`probe`) count alike, so their figures compare.
    pub fn add_record(&mut self, r: &EncodeOutcome) {
        self.sent_pages += 1;
        self.changed_bytes += r.changed_bytes as u64;
        self.encoded_bytes += r.len as u64;
        match r.kind {
            RecordKind::Zero => self.zero_pages += 1,
            RecordKind::Same => self.same_pages += 1,
            RecordKind::Full => self.full_pages += 1,
            RecordKind::Delta => self.delta_pages += 1,
        }
    }

    /// What sending every dirty page whole would have moved.
    pub fn dirty_page_bytes(&self) -> u64 {
        self.dirty_pages.saturating_mul(PAGE_BYTES)
    }

    /// What sending every dirty disk block whole would move.
    pub fn disk_dirty_bytes(&self) -> u64 {
        self.disk_dirty_blocks.saturating_mul(DISK_BLOCK_BYTES)
    }
}

impl fmt::Display for EpochStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch={} ", self.epoch)?;
        write_fields(f, &Fields::of_epoch(self))?;
        write!(f, " at_ms={} disk_dirty_blocks={} disk_guest_bytes={}", self.at_ms, self.disk_dirty_blocks, self.disk_guest_bytes)
    }
}

/// Sums over all epochs so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TotalStats {
    pub epochs: u64,
    pub dirty_pages: u64,
    pub sent_pages: u64,
    pub changed_bytes: u64,
    pub encoded_bytes: u64,
    pub compressed_bytes: u64,
    pub sealed_bytes: u64,
    pub write_faults: u64,
    pub pause_us: u64,
    pub max_pause_us: u64,
    pub zero_pages: u64,
    pub same_pages: u64,
    pub full_pages: u64,
    pub delta_pages: u64,
    pub disk_dirty_blocks: u64,
    pub disk_guest_bytes: u64,
}

impl TotalStats {
    pub fn add(&mut self, e: &EpochStats) {
        self.epochs += 1;
        let s = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        s(&mut self.dirty_pages, e.dirty_pages);
        s(&mut self.sent_pages, e.sent_pages);
        s(&mut self.changed_bytes, e.changed_bytes);
        s(&mut self.encoded_bytes, e.encoded_bytes);
        s(&mut self.compressed_bytes, e.compressed_bytes);
        s(&mut self.sealed_bytes, e.sealed_bytes);
        s(&mut self.write_faults, e.write_faults);
        s(&mut self.pause_us, e.pause_us);
        self.max_pause_us = self.max_pause_us.max(e.pause_us);
        s(&mut self.zero_pages, e.zero_pages);
        s(&mut self.same_pages, e.same_pages);
        s(&mut self.full_pages, e.full_pages);
        s(&mut self.delta_pages, e.delta_pages);
        s(&mut self.disk_dirty_blocks, e.disk_dirty_blocks);
        s(&mut self.disk_guest_bytes, e.disk_guest_bytes);
    }

    pub fn dirty_page_bytes(&self) -> u64 {
        self.dirty_pages.saturating_mul(PAGE_BYTES)
    }

    pub fn disk_dirty_bytes(&self) -> u64 {
        self.disk_dirty_blocks.saturating_mul(DISK_BLOCK_BYTES)
    }
}

impl fmt::Display for TotalStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epochs={} ", self.epochs)?;
        write_fields(f, &Fields::of_total(self))?;
        write!(f, " disk_dirty_blocks={} disk_guest_bytes={} max_pause_us={}", self.disk_dirty_blocks, self.disk_guest_bytes, self.max_pause_us)
    }
}

/// The fields both lines share, in their printed order.
struct Fields([(&'static str, u64); 13]);

impl Fields {
    fn of_epoch(e: &EpochStats) -> Self {
        Fields([
            ("dirty_pages", e.dirty_pages),
            ("dirty_bytes", e.dirty_page_bytes()),
            ("sent_pages", e.sent_pages),
            ("changed_bytes", e.changed_bytes),
            ("encoded_bytes", e.encoded_bytes),
            ("compressed_bytes", e.compressed_bytes),
            ("sealed_bytes", e.sealed_bytes),
            ("write_faults", e.write_faults),
            ("pause_us", e.pause_us),
            ("zero_pages", e.zero_pages),
            ("same_pages", e.same_pages),
            ("full_pages", e.full_pages),
            ("delta_pages", e.delta_pages),
        ])
    }
    fn of_total(t: &TotalStats) -> Self {
        Fields([
            ("dirty_pages", t.dirty_pages),
            ("dirty_bytes", t.dirty_page_bytes()),
            ("sent_pages", t.sent_pages),
            ("changed_bytes", t.changed_bytes),
            ("encoded_bytes", t.encoded_bytes),
            ("compressed_bytes", t.compressed_bytes),
            ("sealed_bytes", t.sealed_bytes),
            ("write_faults", t.write_faults),
            ("pause_us", t.pause_us),
            ("zero_pages", t.zero_pages),
            ("same_pages", t.same_pages),
            ("full_pages", t.full_pages),
            ("delta_pages", t.delta_pages),
        ])
    }
}

fn write_fields(f: &mut fmt::Formatter<'_>, fields: &Fields) -> fmt::Result {
    for (i, (k, v)) in fields.0.iter().enumerate() {
        if i > 0 {
            f.write_str(" ")?;
        }
        write!(f, "{k}={v}")?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsParseError {
    /// A token is not `key=value`.
    NotKeyValue,
    BadNumber,
    UnknownKey,
    DuplicateKey,
    MissingKey,
    /// `dirty_bytes` is not dirty_pages × 4096.
    Inconsistent,
}

/// Parses a line printed by `EpochStats`'s Display (possibly after a
/// prefix such as `vmsync: sync `: everything before `epoch=` is skipped).
pub fn parse_epoch_line(line: &str) -> Result<EpochStats, StatsParseError> {
    let start = line.find("epoch=").ok_or(StatsParseError::MissingKey)?;
    let mut e = EpochStats::default();
    let mut seen = 0u32;
    let mut dirty_bytes = None;
    for tok in line[start..].split_ascii_whitespace() {
        let (k, v) = tok.split_once('=').ok_or(StatsParseError::NotKeyValue)?;
        let v: u64 = v.parse().map_err(|_| StatsParseError::BadNumber)?;
        let (bit, slot): (u32, Option<&mut u64>) = match k {
            "epoch" => (0, Some(&mut e.epoch)),
            "dirty_pages" => (1, Some(&mut e.dirty_pages)),
            "dirty_bytes" => (2, None),
            "sent_pages" => (3, Some(&mut e.sent_pages)),
            "changed_bytes" => (4, Some(&mut e.changed_bytes)),
            "encoded_bytes" => (5, Some(&mut e.encoded_bytes)),
            "compressed_bytes" => (6, Some(&mut e.compressed_bytes)),
            "sealed_bytes" => (7, Some(&mut e.sealed_bytes)),
            "write_faults" => (8, Some(&mut e.write_faults)),
            "pause_us" => (9, Some(&mut e.pause_us)),
            "zero_pages" => (10, Some(&mut e.zero_pages)),
            "same_pages" => (11, Some(&mut e.same_pages)),
            "full_pages" => (12, Some(&mut e.full_pages)),
            "delta_pages" => (13, Some(&mut e.delta_pages)),
            "at_ms" => (14, Some(&mut e.at_ms)),
            "disk_dirty_blocks" => (15, Some(&mut e.disk_dirty_blocks)),
            "disk_guest_bytes" => (16, Some(&mut e.disk_guest_bytes)),
            _ => return Err(StatsParseError::UnknownKey),
        };
        if seen & (1 << bit) != 0 {
            return Err(StatsParseError::DuplicateKey);
        }
        seen |= 1 << bit;
        match slot {
            Some(s) => *s = v,
            None => dirty_bytes = Some(v),
        }
    }
    // `at_ms` and the disk's fields (bits 14..=16) are optional.
    if seen & ((1 << 14) - 1) != (1 << 14) - 1 {
        return Err(StatsParseError::MissingKey);
    }
    if dirty_bytes != Some(e.dirty_page_bytes()) {
        return Err(StatsParseError::Inconsistent);
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    fn sample(epoch: u64, k: u64) -> EpochStats {
        EpochStats {
            epoch,
            dirty_pages: 10 * k,
            sent_pages: 11 * k,
            changed_bytes: 1000 * k,
            encoded_bytes: 1200 * k,
            compressed_bytes: 600 * k,
            sealed_bytes: 650 * k,
            write_faults: 12 * k,
            pause_us: 30 * k,
            zero_pages: k,
            same_pages: 2 * k,
            full_pages: 3 * k,
            delta_pages: 5 * k,
            at_ms: 200 * k,
            disk_dirty_blocks: 7 * k,
            disk_guest_bytes: 20_000 * k,
        }
    }

    #[test]
    fn epoch_line_is_exact_and_parses_back() {
        let e = sample(3, 1);
        assert_eq!(
            e.to_string(),
            "epoch=3 dirty_pages=10 dirty_bytes=40960 sent_pages=11 changed_bytes=1000 \
             encoded_bytes=1200 compressed_bytes=600 sealed_bytes=650 write_faults=12 pause_us=30 \
             zero_pages=1 same_pages=2 full_pages=3 delta_pages=5 at_ms=200 disk_dirty_blocks=7 \
             disk_guest_bytes=20000"
        );
        assert_eq!(parse_epoch_line(&format!("vmsync: sync {e}")), Ok(e));
        assert_eq!(e.disk_dirty_bytes(), 7 * 4096);
        // `at_ms` and the disk's fields may be left out (lines of older
        // builds): they read as 0.
        let without = e.to_string().replace(" at_ms=200", "");
        assert_eq!(parse_epoch_line(&without), Ok(EpochStats { at_ms: 0, ..e }));
        let no_disk = e.to_string().replace(" disk_dirty_blocks=7 disk_guest_bytes=20000", "");
        assert!(!no_disk.contains("disk"), "{no_disk}");
        assert_eq!(parse_epoch_line(&no_disk), Ok(EpochStats { disk_dirty_blocks: 0, disk_guest_bytes: 0, ..e }));
    }

    #[test]
    fn parse_rejects_bad_lines() {
        let good = sample(1, 2).to_string();
        assert_eq!(parse_epoch_line("nothing here"), Err(StatsParseError::MissingKey));
        assert_eq!(parse_epoch_line("epoch=1"), Err(StatsParseError::MissingKey));
        assert_eq!(parse_epoch_line(&good.replace("pause_us=60", "pause_us=x")), Err(StatsParseError::BadNumber));
        assert_eq!(parse_epoch_line(&good.replace("pause_us=60", "pause_us")), Err(StatsParseError::NotKeyValue));
        assert_eq!(parse_epoch_line(&format!("{good} extra=1")), Err(StatsParseError::UnknownKey));
        assert_eq!(parse_epoch_line(&format!("{good} pause_us=1")), Err(StatsParseError::DuplicateKey));
        assert_eq!(parse_epoch_line(&good.replace("dirty_bytes=81920", "dirty_bytes=1")), Err(StatsParseError::Inconsistent));
    }

    #[test]
    fn totals_sum_and_render() {
        let mut t = TotalStats::default();
        t.add(&sample(1, 1));
        t.add(&sample(2, 3));
        assert_eq!(t.epochs, 2);
        assert_eq!(t.dirty_pages, 40);
        assert_eq!(t.dirty_page_bytes(), 40 * 4096);
        assert_eq!(t.sealed_bytes, 650 * 4);
        assert_eq!(t.max_pause_us, 90);
        assert_eq!(t.pause_us, 120);
        let line = t.to_string();
        assert!(line.starts_with("epochs=2 dirty_pages=40 dirty_bytes=163840 sent_pages=44 "), "{line}");
        assert_eq!((t.disk_dirty_blocks, t.disk_guest_bytes, t.disk_dirty_bytes()), (28, 80_000, 28 * 4096));
        assert!(line.ends_with(" delta_pages=20 disk_dirty_blocks=28 disk_guest_bytes=80000 max_pause_us=90"), "{line}");
    }
}
