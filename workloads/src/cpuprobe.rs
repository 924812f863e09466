//! `vmsync-workload cpuprobe`: what a guest program sees of its CPU, for
//! the boot test of the one CPU model. Prints
//!
//! ```text
//! vmsync-cpu: ctr_el0=<hex> dczid_el0=<hex>
//! vmsync-cpu: dc_zva <ok|signal=N|exit=N>
//! ```
//!
//! The DC ZVA runs in a child (`cpuprobe --zva`), since a CPU model that
//! prohibits it kills the program with SIGILL.

/// CTR_EL0 and DCZID_EL0 as EL0 reads them (Linux lets EL0 read both).
#[cfg(target_arch = "aarch64")]
pub fn registers() -> (u64, u64) {
    let (ctr, dczid): (u64, u64);
    // SAFETY: EL0 reads of CTR_EL0 (SCTLR_EL1.UCT, which Linux sets, or
    // the kernel's emulation) and DCZID_EL0 (always EL0-readable); no side effects.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", "mrs {}, dczid_el0", out(reg) ctr, out(reg) dczid, options(nomem, nostack)) };
    (ctr, dczid)
}

#[cfg(not(target_arch = "aarch64"))]
pub fn registers() -> (u64, u64) {
    (0, 0)
}

/// Zeroes one DC ZVA block of a buffer; true if it ran (the child's job).
#[cfg(target_arch = "aarch64")]
pub fn dc_zva() -> bool {
    // 2 KiB aligned to 2 KiB: the largest block size DCZID_EL0 can give.
    #[repr(align(2048))]
    struct Block([u8; 2048]);
    let mut b = Block([0xff; 2048]);
    let p = b.0.as_mut_ptr();
    // SAFETY: `p` points at 2 KiB this function owns, aligned to the
    // largest block DC ZVA can zero, so it writes only there.
    unsafe { core::arch::asm!("dc zva, {}", in(reg) p, options(nostack)) };
    // SAFETY: `p` is valid for 2048 bytes; volatile so the read is not
    // folded with the initialiser.
    unsafe { core::ptr::read_volatile(p) == 0 }
}

#[cfg(not(target_arch = "aarch64"))]
pub fn dc_zva() -> bool {
    false
}

/// How the DC ZVA child ended, as the probe prints it.
pub fn describe(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(0), _) => "ok".to_string(),
        (_, Some(s)) => format!("signal={s}"),
        (Some(c), None) => format!("exit={c}"),
        (None, None) => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_how_the_child_ended() {
        assert_eq!(describe(Some(0), None), "ok");
        assert_eq!(describe(None, Some(4)), "signal=4");
        assert_eq!(describe(Some(3), None), "exit=3");
    }
}
