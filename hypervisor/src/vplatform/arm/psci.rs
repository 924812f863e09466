//! PSCI 1.0 for the guest's HVC (or trapped SMC) calls (Arm DEN 0022):
//! what the board's firmware would answer. The board has `ncpus` CPUs with
//! MPIDR affinity 0.0.0.n; CPU 0 is the one that boots and is always on.
//! Power and reset are not done here: the outcome tells the caller.

/// PSCI return codes, as the 64-bit value placed in x0 (sign-extended).
pub mod ret {
    pub const SUCCESS: u64 = 0;
    pub const NOT_SUPPORTED: u64 = -1i64 as u64;
    pub const INVALID_PARAMETERS: u64 = -2i64 as u64;
    pub const DENIED: u64 = -3i64 as u64;
    pub const ALREADY_ON: u64 = -4i64 as u64;
    pub const INTERNAL_FAILURE: u64 = -6i64 as u64;
}

/// Function IDs (SMC32 form; the SMC64 form sets bit 30).
pub mod func {
    pub const VERSION: u32 = 0x8400_0000;
    pub const CPU_SUSPEND: u32 = 0x8400_0001;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON: u32 = 0x8400_0003;
    pub const AFFINITY_INFO: u32 = 0x8400_0004;
    pub const MIGRATE: u32 = 0x8400_0005;
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    pub const MIGRATE_INFO_UP_CPU: u32 = 0x8400_0007;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const FEATURES: u32 = 0x8400_000a;
    /// Not PSCI: the SMCCC version query. Linux asks PSCI_FEATURES about it
    /// to decide whether SMCCC 1.1 (and its ARCH_WORKAROUND calls) exists.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    pub const SMC64: u32 = 1 << 30;
}

pub const PSCI_VERSION_1_0: u64 = 0x1_0000;
/// AFFINITY_INFO results.
const AFF_ON: u64 = 0;
const AFF_OFF: u64 = 1;
/// MIGRATE_INFO_TYPE: no Trusted OS, nothing to migrate.
const MIGRATE_NOT_REQUIRED: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciOutcome {
    /// Put this in x0 and return to the guest.
    Return(u64),
    SystemOff,
    SystemReset,
    /// The guest asked to start another CPU; the board cannot. Put `code`
    /// in x0 (and log `target` if it is worth telling).
    CpuOnRefused {
        target: u64,
        code: u64,
    },
}

/// Affinity fields of an MPIDR value (Aff3 39:32, Aff2..Aff0 23:0).
const MPIDR_AFF_MASK: u64 = 0xff_00ff_ffff;

fn mpidr_of(cpu: u32) -> u64 {
    cpu as u64 & 0xff
}

/// Mask of the affinity fields at `level` and above.
fn aff_mask(level: u64) -> Option<u64> {
    Some(match level {
        0 => MPIDR_AFF_MASK,
        1 => 0xff_00ff_ff00,
        2 => 0xff_00ff_0000,
        3 => 0xff_0000_0000,
        _ => return None,
    })
}

/// Which CPU (index) `target` names, if it is one of the board's.
fn cpu_index(target: u64, ncpus: u32) -> Option<u32> {
    (0..ncpus).find(|&i| mpidr_of(i) == target & MPIDR_AFF_MASK && target & !MPIDR_AFF_MASK == 0)
}

/// Answers one call. `func_id` is x0, the arguments x1..x3. SMC32 calls
/// use only the low 32 bits of each register (SMCCC 1.0).
pub fn handle(func_id: u64, x1: u64, x2: u64, x3: u64, ncpus: u32) -> PsciOutcome {
    // x3 is only CPU_ON's context ID, and there is no CPU to start.
    let _ = x3;
    let fid = func_id as u32;
    let is64 = fid & func::SMC64 != 0;
    let arg = |x: u64| if is64 { x } else { x & 0xffff_ffff };
    let base = fid & !func::SMC64;
    let r = PsciOutcome::Return;
    match (base, is64) {
        (func::VERSION, false) => r(PSCI_VERSION_1_0),
        (func::FEATURES, false) => r(features(x1 as u32)),
        (func::MIGRATE_INFO_TYPE, false) => r(MIGRATE_NOT_REQUIRED),
        (func::SYSTEM_OFF, false) => PsciOutcome::SystemOff,
        (func::SYSTEM_RESET, false) => PsciOutcome::SystemReset,
        (func::CPU_ON, _) => {
            let target = arg(x1);
            let code = match cpu_index(target, ncpus) {
                // The caller itself: CPU 0 is the only one running.
                Some(0) => ret::ALREADY_ON,
                // A CPU the board describes but cannot start (only with
                // ncpus > 1, which the board does not have yet).
                Some(_) => ret::INTERNAL_FAILURE,
                // No such CPU: the answer the spec gives for a bad MPIDR.
                None => ret::INVALID_PARAMETERS,
            };
            PsciOutcome::CpuOnRefused { target, code }
        }
        (func::AFFINITY_INFO, _) => r(affinity_info(arg(x1), arg(x2), ncpus)),
        // The last CPU cannot go off: nothing would be left to run.
        (func::CPU_OFF, false) => r(ret::DENIED),
        // No power states are described (no idle-states in the tree), so
        // the guest has no reason to call it; WFI is its idle.
        (func::CPU_SUSPEND, _) => r(ret::NOT_SUPPORTED),
        (func::MIGRATE, _) | (func::MIGRATE_INFO_UP_CPU, _) => r(ret::NOT_SUPPORTED),
        _ => r(ret::NOT_SUPPORTED),
    }
}

/// PSCI_FEATURES: 0 for what is implemented (no feature flags), else
/// NOT_SUPPORTED. SMCCC_VERSION is not implemented on purpose: Linux then
/// stays on SMCCC 1.0 and never asks for the ARCH_WORKAROUND calls.
fn features(queried: u32) -> u64 {
    const SUPPORTED: [u32; 9] = [
        func::VERSION,
        func::FEATURES,
        func::CPU_ON,
        func::CPU_ON | func::SMC64,
        func::AFFINITY_INFO,
        func::AFFINITY_INFO | func::SMC64,
        func::MIGRATE_INFO_TYPE,
        func::SYSTEM_OFF,
        func::SYSTEM_RESET,
    ];
    if SUPPORTED.contains(&queried) {
        ret::SUCCESS
    } else {
        ret::NOT_SUPPORTED
    }
}

fn affinity_info(target: u64, level: u64, ncpus: u32) -> u64 {
    let Some(mask) = aff_mask(level) else { return ret::INVALID_PARAMETERS };
    if target & !MPIDR_AFF_MASK != 0 {
        return ret::INVALID_PARAMETERS;
    }
    let mut matched = (0..ncpus).filter(|&i| mpidr_of(i) & mask == target & mask).peekable();
    if matched.peek().is_none() {
        return ret::INVALID_PARAMETERS;
    }
    // Only CPU 0 ever runs; a node is on if it contains CPU 0.
    if matched.any(|i| i == 0) {
        AFF_ON
    } else {
        AFF_OFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PsciOutcome::*;

    fn call(f: u32, x1: u64) -> PsciOutcome {
        handle(f as u64, x1, 0, 0, 1)
    }

    #[test]
    fn version_and_features() {
        assert_eq!(call(func::VERSION, 0), Return(0x10000));
        for f in [
            func::VERSION,
            func::FEATURES,
            func::CPU_ON,
            0xc400_0003,
            func::AFFINITY_INFO,
            0xc400_0004,
            func::MIGRATE_INFO_TYPE,
            func::SYSTEM_OFF,
            func::SYSTEM_RESET,
        ] {
            assert_eq!(call(func::FEATURES, f as u64), Return(0), "{f:#x}");
        }
        for f in [func::SMCCC_VERSION, func::CPU_SUSPEND, 0xc400_0001, func::CPU_OFF, func::MIGRATE, 0x8400_000e, 0xc400_0012, 0x8000_8000, 0xdead_beef] {
            assert_eq!(call(func::FEATURES, f as u64), Return(ret::NOT_SUPPORTED), "{f:#x}");
        }
        assert_eq!(ret::NOT_SUPPORTED, u64::MAX);
    }

    #[test]
    fn power() {
        assert_eq!(call(func::SYSTEM_OFF, 0), SystemOff);
        assert_eq!(call(func::SYSTEM_RESET, 0), SystemReset);
        assert_eq!(call(func::MIGRATE_INFO_TYPE, 0), Return(2));
        assert_eq!(call(func::CPU_OFF, 0), Return(ret::DENIED));
        assert_eq!(call(func::CPU_SUSPEND, 0), Return(ret::NOT_SUPPORTED));
        assert_eq!(call(0xc400_0001, 0), Return(ret::NOT_SUPPORTED));
        // The upper half of x0 is not part of the function ID.
        assert_eq!(handle(0xffff_ffff_8400_0008, 0, 0, 0, 1), SystemOff);
    }

    #[test]
    fn cpu_on_is_refused() {
        assert_eq!(handle(0xc400_0003, 0, 0x4008_0000, 0, 1), CpuOnRefused { target: 0, code: ret::ALREADY_ON });
        assert_eq!(handle(0xc400_0003, 1, 0x4008_0000, 0, 1), CpuOnRefused { target: 1, code: ret::INVALID_PARAMETERS });
        assert_eq!(handle(0x8400_0003, 0x100, 0x4008_0000, 0, 1), CpuOnRefused { target: 0x100, code: ret::INVALID_PARAMETERS });
        // A CPU the board would describe if it had two.
        assert_eq!(handle(0xc400_0003, 1, 0, 0, 2), CpuOnRefused { target: 1, code: ret::INTERNAL_FAILURE });
        // SMC32: x1's upper half is ignored.
        assert_eq!(handle(0x8400_0003, 0xffff_0000_0000_0000, 0, 0, 1), CpuOnRefused { target: 0, code: ret::ALREADY_ON });
    }

    #[test]
    fn affinity_info() {
        assert_eq!(handle(0xc400_0004, 0, 0, 0, 1), Return(AFF_ON));
        assert_eq!(handle(0x8400_0004, 0, 0, 0, 1), Return(AFF_ON));
        assert_eq!(handle(0xc400_0004, 1, 0, 0, 1), Return(ret::INVALID_PARAMETERS));
        assert_eq!(handle(0xc400_0004, 1, 0, 0, 2), Return(AFF_OFF));
        // Level 1: the cluster 0.0.0.x holds CPU 0.
        assert_eq!(handle(0xc400_0004, 0x5, 1, 0, 1), Return(AFF_ON));
        assert_eq!(handle(0xc400_0004, 0x100, 1, 0, 1), Return(ret::INVALID_PARAMETERS));
        assert_eq!(handle(0xc400_0004, 0, 4, 0, 1), Return(ret::INVALID_PARAMETERS));
    }

    #[test]
    fn unknown_and_wrong_width_calls() {
        assert_eq!(call(0xc400_0000, 0), Return(ret::NOT_SUPPORTED), "VERSION has no SMC64 form");
        assert_eq!(call(0xc400_0008, 0), Return(ret::NOT_SUPPORTED), "SYSTEM_OFF has no SMC64 form");
        assert_eq!(call(func::SMCCC_VERSION, 0), Return(ret::NOT_SUPPORTED));
        assert_eq!(call(0x8000_8000, 0), Return(ret::NOT_SUPPORTED), "ARCH_WORKAROUND_1");
        assert_eq!(call(0x8400_0012, 0), Return(ret::NOT_SUPPORTED), "SYSTEM_RESET2");
        assert_eq!(call(0x8600_0000, 0), Return(ret::NOT_SUPPORTED), "another owner");
        assert_eq!(call(0, 0), Return(ret::NOT_SUPPORTED));
    }
}
