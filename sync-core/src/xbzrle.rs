//! QEMU's XBZRLE page encoding, the baseline our delta codec is measured
//! against (benchmarks and tests only; nothing on the wire uses it).
//!
//! Written from the format QEMU documents in `migration/xbzrle.c`:
//!
//! ```text
//! page  = zrun nzrun | zrun nzrun page
//! zrun  = length                 (bytes equal in old and new: XOR is zero)
//! nzrun = length byte...         (bytes that differ, taken from new)
//! length = ULEB128, at most two bytes (values < 2^14)
//! ```
//!
//! Runs are maximal: one equal byte ends a non-zero run. A final zero run is
//! not encoded, an unchanged page encodes to nothing, and an encoding that
//! does not fit the destination (a page, in QEMU) is an overflow: QEMU then
//! sends the page whole.

use crate::page::{Page, PAGE_SIZE};
use alloc::vec::Vec;

/// What XBZRLE produced for one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XbzrleOutcome {
    /// The page is unchanged; QEMU sends nothing for it.
    Unchanged,
    /// `n` encoded bytes were appended.
    Encoded(usize),
    /// The encoding would exceed the limit; the page goes whole.
    Overflow,
}

/// Decoding errors (QEMU's -1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XbzrleError {
    Truncated,
    BadLength,
    ZeroRunInside,
    EmptyRun,
    PastPage,
}

/// Encodes `new` against `old` into `out`, failing as QEMU does when the
/// encoding would pass `limit` bytes (QEMU uses the page size). On overflow
/// nothing is appended. Like QEMU's, it scans a word at a time where it can
/// (equal words in zero runs; words without an equal byte in non-zero runs),
/// so its speed is a fair baseline too.
pub fn encode(old: &Page, new: &Page, limit: usize, out: &mut Vec<u8>) -> XbzrleOutcome {
    let start = out.len();
    let mut d = 0usize; // bytes encoded so far, as QEMU counts them
    let mut i = 0usize;
    while i < PAGE_SIZE {
        // QEMU checks room for two length bytes before each run.
        if d + 2 > limit {
            out.truncate(start);
            return XbzrleOutcome::Overflow;
        }
        let zrun_start = i;
        i = skip_equal(old, new, i);
        if zrun_start == 0 && i == PAGE_SIZE {
            return XbzrleOutcome::Unchanged;
        }
        if i == PAGE_SIZE {
            break; // the last zero run is not encoded
        }
        d += push_uleb(out, (i - zrun_start) as u32);
        if d + 2 > limit {
            out.truncate(start);
            return XbzrleOutcome::Overflow;
        }
        let nz_start = i;
        i = skip_different(old, new, i);
        let n = i - nz_start;
        d += push_uleb(out, n as u32);
        if d + n > limit {
            out.truncate(start);
            return XbzrleOutcome::Overflow;
        }
        out.extend_from_slice(&new[nz_start..i]);
        d += n;
    }
    XbzrleOutcome::Encoded(d)
}

fn word(p: &Page, i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[i..i + 8]);
    u64::from_le_bytes(b)
}

/// First index at or after `i` where the pages differ (or the page end).
fn skip_equal(old: &Page, new: &Page, mut i: usize) -> usize {
    while !i.is_multiple_of(8) && i < PAGE_SIZE && old[i] == new[i] {
        i += 1;
    }
    if i.is_multiple_of(8) {
        while i < PAGE_SIZE && word(old, i) == word(new, i) {
            i += 8;
        }
        while i < PAGE_SIZE && old[i] == new[i] {
            i += 1;
        }
    }
    i
}

/// First index at or after `i` where the pages are equal (or the page end).
fn skip_different(old: &Page, new: &Page, mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while !i.is_multiple_of(8) && i < PAGE_SIZE && old[i] != new[i] {
        i += 1;
    }
    if i.is_multiple_of(8) {
        while i < PAGE_SIZE {
            let x = word(old, i) ^ word(new, i);
            // Some byte of x is zero: the run ends inside this word.
            if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
                break;
            }
            i += 8;
        }
        while i < PAGE_SIZE && old[i] != new[i] {
            i += 1;
        }
    }
    i
}

/// Applies an encoding to `page`, which holds the old content on entry.
/// Returns how many bytes of the page the runs reached.
pub fn decode(src: &[u8], page: &mut Page) -> Result<usize, XbzrleError> {
    let mut i = 0usize;
    let mut d = 0usize;
    while i < src.len() {
        let (zrun, used) = read_uleb(&src[i..])?;
        if i > 0 && zrun == 0 {
            return Err(XbzrleError::ZeroRunInside);
        }
        i += used;
        d += zrun as usize;
        if d > PAGE_SIZE {
            return Err(XbzrleError::PastPage);
        }
        let (n, used) = read_uleb(&src[i..])?;
        if n == 0 {
            return Err(XbzrleError::EmptyRun);
        }
        i += used;
        let n = n as usize;
        if d + n > PAGE_SIZE {
            return Err(XbzrleError::PastPage);
        }
        let bytes = src.get(i..i + n).ok_or(XbzrleError::Truncated)?;
        page[d..d + n].copy_from_slice(bytes);
        d += n;
        i += n;
    }
    Ok(d)
}

/// ULEB128 of a value below 2^14, as QEMU's `uleb128_encode_small`.
fn push_uleb(out: &mut Vec<u8>, v: u32) -> usize {
    if v < 0x80 {
        out.push(v as u8);
        1
    } else {
        out.push((v & 0x7F) as u8 | 0x80);
        out.push((v >> 7) as u8);
        2
    }
}

/// Reads a length of at most two bytes (QEMU's `uleb128_decode_small`).
fn read_uleb(src: &[u8]) -> Result<(u32, usize), XbzrleError> {
    let b0 = *src.first().ok_or(XbzrleError::Truncated)?;
    if b0 & 0x80 == 0 {
        return Ok((b0 as u32, 1));
    }
    let b1 = *src.get(1).ok_or(XbzrleError::Truncated)?;
    if b1 & 0x80 != 0 {
        return Err(XbzrleError::BadLength);
    }
    Ok(((b0 & 0x7F) as u32 | (b1 as u32) << 7, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        let old = [0u8; PAGE_SIZE];
        let mut new = old;
        let mut out = Vec::new();
        assert_eq!(encode(&old, &new, PAGE_SIZE, &mut out), XbzrleOutcome::Unchanged);
        assert!(out.is_empty());
        new[0] = 9;
        new[2] = 8;
        new[300] = 7;
        assert_eq!(encode(&old, &new, PAGE_SIZE, &mut out), XbzrleOutcome::Encoded(10));
        // zrun 0, nzrun 1 [9], zrun 1, nzrun 1 [8], zrun 297 (two bytes), nzrun 1 [7]
        assert_eq!(out, [0, 1, 9, 1, 1, 8, 0xA9, 0x02, 1, 7]);
        let mut page = old;
        assert_eq!(decode(&out, &mut page), Ok(301));
        assert_eq!(page, new);
    }

    #[test]
    fn rewritten_page_overflows() {
        let old = [0u8; PAGE_SIZE];
        let new = [1u8; PAGE_SIZE];
        let mut out = Vec::new();
        assert_eq!(encode(&old, &new, PAGE_SIZE, &mut out), XbzrleOutcome::Overflow);
        assert!(out.is_empty());
        // Alternating bytes: 2048 runs of 1 byte cost 3 bytes each.
        let alt: Page = core::array::from_fn(|i| (i % 2) as u8);
        assert_eq!(encode(&old, &alt, PAGE_SIZE, &mut out), XbzrleOutcome::Overflow);
    }

    /// The encoding by definition: maximal runs, one byte at a time.
    fn bytewise(old: &Page, new: &Page) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < PAGE_SIZE {
            let z = i;
            while i < PAGE_SIZE && old[i] == new[i] {
                i += 1;
            }
            if i == PAGE_SIZE {
                break;
            }
            push_uleb(&mut out, (i - z) as u32);
            let n = i;
            while i < PAGE_SIZE && old[i] != new[i] {
                i += 1;
            }
            push_uleb(&mut out, (i - n) as u32);
            out.extend_from_slice(&new[n..i]);
        }
        out
    }

    #[test]
    fn word_scans_match_the_bytewise_definition() {
        let mut x = 0x9E37_79B9u32;
        let mut r = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..500 {
            let old: Page = core::array::from_fn(|_| r() as u8 & 3);
            let mut new = old;
            for _ in 0..(r() % 60) {
                let at = (r() as usize) % PAGE_SIZE;
                let len = (r() as usize % 40).min(PAGE_SIZE - at);
                for b in &mut new[at..at + len] {
                    *b = r() as u8 & 3;
                }
            }
            let want = bytewise(&old, &new);
            let mut got = Vec::new();
            match encode(&old, &new, 1 << 20, &mut got) {
                XbzrleOutcome::Unchanged => assert!(want.is_empty()),
                XbzrleOutcome::Encoded(n) => {
                    assert_eq!(n, got.len());
                    assert_eq!(got, want);
                }
                XbzrleOutcome::Overflow => panic!("limit is large"),
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut page = [0u8; PAGE_SIZE];
        assert_eq!(decode(&[0x80], &mut page), Err(XbzrleError::Truncated));
        assert_eq!(decode(&[0x80, 0x80], &mut page), Err(XbzrleError::BadLength));
        assert_eq!(decode(&[0, 0], &mut page), Err(XbzrleError::EmptyRun));
        assert_eq!(decode(&[0, 1, 5, 0, 1, 5], &mut page), Err(XbzrleError::ZeroRunInside));
        assert_eq!(decode(&[0x80, 0x20, 1, 1], &mut page), Err(XbzrleError::PastPage));
        assert_eq!(decode(&[0, 3, 1], &mut page), Err(XbzrleError::Truncated));
    }
}
