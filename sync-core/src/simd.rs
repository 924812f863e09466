//! Whole-page scans the delta codec builds on: which 256-byte blocks and
//! which bytes of two pages differ, and whether a page is zero.
//!
//! Backends, picked at compile time by the target's features, because on
//! bare metal the vector registers belong to the guest unless the target
//! says otherwise:
//! - x86_64 with SSE2 in the target (hosted builds: tests, benchmarks,
//!   tools): AVX2 when the CPU and OS have it (checked once), else SSE2;
//!   the delta encoder's line compares also in AVX-512F/BW where present
//!   (`x86_walk`).
//! - aarch64 with NEON in the target (`aarch64-unknown-none` has it; the
//!   hypervisor saves the guest's FP/SIMD state around its own code).
//! - otherwise (`x86_64-unknown-none` is soft-float): u64 words.
//!
//! Measured on the host (Xeon, 4 KiB equal pages, `memcmp` = 65 ns): SSE2
//! 122 ns, AVX2 56 ns. The scalar loop is the reference for the others.

use crate::page::{Page, PAGE_SIZE};

/// Bytes in one block of `diff_blocks`.
pub const BLOCK: usize = 256;
/// Blocks in a page; `diff_blocks` returns one bit per block.
pub const BLOCKS: usize = PAGE_SIZE / BLOCK;

/// Bit `j` is set when bytes `j*BLOCK .. (j+1)*BLOCK` of `a` and `b` differ.
#[inline]
pub fn diff_blocks(a: &Page, b: &Page) -> u16 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        if has_avx2() {
            // SAFETY: has_avx2() checked CPUID and that the OS saves YMM state.
            return unsafe { x86::diff_blocks_avx2(a, b) };
        }
        x86::diff_blocks_sse2(a, b)
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        neon::diff_blocks(a, b)
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "sse2"), all(target_arch = "aarch64", target_feature = "neon"))))]
    {
        diff_blocks_scalar(a, b)
    }
}

/// Which bytes of one block differ: bit `i` of `masks[k]` is set when byte
/// `block*BLOCK + 64*k + i` of `a` and `b` differ.
#[inline]
pub fn block_masks(a: &Page, b: &Page, block: usize) -> [u64; BLOCK / 64] {
    let block = block % BLOCKS;
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        if has_avx2() {
            // SAFETY: has_avx2() checked CPUID and that the OS saves YMM state.
            return unsafe { x86::block_masks_avx2(a, b, block) };
        }
        x86::block_masks_sse2(a, b, block)
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        neon::block_masks(a, b, block)
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "sse2"), all(target_arch = "aarch64", target_feature = "neon"))))]
    {
        block_masks_scalar(a, b, block)
    }
}

/// The portable reference for `block_masks`.
pub fn block_masks_scalar(a: &Page, b: &Page, block: usize) -> [u64; BLOCK / 64] {
    let mut masks = [0u64; BLOCK / 64];
    let base = (block % BLOCKS) * BLOCK;
    for (k, m) in masks.iter_mut().enumerate() {
        for w in 0..8 {
            let o = base + k * 64 + w * 8;
            let mut x = [0u8; 8];
            let mut y = [0u8; 8];
            x.copy_from_slice(&a[o..o + 8]);
            y.copy_from_slice(&b[o..o + 8]);
            *m |= (byte_mask(u64::from_le_bytes(x) ^ u64::from_le_bytes(y)) as u64) << (8 * w);
        }
    }
    masks
}

/// Bit i set when byte i (in memory order) of the XOR word is non-zero.
#[inline(always)]
pub fn byte_mask(x: u64) -> u8 {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit of each byte set when the byte is non-zero (no carries cross
    // bytes: 0x7F + 0x7F < 0x100).
    let t = (((x & LOW7) + LOW7) | x) & HIGH;
    // Gather the eight high bits into the top byte: byte i's bit lands on
    // bit 56 + i and no two partial products overlap.
    ((t >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// What `page_diff` finds between two pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageDiff {
    /// Bit `i` set when bytes `64*i .. 64*i + 64` (line `i`) differ.
    pub lines: u64,
    /// Bytes that differ.
    pub changed: usize,
    /// `hash_page(a) - hash_page(b)` (wrapping): the page hash is a sum of
    /// per-word terms, so only the changed lines contribute.
    pub hash_delta: u64,
}

/// Compares two pages: for each 64-byte line that differs, `masks[i]` gets
/// its byte mask (bit `b` set when byte `64*i + b` differs; entries of equal
/// lines are left as they were), and the result has its bit, the changed
/// bytes and the page hash's change.
///
/// A branch-free compare of 256-byte blocks, as cheap per byte as
/// `memcmp`, then masks, counts and hash terms for the changed blocks'
/// lines only (read again, from L1). The line bitmap lets the encoder walk
/// changed lines with one `trailing_zeros` each instead of a branch per
/// line.
#[inline]
pub fn page_diff(a: &Page, b: &Page, masks: &mut [u64; PAGE_SIZE / 64]) -> PageDiff {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        if has_avx2() {
            // SAFETY: has_avx2() checked CPUID and that the OS saves YMM state.
            return unsafe { x86::page_diff_avx2(a, b, masks) };
        }
    }
    page_diff_generic(a, b, masks)
}

/// `page_diff` from `diff_blocks` and `block_masks` (SSE2, NEON, scalar),
/// with the hash updated per changed u64 word.
pub fn page_diff_generic(a: &Page, b: &Page, masks: &mut [u64; PAGE_SIZE / 64]) -> PageDiff {
    let (lines, changed) = line_diff_generic(a, b, masks);
    PageDiff { lines, changed, hash_delta: hash_delta_generic(a, b, lines, masks) }
}

/// The line part of `page_diff` (masks of the changed lines, their bitmap
/// and the changed bytes) without the hash: the encoder hashes a page
/// with many changed lines whole, which is cheaper than line by line.
pub fn line_diff_generic(a: &Page, b: &Page, masks: &mut [u64; PAGE_SIZE / 64]) -> (u64, usize) {
    let mut bits = diff_blocks(a, b);
    let (mut lines, mut changed) = (0u64, 0usize);
    while bits != 0 {
        let j = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        for (k, m) in block_masks(a, b, j).into_iter().enumerate() {
            let line = 4 * j + k;
            masks[line] = m;
            lines |= ((m != 0) as u64) << line;
            changed += m.count_ones() as usize;
        }
    }
    (lines, changed)
}

/// `hash_page(a) - hash_page(b)` from the changed words of the changed
/// `lines` (`masks` as `line_diff_generic` left them).
pub fn hash_delta_generic(a: &Page, b: &Page, lines: u64, masks: &[u64; PAGE_SIZE / 64]) -> u64 {
    let mut delta = 0u64;
    let mut bits = lines;
    while bits != 0 {
        let line = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let mut wm = byte_mask(masks[line]);
        while wm != 0 {
            // < PAGE_WORDS: the mask tells the compiler so.
            let i = (8 * line + wm.trailing_zeros() as usize) % crate::page::PAGE_WORDS;
            wm &= wm - 1;
            let (new, old) = (crate::page::read_word(a, i), crate::page::read_word(b, i));
            delta = delta.wrapping_add(crate::page::word_term(i, new)).wrapping_sub(crate::page::word_term(i, old));
        }
    }
    delta
}

/// `line_diff_generic` for a CPU with AVX2 and POPCNT: one branch-free
/// compare that finds the changed 64-byte lines, then their byte masks
/// (read again, from L1).
///
/// # Safety
/// The CPU must have AVX2 and POPCNT and the OS must save YMM state
/// (`has_avx2_bits`).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
#[target_feature(enable = "avx2,popcnt")]
pub unsafe fn line_diff_avx2(a: &Page, b: &Page, masks: &mut [u64; PAGE_SIZE / 64]) -> (u64, usize) {
    // SAFETY: the caller guarantees AVX2 and POPCNT.
    unsafe { x86::line_diff_avx2(a, b, masks) }
}

/// `hash_delta_generic` with AVX2: the eight word terms of each changed
/// line at once (equal words cancel).
///
/// # Safety
/// As `line_diff_avx2`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
#[target_feature(enable = "avx2,popcnt")]
pub unsafe fn hash_delta_avx2(a: &Page, b: &Page, lines: u64) -> u64 {
    // SAFETY: the caller guarantees AVX2.
    unsafe { x86::hash_delta_avx2(a, b, lines) }
}

/// True when every byte of the page is zero.
#[inline]
pub fn is_zero(page: &Page) -> bool {
    diff_blocks(page, &crate::page::ZERO_PAGE) == 0
}

/// `prefetch_lines(page, first..first + N)` unrolled, for `first + N <=
/// 64`: one instruction a line, no bound check (a prefetch of an address
/// outside the page would be harmless anyway: it never faults).
#[inline(always)]
pub fn prefetch_block<const N: usize>(page: &Page, first: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    prefetch_at::<N>(page.as_ptr().wrapping_add(64 * first));
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    prefetch_lines(page, first..first + N);
}

/// Asks the CPU to start loading the `N` 64-byte lines from `at` into L1
/// (a hint: never faults, whatever the address). Nothing where there is
/// no SSE: the only caller that gives an address rather than a page is
/// the AVX2 encoder.
#[inline(always)]
pub fn prefetch_at<const N: usize>(at: *const u8) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    for k in 0..N {
        // SAFETY: SSE is enabled (cfg above); a prefetch reads nothing,
        // writes nothing and never faults, whatever the address; the
        // address is only computed (wrapping_add, no dereference).
        unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(at.wrapping_add(64 * k).cast()) };
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = at;
}

/// Asks the CPU to start loading 64-byte lines `lines` of `page` into L1
/// (a hint: no fault, no effect on results). Where there is no prefetch
/// instruction to use (no SSE, or another architecture) it does nothing.
#[inline(always)]
pub fn prefetch_lines(page: &Page, lines: core::ops::Range<usize>) {
    let lines = lines.start.min(PAGE_SIZE / 64)..lines.end.min(PAGE_SIZE / 64);
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    for i in lines {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is enabled (cfg above); a prefetch never faults and
        // the address is inside `page` (i < 64).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(page.as_ptr().add(64 * i).cast()) };
    }
    #[cfg(target_arch = "aarch64")]
    for i in lines {
        // SAFETY: PRFM is a hint: it reads no register but its address,
        // writes nothing and never faults; the address is inside `page`
        // (i < 64).
        unsafe { core::arch::asm!("prfm pldl1keep, [{0}]", in(reg) page.as_ptr().add(64 * i), options(nostack, preserves_flags, readonly)) };
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "sse"), target_arch = "aarch64")))]
    let _ = (page, lines);
}

/// The portable reference: u64 words, OR of XORs per block.
pub fn diff_blocks_scalar(a: &Page, b: &Page) -> u16 {
    let mut mask = 0u16;
    for (j, (ba, bb)) in a.chunks_exact(BLOCK).zip(b.chunks_exact(BLOCK)).enumerate() {
        let mut acc = 0u64;
        for (wa, wb) in ba.chunks_exact(8).zip(bb.chunks_exact(8)) {
            let mut x = [0u8; 8];
            let mut y = [0u8; 8];
            x.copy_from_slice(wa);
            y.copy_from_slice(wb);
            acc |= u64::from_ne_bytes(x) ^ u64::from_ne_bytes(y);
        }
        mask |= ((acc != 0) as u16) << j;
    }
    mask
}

/// Whether AVX2 can be used: CPUID says so and the OS saves YMM state
/// (XCR0 bits 1 and 2). Checked once, then cached.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub fn has_avx2() -> bool {
    use core::sync::atomic::{AtomicU8, Ordering};
    // 0 = not checked yet, 1 = no, 2 = yes. A race only repeats the check.
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let yes = x86::detect_avx2();
            STATE.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
    }
}

/// `has_avx2()`, and the CPU has POPCNT, LZCNT, BMI1 and BMI2 (every AVX2 CPU
/// shipped has them, but each has its own CPUID bit). Checked once.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
pub fn has_avx2_bits() -> bool {
    use core::sync::atomic::{AtomicU8, Ordering};
    // 0 = not checked yet, 1 = no, 2 = yes. A race only repeats the check.
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let yes = has_avx2() && x86::detect_bits();
            STATE.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
    }
}

/// Which build of the encoder's line walk an x86_64 CPU runs
/// (`x86_walk`).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X86Walk {
    /// The portable encoder (SSE2): no AVX2, or not its bit instructions.
    Portable = 1,
    /// AVX2 with POPCNT, LZCNT, BMI1 and BMI2 (`has_avx2_bits`).
    Avx2 = 2,
    /// That, with its line compares in AVX-512F/BW (`x86::Avx512`): the
    /// CPU has both and the OS saves the mask and ZMM registers (XCR0 bits
    /// 5 to 7).
    Avx512 = 3,
}

/// The walk this CPU runs (checked once, then cached), `Avx2` at most after
/// `avoid_avx512`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
pub fn x86_walk() -> X86Walk {
    use core::sync::atomic::Ordering;
    match WALK.load(Ordering::Relaxed) {
        3 => X86Walk::Avx512,
        2 => X86Walk::Avx2,
        1 => X86Walk::Portable,
        _ => {
            let walk = if !has_avx2_bits() {
                X86Walk::Portable
            } else if x86::detect_avx512() && !AVOID_AVX512.load(Ordering::Relaxed) {
                X86Walk::Avx512
            } else {
                X86Walk::Avx2
            };
            // A race only repeats the check.
            WALK.store(walk as u8, Ordering::Relaxed);
            walk
        }
    }
}

/// Makes the encoder walk with its AVX2 line compares even on a CPU with
/// AVX-512, from now on in this program: for measuring that build on such
/// a CPU (`codec_figures`), or where AVX-512 should stay unused. Call it
/// before encoding starts (an encode already checking the CPU may still
/// store the AVX-512 choice).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub fn avoid_avx512() {
    use core::sync::atomic::Ordering;
    AVOID_AVX512.store(true, Ordering::Relaxed);
    WALK.store(0, Ordering::Relaxed);
}

/// `x86_walk`'s cache: 0 = not checked yet, else an `X86Walk`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
static WALK: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
static AVOID_AVX512: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(crate) mod x86 {
    use super::{PageDiff, BLOCK, BLOCKS};
    use crate::page::Page;
    use core::arch::x86_64::*;

    mod avx512;
    pub(crate) use avx512::Avx512;

    /// The line compares the AVX2 encoder's walk is built from
    /// (`delta::encode_walked`), in two instruction sets: `Avx2` and
    /// `Avx512`. Each method is inlined into an encoder that enables the
    /// set's features.
    pub(crate) trait LineCompare {
        /// The changed bytes of the lines walked so far, kept in a vector
        /// register.
        type Count: Copy;

        /// A count of no bytes.
        ///
        /// # Safety
        /// The set's features must be enabled in the caller.
        unsafe fn no_changes() -> Self::Count;

        /// Bit `i` set when 64-byte line `i` of the pages differs.
        ///
        /// # Safety
        /// The set's features must be enabled in the caller.
        unsafe fn changed_lines(a: &Page, b: &Page) -> u64;

        /// The byte mask of line `w % 64`: bit `i` set when byte `64*w + i`
        /// differs.
        ///
        /// # Safety
        /// The set's features must be enabled in the caller.
        unsafe fn line_mask(a: &Page, b: &Page, w: usize) -> u64;

        /// `line_mask`, with the line's changed bytes added to `count`.
        ///
        /// # Safety
        /// The set's features must be enabled in the caller.
        unsafe fn line_mask_counted(a: &Page, b: &Page, w: usize, count: &mut Self::Count) -> u64;

        /// The changed bytes counted over `lines` lines (each counted once).
        ///
        /// # Safety
        /// The set's features must be enabled in the caller.
        unsafe fn changed(count: Self::Count, lines: u32) -> usize;
    }

    /// The AVX2 line compares (the caller enables AVX2).
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2;

    impl LineCompare for Avx2 {
        /// Per byte lane of a half line, how many times it was equal.
        type Count = __m256i;

        #[inline(always)]
        unsafe fn no_changes() -> __m256i {
            // SAFETY: the caller enables AVX2.
            unsafe { _mm256_setzero_si256() }
        }

        /// `changed_lines_avx2`, inlined into the encoder (a call would cost
        /// a sparse page 16 instructions more, ~1 %).
        #[inline(always)]
        unsafe fn changed_lines(a: &Page, b: &Page) -> u64 {
            // SAFETY: the caller enables AVX2.
            unsafe { lines16_bits(a, b, 0) | lines16_bits(a, b, 1) << 16 | lines16_bits(a, b, 2) << 32 | lines16_bits(a, b, 3) << 48 }
        }

        #[inline(always)]
        unsafe fn line_mask(a: &Page, b: &Page, w: usize) -> u64 {
            // SAFETY: the caller enables AVX2.
            unsafe {
                let (e0, e1) = line_equal(a, b, w);
                differing(e0, e1)
            }
        }

        #[inline(always)]
        unsafe fn line_mask_counted(a: &Page, b: &Page, w: usize, count: &mut __m256i) -> u64 {
            // SAFETY: the caller enables AVX2.
            unsafe {
                let (e0, e1) = line_equal(a, b, w);
                // An equal byte is -1: subtracting counts it (at most 2 per
                // byte lane and line, so up to 127 lines).
                *count = _mm256_sub_epi8(_mm256_sub_epi8(*count, e0), e1);
                differing(e0, e1)
            }
        }

        #[inline(always)]
        unsafe fn changed(count: __m256i, lines: u32) -> usize {
            // SAFETY: the caller enables AVX2.
            let equal = unsafe { hsum(_mm256_sad_epu8(count, _mm256_setzero_si256())) } as usize;
            64 * lines as usize - equal
        }
    }

    #[allow(unused_unsafe)]
    pub(super) fn detect_avx2() -> bool {
        // SAFETY: CPUID exists on every x86_64 CPU.
        let (max_leaf, l1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
        let osxsave = l1.ecx & (1 << 27) != 0;
        let avx = l1.ecx & (1 << 28) != 0;
        if max_leaf < 7 || !osxsave || !avx {
            return false;
        }
        // SAFETY: OSXSAVE is set, so XGETBV is enabled.
        let xcr0 = unsafe { xgetbv0() };
        if xcr0 & 0b110 != 0b110 {
            return false;
        }
        // SAFETY: leaf 7 exists (max_leaf >= 7).
        let l7 = unsafe { __cpuid_count(7, 0) };
        l7.ebx & (1 << 5) != 0
    }

    /// POPCNT (leaf 1 ECX 23), BMI1 and BMI2 (leaf 7 EBX 3 and 8), LZCNT (leaf 0x8000_0001
    /// ECX 5). Call only after `detect_avx2` said yes (leaf 7 exists).
    #[allow(unused_unsafe)]
    pub(super) fn detect_bits() -> bool {
        // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 exists because
        // the caller saw AVX2 there; extended leaves are queried for their
        // maximum first.
        unsafe {
            let popcnt = __cpuid(1).ecx & (1 << 23) != 0;
            let l7 = __cpuid_count(7, 0).ebx;
            let bmi = l7 & (1 << 3) != 0 && l7 & (1 << 8) != 0;
            let lzcnt = __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 5) != 0;
            popcnt && bmi && lzcnt
        }
    }

    /// AVX-512F and AVX-512BW (leaf 7 EBX 16 and 30), and XCR0 saves the
    /// mask registers and all of ZMM (bits 5, 6, 7). Call only after
    /// `detect_avx2` said yes (leaf 7 exists, XGETBV is enabled).
    #[allow(unused_unsafe)]
    pub(super) fn detect_avx512() -> bool {
        // SAFETY: CPUID exists on every x86_64 CPU and leaf 7 does (the
        // caller saw AVX2 there); OSXSAVE is set, so XGETBV is enabled.
        let (l7, xcr0) = unsafe { (__cpuid_count(7, 0).ebx, xgetbv0()) };
        l7 & (1 << 16) != 0 && l7 & (1 << 30) != 0 && xcr0 & 0xE6 == 0xE6
    }

    #[target_feature(enable = "xsave")]
    unsafe fn xgetbv0() -> u64 {
        _xgetbv(0)
    }

    /// SSE2 is part of the target here, so this is safe to call.
    #[allow(unused_unsafe)]
    pub(super) fn diff_blocks_sse2(a: &Page, b: &Page) -> u16 {
        let mut mask = 0u16;
        for j in 0..BLOCKS {
            // SAFETY: every load reads 16 bytes at offset j*BLOCK + 16*k with
            // k < 16, inside the 4096-byte pages; loadu has no alignment need.
            unsafe {
                let pa = a.as_ptr().add(j * BLOCK) as *const __m128i;
                let pb = b.as_ptr().add(j * BLOCK) as *const __m128i;
                let mut acc = _mm_xor_si128(_mm_loadu_si128(pa), _mm_loadu_si128(pb));
                for k in 1..BLOCK / 16 {
                    let x = _mm_xor_si128(_mm_loadu_si128(pa.add(k)), _mm_loadu_si128(pb.add(k)));
                    acc = _mm_or_si128(acc, x);
                }
                let eq = _mm_movemask_epi8(_mm_cmpeq_epi8(acc, _mm_setzero_si128()));
                mask |= ((eq != 0xFFFF) as u16) << j;
            }
        }
        mask
    }

    /// # Safety
    /// The CPU must support AVX2 and the OS must save YMM state.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn diff_blocks_avx2(a: &Page, b: &Page) -> u16 {
        let mut mask = 0u16;
        for j in 0..BLOCKS {
            // SAFETY: every load reads 32 bytes at offset j*BLOCK + 32*k with
            // k < 8, inside the 4096-byte pages; loadu has no alignment need.
            unsafe {
                let pa = a.as_ptr().add(j * BLOCK) as *const __m256i;
                let pb = b.as_ptr().add(j * BLOCK) as *const __m256i;
                let mut acc = _mm256_xor_si256(_mm256_loadu_si256(pa), _mm256_loadu_si256(pb));
                for k in 1..BLOCK / 32 {
                    let x = _mm256_xor_si256(_mm256_loadu_si256(pa.add(k)), _mm256_loadu_si256(pb.add(k)));
                    acc = _mm256_or_si256(acc, x);
                }
                mask |= ((_mm256_testz_si256(acc, acc) == 0) as u16) << j;
            }
        }
        mask
    }
    /// SSE2 is part of the target here, so this is safe to call.
    #[allow(unused_unsafe)]
    pub(super) fn block_masks_sse2(a: &Page, b: &Page, block: usize) -> [u64; BLOCK / 64] {
        let mut masks = [0u64; BLOCK / 64];
        for (k, m) in masks.iter_mut().enumerate() {
            let off = block * BLOCK + k * 64;
            let mut eq = 0u64;
            for q in 0..4 {
                // SAFETY: reads 16 bytes at off + 16*q <= 4096 - 16 (block <
                // BLOCKS, k < 4, q < 4); loadu has no alignment need.
                let e = unsafe {
                    let pa = a.as_ptr().add(off + 16 * q) as *const __m128i;
                    let pb = b.as_ptr().add(off + 16 * q) as *const __m128i;
                    _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128(pa), _mm_loadu_si128(pb)))
                };
                eq |= ((e as u32 & 0xFFFF) as u64) << (16 * q);
            }
            *m = !eq;
        }
        masks
    }

    /// # Safety
    /// The CPU must support AVX2 and the OS must save YMM state.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block_masks_avx2(a: &Page, b: &Page, block: usize) -> [u64; BLOCK / 64] {
        let mut masks = [0u64; BLOCK / 64];
        for (k, m) in masks.iter_mut().enumerate() {
            let off = block * BLOCK + k * 64;
            // SAFETY: reads 32 bytes at off and off + 32, inside the pages
            // (block < BLOCKS, k < 4); loadu has no alignment need.
            let (lo, hi) = unsafe {
                let pa = a.as_ptr().add(off) as *const __m256i;
                let pb = b.as_ptr().add(off) as *const __m256i;
                (
                    _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_loadu_si256(pa), _mm256_loadu_si256(pb))),
                    _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_loadu_si256(pa.add(1)), _mm256_loadu_si256(pb.add(1)))),
                )
            };
            *m = !((lo as u32 as u64) | (hi as u32 as u64) << 32);
        }
        masks
    }
    /// # Safety
    /// The CPU must support AVX2 and the OS must save YMM state.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn page_diff_avx2(a: &Page, b: &Page, masks: &mut [u64; 64]) -> PageDiff {
        // SAFETY: the caller guarantees AVX2.
        let (lines, changed) = unsafe { line_diff_avx2(a, b, masks) };
        // SAFETY: as above.
        PageDiff { lines, changed, hash_delta: unsafe { hash_delta_avx2(a, b, lines) } }
    }

    /// Line bitmap, masks and changed bytes (`super::line_diff_generic`).
    /// `changed` uses `count_ones`: a single instruction only where the
    /// caller enables POPCNT (the encoder's AVX2 build does).
    ///
    /// # Safety
    /// The CPU must support AVX2 and the OS must save YMM state.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn line_diff_avx2(a: &Page, b: &Page, masks: &mut [u64; 64]) -> (u64, usize) {
        // SAFETY: the caller guarantees AVX2.
        let lines = unsafe { changed_lines_avx2(a, b) };
        // SAFETY: as above.
        (lines, unsafe { line_masks_avx2(a, b, lines, masks) })
    }

    /// Masks and changed bytes of the changed `lines`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and the OS must save YMM state.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn line_masks_avx2(a: &Page, b: &Page, lines: u64, masks: &mut [u64; 64]) -> usize {
        // SAFETY: the caller guarantees AVX2.
        unsafe { line_masks::<Avx2>(a, b, lines, masks) }
    }

    /// `line_masks_avx2` with `L`'s compares.
    ///
    /// # Safety
    /// `L`'s features must be enabled in the caller.
    #[inline(always)]
    pub(crate) unsafe fn line_masks<L: LineCompare>(a: &Page, b: &Page, lines: u64, masks: &mut [u64; 64]) -> usize {
        let mut bits = lines;
        let mut changed = 0usize;
        while bits != 0 {
            let w = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // SAFETY: the caller enables L's features.
            let m = unsafe { L::line_mask(a, b, w) };
            masks[w % 64] = m;
            changed += m.count_ones() as usize;
        }
        changed
    }

    /// Bit `i` set when 64-byte line `i` of the pages differs.
    ///
    /// One branch-free pass, as many instructions per byte as `memcmp`:
    /// each line's two XORs are ORed, and saturating packs (which keep a
    /// non-zero lane non-zero) fold 16 lines into one vector whose byte `i`
    /// is non-zero when line `i` differs, so a single movemask gives 16 line
    /// bits. No per-line or per-block test, and no second look at
    /// the changed blocks to find their lines.
    ///
    /// # Safety
    /// The CPU must support AVX2 and the OS must save YMM state.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn changed_lines_avx2(a: &Page, b: &Page) -> u64 {
        // SAFETY: the caller guarantees AVX2.
        unsafe { Avx2::changed_lines(a, b) }
    }

    /// Bit `i` set when line `16 * quarter + i` differs (`changed_lines_avx2`
    /// for a quarter of the page). Each quarter ends in its own movemask:
    /// measured faster than folding two quarters with cross-lane permutes
    /// (fewer instructions on the one shuffle port, and a shorter chain
    /// after the last load).
    ///
    /// # Safety
    /// AVX2 must be enabled in the caller.
    #[inline(always)]
    unsafe fn lines16_bits(a: &Page, b: &Page, quarter: usize) -> u64 {
        // SAFETY: lines 16*q .. 16*q + 16 are inside the page (q < 4); the
        // caller enables AVX2.
        unsafe {
            let w = lines16(a, b, 16 * (quarter % 4));
            let f = _mm_or_si128(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
            u64::from(!(_mm_movemask_epi8(_mm_cmpeq_epi8(f, _mm_setzero_si128())) as u32) & 0xFFFF)
        }
    }

    /// Lines `first .. first + 16`: byte `i` of each 128-bit lane is
    /// non-zero when line `first + i` differs (in that lane's 32 of its
    /// bytes).
    ///
    /// # Safety
    /// `first + 16 <= 64`; AVX2 must be enabled in the caller.
    #[inline(always)]
    unsafe fn lines16(a: &Page, b: &Page, first: usize) -> __m256i {
        // SAFETY: as this function's contract.
        unsafe {
            // packs_epi32 then packs_epi16 of four vectors: lane L holds
            // their lane-L dwords in order (signed saturation maps non-zero
            // to non-zero).
            let q = _mm256_packs_epi32(lines4(a, b, first), lines4(a, b, first + 4));
            let r = _mm256_packs_epi32(lines4(a, b, first + 8), lines4(a, b, first + 12));
            _mm256_packs_epi16(q, r)
        }
    }

    /// Lines `first .. first + 4`: dword `k` of each lane is non-zero when
    /// line `first + k` differs in that lane's bytes.
    ///
    /// # Safety
    /// `first + 4 <= 64`; AVX2 must be enabled in the caller.
    #[inline(always)]
    unsafe fn lines4(a: &Page, b: &Page, first: usize) -> __m256i {
        // SAFETY: reads 64 bytes at 64*line for line < first + 4 <= 64,
        // inside the pages; loadu has no alignment need.
        unsafe {
            let line = |k: usize| {
                let pa = a.as_ptr().add(64 * (first + k)) as *const __m256i;
                let pb = b.as_ptr().add(64 * (first + k)) as *const __m256i;
                let x0 = _mm256_xor_si256(_mm256_loadu_si256(pa), _mm256_loadu_si256(pb));
                let x1 = _mm256_xor_si256(_mm256_loadu_si256(pa.add(1)), _mm256_loadu_si256(pb.add(1)));
                _mm256_or_si256(x0, x1)
            };
            _mm256_packs_epi16(_mm256_packs_epi32(line(0), line(1)), _mm256_packs_epi32(line(2), line(3)))
        }
    }

    /// Line `w % 64` compared byte by byte: -1 where the bytes are equal,
    /// the line's two halves.
    ///
    /// # Safety
    /// AVX2 must be enabled in the caller.
    #[inline(always)]
    unsafe fn line_equal(a: &Page, b: &Page, w: usize) -> (__m256i, __m256i) {
        // SAFETY: reads 64 bytes at 64*(w % 64) from each page; loadu has
        // no alignment need; the caller enables AVX2.
        unsafe {
            let pa = a.as_ptr().add(64 * (w % 64)) as *const __m256i;
            let pb = b.as_ptr().add(64 * (w % 64)) as *const __m256i;
            (_mm256_cmpeq_epi8(_mm256_loadu_si256(pa), _mm256_loadu_si256(pb)), _mm256_cmpeq_epi8(_mm256_loadu_si256(pa.add(1)), _mm256_loadu_si256(pb.add(1))))
        }
    }

    /// The byte mask of a line from `line_equal`: bit `i` set when byte `i`
    /// differs.
    ///
    /// # Safety
    /// AVX2 must be enabled in the caller.
    #[inline(always)]
    unsafe fn differing(e0: __m256i, e1: __m256i) -> u64 {
        // SAFETY: as this function's contract.
        let (lo, hi) = unsafe { (_mm256_movemask_epi8(e0), _mm256_movemask_epi8(e1)) };
        !((lo as u32 as u64) | (hi as u32 as u64) << 32)
    }

    /// Adds the terms of the two words at byte `at` (a multiple of 8) of
    /// both pages to `acc` (`keys`: `page::keys()`, passed in so a walk
    /// loads its address once): one vector holds `a`'s 16 bytes and `b`'s, so
    /// one `mix4` makes both pairs of terms (`sum` subtracts `b`'s). A
    /// line whose changes lie in one 16-byte chunk (a sparse write) costs
    /// this, not `add_line`.
    ///
    /// # Safety
    /// `at + 16 <= PAGE_SIZE` and `at % 8 == 0`; AVX2 must be enabled in
    /// the caller.
    #[inline(always)]
    pub(crate) unsafe fn add_chunk(a: &Page, b: &Page, keys: &[u64; crate::page::PAGE_WORDS], at: usize, acc: &mut HashAcc) {
        // SAFETY: reads 16 bytes at `at` (at most PAGE_SIZE - 16, the
        // caller's contract) from each page and from the keys (a page-sized
        // table: the keys of the words at byte offset `at` start at byte
        // `at`); loadu has no alignment need.
        unsafe {
            let va = _mm_loadu_si128(a.as_ptr().add(at) as *const __m128i);
            let vb = _mm_loadu_si128(b.as_ptr().add(at) as *const __m128i);
            let k = _mm_loadu_si128(keys.as_ptr().cast::<u8>().add(at) as *const __m128i);
            let v = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(va), vb);
            acc.pairs = _mm256_add_epi64(acc.pairs, mix4(v, _mm256_broadcastsi128_si256(k)));
        }
    }

    /// Adds the terms of line `w` of `a` minus those of `b` to `acc` (equal
    /// words cancel).
    ///
    /// # Safety
    /// AVX2 must be enabled in the caller.
    #[inline(always)]
    pub(crate) unsafe fn add_line(a: &Page, b: &Page, w: usize, acc: &mut HashAcc) {
        // SAFETY: as this function's contract.
        unsafe { acc.terms = _mm256_add_epi64(acc.terms, line_terms(a, b, w)) };
    }

    /// The terms of line `w % 64` of `a` minus those of `b`, four u64 lanes
    /// (equal words give equal terms: their difference is 0).
    ///
    /// # Safety
    /// AVX2 must be enabled in the caller.
    #[inline(always)]
    unsafe fn line_terms(a: &Page, b: &Page, w: usize) -> __m256i {
        let keys = crate::page::line_keys(w);
        // SAFETY: reads 64 bytes at 64*(w % 64) from each page and the
        // line's 8 keys; loadu has no alignment need.
        unsafe {
            let pa = a.as_ptr().add(64 * (w % 64)) as *const __m256i;
            let pb = b.as_ptr().add(64 * (w % 64)) as *const __m256i;
            let pk = keys.as_ptr() as *const __m256i;
            let (a0, a1, b0, b1) = (_mm256_loadu_si256(pa), _mm256_loadu_si256(pa.add(1)), _mm256_loadu_si256(pb), _mm256_loadu_si256(pb.add(1)));
            let (k0, k1) = (_mm256_loadu_si256(pk), _mm256_loadu_si256(pk.add(1)));
            _mm256_sub_epi64(_mm256_add_epi64(mix4(a0, k0), mix4(a1, k1)), _mm256_add_epi64(mix4(b0, k0), mix4(b1, k1)))
        }
    }

    /// What a walk of changed lines adds up: word terms (`add_line`: `a`'s
    /// minus `b`'s; `add_chunk`: `a`'s in the low lane, `b`'s in the high
    /// one), four u64 lanes kept apart until the end, in vector registers
    /// so the walk keeps its general registers for the runs (as it keeps
    /// its changed-byte count: `LineCompare::Count`).
    #[derive(Clone, Copy)]
    pub(crate) struct HashAcc {
        terms: __m256i,
        pairs: __m256i,
    }

    impl HashAcc {
        /// # Safety
        /// AVX2 must be enabled in the caller.
        #[inline(always)]
        pub(crate) unsafe fn new() -> Self {
            // SAFETY: as this function's contract.
            unsafe { HashAcc { terms: _mm256_setzero_si256(), pairs: _mm256_setzero_si256() } }
        }

        /// The wrapping sum of the terms added (`a`'s minus `b`'s).
        ///
        /// # Safety
        /// AVX2 must be enabled in the caller.
        #[inline(always)]
        pub(crate) unsafe fn sum(self) -> u64 {
            // SAFETY: as this function's contract.
            unsafe {
                let pa = _mm256_castsi256_si128(self.pairs);
                let pb = _mm256_extracti128_si256::<1>(self.pairs);
                let d = _mm_sub_epi64(pa, pb);
                hsum(self.terms).wrapping_add(_mm_cvtsi128_si64(d) as u64).wrapping_add(_mm_extract_epi64::<1>(d) as u64)
            }
        }
    }

    /// Wrapping sum of the four u64 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256i) -> u64 {
        // SAFETY: the callers run with AVX2 enabled.
        unsafe {
            let s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            (_mm_cvtsi128_si64(s) as u64).wrapping_add(_mm_extract_epi64::<1>(s) as u64)
        }
    }

    /// The page hash's change over the changed `lines`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and the OS must save YMM state.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hash_delta_avx2(a: &Page, b: &Page, lines: u64) -> u64 {
        let mut bits = lines;
        let mut delta = _mm256_setzero_si256();
        while bits != 0 {
            let w = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // SAFETY: AVX2 is enabled here.
            delta = unsafe { _mm256_add_epi64(delta, line_terms(a, b, w)) };
        }
        // SAFETY: AVX2 is enabled here.
        unsafe { hsum(delta) }
    }

    /// `page::word_term` of four words with their keys: `rotl32(w) +
    /// lo32(w^k) * hi32(w^k)` per u64 lane.
    #[inline(always)]
    #[allow(unused_unsafe)]
    unsafe fn mix4(w: __m256i, k: __m256i) -> __m256i {
        // SAFETY: the callers run with AVX2 enabled.
        unsafe {
            let x = _mm256_xor_si256(w, k);
            _mm256_add_epi64(_mm256_shuffle_epi32::<0xB1>(w), _mm256_mul_epu32(x, _mm256_srli_epi64::<32>(x)))
        }
    }
}

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod neon {
    use super::{BLOCK, BLOCKS};
    use crate::page::Page;
    use core::arch::aarch64::*;

    /// NEON is part of the target here, so this is safe to call.
    #[allow(unused_unsafe)]
    pub(super) fn diff_blocks(a: &Page, b: &Page) -> u16 {
        let mut mask = 0u16;
        for j in 0..BLOCKS {
            // SAFETY: every load reads 16 bytes at offset j*BLOCK + 16*k with
            // k < 16, inside the 4096-byte pages; vld1q_u8 needs no alignment.
            unsafe {
                let pa = a.as_ptr().add(j * BLOCK);
                let pb = b.as_ptr().add(j * BLOCK);
                let mut acc = veorq_u8(vld1q_u8(pa), vld1q_u8(pb));
                for k in 1..BLOCK / 16 {
                    let x = veorq_u8(vld1q_u8(pa.add(16 * k)), vld1q_u8(pb.add(16 * k)));
                    acc = vorrq_u8(acc, x);
                }
                mask |= ((vmaxvq_u8(acc) != 0) as u16) << j;
            }
        }
        mask
    }
    /// NEON is part of the target here, so this is safe to call.
    #[allow(unused_unsafe)]
    pub(super) fn block_masks(a: &Page, b: &Page, block: usize) -> [u64; BLOCK / 64] {
        // Bit weights 1..128 per byte; pairwise adds then pack 64 compare
        // results into 64 bits (NEON has no movemask).
        const WEIGHTS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
        let mut masks = [0u64; BLOCK / 64];
        for (k, m) in masks.iter_mut().enumerate() {
            let off = block * BLOCK + k * 64;
            // SAFETY: reads 16 bytes at off + 16*q (q < 4) inside the pages
            // (block < BLOCKS, k < 4); vld1q_u8 needs no alignment.
            let eq = unsafe {
                let w = vld1q_u8(WEIGHTS.as_ptr());
                let pa = a.as_ptr().add(off);
                let pb = b.as_ptr().add(off);
                let c0 = vandq_u8(vceqq_u8(vld1q_u8(pa), vld1q_u8(pb)), w);
                let c1 = vandq_u8(vceqq_u8(vld1q_u8(pa.add(16)), vld1q_u8(pb.add(16))), w);
                let c2 = vandq_u8(vceqq_u8(vld1q_u8(pa.add(32)), vld1q_u8(pb.add(32))), w);
                let c3 = vandq_u8(vceqq_u8(vld1q_u8(pa.add(48)), vld1q_u8(pb.add(48))), w);
                let s01 = vpaddq_u8(c0, c1);
                let s23 = vpaddq_u8(c2, c3);
                let s = vpaddq_u8(s01, s23);
                let s = vpaddq_u8(s, s);
                vgetq_lane_u64::<0>(vreinterpretq_u64_u8(s))
            };
            *m = !eq;
        }
        masks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_agrees_with_scalar() {
        let base = [0x11u8; PAGE_SIZE];
        assert_eq!(diff_blocks(&base, &base), 0);
        for pos in [0usize, 1, 255, 256, 1000, 2047, 4000, 4095] {
            let mut other = base;
            other[pos] ^= 0x80;
            let want = 1u16 << (pos / BLOCK);
            assert_eq!(diff_blocks_scalar(&base, &other), want);
            assert_eq!(diff_blocks(&base, &other), want, "pos {pos}");
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            {
                assert_eq!(x86::diff_blocks_sse2(&base, &other), want);
                if has_avx2() {
                    // SAFETY: checked just above.
                    assert_eq!(unsafe { x86::diff_blocks_avx2(&base, &other) }, want);
                }
            }
        }
        let mut all = base;
        for j in 0..BLOCKS {
            all[j * BLOCK + j] = 0;
        }
        assert_eq!(diff_blocks(&base, &all), 0xFFFF);
    }

    #[test]
    fn zero_pages() {
        let mut p = [0u8; PAGE_SIZE];
        assert!(is_zero(&p));
        p[4095] = 1;
        assert!(!is_zero(&p));
    }

    #[test]
    fn block_masks_agree_with_scalar() {
        let a: Page = core::array::from_fn(|i| (i * 31 % 251) as u8);
        let mut b = a;
        for &pos in &[0usize, 7, 8, 63, 64, 100, 255, 256, 1000, 3000, 4095] {
            b[pos] ^= 0x40;
        }
        for block in 0..BLOCKS {
            let want = block_masks_scalar(&a, &b, block);
            assert_eq!(block_masks(&a, &b, block), want, "block {block}");
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            {
                assert_eq!(x86::block_masks_sse2(&a, &b, block), want);
                if has_avx2() {
                    // SAFETY: checked just above.
                    assert_eq!(unsafe { x86::block_masks_avx2(&a, &b, block) }, want);
                }
            }
        }
        assert_eq!(block_masks_scalar(&a, &b, 0), [1 | 1 << 7 | 1 << 8 | 1 << 63, 1 | 1 << 36, 0, 1 << 63]);
        assert_eq!(block_masks_scalar(&a, &b, 15)[3], 1 << 63);
    }

    #[test]
    fn page_diff_agrees_with_blocks_and_hashes() {
        let a: Page = core::array::from_fn(|i| (i * 13 % 249) as u8);
        let mut b = a;
        for &pos in &[3usize, 64, 700, 701, 702, 2048, 4095] {
            b[pos] = b[pos].wrapping_add(1);
        }
        let mut fast = [0u64; 64];
        let mut slow = [0u64; 64];
        let df = page_diff(&b, &a, &mut fast);
        let ds = page_diff_generic(&b, &a, &mut slow);
        assert_eq!(df, ds);
        // Lines 0 (byte 3), 1 (64), 10 (700..703), 32 (2048), 63 (4095).
        assert_eq!(df.lines, 1 | 1 << 1 | 1 << 10 | 1 << 32 | 1 << 63);
        assert_eq!(df.changed, 7);
        use crate::page::hash_page;
        assert_eq!(hash_page(&a).wrapping_add(df.hash_delta), hash_page(&b));
        let blocks = diff_blocks(&a, &b);
        for j in 0..BLOCKS {
            if blocks & (1 << j) != 0 {
                let want = block_masks_scalar(&a, &b, j);
                for k in 0..4 {
                    assert_eq!(df.lines >> (4 * j + k) & 1, (want[k] != 0) as u64, "block {j} line {k}");
                    if want[k] != 0 {
                        assert_eq!(fast[4 * j + k], want[k], "block {j} line {k}");
                        assert_eq!(slow[4 * j + k], want[k], "block {j} line {k}");
                    }
                }
            }
        }
        assert_eq!(fast[700 / 64], 0b111 << (700 % 64));
        assert_eq!(page_diff(&a, &a, &mut fast), PageDiff { lines: 0, changed: 0, hash_delta: 0 });
    }
}
