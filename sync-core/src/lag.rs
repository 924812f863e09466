//! A standby's lag behind the active device, as one console line at most
//! once a second while it lags (a catch-up is in progress), and one line
//! when it is in step again. The hypervisor prints them; the host parses
//! them back into the report (`max_lag_bytes`, `caught_up_at_ms`).
//!
//! Line format (after the logger's `vmsync: ` prefix; keys in this order,
//! all integers):
//!   `lag standby=1 addr=169.254.0.2 epochs=3 owed_pages=900 queued_bytes=70000 owed_bytes=3756400 drain_bps=250000 in_step=0 at_ms=5120`
//! - `standby`, `addr`: the active device's id for the standby and its
//!   IPv4 address (which names the device across switches);
//! - `epochs`: cuts the standby has not committed (last cut − its last Ack);
//! - `owed_pages`: pages its catch-up still owes (not yet queued);
//! - `queued_bytes`: sealed bytes waiting for its socket;
//! - `owed_bytes`: queued_bytes + owed_pages × 4096, an upper bound of what
//!   it still needs before compression (zstd only makes it smaller);
//! - `drain_bps`: bytes its socket took per second since the previous line
//!   (0 on the first line of a lag: no interval yet);
//! - `in_step`: 1 on the line that ends a lag (its figures are then those
//!   of the moment it caught up);
//! - `at_ms`: the active device's clock (ms since it started).

use core::fmt;
use core::net::Ipv4Addr;

const PAGE_BYTES: u64 = 4096;

/// Lines of one lag are this far apart at least.
pub const INTERVAL_MS: u64 = 1000;

/// One link's lag now (what `LagLog::tick` is told while it lags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LagNow {
    pub epochs: u64,
    pub owed_pages: u64,
    pub queued_bytes: u64,
}

/// One printed line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LagLine {
    pub standby: u64,
    pub addr: Ipv4Addr,
    pub epochs: u64,
    pub owed_pages: u64,
    pub queued_bytes: u64,
    pub drain_bps: u64,
    pub in_step: bool,
    pub at_ms: u64,
}

impl Default for LagLine {
    fn default() -> Self {
        Self { standby: 0, addr: Ipv4Addr::UNSPECIFIED, epochs: 0, owed_pages: 0, queued_bytes: 0, drain_bps: 0, in_step: false, at_ms: 0 }
    }
}

impl LagLine {
    /// Bytes it still needs at most: what is queued plus the owed pages whole.
    pub fn owed_bytes(&self) -> u64 {
        self.queued_bytes.saturating_add(self.owed_pages.saturating_mul(PAGE_BYTES))
    }
}

impl fmt::Display for LagLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lag standby={} addr={} epochs={} owed_pages={} queued_bytes={} owed_bytes={} drain_bps={} in_step={} at_ms={}",
            self.standby,
            self.addr,
            self.epochs,
            self.owed_pages,
            self.queued_bytes,
            self.owed_bytes(),
            self.drain_bps,
            self.in_step as u8,
            self.at_ms
        )
    }
}

/// Decides when a standby's lag is worth a line.
#[derive(Clone, Copy, Debug, Default)]
pub struct LagLog {
    lagging: bool,
    /// When the last line was printed and the bytes sent by then.
    mark_ms: u64,
    mark_sent: u64,
}

impl LagLog {
    /// Called every pump: `lag` is Some while the standby lags; `sent` is
    /// the bytes its socket has taken so far (monotonic). Returns the line
    /// to print, if one is due.
    pub fn tick(&mut self, standby: u64, addr: Ipv4Addr, now_ms: u64, lag: Option<LagNow>, sent: u64) -> Option<LagLine> {
        let due = match (self.lagging, lag.is_some()) {
            (false, false) => return None,
            // A lag starts or ends: a line now.
            (false, true) | (true, false) => true,
            (true, true) => now_ms.saturating_sub(self.mark_ms) >= INTERVAL_MS,
        };
        if !due {
            return None;
        }
        let drain_bps = match self.lagging {
            true => sent.saturating_sub(self.mark_sent).saturating_mul(1000) / now_ms.saturating_sub(self.mark_ms).max(1),
            false => 0,
        };
        let l = lag.unwrap_or_default();
        self.lagging = lag.is_some();
        (self.mark_ms, self.mark_sent) = (now_ms, sent);
        Some(LagLine {
            standby,
            addr,
            epochs: l.epochs,
            owed_pages: l.owed_pages,
            queued_bytes: l.queued_bytes,
            drain_bps,
            in_step: lag.is_none(),
            at_ms: now_ms,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LagParseError {
    /// No `lag standby=` in the line.
    NotALagLine,
    NotKeyValue,
    BadNumber,
    UnknownKey,
    MissingKey,
    /// `owed_bytes` is not queued_bytes + owed_pages × 4096.
    Inconsistent,
}

/// Parses a line printed by `LagLine`'s Display; anything before `lag
/// standby=` (such as `vmsync: `) is skipped.
pub fn parse_lag_line(line: &str) -> Result<LagLine, LagParseError> {
    let start = line.find("lag standby=").ok_or(LagParseError::NotALagLine)?;
    let mut l = LagLine::default();
    let (mut seen, mut owed_bytes) = (0u32, 0u64);
    for tok in line[start + 4..].split_ascii_whitespace() {
        let (k, v) = tok.split_once('=').ok_or(LagParseError::NotKeyValue)?;
        if k == "addr" {
            l.addr = v.parse().map_err(|_| LagParseError::BadNumber)?;
            seen |= 1 << 8;
            continue;
        }
        let v: u64 = v.parse().map_err(|_| LagParseError::BadNumber)?;
        let bit = match k {
            "standby" => 0,
            "epochs" => 1,
            "owed_pages" => 2,
            "queued_bytes" => 3,
            "owed_bytes" => 4,
            "drain_bps" => 5,
            "in_step" => 6,
            "at_ms" => 7,
            _ => return Err(LagParseError::UnknownKey),
        };
        match bit {
            0 => l.standby = v,
            1 => l.epochs = v,
            2 => l.owed_pages = v,
            3 => l.queued_bytes = v,
            4 => owed_bytes = v,
            5 => l.drain_bps = v,
            6 => l.in_step = v != 0,
            _ => l.at_ms = v,
        }
        seen |= 1 << bit;
    }
    if seen != 0x1ff {
        return Err(LagParseError::MissingKey);
    }
    if owed_bytes != l.owed_bytes() {
        return Err(LagParseError::Inconsistent);
    }
    Ok(l)
}

/// What the report keeps of one standby's lag lines: the most it was
/// owed, and when it was last back in step (None if it never lagged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LagSummary {
    pub max_lag_bytes: u64,
    pub caught_up_at_ms: Option<u64>,
    /// Lines seen (0: it never lagged).
    pub lines: u64,
}

/// Summarises the lag lines about the standby at `addr` among `lines`
/// (the consoles of every device that was active).
pub fn summarise<'a>(lines: impl IntoIterator<Item = &'a str>, addr: Ipv4Addr) -> LagSummary {
    let mut s = LagSummary::default();
    for l in lines.into_iter().filter_map(|l| parse_lag_line(l).ok()).filter(|l| l.addr == addr) {
        s.lines += 1;
        s.max_lag_bytes = s.max_lag_bytes.max(l.owed_bytes());
        if l.in_step {
            s.caught_up_at_ms = Some(l.at_ms);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec::Vec;

    const A: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

    fn lag(owed_pages: u64) -> Option<LagNow> {
        Some(LagNow { epochs: 2, owed_pages, queued_bytes: 1000 })
    }

    #[test]
    fn a_line_when_a_lag_starts_at_most_one_a_second_and_one_when_in_step() {
        let mut log = LagLog::default();
        let mut out = Vec::new();
        // In step for a while: nothing.
        for t in 0..500 {
            assert_eq!(log.tick(1, A, t, None, 0), None);
        }
        // Lags from 500 ms to 3200 ms, its socket taking 100 bytes a ms.
        for t in 500..4000u64 {
            let l = if t < 3200 { lag(4000 - t) } else { None };
            out.extend(log.tick(1, A, t, l, (t - 500) * 100));
        }
        let at: Vec<u64> = out.iter().map(|l| l.at_ms).collect();
        assert_eq!(at, [500, 1500, 2500, 3200]);
        assert_eq!(out[0].drain_bps, 0, "no interval yet");
        assert_eq!(out[1].drain_bps, 100_000);
        assert!(out[..3].iter().all(|l| !l.in_step) && out[3].in_step);
        assert_eq!((out[3].owed_pages, out[3].owed_bytes()), (0, 0));
        assert_eq!(out[1].owed_bytes(), 1000 + 2500 * 4096);
    }

    #[test]
    fn lines_parse_back() {
        let l = LagLine { standby: 2, addr: A, epochs: 3, owed_pages: 900, queued_bytes: 70_000, drain_bps: 250_000, in_step: false, at_ms: 5120 };
        let s = format!("vmsync: {l}");
        assert_eq!(
            s,
            "vmsync: lag standby=2 addr=169.254.0.2 epochs=3 owed_pages=900 queued_bytes=70000 owed_bytes=3756400 drain_bps=250000 in_step=0 at_ms=5120"
        );
        assert_eq!(parse_lag_line(&s), Ok(l));
        assert_eq!(parse_lag_line("vmsync: epoch=3"), Err(LagParseError::NotALagLine));
        assert_eq!(parse_lag_line("lag standby=1 epochs=3"), Err(LagParseError::MissingKey));
        assert_eq!(parse_lag_line(&s.replace("169.254.0.2", "169.254.0")), Err(LagParseError::BadNumber));
        assert_eq!(parse_lag_line(&s.replace("owed_bytes=3756400", "owed_bytes=1")), Err(LagParseError::Inconsistent));
        assert_eq!(parse_lag_line(&s.replace("epochs=3", "epochs=x")), Err(LagParseError::BadNumber));
        assert_eq!(parse_lag_line(&s.replace("epochs=3", "eons=3")), Err(LagParseError::UnknownKey));
    }

    #[test]
    fn summary_keeps_the_peak_and_the_last_return_to_step() {
        let line = |d: u8, owed_pages, in_step, at_ms| {
            format!("{}", LagLine { standby: d as u64, addr: Ipv4Addr::new(169, 254, 0, d), owed_pages, in_step, at_ms, ..LagLine::default() })
        };
        let console = [
            line(1, 10, false, 100),
            line(2, 99, false, 150),
            line(1, 30, false, 1100),
            line(1, 0, true, 1500),
            line(1, 5, false, 4000),
            line(1, 0, true, 4200),
        ];
        let s = summarise(console.iter().map(|l| l.as_str()), Ipv4Addr::new(169, 254, 0, 1));
        assert_eq!(s, LagSummary { max_lag_bytes: 30 * 4096, caught_up_at_ms: Some(4200), lines: 5 });
        assert_eq!(summarise(console.iter().map(|l| l.as_str()), Ipv4Addr::new(169, 254, 0, 3)), LagSummary::default());
    }
}
