//! Addresses and interrupts of the virtual board. They match QEMU `virt`,
//! so a guest kernel configured for that machine finds what it expects, but
//! they are the guest's view on every physical board.

pub const RAM_BASE: u64 = 0x4000_0000;
pub const GICD_BASE: u64 = 0x0800_0000;
pub const GICD_SIZE: u64 = 0x1_0000;
/// One redistributor (RD + SGI frames) for the one vCPU.
pub const GICR_BASE: u64 = 0x080A_0000;
pub const GICR_SIZE: u64 = 0x2_0000;
pub const UART_BASE: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 0x1000;
/// SPI 1.
pub const UART_INTID: u32 = 33;
/// The guest's virtual timer (PPI 11).
pub const VTIMER_INTID: u32 = 27;
/// The GIC maintenance interrupt (PPI 9).
pub const MAINTENANCE_INTID: u32 = 25;
/// The MIDR the guest reads (VPIDR_EL2): a Cortex-A57 r1p0, the common
/// model of the devices that sync with each other.
pub const GUEST_MIDR: u64 = 0x411F_D070;
/// The guest's one CPU: affinity 0, uniprocessor bit clear, RES1 bit 31.
pub const GUEST_MPIDR: u64 = 0x8000_0000;
/// The guest's disk (virtio-blk on virtio-mmio), when the board has one:
/// QEMU virt's first virtio-mmio slot, its register block and SPI 16.
pub const DISK_BASE: u64 = 0x0a00_0000;
pub const DISK_SIZE: u64 = crate::vplatform::virtio::blk::MMIO_SIZE;
pub const DISK_INTID: u32 = 48;
