//! Capturing the paused guest's vCPU into a `GuestCpu` and restoring one
//! on this device: the registers the trap frame holds, the EL1 system
//! registers (the hypervisor never touches them, so they are live), the
//! virtual timer and the GIC virtual CPU interface.
use aarch64_cpu::registers::*;

use super::gic::Gic;
use super::sysreg;
use super::vcpu_state::{El1, GuestCpu, EL1_COUNT, MAX_LRS};
use super::vectors::TrapFrame;
use crate::vplatform::arm::board as vboard;

/// The vCPU as the guest will resume it (but CSSELR, which the CPU
/// model holds): call with the guest paused in a
/// trap, after the list registers were refilled for its return.
pub fn capture(frame: &TrapFrame, gic: &Gic) -> GuestCpu {
    let mut c = GuestCpu::zeroed();
    c.x = frame.x;
    c.q = frame.q;
    c.fpcr = frame.fpcr;
    c.fpsr = frame.fpsr;
    c.pc = ELR_EL2.get();
    c.pstate = SPSR_EL2.get();
    let el1: [u64; EL1_COUNT] = [
        SCTLR_EL1.get(),
        CPACR_EL1.get(),
        TTBR0_EL1.get(),
        TTBR1_EL1.get(),
        TCR_EL1.get(),
        MAIR_EL1.get(),
        AMAIR_EL1.get(),
        ESR_EL1.get(),
        FAR_EL1.get(),
        AFSR0_EL1.get(),
        AFSR1_EL1.get(),
        PAR_EL1.get(),
        VBAR_EL1.get(),
        CONTEXTIDR_EL1.get(),
        TPIDR_EL0.get(),
        TPIDRRO_EL0.get(),
        TPIDR_EL1.get(),
        CNTKCTL_EL1.get(),
        // The guest's CSSELR is the CPU model's, not this CPU's (TID2
        // traps it): the caller fills it in.
        0,
        SP_EL0.get(),
        SP_EL1.get(),
        ELR_EL1.get(),
        SPSR_EL1.get(),
        MDSCR_EL1.get(),
    ];
    c.el1 = el1;
    // The guest's counter is the physical count minus the offset we set.
    c.vcount = CNTPCT_EL0.get().wrapping_sub(CNTVOFF_EL2.get());
    c.cntv_ctl = CNTV_CTL_EL0.get();
    c.cntv_cval = CNTV_CVAL_EL0.get();
    c.ich_vmcr = ICH_VMCR_EL2.get();
    c.ich_ap0r0 = ICH_AP0R0_EL2.get();
    c.ich_ap1r0 = ICH_AP1R0_EL2.get();
    c.ich_hcr = ICH_HCR_EL2.get();
    let nlr = gic.list_registers().min(MAX_LRS);
    c.nlr = nlr as u8;
    for n in 0..nlr {
        c.lrs[n] = sysreg::ich_lr(n);
    }
    c
}

/// ICH_LR<n>_EL2 fields: state (bits 63:62, bit 63 = active), HW (61),
/// physical INTID (41:32).
const LR_ACTIVE: u64 = 1 << 63;
const LR_HW: u64 = 1 << 61;

/// Loads `c` into this CPU so that the next return to the guest resumes it,
/// and `frame` with its registers. `c` comes from `GuestCpu::decode`, which
/// checked and masked what goes into EL2 registers here (mode, ICH_*). The guest's virtual counter continues
/// from `c.vcount`: the time the switch took does not pass for the guest.
pub fn restore(c: &GuestCpu, frame: &mut TrapFrame, gic: &Gic) {
    frame.x = c.x;
    frame.q = c.q;
    frame.fpcr = c.fpcr;
    frame.fpsr = c.fpsr;
    ELR_EL2.set(c.pc);
    SPSR_EL2.set(c.pstate);
    SCTLR_EL1.set(c.get(El1::Sctlr));
    CPACR_EL1.set(c.get(El1::Cpacr));
    TTBR0_EL1.set(c.get(El1::Ttbr0));
    TTBR1_EL1.set(c.get(El1::Ttbr1));
    TCR_EL1.set(c.get(El1::Tcr));
    MAIR_EL1.set(c.get(El1::Mair));
    AMAIR_EL1.set(c.get(El1::Amair));
    ESR_EL1.set(c.get(El1::Esr));
    FAR_EL1.set(c.get(El1::Far));
    AFSR0_EL1.set(c.get(El1::Afsr0));
    AFSR1_EL1.set(c.get(El1::Afsr1));
    PAR_EL1.set(c.get(El1::Par));
    VBAR_EL1.set(c.get(El1::Vbar));
    CONTEXTIDR_EL1.set(c.get(El1::Contextidr));
    TPIDR_EL0.set(c.get(El1::TpidrEl0));
    TPIDRRO_EL0.set(c.get(El1::TpidrroEl0));
    TPIDR_EL1.set(c.get(El1::TpidrEl1));
    CNTKCTL_EL1.set(c.get(El1::Cntkctl));
    SP_EL0.set(c.get(El1::SpEl0));
    SP_EL1.set(c.get(El1::SpEl1));
    ELR_EL1.set(c.get(El1::ElrEl1));
    SPSR_EL1.set(c.get(El1::SpsrEl1));
    MDSCR_EL1.set(c.get(El1::Mdscr));
    // Counter first, then the comparator, then the control: the timer
    // never sees a half-restored state.
    CNTVOFF_EL2.set(CNTPCT_EL0.get().wrapping_sub(c.vcount));
    CNTV_CVAL_EL0.set(c.cntv_cval);
    CNTV_CTL_EL0.set(c.cntv_ctl & 0b11);
    ICH_VMCR_EL2.set(c.ich_vmcr);
    ICH_AP0R0_EL2.set(c.ich_ap0r0);
    ICH_AP1R0_EL2.set(c.ich_ap1r0);
    let nlr = gic.list_registers().min(MAX_LRS);
    let mut timer_active = false;
    for n in 0..nlr {
        let lr = if n < c.nlr as usize { c.lrs[n] } else { 0 };
        // A HW list register links the virtual timer interrupt to the
        // physical one: the guest's deactivation deactivates the physical
        // interrupt, which must therefore be active here too.
        if lr & LR_HW != 0 && lr & LR_ACTIVE != 0 && (lr >> 32) & 0x3ff == vboard::VTIMER_INTID as u64 {
            timer_active = true;
        }
        sysreg::set_ich_lr(n, lr);
    }
    gic.set_private_active(vboard::VTIMER_INTID, timer_active);
    // En and at most UIE (decode kept no other bit).
    ICH_HCR_EL2.set(c.ich_hcr);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// A device that stops running the guest: its virtual timer must not fire
/// into the standby loop, and no list register stays live.
pub fn quiesce(gic: &Gic) {
    CNTV_CTL_EL0.set(0);
    for n in 0..gic.list_registers().min(MAX_LRS) {
        sysreg::set_ich_lr(n, 0);
    }
    gic.set_private_active(vboard::VTIMER_INTID, false);
    ICH_HCR_EL2.set(0);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
