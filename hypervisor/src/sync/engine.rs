//! The epoch engine of the active device: asks the policy when to cut,
//! encodes, compresses and seals each epoch through `sync-core` exactly as
//! it will go to a standby, and with `verify` applies it to an in-process
//! standby whose committed image must equal guest RAM at every cut. Its
//! shadow probes count each cut again at other shadow budgets
//! (`sync_core::probe`).
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use sync_core::digest::{PageHashes, PageMemory};
use sync_core::epoch::{ActiveSync, EpochError, Link};
use sync_core::policy::{DirtyEstimate, EpochPolicy, PolicySpec};
use sync_core::probe::ShadowProbe;
use sync_core::shadow::Budget;
use sync_core::standby::Event;
use sync_core::stats::{EpochStats, TotalStats};
use sync_core::wire::{FrameDecoder, RamLayout};

use super::loopback::{session_pair, LocalStandby, LoopbackError};
use super::raw_pages::RawPages;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncError {
    Epoch(EpochError),
    Loopback(LoopbackError),
    /// Host tests only: a cut made to fail (`fail_next_cut`).
    #[cfg(test)]
    Injected,
}

impl From<EpochError> for SyncError {
    fn from(e: EpochError) -> Self {
        SyncError::Epoch(e)
    }
}

impl From<LoopbackError> for SyncError {
    fn from(e: LoopbackError) -> Self {
        SyncError::Loopback(e)
    }
}

/// How a verify check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    /// The standby's committed image differs from guest RAM; `first_page`
    /// is the lowest differing page, `pages` how many differ.
    Mismatch {
        first_page: u64,
        pages: u64,
    },
    /// The standby did not commit the epoch.
    NotCommitted,
}

pub struct Engine {
    active: ActiveSync,
    link: Link,
    verify: Option<LocalStandby<RawPages>>,
    policy: Box<dyn EpochPolicy + Send>,
    pub spec: PolicySpec,
    pub totals: TotalStats,
    pub checks: u64,
    pub mismatches: u64,
    faults_open: u64,
    peers: Option<super::peers::Peers>,
    /// The local link takes part in cuts (see `cut`).
    local_on: bool,
    /// Watches the guest console for the workload's start and steady state.
    pub workload_start: super::workload_start::WorkloadStart,
    /// Host tests only: the next `cut` fails before doing anything.
    #[cfg(test)]
    pub fail_next_cut: bool,
    /// Which guest and term this device runs (`sync_core::fence`); set
    /// with the peers.
    pub standing: sync_core::fence::Standing,
    /// Shadow probes (`add_probe`), each with its budget's name.
    probes: Vec<(String, ShadowProbe)>,
}

impl Engine {
    /// Sync of a guest of `ram` starting now, keeping at most `shadows`
    /// shadow pages. Guest RAM is all zero but for the pages the first
    /// `cut` is given as written (the loader's and the guest's). With
    /// `verify_image` (zeroed, as large as guest RAM) every epoch is also
    /// applied to a local standby.
    pub fn new(spec: PolicySpec, ram: RamLayout, shadows: Budget, verify_image: Option<RawPages>, now_ns: u64) -> Result<Self, SyncError> {
        Self::around(ActiveSync::over_zeroed(ram.size / 4096, shadows)?, 0, spec, ram, verify_image, now_ns)
    }

    /// An engine over `active`, whose last cut is `base`, with the local
    /// link (connected at `base`) that describes each epoch and feeds verify.
    fn around(mut active: ActiveSync, base: u64, spec: PolicySpec, ram: RamLayout, verify_image: Option<RawPages>, now_ns: u64) -> Result<Self, SyncError> {
        // Fixed nonces: this pair never leaves the machine. Networked
        // sessions take fresh ones per connection.
        let (a, b) = session_pair(ram, [1; 32], [2; 32])?;
        let standby = active.add_standby();
        active.connect(standby, base)?;
        let mut link = Link::new(standby, a, sync_core::compress::ZstdConfig::default())?;
        let verify = match verify_image {
            Some(img) => Some(LocalStandby::new(b, img)?),
            None => None,
        };
        // Without verify nobody reads the local link: it measures each
        // epoch (the cut's own pages) and its frames are counted as they are
        // sealed and dropped, so it holds one batch, not an epoch (a burst
        // epoch of a large guest is tens of MB).
        if verify.is_none() {
            link.set_figures_only();
        }
        Ok(Engine {
            active,
            link,
            verify,
            policy: spec.build(now_ns),
            spec,
            totals: TotalStats::default(),
            checks: 0,
            mismatches: 0,
            faults_open: 0,
            peers: None,
            local_on: true,
            #[cfg(test)]
            fail_next_cut: false,
            workload_start: Default::default(),
            standing: Default::default(),
            probes: Vec::new(),
        })
    }

    /// Counts every later cut also at a shadow budget of `budget`, named
    /// `label` (`probe`). A single device's only: its epochs are the local
    /// link's, which is what a probe reproduces.
    pub fn add_probe(&mut self, label: String, budget: Budget) -> Result<(), SyncError> {
        // The local link's zstd setting (`around`): a probe of the engine's
        // own budget then counts the link's own bytes.
        let probe = ShadowProbe::new(self.active.tracker().page_count(), budget, sync_core::compress::ZstdConfig::default())?;
        self.probes.push((label, probe));
        Ok(())
    }

    /// The cut just made (`st`, over `dirty`, with `state`) counted at each
    /// probe's budget, guest memory still as at the cut: `report` gets each
    /// probe's name and figures, those the cut alone knows (faults, pause,
    /// time) copied from `st`. A probe that fails is reported and dropped
    /// (its shadows and stream no longer follow the link's).
    pub fn probe<G: PageMemory>(
        &mut self,
        guest: &G,
        dirty: &[u64],
        state: &[sync_core::wire::Message],
        st: &EpochStats,
        mut report: impl FnMut(&str, Result<&EpochStats, EpochError>),
    ) {
        self.probes.retain_mut(|(label, p)| match p.cut(st.epoch, dirty, guest, state) {
            Ok(mut ps) => {
                (ps.write_faults, ps.pause_us, ps.at_ms) = (st.write_faults, st.pause_us, st.at_ms);
                // The disk's writes do not depend on the shadow budget.
                (ps.disk_dirty_blocks, ps.disk_guest_bytes) = (st.disk_dirty_blocks, st.disk_guest_bytes);
                report(label, Ok(&ps));
                true
            }
            Err(e) => {
                report(label, Err(e));
                false
            }
        });
    }

    pub fn verifying(&self) -> bool {
        self.verify.is_some()
    }

    pub fn note_write_fault(&mut self) {
        self.faults_open += 1;
    }

    pub fn should_cut(&mut self, now_ns: u64, dirty_pages: u64) -> bool {
        self.policy.should_cut(now_ns, DirtyEstimate { pages: dirty_pages, bytes: dirty_pages * 4096 })
    }

    /// Sync on a device that has just taken the guest over at `committed`,
    /// its image (guest RAM now) described by `hashes`. Nothing is copied:
    /// shadows are made at each page's first write (`seed_before_write`).
    /// At most `shadows` shadow pages are kept, as on a device active from
    /// boot.
    pub fn after_switch(spec: PolicySpec, ram: RamLayout, shadows: Budget, hashes: PageHashes, committed: u64, now_ns: u64) -> Result<Self, SyncError> {
        Self::around(ActiveSync::after_switch_lazy(hashes, committed, shadows)?, committed, spec, ram, None, now_ns)
    }

    /// The guest is about to write `page` (its first write since the last
    /// cut); `content` is the page now.
    pub fn seed_before_write(&mut self, page: u64, content: &sync_core::page::Page) {
        // Out of range cannot happen for a page of guest RAM; the shadow
        // is then simply not made and the page goes whole.
        let _ = self.active.seed_before_write(page, content);
    }

    /// Page hashes of guest RAM at the last cut.
    pub fn hashes(&self) -> &PageHashes {
        self.active.hashes()
    }

    pub fn last_cut(&self) -> u64 {
        self.active.tracker().last_cut()
    }

    pub fn peers_mut(&mut self) -> Option<&mut super::peers::Peers> {
        self.peers.as_mut()
    }

    /// Cuts the open epoch over `dirty` (page numbers written in it), with
    /// the guest paused: encodes, compresses and seals it as it will be sent,
    /// with `state` (the guest's CpuState and DeviceState at the cut) before
    /// its commit. The caller re-protects the pages, then calls `verify` (if
    /// on) and `finish`.
    pub fn cut<G: PageMemory>(&mut self, guest: &G, dirty: &[u64], state: &[sync_core::wire::Message]) -> Result<EpochStats, SyncError> {
        #[cfg(test)]
        if core::mem::take(&mut self.fail_next_cut) {
            return Err(SyncError::Injected);
        }
        let last = self.active.tracker().last_cut();
        let tracker = self.active.tracker();
        let in_step = |l: &Link| tracker.standby(l.id()).is_some_and(|s| s.connected && s.base == last);
        let has_peers = self.peers.is_some();
        let mut peer_links: Vec<&mut Link> = self.peers.as_mut().map(|p| p.links().collect()).unwrap_or_default();
        // The local link is encoded only when something needs it: verify
        // applies it; a single device measures its epochs with it. With
        // standbys, one in step gets the same bytes and its figures serve;
        // while none is in step the epoch goes to nobody, and the guest's
        // pause does not pay for encoding it just to count it (a catch-up
        // of a large guest lasts minutes on a slow link).
        let pick = peer_links.iter().position(|l| in_step(l));
        let local = self.verify.is_some() || (pick.is_none() && !has_peers);
        if local != self.local_on {
            if local {
                // Nobody applies the local link without verify: it may
                // claim to hold the last cut and continue from there.
                self.active.connect(self.link.id(), last)?;
                self.link.out.clear();
            } else {
                self.active.disconnect(self.link.id())?;
            }
            self.local_on = local;
        }
        let mut links: Vec<&mut Link> = Vec::new();
        if local {
            links.push(&mut self.link);
        }
        // Whose figures describe the epoch: the local link's, a standby's in
        // step, or nobody's (zeros).
        let pick = if local { Some(0) } else { pick };
        links.append(&mut peer_links);
        let (epoch, stats) = self.active.cut_with_state(dirty.iter().copied(), guest, &mut links, state)?;
        let mut st = pick.and_then(|i| stats.into_iter().nth(i)).unwrap_or_else(|| EpochStats::new(epoch));
        st.dirty_pages = dirty.len() as u64;
        st.write_faults = core::mem::take(&mut self.faults_open);
        Ok(st)
    }

    /// The digest of guest memory at the last cut (what EpochCommit carries
    /// and a standby's committed image must match).
    pub fn digest(&self) -> sync_core::wire::Digest {
        self.active.digest()
    }

    /// Connects the standbys named in the config; each link holds at most
    /// `link_budget` bytes.
    pub fn add_peers(
        &mut self,
        addrs: &[super::peers::PeerAddr],
        secret: sync_core::crypto::PairingSecret,
        hello: sync_core::wire::Handshake,
        rng: sync_core::crypto::Drbg,
        link_budget: usize,
        listen: Option<u16>,
    ) {
        self.standing = hello.standing;
        self.peers = Some(super::peers::Peers::new(addrs, &mut self.active, secret, hello, rng, link_budget, listen));
    }

    /// Every connected standby has acknowledged the last cut.
    pub fn all_acked(&self) -> bool {
        let last = self.active.tracker().last_cut();
        self.peers.as_ref().map(|p| p.list.iter().all(|x| x.acked >= last)).unwrap_or(true)
    }

    /// Ends the connection to standby `i` (`Peers::drop_peer`).
    pub fn drop_peer<D: crate::net::stack::NetDevice>(&mut self, i: usize, net: &mut crate::net::stack::Stack<D>, now_ms: u64, why: &str) {
        if let Some(p) = self.peers.as_mut() {
            p.drop_peer(i, net, &mut self.active, now_ms, why);
        }
    }

    pub fn peers(&self) -> Option<&super::peers::Peers> {
        self.peers.as_ref()
    }

    /// Moves sealed epochs to the standbys and their replies back, and
    /// streams owed pages of `guest` to standbys that catch up (`dirty_now`:
    /// pages written in the open epoch). Never waits.
    pub fn pump<D: crate::net::stack::NetDevice, G: PageMemory>(
        &mut self,
        net: &mut crate::net::stack::Stack<D>,
        guest: &G,
        dirty_now: &dyn Fn(u64) -> bool,
        now_ms: u64,
    ) {
        if let Some(p) = self.peers.as_mut() {
            p.pump(net, &mut self.active, guest, dirty_now, now_ms);
        }
    }

    /// The sealed frames of the last cut: applied to the local standby with
    /// `verify`; without it the local link kept none (it only counts).
    /// Returns how the standby's committed image compares with guest RAM.
    pub fn verify<G: PageMemory>(&mut self, guest: &G, epoch: u64) -> Result<Option<Verdict>, SyncError> {
        let Some(sb) = &mut self.verify else {
            // Nobody applies the local link: it kept nothing (see `around`).
            return Ok(None);
        };
        let sent = self.link.out.take_all();
        let events = sb.receive(&sent)?;
        let committed = events.contains(&Event::Committed(epoch));
        // The acks go back as they would over the network.
        let replies = core::mem::take(&mut sb.replies);
        let mut dec = FrameDecoder::new();
        let mut input = &replies[..];
        while let Some(frame) = dec.decode(&mut input).map_err(LoopbackError::Wire)? {
            self.active.on_frame(&mut self.link, frame)?;
        }
        self.checks += 1;
        Ok(Some(if !committed {
            self.mismatches += 1;
            Verdict::NotCommitted
        } else {
            compare(guest, sb.applier.page_hashes(), &mut self.mismatches)
        }))
    }

    /// Records the epoch's figures; the next epoch starts at `now_ns` (after
    /// the pause, so a slow cut never starves the guest).
    pub fn finish(&mut self, st: &EpochStats, now_ns: u64) {
        self.totals.add(st);
        self.policy.on_cut(now_ns);
    }
}

/// Hashes every page of guest RAM afresh (a missed write hides anywhere)
/// and compares with the standby's page hashes, which its applier checked
/// against each applied record.
fn compare<G: PageMemory>(guest: &G, standby: &PageHashes, mismatches: &mut u64) -> Verdict {
    let now = PageHashes::of_memory(guest);
    if now.digest() == standby.digest() {
        return Verdict::Match;
    }
    *mismatches += 1;
    let mut first = u64::MAX;
    let mut pages = 0;
    for p in 0..guest.page_count() {
        if now.get(p) != standby.get(p) {
            first = first.min(p);
            pages += 1;
        }
    }
    Verdict::Mismatch { first_page: first, pages }
}

/// Pages of a dirty set as a vector (the set is reused at the next cut).
pub fn pages_of(set: impl Iterator<Item = u64>) -> Vec<u64> {
    set.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::digest::VecMemory;

    /// Without verify and without a standby in step, only the local link is
    /// encoded (for the epoch's figures): a whole guest of incompressible
    /// pages is counted, and nothing of it stays queued.
    #[test]
    fn the_local_link_counts_an_epoch_without_keeping_it() {
        const PAGES: u64 = 2048;
        let ram = RamLayout { base: 0x4000_0000, size: PAGES * 4096 };
        let mut e = Engine::new("interval:200ms".parse().unwrap(), ram, Budget::Full, None, 0).unwrap();
        let mut guest = VecMemory::zeroed(PAGES as usize);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for page in guest.pages_mut() {
            for b in page.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        let st = e.cut(&guest, &pages_of(0..PAGES), &[]).unwrap();
        assert!(st.sealed_bytes > PAGES * 4000, "the epoch was encoded whole: {} bytes", st.sealed_bytes);
        assert_eq!((e.link.queued(), e.link.peak_queued()), (0, 0), "the local link kept frames");
        assert_eq!(e.verify(&guest, st.epoch).unwrap(), None);
    }

    /// A probe of the engine's own budget reports each epoch's own figures
    /// (given the dirty set reversed: the encoder takes pages in order),
    /// and a probe of a smaller budget sends more on rewrites.
    #[test]
    fn a_probe_of_the_engines_budget_reports_its_epochs() {
        const PAGES: u64 = 2048;
        let ram = RamLayout { base: 0x4000_0000, size: PAGES * 4096 };
        let mut e = Engine::new("interval:200ms".parse().unwrap(), ram, Budget::Pages(512), None, 0).unwrap();
        e.add_probe("25%".into(), Budget::Pages(512)).unwrap();
        e.add_probe("5%".into(), Budget::Pages(102)).unwrap();
        let mut guest = VecMemory::zeroed(PAGES as usize);
        let state = [sync_core::wire::Message::CpuState(alloc::vec![3; 200])];
        let (mut own, mut small) = (0, 0);
        for epoch in 1..=8u64 {
            // A working set of 400 pages written a little each epoch: 1.6 MB,
            // more than zstd's window, which would otherwise find a page
            // sent whole in the epoch before.
            let mut dirty: Vec<u64> = (0..400).map(|i| i * 5).collect();
            for &p in &dirty {
                let page = &mut guest.pages_mut()[p as usize];
                if epoch == 1 {
                    // Incompressible: sent whole it costs 4 KiB, as a delta a few bytes.
                    let mut x = p.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    for b in page.iter_mut() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        *b = x as u8;
                    }
                }
                page[(epoch * 97 % 4096) as usize] ^= epoch as u8 | 1;
            }
            dirty.sort_unstable();
            dirty.dedup();
            dirty.reverse();
            let mut st = e.cut(&guest, &dirty, &state).unwrap();
            st.pause_us = 1234;
            let mut seen = Vec::new();
            e.probe(&guest, &dirty, &state, &st, |label, r| seen.push((String::from(label), *r.unwrap())));
            assert_eq!(seen.len(), 2);
            assert_eq!(seen[0], (String::from("25%"), st), "epoch {epoch}");
            assert_eq!(seen[1].1.pause_us, 1234);
            own += st.sealed_bytes;
            small += seen[1].1.sealed_bytes;
        }
        assert!(small > own, "5% of shadows for a working set of 20% sent {small} bytes, 25% {own}");
    }

    /// A fresh guest is zero but for what was written: the first cut
    /// encodes and hashes those pages only, and its digest is still the
    /// digest of all of guest RAM (what a standby's commit must match).
    #[test]
    fn the_first_epoch_of_a_fresh_guest_is_what_was_written() {
        const PAGES: u64 = 4096;
        let ram = RamLayout { base: 0x4000_0000, size: PAGES * 4096 };
        let mut e = Engine::new("interval:200ms".parse().unwrap(), ram, Budget::Full, None, 0).unwrap();
        let mut guest = VecMemory::zeroed(PAGES as usize);
        let written = [0u64, 1, 2, 700, 4095];
        for &p in &written {
            guest.pages_mut()[p as usize][17] = (p % 200) as u8 + 1;
        }
        let st = e.cut(&guest, &written, &[]).unwrap();
        assert_eq!((st.epoch, st.sent_pages), (1, written.len() as u64));
        assert_eq!(e.digest(), PageHashes::of_memory(&guest).digest());
    }
}
