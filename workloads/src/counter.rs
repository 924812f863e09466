//! The default workload's memory: a working set that changes a little each
//! second (a few hundred scattered cache lines), so a switched guest's
//! checksum can be recomputed on the host from the counter alone.

use crate::{rand2, Checksum};

pub const DEFAULT_MIB: usize = 16;
const WORDS_PER_PAGE: usize = 4096 / 8;
/// Scattered 64-byte writes per step: about 256 pages dirtied per second.
const WRITES_PER_STEP: u64 = 256;

pub struct WorkingSet {
    words: Vec<u64>,
    steps: u64,
}

impl WorkingSet {
    pub fn new(mib: usize) -> Self {
        let n = (mib.max(1) << 20) / 8;
        let words = (0..n as u64).map(|i| rand2(0, i)).collect();
        WorkingSet { words, steps: 0 }
    }

    /// Applies step `steps + 1`: rewrites `WRITES_PER_STEP` cache lines chosen
    /// by the step number.
    pub fn step(&mut self) {
        self.steps += 1;
        let n = self.steps;
        let pages = self.words.len() / WORDS_PER_PAGE;
        for j in 0..WRITES_PER_STEP {
            let r = rand2(n, j);
            let page = (r % pages as u64) as usize;
            let line = ((r >> 32) % (WORDS_PER_PAGE as u64 / 8)) as usize;
            let base = page * WORDS_PER_PAGE + line * 8;
            for (k, w) in self.words[base..base + 8].iter_mut().enumerate() {
                *w = w.rotate_left(7) ^ rand2(n, j * 8 + k as u64);
            }
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn checksum(&self) -> u64 {
        let mut c = Checksum::default();
        c.words(&self.words);
        c.finish()
    }

    /// The checksum a guest prints at `counter=steps` (host-side check).
    pub fn checksum_after(mib: usize, steps: u64) -> u64 {
        let mut ws = WorkingSet::new(mib);
        for _ in 0..steps {
            ws.step();
        }
        ws.checksum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_changing() {
        let mut a = WorkingSet::new(1);
        let c0 = a.checksum();
        a.step();
        a.step();
        assert_ne!(a.checksum(), c0);
        assert_eq!(a.checksum(), WorkingSet::checksum_after(1, 2));
        assert_ne!(a.checksum(), WorkingSet::checksum_after(1, 3));
    }
}
