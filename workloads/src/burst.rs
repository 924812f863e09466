//! Write burst: for the first seconds, a region is rewritten with
//! xorshift-random (incompressible) bytes, a slice each tick, the whole
//! region every `SWEEP_TICKS` ticks; then the program idles. Used to write
//! faster than a sync link carries, then stop, and see the standby catch up.

use crate::Checksum;

pub const DEFAULT_MIB: usize = 4;
pub const PERIOD_MS: u64 = 10;
/// Ticks per rewrite of the whole region (4 MiB every 0.5 s: 8 MiB/s).
pub const SWEEP_TICKS: usize = 50;

pub struct Burst {
    region: Vec<u64>,
    x: u64,
    next: usize,
    ticks: u64,
}

impl Burst {
    pub fn new(mib: usize) -> Self {
        Burst { region: vec![0u64; (mib.max(1) << 20) / 8], x: 0x9e37_79b9_7f4a_7c15, next: 0, ticks: 0 }
    }

    /// Rewrites the next slice of the region.
    pub fn tick(&mut self) {
        self.ticks += 1;
        let slice = self.region.len().div_ceil(SWEEP_TICKS);
        let end = (self.next + slice).min(self.region.len());
        for w in &mut self.region[self.next..end] {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            *w = self.x;
        }
        self.next = if end == self.region.len() { 0 } else { end };
    }

    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.ticks * (self.region.len().div_ceil(SWEEP_TICKS) * 8) as u64
    }

    pub fn checksum(&self) -> u64 {
        let mut c = Checksum::default();
        for w in &self.region {
            c.bytes(&w.to_le_bytes());
        }
        c.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_rewrites_every_page_with_new_bytes() {
        let mut b = Burst::new(1);
        let before = b.region.clone();
        for _ in 0..SWEEP_TICKS {
            b.tick();
        }
        assert!(b.region.chunks(512).zip(before.chunks(512)).all(|(a, z)| a != z), "every page changed");
        assert_eq!(b.next, 0);
        let again = b.region.clone();
        b.tick();
        assert_ne!(b.region[..8], again[..8]);
        assert_eq!(b.ticks(), SWEEP_TICKS as u64 + 1);
    }
}
