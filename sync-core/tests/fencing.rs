//! Fencing on the standby's side (`fence`, `standby`): an epoch of a lower
//! term never commits over a higher one's, and a whole resync the
//! handshake decided replaces the image only once the key is proven.
mod common;

use common::World;
use sync_core::digest::{content_digest, VecMemory};
use sync_core::shadow::Budget;
use sync_core::standby::{EpochFault, Event};
use sync_core::wire::FrameDecoder;

const PAGES: usize = 16;
const L: [u8; 16] = [7; 16];

/// Delivers standby 0's queued frames; returns the events.
fn deliver(w: &mut World) -> Vec<Event> {
    let s = &mut w.standbys[0];
    let c = s.conn.as_mut().unwrap();
    let bytes = c.link.out.take_all();
    let mut input = &bytes[..];
    let mut replies = Vec::new();
    let mut events = Vec::new();
    let mut dec = FrameDecoder::new();
    while let Some(f) = dec.decode(&mut input).unwrap() {
        events.push(c.rx.on_frame(f, &mut s.applier, &mut replies).unwrap());
    }
    events
}

fn guest() -> VecMemory {
    let mut g = VecMemory::zeroed(PAGES);
    for (i, p) in g.pages_mut().iter_mut().enumerate() {
        p[i] = i as u8 + 1;
    }
    g
}

#[test]
fn an_epoch_of_a_lower_term_never_commits_over_a_higher_ones() {
    let mut w = World::new(guest(), 1, Budget::Full);
    w.connect(0);
    w.standbys[0].conn.as_mut().unwrap().rx.set_lineage(L, 5 << 16, false);
    w.write(1, 0, b"term five");
    let _ = w.active.cut(std::mem::take(&mut w.dirty), &w.guest, &mut [&mut w.standbys[0].conn.as_mut().unwrap().link]).unwrap();
    assert!(deliver(&mut w).contains(&Event::Committed(1)));
    assert_eq!(w.standbys[0].applier.lineage(), (L, 5 << 16));
    let digest = w.standbys[0].applier.digest();
    // A session of term 4 of the same guest (the handshake refuses it; the
    // receiver holds the rule regardless).
    w.disconnect(0);
    w.connect(0);
    w.standbys[0].conn.as_mut().unwrap().rx.set_lineage(L, 4 << 16, false);
    w.write(2, 0, b"term four");
    let _ = w.active.cut(std::mem::take(&mut w.dirty), &w.guest, &mut [&mut w.standbys[0].conn.as_mut().unwrap().link]).unwrap();
    let ev = deliver(&mut w);
    assert!(ev.contains(&Event::Resyncing(EpochFault::StaleTerm)), "{ev:?}");
    let a = &w.standbys[0].applier;
    assert_eq!((a.committed_epoch(), a.digest(), a.lineage()), (1, digest, (L, 5 << 16)), "the committed epoch stays term five's");
}

#[test]
fn a_whole_resync_replaces_the_image_and_takes_the_new_lineage() {
    let mut w = World::new(guest(), 1, Budget::Full);
    w.connect(0);
    w.standbys[0].conn.as_mut().unwrap().rx.set_lineage(L, 1 << 16, false);
    for e in 1..=3u8 {
        w.write(e as u64, 0, &[e; 8]);
        let _ = w.active.cut(std::mem::take(&mut w.dirty), &w.guest, &mut [&mut w.standbys[0].conn.as_mut().unwrap().link]).unwrap();
        deliver(&mut w);
    }
    assert_eq!(w.standbys[0].applier.committed_epoch(), 3);
    // Another guest (a fresh active side) whose user-approved session
    // rewrites the standby whole: nothing is given up before a frame opens.
    let other: [u8; 16] = [9; 16];
    let mut w2 = World::new(VecMemory::zeroed(PAGES), 1, Budget::Full);
    // Connected as a standby holding nothing (what its HelloAck then says).
    w2.connect(0);
    w2.standbys[0].applier = std::mem::replace(&mut w.standbys[0].applier, sync_core::applier::Applier::new(VecMemory::zeroed(PAGES), 0));
    w2.standbys[0].conn.as_mut().unwrap().rx.set_lineage(other, 1 << 16, true);
    assert_eq!(w2.standbys[0].applier.committed_epoch(), 3, "the image stays until the key is proven");
    w2.write(5, 100, b"new guest");
    let _ = w2.active.cut(std::mem::take(&mut w2.dirty), &w2.guest, &mut [&mut w2.standbys[0].conn.as_mut().unwrap().link]).unwrap();
    let ev = deliver(&mut w2);
    assert!(ev.contains(&Event::Committed(1)), "{ev:?}");
    let a = &w2.standbys[0].applier;
    assert_eq!(content_digest(a.image()), content_digest(&w2.guest), "every page was replaced");
    assert_eq!(a.lineage(), (other, 1 << 16));
    assert!(a.holds_committed_image());
}
