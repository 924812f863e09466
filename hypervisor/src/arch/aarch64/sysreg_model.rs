//! The rest of the one CPU model (`id_model` holds the group-3 ID
//! registers): what the guest reads and writes at the registers the other
//! identification, cache and debug traps send to EL2. Plain data in
//! (encoding, value written, the guest's CSSELR), plain data out;
//! host-tested. `exits` answers the traps from here.
//!
//! - Cache geometry (HCR_EL2.TID2): CTR_EL0, CLIDR_EL1 and CCSIDR_EL1 come
//!   from one fixed cache model; CSSELR_EL1 is held here (it moves with
//!   the guest in its CpuState), never in the CPU's own register, whose
//!   unimplemented selections read back UNPREDICTABLE.
//! - REVIDR_EL1 and AIDR_EL1 (HCR_EL2.TID1) read 0: no revision or
//!   implementation-defined detail of one device's core reaches the guest.
//! - DC ZVA is prohibited (HCR_EL2.TDZ, which also makes DCZID_EL0.DZP
//!   read 1): its block size is DCZID_EL0.BS, a per-core value the guest
//!   would read once and trust for ever. A DC ZVA that runs anyway is
//!   undefined, as on a CPU that prohibits it.
//! - PMU and debug registers (MDCR_EL2.TPM, TPMCR, TDA, TDOSA, TDRA) read
//!   as zero and ignore writes: the model has no PMU (PMUVer 0), and
//!   counters, breakpoints and watchpoints are not in a CpuState, so they
//!   could not follow the guest. The guest's own breakpoints and
//!   watchpoints therefore never fire.
use super::id_model::{self, Encoding};

/// CTR_EL0 (Arm ARM D19.2.34): RES1 (31); DIC and IDC 0, so the guest
/// cleans to the point of unification and invalidates the instruction
/// cache, which is right on every core; CWG and ERG 0, "not given",
/// software assumes the architectural maximum (2 KiB); DminLine and
/// IminLine 2, 16-byte lines, the smallest a core may have: maintenance
/// by VA steps by these, and a step smaller than the real line is only
/// slower, a larger one would skip lines; L1Ip 0b10, VIPT, the weaker
/// policy (Linux then invalidates the whole instruction cache where a
/// PIPT one would allow a range), correct on PIPT cores too.
pub const CTR: u64 = 0x8002_8002;

/// CLIDR_EL1: one level, separate instruction and data caches (Ctype1
/// 0b011), LoUIS, LoC and LoUU all 1. The shape KVM shows its guests
/// since Linux 6.3 ("KVM: arm64: Normalize cache configuration"), which
/// Linux guests are known to accept.
pub const CLIDR: u64 = 0b011 | 1 << 21 | 1 << 24 | 1 << 27;

/// CCSIDR_EL1 of either level-1 cache: LineSize 0 (16 bytes, the line of
/// `CTR`), one way, one set (Associativity and NumSets hold the count
/// minus one). Set/way maintenance is for firmware at power-down, which
/// the guest never does: Linux does not use it.
pub const CCSIDR_L1: u64 = 0;

/// CSSELR_EL1 bits that exist in the model: InD (0) and Level (3:1).
/// TnD (4) is FEAT_MTE2's, which the model hides (RES0).
pub const CSSELR_KEPT: u64 = 0xf;

const fn enc(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Encoding {
    Encoding { op0, op1, crn, crm, op2 }
}

pub const CTR_EL0: Encoding = enc(3, 3, 0, 0, 1);
pub const DCZID_EL0: Encoding = enc(3, 3, 0, 0, 7);
pub const CCSIDR_EL1: Encoding = enc(3, 1, 0, 0, 0);
pub const CLIDR_EL1: Encoding = enc(3, 1, 0, 0, 1);
pub const CCSIDR2_EL1: Encoding = enc(3, 1, 0, 0, 2);
pub const AIDR_EL1: Encoding = enc(3, 1, 0, 0, 7);
pub const CSSELR_EL1: Encoding = enc(3, 2, 0, 0, 0);
pub const REVIDR_EL1: Encoding = enc(3, 0, 0, 0, 6);
/// `DC ZVA, Xt`: a system instruction (op0 1), trapped as a write.
pub const DC_ZVA: Encoding = enc(1, 3, 7, 4, 1);
pub const PMCR_EL0: Encoding = enc(3, 3, 9, 12, 0);
pub const PMCCNTR_EL0: Encoding = enc(3, 3, 9, 13, 0);
pub const MDSCR_EL1: Encoding = enc(2, 0, 0, 2, 2);
pub const OSLAR_EL1: Encoding = enc(2, 0, 1, 0, 4);

/// Which part of the model a trap was, for the first-trap log line and
/// the counters at power-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Kind {
    /// A group-3 ID register (TID3, `id_model`).
    Id,
    Ctr,
    Clidr,
    Ccsidr,
    Csselr,
    /// REVIDR_EL1 or AIDR_EL1 (TID1).
    Revidr,
    DcZva,
    Pmu,
    Debug,
}

pub const KINDS: usize = Kind::Debug as usize + 1;

impl Kind {
    pub const ALL: [Kind; KINDS] = [Kind::Id, Kind::Ctr, Kind::Clidr, Kind::Ccsidr, Kind::Csselr, Kind::Revidr, Kind::DcZva, Kind::Pmu, Kind::Debug];

    /// The counter's name in the power-off line.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Id => "id",
            Kind::Ctr => "ctr_el0",
            Kind::Clidr => "clidr_el1",
            Kind::Ccsidr => "ccsidr_el1",
            Kind::Csselr => "csselr_el1",
            Kind::Revidr => "revidr_aidr",
            Kind::DcZva => "dc_zva",
            Kind::Pmu => "pmu",
            Kind::Debug => "debug",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Id => "ID registers",
            Kind::Ctr => "CTR_EL0",
            Kind::Clidr => "CLIDR_EL1",
            Kind::Ccsidr => "CCSIDR_EL1",
            Kind::Csselr => "CSSELR_EL1",
            Kind::Revidr => "REVIDR_EL1/AIDR_EL1",
            Kind::DcZva => "DC ZVA",
            Kind::Pmu => "PMU registers",
            Kind::Debug => "debug registers",
        }
    }
}

/// What the trapped instruction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An MRS reads this.
    Read(u64),
    /// An MSR or system instruction done (or ignored); step over it.
    Written,
    /// Not in the model (a write to a read-only register, a prohibited or
    /// absent feature): the guest takes an undefined-instruction exception.
    Undefined,
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Outcome::Read(v) => write!(f, "reads {v:#x}"),
            Outcome::Written => f.write_str("write taken"),
            Outcome::Undefined => f.write_str("undefined"),
        }
    }
}

/// The model's state the guest can change: only its cache selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelRegs {
    pub csselr: u64,
}

/// CCSIDR_EL1 for a CSSELR_EL1: the level-1 data or instruction cache,
/// and 0 for a selection CLIDR does not name (UNKNOWN in the architecture).
pub fn ccsidr(csselr: u64) -> u64 {
    match csselr & CSSELR_KEPT {
        0 | 1 => CCSIDR_L1,
        _ => 0,
    }
}

fn is_pmu(e: Encoding) -> bool {
    // PMCR_EL0 .. PMOVSSET_EL0 and PMINTEN*_EL1, PMMIR_EL1 (op1 0 or 3,
    // CRn 9, CRm 12..14); PMEVCNTR<n>, PMEVTYPER<n>, PMCCFILTR (CRn 14,
    // CRm 8..15).
    e.op0 == 3 && ((e.crn == 9 && (12..=14).contains(&e.crm) && (e.op1 == 0 || e.op1 == 3)) || (e.crn == 14 && e.op1 == 3 && e.crm >= 8))
}

/// The trap of `e` (`write`: the value an MSR writes, `None` for an MRS)
/// as the model answers it; `None` for an encoding outside the model (the
/// caller's own, or one it treats as RAZ/WI and reports).
pub fn emulate(e: Encoding, write: Option<u64>, regs: &mut ModelRegs) -> Option<(Kind, Outcome)> {
    let read_only = |kind, v| Some((kind, if write.is_some() { Outcome::Undefined } else { Outcome::Read(v) }));
    if let Some(v) = id_model::value(e) {
        return read_only(Kind::Id, v);
    }
    match e {
        CTR_EL0 => read_only(Kind::Ctr, CTR),
        CLIDR_EL1 => read_only(Kind::Clidr, CLIDR),
        CCSIDR_EL1 => read_only(Kind::Ccsidr, ccsidr(regs.csselr)),
        // FEAT_CCIDX's, absent from the model (ID_AA64MMFR2 CCIDX 0).
        CCSIDR2_EL1 => Some((Kind::Ccsidr, Outcome::Undefined)),
        CSSELR_EL1 => match write {
            Some(v) => {
                regs.csselr = v & CSSELR_KEPT;
                Some((Kind::Csselr, Outcome::Written))
            }
            None => Some((Kind::Csselr, Outcome::Read(regs.csselr))),
        },
        REVIDR_EL1 | AIDR_EL1 => read_only(Kind::Revidr, 0),
        DC_ZVA => Some((Kind::DcZva, Outcome::Undefined)),
        _ if is_pmu(e) => Some((Kind::Pmu, if write.is_some() { Outcome::Written } else { Outcome::Read(0) })),
        // op0 2 is the debug (op1 0 and 3) and trace (op1 1) space.
        _ if e.op0 == 2 => Some((Kind::Debug, if write.is_some() { Outcome::Written } else { Outcome::Read(0) })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn read(e: Encoding, regs: &mut ModelRegs) -> Option<(Kind, Outcome)> {
        emulate(e, None, regs)
    }

    #[test]
    fn ctr_is_a_valid_minimum_every_armv8_core_satisfies() {
        let field = |at: u32, bits: u32| (CTR >> at) & ((1 << bits) - 1);
        assert_eq!(field(31, 1), 1, "RES1");
        assert_eq!((field(29, 1), field(28, 1)), (0, 0), "DIC and IDC: maintenance needed everywhere");
        assert_eq!((field(24, 4), field(20, 4)), (0, 0), "CWG and ERG not given");
        assert_eq!(4 << field(16, 4), 16, "DminLine: 16-byte lines");
        assert_eq!(4 << field(0, 4), 16, "IminLine: 16-byte lines");
        assert_eq!(field(14, 2), 0b10, "L1Ip VIPT");
        // QEMU's cortex-a57 (0x8444c004: 64-byte lines, PIPT) and a core
        // with 128-byte lines: the model's line never exceeds theirs.
        for real in [0x8444_c004u64, 0x8445_c005] {
            assert!(CTR >> 16 & 0xf <= real >> 16 & 0xf && CTR & 0xf <= real & 0xf, "{real:#x}");
        }
        let mut r = ModelRegs::default();
        assert_eq!(read(CTR_EL0, &mut r), Some((Kind::Ctr, Outcome::Read(0x8002_8002))));
    }

    #[test]
    fn clidr_and_ccsidr_describe_one_level_of_separate_caches() {
        let mut r = ModelRegs::default();
        assert_eq!(read(CLIDR_EL1, &mut r), Some((Kind::Clidr, Outcome::Read(0x0920_0003))));
        assert_eq!(CLIDR & 0x7, 0b011, "L1 separate I and D");
        assert_eq!(CLIDR >> 3 & 0x7, 0, "no level 2");
        // CCSIDR's line (LineSize + 4 = log2 bytes) is CTR's.
        let line = |c: u64| 1u64 << ((c & 7) + 4);
        for csselr in [0, 1] {
            r.csselr = csselr;
            let Some((Kind::Ccsidr, Outcome::Read(c))) = read(CCSIDR_EL1, &mut r) else { panic!() };
            assert_eq!(line(c), 4 << (CTR >> 16 & 0xf));
            assert_eq!(line(c), 4 << (CTR & 0xf));
        }
        assert_eq!(emulate(CCSIDR2_EL1, None, &mut r), Some((Kind::Ccsidr, Outcome::Undefined)));
    }

    #[test]
    fn csselr_is_held_masked_and_selects_ccsidr() {
        let mut r = ModelRegs::default();
        assert_eq!(emulate(CSSELR_EL1, Some(0xffff_ffff_ffff_fff3), &mut r), Some((Kind::Csselr, Outcome::Written)));
        assert_eq!(r.csselr, 0x3, "TnD and RES0 bits dropped");
        assert_eq!(read(CSSELR_EL1, &mut r), Some((Kind::Csselr, Outcome::Read(3))));
        // Level 2 is not in CLIDR: 0, not whatever this core has.
        assert_eq!(read(CCSIDR_EL1, &mut r), Some((Kind::Ccsidr, Outcome::Read(0))));
        assert_eq!(ccsidr(2), 0);
    }

    #[test]
    fn identity_registers_read_zero_and_read_only_ones_refuse_writes() {
        let mut r = ModelRegs::default();
        assert_eq!(read(REVIDR_EL1, &mut r), Some((Kind::Revidr, Outcome::Read(0))));
        assert_eq!(read(AIDR_EL1, &mut r), Some((Kind::Revidr, Outcome::Read(0))));
        for e in [CTR_EL0, CLIDR_EL1, CCSIDR_EL1, REVIDR_EL1, id_model::ID_AA64PFR0] {
            assert!(matches!(emulate(e, Some(1), &mut r), Some((_, Outcome::Undefined))), "{e:?}");
        }
        assert_eq!(r, ModelRegs::default(), "nothing written");
        // The group-3 ID registers answer from `id_model`.
        assert_eq!(read(id_model::ID_AA64ISAR0, &mut r), Some((Kind::Id, Outcome::Read(id_model::value(id_model::ID_AA64ISAR0).unwrap()))));
    }

    #[test]
    fn dc_zva_is_undefined() {
        let mut r = ModelRegs::default();
        assert_eq!(emulate(DC_ZVA, Some(0x4000_0000), &mut r), Some((Kind::DcZva, Outcome::Undefined)));
        // Other cache maintenance (DC CIVAC 1,3,7,14,1) is not the model's.
        assert_eq!(emulate(enc(1, 3, 7, 14, 1), Some(0), &mut r), None);
    }

    #[test]
    fn pmu_and_debug_registers_are_raz_wi() {
        let mut r = ModelRegs::default();
        // PMCR, PMCCNTR, PMUSERENR (3,3,9,14,0), PMINTENSET_EL1 (3,0,9,14,1),
        // PMEVCNTR5 (3,3,14,8,5), PMCCFILTR (3,3,14,15,7).
        for e in [PMCR_EL0, PMCCNTR_EL0, enc(3, 3, 9, 14, 0), enc(3, 0, 9, 14, 1), enc(3, 3, 14, 8, 5), enc(3, 3, 14, 15, 7)] {
            assert_eq!(read(e, &mut r), Some((Kind::Pmu, Outcome::Read(0))), "{e:?}");
            assert_eq!(emulate(e, Some(u64::MAX), &mut r), Some((Kind::Pmu, Outcome::Written)), "{e:?}");
        }
        // MDSCR, OSLAR, DBGBCR0 (2,0,0,0,5), MDRAR (2,0,1,0,0), MDCCSR_EL0 (2,3,0,1,0).
        for e in [MDSCR_EL1, OSLAR_EL1, enc(2, 0, 0, 0, 5), enc(2, 0, 1, 0, 0), enc(2, 3, 0, 1, 0)] {
            assert_eq!(read(e, &mut r), Some((Kind::Debug, Outcome::Read(0))), "{e:?}");
            assert_eq!(emulate(e, Some(u64::MAX), &mut r), Some((Kind::Debug, Outcome::Written)), "{e:?}");
        }
        assert_eq!(r, ModelRegs::default());
        // Neighbours that are not: the GIC's ICC_SGI1R (3,0,12,11,5), the
        // virtual timer (3,3,14,3,1), CNTKCTL (3,0,14,1,0), DCZID_EL0 (not trappable).
        for e in [enc(3, 0, 12, 11, 5), enc(3, 3, 14, 3, 1), enc(3, 0, 14, 1, 0), DCZID_EL0] {
            assert_eq!(read(e, &mut r), None, "{e:?}");
        }
    }

    #[test]
    fn every_kind_is_named_once() {
        for (n, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, n);
            assert_eq!(Kind::ALL.iter().filter(|o| o.name() == k.name() || o.key() == k.key()).count(), 1);
        }
    }
}
