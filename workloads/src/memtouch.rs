//! Dirty-tracking stress: every period, one byte in each page of the region
//! changes. Each period therefore dirties every page while changing 1/4096 of
//! the bytes.

use crate::Checksum;

pub const DEFAULT_MIB: usize = 32;
pub const DEFAULT_PERIOD_MS: u64 = 100;
const PAGE: usize = 4096;

pub struct MemTouch {
    region: Vec<u8>,
    periods: u64,
}

impl MemTouch {
    pub fn new(mib: usize) -> Self {
        MemTouch { region: vec![0u8; mib.max(1) << 20], periods: 0 }
    }

    /// Touches every page once: period p changes byte p mod 4096 of each page
    /// (the addend is never 0 mod 256, so the byte always changes).
    pub fn touch(&mut self) {
        self.periods += 1;
        let p = self.periods;
        let offset = (p as usize) % PAGE;
        for (i, page) in self.region.chunks_exact_mut(PAGE).enumerate() {
            page[offset] = page[offset].wrapping_add(1 + ((p as u8) ^ (i as u8)) % 128);
        }
    }

    pub fn periods(&self) -> u64 {
        self.periods
    }

    pub fn pages(&self) -> usize {
        self.region.len() / PAGE
    }

    pub fn checksum(&self) -> u64 {
        let mut c = Checksum::default();
        c.bytes(&self.region);
        c.finish()
    }

    pub fn checksum_after(mib: usize, periods: u64) -> u64 {
        let mut m = MemTouch::new(mib);
        for _ in 0..periods {
            m.touch();
        }
        m.checksum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_changes_each_period() {
        let mut m = MemTouch::new(1);
        let before = m.region.clone();
        m.touch();
        let changed_pages = before.chunks(PAGE).zip(m.region.chunks(PAGE)).filter(|(a, b)| a != b).count();
        assert_eq!(changed_pages, m.pages());
        assert_eq!(m.checksum(), MemTouch::checksum_after(1, 1));
    }
}
