//! The payload container: the guest kernel, initrd and guest config packed
//! after the hypervisor in one flashable file.
//!
//! ```text
//! header (64 bytes)   magic "VMSYNCPL", version u32, entry count u32,
//!                     total length u64, xxh3 of the entry table u64,
//!                     xxh3 of the header's first 32 bytes u64, reserved
//! entry table         count × 48 bytes: name [u8; 16] (NUL padded),
//!                     offset u64 (from the container start), length u64,
//!                     xxh3_64 of the data u64, reserved u64
//! data                each entry 4 KiB aligned
//! ```
//! All integers little-endian. Every field is checked before it is used, so
//! a truncated or corrupt file yields an error naming what is wrong.
use alloc::vec::Vec;
use xxhash_rust::xxh3::xxh3_64;

pub const MAGIC: [u8; 8] = *b"VMSYNCPL";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const ENTRY_LEN: usize = 48;
pub const NAME_LEN: usize = 16;
/// Bounds the entry table so a corrupt count cannot make us scan megabytes.
pub const MAX_ENTRIES: u32 = 32;
const ALIGN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerError {
    /// The bytes end before the header does.
    Truncated {
        need: u64,
        have: u64,
    },
    BadMagic,
    UnsupportedVersion(u32),
    HeaderCorrupt,
    TooManyEntries(u32),
    EntryTableCorrupt,
    /// An entry points outside the container.
    EntryOutOfBounds {
        index: u32,
    },
    /// The named entry's data does not match its hash.
    EntryCorrupt {
        name: [u8; NAME_LEN],
    },
    BadName,
    DuplicateName,
}

#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    name: [u8; NAME_LEN],
    pub data: &'a [u8],
}

impl<'a> Entry<'a> {
    pub fn name(&self) -> &str {
        name_str(&self.name)
    }
}

/// The printable part of a NUL-padded name ("?" if it is not UTF-8).
pub fn name_str(name: &[u8; NAME_LEN]) -> &str {
    let end = name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    core::str::from_utf8(&name[..end]).unwrap_or("?")
}

pub struct Container<'a> {
    entries: Vec<Entry<'a>>,
    total_len: u64,
}

fn rd32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn rd64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Reads only the header and returns the container's total length, so the
/// caller can bound the slice it hands to [`Container::parse`].
pub fn total_len(header: &[u8]) -> Result<u64, ContainerError> {
    if header.len() < HEADER_LEN {
        return Err(ContainerError::Truncated { need: HEADER_LEN as u64, have: header.len() as u64 });
    }
    if header[..8] != MAGIC {
        return Err(ContainerError::BadMagic);
    }
    let version = rd32(header, 8);
    if version != VERSION {
        return Err(ContainerError::UnsupportedVersion(version));
    }
    if xxh3_64(&header[..32]) != rd64(header, 32) {
        return Err(ContainerError::HeaderCorrupt);
    }
    Ok(rd64(header, 16))
}

impl<'a> Container<'a> {
    /// Checks the header, the entry table and every entry's hash.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ContainerError> {
        let total = total_len(bytes)?;
        if (bytes.len() as u64) < total {
            return Err(ContainerError::Truncated { need: total, have: bytes.len() as u64 });
        }
        let bytes = &bytes[..total as usize];
        let count = rd32(bytes, 12);
        if count > MAX_ENTRIES {
            return Err(ContainerError::TooManyEntries(count));
        }
        let table_end = HEADER_LEN + count as usize * ENTRY_LEN;
        if bytes.len() < table_end {
            return Err(ContainerError::Truncated { need: table_end as u64, have: bytes.len() as u64 });
        }
        let table = &bytes[HEADER_LEN..table_end];
        if xxh3_64(table) != rd64(bytes, 24) {
            return Err(ContainerError::EntryTableCorrupt);
        }
        let mut entries: Vec<Entry<'a>> = Vec::with_capacity(count as usize);
        for i in 0..count {
            let e = &table[i as usize * ENTRY_LEN..(i as usize + 1) * ENTRY_LEN];
            let mut name = [0u8; NAME_LEN];
            name.copy_from_slice(&e[..NAME_LEN]);
            let (off, len, hash) = (rd64(e, 16), rd64(e, 24), rd64(e, 32));
            let end = off.checked_add(len).ok_or(ContainerError::EntryOutOfBounds { index: i })?;
            if off < table_end as u64 || end > total {
                return Err(ContainerError::EntryOutOfBounds { index: i });
            }
            let data = &bytes[off as usize..end as usize];
            if xxh3_64(data) != hash {
                return Err(ContainerError::EntryCorrupt { name });
            }
            if entries.iter().any(|x| x.name == name) {
                return Err(ContainerError::DuplicateName);
            }
            entries.push(Entry { name, data });
        }
        Ok(Container { entries, total_len: total })
    }

    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.entries.iter().find(|e| e.name() == name).map(|e| e.data)
    }

    pub fn entries(&self) -> &[Entry<'a>] {
        &self.entries
    }

    pub fn total_len(&self) -> u64 {
        self.total_len
    }
}

fn align_up(x: usize) -> usize {
    (x + ALIGN - 1) & !(ALIGN - 1)
}

/// Packs named entries into a container (used by `cargo xtask build`).
pub fn pack(entries: &[(&str, &[u8])]) -> Result<Vec<u8>, ContainerError> {
    if entries.len() > MAX_ENTRIES as usize {
        return Err(ContainerError::TooManyEntries(entries.len() as u32));
    }
    let table_end = HEADER_LEN + entries.len() * ENTRY_LEN;
    let mut out = alloc::vec![0u8; table_end];
    let mut table = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for (i, (name, data)) in entries.iter().enumerate() {
        if name.is_empty() || name.len() > NAME_LEN || name.as_bytes().contains(&0) {
            return Err(ContainerError::BadName);
        }
        if entries[..i].iter().any(|(n, _)| n == name) {
            return Err(ContainerError::DuplicateName);
        }
        out.resize(align_up(out.len()), 0);
        let off = out.len() as u64;
        out.extend_from_slice(data);
        let mut e = [0u8; ENTRY_LEN];
        e[..name.len()].copy_from_slice(name.as_bytes());
        e[16..24].copy_from_slice(&off.to_le_bytes());
        e[24..32].copy_from_slice(&(data.len() as u64).to_le_bytes());
        e[32..40].copy_from_slice(&xxh3_64(data).to_le_bytes());
        table.extend_from_slice(&e);
    }
    out[HEADER_LEN..table_end].copy_from_slice(&table);
    let total = out.len() as u64;
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    out[16..24].copy_from_slice(&total.to_le_bytes());
    out[24..32].copy_from_slice(&xxh3_64(&table).to_le_bytes());
    let h = xxh3_64(&out[..32]);
    out[32..40].copy_from_slice(&h.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let kernel: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        pack(&[("kernel", &kernel), ("initrd", b"cpio"), ("config", b"mem_mib=64\n")]).unwrap()
    }

    #[test]
    fn round_trips() {
        let bytes = sample();
        let c = Container::parse(&bytes).unwrap();
        assert_eq!(c.get("initrd"), Some(&b"cpio"[..]));
        assert_eq!(c.get("config"), Some(&b"mem_mib=64\n"[..]));
        assert_eq!(c.get("kernel").unwrap().len(), 10_000);
        assert_eq!(c.get("absent"), None);
        assert_eq!(c.total_len(), bytes.len() as u64);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = sample();
        // Every byte the container covers is protected by some hash, except
        // alignment padding and reserved fields, which nothing reads.
        let mut detected = 0;
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            if Container::parse(&b).is_err() {
                detected += 1;
            } else {
                // Accepted: the byte must be one that nobody reads.
                let c = Container::parse(&b).unwrap();
                for (n, want) in [("kernel", 10_000usize), ("initrd", 4), ("config", 11)] {
                    assert_eq!(c.get(n).unwrap().len(), want);
                }
                assert_eq!(c.get("initrd"), Some(&b"cpio"[..]));
            }
        }
        assert!(detected > 10_000, "only {detected} flips detected");
    }

    #[test]
    fn truncation_is_an_error_at_every_length() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(Container::parse(&bytes[..len]).is_err(), "accepted a cut at {len}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(pack(&[("", b"x")]).err(), Some(ContainerError::BadName));
        assert_eq!(pack(&[("a-name-that-is-too-long", b"x")]).err(), Some(ContainerError::BadName));
        assert_eq!(pack(&[("a", b"x"), ("a", b"y")]).err(), Some(ContainerError::DuplicateName));
    }
}
