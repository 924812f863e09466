//! The AVX2 encoder's line compares with AVX-512F/BW (`LineCompare`): a
//! 64-byte line is one vector, and a compare writes its byte mask straight
//! into a mask register. The page compare takes half the loads and XORs of
//! the AVX2 one, and a walked line's byte mask (with its changed bytes
//! counted) six instructions instead of thirteen: what brings a sparse
//! page's encode to the speed of a whole-page `memcmp` (which glibc runs
//! with AVX-512 on such a CPU too).
//!
//! Used only where the CPU and the OS have it (`simd::x86_walk`):
//! AMD Zen 4 and 5 (Ryzen 7040 and later, mobile ones included), Intel
//! Ice Lake and Tiger Lake (10th and 11th generation mobile), Xeons since
//! Skylake. Intel's client CPUs since Alder Lake have it fused off; they
//! run the AVX2 compares.

use super::LineCompare;
use crate::page::Page;
use core::arch::x86_64::*;

/// The AVX-512 line compares (the caller enables AVX2, AVX-512F and
/// AVX-512BW: `simd::x86_walk`).
#[derive(Clone, Copy)]
pub(crate) struct Avx512;

impl LineCompare for Avx512 {
    /// Per byte lane of a line, how many of the walked lines differ there.
    type Count = __m512i;

    #[inline(always)]
    unsafe fn no_changes() -> __m512i {
        // SAFETY: the caller enables AVX-512F.
        unsafe { _mm512_setzero_si512() }
    }

    #[inline(always)]
    unsafe fn changed_lines(a: &Page, b: &Page) -> u64 {
        // SAFETY: as lines16's contract.
        unsafe { lines16(a, b, 0) | lines16(a, b, 1) << 16 | lines16(a, b, 2) << 32 | lines16(a, b, 3) << 48 }
    }

    #[inline(always)]
    unsafe fn line_mask(a: &Page, b: &Page, w: usize) -> u64 {
        // SAFETY: as line_differs' contract.
        unsafe { line_differs(a, b, w) }
    }

    #[inline(always)]
    unsafe fn line_mask_counted(a: &Page, b: &Page, w: usize, count: &mut __m512i) -> u64 {
        // SAFETY: as line_differs' contract; AVX-512BW enabled.
        unsafe {
            let m = line_differs(a, b, w);
            // One masked subtract of -1 counts the line's changed bytes.
            *count = _mm512_mask_sub_epi8(*count, m, *count, _mm512_set1_epi8(-1));
            m
        }
    }

    #[inline(always)]
    unsafe fn changed(count: __m512i, _lines: u32) -> usize {
        // SAFETY: the caller enables AVX-512BW. A byte lane counts at most
        // one per walked line (at most 64): no lane overflows.
        unsafe { _mm512_reduce_add_epi64(_mm512_sad_epu8(count, _mm512_setzero_si512())) as usize }
    }
}

/// The byte mask of line `w % 64`: bit `i` set when byte `64 * w + i`
/// differs.
///
/// # Safety
/// AVX-512BW must be enabled in the caller.
#[inline(always)]
unsafe fn line_differs(a: &Page, b: &Page, w: usize) -> u64 {
    // SAFETY: the caller enables AVX-512BW.
    unsafe { _mm512_cmpneq_epi8_mask(line(a, w), line(b, w)) }
}

/// Bit `i` set when line `16 * quarter + i` differs. The AVX2 fold
/// (`super::lines16`) on 64-byte vectors: each line's XOR is one vector,
/// saturating packs (non-zero stays non-zero) fold 16 lines so that byte
/// `i` of each 128-bit lane is non-zero when line `i` differs in that
/// lane's 16 bytes, and one test gives 64 bits that fold into 16.
///
/// # Safety
/// AVX-512F and AVX-512BW must be enabled in the caller.
#[inline(always)]
unsafe fn lines16(a: &Page, b: &Page, quarter: usize) -> u64 {
    let first = 16 * (quarter % 4);
    // SAFETY: lines first .. first + 16 <= 64 are inside the pages.
    unsafe {
        let q = _mm512_packs_epi32(lines4(a, b, first), lines4(a, b, first + 4));
        let r = _mm512_packs_epi32(lines4(a, b, first + 8), lines4(a, b, first + 12));
        let w = _mm512_packs_epi16(q, r);
        // Bit 16 * lane + i: line i differs in that lane.
        let m = _mm512_test_epi8_mask(w, w);
        let m = m | m >> 32;
        (m | m >> 16) & 0xFFFF
    }
}

/// Lines `first .. first + 4`: dword `k` of each 128-bit lane is non-zero
/// when line `first + k` differs in that lane's bytes.
///
/// # Safety
/// `first + 4 <= 64`; AVX-512BW must be enabled in the caller.
#[inline(always)]
unsafe fn lines4(a: &Page, b: &Page, first: usize) -> __m512i {
    // SAFETY: as this function's contract.
    unsafe { _mm512_packs_epi16(_mm512_packs_epi32(xor(a, b, first), xor(a, b, first + 1)), _mm512_packs_epi32(xor(a, b, first + 2), xor(a, b, first + 3))) }
}

/// Line `w % 64` of `a` XOR that of `b`.
///
/// # Safety
/// AVX-512F must be enabled in the caller.
#[inline(always)]
unsafe fn xor(a: &Page, b: &Page, w: usize) -> __m512i {
    // SAFETY: the caller enables AVX-512F.
    unsafe { _mm512_xor_si512(line(a, w), line(b, w)) }
}

/// Line `w % 64` of `p`.
///
/// # Safety
/// AVX-512F must be enabled in the caller.
#[inline(always)]
unsafe fn line(p: &Page, w: usize) -> __m512i {
    // SAFETY: reads 64 bytes at 64 * (w % 64) < PAGE_SIZE - 63; loadu has
    // no alignment need.
    unsafe { _mm512_loadu_si512(p.as_ptr().add(64 * (w % 64)) as *const __m512i) }
}

#[cfg(test)]
mod tests {
    use super::super::{Avx2, LineCompare};
    use super::*;
    use crate::page::PAGE_SIZE;
    use crate::simd::{block_masks_scalar, x86_walk, X86Walk};
    use alloc::vec::Vec;

    /// Line bits, every line's byte mask and the changed-byte count of both
    /// builds, for a pair.
    type Seen = (u64, [u64; 64], usize);

    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    unsafe fn seen_by<L: LineCompare>(a: &Page, b: &Page) -> Seen {
        // SAFETY: the features both builds need are enabled here.
        unsafe {
            let lines = L::changed_lines(a, b);
            let mut count = L::no_changes();
            let masks = core::array::from_fn(|w| if lines >> w & 1 == 1 { L::line_mask_counted(a, b, w, &mut count) } else { L::line_mask(a, b, w) });
            (lines, masks, L::changed(count, lines.count_ones()))
        }
    }

    fn scalar(a: &Page, b: &Page) -> Seen {
        let masks: [u64; 64] = core::array::from_fn(|w| block_masks_scalar(a, b, w / 4)[w % 4]);
        let lines = (0..64).filter(|&w| masks[w] != 0).fold(0u64, |l, w| l | 1 << w);
        (lines, masks, masks.iter().map(|m| m.count_ones() as usize).sum())
    }

    /// Every single changed byte (each bit of it: the packs must keep any
    /// non-zero lane non-zero), lines changed in one 16-byte lane only, and
    /// random pairs: the AVX-512 compares see what the AVX2 ones and the
    /// scalar reference see.
    #[test]
    fn avx512_lines_match_avx2_and_scalar() {
        if x86_walk() != X86Walk::Avx512 {
            // Nothing to compare on this CPU (the AVX2 build is checked by
            // the encoder's tests).
            return;
        }
        let a: Page = core::array::from_fn(|i| (i * 29 % 253) as u8);
        let mut cases = Vec::new();
        for at in 0..PAGE_SIZE {
            let mut b = a;
            b[at] ^= 1 << (at % 8);
            cases.push(b);
        }
        for lane in 0..4 {
            let mut b = a;
            for w in (lane..64).step_by(3) {
                b[64 * w + 16 * lane + w % 16] ^= 0x80;
            }
            cases.push(b);
        }
        cases.push(core::array::from_fn(|i| !a[i]));
        cases.push(a);
        for (sh, p) in crate::delta::reference::pairs(0x4156_5835, 64) {
            cases.push(p);
            cases.push(sh);
        }
        for (n, b) in cases.iter().enumerate() {
            let want = scalar(&a, b);
            // SAFETY: x86_walk() found AVX2, AVX-512F and AVX-512BW.
            let (z, y) = unsafe { (seen_by::<Avx512>(&a, b), seen_by::<Avx2>(&a, b)) };
            assert_eq!(z, want, "case {n}");
            assert_eq!(y, want, "case {n} (avx2)");
        }
    }
}
