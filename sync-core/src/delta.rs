//! The delta codec: a page against its shadow becomes one record.
//!
//! ```text
//! page record = page number (varint)  record
//! record      = kind (u8)  hash (u64 LE, page_hash of the resulting page)  payload
//!   kind 0 Zero   no payload              the page is all zero
//!   kind 1 Same   no payload              written, but equal to the shadow
//!   kind 2 Full   4096 bytes              no shadow, or a delta would not be smaller
//!   kind 3 Delta  length (varint)  runs   the bytes that changed
//! runs        = (skip varint, length varint, bytes)*  skip counts from the end
//!               of the previous run (from 0 for the first); length >= 1
//! varint      = LEB128, little-endian groups of 7 bits
//! ```
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
//! of rehashing the page. An unchanged page costs about one `memcmp`; each
//! changed region adds a run (measured: 20 to 30 ns each on the host).

use crate::page::{hash_page, hash_update, read_word, Page, PAGE_SIZE, ZERO_PAGE_HASH};
use crate::simd;
use alloc::vec::Vec;

/// Bytes before a record's payload: kind and hash.
pub const RECORD_HEADER: usize = 1 + 8;
/// Most bytes one `encode_page_record` appends (10-byte page number, header,
/// whole page).
pub const MAX_PAGE_RECORD: usize = 10 + RECORD_HEADER + PAGE_SIZE;
/// Most run bytes a Delta may hold: with its 2-byte length it must stay
/// smaller than a Full payload, else the page goes Full.
const MAX_RUN_BYTES: usize = PAGE_SIZE - 3;

/// The four kinds of record.
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

/// What `encode` appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOutcome {
    pub kind: RecordKind,
    /// Bytes that differ from the shadow (4096 for a non-zero page without
    /// one, 0 for a zero page without one).
    pub changed_bytes: usize,
    /// page_hash of the page: store it with the new shadow.
    pub hash: u64,
    /// Bytes appended to `out`.
    pub len: usize,
}

/// A parsed record, borrowing its payload from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordRef<'a> {
    Zero,
    Same,
    Full(&'a Page),
    /// The encoded runs.
    Delta(&'a [u8]),
}

impl RecordRef<'_> {
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordRef::Zero => RecordKind::Zero,
            RecordRef::Same => RecordKind::Same,
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

/// Why a record could not be parsed or applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaError {
    /// The input ends inside the record.
    Truncated,
    /// Unknown kind byte.
    BadKind(u8),
    /// A varint longer than its type allows.
    BadVarint,
    /// A Delta whose length is zero or more than a page.
    BadLength,
    /// Same or Delta, but there is no shadow to apply it to.
    MissingShadow,
    /// A run of length zero.
    EmptyRun,
    /// A run reaching past the end of the page.
    RunPastPage,
    /// The applied page does not have the record's hash.
    HashMismatch,
}

/// Encodes `page` against `shadow` (hashing the shadow: `encode_with` takes
/// a known hash and is faster) and appends one record to `out`.
pub fn encode(page: &Page, shadow: Option<&Page>, out: &mut Vec<u8>) -> EncodeOutcome {
    let shadow = shadow.map(|p| Shadow {
        page: p,
        hash: hash_page(p),
    });
    encode_with(page, shadow, out)
}

/// `encode` preceded by the page number: the unit batched into an epoch.
pub fn encode_page_record(
    page_num: u64,
    page: &Page,
    shadow: Option<&Page>,
    out: &mut Vec<u8>,
) -> EncodeOutcome {
    let shadow = shadow.map(|p| Shadow {
        page: p,
        hash: hash_page(p),
    });
    encode_page_record_with(page_num, page, shadow, out)
}

/// `encode_page_record` with the shadow's hash known.
pub fn encode_page_record_with(
    page_num: u64,
    page: &Page,
    shadow: Option<Shadow<'_>>,
    out: &mut Vec<u8>,
) -> EncodeOutcome {
    let n = push_varint(out, page_num);
    let mut o = encode_with(page, shadow, out);
    o.len += n;
    o
}

/// Encodes `page` against a shadow whose hash is known and appends one
/// record to `out`.
pub fn encode_with(page: &Page, shadow: Option<Shadow<'_>>, out: &mut Vec<u8>) -> EncodeOutcome {
    let Some(shadow) = shadow else {
        if simd::is_zero(page) {
            return push_bare(out, RecordKind::Zero, ZERO_PAGE_HASH, 0);
        }
        return push_full(out, page, hash_page(page), PAGE_SIZE);
    };
    let mut masks = [0u64; PAGE_SIZE / 64];
    let blocks = simd::page_masks(page, shadow.page, &mut masks);
    if blocks == 0 {
        return push_bare(out, RecordKind::Same, shadow.hash, 0);
    }
    encode_changed(page, shadow, blocks, &masks, out)
}

fn push_bare(out: &mut Vec<u8>, kind: RecordKind, hash: u64, changed: usize) -> EncodeOutcome {
    out.push(kind as u8);
    out.extend_from_slice(&hash.to_le_bytes());
    EncodeOutcome {
        kind,
        changed_bytes: changed,
        hash,
        len: RECORD_HEADER,
    }
}

fn push_full(out: &mut Vec<u8>, page: &Page, hash: u64, changed: usize) -> EncodeOutcome {
    out.reserve(RECORD_HEADER + PAGE_SIZE);
    out.push(RecordKind::Full as u8);
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(page);
    EncodeOutcome {
        kind: RecordKind::Full,
        changed_bytes: changed,
        hash,
        len: RECORD_HEADER + PAGE_SIZE,
    }
}

/// Changed words above which one pass of `hash_page` is cheaper than
/// updating the hash word by word (measured: ~170 ns for the page vs ~1.5 ns
/// per update).
const MAX_HASH_UPDATES: usize = 96;

fn encode_changed(
    page: &Page,
    shadow: Shadow<'_>,
    blocks: u16,
    masks: &[u64; PAGE_SIZE / 64],
    out: &mut Vec<u8>,
) -> EncodeOutcome {
    // Masks of equal blocks are zero (encode_with zeroes the array), so a
    // dense page is counted without branches, which vectorises.
    let changed = if blocks == u16::MAX {
        masks.iter().map(|m| m.count_ones() as usize).sum()
    } else {
        let mut n = 0usize;
        let mut bits = blocks;
        while bits != 0 {
            let j = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            n += masks[4 * j..4 * j + 4]
                .iter()
                .map(|m| m.count_ones() as usize)
                .sum::<usize>();
        }
        n
    };
    if changed > MAX_RUN_BYTES {
        // The runs alone would not beat a whole page.
        if simd::is_zero(page) {
            return push_bare(out, RecordKind::Zero, ZERO_PAGE_HASH, changed);
        }
        return push_full(out, page, hash_page(page), changed);
    }

    let rec_start = out.len();
    out.reserve(RECORD_HEADER + 2 + PAGE_SIZE + 16);
    out.push(RecordKind::Delta as u8);
    out.extend_from_slice(&[0; 8]); // hash, patched below
    out.extend_from_slice(&[0; 2]); // length, patched below
    let runs_start = out.len();

    let mut changed_words = 0usize;
    let mut bits = blocks;
    while bits != 0 {
        let j = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        for &m in &masks[4 * j..4 * j + 4] {
            if m != 0 {
                changed_words += simd::byte_mask(m).count_ones() as usize;
            }
        }
    }
    let incremental = changed_words <= MAX_HASH_UPDATES;
    let mut hash = shadow.hash;
    let mut runs = Runs::new(out, page, runs_start);
    let mut bits = blocks;
    while bits != 0 {
        let j = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        for (k, &m) in masks[4 * j..4 * j + 4].iter().enumerate() {
            if m == 0 {
                continue;
            }
            let base = j * simd::BLOCK + k * 64;
            if incremental {
                // One update per changed word of these 64 bytes.
                let mut words = m;
                while words != 0 {
                    let w = words.trailing_zeros() as usize / 8;
                    words &= !(0xFFu64 << (8 * w));
                    let idx = base / 8 + w;
                    hash =
                        hash_update(hash, idx, read_word(shadow.page, idx), read_word(page, idx));
                }
            }
            runs.add_mask(base, m);
            if runs.overflow {
                break;
            }
        }
        if runs.overflow {
            break;
        }
    }
    runs.finish();
    let overflow = runs.overflow;
    if !incremental || overflow {
        hash = hash_page(page);
    }

    if hash == ZERO_PAGE_HASH && simd::is_zero(page) {
        out.truncate(rec_start);
        return push_bare(out, RecordKind::Zero, hash, changed);
    }
    if overflow {
        out.truncate(rec_start);
        return push_full(out, page, hash, changed);
    }
    out[rec_start + 1..rec_start + 9].copy_from_slice(&hash.to_le_bytes());
    let run_bytes = out.len() - runs_start;
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
    EncodeOutcome {
        kind: RecordKind::Delta,
        changed_bytes: changed,
        hash,
        len: out.len() - rec_start,
    }
}

/// Builds the runs of one Delta straight into the output.
struct Runs<'a> {
    out: &'a mut Vec<u8>,
    page: &'a Page,
    runs_start: usize,
    /// End of the last run written: the next skip counts from here.
    written_end: usize,
    /// Merged run waiting to be written.
    pending: Option<(usize, usize)>,
    /// Maximal run of changed bytes being extended.
    current: Option<(usize, usize)>,
    /// The runs no longer fit: the page goes Full.
    overflow: bool,
}

impl<'a> Runs<'a> {
    fn new(out: &'a mut Vec<u8>, page: &'a Page, runs_start: usize) -> Self {
        Runs {
            out,
            page,
            runs_start,
            written_end: 0,
            pending: None,
            current: None,
            overflow: false,
        }
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
        match &mut self.current {
            Some((_, end)) if *end == pos => *end += len,
            _ => {
                if let Some((s, e)) = self.current {
                    self.submit(s, e);
                }
                self.current = Some((pos, pos + len));
            }
        }
    }

    /// Takes the next maximal run. Merging it into the pending run is chosen
    /// when the merged encoding is no longer than pending + gap header + run
    /// header: each step then adds no more than XBZRLE's zrun/nzrun pair for
    /// the same run, so the total never exceeds XBZRLE's.
    #[inline(always)]
    fn submit(&mut self, s: usize, e: usize) {
        let Some((ps, pe)) = self.pending else {
            self.pending = Some((s, e));
            return;
        };
        let (gap, l1, l2) = (s - pe, pe - ps, e - s);
        let separate = varint_len(l1 as u64) + varint_len(gap as u64) + varint_len(l2 as u64);
        let merged = varint_len((l1 + gap + l2) as u64) + gap;
        if merged <= separate {
            self.pending = Some((ps, e));
        } else {
            self.write(ps, pe);
            self.pending = Some((s, e));
        }
    }

    #[inline(always)]
    fn write(&mut self, s: usize, e: usize) {
        if self.overflow {
            return;
        }
        push_varint(self.out, (s - self.written_end) as u64);
        push_varint(self.out, (e - s) as u64);
        if e - s <= 8 && s + 8 <= PAGE_SIZE {
            // Short run: one fixed 8-byte copy, then drop the excess, instead
            // of a variable-length memcpy call.
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.page[s..s + 8]);
            let keep = self.out.len() + (e - s);
            self.out.extend_from_slice(&w);
            self.out.truncate(keep);
        } else {
            self.out.extend_from_slice(&self.page[s..e]);
        }
        self.written_end = e;
        if self.out.len() - self.runs_start > MAX_RUN_BYTES {
            self.overflow = true;
        }
    }

    fn finish(&mut self) {
        if let Some((s, e)) = self.current.take() {
            self.submit(s, e);
        }
        if let Some((s, e)) = self.pending.take() {
            self.write(s, e);
        }
    }
}

/// Parses one page record at the start of `input`. Returns the record and
/// the bytes it took. Checks lengths and kinds; runs are checked by `apply`.
pub fn decode_page_record(input: &[u8]) -> Result<(PageRecordRef<'_>, usize), DeltaError> {
    let (page_num, n) = read_varint(input)?;
    let (hash, record, m) = decode_record(&input[n..])?;
    Ok((
        PageRecordRef {
            page_num,
            hash,
            record,
        },
        n + m,
    ))
}

/// Parses one record (no page number) at the start of `input`: its hash,
/// the record and the bytes it took.
pub fn decode_record(input: &[u8]) -> Result<(u64, RecordRef<'_>, usize), DeltaError> {
    let header = input.get(..RECORD_HEADER).ok_or(DeltaError::Truncated)?;
    let mut h = [0u8; 8];
    h.copy_from_slice(&header[1..]);
    let hash = u64::from_le_bytes(h);
    let rest = &input[RECORD_HEADER..];
    match header[0] {
        0 => Ok((hash, RecordRef::Zero, RECORD_HEADER)),
        1 => Ok((hash, RecordRef::Same, RECORD_HEADER)),
        2 => {
            let bytes = rest.get(..PAGE_SIZE).ok_or(DeltaError::Truncated)?;
            let page = <&Page>::try_from(bytes).map_err(|_| DeltaError::Truncated)?;
            Ok((hash, RecordRef::Full(page), RECORD_HEADER + PAGE_SIZE))
        }
        3 => {
            let (len, n) = read_varint(rest)?;
            if len == 0 || len > PAGE_SIZE as u64 {
                return Err(DeltaError::BadLength);
            }
            let len = len as usize;
            let runs = rest.get(n..n + len).ok_or(DeltaError::Truncated)?;
            Ok((hash, RecordRef::Delta(runs), RECORD_HEADER + n + len))
        }
        k => Err(DeltaError::BadKind(k)),
    }
}

/// Rebuilds the page a record describes into `out` and checks its hash.
/// `shadow` is this side's copy of the page as last applied. On error `out`
/// holds unspecified content and must not be used.
pub fn apply(
    shadow: Option<&Page>,
    rec: &PageRecordRef<'_>,
    out: &mut Page,
) -> Result<(), DeltaError> {
    match rec.record {
        RecordRef::Zero => out.fill(0),
        RecordRef::Full(p) => out.copy_from_slice(p),
        RecordRef::Same => out.copy_from_slice(shadow.ok_or(DeltaError::MissingShadow)?),
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
        RecordRef::Same => {}
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
        let o = encode_page_record(42, page, shadow, &mut out);
        assert_eq!(out[0], 0xEE);
        assert_eq!(o.len, out.len() - 1);
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
        assert_eq!(
            (o.kind, o.changed_bytes, bytes.len()),
            (RecordKind::Same, 0, 1 + 9)
        );
        // A page zeroed over data: Zero beats any delta.
        let (o, _) = round_trip(&zero, Some(&data));
        assert_eq!(o.kind, RecordKind::Zero);
        assert_eq!(o.changed_bytes, data.iter().filter(|&&b| b != 0).count());
        // Rewritten whole: Full, with the real count of changed bytes.
        let other = pattern(2);
        let (o, _) = round_trip(&other, Some(&data));
        assert_eq!(o.kind, RecordKind::Full);
        assert_eq!(
            o.changed_bytes,
            data.iter().zip(&other).filter(|(a, b)| a != b).count()
        );
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
        let mut want = vec![3u8];
        want.extend_from_slice(&hash_page(&page).to_le_bytes());
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
        let runs = match decode_record(&ours).unwrap().1 {
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
        let runs = o.len - RECORD_HEADER - 2; // 2-byte Delta length
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
        encode_page_record(7, &page, Some(&shadow), &mut out);
        let (rec, _) = decode_page_record(&out).unwrap();
        let mut buf = [0u8; PAGE_SIZE];
        assert_eq!(apply(None, &rec, &mut buf), Err(DeltaError::MissingShadow));
        // A different base: the hash finds it.
        let mut other = shadow;
        other[5] ^= 1;
        assert_eq!(
            apply(Some(&other), &rec, &mut buf),
            Err(DeltaError::HashMismatch)
        );
        for cut in 0..out.len() {
            assert!(decode_page_record(&out[..cut]).is_err(), "cut {cut}");
        }
        let mut bad = out.clone();
        bad[1] = 9;
        assert_eq!(
            decode_page_record(&bad).unwrap_err(),
            DeltaError::BadKind(9)
        );
        // Runs past the page and empty runs.
        let hdr = |runs: &[u8]| {
            let mut r = vec![0u8, 3];
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
        let mut zero_len = vec![0u8, 3];
        zero_len.extend_from_slice(&[0; 8]);
        zero_len.push(0);
        assert_eq!(
            decode_page_record(&zero_len).unwrap_err(),
            DeltaError::BadLength
        );
    }
}
