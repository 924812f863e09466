//! The active side's epoch encoder: at a cut, turns the dirty pages (and,
//! for a standby that is behind, every page changed since its base) into
//! page records, compressed batches and sealed frames for each standby
//! link, keeping the shadows, the resume bookkeeping, the image digest and
//! the stats in step.
//!
//! Call `cut` with the guest paused (or its dirty pages copied): the batch
//! of an epoch must be the guest's content at the cut (see `resume`).
//! An error from `cut` or `on_frame` leaves a link's stream unusable: the
//! caller drops that link and the standby reconnects. A link whose own
//! encoding failed at a cut (no memory for a frame) is marked `broken` and
//! the cut goes on for the others.
//!
//! Each link holds at most its budget: a link whose epoch would not fit is
//! sent no epoch but starts a catch-up (`catchup`) instead.

use alloc::vec::Vec;

use crate::catchup::{worst_case_bytes, CatchUp, CatchUpStats, EPOCH_FRAMES};
use crate::compress::{Compressor, ZstdConfig, ZstdError};
use crate::delta::{BatchEncoder, Next, RecordKind, MAX_PAGE_RECORD};
use crate::digest::{PageHashes, PageMemory};
use crate::outq::FrameQueue;
use crate::page::hash_page;
use crate::resume::{ResumeError, ResumeTracker, StandbyId};
use crate::shadow::{Budget, ShadowError, ShadowStore};
use crate::stats::EpochStats;
use crate::wire::{Epoch, Frame, Message, Session, WireError, MAX_BATCH_RAW};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochError {
    Resume(ResumeError),
    Wire(WireError),
    Zstd(ZstdError),
    Shadow(ShadowError),
    /// The guest memory has no such page.
    PageOutOfRange,
    /// The standby sent something only an active side sends.
    Unexpected,
    /// No memory for what the link needed (a frame, a bitmap).
    OutOfMemory,
}

impl From<ResumeError> for EpochError {
    fn from(e: ResumeError) -> Self {
        EpochError::Resume(e)
    }
}
impl From<WireError> for EpochError {
    fn from(e: WireError) -> Self {
        EpochError::Wire(e)
    }
}
impl From<ZstdError> for EpochError {
    fn from(e: ZstdError) -> Self {
        EpochError::Zstd(e)
    }
}

/// One standby's connection as the encoder sees it: its session, its zstd
/// stream, the frames waiting for its socket, its budget and catch-up.
pub struct Link {
    id: StandbyId,
    session: Session,
    compressor: Compressor,
    /// Sealed frames to send, in order.
    pub out: FrameQueue,
    /// Most bytes `out` may hold (see `catchup`).
    pub(crate) budget: usize,
    pub(crate) catchup: Option<CatchUp>,
    pub catchup_stats: CatchUpStats,
    /// Most bytes `out` held at once.
    peak: usize,
    /// The link's stream broke at a cut (why): the caller drops the link.
    broken: Option<EpochError>,
    /// Nobody reads the link: it is encoded to measure each epoch, so it
    /// gets the cut's own pages whatever it holds (`set_figures_only`).
    figures_only: bool,
}

impl Link {
    /// A link for standby `id` over an established session, with no budget
    /// (`set_budget`); call `ActiveSync::connect` with the standby's last
    /// committed epoch too.
    pub fn new(id: StandbyId, session: Session, zstd: ZstdConfig) -> Result<Self, EpochError> {
        Ok(Self {
            id,
            session,
            compressor: Compressor::new(zstd)?,
            out: FrameQueue::new(),
            budget: usize::MAX,
            catchup: None,
            catchup_stats: CatchUpStats::default(),
            peak: 0,
            broken: None,
            figures_only: false,
        })
    }

    /// The link only measures epochs (nobody applies it, its queue
    /// discards): each cut encodes just the pages written in it, as for a
    /// standby in step. Its first epoch is then what the guest and its
    /// loader wrote, not every page of RAM, so the first cut's pause does
    /// not grow with the guest's size.
    pub fn set_figures_only(&mut self) {
        self.figures_only = true;
        self.out.set_discard(true);
    }

    /// The most bytes the link may hold queued.
    pub fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes;
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    pub fn id(&self) -> StandbyId {
        self.id
    }

    /// Bytes queued for the socket.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Most bytes queued at once so far.
    pub fn peak_queued(&self) -> usize {
        self.peak
    }

    /// The catch-up in progress, if the link is behind.
    pub fn catchup(&self) -> Option<&CatchUp> {
        self.catchup.as_ref()
    }

    /// Why the link's stream broke, if it did: drop the link.
    pub fn broken(&self) -> Option<EpochError> {
        self.broken
    }

    /// Seals any message (CpuState, DeviceState, SwitchDone...) onto `out`;
    /// returns its bytes on the wire.
    pub fn send(&mut self, msg: &Message) -> Result<usize, EpochError> {
        self.out.reserve_one()?;
        let mut frame = Vec::new();
        let n = self.session.seal(msg, &mut frame)?;
        self.out.push(frame);
        self.peak = self.peak.max(self.out.len());
        Ok(n)
    }

    /// Compresses `raw` (page records) and seals it as PageRecords `seq` of
    /// `epoch`; returns the sealed and compressed bytes.
    pub(crate) fn seal_batch(&mut self, epoch: Epoch, seq: u32, raw: &[u8]) -> Result<(usize, usize), EpochError> {
        let mut data = Vec::new();
        let n = self.compressor.compress_batch(raw, &mut data)?;
        // raw is kept below MAX_BATCH_RAW by the callers, which fits u32.
        let msg = Message::PageRecords { epoch, seq, raw_len: raw.len() as u32, data };
        Ok((self.send(&msg)?, n))
    }
}

/// What a frame from a standby meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveEvent {
    Acked(Epoch),
    /// The standby rolled back to this epoch; the next cut resumes from it.
    Resync(Epoch),
    SwitchRequested,
    /// The standby took the guest over at `epoch` under `term` (its answer
    /// to SwitchDone).
    SwitchTaken {
        epoch: Epoch,
        term: crate::fence::Term,
    },
}

/// The active side's sync state, shared by all standby links.
pub struct ActiveSync {
    tracker: ResumeTracker,
    shadows: ShadowStore,
    /// Page hashes of the guest at the last cut (what EpochCommit digests).
    hashes: PageHashes,
    /// After a lazy switch: per page, whether its shadow is still implicit
    /// (the guest's own content, unchanged since the last cut). Bit words.
    unseeded: Vec<u64>,
}

/// Per-link state while one epoch is encoded.
struct Out {
    /// Pages to send (empty for a link that gets nothing at this cut).
    pages: Vec<u64>,
    /// The link gets no epoch at this cut (it is catching up).
    skip: bool,
    /// The link's catch-up ends at this cut: every page goes whole.
    whole: bool,
    /// The epoch its PageRecords name (the cut's; a catch-up's own).
    epoch: Epoch,
    /// Its encoding failed: nothing more goes to it.
    failed: Option<EpochError>,
    cursor: usize,
    raw: Vec<u8>,
    /// Page-number gaps of the batch in `raw`.
    batch: BatchEncoder,
    seq: u32,
    /// Records sent in the epoch (Same pages are not sent).
    records: u64,
    stats: EpochStats,
}

impl ActiveSync {
    /// Sync of a guest starting now: epoch 1 will send every page; every
    /// standby starts from the all-zero image of epoch 0.
    pub fn new(page_count: u64, budget: Budget) -> Result<Self, EpochError> {
        Ok(Self {
            tracker: ResumeTracker::new(page_count),
            shadows: ShadowStore::new(page_count, budget).map_err(EpochError::Shadow)?,
            hashes: PageHashes::zeroed(page_count),
            unseeded: Vec::new(),
        })
    }

    /// As `new`, for a guest whose RAM is all zero but for the pages the
    /// caller marks written in epoch 1 (its loader's and the guest's): the
    /// first cut hashes and encodes only those (see
    /// `ResumeTracker::over_zeroed`); every standby still gets every page
    /// from epoch 0.
    pub fn over_zeroed(page_count: u64, budget: Budget) -> Result<Self, EpochError> {
        Ok(Self { tracker: ResumeTracker::over_zeroed(page_count), ..Self::new(page_count, budget)? })
    }

    /// Sync on a device that has just become active with the committed
    /// image of epoch `committed` (a standby's applier after SwitchDone):
    /// its pages seed the shadows (as far as the budget goes), so the old
    /// active device, holding the same epoch, gets deltas only.
    pub fn after_switch(image: &impl PageMemory, hashes: PageHashes, committed: Epoch, budget: Budget) -> Result<Self, EpochError> {
        let n = image.page_count();
        let mut tracker = ResumeTracker::after_switch(n, committed);
        let mut shadows = ShadowStore::new(n, budget).map_err(EpochError::Shadow)?;
        for p in 0..n {
            let page = image.page(p).ok_or(EpochError::PageOutOfRange)?;
            let h = hashes.get(p).ok_or(EpochError::PageOutOfRange)?;
            shadows.update_with_hash(p, page, h);
            tracker.record_shadow(p, committed)?;
        }
        Ok(Self { tracker, shadows, hashes, unseeded: Vec::new() })
    }

    /// As `after_switch`, without copying the image: guest memory itself
    /// holds the committed content until the guest writes a page, so each
    /// shadow is made at the page's first write (`seed_before_write`, called
    /// by the write-fault path while the page is still write-protected).
    /// Becoming active then costs no copy of guest RAM.
    pub fn after_switch_lazy(hashes: PageHashes, committed: Epoch, budget: Budget) -> Result<Self, EpochError> {
        let n = hashes.page_count();
        let tracker = ResumeTracker::after_switch(n, committed);
        let shadows = ShadowStore::new(n, budget).map_err(EpochError::Shadow)?;
        let mut unseeded = alloc::vec![u64::MAX; n.div_ceil(64) as usize];
        if !n.is_multiple_of(64) {
            if let Some(last) = unseeded.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        Ok(Self { tracker, shadows, hashes, unseeded })
    }

    /// The guest is about to write `page` for the first time since the last
    /// cut, and `content` is its content now (= at the last cut: the page
    /// was write-protected since). After a lazy switch, this is when the
    /// page's shadow is made. Cheap when there is nothing to do.
    pub fn seed_before_write(&mut self, page: u64, content: &crate::page::Page) -> Result<(), EpochError> {
        let (w, bit) = ((page / 64) as usize, 1u64 << (page % 64));
        let Some(word) = self.unseeded.get_mut(w) else { return Ok(()) };
        if *word & bit == 0 {
            return Ok(());
        }
        *word &= !bit;
        let h = self.hashes.get(page).ok_or(EpochError::PageOutOfRange)?;
        self.shadows.update_with_hash(page, content, h);
        self.tracker.record_shadow(page, self.tracker.last_cut())?;
        Ok(())
    }

    /// `page`'s shadow is the guest's own content until its next write.
    fn mark_unseeded(&mut self, page: u64) {
        if let Some(word) = self.unseeded.get_mut((page / 64) as usize) {
            *word |= 1u64 << (page % 64);
        }
    }

    fn mark_seeded(&mut self, page: u64) {
        if let Some(word) = self.unseeded.get_mut((page / 64) as usize) {
            *word &= !(1u64 << (page % 64));
        }
    }

    /// Page hashes of the guest at the last cut (a device that stops being
    /// active keeps them as its standby image's hashes).
    pub fn hashes(&self) -> &PageHashes {
        &self.hashes
    }

    pub fn tracker(&self) -> &ResumeTracker {
        &self.tracker
    }

    pub fn shadows(&self) -> &ShadowStore {
        &self.shadows
    }

    /// Digest of the guest image at the last cut.
    pub fn digest(&self) -> crate::wire::Digest {
        self.hashes.digest()
    }

    pub fn add_standby(&mut self) -> StandbyId {
        self.tracker.add_standby()
    }

    /// The standby on `id` connected holding `last_committed`.
    pub fn connect(&mut self, id: StandbyId, last_committed: Epoch) -> Result<(), EpochError> {
        Ok(self.tracker.on_connect(id, last_committed)?)
    }

    pub fn disconnect(&mut self, id: StandbyId) -> Result<(), EpochError> {
        Ok(self.tracker.on_disconnect(id)?)
    }

    /// Handles one frame from a standby.
    pub fn on_frame(&mut self, link: &mut Link, frame: Frame) -> Result<ActiveEvent, EpochError> {
        match link.session.open(frame)? {
            Message::Ack { epoch } => {
                self.tracker.on_ack(link.id, epoch)?;
                Ok(ActiveEvent::Acked(epoch))
            }
            Message::Resync { from_epoch } => {
                self.tracker.on_resync(link.id, from_epoch)?;
                // The standby resets its decompressor at the first epoch on
                // this base; the next batch we compress starts that stream.
                link.compressor.reset()?;
                // A catch-up in flight is dropped with the standby's staging:
                // it starts over from the new base (its EpochBegin is what
                // the standby waits for).
                if link.catchup.is_some() {
                    link.catchup = None;
                    let c = CatchUp::start(&self.tracker, link.id)?;
                    link.catchup_stats.started += 1;
                    link.catchup_stats.owed_at_start += c.owed();
                    link.catchup = Some(c);
                }
                Ok(ActiveEvent::Resync(from_epoch))
            }
            Message::SwitchRequest => Ok(ActiveEvent::SwitchRequested),
            Message::SwitchTaken { epoch, term } => Ok(ActiveEvent::SwitchTaken { epoch, term }),
            _ => Err(EpochError::Unexpected),
        }
    }

    /// Cuts the open epoch: `dirty` are the pages written in it. Encodes,
    /// compresses and seals the epoch for every link (each link's standby
    /// must be connected), appending to each link's `out`. Returns the
    /// epoch and one stats record per link, in the order of `links`.
    pub fn cut<G: PageMemory>(
        &mut self,
        dirty: impl IntoIterator<Item = u64>,
        guest: &G,
        links: &mut [&mut Link],
    ) -> Result<(Epoch, Vec<EpochStats>), EpochError> {
        self.cut_with_state(dirty, guest, links, &[])
    }

    /// As `cut`, with `state` (the guest's CpuState and DeviceState at the
    /// cut) sealed on every link before the EpochCommit, so a standby
    /// commits memory and vCPU state of the epoch together (what a switch
    /// and a failover resume from).
    pub fn cut_with_state<G: PageMemory>(
        &mut self,
        dirty: impl IntoIterator<Item = u64>,
        guest: &G,
        links: &mut [&mut Link],
        state: &[Message],
    ) -> Result<(Epoch, Vec<EpochStats>), EpochError> {
        for p in dirty {
            self.tracker.mark_dirty(p)?;
        }
        let m = self.tracker.cut();
        let dirty_pages = self.tracker.cut_dirty().len() as u64;
        // Sealed bytes the cut adds besides page records.
        let extra = EPOCH_FRAMES + state.iter().map(|s| s.encoded_len() + 64).sum::<usize>();

        let mut outs = Vec::with_capacity(links.len());
        for link in links.iter_mut() {
            let mut stats = EpochStats::new(m);
            stats.dirty_pages = dirty_pages;
            let mut o = Out {
                pages: Vec::new(),
                skip: true,
                whole: false,
                epoch: m,
                failed: None,
                cursor: 0,
                raw: Vec::new(),
                batch: BatchEncoder::new(),
                seq: 0,
                records: 0,
                stats,
            };
            if let Err(e) = self.plan(link, m, extra, &mut o) {
                o.failed = Some(e);
                o.skip = true;
                link.broken = Some(e);
            }
            outs.push(o);
        }

        // Every page any link needs, plus the dirty pages (whose hashes
        // change even when no standby is connected), each once, ascending.
        let mut all: Vec<u64> = outs.iter().flat_map(|o| o.pages.iter().copied()).collect();
        all.extend_from_slice(self.tracker.cut_dirty());
        all.sort_unstable();
        all.dedup();

        for (k, &p) in all.iter().enumerate() {
            // The encoder loads the next page and its shadow while it works
            // on this one (a hint only).
            let next_n = all.get(k + 1).copied();
            let next_page = next_n.and_then(|n| guest.page(n));
            let content = guest.page(p).ok_or(EpochError::PageOutOfRange)?;
            let mut sent_hash = None;
            for (link, o) in links.iter_mut().zip(outs.iter_mut()) {
                if o.pages.get(o.cursor) != Some(&p) {
                    continue;
                }
                o.cursor += 1;
                if o.failed.is_some() {
                    continue;
                }
                if o.raw.len() + MAX_PAGE_RECORD > MAX_BATCH_RAW {
                    if let Err(e) = flush(link, o) {
                        fail(link, o, e);
                        continue;
                    }
                }
                let (shadow, next_shadow) = if !o.whole && self.tracker.may_delta(link.id, p) {
                    self.shadows.get_shadow_and_peek(p, next_n)
                } else {
                    (None, next_n.and_then(|n| self.shadows.peek(n)))
                };
                let next = next_page.map(|page| Next { page, shadow: next_shadow });
                if o.raw.capacity() - o.raw.len() < MAX_PAGE_RECORD && o.raw.try_reserve(MAX_BATCH_RAW - o.raw.len()).is_err() {
                    fail(link, o, EpochError::OutOfMemory);
                    continue;
                }
                // Pages come in ascending order, each once, and p is a page
                // of the guest (far below MAX_PAGE_NUM).
                let r = o.batch.encode_next(p, content, shadow, next, &mut o.raw).map_err(|_| EpochError::PageOutOfRange)?;
                o.records += (r.kind != RecordKind::Same) as u64;
                o.stats.add_record(&r);
                sent_hash = Some(r.hash);
            }
            // Shadows change only after every link encoded the page, so all
            // of them diffed against the same shadow.
            let hash = match sent_hash {
                Some(h) => {
                    self.shadows.update_with_hash(p, content, h);
                    self.tracker.record_shadow(p, m)?;
                    self.mark_seeded(p);
                    h
                }
                None => hash_page(content),
            };
            self.hashes.set(p, hash).map_err(|_| EpochError::PageOutOfRange)?;
        }

        // Catch-ups ending here: pages streamed earlier and not sent again
        // hold, on the standby, their content at this cut, which their shadow
        // takes now (see `resume`, rule 1'). That content is the guest's own
        // page until its next write (it is not dirty, so write-protected):
        // the shadow is left implicit and made at that write
        // (`seed_before_write`), as after a switch. Copying it here instead
        // made the guest's pause grow with the catch-up (a whole guest for a
        // new standby: 8.7 s for 256 MiB under TCG). A stored shadow of an
        // older epoch is dropped, so none is served under the new tag.
        for (link, o) in links.iter_mut().zip(outs.iter()) {
            if !o.whole || o.failed.is_some() {
                continue;
            }
            let Some(c) = link.catchup.as_ref() else { continue };
            if c.streamed.count() > 0 && self.unseeded.is_empty() {
                let words = self.tracker.page_count().div_ceil(64) as usize;
                self.unseeded.try_reserve_exact(words).map_err(|_| EpochError::OutOfMemory)?;
                self.unseeded.resize(words, 0);
            }
            for p in c.streamed.iter() {
                if c.owed.get(p) {
                    continue; // sent whole at this cut: done above
                }
                self.shadows.invalidate(p);
                self.tracker.record_shadow(p, m)?;
                self.mark_unseeded(p);
            }
        }

        let digest = self.hashes.digest();
        let mut stats = Vec::with_capacity(links.len());
        for (link, mut o) in links.iter_mut().zip(outs) {
            if !o.skip && o.failed.is_none() {
                if let Err(e) = finish(link, &mut o, state, m, &digest) {
                    fail(link, &mut o, e);
                }
            }
            if o.failed.is_none() && !o.skip {
                self.tracker.record_sent(link.id, m)?;
                if o.whole {
                    link.catchup = None;
                    link.catchup_stats.finished += 1;
                    link.catchup_stats.final_pages += o.pages.len() as u64;
                    link.catchup_stats.sealed_bytes += o.stats.sealed_bytes;
                }
            }
            stats.push(o.stats);
        }
        Ok((m, stats))
    }

    /// What `link` gets at cut `m` (`extra`: the bytes besides page records):
    /// the epoch, if it fits the link's budget; otherwise, for a link in
    /// step, a catch-up starts; a catch-up ends when what it owes fits.
    fn plan(&mut self, link: &mut Link, m: Epoch, extra: usize, o: &mut Out) -> Result<(), EpochError> {
        if link.broken.is_some() {
            return Ok(()); // its stream is unusable: nothing more goes to it
        }
        let room = link.budget.saturating_sub(link.queued());
        if let Some(c) = link.catchup.as_mut() {
            for &p in self.tracker.cut_dirty() {
                c.owed.set(p);
            }
            if worst_case_bytes(c.owed.count()).saturating_add(extra) > room {
                return Ok(());
            }
            let mut pages = Vec::new();
            pages.try_reserve_exact(c.owed.count() as usize).map_err(|_| EpochError::OutOfMemory)?;
            pages.extend(c.owed.iter());
            o.pages = pages;
            o.whole = true;
            o.epoch = c.epoch;
            o.seq = c.seq;
            o.records = c.records;
            o.skip = false;
            if !c.begun {
                let begin = Message::EpochBegin { epoch: c.epoch, base: c.base };
                c.begun = true;
                o.stats.sealed_bytes += link.send(&begin)? as u64;
            }
            return Ok(());
        }
        let pages = if link.figures_only {
            let dirty = self.tracker.cut_dirty();
            let mut v = Vec::new();
            v.try_reserve_exact(dirty.len()).map_err(|_| EpochError::OutOfMemory)?;
            v.extend_from_slice(dirty);
            v
        } else {
            self.tracker.pages_for(link.id)?
        };
        if worst_case_bytes(pages.len() as u64).saturating_add(extra) > room {
            let c = CatchUp::start(&self.tracker, link.id)?;
            link.catchup_stats.started += 1;
            link.catchup_stats.owed_at_start += c.owed();
            link.catchup = Some(c);
            return Ok(());
        }
        let base = self.tracker.standby(link.id).ok_or(ResumeError::UnknownStandby)?.base;
        o.stats.sealed_bytes += link.send(&Message::EpochBegin { epoch: m, base })? as u64;
        o.pages = pages;
        o.skip = false;
        Ok(())
    }
}

/// The link's encoding failed at this cut: it gets nothing more; the
/// caller drops it.
fn fail(link: &mut Link, o: &mut Out, e: EpochError) {
    o.failed = Some(e);
    link.broken = Some(e);
}

/// The end of the link's epoch: its last batch, the guest state, the commit.
fn finish(link: &mut Link, o: &mut Out, state: &[Message], m: Epoch, digest: &crate::wire::Digest) -> Result<(), EpochError> {
    if !o.raw.is_empty() {
        flush(link, o)?;
    }
    for msg in state {
        o.stats.sealed_bytes += link.send(msg)? as u64;
    }
    let commit = Message::EpochCommit { epoch: m, digest: *digest, page_count: o.records };
    o.stats.sealed_bytes += link.send(&commit)? as u64;
    Ok(())
}

/// Compresses and seals the link's pending records as one PageRecords.
fn flush(link: &mut Link, o: &mut Out) -> Result<(), EpochError> {
    let (sealed, compressed) = link.seal_batch(o.epoch, o.seq, &o.raw)?;
    o.stats.compressed_bytes += compressed as u64;
    o.stats.sealed_bytes += sealed as u64;
    o.seq += 1;
    o.raw.clear();
    o.batch = BatchEncoder::new();
    Ok(())
}
