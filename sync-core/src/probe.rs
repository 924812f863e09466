//! Shadow probes: what the link would seal at another shadow budget,
//! measured in the same guest run. Two guest runs never write the same
//! pages, so comparing budgets across runs measured the runs' noise more
//! than the budgets; a probe is given the very pages of each cut.
//!
//! A probe encodes each cut's dirty pages as the link of a device in step
//! does (`epoch::ActiveSync::cut`, a link that gets the cut's own pages):
//! the same record encoder, against its own CLOCK shadow store of its own
//! budget, through its own zstd stream, in page order; it counts what the
//! frames would be on the wire (`wire::sealed_len`) and seals and sends
//! nothing. A probe of the link's own budget thus reports the link's own
//! figures to the byte, which the study checks at every run.
//!
//! Call `cut` with guest memory as it was at the cut (the guest still
//! paused). A probe whose cut failed is out of step with the link: drop it.

use alloc::vec::Vec;

use crate::compress::{Compressor, ZstdConfig};
use crate::delta::{BatchEncoder, Next, MAX_PAGE_RECORD};
use crate::digest::PageMemory;
use crate::epoch::EpochError;
use crate::shadow::{Budget, ShadowStore};
use crate::stats::EpochStats;
use crate::wire::{sealed_len, Epoch, Message, MAX_BATCH_RAW};

pub struct ShadowProbe {
    budget: Budget,
    shadows: ShadowStore,
    compressor: Compressor,
    /// The last cut counted (the next EpochBegin's base).
    last: Epoch,
    /// Scratch kept between cuts: the cut's pages in order, a batch's
    /// records, its compressed form.
    pages: Vec<u64>,
    raw: Vec<u8>,
    data: Vec<u8>,
}

impl ShadowProbe {
    /// A probe of a guest of `page_count` pages keeping at most `budget`
    /// shadows, compressing with `zstd` (the link's setting), starting from
    /// the all-zero image of epoch 0 as the link does.
    pub fn new(page_count: u64, budget: Budget, zstd: ZstdConfig) -> Result<Self, EpochError> {
        Ok(Self {
            budget,
            shadows: ShadowStore::new(page_count, budget).map_err(EpochError::Shadow)?,
            compressor: Compressor::new(zstd)?,
            last: 0,
            pages: Vec::new(),
            raw: Vec::new(),
            data: Vec::new(),
        })
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    pub fn shadows(&self) -> &ShadowStore {
        &self.shadows
    }

    /// Counts cut `epoch` over `dirty` (the pages written in it, in any
    /// order, repeats allowed) of `guest` at the cut, with `state` sealed
    /// before the commit as the link seals it. Returns the figures the link
    /// would have had at this budget (`dirty_pages` is the set's size; the
    /// caller fills in what only the cut knows: faults, pause, time).
    pub fn cut<G: PageMemory>(&mut self, epoch: Epoch, dirty: &[u64], guest: &G, state: &[Message]) -> Result<EpochStats, EpochError> {
        let Self { shadows, compressor, last, pages, raw, data, .. } = self;
        // The record encoder takes pages in ascending order, each once.
        pages.clear();
        pages.try_reserve(dirty.len()).map_err(|_| EpochError::OutOfMemory)?;
        pages.extend_from_slice(dirty);
        pages.sort_unstable();
        pages.dedup();
        let mut st = EpochStats::new(epoch);
        st.dirty_pages = pages.len() as u64;
        st.sealed_bytes += sealed_len(&Message::EpochBegin { epoch, base: *last }) as u64;
        let mut batch = BatchEncoder::new();
        let mut seq = 0u32;
        let mut records = 0u64;
        raw.clear();
        for (k, &p) in pages.iter().enumerate() {
            let content = guest.page(p).ok_or(EpochError::PageOutOfRange)?;
            if raw.len() + MAX_PAGE_RECORD > MAX_BATCH_RAW {
                flush(compressor, epoch, seq, raw, data, &mut st)?;
                seq += 1;
                batch = BatchEncoder::new();
            }
            if raw.capacity() - raw.len() < MAX_PAGE_RECORD && raw.try_reserve(MAX_BATCH_RAW - raw.len()).is_err() {
                return Err(EpochError::OutOfMemory);
            }
            let next_n = pages.get(k + 1).copied();
            let (shadow, next_shadow) = shadows.get_shadow_and_peek(p, next_n);
            let next = next_n.and_then(|n| guest.page(n)).map(|page| Next { page, shadow: next_shadow });
            // Ascending and each once (sorted, deduplicated above), and a
            // page of the guest: the encoder accepts it.
            let r = batch.encode_next(p, content, shadow, next, raw).map_err(|_| EpochError::PageOutOfRange)?;
            records += (r.kind != crate::delta::RecordKind::Same) as u64;
            st.add_record(&r);
            shadows.update_with_hash(p, content, r.hash);
        }
        if !raw.is_empty() {
            flush(compressor, epoch, seq, raw, data, &mut st)?;
        }
        for msg in state {
            st.sealed_bytes += sealed_len(msg) as u64;
        }
        // The digest's value does not change the commit's length.
        st.sealed_bytes += sealed_len(&Message::EpochCommit { epoch, digest: [0; 32], page_count: records }) as u64;
        *last = epoch;
        Ok(st)
    }
}

/// Compresses the batch in `raw` on the probe's stream and counts it as the
/// PageRecords frame the link would seal.
fn flush(compressor: &mut Compressor, epoch: Epoch, seq: u32, raw: &mut Vec<u8>, data: &mut Vec<u8>, st: &mut EpochStats) -> Result<(), EpochError> {
    data.clear();
    let n = compressor.compress_batch(raw, data)?;
    st.compressed_bytes += n as u64;
    // raw is kept below MAX_BATCH_RAW, which fits u32.
    let msg = Message::PageRecords { epoch, seq, raw_len: raw.len() as u32, data: core::mem::take(data) };
    st.sealed_bytes += sealed_len(&msg) as u64;
    if let Message::PageRecords { data: d, .. } = msg {
        *data = d; // keep the buffer for the next batch
    }
    raw.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::VecMemory;
    use crate::epoch::{ActiveSync, Link};
    use crate::page::PAGE_SIZE;
    use alloc::vec;

    const PAGES: u64 = 600;

    /// xorshift: reproducible noise.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// One epoch of writes: some pages rewritten in a few bytes (deltas),
    /// some filled with noise (whole, incompressible), some zeroed, some
    /// written with what they held (Same). Returns the dirty set as the
    /// hardware would give it: unordered, with repeats.
    fn write_epoch(g: &mut VecMemory, rng: &mut Rng, e: u64) -> Vec<u64> {
        let mut dirty = Vec::new();
        let pages = g.pages_mut();
        if e == 1 {
            // The working set starts incompressible: a page of it sent
            // whole costs 4 KiB, as a delta a few bytes.
            for (p, page) in pages[..200].iter_mut().enumerate() {
                for b in page.iter_mut() {
                    *b = rng.next() as u8;
                }
                dirty.push(p as u64);
            }
        }
        for _ in 0..(40 + e * 7 % 90) {
            // A working set of 200 pages, rewritten epoch after epoch.
            let p = rng.next() % 200;
            let at = (rng.next() % PAGE_SIZE as u64) as usize;
            pages[p as usize][at] = pages[p as usize][at].wrapping_add(1 + e as u8);
            dirty.push(p);
        }
        for _ in 0..(e % 3) * 130 {
            let p = 200 + rng.next() % 400;
            for b in pages[p as usize].iter_mut() {
                *b = rng.next() as u8;
            }
            dirty.push(p);
        }
        let z = rng.next() % PAGES;
        pages[z as usize] = [0; PAGE_SIZE];
        dirty.push(z);
        dirty.push(7); // rewritten with what it held, or not: a repeat either way
        dirty.reverse();
        dirty
    }

    fn state() -> Vec<Message> {
        vec![Message::CpuState(vec![1; 300]), Message::DeviceState(vec![2; 77])]
    }

    /// A figures-only link (a single device's: the cut's own pages) over an
    /// encoder keeping `budget` shadows.
    fn link_and_active(budget: Budget) -> (ActiveSync, Link) {
        let mut active = ActiveSync::over_zeroed(PAGES, budget).unwrap();
        let id = active.add_standby();
        active.connect(id, 0).unwrap();
        let (a, _) = crate::wire::tests::sessions();
        let mut link = Link::new(id, a, ZstdConfig::default()).unwrap();
        link.set_figures_only();
        (active, link)
    }

    /// A probe given the link's own budget reports, cut after cut, exactly
    /// the link's figures (over batches of more than one frame, deltas,
    /// whole pages, zero and same pages, the guest state), whatever order
    /// the dirty set comes in; probes of other budgets run beside it.
    #[test]
    fn a_probe_of_the_links_budget_counts_what_the_link_sealed() {
        for budget in [Budget::Full, Budget::Pages(150), Budget::Pages(0)] {
            let (mut active, mut link) = link_and_active(budget);
            let mut probe = ShadowProbe::new(PAGES, budget, ZstdConfig::default()).unwrap();
            let mut other = ShadowProbe::new(PAGES, Budget::Pages(20), ZstdConfig::default()).unwrap();
            let mut g = VecMemory::zeroed(PAGES as usize);
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let (mut multi, mut deltas) = (0, 0);
            for e in 1..=12 {
                let dirty = write_epoch(&mut g, &mut rng, e);
                let (m, stats) = active.cut_with_state(dirty.iter().copied(), &g, &mut [&mut link], &state()).unwrap();
                let got = probe.cut(m, &dirty, &g, &state()).unwrap();
                assert_eq!(got, stats[0], "budget {budget:?}, epoch {m}");
                other.cut(m, &dirty, &g, &state()).unwrap();
                multi += (got.encoded_bytes > MAX_BATCH_RAW as u64) as u32;
                deltas += got.delta_pages;
            }
            assert!(multi > 0, "no epoch took more than one batch");
            assert_eq!(deltas > 0, budget != Budget::Pages(0), "deltas at {budget:?}: {deltas}");
            assert_eq!(probe.shadows().len(), active.shadows().len());
        }
    }

    /// On rewrites of a working set larger than the smaller budgets, a
    /// smaller budget never sends fewer bytes, and one far below the set
    /// sends more than a full shadow.
    #[test]
    fn a_smaller_budget_never_sends_fewer_bytes_on_rewrites() {
        let budgets = [Budget::Full, Budget::Pages(300), Budget::Pages(150), Budget::Pages(60), Budget::Pages(0)];
        let mut probes: Vec<ShadowProbe> = budgets.iter().map(|&b| ShadowProbe::new(PAGES, b, ZstdConfig::default()).unwrap()).collect();
        let mut sealed = vec![0u64; budgets.len()];
        let mut g = VecMemory::zeroed(PAGES as usize);
        let mut rng = Rng(42);
        for e in 1..=15 {
            let dirty = write_epoch(&mut g, &mut rng, e);
            for (p, s) in probes.iter_mut().zip(sealed.iter_mut()) {
                *s += p.cut(e, &dirty, &g, &[]).unwrap().sealed_bytes;
            }
        }
        for w in sealed.windows(2) {
            assert!(w[0] <= w[1], "smaller budgets sent fewer bytes: {sealed:?}");
        }
        assert!(sealed[3] > sealed[0] * 11 / 10, "60 shadows for a working set of 200 cost little: {sealed:?}");
    }

    /// A page outside the guest is an error, never a panic.
    #[test]
    fn a_page_outside_the_guest_is_an_error() {
        let mut probe = ShadowProbe::new(8, Budget::Full, ZstdConfig::default()).unwrap();
        let g = VecMemory::zeroed(8);
        assert_eq!(probe.cut(1, &[3, 8], &g, &[]), Err(EpochError::PageOutOfRange));
        assert_eq!(probe.cut(1, &[u64::MAX], &g, &[]), Err(EpochError::PageOutOfRange));
    }
}
