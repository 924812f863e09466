//! Guest pages and the page hash every sync record carries.
//!
//! The hash is *linear over words*: `page_hash(p) = Σ term(i, word_i)` mod
//! 2^64, each term mixing the word with a per-position key. So when a delta
//! changes a few words, the hash of the new page is the shadow's hash plus
//! the few changed terms (`simd::page_diff` finds them while it compares):
//! the encoder never rereads the whole page to hash it. A whole-page hash costs several compares of the two pages (measured
//! on the host, 4 KiB: `memcmp` 58 ns, xxh3_64 193 ns, this hash 140 ns
//! with AVX2), so with xxh3 (or this hash taken whole) an unchanged page
//! could not be encoded at `memcmp` speed. Whole-page hashing remains for
//! Full pages, for dense changes, and on the standby after applying.
//!
//! The term is xxh3's accumulate step without its periodic scramble (the
//! scramble is what makes xxh3 non-linear): `rotl32(w) + lo32(w^k) *
//! hi32(w^k)`. The `rotl32(w)` part keeps every change of a single word
//! visible even when the product ignores it. The hash finds divergence
//! (a missed write, a wrong base); it is not a MAC: the wire's AEAD is what
//! stops an attacker.

/// Size of a guest page, the unit of dirty tracking and of sync records.
pub const PAGE_SIZE: usize = 4096;

/// One guest page.
pub type Page = [u8; PAGE_SIZE];

/// Words (u64) in a page.
pub const PAGE_WORDS: usize = PAGE_SIZE / 8;

/// A page on a page boundary, as guest pages are: a shadow kept this way
/// is read with no load split across two cache lines (a 4 KiB buffer from
/// a general allocator is often only 16-byte aligned, and then every other
/// 32-byte load of a compare spans two lines).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct AlignedPage(pub Page);

impl AlignedPage {
    pub const ZERO: AlignedPage = AlignedPage([0; PAGE_SIZE]);
}

impl core::ops::Deref for AlignedPage {
    type Target = Page;
    fn deref(&self) -> &Page {
        &self.0
    }
}

impl core::ops::DerefMut for AlignedPage {
    fn deref_mut(&mut self) -> &mut Page {
        &mut self.0
    }
}

impl core::fmt::Debug for AlignedPage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AlignedPage({:#x})", page_hash(&self.0))
    }
}

/// The all-zero page, for comparisons and as a source to copy from.
pub static ZERO_PAGE: Page = [0u8; PAGE_SIZE];

/// Per-position keys, one per word of a page (splitmix64 of the index), so
/// equal words at different positions hash differently and moved data is
/// seen.
static KEYS: [u64; PAGE_WORDS] = make_keys();

const fn make_keys() -> [u64; PAGE_WORDS] {
    let mut keys = [0u64; PAGE_WORDS];
    let mut state: u64 = 0x5653_796e_6348_6173; // "VSynCHas"
    let mut i = 0;
    while i < PAGE_WORDS {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        keys[i] = z ^ (z >> 31);
        i += 1;
    }
    keys
}

/// Key for word `index`; inputs longer than a page reuse the table, salted
/// by which page-sized span the word is in.
#[inline(always)]
fn key(index: usize) -> u64 {
    let span = (index / PAGE_WORDS) as u64;
    KEYS[index % PAGE_WORDS] ^ span.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// The contribution of one word at one word index to the hash.
#[inline(always)]
fn mix(key: u64, word: u64) -> u64 {
    let x = word ^ key;
    word.rotate_left(32).wrapping_add((x & 0xFFFF_FFFF).wrapping_mul(x >> 32))
}

/// The contribution of word `index` holding `word` (little-endian u64 at
/// byte offset `8 * index`).
#[inline(always)]
pub fn word_term(index: usize, word: u64) -> u64 {
    mix(key(index), word)
}

/// The hash after word `index` changed from `old` to `new`.
#[inline(always)]
pub fn hash_update(hash: u64, index: usize, old: u64, new: u64) -> u64 {
    let k = key(index);
    hash.wrapping_sub(mix(k, old)).wrapping_add(mix(k, new))
}

/// The keys of a page's words: the key of the word at byte offset `o`
/// starts at byte `o` of the table (vectorised `word_term`s).
#[inline(always)]
#[cfg_attr(not(all(target_arch = "x86_64", target_feature = "sse2")), allow(dead_code))]
pub(crate) fn keys() -> &'static [u64; PAGE_WORDS] {
    &KEYS
}

/// The keys of the eight words of 64-byte line `line % 64`, for vectorised
/// `word_term`s (`simd::page_diff`).
#[inline(always)]
#[cfg_attr(not(all(target_arch = "x86_64", target_feature = "sse2")), allow(dead_code))]
pub(crate) fn line_keys(line: usize) -> &'static [u64; 8] {
    let line = line % (PAGE_SIZE / 64);
    // The slice is 8 long: the conversion cannot fail.
    <&[u64; 8]>::try_from(&KEYS[8 * line..8 * line + 8]).unwrap_or(&[0; 8])
}

/// The hash of a page (or of any byte string: a partial last word is
/// zero-padded and the length is mixed in, so trailing zeros count).
pub fn page_hash(bytes: &[u8]) -> u64 {
    let len_term = (bytes.len() as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
    if let Ok(page) = <&Page>::try_from(bytes) {
        return page_hash_page(page).wrapping_add(len_term);
    }
    let mut h = len_term;
    let mut words = bytes.chunks_exact(8);
    let mut i = 0;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = h.wrapping_add(word_term(i, u64::from_le_bytes(b)));
        i += 1;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut b = [0u8; 8];
        b[..tail.len()].copy_from_slice(tail);
        h = h.wrapping_add(word_term(i, u64::from_le_bytes(b)));
    }
    h
}

/// The hash of a whole page without the length term (the length is fixed).
#[inline]
fn page_hash_page(page: &Page) -> u64 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if crate::simd::has_avx2() {
        // SAFETY: has_avx2() checked CPUID and that the OS saves YMM state.
        return unsafe { page_sum_avx2(page) };
    }
    page_sum(page)
}

/// Σ terms over a page. A plain reduction: LLVM vectorises it (SSE2
/// `pmuludq`, AVX2 `vpmuludq`, NEON `umull`) using the vector lanes as
/// independent sums; splitting the sum by hand made it shuffle instead.
#[inline(always)]
fn page_sum(page: &Page) -> u64 {
    let mut acc = 0u64;
    for (c, &k) in page.chunks_exact(8).zip(KEYS.iter()) {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        acc = acc.wrapping_add(mix(k, u64::from_le_bytes(b)));
    }
    acc
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx2")]
unsafe fn page_sum_avx2(page: &Page) -> u64 {
    page_sum(page)
}

/// The hash of a whole page: `page_hash` specialised to `&Page`.
#[inline]
pub fn hash_page(page: &Page) -> u64 {
    page_hash_page(page).wrapping_add(PAGE_LEN_TERM)
}

const PAGE_LEN_TERM: u64 = (PAGE_SIZE as u64).wrapping_mul(0x1656_67B1_9E37_79F9);

/// The hash of the zero page: Σ mix(k_i, 0) + length term, known at compile
/// time (an encoder can tell "maybe zero" from a hash without a scan).
pub const ZERO_PAGE_HASH: u64 = zero_hash();

const fn zero_hash() -> u64 {
    let keys = make_keys();
    let mut h = PAGE_LEN_TERM;
    let mut i = 0;
    while i < PAGE_WORDS {
        // mix(k, 0) = rotl(0) + lo(k) * hi(k)
        h = h.wrapping_add((keys[i] & 0xFFFF_FFFF).wrapping_mul(keys[i] >> 32));
        i += 1;
    }
    h
}

/// Reads word `index` of a page.
#[inline(always)]
pub fn read_word(page: &Page, index: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&page[index * 8..index * 8 + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_hash_matches_hash_page_and_sees_every_byte() {
        let mut p = [0u8; PAGE_SIZE];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let h = hash_page(&p);
        assert_eq!(h, page_hash(&p));
        assert_eq!(h, page_sum(&p).wrapping_add(PAGE_LEN_TERM));
        // Flipping any single bit changes the hash.
        for pos in (0..PAGE_SIZE).step_by(61) {
            for bit in 0..8 {
                let mut q = p;
                q[pos] ^= 1 << bit;
                assert_ne!(hash_page(&q), h, "byte {pos} bit {bit}");
            }
        }
    }

    #[test]
    fn hash_update_equals_rehash() {
        let mut p = [0u8; PAGE_SIZE];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i ^ (i >> 5)) as u8;
        }
        let mut h = hash_page(&p);
        for idx in [0usize, 1, 77, 300, PAGE_WORDS - 1] {
            let old = read_word(&p, idx);
            let new = old ^ 0xDEAD_BEEF_0000_0001u64.rotate_left(idx as u32);
            p[idx * 8..idx * 8 + 8].copy_from_slice(&new.to_le_bytes());
            h = hash_update(h, idx, old, new);
            assert_eq!(h, hash_page(&p));
        }
    }

    #[test]
    fn swapped_or_shifted_words_hash_differently() {
        let mut p = [0u8; PAGE_SIZE];
        p[0..8].copy_from_slice(&1u64.to_le_bytes());
        p[8..16].copy_from_slice(&2u64.to_le_bytes());
        let mut q = [0u8; PAGE_SIZE];
        q[0..8].copy_from_slice(&2u64.to_le_bytes());
        q[8..16].copy_from_slice(&1u64.to_le_bytes());
        assert_ne!(hash_page(&p), hash_page(&q));
        let mut r = [0u8; PAGE_SIZE];
        r[8..16].copy_from_slice(&1u64.to_le_bytes());
        r[16..24].copy_from_slice(&2u64.to_le_bytes());
        assert_ne!(hash_page(&p), hash_page(&r));
    }

    #[test]
    fn lengths_and_trailing_zeros_count() {
        assert_ne!(page_hash(&[]), page_hash(&[0]));
        assert_ne!(page_hash(&[1, 2, 3]), page_hash(&[1, 2, 3, 0]));
        assert_ne!(page_hash(&[0u8; 16]), page_hash(&[0u8; 17]));
        assert_eq!(ZERO_PAGE_HASH, hash_page(&ZERO_PAGE));
        assert_eq!(ZERO_PAGE_HASH, page_hash(&[0u8; PAGE_SIZE]));
        let long = [0x5Au8; 2 * PAGE_SIZE + 3];
        let mut long2 = long;
        long2[PAGE_SIZE + 5] ^= 1;
        assert_ne!(page_hash(&long), page_hash(&long2));
    }
}
