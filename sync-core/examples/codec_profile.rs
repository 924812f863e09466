//! One pass of the encoder (or of a whole-page compare) over a pattern's
//! pairs, for instruction counts that do not depend on machine load:
//!
//! `valgrind --tool=callgrind --toggle-collect='*codec_profile*pass*' \
//!   target/release/examples/codec_profile sparse encode 100`
//!
//! then instructions per page = Ir / (pairs x iterations). Modes: `encode`
//! (cached shadow hash), `encode_next` (as `ActiveSync::cut`: each page
//! encoded with the next one named, which it prefetches while it walks its
//! changed lines),
//! `memcmp_full` (16 256-byte `!=` per page, as the criterion baseline),
//! `memcmp` (`==`).

use std::hint::black_box;
use sync_core::delta::{BatchEncoder, Next, Shadow};
use sync_core::page::{Page, PAGE_SIZE};

#[path = "../benches/patterns/mod.rs"]
mod patterns;

#[inline(never)]
fn encode_pass(pairs: &[(&Page, &Page, u64)], out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut w = BatchEncoder::new();
    for (i, (s, p, h)) in pairs.iter().enumerate() {
        let sh = Shadow { page: s, hash: *h };
        // Page numbers ascend from 0: always in order.
        let _ = w.encode_with(i as u64, black_box(p), Some(sh), out);
    }
    out.len()
}

/// As `encode_pass`, naming the next pair (`encode_next`, as
/// `ActiveSync::cut`).
#[inline(never)]
fn encode_next_pass(pairs: &[(&Page, &Page, u64)], out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut w = BatchEncoder::new();
    for (i, (s, p, h)) in pairs.iter().enumerate() {
        let next = pairs.get(i + 1).map(|(ns, np, _)| Next { page: np, shadow: Some(ns) });
        let sh = Shadow { page: s, hash: *h };
        let _ = w.encode_next(i as u64, black_box(p), Some(sh), next, out);
    }
    out.len()
}

#[inline(never)]
fn memcmp_full_pass(pairs: &[(&Page, &Page, u64)]) -> usize {
    let mut differing = 0;
    for (s, p, _) in pairs {
        for (x, y) in s.chunks_exact(256).zip(p.chunks_exact(256)) {
            differing += (black_box(x) != black_box(y)) as usize;
        }
    }
    differing
}

#[inline(never)]
fn memcmp_pass(pairs: &[(&Page, &Page, u64)]) -> usize {
    pairs.iter().filter(|(s, p, _)| black_box(&s[..]) == black_box(&p[..])).count()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "codec_profile <pattern> <encode|encode_next|memcmp_full|memcmp> <iterations>";
    let (Some(name), Some(mode), Some(iters)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let iters: usize = iters.parse().unwrap_or(1);
    let pats = patterns::all();
    let Some(pat) = pats.iter().find(|p| p.name == name) else {
        eprintln!("no pattern {name}");
        std::process::exit(2);
    };
    let pairs = pat.shadowed();
    let mut out = Vec::with_capacity(pairs.len() * (PAGE_SIZE + 32));
    let mut sink = 0;
    for _ in 0..iters {
        sink += match mode.as_str() {
            "encode" => encode_pass(&pairs, &mut out),
            "encode_next" => encode_next_pass(&pairs, &mut out),
            "memcmp_full" => memcmp_full_pass(&pairs),
            "memcmp" => memcmp_pass(&pairs),
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        };
    }
    println!("{} pairs x {iters}: {sink}", pairs.len());
}
