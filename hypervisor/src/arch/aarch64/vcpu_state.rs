//! The guest's vCPU as plain data, and its wire form (the CpuState message,
//! whose format the hypervisor owns): general and FP/SIMD registers, PC and
//! PSTATE, every EL1 system register the guest can observe, its virtual
//! timer and counter, and the GIC virtual CPU interface (VMCR, active
//! priorities, list registers). Builds on the host for tests; capture and
//! restore are in `vcpu`.
use alloc::vec::Vec;

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
}

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
        // AArch64 EL0t, EL1t or EL1h only (M[4] = 0: AArch64).
        if !matches!(c.pstate & 0x1f, 0b00000 | 0b00100 | 0b00101) {
            return Err(CpuStateError::BadPstate(c.pstate));
        }
        Ok(c)
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
        c.vcount = 123_456_789;
        c.cntv_ctl = 1;
        c.cntv_cval = 123_999_999;
        c.nlr = 4;
        c.lrs[0] = 0xa000_0000_0000_001b;
        c.ich_hcr = 1;
        c
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
}
