//! Property: through random epochs, link cuts at random points and
//! reconnects, with two standbys, each standby's committed image is always
//! the guest at its committed epoch, reconnects resend only the pages
//! changed since then, and after a final clean epoch every image equals the
//! guest.

mod common;

use std::collections::BTreeSet;

use common::World;
use proptest::prelude::*;
use sync_core::digest::{PageMemory, VecMemory};
use sync_core::shadow::Budget;

const PAGES: usize = 16;

#[derive(Clone, Debug)]
enum Op {
    Write {
        page: usize,
        offset: usize,
        len: usize,
        seed: u8,
    },
    ZeroPage(usize),
    /// Cut; each standby's link breaks after that many thousandths.
    Cut([Option<u32>; 2]),
    Disconnect(usize),
    Reconnect(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let brk = prop_oneof![3 => Just(None), 1 => (0u32..1000).prop_map(Some)];
    prop_oneof![
        6 => (0..PAGES, 0..4096usize, 1..300usize, any::<u8>())
            .prop_map(|(page, offset, len, seed)| Op::Write { page, offset, len, seed }),
        1 => (0..PAGES).prop_map(Op::ZeroPage),
        3 => [brk.clone(), brk].prop_map(Op::Cut),
        1 => (0..2usize).prop_map(Op::Disconnect),
        2 => (0..2usize).prop_map(Op::Reconnect),
    ]
}

fn initial_guest(seed: u64) -> VecMemory {
    let mut g = VecMemory::zeroed(PAGES);
    let mut x = seed | 1;
    for (i, p) in g.pages_mut().iter_mut().enumerate() {
        if i % 3 == 0 {
            continue; // some pages start zero
        }
        for b in p.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x % 7) as u8; // compressible
        }
    }
    g
}

/// Pages changed after epoch `since` up to the last cut.
fn changed_since(epoch_dirty: &[BTreeSet<u64>], since: u64) -> usize {
    if since == 0 {
        return PAGES;
    }
    let mut all = BTreeSet::new();
    for d in &epoch_dirty[since as usize + 1..] {
        all.extend(d.iter().copied());
    }
    all.len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn standby_always_holds_a_committed_epoch(
        seed in any::<u64>(),
        small_budget in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let budget = if small_budget { Budget::Pages(4) } else { Budget::Full };
        let mut w = World::new(initial_guest(seed), 2, budget);
        w.connect(0);
        w.connect(1);
        // epoch_dirty[e] = pages written in epoch e (epoch 0 is empty).
        let mut epoch_dirty = vec![BTreeSet::new()];
        let mut open_dirty = BTreeSet::new();
        for op in ops {
            match op {
                Op::Write { page, offset, len, seed } => {
                    let bytes: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                    w.write(page as u64, offset, &bytes);
                    open_dirty.insert(page as u64);
                }
                Op::ZeroPage(page) => {
                    w.write(page as u64, 0, &[0u8; 4096]);
                    open_dirty.insert(page as u64);
                }
                Op::Cut(breaks) => {
                    // Who is connected, and from which base, before the cut.
                    let before: Vec<(usize, u64)> = (0..2)
                        .filter(|&i| w.standbys[i].conn.is_some())
                        .map(|i| (i, w.active.tracker().standby(w.standbys[i].id).unwrap().base))
                        .collect();
                    epoch_dirty.push(std::mem::take(&mut open_dirty));
                    let (m, stats) = w.cut(&breaks);
                    prop_assert_eq!(stats.len(), before.len());
                    for ((_, base), st) in before.iter().zip(&stats) {
                        // Merge, not replay: each changed page exactly once.
                        prop_assert_eq!(st.sent_pages as usize, changed_since(&epoch_dirty, *base), "epoch {}", m);
                        prop_assert_eq!(
                            st.sent_pages,
                            st.zero_pages + st.same_pages + st.full_pages + st.delta_pages
                        );
                    }
                }
                Op::Disconnect(i) => w.disconnect(i),
                Op::Reconnect(i) => {
                    if w.standbys[i].conn.is_none() {
                        w.connect(i);
                    }
                }
            }
            for s in &w.standbys {
                common::assert_image_is_a_committed_epoch(&s.applier, &w.history);
                if s.conn.is_none() {
                    prop_assert_eq!(s.applier.staging_epoch(), None);
                }
            }
        }
        // Final: everyone reconnects and a clean epoch goes through.
        for i in 0..2 {
            if w.standbys[i].conn.is_none() {
                w.connect(i);
            }
        }
        let (m, _) = w.cut(&[None, None]);
        for s in &w.standbys {
            prop_assert_eq!(s.applier.committed_epoch(), m);
            prop_assert!(s.applier.image().pages() == w.guest.pages(), "final image differs");
            prop_assert!(w.active.tracker().is_caught_up(s.id));
        }
        prop_assert_eq!(w.active.digest(), w.standbys[0].applier.digest());
    }
}

/// A standby that comes back after several epochs gets deltas for pages
/// whose shadow it holds, and whole pages where the shadow moved on.
#[test]
fn lagging_standby_gets_whole_pages_only_where_needed() {
    let mut w = World::new(initial_guest(5), 2, Budget::Full);
    w.connect(0);
    w.connect(1);
    w.cut(&[None, None]); // epoch 1: everything
    w.disconnect(1);
    w.write(2, 10, &[1, 2, 3]); // epoch 2: page 2, to standby 0 only
    w.cut(&[None, None]);
    w.connect(1);
    w.write(2, 20, &[4]); // epoch 3: pages 2 and 4
    w.write(4, 30, &[5]);
    let (_, stats) = w.cut(&[None, None]);
    // Standby 0 (in step): two deltas.
    assert_eq!((stats[0].sent_pages, stats[0].delta_pages), (2, 2));
    // Standby 1 (at epoch 1): page 2's shadow is epoch 3's now... it was
    // epoch 2's when encoding, which standby 1 never got: whole. Page 4's
    // shadow is from epoch 1, which it holds: a delta.
    assert_eq!((stats[1].sent_pages, stats[1].full_pages, stats[1].delta_pages), (2, 1, 1));
    for s in &w.standbys {
        assert_eq!(s.applier.image().pages(), w.guest.pages());
    }
}

/// Two epochs on the old active device, then a switch: standby 0's image
/// becomes the new active guest (its sync made eagerly, copying the image
/// into shadows, or lazily), and the old active's guest its standby at
/// the same epoch. Returns the new world and that epoch.
fn switched_world(lazy: bool) -> (World, u64) {
    switched_world_with(lazy, Budget::Full)
}

/// `switched_world` with the new active device's shadows held to `budget`.
fn switched_world_with(lazy: bool, budget: Budget) -> (World, u64) {
    let mut w = World::new(initial_guest(9), 1, Budget::Full);
    w.connect(0);
    w.cut(&[None]);
    w.write(1, 0, &[9; 100]);
    let (m, _) = w.cut(&[None]);
    let applier = std::mem::replace(&mut w.standbys[0].applier, sync_core::applier::Applier::new(VecMemory::zeroed(1), 0));
    let (image, hashes, committed) = applier.into_parts();
    assert_eq!(committed, m);
    let mut new_active = if lazy {
        let a = sync_core::epoch::ActiveSync::after_switch_lazy(hashes, committed, budget).unwrap();
        assert_eq!(a.shadows().len(), 0, "a lazy switch copies nothing");
        a
    } else {
        sync_core::epoch::ActiveSync::after_switch(&image, hashes, committed, budget).unwrap()
    };
    let old = sync_core::applier::Applier::new(w.guest.clone(), m);
    let mut w2 = World::new(image.clone(), 0, Budget::Full);
    let id = new_active.add_standby();
    w2.active = new_active;
    w2.history = vec![[0; 32]; m as usize];
    w2.history.push(sync_core::digest::content_digest(&image));
    w2.standbys.push(common::Standby { id, applier: old, conn: None });
    w2.connect(0);
    (w2, m)
}

/// The device that was a standby becomes active after a switch; the old
/// active becomes its standby and receives deltas only, no full copy.
#[test]
fn switch_back_needs_no_full_copy() {
    let (mut w2, m) = switched_world(false);
    w2.write(3, 5, &[1, 2, 3, 4]);
    let (m2, stats) = w2.cut(&[None]);
    assert_eq!(m2, m + 1);
    assert_eq!((stats[0].sent_pages, stats[0].delta_pages), (1, 1));
    assert!(stats[0].sealed_bytes < 300, "{}", stats[0].sealed_bytes);
    assert_eq!(w2.standbys[0].applier.image().pages(), w2.guest.pages());
    assert_eq!(w2.standbys[0].applier.image().page_count(), PAGES as u64);
}

/// As above with the lazy switch the hypervisor uses: no copy of the image
/// at the switch; a page's shadow is made at its first write. Pages never
/// written stay without a shadow and still need not be sent.
#[test]
fn lazy_switch_back_sends_deltas_of_written_pages_only() {
    let (mut w2, _) = switched_world(true);
    for round in 0..3u8 {
        // The write-fault path: seed, then the write lands.
        let before = w2.guest.pages()[3];
        w2.active.seed_before_write(3, &before).unwrap();
        w2.write(3, 5 + round as usize, &[1, 2, 3, round]);
        let (_, stats) = w2.cut(&[None]);
        assert_eq!((stats[0].sent_pages, stats[0].delta_pages), (1, 1), "round {round}");
        assert_eq!(w2.standbys[0].applier.image().pages(), w2.guest.pages());
    }
    assert_eq!(w2.active.shadows().len(), 1);
}

/// Bit rot in the standby's committed image is found by the page hash of
/// the next delta to that page; the standby drops the epoch and asks for
/// a Resync; the active side resumes from the standby's epoch with the page
/// whole, on a fresh zstd stream, in the same session.
#[test]
fn bit_rot_on_standby_is_repaired_by_resync() {
    use sync_core::applier::ApplyError;
    use sync_core::delta::DeltaError;
    use sync_core::epoch::ActiveEvent;
    use sync_core::standby::{EpochFault, Event};

    let mut w = World::new(initial_guest(3), 1, Budget::Full);
    w.connect(0);
    w.cut(&[None]);
    // Rot one byte of page 4 in the standby's committed image.
    w.check = false;
    let s = &mut w.standbys[0];
    let a = std::mem::replace(&mut s.applier, sync_core::applier::Applier::new(VecMemory::zeroed(1), 0));
    let (mut img, hashes, e) = a.into_parts();
    img.pages_mut()[4][77] ^= 0x10;
    s.applier = sync_core::applier::Applier::with_hashes(img, e, hashes);

    // Epoch 2 changes page 4: its delta does not apply to the rotten page.
    w.write(4, 1000, &[1, 2, 3]);
    w.write(5, 0, &[8]);
    let dirty = std::mem::take(&mut w.dirty);
    let s = &mut w.standbys[0];
    let c = s.conn.as_mut().unwrap();
    w.active.cut(dirty, &w.guest, &mut [&mut c.link]).unwrap();
    w.history.push(sync_core::digest::content_digest(&w.guest));
    let bytes = c.link.out.take_all();
    let mut input = &bytes[..];
    let mut replies = Vec::new();
    let mut events = Vec::new();
    while let Some(f) = c.rx_dec.decode(&mut input).unwrap() {
        events.push(c.rx.on_frame(f, &mut s.applier, &mut replies).unwrap());
    }
    assert!(events.contains(&Event::Resyncing(EpochFault::Apply(ApplyError::Record(DeltaError::HashMismatch)))));
    assert_eq!(s.applier.committed_epoch(), 1);
    // The active side takes the Resync.
    let mut input = &replies[..];
    let f = c.tx_dec.decode(&mut input).unwrap().unwrap();
    assert_eq!(w.active.on_frame(&mut c.link, f).unwrap(), ActiveEvent::Resync(1));
    assert!(input.is_empty(), "nothing but the Resync (no Ack)");

    // Epoch 3: pages 4 and 5 again (changed since epoch 1), page 4 whole
    // (its shadow is epoch 2's, which the standby never committed).
    w.write(6, 0, &[9]);
    let (_, stats) = w.cut(&[None]);
    assert_eq!(stats[0].sent_pages, 3);
    assert_eq!(stats[0].full_pages, 2, "pages 4 and 5 go whole: their shadows are from epoch 2");
    let s = &w.standbys[0];
    assert_eq!(s.applier.committed_epoch(), 3);
    assert_eq!(s.applier.image().pages(), w.guest.pages(), "repaired");
}

/// A page whose shadow CLOCK evicted goes whole (Full) at its next send and
/// gets a shadow again; pages written every epoch keep theirs (their
/// reference bit is set at every send), so they go as deltas. The standby
/// stays exact throughout.
#[test]
fn an_evicted_shadow_means_a_whole_page_and_hot_pages_keep_theirs() {
    let mut w = World::new(initial_guest(11), 1, Budget::Pages(3));
    w.connect(0);
    w.cut(&[None]); // epoch 1: every page whole; the store keeps 3 of them
    assert_eq!(w.active.shadows().len(), 3);
    for round in 0..6u8 {
        // Pages 1 and 2 are hot; a different cold page each round.
        let cold = 5 + round as u64;
        w.write(1, 7, &[round; 8]);
        w.write(2, 9, &[round; 8]);
        w.write(cold, 11, &[round + 1; 8]);
        let (_, stats) = w.cut(&[None]);
        let s = stats[0];
        assert_eq!(s.sent_pages, 3, "round {round}");
        if round >= 2 {
            // The hot pages have had a shadow since round 0 and kept it.
            assert_eq!((s.delta_pages, s.full_pages), (2, 1), "round {round}: the cold page is whole");
        }
        assert_eq!(w.standbys[0].applier.image().pages(), w.guest.pages(), "round {round}");
        assert!(w.active.shadows().peek(cold).is_some(), "sent whole, shadowed again");
    }
    assert!(w.active.shadows().stats().evictions >= 6);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// After a switch (lazy, as the hypervisor does it, or eager) with a
    /// shadow budget far below the guest, every cut leaves the old active
    /// device (now standby) exact, whatever CLOCK evicted: an evicted shadow
    /// is never a delta base.
    #[test]
    fn after_a_switch_a_small_budget_keeps_the_standby_exact(
        lazy in any::<bool>(),
        pages in 0usize..5,
        writes in proptest::collection::vec((0..PAGES, 0usize..4000, 1usize..96, any::<u8>(), any::<bool>()), 1..60),
    ) {
        let (mut w, _) = switched_world_with(lazy, Budget::Pages(pages));
        for (page, offset, len, seed, cut) in writes {
            let before = w.guest.pages()[page];
            w.active.seed_before_write(page as u64, &before).unwrap();
            let bytes: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
            w.write(page as u64, offset, &bytes);
            if cut {
                let (m, stats) = w.cut(&[None]);
                prop_assert_eq!(w.standbys[0].applier.committed_epoch(), m);
                prop_assert!(w.standbys[0].applier.image().pages() == w.guest.pages(), "epoch {}", m);
                prop_assert!(w.active.shadows().len() <= pages);
                // Only a page with a shadow can be a delta (or Same).
                prop_assert!(stats[0].delta_pages + stats[0].same_pages <= pages as u64);
            }
        }
        let (m, _) = w.cut(&[None]);
        prop_assert!(w.standbys[0].applier.image().pages() == w.guest.pages(), "final epoch {}", m);
        prop_assert_eq!(w.active.digest(), w.standbys[0].applier.digest());
    }
}
