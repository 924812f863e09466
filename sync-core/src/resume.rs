//! Resume bookkeeping on the active side: which epoch each standby holds
//! and has acknowledged, which epoch last changed each page, and from that,
//! which pages a standby needs and whether a delta may be sent to it.
//!
//! Epochs: epoch 0 is the all-zero image every standby starts from. A
//! tracker made with `new` counts every page as changed in epoch 1, so the
//! first epoch sends the whole guest; one made with `over_zeroed` (a fresh
//! guest, zero but for what its loader wrote) counts only the pages marked
//! in epoch 1, and still sends every page to a standby at epoch 0, whose
//! image may hold anything; one made with `after_switch(n)` (the
//! device that just became active, holding the image of epoch `n`) counts
//! every page as changed in `n`, so a standby holding `n` (the device that
//! was active) needs only what changes from now on.
//!
//! Merge, do not replay: a standby whose image is at epoch `b` is sent, at
//! the next cut `m`, every page with `last_changed > b`, each once, with its
//! content at the cut. A reconnect (or Resync) only moves `b`.
//!
//! # One shadow for several standbys: the rule
//!
//! The shadow store holds one copy per page, shared by all standbys. Each
//! page's shadow is tagged with `shadow_epoch[p]`: the epoch in which `p`
//! was last sent to any standby, whose content the shadow holds. The rule:
//!
//! 1. Whenever `p` is sent in epoch `m` (to any standby), the shadow is
//!    replaced by the sent content or dropped, and `shadow_epoch[p] = m`
//!    (`record_shadow`). Updates are made after the epoch's batches for
//!    all standbys are encoded, so every standby of one cut sees the same
//!    shadow.
//! 2. A base-dependent record (Delta, Same) for `p` goes to standby `s`
//!    only if `shadow_epoch[p] <= base(s)`, where `base(s)` is the epoch
//!    whose image `s` holds once the epochs already sent to it commit
//!    (`may_delta`). Otherwise `p` goes whole (Full, or Zero).
//!
//! Why 2 is enough: `s` holds G_base(p), the page at the cut of `base(s)`.
//! Suppose `S = shadow_epoch[p] <= base(s)` but `p` changed in some epoch
//! `E` with `S < E <= base(s)`. `s` reached a base `>= E` through a batch
//! cut at some `m >= E` from a base `< E`; that batch held every page with
//! `last_changed` above the old base, so `p`, and sending it set the shadow
//! epoch to `m >= E > S`: a contradiction. So G_base(p) = G_S(p) = shadow.
//! A standby that lags (reconnects after the others moved on) thus gets
//! its pages whole instead of against a newer shadow; standbys in step get
//! deltas. Per-standby shadows would give the lagging one deltas too, at
//! one shadow store per standby; one shared store was chosen for memory.
//!
//! With a shadow budget (`shadow::Budget::Pages`) the store may evict a
//! shadow at any update of another page. Eviction only drops content, and
//! content is only ever written together with `record_shadow` of the epoch
//! it belongs to (here, at a catch-up's final cut, after a switch, at a
//! lazy seed), so a page's stored shadow is the content of `shadow_epoch[p]`
//! or there is none: rule 2 may allow a delta the store cannot serve, and
//! the page then goes whole. The tag is not cleared on eviction; a new
//! shadow comes only with a new send, which sets it again.
//!
//! # Catch-ups (`catchup`)
//!
//! A catch-up sends a standby's owed pages over several cuts, most of them
//! streamed from guest memory between cuts (whole, not content at any cut),
//! and commits at a final cut `m` with the rest. It extends rule 1:
//!
//! 1'. Streaming never touches a shadow or `shadow_epoch`. At the final cut
//!     `m`, every page streamed in the catch-up and not sent again at `m`
//!     gets its shadow replaced by its content at `m` (or dropped) and
//!     `shadow_epoch[p] = m`, after all links of the cut are encoded. The
//!     content at `m` is the guest's page until its next write, so the
//!     stored copy is dropped and the shadow left implicit: it is made at
//!     that write (`ActiveSync::seed_before_write`), as after a switch.
//!
//! Why the proof above still holds: it needs that a standby reaching a
//! base `>= E` through a batch cut at `m >= E` leaves `shadow_epoch[p] >=
//! m` for every `p` changed in `E` above its old base. A catch-up ending at
//! `m` owed every such `p` (owed = changed since the old base, |= each
//! cut's dirty pages); each was sent at `m` (rule 1) or streamed and not
//! written since, so its content at `m` is what was streamed, and rule 1'
//! tags it `m` with that content. With one standby, that is all. With one
//! in step and one catching up: streaming leaves the shadow the in-step
//! standby's deltas use as rule 1 made it; at `m` rule 1' replaces it
//! with the content at `m`, which the in-step standby also holds at `m`
//! (it got every change through `m`), and the tag `m <= base` keeps its
//! deltas against it valid. A page streamed earlier in the catch-up and
//! owed again at `m` goes whole: the staged copy is not the standby's
//! committed base, which a delta would apply to.
//!
//! Precondition: batches of epoch `m` are built from the guest's content at
//! the cut, before any write of epoch `m + 1` is marked (the vCPU is paused
//! from `cut` until the batches are built, or the pages are copied first).

use alloc::vec;
use alloc::vec::Vec;

use crate::wire::Epoch;

/// Index of a standby in a tracker.
pub type StandbyId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeError {
    UnknownStandby,
    PageOutOfRange,
    /// A standby named an epoch that was never cut (not in our history).
    FutureEpoch,
    /// An Ack for an epoch not sent to the standby in this session, or not
    /// above its previous Ack.
    BadAck,
    /// The standby is not connected.
    NotConnected,
    /// `record_sent` for an epoch that is not the last cut, or not above
    /// the standby's base.
    BadSend,
}

/// What the tracker knows about one standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyState {
    pub connected: bool,
    /// Epoch whose image the standby holds once everything sent commits:
    /// the base of the next batch for it.
    pub base: Epoch,
    /// Highest epoch the standby acknowledged as committed.
    pub acked: Epoch,
}

pub struct ResumeTracker {
    /// Per page: last epoch in which it was written (0: never since epoch 0).
    last_changed: Vec<Epoch>,
    /// Per page: epoch whose content its shadow holds (0: none recorded).
    shadow_epoch: Vec<Epoch>,
    /// The open epoch (collecting writes).
    open: Epoch,
    /// Pages written in the open epoch, each once.
    open_dirty: Vec<u64>,
    /// Pages written in the last cut epoch, sorted.
    cut_dirty: Vec<u64>,
    standbys: Vec<Option<StandbyState>>,
}

impl ResumeTracker {
    /// A tracker for a guest whose sync starts now: every page counts as
    /// written in epoch 1 (the open epoch), so epoch 1 sends all of them.
    pub fn new(page_count: u64) -> Self {
        let n = page_count as usize;
        Self { last_changed: vec![1; n], shadow_epoch: vec![0; n], open: 1, open_dirty: (0..page_count).collect(), cut_dirty: Vec::new(), standbys: Vec::new() }
    }

    /// A tracker for a guest whose RAM is all zero when sync starts, but
    /// for the pages marked written in epoch 1 (the open epoch): what the
    /// loader put there and what the guest writes. Only those are hashed
    /// and encoded at the first cut, so its cost follows what was written,
    /// not the size of RAM. A standby at epoch 0 still gets every page (see
    /// `pages_for`): its image may hold anything.
    pub fn over_zeroed(page_count: u64) -> Self {
        let n = page_count as usize;
        Self { last_changed: vec![0; n], shadow_epoch: vec![0; n], open: 1, open_dirty: Vec::new(), cut_dirty: Vec::new(), standbys: Vec::new() }
    }

    /// A tracker on a device that became active holding the committed image
    /// of epoch `committed`: every page counts as changed at `committed`,
    /// the open epoch is `committed + 1`. Pages whose shadow the caller
    /// seeds from that image are marked with `record_shadow(p, committed)`.
    pub fn after_switch(page_count: u64, committed: Epoch) -> Self {
        let n = page_count as usize;
        Self {
            last_changed: vec![committed; n],
            shadow_epoch: vec![0; n],
            open: committed + 1,
            open_dirty: Vec::new(),
            cut_dirty: Vec::new(),
            standbys: Vec::new(),
        }
    }

    pub fn page_count(&self) -> u64 {
        self.last_changed.len() as u64
    }

    /// The epoch collecting writes now.
    pub fn open_epoch(&self) -> Epoch {
        self.open
    }

    /// The last epoch cut (0 before the first cut of a fresh tracker).
    pub fn last_cut(&self) -> Epoch {
        self.open - 1
    }

    /// Pages written in the open epoch so far.
    pub fn open_dirty_count(&self) -> usize {
        self.open_dirty.len()
    }

    /// Page `page` was written in the open epoch.
    pub fn mark_dirty(&mut self, page: u64) -> Result<(), ResumeError> {
        let lc = self.last_changed.get_mut(page as usize).ok_or(ResumeError::PageOutOfRange)?;
        if *lc != self.open {
            *lc = self.open;
            self.open_dirty.push(page);
        }
        Ok(())
    }

    /// Closes the open epoch and returns its number; the next one opens.
    pub fn cut(&mut self) -> Epoch {
        let cut = self.open;
        self.cut_dirty = core::mem::take(&mut self.open_dirty);
        self.cut_dirty.sort_unstable();
        self.open += 1;
        cut
    }

    /// Pages written in the last cut epoch, sorted.
    pub fn cut_dirty(&self) -> &[u64] {
        &self.cut_dirty
    }

    pub fn add_standby(&mut self) -> StandbyId {
        let st = Some(StandbyState { connected: false, base: 0, acked: 0 });
        if let Some(i) = self.standbys.iter().position(Option::is_none) {
            self.standbys[i] = st;
            i
        } else {
            self.standbys.push(st);
            self.standbys.len() - 1
        }
    }

    pub fn remove_standby(&mut self, id: StandbyId) -> Result<(), ResumeError> {
        let slot = self.standbys.get_mut(id).ok_or(ResumeError::UnknownStandby)?;
        if slot.take().is_none() {
            return Err(ResumeError::UnknownStandby);
        }
        Ok(())
    }

    pub fn standby(&self, id: StandbyId) -> Option<StandbyState> {
        self.standbys.get(id).copied().flatten()
    }

    fn state_mut(&mut self, id: StandbyId) -> Result<&mut StandbyState, ResumeError> {
        self.standbys.get_mut(id).and_then(Option::as_mut).ok_or(ResumeError::UnknownStandby)
    }

    /// A standby (re)connected and named its last committed epoch (HelloAck
    /// or Hello). Sync continues from there.
    pub fn on_connect(&mut self, id: StandbyId, last_committed: Epoch) -> Result<(), ResumeError> {
        let last_cut = self.last_cut();
        let st = self.state_mut(id)?;
        if last_committed > last_cut {
            return Err(ResumeError::FutureEpoch);
        }
        *st = StandbyState { connected: true, base: last_committed, acked: last_committed };
        Ok(())
    }

    /// The standby asked for everything since `from` (it rolled back to
    /// its committed image). In-flight epochs on another base will be
    /// refused by its applier (EpochBegin carries the base).
    pub fn on_resync(&mut self, id: StandbyId, from: Epoch) -> Result<(), ResumeError> {
        let last_cut = self.last_cut();
        let st = self.state_mut(id)?;
        if !st.connected {
            return Err(ResumeError::NotConnected);
        }
        if from > last_cut {
            return Err(ResumeError::FutureEpoch);
        }
        st.base = from;
        st.acked = st.acked.min(from);
        Ok(())
    }

    /// The link dropped: what was sent but not acknowledged is unknown
    /// until the standby reconnects and says.
    pub fn on_disconnect(&mut self, id: StandbyId) -> Result<(), ResumeError> {
        let st = self.state_mut(id)?;
        st.connected = false;
        st.base = st.acked;
        Ok(())
    }

    /// The standby acknowledged `epoch` as committed.
    pub fn on_ack(&mut self, id: StandbyId, epoch: Epoch) -> Result<(), ResumeError> {
        let st = self.state_mut(id)?;
        if !st.connected {
            return Err(ResumeError::NotConnected);
        }
        if epoch <= st.acked || epoch > st.base {
            return Err(ResumeError::BadAck);
        }
        st.acked = epoch;
        Ok(())
    }

    /// Whether every epoch sent to the standby is acknowledged.
    pub fn is_caught_up(&self, id: StandbyId) -> bool {
        self.standby(id).is_some_and(|s| s.connected && s.acked == s.base)
    }

    /// Pages the standby needs in the batch of the last cut epoch: every
    /// page changed since its base, each once, ascending. A standby at epoch
    /// 0 needs every page: its image is all zero only if it never held
    /// anything (a torn image, or one of another guest, claims epoch 0 too),
    /// and whole pages from epoch 0 leave nothing of it.
    pub fn pages_for(&self, id: StandbyId) -> Result<Vec<u64>, ResumeError> {
        let st = self.standby(id).ok_or(ResumeError::UnknownStandby)?;
        if !st.connected {
            return Err(ResumeError::NotConnected);
        }
        let cut = self.last_cut();
        if st.base >= cut {
            return Ok(Vec::new());
        }
        if st.base == 0 {
            return Ok((0..self.page_count()).collect());
        }
        if st.base + 1 == cut {
            // In step: exactly the pages of the last epoch.
            return Ok(self.cut_dirty.clone());
        }
        Ok(self.last_changed.iter().enumerate().filter(|&(_, &lc)| lc > st.base && lc <= cut).map(|(p, _)| p as u64).collect())
    }

    /// Every page changed after epoch `base` (the open epoch's writes
    /// marked so far included), ascending: what a standby at `base` owes.
    /// At epoch 0: every page (see `pages_for`).
    pub fn changed_since(&self, base: Epoch) -> impl Iterator<Item = u64> + '_ {
        self.last_changed.iter().enumerate().filter(move |&(_, &lc)| base == 0 || lc > base).map(|(p, _)| p as u64)
    }

    /// Whether a base-dependent record (Delta, Same) against the current
    /// shadow of `page` may go to the standby (rule 2 of the module doc).
    pub fn may_delta(&self, id: StandbyId, page: u64) -> bool {
        let (Some(st), Some(&se)) = (self.standby(id), self.shadow_epoch.get(page as usize)) else {
            return false;
        };
        se != 0 && se <= st.base
    }

    /// `page`'s shadow now holds its content of `epoch` (or was dropped; the
    /// tag is harmless then since there is no shadow to diff against).
    pub fn record_shadow(&mut self, page: u64, epoch: Epoch) -> Result<(), ResumeError> {
        let se = self.shadow_epoch.get_mut(page as usize).ok_or(ResumeError::PageOutOfRange)?;
        *se = epoch;
        Ok(())
    }

    /// The batch of `epoch` (the last cut) went to the standby: its base
    /// moves there.
    pub fn record_sent(&mut self, id: StandbyId, epoch: Epoch) -> Result<(), ResumeError> {
        let last_cut = self.last_cut();
        let st = self.state_mut(id)?;
        if !st.connected {
            return Err(ResumeError::NotConnected);
        }
        if epoch != last_cut || epoch <= st.base {
            return Err(ResumeError::BadSend);
        }
        st.base = epoch;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_zeroed_the_first_epoch_is_what_was_written_and_epoch_0_gets_everything() {
        let mut t = ResumeTracker::over_zeroed(8);
        let s = t.add_standby();
        t.on_connect(s, 0).unwrap();
        t.mark_dirty(3).unwrap();
        t.mark_dirty(5).unwrap();
        assert_eq!(t.cut(), 1);
        assert_eq!(t.cut_dirty(), &[3, 5]);
        // In step at epoch 0, and still every page: its image may hold anything.
        assert_eq!(t.pages_for(s).unwrap(), (0..8).collect::<Vec<_>>());
        assert_eq!(t.changed_since(0).count(), 8);
        t.record_sent(s, 1).unwrap();
        t.mark_dirty(6).unwrap();
        t.cut();
        assert_eq!(t.pages_for(s).unwrap(), vec![6]);
        assert_eq!(t.changed_since(1).collect::<Vec<_>>(), vec![6]);
    }

    #[test]
    fn first_epoch_sends_everything_then_only_dirt() {
        let mut t = ResumeTracker::new(8);
        let s = t.add_standby();
        t.on_connect(s, 0).unwrap();
        t.mark_dirty(3).unwrap(); // already counted in epoch 1
        assert_eq!(t.cut(), 1);
        assert_eq!(t.pages_for(s).unwrap(), (0..8).collect::<Vec<_>>());
        t.record_sent(s, 1).unwrap();
        t.mark_dirty(5).unwrap();
        t.mark_dirty(2).unwrap();
        t.mark_dirty(5).unwrap();
        assert_eq!(t.open_dirty_count(), 2);
        assert_eq!(t.cut(), 2);
        assert_eq!(t.pages_for(s).unwrap(), vec![2, 5]);
        assert_eq!(t.mark_dirty(8), Err(ResumeError::PageOutOfRange));
    }

    #[test]
    fn reconnect_merges_changes_since_committed() {
        let mut t = ResumeTracker::new(10);
        let s = t.add_standby();
        t.on_connect(s, 0).unwrap();
        t.cut();
        t.record_sent(s, 1).unwrap();
        t.on_ack(s, 1).unwrap();
        // Epochs 2..4: page 4 written in all three, others once each.
        for (e, pages) in [(2, vec![4, 1]), (3, vec![4, 7]), (4, vec![4, 9])] {
            for p in pages {
                t.mark_dirty(p).unwrap();
            }
            assert_eq!(t.cut(), e);
            if e == 2 {
                t.record_sent(s, 2).unwrap();
            }
        }
        // Link dropped after epoch 2 was sent but before its Ack.
        t.on_disconnect(s).unwrap();
        assert_eq!(t.standby(s).unwrap().base, 1);
        assert_eq!(t.pages_for(s), Err(ResumeError::NotConnected));
        // It had committed 2 after all.
        t.on_connect(s, 2).unwrap();
        assert_eq!(t.pages_for(s).unwrap(), vec![4, 7, 9], "each page once");
        // Or had not.
        t.on_connect(s, 1).unwrap();
        assert_eq!(t.pages_for(s).unwrap(), vec![1, 4, 7, 9]);
        // A fresh standby needs all.
        t.on_connect(s, 0).unwrap();
        assert_eq!(t.pages_for(s).unwrap().len(), 10);
        assert_eq!(t.on_connect(s, 5), Err(ResumeError::FutureEpoch));
    }

    #[test]
    fn acks_are_checked() {
        let mut t = ResumeTracker::new(2);
        let s = t.add_standby();
        assert_eq!(t.on_ack(s, 1), Err(ResumeError::NotConnected));
        t.on_connect(s, 0).unwrap();
        t.cut();
        assert_eq!(t.on_ack(s, 1), Err(ResumeError::BadAck), "not sent yet");
        t.record_sent(s, 1).unwrap();
        assert!(!t.is_caught_up(s));
        t.on_ack(s, 1).unwrap();
        assert!(t.is_caught_up(s));
        assert_eq!(t.on_ack(s, 1), Err(ResumeError::BadAck), "duplicate");
        assert_eq!(t.record_sent(s, 1), Err(ResumeError::BadSend));
        assert_eq!(t.on_ack(7, 1), Err(ResumeError::UnknownStandby));
    }

    #[test]
    fn shadow_rule_with_two_standbys() {
        let mut t = ResumeTracker::new(4);
        let a = t.add_standby();
        let b = t.add_standby();
        t.on_connect(a, 0).unwrap();
        t.on_connect(b, 0).unwrap();
        // Epoch 1: everything, no shadow yet: nothing may be a delta.
        t.cut();
        for p in 0..4 {
            assert!(!t.may_delta(a, p) && !t.may_delta(b, p));
            t.record_shadow(p, 1).unwrap();
        }
        t.record_sent(a, 1).unwrap();
        t.record_sent(b, 1).unwrap();
        // b drops; epoch 2 changes page 0 and goes to a only.
        t.on_disconnect(b).unwrap();
        t.mark_dirty(0).unwrap();
        t.cut();
        assert!(t.may_delta(a, 0), "a holds epoch 1 = the shadow's epoch");
        t.record_shadow(0, 2).unwrap();
        t.record_sent(a, 2).unwrap();
        // b comes back holding epoch 1: page 0's shadow (epoch 2) is newer
        // than b's copy, so it must go whole; page 1's shadow is b's copy.
        t.on_connect(b, 1).unwrap();
        t.mark_dirty(1).unwrap();
        t.cut();
        assert_eq!(t.pages_for(b).unwrap(), vec![0, 1]);
        assert_eq!(t.pages_for(a).unwrap(), vec![1]);
        assert!(!t.may_delta(b, 0));
        assert!(t.may_delta(b, 1));
        assert!(t.may_delta(a, 0) && t.may_delta(a, 1));
        // A standby that holds nothing never gets a delta.
        t.on_connect(b, 0).unwrap();
        assert!((0..4).all(|p| !t.may_delta(b, p)));
        assert!(!t.may_delta(9, 0));
    }

    #[test]
    fn after_switch_needs_no_full_copy() {
        // The new active device holds epoch 7; the old one, now standby,
        // too. Only pages written from now on go.
        let mut t = ResumeTracker::after_switch(6, 7);
        let s = t.add_standby();
        t.on_connect(s, 7).unwrap();
        for p in 0..6 {
            t.record_shadow(p, 7).unwrap();
        }
        t.mark_dirty(2).unwrap();
        assert_eq!(t.cut(), 8);
        assert_eq!(t.pages_for(s).unwrap(), vec![2]);
        assert!(t.may_delta(s, 2));
        // A standby that lags behind the switch point gets everything whole.
        let l = t.add_standby();
        t.on_connect(l, 5).unwrap();
        assert_eq!(t.pages_for(l).unwrap().len(), 6);
        assert!(!t.may_delta(l, 2));
    }

    #[test]
    fn resync_moves_the_base_back() {
        let mut t = ResumeTracker::new(3);
        let s = t.add_standby();
        t.on_connect(s, 0).unwrap();
        t.cut();
        t.record_sent(s, 1).unwrap();
        t.on_ack(s, 1).unwrap();
        t.mark_dirty(1).unwrap();
        t.cut();
        t.record_sent(s, 2).unwrap();
        t.on_resync(s, 1).unwrap();
        t.mark_dirty(2).unwrap();
        t.cut();
        assert_eq!(t.pages_for(s).unwrap(), vec![1, 2]);
        assert_eq!(t.on_resync(s, 9), Err(ResumeError::FutureEpoch));
        t.on_disconnect(s).unwrap();
        assert_eq!(t.on_resync(s, 0), Err(ResumeError::NotConnected));
    }

    #[test]
    fn standby_slots_are_reused() {
        let mut t = ResumeTracker::new(1);
        let a = t.add_standby();
        let b = t.add_standby();
        t.remove_standby(a).unwrap();
        assert_eq!(t.remove_standby(a), Err(ResumeError::UnknownStandby));
        assert_eq!(t.add_standby(), a);
        assert_ne!(a, b);
    }
}
