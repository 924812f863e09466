//! The hypervisor's own tick on the EL2 physical timer (CNTHP, PPI 26),
//! which the guest cannot see or touch. It drives epoch cuts.
use aarch64_cpu::registers::*;

use super::sysreg;

pub const INTID: u32 = 26;

pub fn now_ticks() -> u64 {
    CNTPCT_EL0.get()
}

pub fn freq() -> u64 {
    CNTFRQ_EL0.get().max(1)
}

pub fn ticks_to_ns(t: u64) -> u64 {
    (t as u128 * 1_000_000_000 / freq() as u128) as u64
}

pub fn ns_to_ticks(ns: u64) -> u64 {
    (ns as u128 * freq() as u128 / 1_000_000_000) as u64
}

/// Fires once, `ns` from now (re-armed by the handler).
pub fn arm_in(ns: u64) {
    sysreg::set_cnthp_cval_el2(now_ticks() + ns_to_ticks(ns));
    CNTHP_CTL_EL2.write(CNTHP_CTL_EL2::ENABLE::SET + CNTHP_CTL_EL2::IMASK::CLEAR);
}

pub fn stop() {
    CNTHP_CTL_EL2.write(CNTHP_CTL_EL2::ENABLE::CLEAR);
}
