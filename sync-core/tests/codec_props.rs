//! Property tests of the delta codec, the dirty set and the shadow store.

use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use sync_core::compress::{Compressor, Decompressor, ZstdConfig};
use sync_core::delta::{
    self, apply, apply_in_place, decode_page_record, encode_page_record, BatchDecoder, BatchEncoder, RecordKind, RecordRef, Shadow, MAX_PAGE_NUM,
};
use sync_core::dirty::DirtyTracker;
use sync_core::page::{hash_page, Page, PAGE_SIZE};
use sync_core::shadow::{Budget, ShadowStore};
use sync_core::xbzrle::{self, XbzrleOutcome};

/// A base page: random, zero, or structured like memory (small integers,
/// pointers sharing their high bytes).
fn base_page() -> impl Strategy<Value = Box<Page>> {
    prop_oneof![
        Just(Box::new([0u8; PAGE_SIZE])),
        any::<u64>().prop_map(|seed| Box::new(noise(seed))),
        any::<u64>().prop_map(|seed| {
            let mut p = Box::new([0u8; PAGE_SIZE]);
            let n = noise(seed);
            for w in 0..PAGE_SIZE / 8 {
                let v = if n[w].is_multiple_of(3) { 0x0000_7F12_3400_0000u64 | (n[w + 1] as u64) << 4 } else { n[w] as u64 % 100 };
                p[w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            p
        }),
    ]
}

fn noise(seed: u64) -> Page {
    let mut x = seed | 1;
    std::array::from_fn(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    })
}

/// How the page changed from its shadow.
#[derive(Clone, Debug)]
enum Change {
    Same,
    Zeroed,
    Rewritten(u64),
    /// (offset, bytes) edits, possibly overlapping, possibly no-ops.
    Edits(Vec<(usize, Vec<u8>)>),
    /// Single bytes set at offsets (sparse).
    Bytes(Vec<(usize, u8)>),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        1 => Just(Change::Same),
        1 => Just(Change::Zeroed),
        1 => any::<u64>().prop_map(Change::Rewritten),
        4 => vec((0..PAGE_SIZE, vec(any::<u8>(), 1..300)), 0..20).prop_map(Change::Edits),
        4 => vec((0..PAGE_SIZE, any::<u8>()), 0..200).prop_map(Change::Bytes),
    ]
}

fn changed(shadow: &Page, c: &Change) -> Box<Page> {
    let mut p = Box::new(*shadow);
    match c {
        Change::Same => {}
        Change::Zeroed => p.fill(0),
        Change::Rewritten(seed) => *p = noise(*seed),
        Change::Edits(edits) => {
            for (off, bytes) in edits {
                let end = (*off + bytes.len()).min(PAGE_SIZE);
                p[*off..end].copy_from_slice(&bytes[..end - off]);
            }
        }
        Change::Bytes(bytes) => {
            for &(off, b) in bytes {
                p[off] = b;
            }
        }
    }
    p
}

fn run_bytes(record: &[u8]) -> Option<usize> {
    match decode_page_record(record).ok()?.0.record {
        RecordRef::Delta { runs, .. } => Some(runs.len()),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn apply_of_encode_is_the_page(shadow in base_page(), c in change(), page_num in 0..=MAX_PAGE_NUM, with_shadow in any::<bool>()) {
        let page = changed(&shadow, &c);
        let sh = with_shadow.then_some(&*shadow);
        let mut out = vec![0xAB; 3];
        let o = encode_page_record(page_num, &page, sh, &mut out).unwrap();
        prop_assert_eq!(o.len, out.len() - 3);
        prop_assert_eq!(o.hash, hash_page(&page));
        let diff = page.iter().zip(shadow.iter()).filter(|(a, b)| a != b).count();
        match sh {
            Some(_) => prop_assert_eq!(o.changed_bytes, diff),
            None if o.kind == RecordKind::Zero => prop_assert_eq!(o.changed_bytes, 0),
            None => prop_assert_eq!(o.changed_bytes, PAGE_SIZE),
        }
        if o.kind == RecordKind::Same {
            // Not sent: the standby's copy is the shadow, which is the page.
            prop_assert!(with_shadow && diff == 0);
            prop_assert_eq!(out.len(), 3);
            return Ok(());
        }
        let (rec, used) = decode_page_record(&out[3..]).unwrap();
        prop_assert_eq!(used, o.len);
        prop_assert_eq!(rec.page_num, page_num);
        prop_assert_eq!(rec.record.kind(), o.kind);
        let mut back = Box::new([0x5Au8; PAGE_SIZE]);
        apply(sh, &rec, &mut back).unwrap();
        prop_assert_eq!(&back[..], &page[..]);
        let mut inplace = shadow.clone();
        if with_shadow {
            apply_in_place(&mut inplace, &rec).unwrap();
            prop_assert_eq!(&inplace[..], &page[..]);
        }
        // The fast path with a known shadow hash gives the same bytes.
        let mut fast = Vec::new();
        let o2 = BatchEncoder::new().encode_with(page_num, &page, sh.map(|p| Shadow { page: p, hash: hash_page(p) }), &mut fast).unwrap();
        prop_assert_eq!(o2, o);
        prop_assert_eq!(&fast[..], &out[3..]);
        // Kinds: Same only when equal; a zero page is Zero unless Same.
        let zero = page.iter().all(|&b| b == 0);
        if o.kind == RecordKind::Zero { prop_assert!(zero); }
        if zero { prop_assert!(matches!(o.kind, RecordKind::Zero | RecordKind::Same)); }
        if o.kind == RecordKind::Same { prop_assert_eq!(diff, 0); }
    }

    #[test]
    fn runs_never_exceed_xbzrle(shadow in base_page(), c in change()) {
        let page = changed(&shadow, &c);
        let mut ours = Vec::new();
        let o = encode_page_record(0, &page, Some(&shadow), &mut ours).unwrap();
        let mut theirs = Vec::new();
        match xbzrle::encode(&shadow, &page, PAGE_SIZE, &mut theirs) {
            XbzrleOutcome::Unchanged => prop_assert_eq!(o.kind, RecordKind::Same),
            XbzrleOutcome::Encoded(n) => {
                prop_assert_eq!(n, theirs.len());
                let mut back = shadow.clone();
                xbzrle::decode(&theirs, &mut back).unwrap();
                prop_assert_eq!(&back[..], &page[..]);
                match o.kind {
                    RecordKind::Delta => {
                        let runs = run_bytes(&ours).unwrap();
                        prop_assert!(runs <= n, "ours {} xbzrle {}", runs, n);
                    }
                    // Only when XBZRLE itself is at a page's worth.
                    RecordKind::Full => prop_assert!(n >= PAGE_SIZE - 3, "{}", n),
                    RecordKind::Zero => {}
                    RecordKind::Same => prop_assert!(false, "Same but XBZRLE saw a change"),
                }
            }
            XbzrleOutcome::Overflow => prop_assert!(o.kind != RecordKind::Same),
        }
    }

    #[test]
    fn hostile_records_never_panic_or_apply_wrong(
        shadow in base_page(), c in change(), flips in vec((any::<usize>(), 0u8..8), 1..4),
    ) {
        let page = changed(&shadow, &c);
        let mut good = Vec::new();
        encode_page_record(77, &page, Some(&shadow), &mut good).unwrap();
        if good.is_empty() {
            // A Same page sends nothing: there is nothing to damage.
            prop_assert!(page[..] == shadow[..]);
            return Ok(());
        }
        // Every strict prefix is refused.
        for cut in [0, 1, good.len() / 2, good.len() - 1] {
            prop_assert!(decode_page_record(&good[..cut]).is_err());
        }
        let mut bad = good.clone();
        for (pos, bit) in &flips {
            let i = pos % bad.len();
            bad[i] ^= 1 << bit;
        }
        if let Ok((rec, used)) = decode_page_record(&bad) {
            prop_assert!(used <= bad.len());
            let mut out = Box::new([0u8; PAGE_SIZE]);
            if let Ok(h) = apply(Some(&shadow), &rec, &mut out) {
                // apply returns the hash of the page it built, which goes into
                // the image digest checked at EpochCommit: a wrong page is
                // refused there (hostile.rs) if not here.
                prop_assert_eq!(h, hash_page(&out));
                prop_assert!(out[..] == page[..] || h != hash_page(&page));
                // A Delta is checked against its hash here already: either
                // the damage was to the page number only (the AEAD covers it
                // on the wire), or the page is exactly right. Zero and Full
                // carry no hash (the standby can compute it).
                if let RecordRef::Delta { .. } = rec.record {
                    prop_assert!(rec.page_num != 77 || out[..] == page[..]);
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(input in vec(any::<u8>(), 0..5000), shadow in base_page()) {
        // Parse as a batch until the first error or its end.
        let mut batch = BatchDecoder::new(&input);
        let mut last = None;
        while let Ok(Some(rec)) = batch.next_record() {
            // Page numbers ascend strictly and stay in range.
            prop_assert!(last.is_none_or(|l| rec.page_num > l));
            prop_assert!(rec.page_num <= MAX_PAGE_NUM);
            last = Some(rec.page_num);
            let mut out = Box::new([0u8; PAGE_SIZE]);
            if let Ok(h) = apply(Some(&shadow), &rec, &mut out) {
                prop_assert_eq!(hash_page(&out), h);
                if let RecordRef::Delta { hash, .. } = rec.record {
                    prop_assert_eq!(h, hash);
                }
            }
            let _ = apply(None, &rec, &mut out);
        }
    }

    #[test]
    fn batches_decode_in_order_through_zstd(pairs in vec((base_page(), change()), 1..12), epochs in 1usize..3) {
        let mut c = Compressor::new(ZstdConfig::default()).unwrap();
        let mut d = Decompressor::new(ZstdConfig::default()).unwrap();
        for _ in 0..epochs {
            let mut batch = Vec::new();
            let mut want = Vec::new();
            let mut w = BatchEncoder::new();
            for (i, (shadow, ch)) in pairs.iter().enumerate() {
                let page = changed(shadow, ch);
                let o = w.encode(i as u64 * 3, &page, Some(shadow), &mut batch).unwrap();
                if o.kind != RecordKind::Same {
                    want.push((i, page));
                }
            }
            let mut wire = Vec::new();
            c.compress_batch(&batch, &mut wire).unwrap();
            let mut plain = Vec::new();
            d.decompress_batch(&wire, &mut plain, batch.len()).unwrap();
            prop_assert_eq!(&plain, &batch);
            let mut records = BatchDecoder::new(&plain);
            for (i, page) in &want {
                let rec = records.next_record().unwrap().unwrap();
                prop_assert_eq!(rec.page_num, *i as u64 * 3);
                let mut out = Box::new([0u8; PAGE_SIZE]);
                apply(Some(&pairs[*i].0), &rec, &mut out).unwrap();
                prop_assert_eq!(&out[..], &page[..]);
            }
            prop_assert_eq!(records.next_record(), Ok(None));
        }
    }

    #[test]
    fn dirty_set_matches_a_model(epochs in vec(vec(0u64..600, 0..200), 1..6)) {
        let mut t = DirtyTracker::new(0x8000_0000, 512).unwrap();
        for marks in &epochs {
            let mut model = BTreeSet::new();
            let mut order = Vec::new();
            for &p in marks {
                let newly = t.mark(p);
                let in_range = p < 512;
                prop_assert_eq!(newly, in_range && model.insert(p));
                if newly { order.push(p); }
                prop_assert_eq!(t.mark_gpa(0x8000_0000 + p * 4096 + 5).is_some(), in_range);
            }
            let cut = t.cut();
            prop_assert_eq!(cut.iter().collect::<Vec<_>>(), order);
            prop_assert_eq!(cut.len(), model.len());
            for p in 0..600 {
                prop_assert_eq!(cut.contains(p), model.contains(&p));
            }
            cut.sort();
            prop_assert_eq!(cut.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert!(t.current().is_empty());
            prop_assert!((0..512).all(|p| !t.current().contains(p)));
        }
    }

    #[test]
    fn shadow_store_matches_a_model(
        budget in prop_oneof![Just(Budget::Full), (0usize..40).prop_map(Budget::Pages)],
        ops in vec((0u8..4, 0u64..64, any::<u8>()), 0..400),
    ) {
        let mut s = ShadowStore::new(64, budget).unwrap();
        let mut last: HashMap<u64, u8> = HashMap::new();
        let (mut gets, mut hits) = (0u64, 0u64);
        let cap = match budget { Budget::Full => 64, Budget::Pages(n) => n };
        for (op, page, v) in ops {
            match op {
                0 | 1 => {
                    s.update(page, &[v; PAGE_SIZE]);
                    last.insert(page, v);
                }
                2 => {
                    gets += 1;
                    if let Some(sh) = s.get_shadow(page) {
                        hits += 1;
                        // A shadow is always the page's last update, and its hash.
                        prop_assert_eq!(sh.page, &[last[&page]; PAGE_SIZE]);
                        prop_assert_eq!(sh.hash, hash_page(sh.page));
                    } else if budget == Budget::Full {
                        prop_assert!(!last.contains_key(&page), "full budget never forgets");
                    }
                }
                _ => {
                    s.invalidate(page);
                    last.remove(&page);
                    prop_assert!(s.peek(page).is_none());
                }
            }
            prop_assert!(s.len() <= cap);
            prop_assert_eq!(s.bytes_used(), s.len() * PAGE_SIZE);
        }
        for p in 0..64 {
            if let Some(content) = s.peek(p) {
                prop_assert_eq!(content, &[last[&p]; PAGE_SIZE]);
            }
        }
        let st = s.stats();
        prop_assert_eq!(st.hits, hits);
        prop_assert_eq!(st.misses, gets - hits);
    }
}

#[test]
fn varint_and_kind_boundaries() {
    // Largest page number round-trips, within MAX_PAGE_RECORD.
    let page = noise(5);
    let mut out = Vec::new();
    encode_page_record(MAX_PAGE_NUM, &page, None, &mut out).unwrap();
    let (rec, used) = decode_page_record(&out).unwrap();
    assert_eq!((rec.page_num, used), (MAX_PAGE_NUM, out.len()));
    // Head: varint of MAX_PAGE_NUM << 2 | kind, 54 bits = 8 bytes.
    assert_eq!(out.len(), 8 + PAGE_SIZE);
    assert_eq!(out.len(), delta::MAX_PAGE_RECORD);
}
