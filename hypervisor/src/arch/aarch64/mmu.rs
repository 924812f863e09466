//! The hypervisor's own address space at EL2: an identity map with 1 GiB
//! blocks, Device memory for the windows that hold devices and Normal
//! write-back memory for RAM. With the MMU off every access would be Device
//! memory: uncached, and unaligned accesses (which Rust and zstd emit) fault
//! on hardware.
use aarch64_cpu::{asm::barrier, registers::*};

const ENTRIES: usize = 512;
const BLOCK: u64 = 0b01;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 0b11 << 8;
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;
/// Execute-never at EL2 (bit 54 in the EL2 single-range regime).
const XN: u64 = 1 << 54;

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

static mut LEVEL1: Table = Table([0; ENTRIES]);

/// Level-1 descriptor of one identity-mapped GiB.
pub fn block_descriptor(gib: u64, device: bool) -> u64 {
    let pa = gib << 30;
    if device {
        pa | BLOCK | AF | ATTR_DEVICE | XN
    } else {
        pa | BLOCK | AF | SH_INNER | ATTR_NORMAL
    }
}

/// Builds the map and turns the MMU and caches on.
///
/// # Safety
/// Call once, early, with the MMU off, from the boot CPU; `ram` must cover
/// the running image and its stack.
pub unsafe fn enable(device_gib: core::ops::Range<u64>, ram_gib: core::ops::Range<u64>) {
    // SAFETY: single-threaded early boot; nothing else references LEVEL1.
    let l1 = unsafe { &mut *core::ptr::addr_of_mut!(LEVEL1) };
    for g in device_gib {
        l1.0[g as usize] = block_descriptor(g, true);
    }
    for g in ram_gib {
        l1.0[g as usize] = block_descriptor(g, false);
    }
    MAIR_EL2.write(
        MAIR_EL2::Attr0_Device::nonGathering_nonReordering_EarlyWriteAck
            + MAIR_EL2::Attr1_Normal_Outer::WriteBack_NonTransient_ReadWriteAlloc
            + MAIR_EL2::Attr1_Normal_Inner::WriteBack_NonTransient_ReadWriteAlloc,
    );
    // 39-bit VA (T0SZ 25): the walk starts at level 1; 40-bit PA.
    TCR_EL2.write(
        TCR_EL2::T0SZ.val(25)
            + TCR_EL2::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL2::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL2::SH0::Inner
            + TCR_EL2::TG0::KiB_4
            + TCR_EL2::PS::Bits_40,
    );
    TTBR0_EL2.set(l1.0.as_ptr() as u64);
    barrier::dsb(barrier::ISHST);
    // SAFETY: invalidating EL2 TLB entries before the first enable is what
    // the architecture requires; there are no live translations to lose.
    unsafe { core::arch::asm!("tlbi alle2", "dsb ish", "isb", options(nostack)) };
    SCTLR_EL2.modify(SCTLR_EL2::M::Enable + SCTLR_EL2::C::Cacheable + SCTLR_EL2::I::Cacheable);
    barrier::isb(barrier::SY);
}

/// Cleans data cache lines over `[start, start+len)` to the point of
/// coherency, so a guest that starts with its MMU off (non-cacheable
/// accesses) sees what the hypervisor wrote through its caches.
pub fn clean_dcache_range(start: u64, len: u64) {
    let line = 64u64;
    let mut a = start & !(line - 1);
    while a < start + len {
        // SAFETY: `dc cvac` only writes back cache lines; the address is
        // mapped (the caller's own memory).
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) a, options(nostack)) };
        a += line;
    }
    barrier::dsb(barrier::SY);
}
