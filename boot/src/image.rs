//! The Linux arm64 `Image` header (Documentation/arch/arm64/booting.rst).
//! The hypervisor carries one so every arm64 loader boots it, and it checks
//! the guest kernel's header before placing it in guest RAM.

/// Offset of the `ARM\x64` magic in the header.
pub const MAGIC_OFFSET: usize = 56;
pub const MAGIC: [u8; 4] = *b"ARM\x64";
pub const HEADER_LEN: usize = 64;
/// Offset of the little-endian u64 `image_size` field.
pub const IMAGE_SIZE_OFFSET: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    /// Bytes the image occupies in memory from its load address, BSS
    /// included. Zero in kernels older than 3.17: then text_offset is 0x80000
    /// and the size is unknown.
    pub image_size: u64,
    pub flags: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageError {
    /// Fewer bytes than a header.
    TooShort { len: usize },
    /// No `ARM\x64` magic at offset 56: not an arm64 Linux `Image` (a
    /// compressed `Image.gz` or a zImage must be unpacked first).
    BadMagic,
    /// Big-endian kernels (flags bit 0) cannot run on this little-endian board.
    BigEndian,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

pub fn parse(bytes: &[u8]) -> Result<ImageHeader, ImageError> {
    if bytes.len() < HEADER_LEN {
        return Err(ImageError::TooShort { len: bytes.len() });
    }
    if bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4] != MAGIC {
        return Err(ImageError::BadMagic);
    }
    let h = ImageHeader { text_offset: le64(bytes, 8), image_size: le64(bytes, IMAGE_SIZE_OFFSET), flags: le64(bytes, 24) };
    if h.flags & 1 != 0 {
        return Err(ImageError::BigEndian);
    }
    Ok(h)
}

impl ImageHeader {
    /// Where the kernel goes relative to a 2 MiB aligned base, and how much
    /// memory it claims there, with the pre-3.17 defaults.
    pub fn placement(&self, file_len: u64) -> (u64, u64) {
        if self.image_size == 0 {
            (0x8_0000, file_len)
        } else {
            (self.text_offset, self.image_size.max(file_len))
        }
    }
}

/// Lays out a flashable VMsync file: the hypervisor's flat binary (text and
/// data, then its BSS span as zeros, ending where the linker put
/// `__payload_start`), then the payload container; and sets the header's
/// `image_size` to cover all of it, so a loader reserves the payload too.
pub fn assemble(hypervisor_flat: &[u8], payload: &[u8]) -> Result<alloc::vec::Vec<u8>, ImageError> {
    parse(hypervisor_flat)?;
    let mut out = alloc::vec::Vec::with_capacity(hypervisor_flat.len() + payload.len());
    out.extend_from_slice(hypervisor_flat);
    out.extend_from_slice(payload);
    let size = out.len() as u64;
    out[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&size.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, size: u64, flags: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(&MAGIC);
        h
    }

    #[test]
    fn parses_a_modern_header() {
        let h = parse(&header(0, 0x2000000, 0xa)).unwrap();
        assert_eq!(h.placement(100), (0, 0x2000000));
    }

    #[test]
    fn old_kernels_get_the_documented_defaults() {
        let h = parse(&header(0x1234, 0, 0)).unwrap();
        assert_eq!(h.placement(5000), (0x8_0000, 5000));
    }

    #[test]
    fn assemble_covers_the_payload() {
        let hv = header(0x200000, 4096, 2);
        let img = assemble(&hv, b"payload").unwrap();
        assert_eq!(parse(&img).unwrap().image_size, 64 + 7);
        assert_eq!(&img[64..], b"payload");
        assert_eq!(assemble(&[0u8; 64], b"x"), Err(ImageError::BadMagic));
    }

    #[test]
    fn rejects_what_is_not_an_image() {
        assert_eq!(parse(&[0u8; 10]), Err(ImageError::TooShort { len: 10 }));
        assert_eq!(parse(&[0u8; 64]), Err(ImageError::BadMagic));
        assert_eq!(parse(&header(0, 1, 1)), Err(ImageError::BigEndian));
    }
}
