//! Decoding of ESR_EL2 (exception syndrome) for exits from the guest, and
//! the syndromes the hypervisor builds when it reflects an abort to the
//! guest. Pure data: the layouts are those of the Arm ARM (D17.2.37,
//! "ESR_EL2"), and everything here runs in host tests.

/// Exception classes (ESR_ELx.EC, bits 31:26) that the hypervisor handles.
pub mod ec {
    pub const UNKNOWN: u8 = 0x00;
    pub const WFX: u8 = 0x01;
    pub const FP_ASIMD: u8 = 0x07;
    pub const SMC32: u8 = 0x13;
    pub const HVC64: u8 = 0x16;
    pub const SMC64: u8 = 0x17;
    pub const SYSREG: u8 = 0x18;
    pub const IABT_LOWER: u8 = 0x20;
    pub const IABT_SAME: u8 = 0x21;
    pub const DABT_LOWER: u8 = 0x24;
    pub const DABT_SAME: u8 = 0x25;
}

const IL: u64 = 1 << 25;
const ISS_MASK: u64 = 0x1ff_ffff;

/// Why the guest left EL1 (or EL0), from one ESR_EL2 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    DataAbort(DataAbort),
    InstrAbort(InstrAbort),
    /// HVC from AArch64. ELR_EL2 already points past the instruction.
    Hvc {
        imm: u16,
    },
    /// SMC trapped by HCR_EL2.TSC (AArch64, or AArch32 with imm 0). ELR_EL2
    /// points at the SMC itself: the handler must step over it.
    Smc {
        imm: u16,
    },
    SysReg(SysRegAccess),
    Wfx {
        is_wfe: bool,
    },
    /// FP/SIMD access trapped by CPTR_EL2.
    FpTrap,
    Unknown {
        ec: u8,
        iss: u32,
    },
}

/// Fault status code (DFSC/IFSC, ISS bits 5:0), the kinds that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Level 0..=3 of the walk that found an invalid descriptor.
    Translation(u8),
    AccessFlag(u8),
    Permission(u8),
    /// Synchronous external abort, not on a table walk.
    SyncExternal,
    AlignmentFault,
    Other(u8),
}

impl FaultKind {
    pub fn from_fsc(fsc: u8) -> Self {
        let level = fsc & 0b11;
        match fsc & 0x3f {
            0x04..=0x07 => FaultKind::Translation(level),
            // 0x08 is the level-0 access flag fault of FEAT_LPA2 tables.
            0x08..=0x0b => FaultKind::AccessFlag(level),
            0x0c..=0x0f => FaultKind::Permission(level),
            0x10 => FaultKind::SyncExternal,
            0x21 => FaultKind::AlignmentFault,
            other => FaultKind::Other(other),
        }
    }
}

/// A data abort's syndrome (ISS for EC 0x24/0x25). SAS, SSE, SRT, SF and AR
/// are only meaningful when `isv` is set: a load/store pair, a writeback
/// form or a cache maintenance op gives ISV=0 and cannot be emulated from
/// the syndrome alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataAbort {
    pub isv: bool,
    /// Access size in bytes: 1, 2, 4 or 8.
    pub sas_bytes: u8,
    /// A load that sign-extends.
    pub sse: bool,
    /// Transfer register; 31 is the zero register (xzr/wzr), not SP.
    pub srt: u8,
    /// The register is 64 bits wide (else 32: the upper half is written as zero).
    pub sf: bool,
    /// Acquire/release semantics.
    pub ar: bool,
    /// Write (store) rather than read. Also set for some ISV=0 faults
    /// (DC ZVA, STXR), so it is useful even without ISV.
    pub wnr: bool,
    /// The fault happened on the stage-2 translation of a stage-1 table walk.
    pub s1ptw: bool,
    /// Cache maintenance or address translation instruction.
    pub cm: bool,
    /// External abort type (implementation defined).
    pub ea: bool,
    /// FAR is not valid.
    pub fnv: bool,
    pub dfsc: u8,
    pub kind: FaultKind,
    /// EC 0x24: from the guest (EL0/EL1); 0x25 would be from EL2 itself.
    pub from_lower_el: bool,
    /// 32-bit instruction (IL); the instruction to skip is 4 bytes if set.
    pub il32: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstrAbort {
    pub s1ptw: bool,
    pub ea: bool,
    pub fnv: bool,
    pub ifsc: u8,
    pub kind: FaultKind,
    pub from_lower_el: bool,
}

/// A trapped MSR/MRS (EC 0x18). The encoding is the one written in
/// assembly as `S<op0>_<op1>_C<crn>_C<crm>_<op2>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRegAccess {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
    /// General-purpose register; 31 is the zero register.
    pub rt: u8,
    /// MRS (read into `rt`) rather than MSR.
    pub is_read: bool,
}

pub fn ec_of(esr: u64) -> u8 {
    ((esr >> 26) & 0x3f) as u8
}

/// Length of the trapped instruction in bytes, from ESR.IL: what to add to
/// ELR_EL2 to step over it.
pub fn instr_len(esr: u64) -> u64 {
    if esr & IL != 0 {
        4
    } else {
        2
    }
}

fn bit(v: u64, n: u32) -> bool {
    (v >> n) & 1 != 0
}

fn field(v: u64, lo: u32, width: u32) -> u8 {
    ((v >> lo) & ((1 << width) - 1)) as u8
}

pub fn decode(esr: u64) -> Exit {
    let ec = ec_of(esr);
    let iss = esr & ISS_MASK;
    match ec {
        ec::DABT_LOWER | ec::DABT_SAME => Exit::DataAbort(DataAbort {
            isv: bit(iss, 24),
            sas_bytes: 1 << field(iss, 22, 2),
            sse: bit(iss, 21),
            srt: field(iss, 16, 5),
            sf: bit(iss, 15),
            ar: bit(iss, 14),
            fnv: bit(iss, 10),
            ea: bit(iss, 9),
            cm: bit(iss, 8),
            s1ptw: bit(iss, 7),
            wnr: bit(iss, 6),
            dfsc: field(iss, 0, 6),
            kind: FaultKind::from_fsc(field(iss, 0, 6)),
            from_lower_el: ec == ec::DABT_LOWER,
            il32: esr & IL != 0,
        }),
        ec::IABT_LOWER | ec::IABT_SAME => Exit::InstrAbort(InstrAbort {
            fnv: bit(iss, 10),
            ea: bit(iss, 9),
            s1ptw: bit(iss, 7),
            ifsc: field(iss, 0, 6),
            kind: FaultKind::from_fsc(field(iss, 0, 6)),
            from_lower_el: ec == ec::IABT_LOWER,
        }),
        ec::HVC64 => Exit::Hvc { imm: iss as u16 },
        // SMC32's ISS holds condition fields, not an immediate; AArch64
        // guests (the only kind here) use SMC64.
        ec::SMC64 => Exit::Smc { imm: iss as u16 },
        ec::SMC32 => Exit::Smc { imm: 0 },
        ec::SYSREG => Exit::SysReg(SysRegAccess {
            op0: field(iss, 20, 2),
            op2: field(iss, 17, 3),
            op1: field(iss, 14, 3),
            crn: field(iss, 10, 4),
            rt: field(iss, 5, 5),
            crm: field(iss, 1, 4),
            is_read: bit(iss, 0),
        }),
        // TI, bits 1:0: 0b00 WFI, 0b01 WFE, 0b10 WFIT, 0b11 WFET.
        ec::WFX => Exit::Wfx { is_wfe: bit(iss, 0) },
        ec::FP_ASIMD => Exit::FpTrap,
        _ => Exit::Unknown { ec, iss: iss as u32 },
    }
}

/// Synchronous external abort status code (DFSC/IFSC 0b010000).
const FSC_SEA: u64 = 0x10;

/// ESR_EL1 for reflecting a synchronous external abort to the guest, as if
/// its own access had hit a bus error. `data` picks a data abort (EC
/// 0x24/0x25) over an instruction abort (0x20/0x21); the "lower EL" class is
/// used when the guest was at EL0, "same EL" when it was at EL1. IL=1
/// (AArch64 instructions are 32 bits); ISV=0, since the guest needs no
/// syndrome to handle a bus error; WnR is copied for data aborts.
pub fn external_abort_esr(data: bool, from_el0: bool, wnr: bool) -> u64 {
    let ec = match (data, from_el0) {
        (true, true) => ec::DABT_LOWER,
        (true, false) => ec::DABT_SAME,
        (false, true) => ec::IABT_LOWER,
        (false, false) => ec::IABT_SAME,
    };
    let wnr = if data && wnr { 1 << 6 } else { 0 };
    (ec as u64) << 26 | IL | wnr | FSC_SEA
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a data abort syndrome from the Arm ARM's field layout.
    fn dabt(isv: bool, sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool, dfsc: u64) -> u64 {
        (ec::DABT_LOWER as u64) << 26 | IL | (isv as u64) << 24 | sas << 22 | (sse as u64) << 21 | srt << 16 | (sf as u64) << 15 | (wnr as u64) << 6 | dfsc
    }

    #[test]
    fn store_to_read_only_page_measured_on_qemu() {
        // Measured under QEMU: a store to an S2AP=01 page (`str x5, [..]`).
        let Exit::DataAbort(d) = decode(0x93c5804f) else { panic!("not a data abort") };
        assert!(d.isv && d.wnr && d.from_lower_el && d.il32);
        assert_eq!(d.sas_bytes, 8);
        assert_eq!(d.srt, 5);
        assert!(d.sf);
        assert!(!d.sse && !d.s1ptw && !d.cm && !d.ea && !d.fnv && !d.ar);
        assert_eq!(d.dfsc, 0x0f);
        assert_eq!(d.kind, FaultKind::Permission(3));
        assert_eq!(instr_len(0x93c5804f), 4);
    }

    #[test]
    fn mmio_load_with_sign_extension_to_x_register() {
        // ldrsh x3, [x0] to an unmapped IPA: level-3 translation fault.
        let Exit::DataAbort(d) = decode(dabt(true, 1, true, 3, true, false, 0x07)) else { panic!() };
        assert_eq!((d.sas_bytes, d.srt, d.sse, d.sf, d.wnr), (2, 3, true, true, false));
        assert_eq!(d.kind, FaultKind::Translation(3));
    }

    #[test]
    fn all_access_sizes_and_the_zero_register() {
        for (sas, bytes) in [(0, 1), (1, 2), (2, 4), (3, 8)] {
            let Exit::DataAbort(d) = decode(dabt(true, sas, false, 31, true, true, 0x06)) else { panic!() };
            assert_eq!(d.sas_bytes, bytes);
            assert_eq!(d.srt, 31);
            assert_eq!(d.kind, FaultKind::Translation(2));
        }
    }

    #[test]
    fn load_pair_has_no_valid_syndrome() {
        // ldp to an unmapped IPA: ISV=0, only WnR and DFSC are meaningful.
        let Exit::DataAbort(d) = decode(dabt(false, 0, false, 0, false, false, 0x07)) else { panic!() };
        assert!(!d.isv);
        assert_eq!(d.kind, FaultKind::Translation(3));
    }

    #[test]
    fn stage1_walk_fault_and_other_status_codes() {
        let esr = dabt(false, 0, false, 0, false, false, 0x05) | 1 << 7;
        let Exit::DataAbort(d) = decode(esr) else { panic!() };
        assert!(d.s1ptw);
        assert_eq!(d.kind, FaultKind::Translation(1));
        assert_eq!(FaultKind::from_fsc(0x0a), FaultKind::AccessFlag(2));
        assert_eq!(FaultKind::from_fsc(0x10), FaultKind::SyncExternal);
        assert_eq!(FaultKind::from_fsc(0x21), FaultKind::AlignmentFault);
        assert_eq!(FaultKind::from_fsc(0x15), FaultKind::Other(0x15));
        assert_eq!(FaultKind::from_fsc(0x30), FaultKind::Other(0x30));
    }

    #[test]
    fn cache_maintenance_flags() {
        let esr = dabt(false, 0, false, 0, false, true, 0x07) | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 14;
        let Exit::DataAbort(d) = decode(esr) else { panic!() };
        assert!(d.cm && d.ea && d.fnv && d.ar && d.wnr);
    }

    #[test]
    fn instruction_abort() {
        let esr = (ec::IABT_LOWER as u64) << 26 | IL | 0x07;
        let Exit::InstrAbort(i) = decode(esr) else { panic!() };
        assert_eq!(i.kind, FaultKind::Translation(3));
        assert!(i.from_lower_el && !i.s1ptw);
    }

    #[test]
    fn hvc_and_smc_immediates() {
        // hvc #0 (Linux's PSCI conduit) and hvc #0x1234.
        assert_eq!(decode(0x5a00_0000), Exit::Hvc { imm: 0 });
        assert_eq!(decode(0x5a00_1234), Exit::Hvc { imm: 0x1234 });
        assert_eq!(decode(0x5e00_0000), Exit::Smc { imm: 0 });
        assert_eq!(decode(0x5e00_0007), Exit::Smc { imm: 7 });
    }

    #[test]
    #[allow(clippy::identity_op)] // zero fields spelled out, as in the Arm ARM
    fn system_register_trap() {
        // msr ICC_SGI1R_EL1, x2 = S3_0_C12_C11_5: op0 3, op2 5, op1 0, CRn 12, Rt 2, CRm 11, write.
        let iss = 3 << 20 | 5 << 17 | 0 << 14 | 12 << 10 | 2 << 5 | 11 << 1;
        let Exit::SysReg(s) = decode((ec::SYSREG as u64) << 26 | IL | iss) else { panic!() };
        assert_eq!(s, SysRegAccess { op0: 3, op1: 0, crn: 12, crm: 11, op2: 5, rt: 2, is_read: false });
        // mrs x7, CNTPCT_EL0 = S3_3_C14_C0_1, read.
        let iss = 3 << 20 | 1 << 17 | 3 << 14 | 14 << 10 | 7 << 5 | 0 << 1 | 1;
        let Exit::SysReg(s) = decode((ec::SYSREG as u64) << 26 | IL | iss) else { panic!() };
        assert_eq!(s, SysRegAccess { op0: 3, op1: 3, crn: 14, crm: 0, op2: 1, rt: 7, is_read: true });
    }

    #[test]
    fn wfi_wfe_fp_and_unknown() {
        assert_eq!(decode(0x0600_0000), Exit::Wfx { is_wfe: false });
        assert_eq!(decode(0x0600_0001), Exit::Wfx { is_wfe: true });
        assert_eq!(decode(0x1e00_0000), Exit::FpTrap);
        assert_eq!(decode(0x0200_0000), Exit::Unknown { ec: 0, iss: 0 });
        assert_eq!(decode(0x3c << 26 | IL | 0x42), Exit::Unknown { ec: 0x3c, iss: 0x42 });
        assert_eq!(instr_len(0x0000_0000), 2);
    }

    #[test]
    fn reflected_external_abort() {
        // Store from guest EL1: EC 0x25, IL, WnR, DFSC 0x10.
        assert_eq!(external_abort_esr(true, false, true), 0x9600_0050);
        // Load from EL0: EC 0x24.
        assert_eq!(external_abort_esr(true, true, false), 0x9200_0010);
        // Instruction fetch from EL1: EC 0x21, WnR not applicable.
        assert_eq!(external_abort_esr(false, false, true), 0x8600_0010);
        // And it decodes back as what it claims to be.
        let Exit::DataAbort(d) = decode(external_abort_esr(true, true, true)) else { panic!() };
        assert_eq!(d.kind, FaultKind::SyncExternal);
        assert!(d.wnr && !d.isv);
    }
}
