// The physical board QEMU `virt` (gic-version=3) as the hypervisor drives it.
// Included by the hypervisor's `board` module; addresses from QEMU's
// hw/arm/virt.c memory map. RAM size and the device tree come from the
// loader at run time.

/// Physical PL011 console.
pub const UART_BASE: usize = 0x0900_0000;
/// Its interrupt (SPI 1).
pub const UART_INTID: u32 = 33;
pub const GICD_BASE: usize = 0x0800_0000;
/// Redistributor of CPU 0 (RD frame; SGI frame 64 KiB above).
pub const GICR_BASE: usize = 0x080A_0000;
/// Start of RAM; the image is linked 2 MiB above it.
pub const RAM_BASE: u64 = 0x4000_0000;
/// The 1 GiB windows below RAM that hold devices, mapped as Device memory at EL2.
pub const DEVICE_GIB: core::ops::Range<u64> = 0..1;
