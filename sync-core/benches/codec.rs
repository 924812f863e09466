//! Delta codec throughput next to `memcmp` of the same page pairs (the
//! memory-bandwidth limit) and next to QEMU's XBZRLE, per write pattern.
//!
//! `cargo bench -p sync-core --bench codec -- --warm-up-time 1 --measurement-time 3`
//!
//! Each benchmark handles every pair of one pattern per iteration; the
//! throughput is in page bytes (pairs x 4096), so the ratio of two lines of
//! one pattern is the ratio of their speeds. Each iteration visits every
//! pair of the pattern once, in order; a pattern holds at most 202 pairs
//! (the framebuffer: 1.6 MiB with shadows; sparse: 64 pairs, 512 KiB), so
//! on a CPU with a 2 MiB L2 all of them come from L2 after the first
//! iteration. `encode` names the next pair as `ActiveSync::cut` does
//! (`encode_next`: the encoder loads it while it walks the current page's
//! changed lines). Figures for many distinct pairs, past the L2 and the
//! L3, in a pseudo-random order, are a table of `codec_figures`. On a CPU
//! with AVX-512 (whose line compares the encoder uses there), the groups
//! `sparse_avx2` and `same_avx2` measure the AVX2 build as well.
//! Sizes (ours vs XBZRLE, raw and
//! after zstd) are printed by `cargo run --release --example codec_figures`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sync_core::delta::{self, BatchDecoder, BatchEncoder, Next, Shadow};
use sync_core::page::PAGE_SIZE;
use sync_core::xbzrle;

mod patterns;

fn codec(c: &mut Criterion) {
    for pat in patterns::all() {
        bench_pattern(c, &pat, pat.name);
    }
    // On a CPU with AVX-512 the groups above ran the encoder's AVX-512 line
    // compares; the AVX2 build, as a CPU without AVX-512 runs it:
    #[cfg(target_arch = "x86_64")]
    if sync_core::simd::x86_walk() == sync_core::simd::X86Walk::Avx512 {
        sync_core::simd::avoid_avx512();
        bench_pattern(c, &patterns::sparse(), "sparse_avx2");
        bench_pattern(c, &patterns::same(), "same_avx2");
    }
}

/// The benchmarks of one pattern, as group `name`.
fn bench_pattern(c: &mut Criterion, pat: &patterns::Pattern, name: &str) {
    let pairs = pat.shadowed();
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes((pairs.len() * PAGE_SIZE) as u64));

    g.bench_function("memcmp", |b| {
        b.iter(|| {
            let mut equal = 0usize;
            for (s, p, _) in &pairs {
                equal += (black_box(&s[..]) == black_box(&p[..])) as usize;
            }
            equal
        })
    });

    // `==` stops at the first difference; a delta encoder must read the
    // whole page, so this is the bandwidth limit for changed pages.
    g.bench_function("memcmp_full", |b| {
        b.iter(|| {
            let mut differing = 0usize;
            for (s, p, _) in &pairs {
                for (x, y) in s.chunks_exact(256).zip(p.chunks_exact(256)) {
                    differing += (black_box(x) != black_box(y)) as usize;
                }
            }
            differing
        })
    });

    let mut out = Vec::with_capacity(pairs.len() * (PAGE_SIZE + 32));
    g.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            let mut w = BatchEncoder::new();
            for (i, (s, p, h)) in pairs.iter().enumerate() {
                // As `ActiveSync::cut`: with the next page and its
                // shadow named.
                let next = pairs.get(i + 1).map(|(ns, np, _)| Next { page: np, shadow: Some(ns) });
                let sh = Shadow { page: s, hash: *h };
                let r = w.encode_next(i as u64, p, Some(sh), next, &mut out);
                black_box(r.expect("page numbers ascend"));
            }
            out.len()
        })
    });

    g.bench_function("encode_hashing_shadow", |b| {
        b.iter(|| {
            out.clear();
            let mut w = BatchEncoder::new();
            for (i, (s, p, _)) in pairs.iter().enumerate() {
                let r = w.encode(i as u64, black_box(*p), Some(black_box(*s)), &mut out);
                black_box(r.expect("page numbers ascend"));
            }
            out.len()
        })
    });

    let mut xout = Vec::with_capacity(pairs.len() * PAGE_SIZE);
    g.bench_function("xbzrle_encode", |b| {
        b.iter(|| {
            xout.clear();
            for (s, p, _) in &pairs {
                black_box(xbzrle::encode(black_box(*s), black_box(*p), PAGE_SIZE, &mut xout));
            }
            xout.len()
        })
    });

    // Apply: parse each record and rebuild the page, checking a Delta's
    // hash (Same pages are not in the batch: nothing to apply).
    let batch = patterns::batch(&pairs);
    let mut page = Box::new([0u8; PAGE_SIZE]);
    g.bench_function("apply", |b| {
        b.iter(|| {
            let mut records = BatchDecoder::new(&batch);
            while let Some(rec) = records.next_record().expect("valid batch") {
                let (s, _, _) = pairs[rec.page_num as usize];
                delta::apply(Some(s), &rec, &mut page).expect("applies");
            }
            page[0]
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
