//! The physical GICv3 as the hypervisor drives it: distributor and
//! redistributor set-up, the EL2 CPU interface (acknowledge, priority drop,
//! deactivate) and the virtual CPU interface's list registers.
//!
//! EOImode is 1: `eoi` only drops priority, `deactivate` ends the interrupt.
//! That lets the guest's virtual timer stay active physically until the guest
//! itself deactivates it through a HW list register.
use aarch64_cpu::{asm::barrier, registers::*};
use core::ptr::{read_volatile, write_volatile};

use super::sysreg;

const GICD_CTLR: usize = 0x0000;
const GICD_IGROUPR: usize = 0x0080;
const GICD_ISENABLER: usize = 0x0100;
const GICD_IPRIORITYR: usize = 0x0400;
const GICD_IROUTER: usize = 0x6000;
const GICR_WAKER: usize = 0x0014;
const SGI_FRAME: usize = 0x1_0000;
const GICR_IGROUPR0: usize = SGI_FRAME + 0x0080;
const GICR_ISENABLER0: usize = SGI_FRAME + 0x0100;
const GICR_ISACTIVER0: usize = SGI_FRAME + 0x0300;
const GICR_ICACTIVER0: usize = SGI_FRAME + 0x0380;
const GICR_IPRIORITYR: usize = SGI_FRAME + 0x0400;

pub const SPURIOUS: u32 = 1023;
const PRIORITY: u8 = 0x80;

pub struct Gic {
    gicd: usize,
    gicr: usize,
}

fn wr32(addr: usize, v: u32) {
    // SAFETY: `Gic::new`'s contract: the addresses are the GIC's registers,
    // mapped as Device memory.
    unsafe { write_volatile(addr as *mut u32, v) }
}

fn rd32(addr: usize) -> u32 {
    // SAFETY: as in `wr32`.
    unsafe { read_volatile(addr as *const u32) }
}

impl Gic {
    /// # Safety
    /// `gicd` and `gicr` must be this CPU's GICv3 distributor and
    /// redistributor, mapped as Device memory, driven by nothing else.
    pub const unsafe fn new(gicd: usize, gicr: usize) -> Self {
        Gic { gicd, gicr }
    }

    /// Distributor, redistributor and the EL2 CPU interface, all Group 1.
    pub fn init(&self) {
        // Affinity routing, both groups (GICD_CTLR.DS=1 on QEMU virt: one security state).
        wr32(self.gicd + GICD_CTLR, 0x13);
        let waker = rd32(self.gicr + GICR_WAKER);
        wr32(self.gicr + GICR_WAKER, waker & !(1 << 1));
        while rd32(self.gicr + GICR_WAKER) & (1 << 2) != 0 {
            core::hint::spin_loop();
        }
        wr32(self.gicr + GICR_IGROUPR0, !0);
        for i in 0..8 {
            wr32(self.gicr + GICR_IPRIORITYR + i * 4, u32::from_ne_bytes([PRIORITY; 4]));
        }
        ICC_SRE_EL2.write(ICC_SRE_EL2::SRE::SET + ICC_SRE_EL2::DFB::SET + ICC_SRE_EL2::DIB::SET + ICC_SRE_EL2::ENABLE::SET);
        barrier::isb(barrier::SY);
        sysreg::set_icc_pmr_el1(0xff);
        sysreg::set_icc_bpr1_el1(0);
        // EOImode 1: EOIR drops priority, DIR deactivates.
        sysreg::set_icc_ctlr_el1(ICC_CTLR_EL1.get() | (1 << 1));
        sysreg::set_icc_igrpen1_el1(1);
        barrier::isb(barrier::SY);
    }

    /// Enables a private (SGI/PPI) or shared interrupt, Group 1, routed to CPU 0.
    pub fn enable(&self, intid: u32) {
        let (word, bit) = ((intid / 32) as usize, intid % 32);
        if intid < 32 {
            wr32(self.gicr + GICR_ISENABLER0, 1 << bit);
        } else {
            wr32(self.gicd + GICD_IGROUPR + word * 4, rd32(self.gicd + GICD_IGROUPR + word * 4) | (1 << bit));
            let prio = self.gicd + GICD_IPRIORITYR + intid as usize;
            // SAFETY: as in `wr32`; IPRIORITYR is byte-accessible.
            unsafe { write_volatile(prio as *mut u8, PRIORITY) };
            // SAFETY: as in `wr32`; IROUTER is a 64-bit register.
            unsafe { write_volatile((self.gicd + GICD_IROUTER + intid as usize * 8) as *mut u64, 0) };
            wr32(self.gicd + GICD_ISENABLER + word * 4, 1 << bit);
        }
    }

    /// Sets or clears the active state of a private interrupt (SGI/PPI):
    /// a restored guest may be inside its handler of an interrupt that a HW
    /// list register links to the physical one.
    pub fn set_private_active(&self, intid: u32, active: bool) {
        if intid < 32 {
            wr32(self.gicr + if active { GICR_ISACTIVER0 } else { GICR_ICACTIVER0 }, 1 << intid);
        }
    }

    pub fn ack(&self) -> u32 {
        (sysreg::icc_iar1_el1() & 0xff_ffff) as u32
    }

    /// Priority drop only (EOImode 1).
    pub fn eoi(&self, intid: u32) {
        sysreg::icc_eoir1_el1(intid as u64);
    }

    pub fn deactivate(&self, intid: u32) {
        sysreg::icc_dir_el1(intid as u64);
    }

    /// Number of list registers the virtual CPU interface has.
    pub fn list_registers(&self) -> usize {
        (ICH_VTR_EL2.get() & 0x1f) as usize + 1
    }

    /// Clean virtual interface: all list registers and active priorities
    /// empty, virtual CPU interface on.
    pub fn init_virtual(&self) {
        for n in 0..self.list_registers() {
            sysreg::set_ich_lr(n, 0);
        }
        ICH_AP1R0_EL2.set(0);
        ICH_AP0R0_EL2.set(0);
        ICH_VMCR_EL2.set(0);
        ICH_HCR_EL2.set(1);
        barrier::isb(barrier::SY);
    }
}
