//! The guest's vCPU as plain data, and its wire form (the CpuState message,
//! whose format the hypervisor owns): general and FP/SIMD registers, PC and
//! PSTATE, every EL1 system register the guest can observe, its virtual
//! timer and counter, and the GIC virtual CPU interface (VMCR, active
//! priorities, list registers). Builds on the host for tests; capture and
//! restore are in `vcpu`.
//!
//! A CpuState comes from the network, and `restore` writes most of it into
//! EL2 registers (ELR/SPSR_EL2, the ICH_* registers, CNTVOFF_EL2), so
//! `decode` sanitises what reaches them: what an honest device cannot
//! have captured is an error, what one can is masked to what this
//! hypervisor and the guest's CPU model allow (CSSELR, held by the CPU
//! model, keeps only the bits the model has). The other EL1 registers are the
//! guest's own: with HCR_EL2.E2H=0 they act only in its EL1&0 regime,
//! under stage 2, and they are loaded as they came.
use alloc::vec::Vec;

use super::sysreg_model::CSSELR_KEPT;
use crate::vplatform::arm::board as vboard;
use crate::vplatform::arm::vgic::NR_INTIDS;

/// EL1/EL0 system registers carried across a switch, in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum El1 {
    Sctlr,
    Cpacr,
    Ttbr0,
    Ttbr1,
    Tcr,
    Mair,
    Amair,
    Esr,
    Far,
    Afsr0,
    Afsr1,
    Par,
    Vbar,
    Contextidr,
    TpidrEl0,
    TpidrroEl0,
    TpidrEl1,
    Cntkctl,
    Csselr,
    SpEl0,
    SpEl1,
    ElrEl1,
    SpsrEl1,
    Mdscr,
}

pub const EL1_COUNT: usize = El1::Mdscr as usize + 1;
/// The GICv3 architecture's maximum.
pub const MAX_LRS: usize = 16;

const MAGIC: &[u8; 4] = b"VSCP";
const VERSION: u16 = 1;
/// Fixed size of the encoding (all fields are always present).
pub const ENCODED_LEN: usize = 4 + 2 + 1 + 8 * (31 + 2 + 2) + 16 * 32 + 8 * EL1_COUNT + 8 * 3 + 8 * 4 + 8 * MAX_LRS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCpu {
    pub x: [u64; 31],
    pub q: [u128; 32],
    pub fpcr: u64,
    pub fpsr: u64,
    /// Where the guest resumes (ELR_EL2) and its PSTATE (SPSR_EL2).
    pub pc: u64,
    pub pstate: u64,
    pub el1: [u64; EL1_COUNT],
    /// The guest's virtual counter (CNTVCT_EL0) at the capture.
    pub vcount: u64,
    pub cntv_ctl: u64,
    pub cntv_cval: u64,
    pub ich_vmcr: u64,
    pub ich_ap0r0: u64,
    pub ich_ap1r0: u64,
    pub ich_hcr: u64,
    /// How many list registers the capturing CPU has (`lrs[nlr..]` are 0).
    pub nlr: u8,
    pub lrs: [u64; MAX_LRS],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuStateError {
    /// Not the length of a CpuState of this version.
    BadLength {
        got: usize,
    },
    BadMagic,
    BadVersion(u16),
    /// More list registers than the architecture allows, or than this
    /// CPU has (the guest's in-flight interrupts would not fit).
    ListRegisters {
        theirs: u8,
        ours: u8,
    },
    /// PSTATE names a mode the guest cannot be resumed in (EL2/EL3 or AArch32).
    BadPstate(u64),
    /// ICH_HCR_EL2 asks for traps or maintenance interrupts this
    /// hypervisor never sets, so no honest device captured it.
    IchHcr(u64),
    /// List register `index` holds what this hypervisor never writes.
    ListRegister {
        index: u8,
        value: u64,
        why: LrProblem,
    },
}

/// Why a list register from the wire is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrProblem {
    /// HW=1 links the virtual interrupt to a physical one, whose
    /// deactivation then follows the guest's: only the virtual timer's
    /// (vINTID = pINTID = 27) is the guest's; any other would let it end
    /// the hypervisor's own interrupts (its tick, console, maintenance).
    HwNotVtimer,
    /// HW=1 and pending+active: the pending part of a HW interrupt stays
    /// in the physical GIC, so the hypervisor never writes this.
    HwPendingActive,
    /// A live interrupt the virtual GIC does not have (vINTID >= NR_INTIDS).
    IntidOutOfRange,
    /// The same vINTID live in two list registers (UNPREDICTABLE in the GIC).
    Duplicate,
    /// A list register past `nlr`, the capturing CPU's count, is not 0.
    BeyondCount,
}

/// ICH_HCR_EL2 bits. En and UIE are the two this hypervisor manages (the
/// virtual CPU interface on while a guest runs; the underflow maintenance
/// interrupt while more interrupts wait than list registers hold, which
/// the refill before every entry recomputes). EOIcount (31:27) counts the
/// guest's EOIs of interrupts not in a list register: the hardware moves
/// it, so an honest capture may carry it, but nothing here reads it
/// (LRENPIE is never set); it restarts at 0. Every other bit is a trap
/// (TC, TALL0/1, TSEI, TDIR, DVIM) or maintenance enable the hypervisor
/// never sets: a state carrying one is refused.
pub const ICH_HCR_EN: u64 = 1 << 0;
pub const ICH_HCR_UIE: u64 = 1 << 1;
const ICH_HCR_EOICOUNT: u64 = 0x1f << 27;

/// ICH_VMCR_EL2: the guest's own CPU interface controls (VENG0/1, VAckCtl,
/// VFIQEn, VCBPR, VEOIM, VBPR0/1, VPMR); the rest is RES0, masked.
const ICH_VMCR_DEFINED: u64 = 0b1_1111 | 1 << 9 | 0x3f << 18 | 0xff << 24;
/// ICH_AP<n>R0_EL2: 32 active-priority bits; 63:32 are RES0, masked.
const ICH_APR_DEFINED: u64 = 0xffff_ffff;

/// ICH_LR<n>_EL2: vINTID 31:0, pINTID 44:32 (HW=1) or EOI 41 (HW=0),
/// priority 55:48, group 60, HW 61, state 63:62; 47:45 and 59:56 RES0.
const LR_HW: u64 = 1 << 61;
const LR_STATE_SHIFT: u32 = 62;
const LR_PENDING_ACTIVE: u64 = 3;
/// What is kept of a HW=0 list register: vINTID, priority, group, HW,
/// state. RES0 bits and the EOI maintenance request (this hypervisor never
/// asks for it; its maintenance handler would ignore it) are dropped.
const LR_KEPT_SW: u64 = 0xffff_ffff | 0xff << 48 | 0xf << 60;
/// A HW=1 list register keeps its pINTID too.
const LR_KEPT_HW: u64 = LR_KEPT_SW | 0x1fff << 32;

/// PSTATE (SPSR_EL2) bits of the guest's CPU model (Armv8.0, see
/// `id_model`): NZCV, SS, IL, D, A, I, F and M[4:0]. The bits of features
/// the model hides (PAN, UAO, DIT, TCO, SSBS, BTYPE, ALLINT, PM, ...) are
/// masked: a device whose CPU has them may have captured one set by the
/// hardware, and the model's guest never relies on them.
const PSTATE_KEPT: u64 = 0xf000_0000 | 1 << 21 | 1 << 20 | 0xf << 6 | 0x1f;

impl GuestCpu {
    pub fn zeroed() -> Self {
        GuestCpu {
            x: [0; 31],
            q: [0; 32],
            fpcr: 0,
            fpsr: 0,
            pc: 0,
            pstate: 0,
            el1: [0; EL1_COUNT],
            vcount: 0,
            cntv_ctl: 0,
            cntv_cval: 0,
            ich_vmcr: 0,
            ich_ap0r0: 0,
            ich_ap1r0: 0,
            ich_hcr: 0,
            nlr: 0,
            lrs: [0; MAX_LRS],
        }
    }

    pub fn get(&self, r: El1) -> u64 {
        self.el1[r as usize]
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(ENCODED_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(self.nlr);
        let words = self.x.iter().chain([&self.fpcr, &self.fpsr, &self.pc, &self.pstate]);
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for q in &self.q {
            out.extend_from_slice(&q.to_le_bytes());
        }
        let rest = self
            .el1
            .iter()
            .chain([&self.vcount, &self.cntv_ctl, &self.cntv_cval, &self.ich_vmcr, &self.ich_ap0r0, &self.ich_ap1r0, &self.ich_hcr])
            .chain(self.lrs.iter());
        for w in rest {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Decodes and checks a CpuState for a CPU with `our_lrs` list registers.
    pub fn decode(b: &[u8], our_lrs: u8) -> Result<Self, CpuStateError> {
        if b.len() != ENCODED_LEN {
            return Err(CpuStateError::BadLength { got: b.len() });
        }
        if &b[..4] != MAGIC {
            return Err(CpuStateError::BadMagic);
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(CpuStateError::BadVersion(version));
        }
        let nlr = b[6];
        if nlr as usize > MAX_LRS || nlr > our_lrs {
            return Err(CpuStateError::ListRegisters { theirs: nlr, ours: our_lrs });
        }
        let mut at = 7;
        // The length was checked above, so every read is in bounds.
        let mut u64_ = || {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            at += 8;
            u64::from_le_bytes(w)
        };
        let mut c = GuestCpu::zeroed();
        c.nlr = nlr;
        for x in c.x.iter_mut() {
            *x = u64_();
        }
        c.fpcr = u64_();
        c.fpsr = u64_();
        c.pc = u64_();
        c.pstate = u64_();
        for q in c.q.iter_mut() {
            let lo = u64_() as u128;
            let hi = u64_() as u128;
            *q = lo | hi << 64;
        }
        for r in c.el1.iter_mut() {
            *r = u64_();
        }
        c.vcount = u64_();
        c.cntv_ctl = u64_();
        c.cntv_cval = u64_();
        c.ich_vmcr = u64_();
        c.ich_ap0r0 = u64_();
        c.ich_ap1r0 = u64_();
        c.ich_hcr = u64_();
        for lr in c.lrs.iter_mut() {
            *lr = u64_();
        }
        c.sanitise()?;
        Ok(c)
    }

    /// Checks and masks, in place, every field that `restore` writes to
    /// an EL2 register (see the module's comment and the constants).
    fn sanitise(&mut self) -> Result<(), CpuStateError> {
        // AArch64 EL0t, EL1t or EL1h only (M[4] = 0: AArch64): an ERET to
        // EL2 would run the sender's code as the hypervisor.
        if !matches!(self.pstate & 0x1f, 0b00000 | 0b00100 | 0b00101) {
            return Err(CpuStateError::BadPstate(self.pstate));
        }
        self.pstate &= PSTATE_KEPT;
        if self.ich_hcr & !(ICH_HCR_EN | ICH_HCR_UIE | ICH_HCR_EOICOUNT) != 0 {
            return Err(CpuStateError::IchHcr(self.ich_hcr));
        }
        // The interface is on whenever the guest runs, whatever came.
        self.ich_hcr = ICH_HCR_EN | (self.ich_hcr & ICH_HCR_UIE);
        // The guest's cache selection, held by the CPU model (TID2): only
        // the bits the model has.
        self.el1[El1::Csselr as usize] &= CSSELR_KEPT;
        self.ich_vmcr &= ICH_VMCR_DEFINED;
        self.ich_ap0r0 &= ICH_APR_DEFINED;
        self.ich_ap1r0 &= ICH_APR_DEFINED;
        let mut live = [0u32; NR_INTIDS.div_ceil(32)];
        for (n, lr) in self.lrs.iter_mut().enumerate() {
            let bad = |why| CpuStateError::ListRegister { index: n as u8, value: *lr, why };
            if n >= self.nlr as usize {
                if *lr != 0 {
                    return Err(bad(LrProblem::BeyondCount));
                }
                continue;
            }
            let vintid = *lr as u32;
            let state = *lr >> LR_STATE_SHIFT;
            if *lr & LR_HW != 0 {
                let pintid = ((*lr >> 32) & 0x1fff) as u32;
                if pintid != vboard::VTIMER_INTID || vintid != vboard::VTIMER_INTID {
                    return Err(bad(LrProblem::HwNotVtimer));
                }
                if state == LR_PENDING_ACTIVE {
                    return Err(bad(LrProblem::HwPendingActive));
                }
            }
            if state != 0 {
                if vintid as usize >= NR_INTIDS {
                    return Err(bad(LrProblem::IntidOutOfRange));
                }
                let (w, b) = ((vintid / 32) as usize, 1u32 << (vintid % 32));
                if live[w] & b != 0 {
                    return Err(bad(LrProblem::Duplicate));
                }
                live[w] |= b;
            }
            *lr &= if *lr & LR_HW != 0 { LR_KEPT_HW } else { LR_KEPT_SW };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn sample() -> GuestCpu {
        let mut c = GuestCpu::zeroed();
        for (i, x) in c.x.iter_mut().enumerate() {
            *x = 0x1111_0000 + i as u64;
        }
        for (i, q) in c.q.iter_mut().enumerate() {
            *q = (i as u128) << 100 | 0xabcd;
        }
        c.pc = 0xffff_8000_1234_5678;
        c.pstate = 0x3c5;
        for (i, r) in c.el1.iter_mut().enumerate() {
            *r = 0xe100 + i as u64;
        }
        // A cache selection the CPU model has: L2 (not in CLIDR), data.
        c.el1[El1::Csselr as usize] = 0b0010;
        c.vcount = 123_456_789;
        c.cntv_ctl = 1;
        c.cntv_cval = 123_999_999;
        c.nlr = 4;
        // What the refill writes: the virtual timer as HW (active), an SGI
        // and the UART pending, the underflow interrupt asked for.
        c.lrs[0] = 0xa000_001b_0000_001b;
        c.lrs[1] = 0x5080_0000_0000_0001;
        c.lrs[2] = 0x5080_0000_0000_0021;
        c.ich_hcr = ICH_HCR_EN | ICH_HCR_UIE;
        c.ich_vmcr = 0xf000_0003;
        c.ich_ap1r0 = 1 << 16;
        c
    }

    fn decoded(c: &GuestCpu) -> Result<GuestCpu, CpuStateError> {
        let mut b = Vec::new();
        c.encode(&mut b);
        GuestCpu::decode(&b, 4)
    }

    #[test]
    fn round_trips() {
        let c = sample();
        let mut b = Vec::new();
        c.encode(&mut b);
        assert_eq!(b.len(), ENCODED_LEN);
        assert_eq!(GuestCpu::decode(&b, 4), Ok(c.clone()));
        // The q registers' high halves survive (little-endian u128 as two u64).
        assert_eq!(GuestCpu::decode(&b, 4).unwrap().q[31] >> 100, 31);
        assert_eq!(c.get(El1::Mdscr), 0xe100 + EL1_COUNT as u64 - 1);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut b = Vec::new();
        sample().encode(&mut b);
        for n in [0, 6, ENCODED_LEN - 1] {
            assert_eq!(GuestCpu::decode(&b[..n], 4), Err(CpuStateError::BadLength { got: n }));
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(GuestCpu::decode(&longer, 4).is_err());
        let mut m = b.clone();
        m[0] ^= 1;
        assert_eq!(GuestCpu::decode(&m, 4), Err(CpuStateError::BadMagic));
        let mut v = b.clone();
        v[4] = 9;
        assert_eq!(GuestCpu::decode(&v, 4), Err(CpuStateError::BadVersion(9)));
        assert_eq!(GuestCpu::decode(&b, 2), Err(CpuStateError::ListRegisters { theirs: 4, ours: 2 }));
        let mut el2 = sample();
        el2.pstate = 0x3c9;
        let mut e = Vec::new();
        el2.encode(&mut e);
        assert_eq!(GuestCpu::decode(&e, 4), Err(CpuStateError::BadPstate(0x3c9)));
    }

    #[test]
    fn pstate_is_an_aarch64_el1_or_el0_mode_of_the_model() {
        for (m, ok) in [(0b00000, true), (0b00100, true), (0b00101, true), (0b01001, false), (0b01101, false), (0b10000, false), (0b10011, false)] {
            let mut c = sample();
            c.pstate = 0x3c0 | m;
            let r = decoded(&c);
            assert_eq!(r.is_ok(), ok, "mode {m:#b}: {r:?}");
        }
        // NZCV, SS, IL and DAIF survive; PAN, UAO, DIT, TCO, SSBS and
        // BTYPE (features the model hides) do not.
        let mut c = sample();
        c.pstate = 0xf000_03c5 | 1 << 21 | 1 << 20 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 25 | 1 << 12 | 0b11 << 10 | 1 << 32;
        assert_eq!(decoded(&c).unwrap().pstate, 0xf000_03c5 | 1 << 21 | 1 << 20);
    }

    #[test]
    fn ich_hcr_carries_only_what_the_hypervisor_manages() {
        // Traps (TC 10, TALL0 11, TALL1 12, TSEI 13, TDIR 14, DVIM 15) and
        // maintenance enables other than UIE (LRENPIE 2, NPIE 3, VGrp* 4-7,
        // vSGIEOICount 8) and RES0 bits are refused.
        for bit in (2..=15).chain([20, 63]) {
            let mut c = sample();
            c.ich_hcr |= 1 << bit;
            assert_eq!(decoded(&c), Err(CpuStateError::IchHcr(c.ich_hcr)), "bit {bit}");
        }
        // En is forced on, UIE kept, EOIcount dropped.
        let mut c = sample();
        c.ich_hcr = 0x1f << 27;
        assert_eq!(decoded(&c).unwrap().ich_hcr, ICH_HCR_EN);
        c.ich_hcr = ICH_HCR_UIE;
        assert_eq!(decoded(&c).unwrap().ich_hcr, ICH_HCR_EN | ICH_HCR_UIE);
    }

    #[test]
    fn vmcr_and_active_priorities_lose_res0_bits() {
        let mut c = sample();
        c.ich_vmcr = u64::MAX;
        c.ich_ap0r0 = u64::MAX;
        c.ich_ap1r0 = 0xdead_0000_0000_0001;
        let d = decoded(&c).unwrap();
        assert_eq!(d.ich_vmcr, 0xfffc_021f);
        assert_eq!(d.ich_ap0r0, 0xffff_ffff);
        assert_eq!(d.ich_ap1r0, 1);
    }

    fn lr_error(c: &GuestCpu) -> Option<(u8, LrProblem)> {
        match decoded(c) {
            Err(CpuStateError::ListRegister { index, why, .. }) => Some((index, why)),
            _ => None,
        }
    }

    #[test]
    fn hw_list_registers_link_only_the_virtual_timer() {
        // HW=1 with the hypervisor's tick (26), the maintenance interrupt
        // (25), the console (33): refused, live or not.
        for pintid in [26u64, 25, 33, 0] {
            for state in [0u64, 1, 2] {
                let mut c = sample();
                c.lrs[3] = state << 62 | LR_HW | pintid << 32 | 27;
                assert_eq!(lr_error(&c), Some((3, LrProblem::HwNotVtimer)), "pINTID {pintid} state {state}");
            }
        }
        // The timer's pINTID under another vINTID: the guest's EOI of that
        // one would end the physical timer's activation.
        let mut c = sample();
        c.lrs[3] = 2 << 62 | LR_HW | 27 << 32 | 33;
        assert_eq!(lr_error(&c), Some((3, LrProblem::HwNotVtimer)));
        c.lrs[0] = 3 << 62 | LR_HW | 27 << 32 | 27;
        c.lrs[3] = 0;
        assert_eq!(lr_error(&c), Some((0, LrProblem::HwPendingActive)));
    }

    #[test]
    fn live_list_registers_name_distinct_interrupts_of_the_vgic() {
        let mut c = sample();
        c.lrs[3] = 1 << 62 | NR_INTIDS as u64;
        assert_eq!(lr_error(&c), Some((3, LrProblem::IntidOutOfRange)));
        c.lrs[3] = 1 << 62 | 1023;
        assert_eq!(lr_error(&c), Some((3, LrProblem::IntidOutOfRange)));
        // An empty (state 0) list register keeps its last occupant's fields.
        c.lrs[3] = 1023;
        assert_eq!(lr_error(&c), None);
        c.lrs[3] = 2 << 62 | 0x21;
        assert_eq!(lr_error(&c), Some((3, LrProblem::Duplicate)));
        c.lrs[3] = 0x21;
        assert_eq!(lr_error(&c), None);
    }

    #[test]
    fn list_registers_past_the_count_are_zero() {
        let mut c = sample();
        c.lrs[4] = 1 << 62 | 5;
        assert_eq!(lr_error(&c), Some((4, LrProblem::BeyondCount)));
        c.lrs[4] = 0;
        c.lrs[15] = 1;
        assert_eq!(lr_error(&c), Some((15, LrProblem::BeyondCount)));
    }

    #[test]
    fn list_registers_lose_res0_bits_and_eoi_requests() {
        let mut c = sample();
        let sw = 0x5080_0000_0000_0021;
        c.lrs[2] = sw | 0xf << 56 | 0b111 << 45 | LR_EOI_BIT | 0x5 << 32;
        c.lrs[0] |= 0xf << 56 | 0b111 << 45;
        let d = decoded(&c).unwrap();
        assert_eq!(d.lrs[2], sw);
        assert_eq!(d.lrs[0], sample().lrs[0]);
    }

    const LR_EOI_BIT: u64 = 1 << 41;

    #[test]
    fn csselr_keeps_only_what_the_cpu_model_has() {
        // TnD (4, FEAT_MTE2) and RES0 bits go; InD and Level stay. A state
        // from before TID2 (CSSELR captured from the CPU) carries only
        // architectural bits, which survive.
        let mut c = sample();
        c.el1[El1::Csselr as usize] = 0xffff_0000_0000_0013;
        assert_eq!(decoded(&c).unwrap().get(El1::Csselr), 0x3);
        c.el1[El1::Csselr as usize] = 0b0011;
        assert_eq!(decoded(&c).unwrap(), c);
    }

    /// xorshift64: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Decoding must not panic; what it accepts is a fixed point of
    /// sanitising (decode(encode(x)) is x) and drives the CPU model's
    /// registers with its CSSELR.
    fn check_hostile(input: &[u8]) -> bool {
        use crate::arch::aarch64::sysreg_model::{self, ModelRegs, Outcome};
        let Ok(c) = GuestCpu::decode(input, MAX_LRS as u8) else { return false };
        let mut again = Vec::new();
        c.encode(&mut again);
        assert_eq!(GuestCpu::decode(&again, MAX_LRS as u8).as_ref(), Ok(&c), "sanitised state is stable");
        let mut regs = ModelRegs { csselr: c.get(El1::Csselr) };
        assert_eq!(regs.csselr & !sysreg_model::CSSELR_KEPT, 0);
        for e in [sysreg_model::CCSIDR_EL1, sysreg_model::CSSELR_EL1, sysreg_model::CLIDR_EL1, sysreg_model::CTR_EL0] {
            assert!(matches!(sysreg_model::emulate(e, None, &mut regs), Some((_, Outcome::Read(_)))), "{e:?}");
        }
        assert_eq!(
            sysreg_model::emulate(sysreg_model::CCSIDR_EL1, None, &mut regs).map(|(_, o)| o),
            Some(Outcome::Read(sysreg_model::ccsidr(c.get(El1::Csselr))))
        );
        true
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut b = Vec::new();
        sample().encode(&mut b);
        let mut accepted = 0;
        for bit in 0..b.len() * 8 {
            let mut f = b.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            accepted += check_hostile(&f) as usize;
        }
        // Registers take any value; the header, PSTATE, ICH_HCR and the
        // list registers do not: both paths ran.
        assert!(accepted > b.len() && accepted < b.len() * 8, "{accepted} of {} flips accepted", b.len() * 8);
        let csselr_at = ENCODED_LEN - 8 * MAX_LRS - 8 * 7 - 8 * (EL1_COUNT - El1::Csselr as usize);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            // Garbage of any length, and of the right length behind a
            // valid header so the checks get deep.
            let n = (rng.next() % (ENCODED_LEN as u64 + 64)) as usize;
            let mut f: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            check_hostile(&f);
            if f.len() >= 7 {
                f[..7].copy_from_slice(&b[..7]);
                check_hostile(&f);
            }
            // A valid state with a few bytes changed, and with any CSSELR.
            let mut g = b.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % b.len() as u64) as usize;
                g[at] = rng.next() as u8;
            }
            check_hostile(&g);
            let mut h = b.clone();
            h[csselr_at..csselr_at + 8].copy_from_slice(&rng.next().to_le_bytes());
            assert!(check_hostile(&h), "any CSSELR is accepted (masked)");
        }
        check_hostile(&[0xff; ENCODED_LEN]);
    }
}
