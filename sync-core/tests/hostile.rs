//! Hostile input: random, truncated, bit-flipped and reordered bytes at
//! every layer (frames, messages, sealed streams, page records) never
//! panic and never change the committed image.

mod common;

use common::World;
use proptest::prelude::*;
use sync_core::applier::Applier;
use sync_core::compress::ZstdConfig;
use sync_core::delta::{BatchEncoder, RecordKind};
use sync_core::digest::{content_digest, PageHashes, PageMemory, VecMemory};
use sync_core::shadow::Budget;
use sync_core::standby::StandbyReceiver;
use sync_core::wire::{FrameDecoder, Message, WireError, MAX_FRAME};

const PAGES: usize = 8;

fn guest(seed: u8) -> VecMemory {
    let mut g = VecMemory::zeroed(PAGES);
    for (i, p) in g.pages_mut().iter_mut().enumerate().skip(1) {
        for (j, b) in p.iter_mut().enumerate() {
            *b = (j as u8 / 16).wrapping_mul(seed).wrapping_add(i as u8);
        }
    }
    g
}

#[derive(Clone, Debug)]
enum Damage {
    Flip {
        at: usize,
        bit: u8,
    },
    Truncate(usize),
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// Repeat bytes `from..from+len` at `at` (a replayed piece of stream).
    Replay {
        from: usize,
        len: usize,
        at: usize,
    },
    /// Swap two pieces (reordered frames).
    Swap {
        a: usize,
        b: usize,
        len: usize,
    },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..40)).prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        (any::<usize>(), 1..200usize, any::<usize>()).prop_map(|(from, len, at)| Damage::Replay { from, len, at }),
        (any::<usize>(), any::<usize>(), 1..200usize).prop_map(|(a, b, len)| Damage::Swap { a, b, len }),
    ]
}

fn apply_damage(bytes: &mut Vec<u8>, d: &Damage) {
    let n = bytes.len();
    match *d {
        Damage::Flip { at, bit } => bytes[at % n] ^= 1 << bit,
        Damage::Truncate(at) => bytes.truncate(at % n),
        Damage::Insert { at, bytes: ref ins } => {
            let at = at % (n + 1);
            bytes.splice(at..at, ins.iter().copied());
        }
        Damage::Replay { from, len, at } => {
            let from = from % n;
            let piece = bytes[from..(from + len).min(n)].to_vec();
            let at = at % (n + 1);
            bytes.splice(at..at, piece);
        }
        Damage::Swap { a, b, len } => {
            let len = len.min(n / 2);
            let (a, b) = (a % (n - len + 1), b % (n - len + 1));
            let (lo, hi) = (a.min(b), a.max(b));
            if hi >= lo + len {
                let pa = bytes[lo..lo + len].to_vec();
                let pb = bytes[hi..hi + len].to_vec();
                bytes[lo..lo + len].copy_from_slice(&pb);
                bytes[hi..hi + len].copy_from_slice(&pa);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Random bytes in random pieces: the decoder never panics, never
    /// yields a frame above MAX_FRAME, and stays failed after an error.
    #[test]
    fn frame_decoder_survives_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        piece in 1..64usize,
    ) {
        let mut dec = FrameDecoder::new();
        let mut failed = false;
        for chunk in bytes.chunks(piece) {
            let mut input = chunk;
            while !input.is_empty() {
                match dec.decode(&mut input) {
                    Ok(Some(f)) => {
                        prop_assert!(!failed);
                        prop_assert!(f.body.len() <= MAX_FRAME);
                    }
                    Ok(None) => prop_assert!(input.is_empty()),
                    Err(e) => {
                        if failed {
                            prop_assert_eq!(e, WireError::Poisoned);
                        }
                        failed = true;
                        break;
                    }
                }
            }
        }
    }

    /// Random message bodies: decoding never panics, and whatever decodes
    /// re-encodes to the same bytes (the encoding is canonical, which the
    /// handshake transcript relies on).
    #[test]
    fn message_decode_is_total_and_canonical(
        tag in 0u8..14,
        rest in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut body = vec![tag];
        body.extend_from_slice(&rest);
        if let Ok(m) = Message::decode(&body) {
            let mut again = Vec::new();
            m.encode(&mut again).unwrap();
            prop_assert_eq!(again, body);
        }
    }

    /// A damaged epoch stream (flips, truncation, inserted junk, replayed
    /// or swapped pieces) never commits and never changes the committed
    /// image; after a reconnect, sync recovers.
    #[test]
    fn damaged_stream_never_corrupts_the_image(
        seed in any::<u8>(),
        writes in proptest::collection::vec((0..PAGES, 0..4000usize, any::<u8>()), 1..12),
        d in damage(),
        piece in 1..512usize,
    ) {
        let mut w = World::new(guest(seed), 1, Budget::Full);
        w.connect(0);
        w.cut(&[None]);
        for (p, off, b) in writes {
            w.write(p as u64, off, &[b, b ^ 0x5a, 7]);
        }
        // Cut epoch 2 but keep its bytes to damage them.
        let dirty = std::mem::take(&mut w.dirty);
        let s = &mut w.standbys[0];
        let c = s.conn.as_mut().unwrap();
        let (m, _) = w.active.cut(dirty, &w.guest, &mut [&mut c.link]).unwrap();
        w.history.push(content_digest(&w.guest));
        let original = c.link.out.take_all();
        let mut bytes = original.clone();
        apply_damage(&mut bytes, &d);
        // Damage after the whole epoch (appended junk) cannot undo it.
        let intact = bytes.starts_with(&original);
        let before = s.applier.image().clone();
        let mut replies = Vec::new();
        'feed: for chunk in bytes.chunks(piece) {
            let mut input = chunk;
            while !input.is_empty() {
                match c.rx_dec.decode(&mut input) {
                    Ok(Some(f)) => {
                        if c.rx.on_frame(f, &mut s.applier, &mut replies).is_err() {
                            break 'feed;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break 'feed,
                }
            }
        }
        common::assert_image_is_a_committed_epoch(&s.applier, &w.history);
        if intact {
            prop_assert_eq!(s.applier.committed_epoch(), m);
        } else {
            prop_assert_eq!(s.applier.committed_epoch(), 1, "a damaged epoch committed");
            prop_assert!(s.applier.image() == &before);
        }
        // Recovery: reconnect, one more epoch, equal to the guest.
        w.disconnect(0);
        w.connect(0);
        w.write(0, 0, &[1]);
        w.cut(&[None]);
        prop_assert!(w.standbys[0].applier.image().pages() == w.guest.pages());
    }

    /// Page records damaged before the applier (below the AEAD, as a bug in
    /// the active side or the codec would): the epoch commits exactly when
    /// the result is the intended image; otherwise nothing changes.
    #[test]
    fn damaged_records_commit_right_or_not_at_all(
        seed in any::<u8>(),
        edits in proptest::collection::vec((0..PAGES, 0..4096usize, any::<u8>()), 1..10),
        d in damage(),
        random_batch in proptest::option::weighted(0.2, proptest::collection::vec(any::<u8>(), 0..600)),
    ) {
        let g1 = guest(seed);
        let mut a = Applier::new(g1.clone(), 1);
        let mut g2 = g1.clone();
        let mut pages = std::collections::BTreeSet::new();
        for (p, off, b) in edits {
            g2.pages_mut()[p][off] = b;
            pages.insert(p);
        }
        let mut batch = Vec::new();
        let mut w = BatchEncoder::new();
        let mut sent = 0u64;
        for &p in &pages {
            let o = w.encode(p as u64, &g2.pages()[p], Some(&g1.pages()[p]), &mut batch).unwrap();
            sent += (o.kind != RecordKind::Same) as u64;
        }
        let batch = match random_batch {
            Some(r) => r,
            None => {
                let mut b = batch;
                if !b.is_empty() {
                    apply_damage(&mut b, &d);
                }
                b
            }
        };
        let digest2 = PageHashes::of_memory(&g2).digest();
        a.begin(2, 1).unwrap();
        let r = a.apply_batch(&batch).and_then(|()| a.commit(2, &digest2, sent));
        match r {
            Ok(()) => {
                prop_assert!(a.image() == &g2, "committed something else than the intended image");
                prop_assert_eq!(a.committed_epoch(), 2);
            }
            Err(_) => {
                prop_assert!(a.image() == &g1);
                prop_assert_eq!(a.committed_epoch(), 1);
                prop_assert_eq!(a.staging_epoch(), None);
            }
        }
    }

    /// Well-sealed but senseless messages (a buggy or confused active
    /// side): the receiver never panics and the image only ever holds a
    /// committed state (here: the same content, since no real page records
    /// are sent).
    #[test]
    fn senseless_messages_are_survived(msgs in proptest::collection::vec(senseless(), 1..20)) {
        let g = guest(3);
        let mut a = Applier::new(g.clone(), 1);
        let (mut tx, rx) = common::handshake(PAGES as u64, 1, 1, 77);
        let mut rx = StandbyReceiver::new(rx, ZstdConfig::default()).unwrap();
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        for m in msgs {
            let mut bytes = Vec::new();
            tx.seal(&m, &mut bytes).unwrap();
            let mut input = &bytes[..];
            let f = dec.decode(&mut input).unwrap().unwrap();
            let _ = rx.on_frame(f, &mut a, &mut out);
            prop_assert!(a.image() == &g);
            prop_assert_eq!(a.digest(), PageHashes::of_memory(&g).digest());
        }
    }
}

fn senseless() -> impl Strategy<Value = Message> {
    let epoch = 0u64..5;
    prop_oneof![
        (epoch.clone(), epoch.clone()).prop_map(|(epoch, base)| Message::EpochBegin { epoch, base }),
        (epoch.clone(), 0u32..3, 0u32..5000, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(epoch, seq, raw_len, data)| Message::PageRecords {
            epoch,
            seq,
            raw_len,
            data
        }),
        (epoch.clone(), any::<[u8; 32]>(), 0u64..3).prop_map(|(epoch, digest, page_count)| { Message::EpochCommit { epoch, digest, page_count } }),
        epoch.clone().prop_map(|epoch| Message::Ack { epoch }),
        epoch.clone().prop_map(|epoch| Message::SwitchDone { epoch }),
        epoch.prop_map(|from_epoch| Message::Resync { from_epoch }),
        Just(Message::SwitchRequest),
        proptest::collection::vec(any::<u8>(), 0..50).prop_map(Message::CpuState),
    ]
}

/// Sanity for the harness itself: PageMemory of the test guest.
#[test]
fn guest_has_the_expected_shape() {
    let g = guest(1);
    assert_eq!(g.page_count(), PAGES as u64);
    assert!(g.page(0).unwrap().iter().all(|&b| b == 0));
    assert!(g.page(PAGES as u64).is_none());
}
