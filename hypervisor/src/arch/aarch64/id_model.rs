//! The one CPU model every device shows the guest: the answers to its
//! reads of the group-3 ID registers, which HCR_EL2.TID3 traps to EL2.
//! Plain data (encoding -> value), host-tested; `exits` answers the traps
//! from here and `cpu` checks at boot that this CPU can run the model.
//!
//! Why one model: the guest probes its CPU's features once, at boot, and
//! uses them for ever; after a switch it runs on another device's CPU. So
//! every device must show the same features, and only ones every device
//! has. The model is the Armv8.0 Cortex-A57 the QEMU command lines use
//! (`-cpu cortex-a57`, `qemu-tests`' `CPU`; VPIDR_EL2 shows the guest the
//! same MIDR, `vboard::GUEST_MIDR`), cut down to what stays true across a
//! switch:
//!
//! - AArch64 only at EL0/EL1 (AArch32 EL0 is optional and missing on many
//!   newer cores), so the AArch32 ID registers (ID_PFR0 .. MVFR2) read 0,
//!   as they do where AArch32 is not implemented. EL2 is shown (the
//!   guest's HVC reaches this hypervisor: PSCI), EL3 not.
//! - FP and AdvSIMD (the hypervisor switches their registers); GICv3
//!   system registers (the virtual CPU interface every device needs).
//! - No SVE, SME, MTE, PAuth, BTI, RAS, AMU, MPAM, RNDR and nothing newer
//!   than v8.0: their state (Z/P/ZA registers, tags, keys) is not in a
//!   CpuState, and devices with different CPUs would not agree on them.
//! - No PMU (PMUVer 0): counters do not move between devices. The
//!   architectural minimum of breakpoints and watchpoints (2 each).
//! - 4 KiB and no 64 KiB granule (not every core has 64 KiB; 16 KiB is
//!   already absent on the A57), 8-bit ASIDs (the guest's TTBRs cross
//!   devices, and 16-bit ASIDs are optional), little-endian only, and a
//!   40-bit physical range: stage 2's IPA size (`memory::stage2::VTCR`),
//!   which is what the guest sees as physical.
//! - AES, PMULL, SHA1, SHA2, CRC32 as the A57 has them: the Armv8 cores
//!   this targets have them; a CPU without them fails the boot check
//!   (`exceeds`) loudly rather than the guest failing later.

/// A system register's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
}

const fn id(crm: u8, op2: u8) -> Encoding {
    Encoding { op0: 3, op1: 0, crn: 0, crm, op2 }
}

/// Whether HCR_EL2.TID3 traps a read of `e`: the group-3 ID space,
/// op0=3, op1=0, CRn=0, CRm 1..=7 (named registers and the reserved
/// encodings between them, which read as 0).
pub fn is_group3(e: Encoding) -> bool {
    e.op0 == 3 && e.op1 == 0 && e.crn == 0 && (1..=7).contains(&e.crm) && e.op2 <= 7
}

pub const ID_AA64PFR0: Encoding = id(4, 0);
pub const ID_AA64PFR1: Encoding = id(4, 1);
pub const ID_AA64DFR0: Encoding = id(5, 0);
pub const ID_AA64DFR1: Encoding = id(5, 1);
pub const ID_AA64AFR0: Encoding = id(5, 4);
pub const ID_AA64AFR1: Encoding = id(5, 5);
pub const ID_AA64ISAR0: Encoding = id(6, 0);
pub const ID_AA64ISAR1: Encoding = id(6, 1);
pub const ID_AA64MMFR0: Encoding = id(7, 0);
pub const ID_AA64MMFR1: Encoding = id(7, 1);
pub const ID_AA64MMFR2: Encoding = id(7, 2);

/// ID_AA64PFR0_EL1: EL0, EL1, EL2 AArch64 only (1 each), EL3 absent, FP
/// and AdvSIMD present (0), GIC system registers v3 (1 at 27:24).
const PFR0: u64 = 0x0100_0111;
/// ID_AA64DFR0_EL1: DebugVer v8.0 (6), PMUVer none (0), BRPs and WRPs 2
/// each (1 at 15:12 and 23:20), CTX_CMPs 1 (0).
const DFR0: u64 = 0x0010_1006;
/// ID_AA64ISAR0_EL1: AES with PMULL (2), SHA1 (1), SHA2 (1), CRC32 (1).
const ISAR0: u64 = 0x0001_1120;
/// ID_AA64MMFR0_EL1: PARange 40 bits (2), ASIDBits 8 (0), BigEnd and
/// SNSMem 0, TGran16 absent (0), TGran64 absent (0xf), TGran4 present (0).
const MMFR0: u64 = 0x0f00_0002;

/// Every encoding of the group-3 space and what the guest reads there, in
/// encoding order. Registers not named read 0: the AArch32 ones (no
/// AArch32), the newer feature registers (no such features), the
/// reserved encodings (RAZ).
pub const MODEL: [(&str, Encoding, u64); 56] = [
    ("ID_PFR0_EL1", id(1, 0), 0),
    ("ID_PFR1_EL1", id(1, 1), 0),
    ("ID_DFR0_EL1", id(1, 2), 0),
    ("ID_AFR0_EL1", id(1, 3), 0),
    ("ID_MMFR0_EL1", id(1, 4), 0),
    ("ID_MMFR1_EL1", id(1, 5), 0),
    ("ID_MMFR2_EL1", id(1, 6), 0),
    ("ID_MMFR3_EL1", id(1, 7), 0),
    ("ID_ISAR0_EL1", id(2, 0), 0),
    ("ID_ISAR1_EL1", id(2, 1), 0),
    ("ID_ISAR2_EL1", id(2, 2), 0),
    ("ID_ISAR3_EL1", id(2, 3), 0),
    ("ID_ISAR4_EL1", id(2, 4), 0),
    ("ID_ISAR5_EL1", id(2, 5), 0),
    ("ID_MMFR4_EL1", id(2, 6), 0),
    ("ID_ISAR6_EL1", id(2, 7), 0),
    ("MVFR0_EL1", id(3, 0), 0),
    ("MVFR1_EL1", id(3, 1), 0),
    ("MVFR2_EL1", id(3, 2), 0),
    ("reserved 3,0,0,3,3", id(3, 3), 0),
    ("ID_PFR2_EL1", id(3, 4), 0),
    ("ID_DFR1_EL1", id(3, 5), 0),
    ("ID_MMFR5_EL1", id(3, 6), 0),
    ("reserved 3,0,0,3,7", id(3, 7), 0),
    ("ID_AA64PFR0_EL1", ID_AA64PFR0, PFR0),
    ("ID_AA64PFR1_EL1", ID_AA64PFR1, 0),
    ("ID_AA64PFR2_EL1", id(4, 2), 0),
    ("reserved 3,0,0,4,3", id(4, 3), 0),
    ("ID_AA64ZFR0_EL1", id(4, 4), 0),
    ("ID_AA64SMFR0_EL1", id(4, 5), 0),
    ("reserved 3,0,0,4,6", id(4, 6), 0),
    ("ID_AA64FPFR0_EL1", id(4, 7), 0),
    ("ID_AA64DFR0_EL1", ID_AA64DFR0, DFR0),
    ("ID_AA64DFR1_EL1", ID_AA64DFR1, 0),
    ("ID_AA64DFR2_EL1", id(5, 2), 0),
    ("reserved 3,0,0,5,3", id(5, 3), 0),
    ("ID_AA64AFR0_EL1", ID_AA64AFR0, 0),
    ("ID_AA64AFR1_EL1", ID_AA64AFR1, 0),
    ("reserved 3,0,0,5,6", id(5, 6), 0),
    ("reserved 3,0,0,5,7", id(5, 7), 0),
    ("ID_AA64ISAR0_EL1", ID_AA64ISAR0, ISAR0),
    ("ID_AA64ISAR1_EL1", ID_AA64ISAR1, 0),
    ("ID_AA64ISAR2_EL1", id(6, 2), 0),
    ("ID_AA64ISAR3_EL1", id(6, 3), 0),
    ("reserved 3,0,0,6,4", id(6, 4), 0),
    ("reserved 3,0,0,6,5", id(6, 5), 0),
    ("reserved 3,0,0,6,6", id(6, 6), 0),
    ("reserved 3,0,0,6,7", id(6, 7), 0),
    ("ID_AA64MMFR0_EL1", ID_AA64MMFR0, MMFR0),
    ("ID_AA64MMFR1_EL1", ID_AA64MMFR1, 0),
    ("ID_AA64MMFR2_EL1", ID_AA64MMFR2, 0),
    ("ID_AA64MMFR3_EL1", id(7, 3), 0),
    ("ID_AA64MMFR4_EL1", id(7, 4), 0),
    ("reserved 3,0,0,7,5", id(7, 5), 0),
    ("reserved 3,0,0,7,6", id(7, 6), 0),
    ("reserved 3,0,0,7,7", id(7, 7), 0),
];

/// What the guest reads at `e`; `None` outside the group-3 space.
pub fn value(e: Encoding) -> Option<u64> {
    MODEL.iter().find(|(_, m, _)| *m == e).map(|&(_, _, v)| v)
}

/// 4-bit fields that are signed (Arm ARM, "the ID register fields"):
/// 0xf there means "not implemented", less than 0.
fn signed_fields(e: Encoding) -> u64 {
    match e {
        // FP 19:16, AdvSIMD 23:20.
        ID_AA64PFR0 => 0xff << 16,
        // DoubleLock 39:36.
        ID_AA64DFR0 => 0xf << 36,
        // TGran64 27:24, TGran4 31:28.
        ID_AA64MMFR0 => 0xff << 24,
        _ => 0,
    }
}

/// The first field (its lowest bit) in which the model promises more than
/// `real`, this CPU's value of `e`: a feature the guest would use and
/// this CPU lacks. Fields are compared as the ID scheme defines them:
/// a higher value is more, signed fields compare signed.
pub fn exceeds(e: Encoding, real: u64) -> Option<u32> {
    let model = value(e)?;
    let signed = signed_fields(e);
    (0..64).step_by(4).find(|&at| {
        let (m, r) = ((model >> at) & 0xf, (real >> at) & 0xf);
        if signed >> at & 0xf != 0 {
            let s = |v: u64| ((v as i8) << 4) >> 4;
            s(m) > s(r)
        } else {
            m > r
        }
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// What QEMU 7.2's `-cpu cortex-a57` shows at EL2 on `virt` with
    /// virtualization=on and no secure world: its table
    /// (target/arm/cpu64.c) with EL3 cleared and the GICv3 field set.
    const QEMU_A57: [(Encoding, u64); 4] = [(ID_AA64PFR0, 0x0100_0222), (ID_AA64DFR0, 0x1030_5106), (ID_AA64ISAR0, 0x0001_1120), (ID_AA64MMFR0, 0x0000_1124)];

    #[test]
    fn every_trapped_encoding_has_exactly_one_answer() {
        for crm in 1..=7 {
            for op2 in 0..=7 {
                let e = id(crm, op2);
                assert!(is_group3(e));
                assert_eq!(MODEL.iter().filter(|(_, m, _)| *m == e).count(), 1, "{e:?}");
                assert!(value(e).is_some());
            }
        }
        for (name, e, _) in MODEL {
            assert!(is_group3(e), "{name} is not in the trapped space");
        }
        // Neighbours outside the space: MIDR/MPIDR (CRm 0), another op1 or CRn.
        for e in [id(0, 0), id(0, 5), id(8, 0), Encoding { op1: 1, ..ID_AA64PFR0 }, Encoding { crn: 1, ..ID_AA64PFR0 }, Encoding { op0: 2, ..ID_AA64PFR0 }] {
            assert!(!is_group3(e) && value(e).is_none(), "{e:?}");
        }
    }

    #[test]
    fn the_model_is_a_subset_of_qemus_cortex_a57() {
        for (e, real) in QEMU_A57 {
            assert_eq!(exceeds(e, real), None, "{e:?}");
        }
        // ... and every register it leaves out is 0 in the model, so no
        // other register can promise more than the A57 has either (its
        // other AArch64 ID registers are 0 in QEMU's table).
        for (name, e, v) in MODEL {
            if !QEMU_A57.iter().any(|(q, _)| *q == e) {
                assert_eq!(v, 0, "{name}");
            }
        }
    }

    #[test]
    fn features_that_do_not_cross_devices_are_hidden() {
        let field = |e: Encoding, at: u32| (value(e).unwrap() >> at) & 0xf;
        assert_eq!(field(ID_AA64PFR0, 0), 1, "EL0 AArch64 only");
        assert_eq!(field(ID_AA64PFR0, 32), 0, "SVE");
        assert_eq!(field(ID_AA64PFR1, 8), 0, "MTE");
        assert_eq!(field(ID_AA64PFR1, 24), 0, "SME");
        assert_eq!(value(ID_AA64ISAR1), Some(0), "PAuth (APA, API, GPA, GPI), and the rest");
        assert_eq!(field(ID_AA64DFR0, 8), 0, "PMU");
        assert_eq!(field(ID_AA64MMFR0, 4), 0, "8-bit ASIDs");
        assert_eq!(field(ID_AA64MMFR0, 24), 0xf, "no 64 KiB granule");
    }

    #[test]
    fn exceeds_finds_what_this_cpu_lacks() {
        // No crypto extension (a Cortex-A72 as on the Raspberry Pi 4).
        assert_eq!(exceeds(ID_AA64ISAR0, 0x0001_0000), Some(4));
        // GICv3 system registers missing.
        assert_eq!(exceeds(ID_AA64PFR0, 0x0000_0222), Some(24));
        // No FP (signed: 0xf is less than the model's 0), and a CPU with
        // FP16 (1: more) is fine.
        assert_eq!(exceeds(ID_AA64PFR0, 0x010f_0222), Some(16));
        assert_eq!(exceeds(ID_AA64PFR0, 0x0111_1222), None);
        // No 4 KiB granule; a 36-bit physical range.
        assert_eq!(exceeds(ID_AA64MMFR0, 0xf000_1124), Some(28));
        assert_eq!(exceeds(ID_AA64MMFR0, 0x0000_1121), Some(0));
        // A 64 KiB granule on the CPU (0) is more than the model's none (0xf).
        assert_eq!(exceeds(ID_AA64MMFR0, 0x0f00_1124), None);
    }
}
