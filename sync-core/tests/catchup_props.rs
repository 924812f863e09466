//! Property: the per-standby owed bitmap merges correctly across cuts and
//! reconnects. Random guest writes over many cuts; links with small
//! budgets drain a random number of bytes at a time, so they fall behind,
//! catch up (streamed in chunks of random sizes), drop their staging (and
//! ask for a resync, which restarts a catch-up) and reconnect at random. After
//! every step each standby's committed image is the guest at its committed
//! epoch (the model: a standby that got everything), no link holds more
//! than its budget, and once writes stop every standby commits the last
//! cut.

mod common;

use common::{assert_image_is_a_committed_epoch, handshake};
use proptest::prelude::*;
use sync_core::applier::Applier;
use sync_core::catchup::{worst_case_bytes, EPOCH_FRAMES};
use sync_core::compress::ZstdConfig;
use sync_core::digest::{content_digest, PageHashes, PageMemory, VecMemory};
use sync_core::epoch::{ActiveEvent, ActiveSync, Link};
use sync_core::resume::StandbyId;
use sync_core::shadow::Budget;
use sync_core::standby::{Event, StandbyReceiver};
use sync_core::wire::{Digest, FrameDecoder};

const PAGES: usize = 96;
const STANDBYS: usize = 2;

struct Conn {
    link: Link,
    rx: StandbyReceiver,
    rx_dec: FrameDecoder,
    tx_dec: FrameDecoder,
}

struct Standby {
    id: StandbyId,
    applier: Applier<VecMemory>,
    conn: Option<Conn>,
    budget: usize,
    /// Its staging was dropped (as when memory ran out): the Resync that
    /// follows is expected.
    dropped: bool,
}

struct World {
    guest: VecMemory,
    active: ActiveSync,
    standbys: Vec<Standby>,
    history: Vec<Digest>,
    /// Pages written in the open epoch.
    dirty: Vec<u64>,
    nonce: u64,
    rng: u64,
}

impl World {
    fn new(budgets: [usize; STANDBYS], budget: Budget) -> Self {
        let n = PAGES as u64;
        let mut active = ActiveSync::new(n, budget).unwrap();
        let zero = VecMemory::zeroed(PAGES);
        let standbys = budgets
            .iter()
            .map(|&b| Standby {
                id: active.add_standby(),
                applier: Applier::with_hashes(zero.clone(), 0, PageHashes::zeroed(n)),
                conn: None,
                budget: b,
                dropped: false,
            })
            .collect();
        World { guest: zero.clone(), active, standbys, history: vec![content_digest(&zero)], dirty: Vec::new(), nonce: 0, rng: 0x9e37_79b9_7f4a_7c15 }
    }

    fn connect(&mut self, i: usize) {
        if self.standbys[i].conn.is_some() {
            return;
        }
        self.nonce += 1;
        let s = &mut self.standbys[i];
        let committed = s.applier.committed_epoch();
        let (a, b) = handshake(PAGES as u64, self.active.tracker().last_cut(), committed, self.nonce);
        self.active.connect(s.id, committed).unwrap();
        let mut link = Link::new(s.id, a, ZstdConfig::default()).unwrap();
        link.set_budget(s.budget);
        s.conn = Some(Conn { link, rx: StandbyReceiver::new(b, ZstdConfig::default()).unwrap(), rx_dec: FrameDecoder::new(), tx_dec: FrameDecoder::new() });
    }

    /// The standby drops what it staged (as when its memory runs out): its
    /// receiver asks for a resync at the next frame of the epoch.
    fn drop_staging(&mut self, i: usize) {
        let s = &mut self.standbys[i];
        if s.conn.is_some() && s.applier.staging_epoch().is_some() {
            s.applier.abort();
            s.dropped = true;
        }
    }

    fn disconnect(&mut self, i: usize) {
        self.standbys[i].dropped = false;
        let s = &mut self.standbys[i];
        if s.conn.take().is_some() {
            s.applier.abort();
            self.active.disconnect(s.id).unwrap();
        }
    }

    /// Incompressible bytes over part of a page (or the whole of it).
    fn write(&mut self, page: usize, offset: usize, len: usize) {
        // The first write since the cut, as the hypervisor's write fault
        // sees it: an implicit shadow is made from the content before it.
        if !self.dirty.contains(&(page as u64)) {
            let before = *self.guest.page(page as u64).unwrap();
            self.active.seed_before_write(page as u64, &before).unwrap();
        }
        let p = &mut self.guest.pages_mut()[page];
        let end = (offset + len).min(p.len());
        for b in &mut p[offset..end] {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            *b = self.rng as u8;
        }
        if !self.dirty.contains(&(page as u64)) {
            self.dirty.push(page as u64);
        }
    }

    /// Cuts the open epoch; returns the figures of each connected link.
    fn cut(&mut self) -> Vec<sync_core::stats::EpochStats> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut links: Vec<&mut Link> = self.standbys.iter_mut().filter_map(|s| s.conn.as_mut().map(|c| &mut c.link)).collect();
        let (m, stats) = self.active.cut(dirty, &self.guest, &mut links).unwrap();
        assert_eq!(self.history.len() as u64, m);
        self.history.push(content_digest(&self.guest));
        self.check();
        stats
    }

    /// The pump: tops a catching-up link up from current guest memory.
    fn stream(&mut self, i: usize, skip_dirty: bool, pages: u64) {
        let dirty = self.dirty.clone();
        let Some(c) = self.standbys[i].conn.as_mut() else { return };
        if c.link.wants_stream() {
            c.link.stream_at_most(&self.guest, |p| skip_dirty && dirty.contains(&p), pages).unwrap();
        }
        self.check();
    }

    /// The socket of standby `i` takes up to `n` bytes; replies come back.
    fn drain(&mut self, i: usize, mut n: usize) {
        let s = &mut self.standbys[i];
        let Some(c) = s.conn.as_mut() else { return };
        let mut replies = Vec::new();
        while n > 0 && !c.link.out.is_empty() {
            let front = c.link.out.front();
            let k = front.len().min(n);
            let mut input = &front[..k];
            while !input.is_empty() {
                if let Some(f) = c.rx_dec.decode(&mut input).unwrap() {
                    match c.rx.on_frame(f, &mut s.applier, &mut replies).unwrap() {
                        Event::Resyncing(e) => assert!(std::mem::take(&mut s.dropped), "honest stream failed to apply: {e:?}"),
                        _ => assert_image_is_a_committed_epoch(&s.applier, &self.history),
                    }
                }
            }
            c.link.out.consume(k);
            n -= k;
        }
        let mut input = &replies[..];
        while let Some(f) = c.tx_dec.decode(&mut input).unwrap() {
            match self.active.on_frame(&mut c.link, f).unwrap() {
                ActiveEvent::Acked(_) => {}
                ActiveEvent::Resync(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn check(&self) {
        for s in &self.standbys {
            assert_image_is_a_committed_epoch(&s.applier, &self.history);
            if let Some(c) = &s.conn {
                assert!(c.link.queued() <= c.link.budget(), "queued {} over the budget {}", c.link.queued(), c.link.budget());
                assert!(c.link.broken().is_none());
            }
        }
    }

    /// Writes have stopped: cuts, streams and drains until every standby
    /// holds the last cut (or `rounds` pass).
    fn settle(&mut self, rounds: usize, drain: usize) -> bool {
        for i in 0..STANDBYS {
            self.connect(i);
        }
        for _ in 0..rounds {
            for i in 0..STANDBYS {
                self.stream(i, false, u64::MAX);
                self.drain(i, drain);
            }
            self.cut();
            let last = self.active.tracker().last_cut();
            for i in 0..STANDBYS {
                self.drain(i, usize::MAX);
            }
            if self.standbys.iter().all(|s| s.applier.committed_epoch() == last && s.conn.as_ref().is_some_and(|c| c.link.out.is_empty())) {
                return true;
            }
        }
        false
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write { page: usize, offset: usize, len: usize },
    Burst { first: usize, pages: usize },
    Cut,
    Stream { i: usize, skip_dirty: bool, pages: u64 },
    Drain { i: usize, bytes: usize },
    DropStaging(usize),
    Disconnect(usize),
    Connect(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PAGES, 0..4096usize, 1..4096usize).prop_map(|(page, offset, len)| Op::Write { page, offset, len }),
        1 => (0..PAGES, 1..PAGES).prop_map(|(first, pages)| Op::Burst { first, pages }),
        3 => Just(Op::Cut),
        4 => (0..STANDBYS, any::<bool>(), 1..40u64).prop_map(|(i, skip_dirty, pages)| Op::Stream { i, skip_dirty, pages }),
        4 => (0..STANDBYS, 1..200_000usize).prop_map(|(i, bytes)| Op::Drain { i, bytes }),
        1 => (0..STANDBYS).prop_map(Op::DropStaging),
        1 => (0..STANDBYS).prop_map(Op::Disconnect),
        1 => (0..STANDBYS).prop_map(Op::Connect),
    ]
}

/// A budget that holds between 3 and `PAGES` whole pages and an epoch's
/// frames: small enough that bursts do not fit, big enough to finish.
fn budget() -> impl Strategy<Value = usize> {
    (3u64..PAGES as u64).prop_map(|pages| worst_case_bytes(pages) + EPOCH_FRAMES)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn owed_pages_merge_across_cuts_and_reconnects(
        ops in prop::collection::vec(op(), 1..160),
        budgets in [budget(), budget()],
        limited_shadows in any::<bool>(),
    ) {
        let shadows = if limited_shadows { Budget::Pages(PAGES / 3) } else { Budget::Full };
        let mut w = World::new(budgets, shadows);
        for i in 0..STANDBYS {
            w.connect(i);
        }
        for op in ops {
            match op {
                Op::Write { page, offset, len } => w.write(page, offset, len),
                Op::Burst { first, pages } => {
                    for p in first..(first + pages).min(PAGES) {
                        w.write(p, 0, 4096);
                    }
                }
                Op::Cut => drop(w.cut()),
                Op::Stream { i, skip_dirty, pages } => w.stream(i, skip_dirty, pages),
                Op::Drain { i, bytes } => w.drain(i, bytes),
                Op::DropStaging(i) => w.drop_staging(i),
                Op::Disconnect(i) => w.disconnect(i),
                Op::Connect(i) => w.connect(i),
            }
        }
        // Writes stop: every standby commits the last cut, equal to the guest.
        prop_assert!(w.settle(200, 64 << 10), "a standby never caught up");
        for s in &w.standbys {
            prop_assert_eq!(content_digest(s.applier.image()), content_digest(&w.guest));
        }
    }
}

/// A standby of a guest much larger than its budget, while the guest keeps
/// writing: it commits once writes stop, the queue never passes the
/// budget, and pages go at most about once more than they must. Prints
/// the figures (`cargo test -p sync-core --test catchup_props -- --nocapture`).
#[test]
fn a_new_standby_of_a_big_writing_guest_catches_up() {
    let budget = worst_case_bytes(8) + EPOCH_FRAMES;
    let mut w = World::new([budget, budget], Budget::Full);
    for p in 0..PAGES {
        w.write(p, 0, 4096);
    }
    w.cut(); // epoch 1, before any standby: nothing queued
    w.connect(0);
    let mut rewritten = std::collections::BTreeSet::new();
    for round in 0..60usize {
        // A hot set rewritten every round and a cold sweep.
        for p in (0..PAGES).step_by(16).chain([round % PAGES]) {
            w.write(p, 0, 4096);
            rewritten.insert(p);
        }
        for _ in 0..3 {
            w.stream(0, true, u64::MAX);
            w.drain(0, 12 << 10);
        }
        w.cut();
    }
    assert!(w.settle(400, 12 << 10), "never caught up");
    let c = w.standbys[0].conn.as_ref().unwrap();
    let st = c.link.catchup_stats;
    let sent = st.streamed_pages + st.final_pages;
    println!(
        "catch-up: {} started, {} finished; owed at start {} pages; rewritten while behind {} pages; sent {} pages ({} streamed + {} at final cuts), {} sealed bytes; peak queued {} of budget {}",
        st.started,
        st.finished,
        st.owed_at_start,
        rewritten.len(),
        sent,
        st.streamed_pages,
        st.final_pages,
        st.sealed_bytes,
        c.link.peak_queued(),
        budget
    );
    assert!(c.link.peak_queued() <= budget);
    assert!(st.finished >= 1);
    // Each owed page once, each page rewritten while behind at most once more
    // per catch-up.
    assert!(sent <= st.owed_at_start + rewritten.len() as u64 * st.started.max(1), "sent {sent} pages");
    assert_eq!(content_digest(w.standbys[0].applier.image()), content_digest(&w.guest));
}

/// A catch-up ends without copying what it streamed into the shadow store
/// (that copy ran inside the guest's pause and grew with the guest); each
/// such page's shadow is made at its next write, so a small change to one
/// of them still goes as a delta to both standbys.
#[test]
fn after_a_catch_up_a_streamed_page_rewritten_a_little_goes_as_a_delta() {
    let budget = worst_case_bytes(8) + EPOCH_FRAMES;
    let mut w = World::new([budget, budget], Budget::Full);
    for p in 0..PAGES {
        w.write(p, 0, 4096);
    }
    w.cut();
    assert!(w.settle(400, 12 << 10), "never caught up");
    let streamed: u64 = w.standbys.iter().map(|s| s.conn.as_ref().unwrap().link.catchup_stats.streamed_pages).sum();
    assert!(streamed > 0, "nothing was streamed: the test shows nothing");
    assert!(w.active.shadows().len() < PAGES, "every page got a stored shadow at the catch-up's end ({})", w.active.shadows().len());
    w.write(5, 100, 8);
    let stats = w.cut();
    for i in 0..STANDBYS {
        w.drain(i, usize::MAX);
    }
    assert_eq!(stats.len(), 2);
    for st in &stats {
        assert_eq!((st.delta_pages, st.full_pages), (1, 0), "{st:?}");
    }
    for s in &w.standbys {
        assert_eq!(content_digest(s.applier.image()), content_digest(&w.guest));
    }
}
