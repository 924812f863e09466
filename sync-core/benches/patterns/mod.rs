//! Page pairs (shadow, page) of realistic write patterns, shared by the
//! codec benchmark and the `codec_figures` example. Deterministic: a fixed
//! xorshift seed, no `rand`, so figures are reproducible.

#![allow(dead_code)]

use sync_core::delta::{BatchEncoder, Shadow};
use sync_core::page::{hash_page, AlignedPage, Page, PAGE_SIZE};

/// A page of a pattern, on a page boundary as guest pages and shadows are.
pub type PageBox = Box<AlignedPage>;

pub struct Pattern {
    pub name: &'static str,
    /// (shadow, page) pairs; `None` shadow = the standby has no copy yet.
    pub pairs: Vec<(Option<PageBox>, PageBox)>,
}

impl Pattern {
    /// The pairs as (shadow, page, the shadow's hash), as an encoder gets
    /// them from `ShadowStore` (every benchmark pair has a shadow).
    pub fn shadowed(&self) -> Vec<(&Page, &Page, u64)> {
        self.pairs
            .iter()
            .map(|(s, p)| {
                let s: &Page = s.as_deref().expect("every benchmark pair has a shadow");
                (s, &p.0, hash_page(s))
            })
            .collect()
    }
}

/// The batch of records of `pairs` (each as page number its index, with
/// its shadow), as a standby receives it: what the apply benchmarks parse.
pub fn batch(pairs: &[(&Page, &Page, u64)]) -> Vec<u8> {
    let mut batch = Vec::new();
    let mut w = BatchEncoder::new();
    for (i, (s, p, h)) in pairs.iter().enumerate() {
        let sh = Some(Shadow { page: s, hash: *h });
        w.encode_with(i as u64, p, sh, &mut batch).expect("page numbers ascend");
    }
    batch
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn page(&mut self) -> PageBox {
        let mut p = Box::new(AlignedPage::ZERO);
        for c in p.chunks_exact_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        p
    }
}

fn page_at(buf: &[u8], i: usize) -> PageBox {
    let mut p = Box::new(AlignedPage::ZERO);
    p.copy_from_slice(&buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
    p
}

/// A 720p RGBA framebuffer (3.5 MiB, 900 pages): a 240x160 window with a
/// border and a text-like pattern moves 6 px right and 2 px down over a
/// gradient desktop. Pairs: every page whose content changed.
pub fn framebuffer() -> Pattern {
    const W: usize = 1280;
    const H: usize = 720;
    fn draw(fb: &mut [u8], x0: usize, y0: usize) {
        for y in 0..H {
            for x in 0..W {
                let o = (y * W + x) * 4;
                let px = if (x0..x0 + 240).contains(&x) && (y0..y0 + 160).contains(&y) {
                    let (rx, ry) = (x - x0, y - y0);
                    if rx < 2 || ry < 2 || rx >= 238 || ry >= 158 {
                        [255, 255, 255, 255]
                    } else if ry < 20 {
                        [40, 60, 160, 255] // title bar
                    } else if (rx / 3 + ry / 5) % 7 == 0 && ry % 12 < 9 {
                        [20, 20, 20, 255] // "text"
                    } else {
                        [235, 235, 230, 255]
                    }
                } else {
                    [(x / 5) as u8, (y / 3) as u8, 128, 255]
                };
                fb[o..o + 4].copy_from_slice(&px);
            }
        }
    }
    let mut before = vec![0u8; W * H * 4];
    let mut after = vec![0u8; W * H * 4];
    draw(&mut before, 400, 200);
    draw(&mut after, 406, 202);
    let pairs = (0..W * H * 4 / PAGE_SIZE)
        .filter(|&i| before[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] != after[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])
        .map(|i| (Some(page_at(&before, i)), page_at(&after, i)))
        .collect();
    Pattern { name: "framebuffer", pairs }
}

/// Heap pages of 64-byte objects { next, prev: pointers, refcount: u32,
/// flags: u32, 40 bytes of payload }; per page a few objects are relinked
/// (pointers to nearby objects), refcounts bumped and flags toggled.
pub fn heap() -> Pattern {
    let mut rng = Rng(0x4845_4150);
    let base = 0x0000_7F3A_1200_0000u64;
    let mut pairs = Vec::new();
    for pg in 0..64u64 {
        let mut old = Box::new(AlignedPage::ZERO);
        for obj in 0..64usize {
            let o = obj * 64;
            let me = base + pg * 4096 + o as u64;
            let next = base + rng.below(1 << 16) * 64;
            let prev = base + rng.below(1 << 16) * 64;
            old[o..o + 8].copy_from_slice(&next.to_le_bytes());
            old[o + 8..o + 16].copy_from_slice(&prev.to_le_bytes());
            old[o + 16..o + 20].copy_from_slice(&((rng.below(5) + 1) as u32).to_le_bytes());
            old[o + 20..o + 24].copy_from_slice(&0x11u32.to_le_bytes());
            for k in 0..5 {
                let v = if k == 0 { me } else { rng.below(1000) };
                old[o + 24 + k * 8..o + 32 + k * 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        let mut new = old.clone();
        for _ in 0..(4 + rng.below(8)) {
            let o = rng.below(64) as usize * 64;
            match rng.below(3) {
                0 => {
                    // relink to a neighbour object
                    let next = u64::from_le_bytes(new[o..o + 8].try_into().unwrap());
                    let moved = next.wrapping_add((rng.below(8) + 1) * 64);
                    new[o..o + 8].copy_from_slice(&moved.to_le_bytes());
                }
                1 => {
                    let rc = u32::from_le_bytes(new[o + 16..o + 20].try_into().unwrap());
                    new[o + 16..o + 20].copy_from_slice(&(rc + 1).to_le_bytes());
                }
                _ => new[o + 20] ^= 0x04,
            }
        }
        pairs.push((Some(old), new));
    }
    Pattern { name: "heap", pairs }
}

/// Random-content pages with 1 to 16 bytes changed at random offsets.
pub fn sparse() -> Pattern {
    let mut rng = Rng(0x5350_4152);
    let pairs = (0..64)
        .map(|_| {
            let old = rng.page();
            let mut new = old.clone();
            for _ in 0..(1 + rng.below(16)) {
                let at = rng.below(PAGE_SIZE as u64) as usize;
                new[at] = new[at].wrapping_add(1 + rng.below(255) as u8);
            }
            (Some(old), new)
        })
        .collect();
    Pattern { name: "sparse", pairs }
}

/// Pages rewritten whole with new random content.
pub fn rewritten() -> Pattern {
    let mut rng = Rng(0x5245_5752);
    let pairs = (0..16).map(|_| (Some(rng.page()), rng.page())).collect();
    Pattern { name: "rewritten", pairs }
}

/// Pages written with the content they already had.
pub fn same() -> Pattern {
    let mut rng = Rng(0x5341_4D45);
    let pairs = (0..64)
        .map(|_| {
            let p = rng.page();
            (Some(p.clone()), p)
        })
        .collect();
    Pattern { name: "same", pairs }
}

/// Pages of data that were zeroed (freed memory).
pub fn zeroed() -> Pattern {
    let mut rng = Rng(0x5A45_524F);
    let pairs = (0..16).map(|_| (Some(rng.page()), Box::new(AlignedPage::ZERO))).collect();
    Pattern { name: "zeroed", pairs }
}

pub fn all() -> Vec<Pattern> {
    vec![framebuffer(), heap(), sparse(), rewritten(), same(), zeroed()]
}
