//! Prints the delta codec's figures per write pattern: encoded bytes, ours
//! vs QEMU's XBZRLE, raw and after zstd, and encode speed next to `memcmp`.
//!
//! `cargo run --release -p sync-core --example codec_figures`
//!
//! The speed tables name the encoder build they ran (`simd::x86_walk`); on
//! a CPU with AVX-512 a last table measures the AVX2 build on the sparse
//! and same pairs too (what a CPU without AVX-512 runs).
//!
//! XBZRLE is counted as QEMU puts it on the wire: an 8-byte page header
//! (be64 address | flags),
//! then for an XBZRLE page a flag byte, a 2-byte length and the encoding;
//! a page whose encoding overflows goes whole (4096 bytes); a zero page is
//! one byte (QEMU checks for zero pages first); an unchanged page costs
//! nothing. Ours is the page records as batched: head (page-number gap and
//! kind, one byte for neighbouring pages), then nothing (Zero), the page
//! (Full) or 64-bit hash, length and runs (Delta); Same pages are not sent. "runs" compares the two encoders alone, on the pages both
//! encode as deltas. zstd is level 3 for both, one batch per pattern from a
//! fresh context.
//!
//! Three size ratios per pattern and overall: o/q = ours / XBZRLE as QEMU
//! sends it, both raw; oz/q = ours after zstd / XBZRLE as QEMU sends it
//! (QEMU does not compress XBZRLE pages); oz/qz = ours after zstd / XBZRLE
//! run through the same zstd.

use std::hint::black_box;
use std::time::Instant;
use sync_core::compress::{Compressor, ZstdConfig};
use sync_core::delta::{self, BatchDecoder, BatchEncoder, Next, RecordKind, RecordRef, Shadow};
use sync_core::page::{hash_page, AlignedPage, Page, PAGE_SIZE};
use sync_core::simd;
use sync_core::xbzrle::{self, XbzrleOutcome};

#[path = "../benches/patterns/mod.rs"]
mod patterns;

/// Page numbers as in a 1 GiB guest (3-byte varints).
const FIRST_PAGE: u64 = 0x2_0000;

#[derive(Default, Clone, Copy)]
struct Sizes {
    pages: usize,
    changed: usize,
    ours: usize,
    qemu: usize,
    ours_z: usize,
    qemu_z: usize,
    runs_ours: usize,
    runs_qemu: usize,
}

fn zstd(data: &[u8]) -> usize {
    let mut c = Compressor::new(ZstdConfig::default()).expect("zstd context");
    let mut out = Vec::new();
    c.compress_batch(data, &mut out).expect("compresses")
}

/// One page as QEMU's RAM migration sends it with XBZRLE on (same block as
/// the previous page, so no block name): be64 address | flags, then the
/// page's data.
fn qemu_wire(page_num: u64, shadow: &Page, page: &Page, out: &mut Vec<u8>) {
    const CONTINUE: u64 = 0x20;
    const ZERO: u64 = 0x02;
    const PAGE: u64 = 0x08;
    const XBZRLE: u64 = 0x40;
    let addr = page_num * PAGE_SIZE as u64;
    if simd::is_zero(page) {
        out.extend_from_slice(&(addr | CONTINUE | ZERO).to_be_bytes());
        out.push(0);
        return;
    }
    let mut enc = Vec::new();
    match xbzrle::encode(shadow, page, PAGE_SIZE, &mut enc) {
        XbzrleOutcome::Unchanged => {}
        XbzrleOutcome::Encoded(n) => {
            out.extend_from_slice(&(addr | CONTINUE | XBZRLE).to_be_bytes());
            out.push(1); // ENCODING_FLAG_XBZRLE
            out.extend_from_slice(&(n as u16).to_be_bytes());
            out.extend_from_slice(&enc);
        }
        XbzrleOutcome::Overflow => {
            out.extend_from_slice(&(addr | CONTINUE | PAGE).to_be_bytes());
            out.extend_from_slice(page);
        }
    }
}

/// memcmp of every 256-byte block: the whole page read, as any encoder
/// that finds all changes must (`==` stops at the first).
fn memcmp_full(pairs: &[(&Page, &Page, u64)]) -> usize {
    pairs.iter().map(|(s, p, _)| s.chunks_exact(256).zip(p.chunks_exact(256)).filter(|(a, b)| black_box(a) != black_box(b)).count()).sum()
}

/// Encodes every pair against its shadow into `out`. With `next`, as
/// `ActiveSync::cut` does: each page is encoded with the next one named
/// (`BatchEncoder::encode_next`), which the encoder loads meanwhile.
fn encode_all(pairs: &[(&Page, &Page, u64)], next: bool, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut w = BatchEncoder::new();
    for (i, (s, p, h)) in pairs.iter().enumerate() {
        let n = pairs.get(i + 1).filter(|_| next).map(|(ns, np, _)| Next { page: np, shadow: Some(ns) });
        let sh = Some(Shadow { page: s, hash: *h });
        black_box(w.encode_next(i as u64, black_box(p), sh, n, out).expect("page numbers ascend"));
    }
    out.len()
}

/// Best nanoseconds per call of each of `fs` over `iters` calls, the
/// functions taking turns for `ROUNDS` rounds: every ratio compares runs
/// made moments apart, and the best run of each is the one least disturbed
/// by other work on the machine (another tenant's load comes in bursts).
fn time_together<const N: usize>(iters: u32, mut fs: [&mut dyn FnMut() -> usize; N]) -> [f64; N] {
    const ROUNDS: usize = 41;
    let mut best = [f64::MAX; N];
    for _ in 0..ROUNDS {
        for (f, b) in fs.iter_mut().zip(best.iter_mut()) {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(f());
            }
            *b = b.min(t.elapsed().as_nanos() as f64 / iters as f64);
        }
    }
    best
}

fn main() {
    let pats = patterns::all();
    let mut total = Sizes::default();
    println!("Encoded bytes per pattern (ours = VMsync page records; qemu = XBZRLE as QEMU sends it)\n");
    println!(
        "{:<12} {:>5} {:>8} {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6} {:>6} | {:>7} {:>7} {:>6}  kinds (Z/S/F/D)",
        "pattern", "pages", "changed", "ours", "qemu", "o/q", "ours+z", "qemu+z", "oz/q", "oz/qz", "runs:o", "runs:q", "o/q"
    );
    for pat in &pats {
        let mut s = Sizes { pages: pat.pairs.len(), ..Sizes::default() };
        let mut ours = Vec::new();
        let mut qemu = Vec::new();
        let mut kinds = [0usize; 4];
        let mut w = BatchEncoder::new();
        for (i, (sh, page)) in pat.pairs.iter().enumerate() {
            let sh: &Page = sh.as_deref().expect("shadowed pairs");
            let start = ours.len();
            let o = w.encode(FIRST_PAGE + i as u64, page, Some(sh), &mut ours).expect("page numbers ascend");
            s.changed += o.changed_bytes;
            kinds[o.kind as usize] += 1;
            qemu_wire(FIRST_PAGE + i as u64, sh, page, &mut qemu);
            if o.kind == RecordKind::Delta {
                let mut x = Vec::new();
                if let XbzrleOutcome::Encoded(n) = xbzrle::encode(sh, page, PAGE_SIZE, &mut x) {
                    // The record alone (its head's gap read as a page number).
                    let (rec, _) = delta::decode_page_record(&ours[start..]).expect("valid");
                    if let RecordRef::Delta { runs, .. } = rec.record {
                        s.runs_ours += runs.len();
                        s.runs_qemu += n;
                    }
                }
            }
        }
        s.ours = ours.len();
        s.qemu = qemu.len();
        s.ours_z = if ours.is_empty() { 0 } else { zstd(&ours) };
        s.qemu_z = if qemu.is_empty() { 0 } else { zstd(&qemu) };
        print_row(pat.name, &s, Some(kinds));
        total.pages += s.pages;
        total.changed += s.changed;
        total.ours += s.ours;
        total.qemu += s.qemu;
        total.ours_z += s.ours_z;
        total.qemu_z += s.qemu_z;
        total.runs_ours += s.runs_ours;
        total.runs_qemu += s.runs_qemu;
    }
    print_row("overall", &total, None);
    println!("\no/q = ours / qemu raw; oz/q = ours+zstd / qemu as sent (QEMU does not compress XBZRLE);");
    println!("oz/qz = ours+zstd / qemu+zstd. apply on same: no records (Same pages are not sent).");

    speed_table(&pats, "");
    large_sparse_all();
    // On a CPU with AVX-512 the table above ran its line compares; the
    // AVX2 build, as a CPU without AVX-512 runs it, on the same pairs:
    #[cfg(target_arch = "x86_64")]
    if simd::x86_walk() == simd::X86Walk::Avx512 {
        simd::avoid_avx512();
        let two: Vec<_> = pats.into_iter().filter(|p| p.name == "sparse" || p.name == "same").collect();
        speed_table(&two, " (AVX2 build: this CPU's AVX-512 left unused)");
    }
}

/// Encode, apply and XBZRLE speed per pattern next to `memcmp`, printed
/// under a title that ends in `build`.
fn speed_table(pats: &[patterns::Pattern], build: &str) {
    #[cfg(target_arch = "x86_64")]
    println!("\nEncoder build: {:?}{build}", simd::x86_walk());
    println!("\nSpeed next to memcmp of the same pairs (best of 41 rounds, the columns taking turns; criterion: benches/codec.rs)\n");
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9} {:>7} {:>11} {:>7} {:>9} {:>7} {:>8}",
        "pattern", "memcmp", "mc full", "encode", "/mc", "/full", "1 by 1", "/full", "enc+hash", "/full", "xbzrle", "/full", "apply"
    );
    for pat in pats {
        let pairs = pat.shadowed();
        let n = pairs.len() as f64;
        let iters = (10_000 / pairs.len()).max(1) as u32;
        let (mut out1, mut out2, mut out3) = (Vec::with_capacity(pairs.len() * (PAGE_SIZE + 32)), Vec::new(), Vec::new());
        let mut xo = Vec::with_capacity(pairs.len() * PAGE_SIZE);
        let batch = patterns::batch(&pairs);
        let mut page = Box::new([0u8; PAGE_SIZE]);
        let t = time_together(
            iters,
            [
                &mut || pairs.iter().filter(|(s, p, _)| black_box(&s[..]) == black_box(&p[..])).count(),
                &mut || memcmp_full(&pairs),
                &mut || encode_all(&pairs, true, &mut out1),
                &mut || encode_all(&pairs, false, &mut out2),
                &mut || {
                    out3.clear();
                    let mut w = BatchEncoder::new();
                    for (i, (s, p, _)) in pairs.iter().enumerate() {
                        let r = w.encode(i as u64, black_box(p), Some(s), &mut out3);
                        black_box(r.expect("page numbers ascend"));
                    }
                    out3.len()
                },
                &mut || {
                    xo.clear();
                    for (s, p, _) in &pairs {
                        black_box(xbzrle::encode(s, black_box(p), PAGE_SIZE, &mut xo));
                    }
                    xo.len()
                },
                &mut || {
                    let mut records = BatchDecoder::new(&batch);
                    while let Some(rec) = records.next_record().expect("valid") {
                        let (s, _, _) = pairs[rec.page_num as usize];
                        delta::apply(Some(s), &rec, &mut page).expect("applies");
                    }
                    page[0] as usize
                },
            ],
        )
        .map(|x| x / n);
        let [mc, mcf, enc, enc_npf, enc_h, xb, ap] = t;
        println!(
            "{:<12} {:>9.1} {:>9.1} {:>9.1} {:>6.2}x {:>6.2}x {:>9.1} {:>6.2}x {:>11.1} {:>6.2}x {:>9.1} {:>6.2}x {:>8.1}",
            pat.name,
            mc,
            mcf,
            enc,
            mc / enc,
            mcf / enc,
            enc_npf,
            mcf / enc_npf,
            enc_h,
            mcf / enc_h,
            xb,
            mcf / xb,
            ap
        );
    }
    println!("\nns per page. /mc = memcmp (`==`, stops at the first difference) time / encode time;");
    println!("/full = whole-page memcmp (16 blocks of 256 bytes) time / that line's time. Goal: >= 0.8x");
    println!("on same and sparse pages. encode uses the shadow's cached hash (ShadowStore keeps it);");
    println!("enc+hash hashes the shadow first (the plain `encode` API). encode names the next pair");
    println!("(encode_next, as ActiveSync::cut), which the encoder loads while it walks this page's changes;");
    println!("1 by 1 is the same encoder without it (`encode_with`). Pages are 4 KiB aligned, as guest");
    println!("pages and ShadowStore's shadows are.");
}

fn print_row(name: &str, s: &Sizes, kinds: Option<[usize; 4]>) {
    let r = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    let kinds = kinds.map(|k| format!("{}/{}/{}/{}", k[0], k[1], k[2], k[3])).unwrap_or_default();
    println!(
        "{:<12} {:>5} {:>8} {:>8} {:>8} {:>6.3} | {:>8} {:>8} {:>6.3} {:>6.3} | {:>7} {:>7} {:>6.3}  {}",
        name,
        s.pages,
        s.changed,
        s.ours,
        s.qemu,
        r(s.ours, s.qemu),
        s.ours_z,
        s.qemu_z,
        r(s.ours_z, s.qemu),
        r(s.ours_z, s.qemu_z),
        s.runs_ours,
        s.runs_qemu,
        r(s.runs_ours, s.runs_qemu),
        kinds
    );
}

/// Sparse pages as a real cut meets them: many distinct pairs (more than
/// the L2 holds), visited in a fixed pseudo-random order, so each pair
/// comes from L3 or RAM and no hardware prefetcher runs from one pair into
/// the next. The pattern table above measures 64 pairs (512 KiB), which
/// stay in L2 across iterations. Same pairs and order for every column.
/// `VMSYNC_LARGE_PAIRS=n` measures n pairs only.
fn large_sparse_all() {
    println!("\nSparse (1 to 16 bytes changed) and same pages, many distinct pairs in a fixed pseudo-random order\n");
    println!("{:<7} {:>7} {:>8} {:>9} {:>9} {:>7} {:>9} {:>7}", "pattern", "pairs", "MiB", "mc full", "encode", "/full", "1 by 1", "/full");
    let sizes = match std::env::var("VMSYNC_LARGE_PAIRS").ok().and_then(|v| v.parse().ok()) {
        Some(n) => vec![n],
        // 8 MiB (past the L2s, in the L3) and 512 MiB (past the L3: RAM).
        None => vec![1024, 65536],
    };
    for n in sizes {
        large_pairs(n, true);
        large_pairs(n, false);
    }
    println!("\nencode: with the next pair named (encode_next, as ActiveSync::cut); 1 by 1: without.");
    println!("mc full: as above.");
}

fn large_pairs(pairs_n: usize, sparse: bool) {
    let mut x = 0x4c41_5247_4553_5053u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut shadows = vec![AlignedPage::ZERO; pairs_n];
    for w in shadows.iter_mut().flat_map(|p| p.0.chunks_exact_mut(8)) {
        w.copy_from_slice(&next().to_le_bytes());
    }
    let mut pages = shadows.clone();
    for p in pages.iter_mut().filter(|_| sparse) {
        for _ in 0..(1 + next() % 16) {
            let at = (next() % PAGE_SIZE as u64) as usize;
            p[at] = p[at].wrapping_add(1 + (next() % 255) as u8);
        }
    }
    // A fixed permutation (Fisher-Yates).
    let mut order: Vec<usize> = (0..pairs_n).collect();
    for i in (1..pairs_n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let hashes: Vec<u64> = shadows.iter().map(|s| hash_page(s)).collect();
    let pairs: Vec<(&Page, &Page, u64)> = order.iter().map(|&i| (&shadows[i].0, &pages[i].0, hashes[i])).collect();
    let n = pairs.len() as f64;
    let iters = (2 * 1024 / pairs_n).max(1) as u32;
    let (mut out1, mut out2) = (Vec::with_capacity(pairs.len() * (PAGE_SIZE + 32)), Vec::with_capacity(pairs.len() * (PAGE_SIZE + 32)));
    let [mcf, enc, enc_npf] =
        time_together(iters, [&mut || memcmp_full(&pairs), &mut || encode_all(&pairs, true, &mut out1), &mut || encode_all(&pairs, false, &mut out2)])
            .map(|x| x / n);
    let name = if sparse { "sparse" } else { "same" };
    println!(
        "{:<7} {:>7} {:>8} {:>9.1} {:>9.1} {:>6.2}x {:>9.1} {:>6.2}x",
        name,
        pairs_n,
        (2 * pairs_n * PAGE_SIZE) >> 20,
        mcf,
        enc,
        mcf / enc,
        enc_npf,
        mcf / enc_npf
    );
}
