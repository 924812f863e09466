//! Catch-up: how a standby that is behind its link's budget is brought
//! back in step without the active device holding a copy of what it owes.
//!
//! A link's memory (sealed frames not yet sent, plus what one cut would add)
//! has a budget (`Link::set_budget`). At a cut, a link in step whose queue
//! plus the epoch's worst-case size would pass it is not sent the epoch:
//! it starts a catch-up, which remembers only WHICH pages the standby owes
//! (`owed`, one bit per page: every page changed since the standby's base).
//! From then on, at every cut, owed |= that cut's dirty pages.
//!
//! While the guest runs, the peers' pump tops the link's queue up (only
//! while it is under a low-water mark) with owed pages read from the
//! CURRENT guest memory, whole (Full or Zero: they are not content at a
//! cut, so no delta against a shadow), a bounded batch at a time
//! (`Link::stream`). A page written after its record was sent is owed
//! again at the next cut. On the wire it is one epoch that spans cuts:
//! EpochBegin{epoch: the open epoch when the catch-up started, base: the
//! standby's base}, PageRecords of that epoch with consecutive `seq`, and,
//! at the first cut `m` where what is still owed fits the budget, the rest
//! of the owed pages with their content at the cut (whole, the guest
//! paused), the CpuState/DeviceState of the cut and EpochCommit{m, digest
//! of the guest at m}. The standby stages all of it and commits only then
//! (a page staged twice keeps the later record), so its committed image is
//! always a cut's. A new standby of a full guest is the same path with
//! every page owed.
//!
//! Streaming never touches a shadow or `shadow_epoch` (its content is no
//! cut's). At the final cut, pages streamed in this catch-up and not sent
//! again get their shadow replaced by their content at `m` (the content
//! the standby commits) and `shadow_epoch = m`: see `resume` for why the
//! shared-shadow rule needs it. That content is the guest's own page until
//! its next write, so the shadow is left implicit and made at that write:
//! ending a catch-up copies nothing, whatever it streamed.
//!
//! Being behind costs two bits per page (owed, streamed), never a copy of
//! the data, and the link is never dropped for it.
//!
//! A switch to a standby that is catching up waits (the hypervisor keeps the
//! request until the standby is in step, the guest running meanwhile; a
//! target that falls behind at the final cut gets a bounded wait, the guest
//! paused, for a later empty cut to end its catch-up).

use alloc::vec::Vec;

use crate::delta::{BatchEncoder, MAX_PAGE_RECORD};
use crate::digest::PageMemory;
use crate::epoch::{EpochError, Link};
use crate::resume::{ResumeTracker, StandbyId};
use crate::wire::{Epoch, Message, MAX_BATCH_RAW};

/// One bit per guest page.
#[derive(Debug, Clone)]
pub struct PageBits {
    words: Vec<u64>,
    pages: u64,
    count: u64,
}

impl PageBits {
    /// All clear; `OutOfMemory` when there is no room for the words.
    pub fn try_new(pages: u64) -> Result<Self, EpochError> {
        let n = pages.div_ceil(64) as usize;
        let mut words = Vec::new();
        words.try_reserve_exact(n).map_err(|_| EpochError::OutOfMemory)?;
        words.resize(n, 0);
        Ok(Self { words, pages, count: 0 })
    }

    /// Pages set.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn get(&self, p: u64) -> bool {
        self.words.get((p / 64) as usize).is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    /// Sets `p` (ignored outside the range).
    pub fn set(&mut self, p: u64) {
        if p >= self.pages {
            return;
        }
        if let Some(w) = self.words.get_mut((p / 64) as usize) {
            let bit = 1 << (p % 64);
            self.count += (*w & bit == 0) as u64;
            *w |= bit;
        }
    }

    pub fn clear(&mut self, p: u64) {
        if let Some(w) = self.words.get_mut((p / 64) as usize) {
            let bit = 1 << (p % 64);
            self.count -= (*w & bit != 0) as u64;
            *w &= !bit;
        }
    }

    /// The first page set at or after `from`.
    pub fn next_from(&self, from: u64) -> Option<u64> {
        if from >= self.pages {
            return None;
        }
        let mut i = (from / 64) as usize;
        let mut w = self.words[i] & (u64::MAX << (from % 64));
        loop {
            if w != 0 {
                return Some(i as u64 * 64 + w.trailing_zeros() as u64);
            }
            i += 1;
            w = *self.words.get(i)?;
        }
    }

    /// The pages set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut at = 0;
        core::iter::from_fn(move || {
            let p = self.next_from(at)?;
            at = p + 1;
            Some(p)
        })
    }
}

/// Sealed bytes `pages` whole-page records can take at most, in as many
/// PageRecords frames as they need: zstd's bound on incompressible input
/// (size + size/256, 64 bytes for a small input, a frame header and a block
/// header per 128 KiB, within size/128 + 128), then per frame the message
/// and frame headers and the seal's tag (within 128).
pub fn worst_case_bytes(pages: u64) -> usize {
    let raw = pages as usize * MAX_PAGE_RECORD;
    let batches = pages.div_ceil(STREAM_PAGES) as usize;
    raw + raw / 128 + batches * 256
}

/// Bytes of the frames that open and close an epoch (EpochBegin,
/// EpochCommit) with room to spare.
pub const EPOCH_FRAMES: usize = 256;

/// The most pages one `stream` call sends: one batch.
pub const STREAM_PAGES: u64 = (MAX_BATCH_RAW / MAX_PAGE_RECORD - 1) as u64;

/// One link's catch-up in progress.
#[derive(Debug)]
pub struct CatchUp {
    /// The epoch its EpochBegin names.
    pub(crate) epoch: Epoch,
    /// The image its records apply to (the standby's base when it started).
    pub(crate) base: Epoch,
    /// EpochBegin went out.
    pub(crate) begun: bool,
    /// Pages the standby still needs.
    pub(crate) owed: PageBits,
    /// Pages sent by streaming in this catch-up.
    pub(crate) streamed: PageBits,
    /// Where the next stream call looks first (a pass over the guest, so
    /// a page is streamed at most once per pass).
    cursor: u64,
    pub(crate) seq: u32,
    pub(crate) records: u64,
}

/// Figures of a link's catch-ups (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUpStats {
    /// Catch-ups started / finished (committed at a cut).
    pub started: u64,
    pub finished: u64,
    /// Pages owed when each catch-up started, summed.
    pub owed_at_start: u64,
    /// Pages sent by streaming, and at final cuts.
    pub streamed_pages: u64,
    pub final_pages: u64,
    /// Sealed bytes of all catch-up frames.
    pub sealed_bytes: u64,
}

impl CatchUp {
    /// A catch-up of standby `id` from its base: every page changed since
    /// is owed. The epoch it names is the open one.
    pub(crate) fn start(tracker: &ResumeTracker, id: StandbyId) -> Result<Self, EpochError> {
        let base = tracker.standby(id).ok_or(crate::resume::ResumeError::UnknownStandby)?.base;
        let n = tracker.page_count();
        let mut owed = PageBits::try_new(n)?;
        for p in tracker.changed_since(base) {
            owed.set(p);
        }
        Ok(Self { epoch: tracker.open_epoch(), base, begun: false, owed, streamed: PageBits::try_new(n)?, cursor: 0, seq: 0, records: 0 })
    }

    pub fn owed(&self) -> u64 {
        self.owed.count()
    }

    /// The epoch its EpochBegin names.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
}

impl Link {
    /// Whether the pump should `stream` now: a catch-up owes pages and the
    /// queue is under the low-water mark (a quarter of the budget).
    pub fn wants_stream(&self) -> bool {
        self.catchup.as_ref().is_some_and(|c| c.owed.count() > 0) && self.queued() < self.budget / 4
    }

    /// Sends owed pages of the catch-up from `guest` as it is now, whole, up
    /// to one batch and never past half the budget; pages `dirty_now` says
    /// are written in the open epoch are left (they are owed again at the
    /// cut anyway). Returns the pages sent. An error leaves the stream
    /// unusable: drop the link.
    pub fn stream<G: PageMemory>(&mut self, guest: &G, dirty_now: impl Fn(u64) -> bool) -> Result<u64, EpochError> {
        self.stream_at_most(guest, dirty_now, STREAM_PAGES)
    }

    /// As `stream`, at most `pages` pages (one batch at most).
    pub fn stream_at_most<G: PageMemory>(&mut self, guest: &G, dirty_now: impl Fn(u64) -> bool, pages: u64) -> Result<u64, EpochError> {
        let room = (self.budget / 2).saturating_sub(self.queued() + EPOCH_FRAMES);
        let mut max = pages.min(STREAM_PAGES);
        while max > 0 && worst_case_bytes(max) > room {
            max /= 2;
        }
        let Some(c) = self.catchup.as_mut() else { return Ok(0) };
        if max == 0 || c.owed.count() == 0 {
            return Ok(0);
        }
        let mut raw = Vec::new();
        raw.try_reserve_exact(max as usize * MAX_PAGE_RECORD).map_err(|_| EpochError::OutOfMemory)?;
        let mut batch = BatchEncoder::new();
        let (mut sent, mut looked, mut wrapped) = (0u64, 0u64, false);
        let mut at = c.cursor;
        let total = c.owed.count();
        // Ascending from the cursor to the end of the guest; the next call
        // goes on from there, and wraps to the start (a batch's pages
        // ascend, so a wrap only starts an empty batch).
        while sent < max && looked < total {
            let Some(p) = c.owed.next_from(at) else {
                if sent > 0 || wrapped {
                    break;
                }
                (at, wrapped) = (0, true);
                continue;
            };
            at = p + 1;
            looked += 1;
            if dirty_now(p) {
                continue;
            }
            let content = guest.page(p).ok_or(EpochError::PageOutOfRange)?;
            // Whole: a streamed page is no cut's content, so no shadow applies.
            batch.encode(p, content, None, &mut raw).map_err(|_| EpochError::PageOutOfRange)?;
            c.owed.clear(p);
            c.streamed.set(p);
            sent += 1;
        }
        c.cursor = at;
        if sent == 0 {
            return Ok(0);
        }
        let (epoch, base, begun, seq) = (c.epoch, c.base, c.begun, c.seq);
        let mut bytes = 0;
        if !begun {
            bytes += self.send(&Message::EpochBegin { epoch, base })?;
        }
        bytes += self.seal_batch(epoch, seq, &raw)?.0;
        if let Some(c) = self.catchup.as_mut() {
            c.begun = true;
            c.seq += 1;
            c.records += sent;
        }
        self.catchup_stats.streamed_pages += sent;
        self.catchup_stats.sealed_bytes += bytes as u64;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_bits_count_and_walk() {
        let mut b = PageBits::try_new(130).unwrap();
        for p in [129, 3, 64, 3, 500, 130] {
            b.set(p);
        }
        assert_eq!(b.count(), 3, "500 and 130 are out of range, 3 twice");
        assert_eq!(b.iter().collect::<Vec<_>>(), [3, 64, 129]);
        assert_eq!(b.next_from(4), Some(64));
        assert_eq!(b.next_from(130), None);
        b.clear(64);
        b.clear(64);
        assert_eq!((b.count(), b.next_from(4)), (2, Some(129)));
        assert!(b.get(3) && !b.get(64) && !b.get(999));
    }

    #[test]
    fn worst_case_covers_incompressible_batches() {
        assert!(worst_case_bytes(1) > MAX_PAGE_RECORD);
        assert!(worst_case_bytes(STREAM_PAGES) < MAX_BATCH_RAW + (16 << 10));
        assert_eq!(worst_case_bytes(0), 0);
        // What zstd makes of random pages stays within it.
        let mut c = crate::compress::Compressor::new(crate::compress::ZstdConfig::default()).unwrap();
        let mut x = 88172645463325252u64;
        for pages in [1u64, 2, 37, STREAM_PAGES] {
            let raw: Vec<u8> = (0..pages as usize * MAX_PAGE_RECORD)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut out = Vec::new();
            let n = c.compress_batch(&raw, &mut out).unwrap();
            assert!(n + 64 <= worst_case_bytes(pages), "{pages} pages: {n} bytes");
        }
    }
}
