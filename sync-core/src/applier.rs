//! The standby's applier: the committed guest image, and the epoch being
//! received, staged beside it.
//!
//! Records of an epoch are applied into staging copies, never into the
//! committed image: each page's record applies to the page's *committed*
//! content (the base the active side diffed against, see `resume`), a
//! Delta's result is checked against the record's hash (a Zero or Full
//! page's hash is computed here: see `delta`), and the staged pages
//! replace the committed ones only at `commit`, after the page count and
//! the image digest matched. Any error, or an epoch that never commits (a
//! cut link), discards staging: the committed image is the image of the
//! last committed epoch, always.
//!
//! A catch-up (see `catchup`) stages one epoch over several cuts: its
//! EpochCommit names the final cut, at or after the epoch begun, and a page
//! may be staged more than once in it (the later record replaces the staged
//! page; the commit's `page_count` counts records, not pages).
//!
//! Staging has a budget (`set_staging_budget`: the standby's heap, which
//! on a device that started active is sized for its shadows, a quarter of
//! guest RAM by default). An epoch that changes more pages than the budget
//! holds cannot be committed atomically in that memory by any scheme: the
//! old content of every page it changes (the committed image) and the new
//! content must both be kept until the commit, and the active device keeps
//! neither (it has the guest's current memory only, and a bounded shadow
//! store). Refusing such an epoch keeps an image that grows staler for
//! ever: the Resync restarts a catch-up that owes at least as much, and the
//! standby never converges (nor can the guest move to it); allocating past
//! the budget runs the heap out, and the next infallible allocation powers
//! the device off. So the applier chooses convergence: when the next page
//! would pass the budget it writes what it staged into the image and
//! applies the rest of the epoch in place ("spills"). From that moment the
//! image is no committed epoch's (`holds_committed_image` is false, and
//! `committed_epoch` says 0, which is what HelloAck and Resync tell the
//! active device) until the epoch commits, which makes it a committed
//! epoch's image again, the newest. If the epoch fails instead (a cut link,
//! a bad record), the image stays torn and the standby is resynced from
//! epoch 0: every page comes whole (no base-dependent record goes to a
//! standby at epoch 0), so nothing of the torn image survives into the
//! next commit. What is given up is only the window of the in-place epoch:
//! a failover to this standby meanwhile is refused (it has no committed
//! state) rather than resuming a stale image. An epoch within the budget,
//! the normal case, is staged and committed atomically as before.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::delta::{self, DeltaError};
use crate::digest::{PageHashes, PageMemoryMut};
use crate::fence::{LineageId, Term, NO_LINEAGE};
use crate::page::{Page, PAGE_SIZE};
use crate::wire::{Digest, Epoch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// A batch or commit with no epoch begun.
    NoEpoch,
    /// `begin` while an epoch is staged.
    EpochOpen,
    /// The epoch is not after the committed one.
    StaleEpoch,
    /// The epoch's records were made against another image than ours.
    BaseMismatch {
        have: Epoch,
        want: Epoch,
    },
    /// Commit of an epoch before the staged one.
    WrongEpoch,
    PageOutOfRange,
    Record(DeltaError),
    /// The epoch's record count differs from the commit's.
    PageCountMismatch,
    /// The image after the epoch would not have the commit's digest.
    DigestMismatch,
    /// No memory to stage the page: the epoch is dropped (the active side
    /// resends from the committed epoch).
    OutOfMemory,
    /// A base-dependent record (Delta) for a page already written in place
    /// in this epoch: its base is gone. An honest active device sends such
    /// a page whole (a catch-up's pages all go whole).
    RewrittenInPlace,
}

/// What the staging of one epoch holds.
struct Staging {
    epoch: Epoch,
    /// Staged pages: page number, new content, its hash.
    pages: Vec<(u64, Box<Page>, u64)>,
    /// Records applied (a page replaced counts again).
    records: u64,
    /// The epoch outgrew the staging budget: records go into the image.
    in_place: bool,
}

/// `slot` entry of a page not staged.
const NOT_STAGED: u32 = u32::MAX;
/// `slot` entry of a page written in place in the epoch being applied.
const IN_PLACE: u32 = u32::MAX - 1;
/// Heap bytes one staged page costs: its buffer and its entry in the staged
/// list, twice (the list grows by doubling).
const STAGED_PAGE_BYTES: usize = PAGE_SIZE + 2 * core::mem::size_of::<(u64, Box<Page>, u64)>();

/// The standby's image and the epoch in flight.
pub struct Applier<M: PageMemoryMut> {
    image: M,
    hashes: PageHashes,
    committed: Epoch,
    staging: Option<Staging>,
    /// Per guest page: its index in the staged pages, or NOT_STAGED. Made
    /// at the first epoch, kept (all NOT_STAGED between epochs).
    slot: Vec<u32>,
    /// Page buffers kept from earlier epochs (bounded), to spare the
    /// allocator 4 KiB allocations at every epoch.
    pool: Vec<Box<Page>>,
    /// Most pages staging holds (and the pool keeps) at once.
    max_staged: usize,
    /// The image is no committed epoch's (see the module doc).
    torn: bool,
    /// The guest and term of the committed epoch (`fence`); none for the
    /// all-zero image of epoch 0.
    lineage: (LineageId, Term),
}

/// Most page buffers kept for reuse (4 MiB).
const POOL_MAX: usize = 1024;

impl<M: PageMemoryMut> Applier<M> {
    /// An applier over `image`, which holds the image of epoch `committed`
    /// (a fresh standby: all zeros at epoch 0). Hashes every page once.
    pub fn new(image: M, committed: Epoch) -> Self {
        let hashes = PageHashes::of_memory(&image);
        Self::with_hashes(image, committed, hashes)
    }

    /// As `new`, with the page hashes known (e.g. `PageHashes::zeroed`
    /// for a zeroed image, which spares hashing it).
    pub fn with_hashes(image: M, committed: Epoch, hashes: PageHashes) -> Self {
        Self { image, hashes, committed, staging: None, slot: Vec::new(), pool: Vec::new(), max_staged: usize::MAX, torn: false, lineage: (NO_LINEAGE, 0) }
    }

    /// Staging (page buffers, kept ones included) may use at most `bytes`
    /// of heap; an epoch that needs more is applied in place (module doc).
    /// Without a budget staging takes what the allocator gives.
    pub fn set_staging_budget(&mut self, bytes: usize) {
        self.max_staged = bytes / STAGED_PAGE_BYTES;
        self.pool.truncate(self.max_staged.min(POOL_MAX));
    }

    /// Pages staging may hold at once.
    pub fn staging_budget_pages(&self) -> usize {
        self.max_staged
    }

    /// Whether the image is the image of `committed_epoch` (false while,
    /// or after, an epoch larger than the staging budget went in place and
    /// has not committed: the standby then holds no committed epoch).
    pub fn holds_committed_image(&self) -> bool {
        !self.torn
    }

    pub fn committed_epoch(&self) -> Epoch {
        self.committed
    }

    /// The committed image.
    pub fn image(&self) -> &M {
        &self.image
    }

    pub fn page_hashes(&self) -> &PageHashes {
        &self.hashes
    }

    /// Digest of the committed image (as in EpochCommit).
    pub fn digest(&self) -> Digest {
        self.hashes.digest()
    }

    /// The lineage and term of the committed epoch (`fence`).
    pub fn lineage(&self) -> (LineageId, Term) {
        self.lineage
    }

    /// The committed epoch is of `term` of guest `lineage` (set by the
    /// receiver at each commit, and by whoever makes an applier over an
    /// image it holds).
    pub fn set_lineage(&mut self, lineage: LineageId, term: Term) {
        self.lineage = (lineage, term);
    }

    /// Gives the committed image up (its user chose to let another guest,
    /// or a history that does not include it, replace it): from now on it
    /// is no committed epoch's, exactly as an image torn by an epoch in
    /// place, and is resynced whole from epoch 0.
    pub fn forget(&mut self) {
        self.abort();
        self.torn = true;
        self.committed = 0;
        self.lineage = (NO_LINEAGE, 0);
    }

    /// The epoch being staged, if any.
    pub fn staging_epoch(&self) -> Option<Epoch> {
        self.staging.as_ref().map(|s| s.epoch)
    }

    /// Gives up the image, its hashes and epoch (a switch makes it the
    /// guest's RAM). A staged epoch is dropped.
    pub fn into_parts(self) -> (M, PageHashes, Epoch) {
        (self.image, self.hashes, self.committed)
    }

    /// Starts staging `epoch`, whose records were encoded against the image
    /// of `base`.
    pub fn begin(&mut self, epoch: Epoch, base: Epoch) -> Result<(), ApplyError> {
        if self.staging.is_some() {
            self.abort();
            return Err(ApplyError::EpochOpen);
        }
        if epoch <= self.committed {
            return Err(ApplyError::StaleEpoch);
        }
        if base != self.committed {
            return Err(ApplyError::BaseMismatch { have: self.committed, want: base });
        }
        let n = self.image.page_count() as usize;
        if self.slot.len() != n {
            // Page numbers index it; a guest has far fewer than u32::MAX pages.
            self.slot.try_reserve_exact(n).map_err(|_| ApplyError::OutOfMemory)?;
            self.slot.resize(n, NOT_STAGED);
        }
        // A torn image has nothing to protect: straight in place.
        self.staging = Some(Staging { epoch, pages: Vec::new(), records: 0, in_place: self.torn });
        Ok(())
    }

    /// Drops the staged epoch; the committed image is untouched.
    pub fn abort(&mut self) {
        if let Some(s) = self.staging.take() {
            if s.in_place {
                // The image stays torn (committed epoch 0): see the module doc.
                self.slot.fill(NOT_STAGED);
            }
            for (p, _, _) in &s.pages {
                self.slot[*p as usize] = NOT_STAGED;
            }
            let room = self.pool_max().saturating_sub(self.pool.len());
            self.pool.extend(s.pages.into_iter().take(room).map(|(_, b, _)| b));
        }
    }

    fn pool_max(&self) -> usize {
        POOL_MAX.min(self.max_staged)
    }

    /// The epoch outgrew the staging budget: what is staged goes into the
    /// image, which is no committed epoch's from now until the commit.
    fn spill(&mut self) {
        let Some(s) = self.staging.as_mut() else { return };
        for (p, page, hash) in core::mem::take(&mut s.pages) {
            self.slot[p as usize] = IN_PLACE;
            // Staged pages were all found in the image when applied.
            if let Some(dst) = self.image.page_mut(p) {
                dst.copy_from_slice(&page[..]);
            }
            let _ = self.hashes.set(p, hash);
        }
        s.in_place = true;
        // Not needed any more in this epoch: the heap gets them back.
        self.pool = Vec::new();
        self.torn = true;
        self.committed = 0;
    }

    /// Applies one record straight into the image (an in-place epoch).
    fn apply_in_place(&mut self, rec: &delta::PageRecordRef<'_>) -> Result<(), ApplyError> {
        let p = rec.page_num;
        if self.slot[p as usize] == IN_PLACE && matches!(rec.record, delta::RecordRef::Delta { .. }) {
            return Err(ApplyError::RewrittenInPlace);
        }
        let dst = self.image.page_mut(p).ok_or(ApplyError::PageOutOfRange)?;
        self.slot[p as usize] = IN_PLACE;
        let r = delta::apply_in_place(dst, rec);
        // A record that failed may have written part of the page: its hash
        // follows what the image holds either way.
        let hash = match r {
            Ok(h) => h,
            Err(_) => crate::page::hash_page(dst),
        };
        let _ = self.hashes.set(p, hash);
        r.map_err(ApplyError::Record)?;
        if let Some(s) = self.staging.as_mut() {
            s.records += 1;
        }
        Ok(())
    }

    /// Applies a decompressed batch of page records into staging. On error
    /// the whole epoch is dropped.
    pub fn apply_batch(&mut self, records: &[u8]) -> Result<(), ApplyError> {
        if self.staging.is_none() {
            return Err(ApplyError::NoEpoch);
        }
        let mut batch = delta::BatchDecoder::new(records);
        loop {
            let r = match batch.next_record() {
                Ok(Some(rec)) => self.apply_one(&rec),
                Ok(None) => return Ok(()),
                Err(e) => Err(ApplyError::Record(e)),
            };
            if let Err(e) = r {
                self.abort();
                return Err(e);
            }
        }
    }

    /// Applies one record into staging.
    fn apply_one(&mut self, rec: &delta::PageRecordRef<'_>) -> Result<(), ApplyError> {
        let p = rec.page_num;
        if p >= self.image.page_count() {
            return Err(ApplyError::PageOutOfRange);
        }
        let staging = self.staging.as_mut().ok_or(ApplyError::NoEpoch)?;
        if staging.in_place {
            return self.apply_in_place(rec);
        }
        // p < page_count = slot.len() (set at begin).
        let at = self.slot[p as usize];
        let committed = self.image.page(p).ok_or(ApplyError::PageOutOfRange)?;
        if at != NOT_STAGED {
            // Staged before in this epoch (a catch-up): the record applies to
            // the committed page like any other, and replaces what was staged.
            let (_, buf, hash) = &mut staging.pages[at as usize];
            buf.copy_from_slice(committed);
            *hash = delta::apply_in_place(buf, rec).map_err(ApplyError::Record)?;
            staging.records += 1;
            return Ok(());
        }
        // Past the budget, or the heap has less than the budget said (a
        // misjudged budget): in place, as the module doc says, rather than
        // dropping an epoch that would come again as large.
        let buf = if staging.pages.len() >= self.max_staged || staging.pages.try_reserve(1).is_err() { None } else { self.pool.pop().or_else(new_page) };
        let Some(mut buf) = buf else {
            self.spill();
            return self.apply_in_place(rec);
        };
        buf.copy_from_slice(committed);
        let hash = match delta::apply_in_place(&mut buf, rec) {
            Ok(h) => h,
            Err(e) => {
                if self.pool.len() < self.pool_max() {
                    self.pool.push(buf);
                }
                return Err(ApplyError::Record(e));
            }
        };
        self.slot[p as usize] = staging.pages.len() as u32;
        staging.pages.push((p, buf, hash));
        staging.records += 1;
        Ok(())
    }

    /// Commits the staged epoch if it is `epoch`, holds `page_count` records
    /// and gives the image `digest`. On error the epoch is dropped and the
    /// committed image is untouched.
    pub fn commit(&mut self, epoch: Epoch, digest: &Digest, page_count: u64) -> Result<(), ApplyError> {
        let r = self.check_commit(epoch, digest, page_count);
        if r.is_err() {
            self.abort();
            return r;
        }
        let Some(mut s) = self.staging.take() else {
            return Err(ApplyError::NoEpoch); // check_commit saw it: unreachable
        };
        if s.in_place {
            self.slot.fill(NOT_STAGED);
            self.torn = false;
        }
        let pool_max = self.pool_max();
        for (p, page, hash) in s.pages.drain(..) {
            self.slot[p as usize] = NOT_STAGED;
            // Staged pages were all found in the image when applied.
            if let Some(dst) = self.image.page_mut(p) {
                dst.copy_from_slice(&page[..]);
            }
            let _ = self.hashes.set(p, hash);
            if self.pool.len() < pool_max {
                self.pool.push(page);
            }
        }
        self.committed = epoch;
        Ok(())
    }

    fn check_commit(&self, epoch: Epoch, digest: &Digest, page_count: u64) -> Result<(), ApplyError> {
        let s = self.staging.as_ref().ok_or(ApplyError::NoEpoch)?;
        // A catch-up begun at `s.epoch` commits at a later cut.
        if epoch < s.epoch {
            return Err(ApplyError::WrongEpoch);
        }
        if s.records != page_count {
            return Err(ApplyError::PageCountMismatch);
        }
        let after = self.hashes.digest_after(s.pages.iter().map(|(p, _, h)| (*p, *h))).map_err(|_| ApplyError::PageOutOfRange)?;
        if &after != digest {
            return Err(ApplyError::DigestMismatch);
        }
        Ok(())
    }
}

/// A new page buffer; None when memory is out.
fn new_page() -> Option<Box<Page>> {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(PAGE_SIZE).ok()?;
    v.resize(PAGE_SIZE, 0);
    v.into_boxed_slice().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{encode_page_record, BatchEncoder};
    use crate::digest::{content_digest, VecMemory};
    use crate::page::hash_page;

    fn page(seed: u8) -> Page {
        core::array::from_fn(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
    }

    /// The digest an image of `pages` would have.
    fn digest_of(pages: &[Page]) -> Digest {
        let mut m = VecMemory::zeroed(pages.len());
        m.pages_mut().copy_from_slice(pages);
        PageHashes::of_memory(&m).digest()
    }

    fn fresh(n: usize) -> Applier<VecMemory> {
        Applier::with_hashes(VecMemory::zeroed(n), 0, PageHashes::zeroed(n as u64))
    }

    #[test]
    fn epochs_commit_and_deltas_use_the_committed_base() {
        let mut a = fresh(4);
        let mut want = [[0u8; PAGE_SIZE]; 4];
        // Epoch 1: pages 1 and 3 whole.
        want[1] = page(3);
        want[3] = page(5);
        let mut b = Vec::new();
        let mut w = BatchEncoder::new();
        w.encode(1, &want[1], None, &mut b).unwrap();
        w.encode(3, &want[3], None, &mut b).unwrap();
        a.begin(1, 0).unwrap();
        a.apply_batch(&b).unwrap();
        a.commit(1, &digest_of(&want), 2).unwrap();
        assert_eq!(a.image().pages(), &want);
        assert_eq!(a.committed_epoch(), 1);
        // Epoch 2: a delta of page 1 against its epoch-1 content, split
        // over two batches with a page-0 record.
        let old = want[1];
        want[1][10] ^= 0xff;
        want[0][0] = 1;
        let (mut b1, mut b2) = (Vec::new(), Vec::new());
        let o = encode_page_record(1, &want[1], Some(&old), &mut b1).unwrap();
        assert_eq!(o.kind, crate::delta::RecordKind::Delta);
        encode_page_record(0, &want[0], Some(&[0u8; PAGE_SIZE]), &mut b2).unwrap();
        a.begin(2, 1).unwrap();
        a.apply_batch(&b1).unwrap();
        assert_eq!(a.image().pages()[1], old, "staged, not committed yet");
        a.apply_batch(&b2).unwrap();
        a.commit(2, &digest_of(&want), 2).unwrap();
        assert_eq!(a.image().pages(), &want);
        assert_eq!(a.digest(), digest_of(&want));
        assert_eq!(content_digest(a.image()), {
            let mut m = VecMemory::zeroed(4);
            m.pages_mut().copy_from_slice(&want);
            content_digest(&m)
        });
    }

    fn committed_one() -> (Applier<VecMemory>, [Page; 2]) {
        let mut a = fresh(2);
        let want = [page(1), page(2)];
        let mut b = Vec::new();
        let mut w = BatchEncoder::new();
        w.encode(0, &want[0], None, &mut b).unwrap();
        w.encode(1, &want[1], None, &mut b).unwrap();
        a.begin(1, 0).unwrap();
        a.apply_batch(&b).unwrap();
        a.commit(1, &digest_of(&want), 2).unwrap();
        (a, want)
    }

    #[test]
    fn every_failure_leaves_the_committed_image() {
        let (_, want) = committed_one();
        let mut next = want;
        next[0][7] ^= 1;
        let mut good = Vec::new();
        encode_page_record(0, &next[0], Some(&want[0]), &mut good).unwrap();
        let d = digest_of(&next);
        type Case = fn(&mut Applier<VecMemory>, &[u8], &Digest) -> Result<(), ApplyError>;
        let cases: &[(Case, ApplyError)] = &[
            (|a, _, _| a.apply_batch(&[]), ApplyError::NoEpoch),
            (|a, _, d| a.commit(2, d, 1), ApplyError::NoEpoch),
            (|a, _, _| a.begin(1, 1), ApplyError::StaleEpoch),
            (|a, _, _| a.begin(2, 0), ApplyError::BaseMismatch { have: 1, want: 0 }),
            (
                |a, g, d| {
                    a.begin(3, 1)?;
                    a.apply_batch(g)?;
                    a.commit(2, d, 1)
                },
                ApplyError::WrongEpoch,
            ),
            (
                |a, g, d| {
                    a.begin(2, 1)?;
                    a.apply_batch(g)?;
                    a.commit(2, d, 2)
                },
                ApplyError::PageCountMismatch,
            ),
            (
                |a, g, _| {
                    a.begin(2, 1)?;
                    a.apply_batch(g)?;
                    a.commit(2, &[0; 32], 1)
                },
                ApplyError::DigestMismatch,
            ),
            (
                |a, g, d| {
                    a.begin(2, 1)?;
                    a.apply_batch(g)?;
                    a.apply_batch(g)?;
                    a.commit(2, d, 1)
                },
                ApplyError::PageCountMismatch,
            ),
            (
                |a, g, _| {
                    a.begin(2, 1)?;
                    a.apply_batch(&g[..g.len() - 1])
                },
                ApplyError::Record(DeltaError::Truncated),
            ),
            (
                |a, _, _| {
                    a.begin(2, 1)?;
                    a.begin(3, 1)
                },
                ApplyError::EpochOpen,
            ),
            (
                |a, g, _| {
                    a.begin(2, 1)?;
                    let mut bad = g.to_vec();
                    bad[0] = 2 << 2 | 3; // page 2 of a 2-page image
                    a.apply_batch(&bad)
                },
                ApplyError::PageOutOfRange,
            ),
            (
                |a, g, _| {
                    a.begin(2, 1)?;
                    let mut bad = g.to_vec();
                    let last = bad.len() - 1;
                    bad[last] ^= 0x55; // a run byte: the result fails its hash
                    a.apply_batch(&bad)
                },
                ApplyError::Record(DeltaError::HashMismatch),
            ),
        ];
        for (i, (case, err)) in cases.iter().enumerate() {
            let (mut a, _) = committed_one();
            assert_eq!(case(&mut a, &good, &d), Err(*err), "case {i}");
            assert_eq!(a.image().pages(), &want, "case {i}");
            assert_eq!(a.committed_epoch(), 1, "case {i}");
            assert_eq!(a.staging_epoch(), None, "case {i}: staging dropped");
            assert_eq!(a.digest(), digest_of(&want));
            // And the good epoch still applies afterwards.
            a.begin(2, 1).unwrap();
            a.apply_batch(&good).unwrap();
            a.commit(2, &d, 1).unwrap();
            assert_eq!(a.image().pages(), &next, "case {i}");
        }
    }

    #[test]
    fn a_catch_up_replaces_pages_and_commits_at_a_later_cut() {
        let (mut a, want) = committed_one();
        // Begun as epoch 3, page 0 sent twice (the guest wrote it again after
        // its first record), page 1 once; committed as the cut of epoch 5.
        let mut next = want;
        let mut b = Vec::new();
        let mut w = BatchEncoder::new();
        w.encode(0, &page(7), None, &mut b).unwrap();
        w.encode(1, &page(8), None, &mut b).unwrap();
        a.begin(3, 1).unwrap();
        a.apply_batch(&b).unwrap();
        next[0] = page(9);
        next[1] = page(8);
        let mut again = Vec::new();
        encode_page_record(0, &next[0], None, &mut again).unwrap();
        a.apply_batch(&again).unwrap();
        assert_eq!(a.image().pages(), &want, "staged only");
        assert_eq!(a.commit(5, &digest_of(&next), 2), Err(ApplyError::PageCountMismatch), "three records");
        assert_eq!(a.committed_epoch(), 1);
        a.begin(3, 1).unwrap();
        a.apply_batch(&b).unwrap();
        a.apply_batch(&again).unwrap();
        a.commit(5, &digest_of(&next), 3).unwrap();
        assert_eq!(a.image().pages(), &next);
        assert_eq!(a.committed_epoch(), 5);
        assert_eq!(a.digest(), digest_of(&next));
        // A delta after a replacement still applies to the committed page.
        let (mut d1, mut d2) = (Vec::new(), Vec::new());
        let mut last = next;
        last[1][3] ^= 0x40;
        encode_page_record(1, &page(2), None, &mut d1).unwrap();
        encode_page_record(1, &last[1], Some(&next[1]), &mut d2).unwrap();
        a.begin(6, 5).unwrap();
        a.apply_batch(&d1).unwrap();
        a.apply_batch(&d2).unwrap();
        a.commit(6, &digest_of(&last), 2).unwrap();
        assert_eq!(a.image().pages(), &last);
    }

    /// Whole records of pages `0..n` with content `page(seed + p)`.
    fn whole(n: u64, seed: u8) -> Vec<u8> {
        let mut b = Vec::new();
        let mut w = BatchEncoder::new();
        for p in 0..n {
            w.encode(p, &page(seed.wrapping_add(p as u8)), None, &mut b).unwrap();
        }
        b
    }

    #[test]
    fn an_epoch_within_the_staging_budget_keeps_the_committed_image() {
        let (mut a, want) = committed_one();
        a.set_staging_budget(2 * STAGED_PAGE_BYTES);
        a.begin(2, 1).unwrap();
        a.apply_batch(&whole(2, 40)).unwrap();
        assert!(a.holds_committed_image());
        assert_eq!((a.committed_epoch(), a.image().pages()), (1, &want[..]), "staged only");
        a.abort();
        assert_eq!((a.committed_epoch(), a.image().pages()), (1, &want[..]));
    }

    #[test]
    fn an_epoch_past_the_staging_budget_goes_in_place_and_commits() {
        let mut a = fresh(8);
        a.set_staging_budget(3 * STAGED_PAGE_BYTES);
        a.begin(1, 0).unwrap();
        a.apply_batch(&whole(8, 1)).unwrap();
        a.commit(1, &digest_of(&core::array::from_fn::<Page, 8, _>(|p| page(1 + p as u8))), 8).unwrap();
        // Epoch 2 changes 5 pages, over the 3 staging holds: after the
        // third, the image is no committed epoch's and says so.
        let want: [Page; 8] = core::array::from_fn(|p| if p < 5 { page(50 + p as u8) } else { page(1 + p as u8) });
        a.begin(2, 1).unwrap();
        a.apply_batch(&whole(3, 50)).unwrap();
        assert!(a.holds_committed_image(), "3 pages fit");
        let mut rest = Vec::new();
        let mut w = BatchEncoder::new();
        for p in 3..5u64 {
            w.encode(p, &want[p as usize], None, &mut rest).unwrap();
        }
        a.apply_batch(&rest).unwrap();
        assert!(!a.holds_committed_image());
        assert_eq!(a.committed_epoch(), 0, "a torn image claims no epoch");
        // A page written again, whole, in the same epoch (a catch-up).
        let mut again = Vec::new();
        encode_page_record(0, &want[0], None, &mut again).unwrap();
        a.apply_batch(&again).unwrap();
        a.commit(2, &digest_of(&want), 6).unwrap();
        assert!(a.holds_committed_image());
        assert_eq!((a.committed_epoch(), a.image().pages()), (2, &want[..]));
        assert_eq!(a.digest(), PageHashes::of_memory(a.image()).digest());
        // The next epochs stage again (and deltas apply).
        let mut next = want;
        next[6][9] ^= 0x11;
        let mut d = Vec::new();
        encode_page_record(6, &next[6], Some(&want[6]), &mut d).unwrap();
        a.begin(3, 2).unwrap();
        a.apply_batch(&d).unwrap();
        assert!(a.holds_committed_image());
        a.commit(3, &digest_of(&next), 1).unwrap();
        assert_eq!(a.image().pages(), &next);
    }

    #[test]
    fn a_torn_image_resyncs_from_epoch_zero_with_whole_pages() {
        let mut a = fresh(4);
        a.set_staging_budget(STAGED_PAGE_BYTES);
        a.begin(1, 0).unwrap();
        a.apply_batch(&whole(4, 1)).unwrap();
        a.commit(1, &digest_of(&core::array::from_fn::<Page, 4, _>(|p| page(1 + p as u8))), 4).unwrap();
        // Epoch 2 spills, then a Delta for a page already rewritten in
        // place fails (its base is gone) and the link is cut.
        let old = page(1);
        a.begin(2, 1).unwrap();
        a.apply_batch(&whole(2, 70)).unwrap();
        let mut d = Vec::new();
        let mut changed = old;
        changed[0] ^= 1;
        encode_page_record(0, &changed, Some(&old), &mut d).unwrap();
        assert_eq!(a.apply_batch(&d), Err(ApplyError::RewrittenInPlace));
        assert_eq!(a.staging_epoch(), None);
        assert!(!a.holds_committed_image());
        assert_eq!(a.committed_epoch(), 0);
        assert_eq!(a.begin(3, 1), Err(ApplyError::BaseMismatch { have: 0, want: 1 }));
        // The hashes follow the torn image, and a resync from 0 (every page
        // whole) commits.
        assert_eq!(a.digest(), PageHashes::of_memory(a.image()).digest());
        let want: [Page; 4] = core::array::from_fn(|p| page(90 + p as u8));
        a.begin(3, 0).unwrap();
        a.apply_batch(&whole(4, 90)).unwrap();
        a.commit(3, &digest_of(&want), 4).unwrap();
        assert!(a.holds_committed_image());
        assert_eq!((a.committed_epoch(), a.image().pages()), (3, &want[..]));
    }

    #[test]
    fn cut_epoch_is_dropped_by_abort() {
        let (mut a, want) = committed_one();
        let mut b = Vec::new();
        encode_page_record(1, &page(9), None, &mut b).unwrap();
        a.begin(5, 1).unwrap();
        a.apply_batch(&b).unwrap();
        a.abort();
        assert_eq!(a.image().pages(), &want);
        assert_eq!(a.staging_epoch(), None);
        assert_eq!(a.page_hashes().get(1), Some(hash_page(&want[1])));
    }

    #[test]
    fn new_hashes_an_existing_image() {
        let mut m = VecMemory::zeroed(3);
        m.pages_mut()[2] = page(4);
        let a = Applier::new(m.clone(), 7);
        assert_eq!(a.committed_epoch(), 7);
        assert_eq!(a.digest(), PageHashes::of_memory(&m).digest());
        let (img, hashes, e) = a.into_parts();
        assert_eq!((img, e), (m, 7));
        assert_eq!(hashes.get(2), Some(hash_page(&page(4))));
    }
}
