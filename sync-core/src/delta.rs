//! The delta codec: a page against its shadow becomes one record; the
//! records of an epoch are concatenated into batches.
//!
//! ```text
//! batch  = record*
//! record = head (varint)  body
//! head   = gap << 2 | kind
//!   gap: page number − next, where next is 0 at the start of the batch and
//!        the previous record's page number + 1 after it: page numbers
//!        ascend strictly within a batch, and a dirty page's neighbour costs
//!        one head byte (gap < 32), not a whole page-number varint.
//!        Page numbers are at most MAX_PAGE_NUM.
//!   kind 0 Zero   (no body)                       the page is all zero
//!   kind 1        (reserved: never sent)
//!   kind 2 Full   4096 bytes                      no shadow, or a delta would not be smaller
//!   kind 3 Delta  hash (u64 LE)  length (varint)  runs: the bytes that changed
//! hash   = page_hash of the page the Delta yields
//! runs   = (skip varint, length varint, bytes)*  skip counts from the end
//!          of the previous run (from 0 for the first); length >= 1
//! varint = LEB128, little-endian groups of 7 bits
//! ```
//!
//! Only a Delta carries the page hash. It is what finds a Delta applied to
//! the wrong base (a shadow the standby does not hold): nothing else could.
//! A Zero page's hash is a constant (`ZERO_PAGE_HASH`), and a Full page's is
//! a function of the bytes the record holds, so the standby computes it
//! (`apply` returns it, for the image digest): sending it would detect only
//! an encoder that hashed something other than what it sent, which the
//! epoch's image digest (checked at EpochCommit, built from those page
//! hashes) still finds, and the wire's AEAD covers the bytes in transit.
//! Dropping it is what keeps a Full or Zero record no larger than QEMU's
//! (8-byte page header, then the page or one byte).
//!
//! A page written with the content its shadow holds (`Same`) is not sent at
//! all: the standby's committed page is that shadow already, and its page
//! hash (so the image digest) does not change. The encoder still reports it
//! (`RecordKind::Same`, zero bytes) for the stats.
//!
//! Runs are QEMU XBZRLE's zero-run / non-zero-run pairs with one change:
//! two runs are merged, taking the unchanged bytes between them along, when
//! that costs no more than a second run header (exact varint sizes are
//! compared). The run bytes are therefore never more than XBZRLE's for the
//! same pair (each merge only lowers the running cost; see `merge_pays`).
//!
//! Encoding reads the two pages once (then the changed 64-byte lines again,
//! from L1): the `simd` scans find the lines that differ, one bit per
//! changed byte in them, the changed bytes, and the change of the page hash
//! (the hash is a sum of per-word terms, so the shadow's hash plus the
//! changed lines' terms is the page's: no rehash; past `HASH_LINES`
//! changed lines the page is hashed whole, which is cheaper). One tight loop then
//! cuts the runs from the bit masks (`trailing_zeros` per run) and writes
//! them straight into the output. On x86_64 the whole encoder is compiled a
//! second time for AVX2 with POPCNT/LZCNT/BMI1/BMI2, which the bit-mask
//! walk lives on (BMI2 for shifts by a register without RCX). That build
//! walks each changed line once (mask, hash terms and runs together), with
//! a straight path for the line of a sparse write, and while it walks it
//! loads the batch's next page into L1 (`BatchEncoder::encode_next`), so
//! that the next page's compare finds its data there
//! (`encode_shadowed_avx2`). On a CPU with AVX-512F/BW the same walk is
//! built a third time with 64-byte line compares into mask registers
//! (`encode_shadowed_avx512`, `simd::x86::Avx512`): half the compare's
//! instructions, and a line's byte mask from one compare.

use crate::page::{hash_page, Page, PAGE_SIZE, ZERO_PAGE_HASH};
use crate::simd;
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
use crate::simd::x86::LineCompare;
use alloc::vec::Vec;

/// Bytes of a Delta's hash.
pub const HASH_LEN: usize = 8;
/// Largest page number a batch can name (a 64-bit address space of 4 KiB
/// pages); keeps `gap << 2` and `next + 1` far from overflow.
pub const MAX_PAGE_NUM: u64 = (1 << 52) - 1;
/// Most bytes one record takes: head (at most 8 bytes for a gap below
/// 2^54), then a whole page (a Delta body is smaller than one).
pub const MAX_PAGE_RECORD: usize = 8 + PAGE_SIZE;
/// Most run bytes a Delta may hold: with its hash and 2-byte length it must
/// stay smaller than a Full payload, else the page goes Full.
const MAX_RUN_BYTES: usize = PAGE_SIZE - HASH_LEN - 3;

/// The kinds of record. `Same` is reported by the encoder but never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Zero = 0,
    Same = 1,
    Full = 2,
    Delta = 3,
}

/// A shadow page and its page hash (the store keeps both).
#[derive(Clone, Copy, Debug)]
pub struct Shadow<'a> {
    pub page: &'a Page,
    pub hash: u64,
}

/// What an encode appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOutcome {
    pub kind: RecordKind,
    /// Bytes that differ from the shadow (4096 for a non-zero page without
    /// one, 0 for a zero page without one).
    pub changed_bytes: usize,
    /// page_hash of the page: store it with the new shadow.
    pub hash: u64,
    /// Bytes appended to `out` (0 for `Same`).
    pub len: usize,
}

/// A parsed record, borrowing its payload from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordRef<'a> {
    Zero,
    Full(&'a Page),
    /// The encoded runs, and the page_hash the page must have once they are
    /// applied to its shadow.
    Delta {
        hash: u64,
        runs: &'a [u8],
    },
}

impl RecordRef<'_> {
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordRef::Zero => RecordKind::Zero,
            RecordRef::Full(_) => RecordKind::Full,
            RecordRef::Delta { .. } => RecordKind::Delta,
        }
    }
}

/// A parsed page record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRecordRef<'a> {
    pub page_num: u64,
    pub record: RecordRef<'a>,
}

/// Why a record could not be parsed, encoded or applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaError {
    /// The input ends inside the record.
    Truncated,
    /// Unknown (or reserved) kind.
    BadKind(u8),
    /// A varint longer than its type allows.
    BadVarint,
    /// A Delta whose length is zero or more than a page.
    BadLength,
    /// A page number past `MAX_PAGE_NUM`, or (encoding) not above the
    /// previous record's in the batch.
    BadPageNumber,
    /// Delta, but there is no shadow to apply it to.
    MissingShadow,
    /// A run of length zero.
    EmptyRun,
    /// A run reaching past the end of the page.
    RunPastPage,
    /// The page a Delta yields does not have the record's hash (the
    /// shadow it was applied to is not the encoder's).
    HashMismatch,
}

/// Encodes `page` against `shadow` (hashing the shadow: `encode_with` takes
/// a known hash and is faster) and appends the record body to `out`
/// (nothing for `Zero` and `Same`). Kind and page number go in the head
/// that `BatchEncoder` writes.
pub fn encode(page: &Page, shadow: Option<&Page>, out: &mut Vec<u8>) -> EncodeOutcome {
    let shadow = shadow.map(|p| Shadow { page: p, hash: hash_page(p) });
    encode_with(page, shadow, out)
}

/// Writes the records of one batch: keeps the page number the next gap
/// counts from. One per batch (a new batch starts from page 0).
#[derive(Clone, Debug, Default)]
pub struct BatchEncoder {
    next: u64,
}

impl BatchEncoder {
    pub const fn new() -> Self {
        BatchEncoder { next: 0 }
    }

    /// Appends the record of `page_num` (hashing the shadow).
    pub fn encode(&mut self, page_num: u64, page: &Page, shadow: Option<&Page>, out: &mut Vec<u8>) -> Result<EncodeOutcome, DeltaError> {
        let shadow = shadow.map(|p| Shadow { page: p, hash: hash_page(p) });
        self.encode_with(page_num, page, shadow, out)
    }

    /// Appends the record of `page_num`, whose shadow's hash is known.
    /// Page numbers must ascend strictly within a batch; a `Same` page
    /// appends nothing and does not count as the previous page.
    pub fn encode_with(&mut self, page_num: u64, page: &Page, shadow: Option<Shadow<'_>>, out: &mut Vec<u8>) -> Result<EncodeOutcome, DeltaError> {
        self.encode_next(page_num, page, shadow, None, out)
    }

    /// `encode_with` for a batch's page loop, given the page it encodes
    /// next (`None` for the last): while this page's changed lines are
    /// walked, the next page and its shadow are loaded into L1, a few lines
    /// per changed line, so that the walk's work overlaps the loads the next
    /// page's compare would otherwise wait for. The CPU's own prefetchers
    /// do not cross into another 4 KiB page. The same bytes as
    /// `encode_with`.
    #[inline]
    pub fn encode_next(
        &mut self,
        page_num: u64,
        page: &Page,
        shadow: Option<Shadow<'_>>,
        next: Option<Next<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<EncodeOutcome, DeltaError> {
        if page_num < self.next || page_num > MAX_PAGE_NUM {
            return Err(DeltaError::BadPageNumber);
        }
        let gap = page_num - self.next;
        // The kind is the low two bits of the head's first byte: the head is
        // written now with kind 0, and the kind ORed in once known.
        let start = out.len();
        let head_len = push_varint(out, gap << 2);
        let mut o = encode_before(page, shadow, next, out);
        if o.kind == RecordKind::Same {
            out.truncate(start);
            o.len = 0;
            return Ok(o);
        }
        out[start] |= o.kind as u8;
        o.len += head_len;
        self.next = page_num + 1;
        Ok(o)
    }
}

/// Lines of the next page (and of its shadow) prefetched before a page is
/// compared, and per changed line the AVX2 walk takes. A few lines before
/// the compare hide the start of the next page when it comes from RAM
/// (measured: 4, 8 and 16 alike); a whole page pair (128 lines) at once is
/// slower than none, its requests queue in front of the current page's
/// loads. Spread over the walk they overlap its work instead.
const PREFETCH_LINES: usize = 8;

/// A batch of one record: `BatchEncoder::new().encode(..)`.
pub fn encode_page_record(page_num: u64, page: &Page, shadow: Option<&Page>, out: &mut Vec<u8>) -> Result<EncodeOutcome, DeltaError> {
    BatchEncoder::new().encode(page_num, page, shadow, out)
}

/// Encodes `page` against a shadow whose hash is known and appends the
/// record body to `out` (nothing for `Zero` and `Same`). Inlined: a
/// dispatch only, so a batch's page loop calls the encoder directly.
#[inline(always)]
pub fn encode_with(page: &Page, shadow: Option<Shadow<'_>>, out: &mut Vec<u8>) -> EncodeOutcome {
    encode_before(page, shadow, None, out)
}

/// `encode_with`, loading `next` (the batch's next page and its shadow)
/// into the cache meanwhile: see `BatchEncoder::encode_next`.
#[inline(always)]
fn encode_before(page: &Page, shadow: Option<Shadow<'_>>, next: Option<Next<'_>>, out: &mut Vec<u8>) -> EncodeOutcome {
    let Some(shadow) = shadow else {
        if let Some(n) = next {
            n.prefetch_first();
        }
        return encode_unshadowed(page, out);
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    match simd::x86_walk() {
        // SAFETY: x86_walk() checked CPUID for AVX2, POPCNT, LZCNT, BMI1,
        // BMI2, AVX-512F and AVX-512BW, and that the OS saves YMM, mask and
        // ZMM state.
        simd::X86Walk::Avx512 => return unsafe { encode_shadowed_avx512(page, shadow, next, out) },
        // SAFETY: x86_walk() checked CPUID for AVX2, POPCNT, LZCNT, BMI1
        // and BMI2, and that the OS saves YMM state.
        simd::X86Walk::Avx2 => return unsafe { encode_shadowed_avx2(page, shadow, next, out) },
        simd::X86Walk::Portable => {}
    }
    if let Some(n) = next {
        n.prefetch_first();
    }
    encode_shadowed(page, shadow, out)
}

/// The page a batch encodes after the current one, and its shadow: the
/// encoder loads them into L1 while it works on the current page
/// (`BatchEncoder::encode_next`).
#[derive(Clone, Copy, Debug)]
pub struct Next<'a> {
    pub page: &'a Page,
    pub shadow: Option<&'a Page>,
}

impl Next<'_> {
    /// Prefetches the first `PREFETCH_LINES` lines of the page and of its
    /// shadow (a hint).
    #[inline(always)]
    fn prefetch_first(&self) {
        simd::prefetch_block::<PREFETCH_LINES>(self.page, 0);
        if let Some(s) = self.shadow {
            simd::prefetch_block::<PREFETCH_LINES>(s, 0);
        }
    }
}

/// A page without a shadow: Zero or Full.
#[inline(never)]
fn encode_unshadowed(page: &Page, out: &mut Vec<u8>) -> EncodeOutcome {
    if simd::is_zero(page) {
        return zero_record(0);
    }
    push_full(out, page, hash_page(page), PAGE_SIZE)
}

/// The encoder on a CPU with AVX2 and the bit instructions the mask walk
/// uses (POPCNT, LZCNT, TZCNT): without them `count_ones` is a dozen
/// instructions. `next` is the batch's next page (`BatchEncoder::encode_next`).
///
/// One branch-free compare of the whole page gives the changed lines; one
/// loop then walks them, each line loaded once more (from L1) for its byte
/// mask, its equal bytes, its hash terms and its runs. A sparse page costs
/// one hard-to-predict branch (the loop's end), not one per part of the
/// page. A sparse write's line (one short run) takes a straight path: the
/// hash terms of the 16-byte chunk that holds the run (`add_chunk`, both
/// pages' words in one vector) and its run written at once; any other line
/// goes through `walk_line`. A run that merges into the one before rewrites
/// that one (`merge_into_last`), so the walk keeps only the write position,
/// the last run's record and its end in registers. Each line walked also
/// prefetches `PREFETCH_LINES` lines of the next page and of its shadow,
/// which their loads (L2 or further) overlap.
///
/// # Safety
/// The CPU must have AVX2, POPCNT, LZCNT, BMI1 and BMI2, and the OS must
/// save YMM state.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx2,popcnt,lzcnt,bmi1,bmi2")]
unsafe fn encode_shadowed_avx2(page: &Page, shadow: Shadow<'_>, next: Option<Next<'_>>, out: &mut Vec<u8>) -> EncodeOutcome {
    // SAFETY: the features encode_walked needs for Avx2 are enabled here.
    unsafe { encode_walked::<simd::x86::Avx2>(page, shadow, next, out) }
}

/// `encode_shadowed_avx2` with the AVX-512 line compares
/// (`simd::x86::Avx512`): the same walk and the same bytes.
///
/// # Safety
/// As `encode_shadowed_avx2`, and the CPU must have AVX-512F and AVX-512BW
/// and the OS save their state (`simd::x86_walk`).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx2,popcnt,lzcnt,bmi1,bmi2,avx512f,avx512bw")]
unsafe fn encode_shadowed_avx512(page: &Page, shadow: Shadow<'_>, next: Option<Next<'_>>, out: &mut Vec<u8>) -> EncodeOutcome {
    // SAFETY: the features encode_walked needs for Avx512 are enabled here.
    unsafe { encode_walked::<simd::x86::Avx512>(page, shadow, next, out) }
}

/// The body of `encode_shadowed_avx2` and `encode_shadowed_avx512`, which
/// differ in how lines are compared (`L`).
///
/// # Safety
/// Inlined into a function that enables AVX2, POPCNT, LZCNT, BMI1, BMI2
/// and `L`'s features, which the CPU and OS have.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
unsafe fn encode_walked<L: LineCompare>(page: &Page, shadow: Shadow<'_>, next: Option<Next<'_>>, out: &mut Vec<u8>) -> EncodeOutcome {
    use simd::x86::{add_chunk, add_line, HashAcc};
    let (a, b) = (page, shadow.page);
    // The next page's first lines now (they help a next page from RAM
    // most; here rather than in encode_before, which measured 49
    // instructions a sparse page more: the walk's registers came out
    // worse); the rest during the walk, PREFETCH_LINES a line walked.
    // pf: the next line of the next page to prefetch (its shadow's is
    // `d` bytes further), pf_end where that ends; both null with no next.
    let (mut pf, pf_end, d) = match next {
        Some(n) => {
            n.prefetch_first();
            let nb = n.shadow.unwrap_or(n.page);
            (
                n.page.as_ptr().wrapping_add(64 * PREFETCH_LINES),
                n.page.as_ptr().wrapping_add(PAGE_SIZE),
                (nb.as_ptr() as isize).wrapping_sub(n.page.as_ptr() as isize),
            )
        }
        None => (core::ptr::null(), core::ptr::null(), 0),
    };
    // SAFETY (every call of L's methods, add_chunk, add_line, HashAcc,
    // encode_dense and extend_run_lines below): the caller enables
    // the features they need, which the CPU has; line numbers
    // (from the bitmap, `% 64`) are < 64 and a chunk's offset (a line's
    // plus 0, 16, 32 or 48) is at most PAGE_SIZE - 16.
    let lines = unsafe { L::changed_lines(a, b) };
    if lines == 0 {
        return same_record(shadow.hash);
    }
    let n = lines.count_ones();
    if n > HASH_LINES {
        // SAFETY: as above.
        return unsafe { encode_dense::<L>(page, shadow.page, lines, out) };
    }
    // The runs go straight into reserved room after the hash and a 1-byte
    // length.
    let rec_start = out.len();
    out.reserve(DELTA_ROOM);
    // SAFETY: rec_start + DELTA_ROOM <= capacity (reserved above); `out` is
    // not touched again until finish_delta or a return that leaves its
    // length. At most FEW_LINES_RUN_BYTES run bytes are written (see
    // there) and each put_run touches at most RUN_SLACK bytes past its
    // run, all inside the reserved room.
    let runs_at = unsafe { out.as_mut_ptr().add(rec_start + HASH_LEN + 1) };
    let mut w = Runs { at: runs_at, last_at: core::ptr::null_mut(), end: 0 };
    let keys = crate::page::keys();
    // SAFETY: as above.
    let (mut acc, mut count) = unsafe { (HashAcc::new(), L::no_changes()) };
    let mut bits = lines;
    while bits != 0 {
        if pf < pf_end {
            simd::prefetch_at::<PREFETCH_LINES>(pf);
            simd::prefetch_at::<PREFETCH_LINES>(pf.wrapping_offset(d));
            pf = pf.wrapping_add(64 * PREFETCH_LINES);
        }
        let i = bits.trailing_zeros() as usize % 64;
        bits &= bits - 1;
        // SAFETY: as above.
        let raw = unsafe { L::line_mask_counted(a, b, i, &mut count) };
        let base = 64 * i;
        // The line's first changed byte (raw is not 0: the line differs),
        // its 16-byte chunk, and whether every change of the line lies in
        // that chunk (then only the chunk's words are hashed).
        let so = raw.trailing_zeros() as usize;
        let c = so & 0x30;
        let in_chunk = (raw >> c) >> 16 == 0;
        // The first run shifted down to bit 0: all ones up to its length
        // when it is the line's only run (so < 64: wrapping_shr needs no
        // mask for that, as `% 64` would).
        let x = raw.wrapping_shr(so as u32);
        let s = base + so;
        let gap = s.wrapping_sub(w.end);
        // A sparse write's line: one run (so write_runs' joining of single
        // unchanged bytes has nothing to join), inside one 16-byte chunk,
        // not at the line's end (bit 63: such a run could go on into the
        // next line), too far from the last run to merge with it (a gap of
        // at most 5 might), and not at the page's end (put_short_run copies
        // 16 bytes). A run of the line before cannot reach into it: that
        // run would have started at this line's first byte, so s < end and
        // the gap wraps.
        if in_chunk && x & x.wrapping_add(1) == 0 && (raw as i64) >= 0 && gap.wrapping_sub(6) < PAGE_SIZE - 6 && s <= PAGE_SIZE - 16 {
            // One run: its length is the line's changed bytes.
            let e = s + raw.count_ones() as usize;
            // SAFETY: as above (the chunk's words are the line's only
            // changed ones); end < s < e <= s + 16 <= PAGE_SIZE; room as
            // above.
            unsafe { add_chunk(a, b, keys, base + c, &mut acc) };
            (w.last_at, w.at, w.end) = (w.at, unsafe { put_short_run(w.at, gap, s, e - s, page) }, e);
            continue;
        }
        if in_chunk {
            // SAFETY: as above.
            unsafe { add_chunk(a, b, keys, base + c, &mut acc) };
        } else {
            // SAFETY: as above.
            unsafe { add_line(a, b, i, &mut acc) };
        }
        // SAFETY: as above; `w` is this walk's.
        unsafe { walk_line::<L>(&mut w, a, b, i, raw) };
    }
    let at = w.at;
    // SAFETY (both): AVX2 and L's features are enabled here.
    let (hash, changed) = unsafe { (shadow.hash.wrapping_add(acc.sum()), L::changed(count, n)) };
    if hash == ZERO_PAGE_HASH && simd::is_zero(page) {
        return zero_record(changed);
    }
    // Both point into the same reserved room, `at` at or after `runs_at`.
    let run_bytes = at as usize - runs_at as usize;
    debug_assert!(run_bytes <= FEW_LINES_RUN_BYTES);
    // SAFETY: run_bytes <= FEW_LINES_RUN_BYTES <= MAX_RUN_BYTES bytes of
    // runs were written at rec_start + HASH_LEN + 1.
    unsafe { finish_delta(out, rec_start, hash, changed, run_bytes) }
}

/// Where the AVX2 walk writes runs and what it wrote last.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
struct Runs {
    /// Where the next run goes.
    at: *mut u8,
    /// Where the last run's record starts (null before the first).
    last_at: *mut u8,
    /// Where the last run ends in the page: the next skip counts from here.
    end: usize,
}

/// The runs of changed line `i` (byte mask `raw`) that `encode_walked`
/// does not write itself: several in the line, one that goes on into the
/// next lines, one that takes leading bytes of this line from the last
/// line's run, or one close enough to the last run to merge with it.
/// Inlined: as a call it would make the walk keep its vector sums in memory
/// (a call may overwrite every vector register).
///
/// # Safety
/// As for `encode_walked`'s walk: AVX2, BMI1/2 and L's features enabled,
/// `i < 64`, `w` that walk's state with room for the line's runs.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
unsafe fn walk_line<L: LineCompare>(w: &mut Runs, a: &Page, b: &Page, i: usize, raw: u64) {
    let base = 64 * i;
    let mut rest = raw;
    if w.end > base {
        // A run of the line before took this line's leading bytes.
        let n = w.end - base;
        rest = if n < 64 { raw & (!0u64 << n) } else { 0 };
    }
    let mut m = join_single_gaps(rest);
    while m != 0 {
        let t = m.wrapping_add(m & m.wrapping_neg());
        let s = base + m.trailing_zeros() as usize;
        let mut e = base + t.trailing_zeros() as usize;
        m &= t;
        if t == 0 {
            // SAFETY: L's features are enabled here.
            e = unsafe { extend_run_lines::<L>(a, b, e) };
        }
        let gap = s - w.end;
        if gap <= 5 && !w.last_at.is_null() {
            // SAFETY: last_at is the record put_run wrote last, `end` its
            // run's end; room as the caller's contract.
            if let Some(next) = unsafe { merge_into_last(w.last_at, w.end, gap, e, a) } {
                (w.at, w.end) = (next, e);
                continue;
            }
        }
        // SAFETY: end <= s < e <= PAGE_SIZE, so gap < 2^14; room as the
        // caller's contract.
        (w.last_at, w.at, w.end) = (w.at, unsafe { put_run(w.at, gap, s, e - s, a) }, e);
    }
}

/// A run ending at `e` that starts `gap` (at most 5) bytes after the end
/// (`end`) of the last run written, whose record starts at `last_at`: when
/// one run from that run's start to `e` costs no more than two
/// (`merge_pays`), rewrites the record as that run and returns where the
/// next record goes. Out of line: sparse writes are rarely this close.
///
/// # Safety
/// `last_at` is where `put_run` wrote the last record (with room for a
/// run to `e` after it, as for `put_run`), `end` that run's end, and `end +
/// gap < e <= PAGE_SIZE`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[cold]
#[inline(never)]
unsafe fn merge_into_last(last_at: *mut u8, end: usize, gap: usize, e: usize, page: &Page) -> Option<*mut u8> {
    // The record's skip and length, as put_run wrote them (LEB128 of values
    // below 2^14: one or two bytes each).
    // SAFETY: put_run wrote (initialised) at least these bytes at last_at.
    let read = |at: *const u8| unsafe {
        let lo = *at as usize;
        if lo < 0x80 {
            (lo, 1)
        } else {
            ((lo & 0x7F) | (*at.add(1) as usize) << 7, 2)
        }
    };
    let (skip, n1) = read(last_at);
    // SAFETY: the length follows the skip inside the record.
    let (len, _) = read(unsafe { last_at.add(n1) });
    if !merge_pays(len, gap, e - end - gap) {
        return None;
    }
    let start = end - len;
    // SAFETY: start < e <= PAGE_SIZE, skip < 2^14 (it was written), and the
    // room after last_at holds the run (the caller's contract).
    Some(unsafe { put_run(last_at, skip, start, e - start, page) })
}

/// A page with more than `HASH_LINES` changed `lines` (`encode_walked`):
/// masks by `L`, the page hashed whole, runs by `write_runs`.
///
/// # Safety
/// AVX2, POPCNT and L's features must be enabled in the caller.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
unsafe fn encode_dense<L: LineCompare>(page: &Page, shadow: &Page, lines: u64, out: &mut Vec<u8>) -> EncodeOutcome {
    // Entries of equal lines are not written and not read.
    let mut masks = [0u64; PAGE_SIZE / 64];
    // SAFETY: the caller enables L's features and POPCNT.
    let changed = unsafe { simd::x86::line_masks::<L>(page, shadow, lines, &mut masks) };
    let Some(hash) = dense_hash(page) else {
        return zero_record(changed);
    };
    encode_changed(page, hash, changed, lines, &masks, out)
}

/// Most run bytes the AVX2 walk writes. It walks at most `HASH_LINES` (up
/// to 32) lines. Every
/// run byte is in a changed line (a merged gap of at most 5 bytes cannot
/// hold a whole unchanged line); a line starts at most 22 runs (runs inside
/// a line are at least 2 bytes apart), and only its first run can have a
/// 2-byte skip and only its last a 2-byte length (the others are inside
/// the line): 64 + 4 + 4 + 20 * 2 bytes per line. Such a page never goes
/// Full for its runs.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
const FEW_LINES_RUN_BYTES: usize = 32 * (64 + 4 + 4 + 20 * 2);
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
const _: () = assert!(FEW_LINES_RUN_BYTES <= MAX_RUN_BYTES && HASH_LINES as usize <= 32);

/// `extend_run` for `encode_walked`, which has no masks in memory
/// and may not have compared the next lines yet: the masks of the lines the
/// run goes through are made (from L1, or L2); an equal line's is 0 and
/// stops it. Their hash terms and changed bytes are counted when the walk
/// reaches them.
///
/// Inlined: a call would make the walk keep its hash sum in memory.
///
/// # Safety
/// L's features must be enabled in the caller.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
unsafe fn extend_run_lines<L: LineCompare>(a: &Page, b: &Page, mut end: usize) -> usize {
    loop {
        let i = end / 64;
        if i >= 64 {
            return end;
        }
        // SAFETY: i < 64; L's features are enabled in the caller.
        let n = unsafe { L::line_mask(a, b, i) }.trailing_ones();
        end += n as usize;
        if n < 64 {
            return end;
        }
    }
}

/// The portable encoder (SSE2, NEON, u64 words). Out of line, so that
/// `encode_with` stays a small dispatch.
#[inline(never)]
fn encode_shadowed(page: &Page, shadow: Shadow<'_>, out: &mut Vec<u8>) -> EncodeOutcome {
    let mut masks = [0u64; PAGE_SIZE / 64];
    let (lines, changed) = simd::line_diff_generic(page, shadow.page, &mut masks);
    if lines == 0 {
        return same_record(shadow.hash);
    }
    let hash = if lines.count_ones() <= HASH_LINES {
        shadow.hash.wrapping_add(simd::hash_delta_generic(page, shadow.page, lines, &masks))
    } else {
        let Some(hash) = dense_hash(page) else {
            return zero_record(changed);
        };
        hash
    };
    encode_changed(page, hash, changed, lines, &masks, out)
}

/// The hash of a page with many changed lines, taken whole, or `None` for a
/// zero page (memory the guest freed and cleared), which is found first:
/// its record is a head only and its hash is `ZERO_PAGE_HASH`, and the zero
/// test (stopped by the first 16 bytes of almost any other page) costs far
/// less than the hash.
#[inline(always)]
fn dense_hash(page: &Page) -> Option<u64> {
    let mut head = [0u8; 16];
    head.copy_from_slice(&page[..16]);
    if u128::from_le_bytes(head) == 0 && simd::is_zero(page) {
        return None;
    }
    Some(hash_page(page))
}

/// Most changed lines for which the encoder updates the shadow's hash with
/// their terms (both pages' words); with more, hashing the new page whole
/// costs less. 24 lines hold fewer bytes than `MAX_RUN_BYTES`, so a page
/// that goes Full for its changed bytes is always hashed whole.
const HASH_LINES: u32 = 24;

fn same_record(hash: u64) -> EncodeOutcome {
    EncodeOutcome { kind: RecordKind::Same, changed_bytes: 0, hash, len: 0 }
}

fn zero_record(changed: usize) -> EncodeOutcome {
    EncodeOutcome { kind: RecordKind::Zero, changed_bytes: changed, hash: ZERO_PAGE_HASH, len: 0 }
}

fn push_full(out: &mut Vec<u8>, page: &Page, hash: u64, changed: usize) -> EncodeOutcome {
    out.extend_from_slice(page);
    EncodeOutcome { kind: RecordKind::Full, changed_bytes: changed, hash, len: PAGE_SIZE }
}

/// Room past `MAX_RUN_BYTES` that a run write may touch: a long run stores
/// its two varints as one 4-byte word, and a short run (1..=16 bytes) its
/// bytes as one 16-byte copy; the excess is overwritten or not counted.
const RUN_SLACK: usize = 16;

/// Room a Delta body takes while it is built: hash, 2-byte length, runs.
const DELTA_ROOM: usize = HASH_LEN + 2 + MAX_RUN_BYTES + RUN_SLACK;

/// Encodes a page that differs from its shadow: `hash` is its page hash,
/// `changed` its changed bytes, `lines` and `masks` from `simd::page_diff`.
#[inline(always)]
fn encode_changed(page: &Page, hash: u64, changed: usize, lines: u64, masks: &[u64; PAGE_SIZE / 64], out: &mut Vec<u8>) -> EncodeOutcome {
    if hash == ZERO_PAGE_HASH && simd::is_zero(page) {
        return zero_record(changed);
    }
    if changed > MAX_RUN_BYTES {
        // The runs alone would not beat a whole page.
        return push_full(out, page, hash, changed);
    }
    if changed > PAGE_SIZE / 2 && run_bytes_at_least(masks, lines) > MAX_RUN_BYTES {
        // A page rewritten nearly whole: its runs cannot fit either, which
        // write_runs would find out only after copying most of the page
        // into them.
        return push_full(out, page, hash, changed);
    }

    // The runs go straight into reserved room after the hash and a 1-byte
    // length (moved by one byte in the rare case the length takes two).
    let rec_start = out.len();
    out.reserve(DELTA_ROOM);
    // SAFETY: rec_start + DELTA_ROOM <= capacity (reserved above); the
    // pointer is used before `out` is touched again.
    let runs_at = unsafe { out.as_mut_ptr().add(rec_start + HASH_LEN + 1) };
    // SAFETY: the limit is inside the same reserved room.
    let limit = unsafe { runs_at.add(MAX_RUN_BYTES) };
    let Some(run_bytes) = write_runs(RunWriter { at: runs_at, limit, written_end: 0, page }, masks, lines) else {
        return push_full(out, page, hash, changed);
    };
    // SAFETY: write_runs keeps run_bytes <= MAX_RUN_BYTES and wrote them
    // at rec_start + HASH_LEN + 1, inside the room reserved above.
    unsafe { finish_delta(out, rec_start, hash, changed, run_bytes) }
}

/// A lower bound of the run bytes `write_runs` writes for `masks`: every
/// changed byte is in a run, and so is every unchanged byte between two
/// changed ones of a line (joined on the mask; one between two lines is
/// merged as well, but not counted here), and a run takes at least one
/// byte of skip and one of length.
fn run_bytes_at_least(masks: &[u64; PAGE_SIZE / 64], lines: u64) -> usize {
    let mut n = 2;
    let mut bits = lines;
    while bits != 0 {
        let m = masks[bits.trailing_zeros() as usize % 64];
        bits &= bits - 1;
        n += join_single_gaps(m).count_ones() as usize;
    }
    n
}

/// Writes a Delta's hash and length before its runs and sets `out`'s
/// length.
///
/// # Safety
/// `out` has DELTA_ROOM bytes reserved at `rec_start`, and `run_bytes <=
/// MAX_RUN_BYTES` bytes of runs were written at `rec_start + HASH_LEN + 1`.
#[inline(always)]
unsafe fn finish_delta(out: &mut Vec<u8>, rec_start: usize, hash: u64, changed: usize, run_bytes: usize) -> EncodeOutcome {
    let len_len = 1 + (run_bytes >= 0x80) as usize;
    // SAFETY: the body fits the DELTA_ROOM bytes reserved at rec_start:
    // HASH_LEN + len_len + run_bytes <= HASH_LEN + 2 + MAX_RUN_BYTES. The
    // runs were written (initialised) at rec_start + HASH_LEN + 1; the move
    // handles the overlap; then every byte up to the new length is
    // initialised.
    unsafe {
        let body = out.as_mut_ptr().add(rec_start);
        core::ptr::copy_nonoverlapping(hash.to_le_bytes().as_ptr(), body, HASH_LEN);
        if len_len == 1 {
            *body.add(HASH_LEN) = run_bytes as u8;
        } else {
            // run_bytes <= MAX_RUN_BYTES < 2^14: exactly two bytes.
            core::ptr::copy(body.add(HASH_LEN + 1), body.add(HASH_LEN + 2), run_bytes);
            *body.add(HASH_LEN) = (run_bytes as u8 & 0x7F) | 0x80;
            *body.add(HASH_LEN + 1) = (run_bytes >> 7) as u8;
        }
        out.set_len(rec_start + HASH_LEN + len_len + run_bytes);
    }
    EncodeOutcome { kind: RecordKind::Delta, changed_bytes: changed, hash, len: HASH_LEN + len_len + run_bytes }
}

/// Walks the changed 64-byte lines in order, cuts the maximal runs of
/// changed bytes from their masks (`trailing_zeros` per run) and writes
/// them, each merged into the one before when `merge_pays`. Returns the run
/// bytes, or `None` when they would pass `MAX_RUN_BYTES` (the page goes
/// Full).
///
/// A single unchanged byte between changed ones of the same line is taken
/// into the run on the mask: that merge always pays (`v(a+1+b) <= v(a) +
/// v(b)`) and saves a run per gap (a framebuffer's unchanged alpha bytes).
#[inline(always)]
fn write_runs(mut w: RunWriter<'_>, masks: &[u64; PAGE_SIZE / 64], lines: u64) -> Option<usize> {
    let start = w.at;
    // The pending run (ps..pe) may still take the next one in. It starts
    // empty at the first changed byte, so the first run merges into it
    // (gap 0) and an empty run is never written.
    let first = lines.trailing_zeros() as usize * 64 + masks[(lines.trailing_zeros() % 64) as usize].trailing_zeros() as usize;
    let (mut ps, mut pe) = (first, first);
    let mut bits = lines;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let raw = masks[i];
        let mut m = join_single_gaps(raw);
        let mut base = 64 * i;
        while m != 0 {
            let tz = m.trailing_zeros();
            let ones = (!(m >> tz)).trailing_zeros(); // 1..=64 - tz
            let s = base + tz as usize;
            let mut e = s + ones as usize;
            if tz + ones >= 64 {
                // The run reaches the end of its line: it may go on.
                let x = extend_run(masks, bits, e);
                (e, m, base, bits) = (x.end, x.rest, x.base, x.lines);
            } else {
                m &= !0u64 << (tz + ones);
            }
            if s - pe <= 5 && merge_pays(pe - ps, s - pe, e - s) {
                pe = e;
                continue;
            }
            if !w.write(ps, pe) {
                return None;
            }
            (ps, pe) = (s, e);
        }
    }
    if !w.write(ps, pe) {
        return None;
    }
    // Both point into the same reserved room, `at` at or after `start`.
    Some(w.at as usize - start as usize)
}

/// A line's byte mask with each single unchanged byte between two changed
/// ones marked changed: write_runs takes it into the run, which always
/// pays (`v(a+1+b) <= v(a) + v(b)`).
#[inline(always)]
fn join_single_gaps(m: u64) -> u64 {
    m | ((m << 1) & (m >> 1))
}

/// A run extended past the end of its line.
struct Extended {
    /// Where the run ends.
    end: usize,
    /// The line it ends in (its offset), with the bits after the run, and
    /// the changed lines still to walk.
    base: usize,
    rest: u64,
    lines: u64,
}

/// Extends a run that reached `end`, the end of a line, through the leading
/// changed bytes of the following lines. `lines` holds the changed lines
/// not walked yet, all above the run's. Out of line: runs crossing lines
/// are rare where speed matters (sparse writes), and the walk keeps its
/// state in registers.
#[cold]
#[inline(never)]
fn extend_run(masks: &[u64; PAGE_SIZE / 64], mut lines: u64, mut end: usize) -> Extended {
    loop {
        let i = end / 64;
        if i >= 64 || lines & (1 << i) == 0 || masks[i] & 1 == 0 {
            return Extended { end, base: 0, rest: 0, lines };
        }
        lines &= !(1 << i);
        let m = masks[i];
        let n = m.trailing_ones();
        end += n as usize;
        if n < 64 {
            let rest = m & (!0u64 << n);
            return Extended { end, base: 64 * i, rest: join_single_gaps(rest), lines };
        }
    }
}

/// Whether a run of `l1` bytes, `gap` unchanged bytes and a run of `l2`
/// bytes cost no more as one run than as two (the second run's skip and
/// length headers): each merge then adds no more than XBZRLE's zrun/nzrun
/// pair for the same run, so the total never exceeds XBZRLE's. Lengths are
/// below 2^14 (a page), so a varint is 1 or 2 bytes; merged costs at least
/// gap + 1 and apart at most 6, so only gaps up to 5 can merge.
#[inline(always)]
fn merge_pays(l1: usize, gap: usize, l2: usize) -> bool {
    let v = |x: usize| 1 + (x >= 0x80) as usize;
    v(l1 + gap + l2) + gap <= v(l1) + v(gap) + v(l2)
}

/// Writes runs into the reserved room of a Delta.
struct RunWriter<'a> {
    /// Where the next run goes.
    at: *mut u8,
    /// End of the room for run bytes; `RUN_SLACK` more bytes are reserved
    /// past it.
    limit: *const u8,
    /// End of the last run written: the next skip counts from here.
    written_end: usize,
    page: &'a Page,
}

impl RunWriter<'_> {
    /// Writes run `s..e` (`written_end <= s < e`). False, writing nothing,
    /// when it does not fit the room.
    #[inline(always)]
    fn write(&mut self, s: usize, e: usize) -> bool {
        debug_assert!(self.written_end <= s && s < e);
        let h = 2 + (s - self.written_end >= 0x80) as usize + (e - s >= 0x80) as usize;
        if (self.limit as usize).wrapping_sub(self.at as usize) < h + (e - s) || e > PAGE_SIZE {
            return false;
        }
        // SAFETY: h + len bytes fit before `limit` (checked above), and
        // RUN_SLACK more are reserved after it; written_end <= s < e <=
        // PAGE_SIZE.
        self.at = unsafe { put_run(self.at, s - self.written_end, s, e - s, self.page) };
        self.written_end = e;
        true
    }
}

/// Writes the run of `len` bytes at `s`, `skip` bytes after the run before
/// it, at `at`, and returns where the next run goes (after its `h` header
/// bytes and `len` bytes). Both varints are below 2^14 (offsets in a
/// page), so 1 or 2 bytes each.
///
/// # Safety
/// `1 <= len`, `s + len <= PAGE_SIZE`, `skip < 2^14`; `at` has room for the
/// run (header, 2..=4 bytes, and its bytes) and `RUN_SLACK` bytes after
/// it: a short run stores at at..at + 2 + big1 + 16. `at` points outside
/// the page.
#[inline(always)]
unsafe fn put_run(at: *mut u8, skip: usize, s: usize, len: usize, page: &Page) -> *mut u8 {
    if len <= 16 && s + 16 <= PAGE_SIZE {
        // SAFETY: as this function's contract, and the run's length and
        // start are checked just above.
        return unsafe { put_short_run(at, skip, s, len, page) };
    }
    // SAFETY: as this function's contract.
    unsafe { put_long_run(at, leb2(skip), (skip >= 0x80) as usize, s, len, page) }
}

/// `put_run` for a run of at most 16 bytes that starts at least 16 bytes
/// before the page's end, whose caller checked both (sparse writes, a few
/// pixels): a 1-byte length, and its bytes as one fixed 16-byte
/// copy, not a memcpy call. Three stores at offsets from `big1` cost fewer
/// instructions than one header word shifted into place.
///
/// # Safety
/// As `put_run`, and `1 <= len <= 16`, `s + 16 <= PAGE_SIZE`.
#[inline(always)]
unsafe fn put_short_run(at: *mut u8, skip: usize, s: usize, len: usize, page: &Page) -> *mut u8 {
    let big1 = (skip >= 0x80) as usize;
    let v1 = leb2(skip);
    // SAFETY: as this function's contract; the page read is s..s + 16.
    unsafe {
        core::ptr::copy_nonoverlapping((v1 as u16).to_le_bytes().as_ptr(), at, 2);
        let at = at.add(big1);
        *at.add(1) = len as u8;
        core::ptr::copy_nonoverlapping(page.as_ptr().add(s), at.add(2), 16);
        at.add(2 + len)
    }
}

/// LEB128 of `x < 2^14` in two little-endian bytes (the second is 0 and
/// not part of the varint when `x < 128`): one load from a table for
/// offsets in a page, where a walk of sparse writes meets them once a run.
#[inline(always)]
fn leb2(x: usize) -> usize {
    match LEB2.get(x) {
        Some(&v) => v as usize,
        None => leb2_of(x),
    }
}

/// `leb2` computed: x + (x & !0x7F) moves bits 7.. up one place (to the
/// second byte), and the first byte's top bit says whether the second
/// counts.
const fn leb2_of(x: usize) -> usize {
    x + (x & !0x7F) + (((x >= 0x80) as usize) << 7)
}

/// `leb2_of` of every offset in a page (8 KiB).
static LEB2: [u16; PAGE_SIZE] = {
    let mut t = [0u16; PAGE_SIZE];
    let mut x = 0;
    while x < PAGE_SIZE {
        t[x] = leb2_of(x) as u16;
        x += 1;
    }
    t
};

/// `put_run` for a run of more than 16 bytes (or at the page's end), out of
/// the line walk: its memcpy call would make the walk keep its state in
/// memory.
///
/// # Safety
/// As `put_run`; `v1` is the skip's varint and `big1` whether it takes two
/// bytes.
#[cold]
#[inline(never)]
unsafe fn put_long_run(at: *mut u8, v1: usize, big1: usize, s: usize, len: usize, page: &Page) -> *mut u8 {
    let big2 = (len >= 0x80) as usize;
    let v2 = leb2_of(len);
    let head = (v1 | v2 << (8 + 8 * big1)) as u32;
    let h = 2 + big1 + big2;
    // SAFETY: as `put_run`'s contract; the page read is s..s + len.
    unsafe {
        core::ptr::copy_nonoverlapping(head.to_le_bytes().as_ptr(), at, 4);
        core::ptr::copy_nonoverlapping(page.as_ptr().add(s), at.add(h), len);
        at.add(h + len)
    }
}

/// Reads the records of one batch in order.
#[derive(Clone, Debug)]
pub struct BatchDecoder<'a> {
    rest: &'a [u8],
    next: u64,
}

impl<'a> BatchDecoder<'a> {
    pub fn new(batch: &'a [u8]) -> Self {
        BatchDecoder { rest: batch, next: 0 }
    }

    /// The next record, `None` at the end of the batch. Checks the head,
    /// lengths and kind; runs are checked by `apply`. After an error the
    /// batch must be dropped.
    pub fn next_record(&mut self) -> Result<Option<PageRecordRef<'a>>, DeltaError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (rec, used) = decode_at(self.rest, self.next)?;
        self.rest = &self.rest[used..];
        // rec.page_num <= MAX_PAGE_NUM (checked), so this cannot overflow.
        self.next = rec.page_num + 1;
        Ok(Some(rec))
    }

    /// Bytes not parsed yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

/// Parses the first record of a batch at the start of `input`. Returns the
/// record and the bytes it took.
pub fn decode_page_record(input: &[u8]) -> Result<(PageRecordRef<'_>, usize), DeltaError> {
    decode_at(input, 0)
}

fn decode_at(input: &[u8], next: u64) -> Result<(PageRecordRef<'_>, usize), DeltaError> {
    let (head, n) = read_varint(input)?;
    // next <= MAX_PAGE_NUM + 1 and head >> 2 < 2^62: no overflow.
    let page_num = next + (head >> 2);
    if page_num > MAX_PAGE_NUM {
        return Err(DeltaError::BadPageNumber);
    }
    let (record, m) = decode_body((head & 3) as u8, &input[n..])?;
    Ok((PageRecordRef { page_num, record }, n + m))
}

/// Parses a record body of `kind` at the start of `input`: the record and
/// the bytes it took.
pub fn decode_body(kind: u8, input: &[u8]) -> Result<(RecordRef<'_>, usize), DeltaError> {
    match kind {
        0 => Ok((RecordRef::Zero, 0)),
        2 => {
            let bytes = input.get(..PAGE_SIZE).ok_or(DeltaError::Truncated)?;
            let page = <&Page>::try_from(bytes).map_err(|_| DeltaError::Truncated)?;
            Ok((RecordRef::Full(page), PAGE_SIZE))
        }
        3 => {
            let h = input.get(..HASH_LEN).ok_or(DeltaError::Truncated)?;
            let mut b = [0u8; HASH_LEN];
            b.copy_from_slice(h);
            let hash = u64::from_le_bytes(b);
            let rest = &input[HASH_LEN..];
            let (len, n) = read_varint(rest)?;
            if len == 0 || len > PAGE_SIZE as u64 {
                return Err(DeltaError::BadLength);
            }
            let len = len as usize;
            let runs = rest.get(n..n + len).ok_or(DeltaError::Truncated)?;
            Ok((RecordRef::Delta { hash, runs }, HASH_LEN + n + len))
        }
        k => Err(DeltaError::BadKind(k)),
    }
}

/// Rebuilds the page a record describes into `out` and returns its
/// page_hash, checked against the record's for a Delta (see the module
/// comment for why only a Delta carries one). `shadow` is this side's copy
/// of the page as last applied. On error `out` holds unspecified content
/// and must not be used.
pub fn apply(shadow: Option<&Page>, rec: &PageRecordRef<'_>, out: &mut Page) -> Result<u64, DeltaError> {
    if let RecordRef::Delta { .. } = rec.record {
        out.copy_from_slice(shadow.ok_or(DeltaError::MissingShadow)?);
    }
    apply_in_place(out, rec)
}

/// As `apply`, for a page that holds its shadow on entry (the standby's
/// staging copy). On error the page holds unspecified content.
pub fn apply_in_place(page: &mut Page, rec: &PageRecordRef<'_>) -> Result<u64, DeltaError> {
    match rec.record {
        RecordRef::Zero => {
            page.fill(0);
            Ok(ZERO_PAGE_HASH)
        }
        RecordRef::Full(p) => {
            page.copy_from_slice(p);
            Ok(hash_page(page))
        }
        RecordRef::Delta { hash, runs } => {
            apply_runs(runs, page)?;
            check_hash(page, hash)
        }
    }
}

fn check_hash(page: &Page, want: u64) -> Result<u64, DeltaError> {
    if hash_page(page) == want {
        Ok(want)
    } else {
        Err(DeltaError::HashMismatch)
    }
}

/// Writes the runs of a Delta over `page`.
fn apply_runs(runs: &[u8], page: &mut Page) -> Result<(), DeltaError> {
    let mut i = 0usize;
    let mut pos = 0usize;
    while i < runs.len() {
        let (skip, n) = read_varint(&runs[i..])?;
        i += n;
        let (len, n) = read_varint(&runs[i..])?;
        i += n;
        if len == 0 {
            return Err(DeltaError::EmptyRun);
        }
        // Both are checked against the page before any addition can wrap.
        if skip > PAGE_SIZE as u64 || len > PAGE_SIZE as u64 {
            return Err(DeltaError::RunPastPage);
        }
        let start = pos + skip as usize;
        let end = start + len as usize;
        if end > PAGE_SIZE {
            return Err(DeltaError::RunPastPage);
        }
        let bytes = runs.get(i..i + len as usize).ok_or(DeltaError::Truncated)?;
        page[start..end].copy_from_slice(bytes);
        i += len as usize;
        pos = end;
    }
    Ok(())
}

/// Appends `v` as LEB128; returns the bytes written.
#[inline]
pub fn push_varint(out: &mut Vec<u8>, mut v: u64) -> usize {
    if v < 0x80 {
        out.push(v as u8);
        return 1;
    }
    let mut n = 1;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
        n += 1;
    }
    out.push(v as u8);
    n
}

/// Reads a LEB128 u64; rejects encodings longer than 10 bytes or with bits
/// beyond 64.
pub fn read_varint(input: &[u8]) -> Result<(u64, usize), DeltaError> {
    let mut v = 0u64;
    for (i, &b) in input.iter().enumerate().take(10) {
        let bits = (b & 0x7F) as u64;
        if i == 9 && b > 1 {
            return Err(DeltaError::BadVarint);
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    if input.len() >= 10 {
        Err(DeltaError::BadVarint)
    } else {
        Err(DeltaError::Truncated)
    }
}

/// Bytes LEB128 takes for `v`.
#[inline(always)]
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xbzrle;
    use alloc::vec;

    fn pattern(seed: u32) -> Page {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        core::array::from_fn(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
    }

    fn round_trip(page: &Page, shadow: Option<&Page>) -> (EncodeOutcome, Vec<u8>) {
        let mut out = vec![0xEE]; // existing data must be kept
        let o = encode_page_record(42, page, shadow, &mut out).unwrap();
        assert_eq!(out[0], 0xEE);
        assert_eq!(o.len, out.len() - 1);
        if o.kind == RecordKind::Same {
            // Not sent: the standby's page is the shadow already.
            assert_eq!(Some(page), shadow);
            assert_eq!((o.len, o.hash), (0, hash_page(page)));
            return (o, Vec::new());
        }
        let (rec, used) = decode_page_record(&out[1..]).unwrap();
        assert_eq!(used, out.len() - 1);
        assert_eq!(rec.page_num, 42);
        if let RecordRef::Delta { hash, .. } = rec.record {
            assert_eq!(hash, hash_page(page));
        }
        assert_eq!(rec.record.kind(), o.kind);
        let mut back = [0x55u8; PAGE_SIZE];
        assert_eq!(apply(shadow, &rec, &mut back), Ok(hash_page(page)));
        assert_eq!(&back, page);
        if let Some(s) = shadow {
            let mut inplace = *s;
            assert_eq!(apply_in_place(&mut inplace, &rec), Ok(hash_page(page)));
            assert_eq!(&inplace, page);
        }
        (o, out[1..].to_vec())
    }

    #[test]
    fn kinds_are_chosen_as_documented() {
        let zero = [0u8; PAGE_SIZE];
        let data = pattern(1);
        assert_eq!(round_trip(&zero, None).0.kind, RecordKind::Zero);
        assert_eq!(round_trip(&data, None).0.kind, RecordKind::Full);
        assert_eq!(round_trip(&data, None).0.changed_bytes, PAGE_SIZE);
        let (o, bytes) = round_trip(&data, Some(&data));
        assert_eq!((o.kind, o.changed_bytes, bytes.len()), (RecordKind::Same, 0, 0));
        // A page zeroed over data: Zero beats any delta.
        let (o, _) = round_trip(&zero, Some(&data));
        assert_eq!(o.kind, RecordKind::Zero);
        assert_eq!(o.changed_bytes, data.iter().filter(|&&b| b != 0).count());
        // The same on the portable path (found before the page is hashed).
        let mut body = Vec::new();
        let g = encode_shadowed(&zero, Shadow { page: &data, hash: hash_page(&data) }, &mut body);
        assert_eq!((g.kind, g.changed_bytes, g.hash, g.len), (o.kind, o.changed_bytes, o.hash, 0));
        assert!(body.is_empty());
        // Rewritten whole: Full, with the real count of changed bytes.
        let other = pattern(2);
        let (o, _) = round_trip(&other, Some(&data));
        assert_eq!(o.kind, RecordKind::Full);
        assert_eq!(o.changed_bytes, data.iter().zip(&other).filter(|(a, b)| a != b).count());
    }

    #[test]
    fn delta_bytes_are_exact() {
        let shadow = [0u8; PAGE_SIZE];
        let mut page = shadow;
        page[0] = 9;
        page[2] = 8; // gap 1: merged (1 byte < a 2-byte header)
        page[300] = 7;
        let mut out = Vec::new();
        let o = encode(&page, Some(&shadow), &mut out);
        assert_eq!(o.kind, RecordKind::Delta);
        assert_eq!(o.changed_bytes, 3);
        let mut want = hash_page(&page).to_le_bytes().to_vec();
        // length 9: [skip 0, len 3, 9 0 8] [skip 297 (2 bytes), len 1, 7]
        // (XBZRLE: 10 bytes, the 1-byte gap costs it a run header)
        want.extend_from_slice(&[9, 0, 3, 9, 0, 8, 0xA9, 0x02, 1, 7]);
        assert_eq!(out, want);
    }

    #[test]
    fn merging_never_loses_to_xbzrle_at_varint_boundaries() {
        // A 127-byte run then a 1-byte run after a gap of 2: merging would
        // make the first length a 2-byte varint, so the runs stay apart.
        let shadow = [0u8; PAGE_SIZE];
        let mut page = shadow;
        page[10..137].fill(1);
        page[139] = 1;
        let mut ours = Vec::new();
        let o = encode(&page, Some(&shadow), &mut ours);
        let mut theirs = Vec::new();
        let x = xbzrle::encode(&shadow, &page, PAGE_SIZE, &mut theirs);
        assert_eq!(o.kind, RecordKind::Delta);
        let runs = match decode_body(o.kind as u8, &ours).unwrap().0 {
            RecordRef::Delta { runs, .. } => runs.len(),
            other => panic!("{other:?}"),
        };
        // Kept apart: skip 10, len 127, bytes, skip 2, len 1, byte.
        assert_eq!(runs, 1 + 1 + 127 + 1 + 1 + 1);
        assert_eq!(x, xbzrle::XbzrleOutcome::Encoded(theirs.len()));
        assert!(runs <= theirs.len(), "ours {runs} xbzrle {}", theirs.len());
        round_trip(&page, Some(&shadow));
    }

    #[test]
    fn framebuffer_pixels_merge_across_alpha() {
        // RGBA pixels whose RGB changed and alpha did not: XBZRLE pays a
        // header per pixel, we pay one byte of alpha.
        let shadow = [0xFFu8; PAGE_SIZE];
        let mut page = shadow;
        for px in 0..200 {
            page[px * 4..px * 4 + 3].copy_from_slice(&[1, 2, 3]);
        }
        let (o, _) = round_trip(&page, Some(&shadow));
        let mut theirs = Vec::new();
        xbzrle::encode(&shadow, &page, PAGE_SIZE, &mut theirs);
        assert_eq!(o.kind, RecordKind::Delta);
        let mut out = Vec::new();
        let o = encode(&page, Some(&shadow), &mut out);
        let runs = o.len - HASH_LEN - 2; // 2-byte Delta length
        assert_eq!(runs, 1 + 2 + 799, "one run: skip, 2-byte length, 799 bytes");
        assert_eq!(theirs.len(), 200 * 5, "zrun, nzrun, 3 bytes per pixel");
    }

    #[test]
    fn byte_mask_marks_changed_bytes() {
        use crate::simd::byte_mask;
        assert_eq!(byte_mask(0), 0);
        assert_eq!(byte_mask(u64::MAX), 0xFF);
        assert_eq!(byte_mask(0x80), 1);
        assert_eq!(byte_mask(0x0100_0000_0000_0000), 0x80);
        assert_eq!(byte_mask(0x0000_FF00_0001_0000), 0b0010_0100);
        for i in 0..8 {
            for v in 1..=255u64 {
                assert_eq!(byte_mask(v << (8 * i)), 1 << i);
            }
        }
    }

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            let n = push_varint(&mut b, v);
            assert_eq!(n, b.len());
            assert_eq!(n, varint_len(v));
            assert_eq!(read_varint(&b), Ok((v, n)));
            assert_eq!(read_varint(&b[..n - 1]), Err(DeltaError::Truncated));
        }
        assert_eq!(read_varint(&[0xFF; 10]), Err(DeltaError::BadVarint));
        let mut eleven = vec![0x80; 9];
        eleven.push(0x02);
        assert_eq!(read_varint(&eleven), Err(DeltaError::BadVarint));
    }

    #[test]
    fn bad_records_are_errors() {
        let shadow = pattern(3);
        let mut page = shadow;
        page[100] ^= 1;
        page[2000] ^= 0xF0;
        let mut out = Vec::new();
        encode_page_record(7, &page, Some(&shadow), &mut out).unwrap();
        let (rec, _) = decode_page_record(&out).unwrap();
        let mut buf = [0u8; PAGE_SIZE];
        assert_eq!(apply(None, &rec, &mut buf), Err(DeltaError::MissingShadow));
        // A different base: the hash finds it.
        let mut other = shadow;
        other[5] ^= 1;
        assert_eq!(apply(Some(&other), &rec, &mut buf), Err(DeltaError::HashMismatch));
        for cut in 0..out.len() {
            assert!(decode_page_record(&out[..cut]).is_err(), "cut {cut}");
        }
        // Head 7 << 2 | kind: kind 1 (Same) is never sent.
        let mut bad = out.clone();
        bad[0] = 7 << 2 | 1;
        assert_eq!(decode_page_record(&bad).unwrap_err(), DeltaError::BadKind(1));
        // Runs past the page and empty runs.
        let hdr = |runs: &[u8]| {
            let mut r = vec![3u8];
            r.extend_from_slice(&[0; 8]);
            r.push(runs.len() as u8);
            r.extend_from_slice(runs);
            r
        };
        for (runs, err) in [
            (&[0x80, 0x20, 1, 5][..], DeltaError::RunPastPage),
            (&[0, 0][..], DeltaError::EmptyRun),
            (&[0, 3, 1][..], DeltaError::Truncated),
            (&[0xFF, 0xFF, 0xFF][..], DeltaError::Truncated),
        ] {
            let r = hdr(runs);
            let (rec, _) = decode_page_record(&r).unwrap();
            assert_eq!(apply(Some(&shadow), &rec, &mut buf), Err(err), "{runs:?}");
        }
        let mut zero_len = vec![3u8];
        zero_len.extend_from_slice(&[0; 8]);
        zero_len.push(0);
        assert_eq!(decode_page_record(&zero_len).unwrap_err(), DeltaError::BadLength);
    }

    #[test]
    fn batch_heads_are_gaps_and_same_pages_are_skipped() {
        let a = pattern(5);
        let mut b = a;
        b[9] ^= 1;
        let zero = [0u8; PAGE_SIZE];
        let mut w = BatchEncoder::new();
        let mut out = Vec::new();
        // Page 3 (gap 3), page 4 Same (not sent), page 6 (gap 2 from 4),
        // page 1000 (gap 993: a two-byte head). A Zero record is its head.
        assert_eq!(w.encode(3, &zero, None, &mut out).unwrap().len, 1);
        assert_eq!(out, [3 << 2]);
        let o = w.encode(4, &a, Some(&a), &mut out).unwrap();
        assert_eq!((o.kind, o.len, out.len()), (RecordKind::Same, 0, 1));
        let o = w.encode(6, &b, Some(&a), &mut out).unwrap();
        assert_eq!(o.kind, RecordKind::Delta);
        assert_eq!(out[1], 2 << 2 | 3);
        let at = out.len();
        let o = w.encode(1000, &a, None, &mut out).unwrap();
        assert_eq!(o.len, 2 + PAGE_SIZE);
        assert_eq!(out[at..at + 2], [(993u64 << 2 | 2) as u8 | 0x80, (993u64 << 2 >> 7) as u8]);
        // Out of order, repeated or too large page numbers are refused.
        let mut scratch = Vec::new();
        for p in [999, 1000, MAX_PAGE_NUM + 1] {
            assert_eq!(w.encode(p, &a, None, &mut scratch), Err(DeltaError::BadPageNumber));
        }
        assert!(scratch.is_empty());
        let mut d = BatchDecoder::new(&out);
        let pages: Vec<(u64, RecordKind)> = core::iter::from_fn(|| d.next_record().unwrap()).map(|r| (r.page_num, r.record.kind())).collect();
        assert_eq!(pages, [(3, RecordKind::Zero), (6, RecordKind::Delta), (1000, RecordKind::Full)]);
        // A head naming a page past MAX_PAGE_NUM is an error, not a wrap.
        let mut big = Vec::new();
        push_varint(&mut big, (MAX_PAGE_NUM + 1) << 2);
        assert_eq!(decode_page_record(&big), Err(DeltaError::BadPageNumber));
        let mut last = Vec::new();
        BatchEncoder::new().encode(MAX_PAGE_NUM, &zero, None, &mut last).unwrap();
        last.push(0); // a Zero record, gap 0 after the last page
        let mut d = BatchDecoder::new(&last);
        assert_eq!(d.next_record().unwrap().map(|r| r.page_num), Some(MAX_PAGE_NUM));
        assert_eq!(d.next_record(), Err(DeltaError::BadPageNumber));
    }
}

/// A plain reference for the encoder: today's record bytes and outcome,
/// built from simple parts (scalar masks, `push_varint`, a whole-page
/// hash), so a faster encoder can be checked byte for byte against it.
#[cfg(test)]
pub(crate) mod reference {
    use super::*;
    use crate::simd::block_masks_scalar;

    /// The runs as the encoder cuts and merges them: per line, maximal runs
    /// of the mask with single unchanged bytes inside the line filled; a run
    /// reaching a line's end goes on through the next lines' leading
    /// changed bytes; each run merges into the pending one when
    /// `merge_pays` (gap at most 5).
    fn runs(m: &[u64; 64]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut pending: Option<(usize, usize)> = None;
        let mut line = 0;
        let mut m_cur = 0u64;
        let mut base = 0;
        loop {
            if m_cur == 0 {
                if line >= 64 {
                    break;
                }
                let raw = m[line];
                m_cur = raw | ((raw << 1) & (raw >> 1));
                base = 64 * line;
                line += 1;
                continue;
            }
            let tz = m_cur.trailing_zeros();
            let ones = (!(m_cur >> tz)).trailing_zeros();
            let s = base + tz as usize;
            let mut e = s + ones as usize;
            if tz + ones >= 64 {
                m_cur = 0;
                // Through the next lines' leading changed bytes.
                while line < 64 && m[line] & 1 != 0 {
                    let n = m[line].trailing_ones();
                    e += n as usize;
                    line += 1;
                    if n < 64 {
                        let rest = m[line - 1] & (!0u64 << n);
                        m_cur = rest | ((rest << 1) & (rest >> 1));
                        base = 64 * (line - 1);
                        break;
                    }
                }
            } else {
                m_cur &= !0u64 << (tz + ones);
            }
            match pending {
                Some((ps, pe)) if s - pe <= 5 && merge_pays(pe - ps, s - pe, e - s) => pending = Some((ps, e)),
                Some(p) => {
                    out.push(p);
                    pending = Some((s, e));
                }
                None => pending = Some((s, e)),
            }
        }
        out.extend(pending);
        out
    }

    /// Appends the record body of `page` against `shadow`, as `encode_with`.
    pub(crate) fn encode(page: &Page, shadow: &Page, out: &mut Vec<u8>) -> EncodeOutcome {
        let mut m = [0u64; 64];
        for j in 0..simd::BLOCKS {
            m[4 * j..4 * j + 4].copy_from_slice(&block_masks_scalar(page, shadow, j));
        }
        let changed: usize = m.iter().map(|x| x.count_ones() as usize).sum();
        let hash = hash_page(page);
        if changed == 0 {
            return EncodeOutcome { kind: RecordKind::Same, changed_bytes: 0, hash, len: 0 };
        }
        if page.iter().all(|&b| b == 0) {
            return EncodeOutcome { kind: RecordKind::Zero, changed_bytes: changed, hash, len: 0 };
        }
        let full = |out: &mut Vec<u8>| {
            out.extend_from_slice(page);
            EncodeOutcome { kind: RecordKind::Full, changed_bytes: changed, hash, len: PAGE_SIZE }
        };
        if changed > MAX_RUN_BYTES {
            return full(out);
        }
        let mut body = Vec::new();
        let mut at = 0;
        for (s, e) in runs(&m) {
            push_varint(&mut body, (s - at) as u64);
            push_varint(&mut body, (e - s) as u64);
            body.extend_from_slice(&page[s..e]);
            at = e;
        }
        if body.len() > MAX_RUN_BYTES {
            return full(out);
        }
        let start = out.len();
        out.extend_from_slice(&hash.to_le_bytes());
        push_varint(out, body.len() as u64);
        out.extend_from_slice(&body);
        EncodeOutcome { kind: RecordKind::Delta, changed_bytes: changed, hash, len: out.len() - start }
    }

    /// Page pairs that reach every branch of the encoder: sparse bytes,
    /// runs across lines, gaps of 1..6 around varint boundaries (lengths
    /// near 128), dense and whole rewrites, zeroed pages.
    pub(crate) fn pairs(seed: u64, n: usize) -> Vec<(Page, Page)> {
        let mut x = seed | 1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|k| {
                let mut sh = [0u8; PAGE_SIZE];
                for b in sh.iter_mut() {
                    *b = rnd() as u8;
                }
                let mut p = sh;
                match k % 8 {
                    0 => {
                        for _ in 0..(1 + rnd() % 16) {
                            let at = (rnd() % 4096) as usize;
                            p[at] = p[at].wrapping_add(1 + (rnd() % 255) as u8);
                        }
                    }
                    1 => {
                        // Runs with small gaps, some across lines.
                        let mut at = (rnd() % 200) as usize;
                        while at < PAGE_SIZE {
                            let len = 1 + (rnd() % 140) as usize;
                            for b in &mut p[at..(at + len).min(PAGE_SIZE)] {
                                *b ^= 1 + (rnd() % 255) as u8;
                            }
                            at += len + 1 + (rnd() % 7) as usize + if rnd() % 4 == 0 { (rnd() % 300) as usize } else { 0 };
                        }
                    }
                    2 => {
                        // Lengths around 127/128 and gaps up to 6.
                        let mut at = (rnd() % 64) as usize;
                        while at + 300 < PAGE_SIZE {
                            let len = 120 + (rnd() % 16) as usize;
                            for b in &mut p[at..at + len] {
                                *b ^= 0x5A;
                            }
                            at += len + 1 + (rnd() % 6) as usize;
                            let l2 = 1 + (rnd() % 4) as usize;
                            for b in &mut p[at..at + l2] {
                                *b ^= 0x33;
                            }
                            at += l2 + 1 + (rnd() % 500) as usize;
                        }
                    }
                    3 => {
                        // Every other byte, or every k-th byte, in a span.
                        let step = 2 + (rnd() % 4) as usize;
                        let from = (rnd() % 4096) as usize;
                        let to = (from + (rnd() % 4096) as usize).min(PAGE_SIZE);
                        for i in (from..to).step_by(step) {
                            p[i] ^= 0x80;
                        }
                    }
                    4 => {
                        for b in p.iter_mut() {
                            *b = rnd() as u8;
                        }
                    }
                    5 => p = [0u8; PAGE_SIZE],
                    6 => {
                        // Lines changed whole at random.
                        for line in 0..64 {
                            if rnd() % 3 == 0 {
                                for b in &mut p[64 * line..64 * line + 64] {
                                    *b ^= 0xFF;
                                }
                            }
                        }
                    }
                    _ => {
                        if rnd() % 2 == 0 {
                            sh = [0u8; PAGE_SIZE];
                            p = sh;
                            p[(rnd() % 4096) as usize] = 1;
                        }
                    }
                }
                (sh, p)
            })
            .collect()
    }
}

#[cfg(test)]
mod reference_tests {
    use super::*;
    use alloc::{format, vec};

    /// `p` encoded against `sh` by every build of the encoder this CPU
    /// runs, each appending to a batch that holds one byte already: the
    /// default (`encode`), the portable one, and on x86_64 the AVX2 walk and
    /// the AVX-512 one where the CPU has them (with a next page named, which
    /// changes no byte).
    fn every_build(p: &Page, sh: &Page) -> Vec<(&'static str, EncodeOutcome, Vec<u8>)> {
        let shadow = Shadow { page: sh, hash: hash_page(sh) };
        let mut builds = Vec::new();
        let mut out = vec![0xAB];
        builds.push(("default", encode(p, Some(sh), &mut out), out));
        let mut out = vec![0xAB];
        builds.push(("portable", encode_shadowed(p, shadow, &mut out), out));
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            let next = Some(Next { page: sh, shadow: Some(p) });
            let walk = simd::x86_walk();
            if walk != simd::X86Walk::Portable {
                let mut out = vec![0xAB];
                // SAFETY: x86_walk() found AVX2 and its bit instructions.
                builds.push(("avx2", unsafe { encode_shadowed_avx2(p, shadow, next, &mut out) }, out));
            }
            if walk == simd::X86Walk::Avx512 {
                let mut out = vec![0xAB];
                // SAFETY: x86_walk() found AVX-512F and AVX-512BW as well.
                builds.push(("avx512", unsafe { encode_shadowed_avx512(p, shadow, next, &mut out) }, out));
            }
        }
        builds
    }

    /// `p` against `sh` gives the reference encoder's outcome and bytes in
    /// every build; returns the outcome.
    fn matches_reference(p: &Page, sh: &Page, case: &str) -> EncodeOutcome {
        let mut want = vec![0xAB];
        let w = reference::encode(p, sh, &mut want);
        for (build, g, got) in every_build(p, sh) {
            assert_eq!((g, &got), (w, &want), "{case} ({build})");
        }
        w
    }

    /// The edges of the x86 walk (`encode_walked`, in its AVX2 and AVX-512
    /// builds): its straight path for a sparse write's line and everything
    /// it hands to `walk_line` or `merge_into_last`, and the walk / dense
    /// boundary, all give the reference's bytes in every build.
    #[test]
    fn walk_edges_match_reference() {
        let shadow: Page = core::array::from_fn(|i| (i * 37 % 253) as u8);
        let mut cases: Vec<Page> = Vec::new();
        let with = |changes: &[(usize, usize)]| {
            let mut p = shadow;
            for &(from, to) in changes {
                for b in &mut p[from..to] {
                    *b ^= 0x80;
                }
            }
            p
        };
        // 24 and 25 changed lines: walked, then the dense path.
        for lines in [24usize, 25] {
            cases.push(with(&(0..lines).map(|l| (64 * l + 7, 64 * l + 8)).collect::<Vec<_>>()));
        }
        // Single bytes: near the page's start (a first run within 5 bytes
        // of offset 0), at a 16-byte chunk's last byte, a line's last byte
        // with and without the next line's first, the page's last 16 bytes.
        for at in [0usize, 3, 5, 6, 15, 31, 47, 63, 4079, 4080, 4081, 4095] {
            cases.push(with(&[(at, at + 1), (2000, 2001)]));
        }
        cases.push(with(&[(63, 65), (3000, 3001)]));
        // Two runs in one line, and runs 1..=6 bytes apart (merged or not,
        // in one line and across a line's end).
        cases.push(with(&[(130, 131), (150, 151)]));
        for gap in 1..=6 {
            cases.push(with(&[(500, 501), (501 + gap, 502 + gap)]));
            cases.push(with(&[(1022 - gap, 1023 - gap), (1023, 1024)]));
            cases.push(with(&[(1024 - gap - 1, 1024 - gap), (1024, 1025)]));
        }
        // Skips around the varint boundary, runs of 9..=16 bytes in one
        // chunk, and a merge that makes the run longer than 127 bytes.
        for skip in [126usize, 127, 128, 129] {
            cases.push(with(&[(10, 11), (11 + skip, 12 + skip)]));
        }
        for len in [9usize, 12, 15, 16] {
            cases.push(with(&[(640, 640 + len), (3000, 3001)]));
        }
        cases.push(with(&[(700, 826), (828, 829)]));
        // Runs through whole lines, ending at a line's end or just before.
        for (from, to) in [(1020usize, 1030usize), (1000, 1152), (2040, 2240), (960, 1088), (3000, 4096), (4095, 4096), (4088, 4096)] {
            cases.push(with(&[(100, 101), (from, to)]));
        }
        for (n, p) in cases.iter().enumerate() {
            matches_reference(p, &shadow, &format!("case {n}"));
        }
    }

    /// Pages at the edge between Delta and Full (one long run of 4060 to
    /// 4096 bytes, or a rewrite with single unchanged bytes left in it,
    /// inside lines or at their ends) give the reference encoder's bytes:
    /// the bound that sends a nearly rewritten page Full before its runs are
    /// written decides as the runs would.
    #[test]
    fn nearly_rewritten_pages_match_reference() {
        let shadow = reference::pairs(0x4655_4C4C, 1)[0].0;
        let mut cases = Vec::new();
        for len in 4060..=PAGE_SIZE {
            for at in [0, PAGE_SIZE - len, (PAGE_SIZE - len) / 2] {
                let mut p = shadow;
                for b in &mut p[at..at + len] {
                    *b = !*b;
                }
                cases.push(p);
            }
        }
        for kept in [1, 2, 5, 6, 7, 8, 12, 16, 40] {
            for step in [1, 2, 3, 7, 63, 64, 65] {
                let mut p = shadow;
                for b in p.iter_mut() {
                    *b = !*b;
                }
                for k in 0..kept {
                    let at = (k * step * 37 + 11) % PAGE_SIZE;
                    p[at] = shadow[at];
                }
                cases.push(p);
            }
            // Kept bytes at lines' last or first bytes (a gap across two
            // lines, which the bound does not count), and kept pairs (a gap
            // of two, which write_runs may merge but does not join).
            for (first, width) in [(63, 1), (0, 1), (62, 2), (30, 2)] {
                let mut p = shadow;
                for b in p.iter_mut() {
                    *b = !*b;
                }
                for k in 0..kept {
                    let at = (64 * (7 * k % 64) + first) % PAGE_SIZE;
                    p[at..at + width].copy_from_slice(&shadow[at..at + width]);
                }
                cases.push(p);
            }
        }
        let mut kinds = [0usize; 4];
        for (n, p) in cases.iter().enumerate() {
            kinds[matches_reference(p, &shadow, &format!("case {n}")).kind as usize] += 1;
        }
        // Both sides of the edge are reached.
        assert!(kinds[RecordKind::Full as usize] > 10 && kinds[RecordKind::Delta as usize] > 10, "{kinds:?}");
    }

    /// Naming the next page (which the encoder prefetches) changes no byte.
    #[test]
    fn encode_next_gives_the_same_bytes() {
        let pairs = reference::pairs(0x4E45_5854, 64);
        for next_shadow in [false, true] {
            let (mut a, mut b) = (vec![], vec![]);
            let (mut wa, mut wb) = (BatchEncoder::new(), BatchEncoder::new());
            for (i, (sh, p)) in pairs.iter().enumerate() {
                let shadow = Some(Shadow { page: sh, hash: hash_page(sh) });
                let next = pairs.get(i + 1).map(|(ns, np)| Next { page: np, shadow: next_shadow.then_some(ns) });
                let oa = wa.encode_with(i as u64, p, shadow, &mut a).expect("ascending");
                let ob = wb.encode_next(i as u64, p, shadow, next, &mut b).expect("ascending");
                assert_eq!(oa, ob);
            }
            assert_eq!(a, b);
        }
    }

    #[test]
    fn encoder_matches_reference_byte_for_byte() {
        for seed in 1..40u64 {
            for (sh, p) in reference::pairs(seed * 0x9E37_79B9, 64) {
                matches_reference(&p, &sh, &format!("seed {seed}"));
            }
        }
    }
}
