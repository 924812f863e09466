//! Host power control through the platform firmware's PSCI (SMC conduit at
//! EL2 on QEMU `virt`).

const SYSTEM_OFF: u64 = 0x8400_0008;
const SYSTEM_RESET: u64 = 0x8400_0009;

fn psci(fid: u64) {
    // SAFETY: a PSCI call into firmware; SYSTEM_OFF/RESET do not return on
    // success, and on failure the registers the SMCCC says are clobbered are
    // declared so.
    unsafe {
        core::arch::asm!("smc #0", inout("x0") fid => _, out("x1") _, out("x2") _, out("x3") _, options(nostack));
    }
}

pub fn system_off() -> ! {
    psci(SYSTEM_OFF);
    park()
}

pub fn system_reset() -> ! {
    psci(SYSTEM_RESET);
    park()
}

/// When firmware cannot power off, stop here with interrupts masked.
pub fn park() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}
