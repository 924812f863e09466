//! The container every board's device state travels in: the payload of
//! the DeviceState message that moves a running guest to another device.
//! The format is the hypervisor's own; the other side runs the same code.
//! Each architecture's board decides which sections it writes (the ARM
//! board's are listed in `arm/mod.rs`); this module frames and checks them.
//!
//! Layout (all integers little-endian, fixed width):
//!
//! ```text
//! b"VSDV"  u16 version (2: the ARM board's DISK section)
//! section*          the board's sections, in the board's fixed order
//! section := [u8; 4] tag, u32 payload length, payload
//! ```
//!
//! A section's payload must be consumed exactly by its fields, and nothing
//! may follow the last one. Restoring checks every read against the
//! input's end; boards check every value against what their models can
//! hold, so the encoding is canonical: an input that restores re-saves to
//! the same bytes.

use alloc::vec::Vec;
use core::fmt;

pub const MAGIC: [u8; 4] = *b"VSDV";
pub const VERSION: u16 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotError {
    /// The input ended before the snapshot did.
    Truncated,
    BadMagic,
    BadVersion(u16),
    /// A section other than the one due at this point.
    BadSection {
        expected: [u8; 4],
        found: [u8; 4],
    },
    /// A section's length does not match its fields (too short or too long).
    SectionLength {
        section: [u8; 4],
    },
    /// A field holds a value the device model cannot hold.
    BadValue {
        field: &'static str,
        value: u64,
    },
    /// Bytes after the last section.
    TrailingBytes,
    /// The state is of a guest whose disk (capacity in bytes; None: no
    /// disk) is not this device's.
    DiskMismatch {
        saved: Option<u64>,
        here: Option<u64>,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Truncated => write!(f, "device state truncated"),
            SnapshotError::BadMagic => write!(f, "not a device state (bad magic)"),
            SnapshotError::BadVersion(v) => write!(f, "device state version {v}, expected {VERSION}"),
            SnapshotError::BadSection { expected, found } => write!(f, "device state section {found:?}, expected {expected:?}"),
            SnapshotError::SectionLength { section } => write!(f, "device state section {section:?} has the wrong length"),
            SnapshotError::BadValue { field, value } => write!(f, "device state field {field} = {value:#x} is out of range"),
            SnapshotError::TrailingBytes => write!(f, "bytes after the device state"),
            SnapshotError::DiskMismatch { saved, here } => {
                let mib = |d: &Option<u64>| d.map_or(alloc::string::String::from("no disk"), |b| alloc::format!("a {} MiB disk ({b} bytes)", b >> 20));
                write!(f, "the guest had {} where it was saved, this device gives it {}", mib(saved), mib(here))
            }
        }
    }
}

/// Writes a whole snapshot into `out`: the header, then the sections
/// `sections` writes with `Writer::section`.
pub(crate) fn write(out: &mut Vec<u8>, sections: impl FnOnce(&mut Writer)) {
    let mut w = Writer::new(out);
    w.bytes(&MAGIC);
    w.u16(VERSION);
    sections(&mut w);
}

/// Reads a whole snapshot: checks the header, lets `sections` parse the
/// sections with `Reader::section`, then rejects anything after them.
/// Never panics on bad input.
pub(crate) fn read<'a, T>(bytes: &'a [u8], sections: impl FnOnce(&mut Reader<'a>) -> Result<T, SnapshotError>) -> Result<T, SnapshotError> {
    let mut r = Reader::new(bytes);
    if r.array::<4>()? != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(SnapshotError::BadVersion(version));
    }
    let v = sections(&mut r)?;
    if !r.is_empty() {
        return Err(SnapshotError::TrailingBytes);
    }
    Ok(v)
}

/// Appends little-endian fields to a byte vector.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        Writer { out }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// A tagged, length-prefixed section with what `body` writes.
    pub(crate) fn section(&mut self, tag: [u8; 4], body: impl FnOnce(&mut Writer)) {
        self.bytes(&tag);
        let len_at = self.out.len();
        self.u32(0);
        body(self);
        // Sections hold fixed-size device structs, a few hundred bytes:
        // far below u32::MAX, so the cast cannot truncate.
        let len = (self.out.len() - len_at - 4) as u32;
        self.out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Reads little-endian fields, each checked against the end of the input.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let Some((head, rest)) = self.buf.split_at_checked(n) else { return Err(SnapshotError::Truncated) };
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, SnapshotError> {
        self.array().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, SnapshotError> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, SnapshotError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A bool stored as 0 or 1; anything else is rejected (canonical form).
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(SnapshotError::BadValue { field, value: v as u64 }),
        }
    }

    /// The next section, which must be `tag`, parsed by `parse` from
    /// exactly its payload.
    pub(crate) fn section<T>(&mut self, tag: [u8; 4], parse: impl FnOnce(&mut Reader<'a>) -> Result<T, SnapshotError>) -> Result<T, SnapshotError> {
        let found = self.array::<4>()?;
        if found != tag {
            return Err(SnapshotError::BadSection { expected: tag, found });
        }
        let len = usize::try_from(self.u32()?).map_err(|_| SnapshotError::Truncated)?;
        let mut sub = Reader::new(self.take(len)?);
        // Running out inside the payload means the length was too short
        // for the fields: the section's fault, not the input's end.
        let v = parse(&mut sub).map_err(|e| if e == SnapshotError::Truncated { SnapshotError::SectionLength { section: tag } } else { e })?;
        if !sub.is_empty() {
            return Err(SnapshotError::SectionLength { section: tag });
        }
        Ok(v)
    }
}

/// `value` if no bit outside `allowed` is set, else `BadValue`.
pub(crate) fn only_bits<T: Copy + Into<u64>>(field: &'static str, value: T, allowed: T) -> Result<T, SnapshotError> {
    let (v, m) = (value.into(), allowed.into());
    if v & !m == 0 {
        Ok(value)
    } else {
        Err(SnapshotError::BadValue { field, value: v })
    }
}

#[cfg(test)]
mod tests {
    //! The container on its own, with a toy board of two sections; the
    //! ARM board's own tests are in `arm/snapshot_tests.rs`.
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Toy {
        a: u32,
        b: bool,
    }

    fn save(t: &Toy) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, |w| {
            w.section(*b"AAAA", |w| w.u32(t.a));
            w.section(*b"BBBB", |w| w.bool(t.b));
        });
        out
    }

    fn restore(bytes: &[u8]) -> Result<Toy, SnapshotError> {
        read(bytes, |r| {
            let a = r.section(*b"AAAA", |r| r.u32())?;
            let b = r.section(*b"BBBB", |r| r.bool("toy.b"))?;
            Ok(Toy { a, b })
        })
    }

    #[test]
    fn frames_sections() {
        let t = Toy { a: 0x0102_0304, b: true };
        let bytes = save(&t);
        #[rustfmt::skip]
        let expected = [
            b'V', b'S', b'D', b'V', 2, 0,
            b'A', b'A', b'A', b'A', 4, 0, 0, 0, 4, 3, 2, 1,
            b'B', b'B', b'B', b'B', 1, 0, 0, 0, 1,
        ];
        assert_eq!(bytes, expected);
        assert_eq!(restore(&bytes), Ok(t));
    }

    #[test]
    fn rejects_bad_frames() {
        let b = save(&Toy { a: 7, b: false });
        let with = |at: usize, v: &[u8]| {
            let mut c = b.clone();
            c[at..at + v.len()].copy_from_slice(v);
            restore(&c)
        };
        assert_eq!(with(0, b"VSDW"), Err(SnapshotError::BadMagic));
        assert_eq!(with(4, &[1, 0]), Err(SnapshotError::BadVersion(1)));
        assert_eq!(with(6, b"AAAB"), Err(SnapshotError::BadSection { expected: *b"AAAA", found: *b"AAAB" }));
        assert_eq!(with(10, &[3]), Err(SnapshotError::SectionLength { section: *b"AAAA" }), "too short for its fields");
        assert_eq!(with(26, &[2]), Err(SnapshotError::BadValue { field: "toy.b", value: 2 }));
        assert_eq!(with(10, &[0xff, 0xff]), Err(SnapshotError::Truncated), "length past the input");
        let mut long = b.clone();
        long.push(0);
        assert_eq!(restore(&long), Err(SnapshotError::TrailingBytes));
        for n in 0..b.len() {
            assert!(restore(&b[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn only_bits_masks() {
        assert_eq!(only_bits("f", 0x5u8, 0x7), Ok(0x5));
        assert_eq!(only_bits("f", 0x9u16, 0x7), Err(SnapshotError::BadValue { field: "f", value: 9 }));
    }
}
