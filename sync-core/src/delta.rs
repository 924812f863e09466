//! The delta codec: a page against its shadow becomes one record; the
//! records of an epoch are concatenated into batches.
//!
//! ```text
//! batch  = record*
//! record = head (varint)  hash (u64 LE, page_hash of the resulting page)  payload
//! head   = gap << 2 | kind
//!   gap: page number − next, where next is 0 at the start of the batch and
//!        the previous record's page number + 1 after it: page numbers
//!        ascend strictly within a batch, and a dirty page's neighbour costs
//!        one head byte (gap < 32), not a whole page-number varint.
//!        Page numbers are at most MAX_PAGE_NUM.
//!   kind 0 Zero   no payload              the page is all zero
//!   kind 1        (reserved: never sent)
//!   kind 2 Full   4096 bytes              no shadow, or a delta would not be smaller
//!   kind 3 Delta  length (varint)  runs   the bytes that changed
//! runs   = (skip varint, length varint, bytes)*  skip counts from the end
//!          of the previous run (from 0 for the first); length >= 1
//! varint = LEB128, little-endian groups of 7 bits
//! ```
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
//! same pair (each merge only lowers the running cost; see `Runs::submit`).
//!
//! Encoding reads the two pages once: a SIMD pass (`simd::page_masks`)
//! finds the 256-byte blocks that differ and, for those only, one bit per
//! changed byte; the runs are cut from those bit masks, and the page hash is
//! updated word by word from the shadow's hash (`page::hash_update`) instead
//! of rehashing the page. Runs are written into a slice sized from the
//! change count (no per-byte `Vec` bookkeeping); on x86_64 the whole
//! encoder is compiled a second time for AVX2 with POPCNT/LZCNT/BMI1, which
//! the bit-mask walk lives on.

use crate::page::{hash_page, hash_update, read_word, Page, PAGE_SIZE, ZERO_PAGE_HASH};
use crate::simd;
use alloc::vec::Vec;

/// Bytes of a record's hash.
pub const HASH_LEN: usize = 8;
/// Largest page number a batch can name (a 64-bit address space of 4 KiB
/// pages); keeps `gap << 2` and `next + 1` far from overflow.
pub const MAX_PAGE_NUM: u64 = (1 << 52) - 1;
/// Most bytes one record takes: head (at most 8 bytes for a gap below
/// 2^54), hash, whole page.
pub const MAX_PAGE_RECORD: usize = 8 + HASH_LEN + PAGE_SIZE;
/// Most run bytes a Delta may hold: with its 2-byte length it must stay
/// smaller than a Full payload, else the page goes Full.
const MAX_RUN_BYTES: usize = PAGE_SIZE - 3;

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
    /// The encoded runs.
    Delta(&'a [u8]),
}

impl RecordRef<'_> {
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordRef::Zero => RecordKind::Zero,
            RecordRef::Full(_) => RecordKind::Full,
            RecordRef::Delta(_) => RecordKind::Delta,
        }
    }
}

/// A parsed page record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRecordRef<'a> {
    pub page_num: u64,
    /// page_hash the page must have once the record is applied.
    pub hash: u64,
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
    /// The applied page does not have the record's hash.
    HashMismatch,
}

/// Encodes `page` against `shadow` (hashing the shadow: `encode_with` takes
/// a known hash and is faster) and appends the record body (hash, payload;
/// nothing for `Same`) to `out`. Kind and page number go in the head that
/// `BatchEncoder` writes.
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
        if page_num < self.next || page_num > MAX_PAGE_NUM {
            return Err(DeltaError::BadPageNumber);
        }
        let gap = page_num - self.next;
        // The head's length depends on the gap only (kind is the low two
        // bits), so it is reserved now and filled in once the kind is known.
        let head_len = varint_len(gap << 2 | 3);
        let start = out.len();
        out.resize(start + head_len, 0);
        let mut o = encode_with(page, shadow, out);
        if o.kind == RecordKind::Same {
            out.truncate(start);
            o.len = 0;
            return Ok(o);
        }
        put_varint_exact(&mut out[start..start + head_len], gap << 2 | o.kind as u64);
        o.len += head_len;
        self.next = page_num + 1;
        Ok(o)
    }
}

/// A batch of one record: `BatchEncoder::new().encode(..)`.
pub fn encode_page_record(page_num: u64, page: &Page, shadow: Option<&Page>, out: &mut Vec<u8>) -> Result<EncodeOutcome, DeltaError> {
    BatchEncoder::new().encode(page_num, page, shadow, out)
}

/// Writes `v` as LEB128 filling exactly `dst` (whose length is
/// `varint_len(v)`).
fn put_varint_exact(dst: &mut [u8], mut v: u64) {
    let n = dst.len();
    for (i, b) in dst.iter_mut().enumerate() {
        *b = (v as u8 & 0x7F) | if i + 1 < n { 0x80 } else { 0 };
        v >>= 7;
    }
}

/// Encodes `page` against a shadow whose hash is known and appends the
/// record body (hash, payload; nothing for `Same`) to `out`.
pub fn encode_with(page: &Page, shadow: Option<Shadow<'_>>, out: &mut Vec<u8>) -> EncodeOutcome {
    let Some(shadow) = shadow else {
        if simd::is_zero(page) {
            return push_bare(out, RecordKind::Zero, ZERO_PAGE_HASH, 0);
        }
        return push_full(out, page, hash_page(page), PAGE_SIZE);
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if simd::has_avx2_bits() {
        // SAFETY: has_avx2_bits() checked CPUID for AVX2, POPCNT, LZCNT and
        // BMI1, and that the OS saves YMM state.
        return unsafe { encode_shadowed_avx2(page, shadow, out) };
    }
    encode_shadowed(page, shadow, out)
}

/// `encode_shadowed` compiled for AVX2 and the bit instructions the mask
/// walk uses (POPCNT, LZCNT, TZCNT): without them `count_ones` is a dozen
/// instructions.
///
/// # Safety
/// The CPU must have AVX2, POPCNT, LZCNT and BMI1, and the OS must save
/// YMM state.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx2,popcnt,lzcnt,bmi1")]
unsafe fn encode_shadowed_avx2(page: &Page, shadow: Shadow<'_>, out: &mut Vec<u8>) -> EncodeOutcome {
    encode_shadowed(page, shadow, out)
}

#[inline(always)]
fn encode_shadowed(page: &Page, shadow: Shadow<'_>, out: &mut Vec<u8>) -> EncodeOutcome {
    // Entries of equal blocks are not written and not read.
    let mut masks = [0u64; PAGE_SIZE / 64];
    let blocks = simd::page_masks(page, shadow.page, &mut masks);
    if blocks == 0 {
        return EncodeOutcome { kind: RecordKind::Same, changed_bytes: 0, hash: shadow.hash, len: 0 };
    }
    encode_changed(page, shadow, blocks, &masks, out)
}

fn push_bare(out: &mut Vec<u8>, kind: RecordKind, hash: u64, changed: usize) -> EncodeOutcome {
    out.extend_from_slice(&hash.to_le_bytes());
    EncodeOutcome { kind, changed_bytes: changed, hash, len: HASH_LEN }
}

fn push_full(out: &mut Vec<u8>, page: &Page, hash: u64, changed: usize) -> EncodeOutcome {
    out.reserve(HASH_LEN + PAGE_SIZE);
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(page);
    EncodeOutcome { kind: RecordKind::Full, changed_bytes: changed, hash, len: HASH_LEN + PAGE_SIZE }
}

/// Changed words above which one pass of `hash_page` is cheaper than
/// updating the hash word by word (measured: ~170 ns for the page vs ~1.5 ns
/// per update).
const MAX_HASH_UPDATES: usize = 96;

/// Slack after the run bytes: a run write stores its two varints as two
/// bytes each and short runs as one 8-byte copy before trimming.
const RUN_SLACK: usize = 12;

#[inline(always)]
fn encode_changed(page: &Page, shadow: Shadow<'_>, blocks: u16, masks: &[u64; PAGE_SIZE / 64], out: &mut Vec<u8>) -> EncodeOutcome {
    // One walk over the changed blocks counts changed bytes, changed words
    // and maximal runs (a run starts at a set bit whose lower neighbour,
    // carried across masks, is clear).
    let (mut changed, mut words, mut starts) = (0usize, 0usize, 0usize);
    let mut bits = blocks;
    let mut prev_top = 0u64; // bit 63 of the previous mask, if adjacent
    let mut prev_idx = usize::MAX;
    while bits != 0 {
        let j = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        for k in 0..4 {
            let idx = 4 * j + k;
            let m = masks[idx];
            let carry = if prev_idx.wrapping_add(1) == idx { prev_top } else { 0 };
            changed += m.count_ones() as usize;
            words += simd::byte_mask(m).count_ones() as usize;
            starts += (m & !(m << 1 | carry)).count_ones() as usize;
            prev_top = m >> 63;
            prev_idx = idx;
        }
    }
    if changed > MAX_RUN_BYTES {
        // The runs alone would not beat a whole page.
        if simd::is_zero(page) {
            return push_bare(out, RecordKind::Zero, ZERO_PAGE_HASH, changed);
        }
        return push_full(out, page, hash_page(page), changed);
    }

    // Run bytes are at most XBZRLE's for the page, which is at most the
    // changed bytes plus 4 header bytes per maximal run (skip and length
    // are below 2^14); past MAX_RUN_BYTES the page goes Full anyway.
    let cap = (changed + 4 * starts).min(MAX_RUN_BYTES + 1);
    let rec_start = out.len();
    let runs_start = rec_start + HASH_LEN + 2;
    out.resize(runs_start + cap + RUN_SLACK, 0);

    let incremental = words <= MAX_HASH_UPDATES;
    let mut hash = shadow.hash;
    let (run_bytes, overflow) = {
        let mut runs = Runs::new(&mut out[runs_start..], page, cap);
        let mut bits = blocks;
        'blocks: while bits != 0 {
            let j = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            for (k, &m) in masks[4 * j..4 * j + 4].iter().enumerate() {
                if m == 0 {
                    continue;
                }
                let base = j * simd::BLOCK + k * 64;
                if incremental {
                    // One update per changed word of these 64 bytes.
                    let mut wm = simd::byte_mask(m) as u32;
                    while wm != 0 {
                        let idx = base / 8 + wm.trailing_zeros() as usize;
                        wm &= wm - 1;
                        hash = hash_update(hash, idx, read_word(shadow.page, idx), read_word(page, idx));
                    }
                }
                runs.add_mask(base, m);
                if runs.overflow {
                    break 'blocks;
                }
            }
        }
        runs.finish();
        (runs.pos, runs.overflow)
    };
    if !incremental || overflow {
        hash = hash_page(page);
    }

    if hash == ZERO_PAGE_HASH && simd::is_zero(page) {
        out.truncate(rec_start);
        return push_bare(out, RecordKind::Zero, hash, changed);
    }
    if overflow || run_bytes > MAX_RUN_BYTES {
        out.truncate(rec_start);
        return push_full(out, page, hash, changed);
    }
    out[rec_start..rec_start + HASH_LEN].copy_from_slice(&hash.to_le_bytes());
    out.truncate(runs_start + run_bytes);
    if run_bytes < 0x80 {
        // One-byte length: close the gap left for two.
        out[runs_start - 2] = run_bytes as u8;
        out.copy_within(runs_start.., runs_start - 1);
        out.pop();
    } else {
        // run_bytes <= MAX_RUN_BYTES < 2^14: exactly two bytes.
        out[runs_start - 2] = (run_bytes as u8 & 0x7F) | 0x80;
        out[runs_start - 1] = (run_bytes >> 7) as u8;
    }
    EncodeOutcome { kind: RecordKind::Delta, changed_bytes: changed, hash, len: out.len() - rec_start }
}

/// Builds the runs of one Delta into a slice of the output.
struct Runs<'a> {
    buf: &'a mut [u8],
    /// Run bytes written.
    pos: usize,
    /// Run bytes allowed (`buf` has RUN_SLACK more).
    cap: usize,
    page: &'a Page,
    /// End of the last run written: the next skip counts from here.
    written_end: usize,
    /// Merged run waiting to be written (`has_pending`).
    pending: (usize, usize),
    has_pending: bool,
    /// Maximal run of changed bytes being extended (`has_current`).
    current: (usize, usize),
    has_current: bool,
    /// The runs no longer fit: the page goes Full.
    overflow: bool,
}

impl<'a> Runs<'a> {
    fn new(buf: &'a mut [u8], page: &'a Page, cap: usize) -> Self {
        Runs { buf, pos: 0, cap, page, written_end: 0, pending: (0, 0), has_pending: false, current: (0, 0), has_current: false, overflow: false }
    }

    /// Adds the changed bytes of the 64 bytes at offset `base` (mask bit i
    /// = byte base+i changed), one maximal piece at a time.
    #[inline(always)]
    fn add_mask(&mut self, base: usize, mask: u64) {
        // Bridge single unchanged bytes first: a 1-byte gap always costs
        // less merged than apart (vlen(a+1+b) <= vlen(a) + vlen(b)), so
        // `submit` would merge it anyway; doing it on the mask saves a
        // piece per gap (a framebuffer's unchanged alpha bytes).
        let mut m = mask | ((mask << 1) & (mask >> 1));
        while m != 0 {
            let tz = m.trailing_zeros();
            let ones = (!(m >> tz)).trailing_zeros(); // 1..=64 - tz
            self.add(base + tz as usize, ones as usize);
            if tz + ones >= 64 {
                break;
            }
            m &= !0u64 << (tz + ones);
        }
    }

    #[inline(always)]
    fn add(&mut self, pos: usize, len: usize) {
        if self.has_current && self.current.1 == pos {
            self.current.1 += len;
            return;
        }
        if self.has_current {
            self.submit(self.current.0, self.current.1);
        }
        self.current = (pos, pos + len);
        self.has_current = true;
    }

    /// Takes the next maximal run. Merging it into the pending run is chosen
    /// when the merged encoding is no longer than pending + gap header + run
    /// header: each step then adds no more than XBZRLE's zrun/nzrun pair for
    /// the same run, so the total never exceeds XBZRLE's.
    #[inline(always)]
    fn submit(&mut self, s: usize, e: usize) {
        if !self.has_pending {
            self.pending = (s, e);
            self.has_pending = true;
            return;
        }
        let (ps, pe) = self.pending;
        let (gap, l1, l2) = (s - pe, pe - ps, e - s);
        // All lengths are below 2^14 (a page), so a varint is 1 or 2 bytes;
        // merged costs at least gap + 1 and separate at most 6, so only
        // gaps up to 5 can merge.
        let v = |x: usize| 1 + (x >= 0x80) as usize;
        if gap <= 5 && v(l1 + gap + l2) + gap <= v(l1) + v(gap) + v(l2) {
            self.pending = (ps, e);
        } else {
            self.write(ps, pe);
            self.pending = (s, e);
        }
    }

    #[inline(always)]
    fn write(&mut self, s: usize, e: usize) {
        let (skip, len) = (s - self.written_end, e - s);
        // The room a write may touch: two 2-byte varints and at least an
        // 8-byte copy. While the runs fit `cap` it lies within `cap +
        // RUN_SLACK`; when it does not, the runs do not fit. (`pos <=
        // buf.len()` always: each write advances it by less than `need`.)
        let need = 4 + len.max(8);
        if self.buf.len() - self.pos < need || e > PAGE_SIZE {
            self.overflow = true;
            return;
        }
        // Varints of values below 2^14, written as two bytes and counted
        // as one or two: no branch on their size.
        let n1 = 1 + (skip >= 0x80) as usize;
        let n2 = 1 + (len >= 0x80) as usize;
        let h = n1 + n2;
        // SAFETY: pos + need <= buf.len() (checked above), and every store
        // is below pos + need: the varints at pos..pos + 4, the bytes at pos
        // + h .. pos + h + max(len, 8) with h <= 4. Page reads are s..s + 8
        // (checked <= PAGE_SIZE) or s..e (e <= PAGE_SIZE checked above, s <
        // e). Page and buffer are distinct objects (shared vs exclusive
        // borrows), so the copies do not overlap.
        unsafe {
            let d = self.buf.as_mut_ptr().add(self.pos);
            let src = self.page.as_ptr().add(s);
            *d = (skip as u8 & 0x7F) | (((n1 - 1) as u8) << 7);
            *d.add(1) = (skip >> 7) as u8;
            *d.add(n1) = (len as u8 & 0x7F) | (((n2 - 1) as u8) << 7);
            *d.add(n1 + 1) = (len >> 7) as u8;
            if len <= 8 && s + 8 <= PAGE_SIZE {
                // Short run: one fixed 8-byte copy (the excess is
                // overwritten or trimmed), not a variable-length memcpy.
                core::ptr::copy_nonoverlapping(src, d.add(h), 8);
            } else {
                core::ptr::copy_nonoverlapping(src, d.add(h), len);
            }
        }
        self.pos += h + len;
        self.written_end = e;
        if self.pos > self.cap {
            self.overflow = true;
        }
    }

    fn finish(&mut self) {
        if self.has_current {
            self.has_current = false;
            self.submit(self.current.0, self.current.1);
        }
        if self.has_pending && !self.overflow {
            self.has_pending = false;
            self.write(self.pending.0, self.pending.1);
        }
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
    let (hash, record, m) = decode_body((head & 3) as u8, &input[n..])?;
    Ok((PageRecordRef { page_num, hash, record }, n + m))
}

/// Parses a record body of `kind` at the start of `input`: its hash, the
/// record and the bytes it took.
pub fn decode_body(kind: u8, input: &[u8]) -> Result<(u64, RecordRef<'_>, usize), DeltaError> {
    let h = input.get(..HASH_LEN).ok_or(DeltaError::Truncated)?;
    let mut b = [0u8; HASH_LEN];
    b.copy_from_slice(h);
    let hash = u64::from_le_bytes(b);
    let rest = &input[HASH_LEN..];
    match kind {
        0 => Ok((hash, RecordRef::Zero, HASH_LEN)),
        2 => {
            let bytes = rest.get(..PAGE_SIZE).ok_or(DeltaError::Truncated)?;
            let page = <&Page>::try_from(bytes).map_err(|_| DeltaError::Truncated)?;
            Ok((hash, RecordRef::Full(page), HASH_LEN + PAGE_SIZE))
        }
        3 => {
            let (len, n) = read_varint(rest)?;
            if len == 0 || len > PAGE_SIZE as u64 {
                return Err(DeltaError::BadLength);
            }
            let len = len as usize;
            let runs = rest.get(n..n + len).ok_or(DeltaError::Truncated)?;
            Ok((hash, RecordRef::Delta(runs), HASH_LEN + n + len))
        }
        k => Err(DeltaError::BadKind(k)),
    }
}

/// Rebuilds the page a record describes into `out` and checks its hash.
/// `shadow` is this side's copy of the page as last applied. On error `out`
/// holds unspecified content and must not be used.
pub fn apply(shadow: Option<&Page>, rec: &PageRecordRef<'_>, out: &mut Page) -> Result<(), DeltaError> {
    match rec.record {
        RecordRef::Zero => out.fill(0),
        RecordRef::Full(p) => out.copy_from_slice(p),
        RecordRef::Delta(runs) => {
            out.copy_from_slice(shadow.ok_or(DeltaError::MissingShadow)?);
            apply_runs(runs, out)?;
        }
    }
    check_hash(out, rec.hash)
}

/// As `apply`, for a page that holds its shadow on entry (the standby's
/// staging copy). On error the page holds unspecified content.
pub fn apply_in_place(page: &mut Page, rec: &PageRecordRef<'_>) -> Result<(), DeltaError> {
    match rec.record {
        RecordRef::Zero => page.fill(0),
        RecordRef::Full(p) => page.copy_from_slice(p),
        RecordRef::Delta(runs) => apply_runs(runs, page)?,
    }
    check_hash(page, rec.hash)
}

fn check_hash(page: &Page, want: u64) -> Result<(), DeltaError> {
    if hash_page(page) == want {
        Ok(())
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
        assert_eq!(rec.hash, hash_page(page));
        assert_eq!(rec.record.kind(), o.kind);
        let mut back = [0x55u8; PAGE_SIZE];
        apply(shadow, &rec, &mut back).unwrap();
        assert_eq!(&back, page);
        if let Some(s) = shadow {
            let mut inplace = *s;
            apply_in_place(&mut inplace, &rec).unwrap();
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
        let runs = match decode_body(o.kind as u8, &ours).unwrap().1 {
            RecordRef::Delta(r) => r.len(),
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
        // page 1000 (gap 993: a two-byte head).
        assert_eq!(w.encode(3, &zero, None, &mut out).unwrap().len, 1 + 8);
        assert_eq!(out[0], 3 << 2);
        let o = w.encode(4, &a, Some(&a), &mut out).unwrap();
        assert_eq!((o.kind, o.len, out.len()), (RecordKind::Same, 0, 9));
        let o = w.encode(6, &b, Some(&a), &mut out).unwrap();
        assert_eq!(o.kind, RecordKind::Delta);
        assert_eq!(out[9], 2 << 2 | 3);
        let at = out.len();
        let o = w.encode(1000, &a, None, &mut out).unwrap();
        assert_eq!(o.len, 2 + 8 + PAGE_SIZE);
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
        big.extend_from_slice(&ZERO_PAGE_HASH.to_le_bytes());
        assert_eq!(decode_page_record(&big), Err(DeltaError::BadPageNumber));
        let mut last = Vec::new();
        BatchEncoder::new().encode(MAX_PAGE_NUM, &zero, None, &mut last).unwrap();
        last.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0]); // gap 0 after the last page
        let mut d = BatchDecoder::new(&last);
        assert_eq!(d.next_record().unwrap().map(|r| r.page_num), Some(MAX_PAGE_NUM));
        assert_eq!(d.next_record(), Err(DeltaError::BadPageNumber));
    }
}
