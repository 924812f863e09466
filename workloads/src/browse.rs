//! Browsing stand-in: allocation churn of small linked objects, as a
//! JavaScript heap sees while a page runs. Chains of boxed objects are
//! dropped and rebuilt, so the allocator reuses and scatters memory.

use crate::{rand2, Checksum};

pub const TICKS_PER_SECOND: u64 = 100;
const ROOTS: usize = 4096;
const REPLACED_PER_TICK: u64 = 64;
const MAX_CHAIN: u64 = 8;

struct Obj {
    data: [u64; 5],
    next: Option<Box<Obj>>,
}

pub struct Browse {
    roots: Vec<Option<Box<Obj>>>,
    ticks: u64,
}

fn chain(seed: u64) -> Option<Box<Obj>> {
    let len = 1 + seed % MAX_CHAIN;
    let mut head = None;
    for i in 0..len {
        let data = core::array::from_fn(|k| rand2(seed, i * 8 + k as u64));
        head = Some(Box::new(Obj { data, next: head }));
    }
    head
}

impl Default for Browse {
    fn default() -> Self {
        Self::new()
    }
}

impl Browse {
    pub fn new() -> Self {
        Browse { roots: (0..ROOTS as u64).map(|i| chain(rand2(5, i))).collect(), ticks: 0 }
    }

    pub fn tick(&mut self) {
        self.ticks += 1;
        for j in 0..REPLACED_PER_TICK {
            let r = rand2(self.ticks, j);
            self.roots[(r % ROOTS as u64) as usize] = chain(r >> 8);
        }
    }

    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    pub fn checksum(&self) -> u64 {
        let mut c = Checksum::default();
        for root in &self.roots {
            let mut cur = root.as_deref();
            while let Some(o) = cur {
                c.words(&o.data);
                cur = o.next.as_deref();
            }
            c.word(0);
        }
        c.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic() {
        let mut a = Browse::new();
        let mut b = Browse::new();
        a.tick();
        b.tick();
        assert_eq!(a.checksum(), b.checksum());
        b.tick();
        assert_ne!(a.checksum(), b.checksum());
    }
}
