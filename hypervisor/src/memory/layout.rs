//! Where the kernel, initrd and device tree go in guest RAM, following the
//! arm64 boot protocol (Documentation/arch/arm64/booting.rst): the kernel at
//! a 2 MiB aligned base plus its `text_offset`, the device tree 8-byte
//! aligned and at most 2 MiB, the initrd anywhere the kernel can reach.
use vmsync_boot::image::ImageHeader;

pub const DTB_MAX: u64 = 2 << 20;
const PAGE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLayout {
    pub kernel: u64,
    pub initrd: u64,
    pub dtb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// Guest RAM cannot hold kernel + initrd + device tree.
    RamTooSmall { need: u64, have: u64 },
}

pub fn place(ram_base: u64, ram_size: u64, kernel: &ImageHeader, kernel_len: u64, initrd_len: u64) -> Result<GuestLayout, LayoutError> {
    let (text_offset, kernel_span) = kernel.placement(kernel_len);
    let kernel_at = ram_base + text_offset;
    let kernel_end = kernel_at + kernel_span;
    let ram_end = ram_base + ram_size;
    let dtb = ram_end.saturating_sub(DTB_MAX);
    let initrd = dtb.saturating_sub(initrd_len.div_ceil(PAGE) * PAGE);
    let need = text_offset + kernel_span + initrd_len.div_ceil(PAGE) * PAGE + DTB_MAX;
    if need > ram_size || initrd < kernel_end {
        return Err(LayoutError::RamTooSmall { need, have: ram_size });
    }
    Ok(GuestLayout { kernel: kernel_at, initrd, dtb })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_low_dtb_and_initrd_at_the_top() {
        let h = ImageHeader { text_offset: 0, image_size: 32 << 20, flags: 2 };
        let l = place(0x4000_0000, 256 << 20, &h, 27 << 20, 5000).unwrap();
        assert_eq!(l.kernel, 0x4000_0000);
        assert_eq!(l.dtb, 0x4000_0000 + (254 << 20));
        assert_eq!(l.initrd, l.dtb - 8192);
    }

    #[test]
    fn refuses_when_it_does_not_fit() {
        let h = ImageHeader { text_offset: 0, image_size: 60 << 20, flags: 2 };
        assert!(matches!(place(0x4000_0000, 64 << 20, &h, 27 << 20, 4 << 20), Err(LayoutError::RamTooSmall { .. })));
    }
}
