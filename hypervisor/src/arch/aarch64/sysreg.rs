//! System registers that `aarch64-cpu` does not provide (GICv3 CPU
//! interface, EL2 timer value, VPIDR_EL2), by their encodings.

macro_rules! sysreg_rw {
    ($read:ident, $write:ident, $enc:literal) => {
        #[inline(always)]
        pub fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading this system register has no side effect at EL2
            // beyond what its architecture defines for a read.
            unsafe { core::arch::asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nomem, nostack)) };
            v
        }
        #[inline(always)]
        pub fn $write(v: u64) {
            // SAFETY: the callers write values the GICv3/timer architecture
            // defines for this register at EL2.
            unsafe { core::arch::asm!(concat!("msr ", $enc, ", {}"), in(reg) v, options(nomem, nostack)) };
        }
    };
}

// ICC_IAR1_EL1: reading acknowledges the highest pending Group 1 interrupt.
sysreg_rw!(icc_iar1_el1, _icc_iar1_el1_w, "S3_0_C12_C12_0");
sysreg_rw!(_icc_eoir1_el1_r, icc_eoir1_el1, "S3_0_C12_C12_1");
sysreg_rw!(_icc_dir_el1_r, icc_dir_el1, "S3_0_C12_C11_1");
sysreg_rw!(icc_pmr_el1, set_icc_pmr_el1, "S3_0_C4_C6_0");
sysreg_rw!(icc_igrpen1_el1, set_icc_igrpen1_el1, "S3_0_C12_C12_7");
sysreg_rw!(_icc_ctlr_el1_r, set_icc_ctlr_el1, "S3_0_C12_C12_4");
sysreg_rw!(icc_bpr1_el1, set_icc_bpr1_el1, "S3_0_C12_C12_3");
sysreg_rw!(ich_elrsr_el2, _ich_elrsr_el2_w, "S3_4_C12_C11_5");
sysreg_rw!(ich_misr_el2, _ich_misr_el2_w, "S3_4_C12_C11_2");
sysreg_rw!(vpidr_el2, set_vpidr_el2, "S3_4_C0_C0_0");
sysreg_rw!(cnthp_cval_el2, set_cnthp_cval_el2, "S3_4_C14_C2_2");

/// ICH_LR<n>_EL2 by index (n < 16).
pub fn ich_lr(n: usize) -> u64 {
    use aarch64_cpu::registers::*;
    match n {
        0 => ICH_LR0_EL2.get(),
        1 => ICH_LR1_EL2.get(),
        2 => ICH_LR2_EL2.get(),
        3 => ICH_LR3_EL2.get(),
        4 => ICH_LR4_EL2.get(),
        5 => ICH_LR5_EL2.get(),
        6 => ICH_LR6_EL2.get(),
        7 => ICH_LR7_EL2.get(),
        8 => ICH_LR8_EL2.get(),
        9 => ICH_LR9_EL2.get(),
        10 => ICH_LR10_EL2.get(),
        11 => ICH_LR11_EL2.get(),
        12 => ICH_LR12_EL2.get(),
        13 => ICH_LR13_EL2.get(),
        14 => ICH_LR14_EL2.get(),
        _ => ICH_LR15_EL2.get(),
    }
}

pub fn set_ich_lr(n: usize, v: u64) {
    use aarch64_cpu::registers::*;
    match n {
        0 => ICH_LR0_EL2.set(v),
        1 => ICH_LR1_EL2.set(v),
        2 => ICH_LR2_EL2.set(v),
        3 => ICH_LR3_EL2.set(v),
        4 => ICH_LR4_EL2.set(v),
        5 => ICH_LR5_EL2.set(v),
        6 => ICH_LR6_EL2.set(v),
        7 => ICH_LR7_EL2.set(v),
        8 => ICH_LR8_EL2.set(v),
        9 => ICH_LR9_EL2.set(v),
        10 => ICH_LR10_EL2.set(v),
        11 => ICH_LR11_EL2.set(v),
        12 => ICH_LR12_EL2.set(v),
        13 => ICH_LR13_EL2.set(v),
        14 => ICH_LR14_EL2.set(v),
        _ => ICH_LR15_EL2.set(v),
    }
}
