//! The guest's GICv3: distributor and redistributor register model for one
//! vCPU, and the bookkeeping that feeds the list registers (ICH_LR<n>_EL2).
//! The CPU interface itself is the hardware's virtual one (ICV_*), driven
//! by the list registers; only the memory-mapped parts are emulated here.
//!
//! INTIDs 0..=95: SGIs 0-15, PPIs 16-31 (redistributor SGI frame), SPIs
//! 32-95 (distributor). Single security state (GICD_CTLR.DS=1), affinity
//! routing always on (ARE RAO/WI: no GICv2 legacy mode), no LPIs, no ITS.
//! Priorities keep the 5 bits the virtual CPU interface implements
//! (ICH_VTR_EL2.PRIbits on QEMU and most cores), as KVM's vGIC does.
//! Offsets that are no register are RAZ/WI and counted, as are accesses of
//! a size the GIC does not allow there.
//!
//! All state is plain arrays, so it can be saved and moved whole. While an
//! interrupt sits in a list register, the LR holds its pending/active
//! state; `lr_taken_back` folds that state into the model (for a save, or
//! to free an LR early).
//!
//! List-register protocol, after every exit from the guest:
//! 1. Read ICH_ELRSR_EL2; for each LR n whose bit is set, call
//!    `lr_emptied(n)` (harmless for LRs that were never filled).
//! 2. For each empty LR n: `next_to_inject()` gives the best candidate
//!    (`None`: stop); write `lr_value(&p, hw)` to ICH_LR<n>_EL2 and call
//!    `mark_in_lr(n, p.intid)`. `hw` is the physical INTID for interrupts
//!    backed by a physical one (the virtual timer: the guest's EOI then
//!    deactivates the physical PPI), `None` for emulated ones.
//! 3. If `next_to_inject()` still returns something with no LR free, set
//!    ICH_HCR_EL2.UIE (maintenance interrupt when at most one LR is in use)
//!    so the hypervisor gets back in to refill.
//!
//! Sources: `set_level(intid, bool)` for level-sensitive emulated lines
//! (the UART); `set_pending(intid)` for edges, SGIs from ICC_SGI1R_EL1
//! traps, and HW-backed interrupts (the physical GIC holds their level).

use crate::vplatform::snapshot::{only_bits, Reader, SnapshotError, Writer};

pub const NR_INTIDS: usize = 96;
const WORDS: usize = NR_INTIDS / 32;
/// Architectural maximum of ICH_LR<n>_EL2 registers.
pub const MAX_LRS: usize = 16;
const NO_INTID: u32 = 1023;
/// Implemented priority bits: 5, the top ones.
const PRIO_MASK: u8 = 0xf8;

// GICD_CTLR bits in the DS=1 layout.
const CTLR_ENABLE_GRP0: u32 = 1 << 0;
const CTLR_ENABLE_GRP1: u32 = 1 << 1;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;

/// ITLinesNumber = 96/32 - 1; IDbits = 10 bits - 1; No1N (bit 25): SPIs go
/// to the one CPU named by IROUTER, never "1 of N". SecurityExtn=0 (DS).
const GICD_TYPER: u32 = (WORDS as u32 - 1) | 9 << 19 | 1 << 25;
/// Implementer 0x43B (Arm's JEP106 code), product 0x56 ('V'), revision 0:
/// a product ID no Linux erratum workaround keys on.
const IIDR: u32 = 0x5600_043b;
/// PIDR4..7, PIDR0..3, CIDR0..3 at 0xFFD0..0xFFFC: GICv3 (PIDR2.ArchRev 3),
/// the values QEMU's GICv3 gives.
const ID_REGS: [u32; 12] = [0x44, 0, 0, 0, 0x92, 0xb4, 0x3b, 0, 0x0d, 0xf0, 0x05, 0xb1];
const ID_BASE: usize = 0xffd0;
/// GICR_TYPER: Last (bit 4), processor number 0, affinity 0.0.0.0, no LPIs.
const GICR_TYPER: u64 = 1 << 4;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// Offset of the SGI/PPI frame in the redistributor.
pub const SGI_FRAME: usize = 0x1_0000;
/// IROUTER: Aff3 39:32, Aff2..Aff0 23:0 (IRM is RAZ/WI with No1N).
const IROUTER_MASK: u64 = 0xff_00ff_ffff;

/// List register state field (ICH_LR<n>_EL2 bits 63:62).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrState {
    Invalid = 0,
    Pending = 1,
    Active = 2,
    PendingActive = 3,
}

impl LrState {
    fn from_bits(b: u64) -> Self {
        match b & 3 {
            0 => LrState::Invalid,
            1 => LrState::Pending,
            2 => LrState::Active,
            _ => LrState::PendingActive,
        }
    }
}

/// An interrupt to put in a list register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub intid: u32,
    pub priority: u8,
    /// 0 or 1.
    pub group: u8,
    /// `Pending` for a new interrupt; `Active`/`PendingActive` for one the
    /// guest is still handling whose LR state was taken back (a restore).
    pub state: LrState,
}

/// Fields of an ICH_LR<n>_EL2 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LrFields {
    pub vintid: u32,
    /// Physical INTID when HW=1.
    pub pintid: Option<u32>,
    pub priority: u8,
    pub group: u8,
    pub state: LrState,
    /// EOI maintenance request (only with HW=0).
    pub eoi: bool,
}

const LR_HW: u64 = 1 << 61;
const LR_GROUP: u64 = 1 << 60;
const LR_EOI: u64 = 1 << 41;

/// ICH_LR<n>_EL2 for `p`: vINTID 31:0, pINTID 44:32 (with HW), priority
/// 55:48, group 60, HW 61, state 63:62. A HW interrupt cannot be pending
/// and active at once in an LR; its pending part stays in the physical
/// GIC, so it is written as active.
pub fn lr_value(p: &Pending, hw_pintid: Option<u32>) -> u64 {
    let mut state = p.state;
    let mut v = p.intid as u64 | (p.priority as u64) << 48;
    if p.group != 0 {
        v |= LR_GROUP;
    }
    if let Some(pintid) = hw_pintid {
        v |= LR_HW | ((pintid as u64) & 0x1fff) << 32;
        if state == LrState::PendingActive {
            state = LrState::Active;
        }
    }
    v | (state as u64) << 62
}

pub fn lr_decode(v: u64) -> LrFields {
    let hw = v & LR_HW != 0;
    LrFields {
        vintid: v as u32,
        pintid: hw.then_some(((v >> 32) & 0x1fff) as u32),
        priority: (v >> 48) as u8,
        group: ((v >> 60) & 1) as u8,
        state: LrState::from_bits(v >> 62),
        eoi: !hw && v & LR_EOI != 0,
    }
}

/// The INTID an ICC_SGI1R_EL1 write sends to the one vCPU (affinity
/// 0.0.0.0), or `None` if it targets nobody here. IRM=1 means "all but
/// self", which on one CPU is nobody.
pub fn sgi1r_target_self(value: u64) -> Option<u32> {
    let target_list = value & 0xffff;
    let aff1 = (value >> 16) & 0xff;
    let intid = ((value >> 24) & 0xf) as u32;
    let aff2 = (value >> 32) & 0xff;
    let irm = value & (1 << 40) != 0;
    let rs = (value >> 44) & 0xf;
    let aff3 = (value >> 48) & 0xff;
    (!irm && aff1 == 0 && aff2 == 0 && aff3 == 0 && rs == 0 && target_list & 1 != 0).then_some(intid)
}

/// The set/clear register pairs that hold one bit per INTID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitReg {
    /// Which array of registers (0x080..0x3FF, 0x80 bytes each) `off` is in.
    fn at(off: usize) -> Option<BitReg> {
        Some(match off >> 7 {
            1 => BitReg::Group,
            2 => BitReg::SetEnable,
            3 => BitReg::ClearEnable,
            4 => BitReg::SetPending,
            5 => BitReg::ClearPending,
            6 => BitReg::SetActive,
            7 => BitReg::ClearActive,
            _ => return None,
        })
    }
}

/// What one access resolved to, before the size check.
enum Access {
    /// Read as zero, writes ignored: a register that is architecturally
    /// RAZ/WI in this configuration.
    RazWi,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vgic {
    /// EnableGrp0/EnableGrp1 of GICD_CTLR.
    ctlr: u32,
    group: [u32; WORDS],
    enable: [u32; WORDS],
    /// Pending latch: edges, ISPENDR writes. Level-sensitive interrupts
    /// are also pending while their line is high.
    pending: [u32; WORDS],
    active: [u32; WORDS],
    /// Input line levels.
    level: [u32; WORDS],
    /// 1 = edge-triggered (ICFGR bit 2n+1).
    edge: [u32; WORDS],
    priority: [u8; NR_INTIDS],
    /// IROUTER of SPIs 32..95.
    irouter: [u64; NR_INTIDS - 32],
    processor_sleep: bool,
    /// INTIDs currently in a list register.
    in_lr: [u32; WORDS],
    /// Occupant of each list register, `NO_INTID` when free.
    lrs: [u32; MAX_LRS],
    unknown_accesses: u64,
}

impl Default for Vgic {
    fn default() -> Self {
        Self::new()
    }
}

fn word_bit(intid: u32) -> Option<(usize, u32)> {
    ((intid as usize) < NR_INTIDS).then(|| (intid as usize / 32, 1 << (intid % 32)))
}

/// Placement of a 32- or 64-bit access within a 64-bit register at
/// `base`: the shift and mask of the part accessed.
fn part64(off: usize, base: usize, size: usize) -> Option<(u32, u64)> {
    match (off - base, size) {
        (0, 8) => Some((0, u64::MAX)),
        (0, 4) => Some((0, 0xffff_ffff)),
        (4, 4) => Some((32, 0xffff_ffff)),
        _ => None,
    }
}

impl Vgic {
    /// The reset state: everything disabled, group 0, priority 0, level
    /// triggered (SGIs edge), the redistributor asleep.
    pub fn new() -> Self {
        let mut edge = [0; WORDS];
        edge[0] = 0xffff;
        Vgic {
            ctlr: 0,
            group: [0; WORDS],
            enable: [0; WORDS],
            pending: [0; WORDS],
            active: [0; WORDS],
            level: [0; WORDS],
            edge,
            priority: [0; NR_INTIDS],
            irouter: [0; NR_INTIDS - 32],
            processor_sleep: true,
            in_lr: [0; WORDS],
            lrs: [NO_INTID; MAX_LRS],
            unknown_accesses: 0,
        }
    }

    /// Accesses to offsets that are no register, or of a size the GIC does
    /// not allow there (read as zero, writes ignored).
    pub fn unknown_accesses(&self) -> u64 {
        self.unknown_accesses
    }

    // ---- interrupt sources -------------------------------------------

    /// An edge (or a HW-backed interrupt, or an SGI) for `intid`.
    pub fn set_pending(&mut self, intid: u32) {
        if let Some((w, b)) = word_bit(intid) {
            self.pending[w] |= b;
        }
    }

    /// The input line of a level-sensitive interrupt. Pending while high
    /// (if configured level-triggered); for an edge-triggered one a rising
    /// edge latches pending.
    pub fn set_level(&mut self, intid: u32, high: bool) {
        let Some((w, b)) = word_bit(intid) else { return };
        let was = self.level[w] & b != 0;
        if high {
            self.level[w] |= b;
            if !was && self.edge[w] & b != 0 {
                self.pending[w] |= b;
            }
        } else {
            self.level[w] &= !b;
        }
    }

    pub fn is_pending(&self, intid: u32) -> bool {
        word_bit(intid).is_some_and(|(w, b)| self.pending_word(w) & b != 0)
    }

    pub fn is_enabled(&self, intid: u32) -> bool {
        word_bit(intid).is_some_and(|(w, b)| self.enable[w] & b != 0)
    }

    pub fn priority(&self, intid: u32) -> u8 {
        self.priority.get(intid as usize).copied().unwrap_or(0)
    }

    fn pending_word(&self, w: usize) -> u32 {
        self.pending[w] | (self.level[w] & !self.edge[w])
    }

    fn group_enabled_word(&self, w: usize) -> u32 {
        let mut m = 0;
        if self.ctlr & CTLR_ENABLE_GRP1 != 0 {
            m |= self.group[w];
        }
        if self.ctlr & CTLR_ENABLE_GRP0 != 0 {
            m |= !self.group[w];
        }
        m
    }

    // ---- list registers ----------------------------------------------

    /// The best interrupt not yet in a list register: first those the
    /// guest has active (they need an LR for the guest to finish them),
    /// then pending + enabled + group-enabled ones, highest priority
    /// (lowest value) first, lower INTID first among equals.
    pub fn next_to_inject(&self) -> Option<Pending> {
        let mut best: Option<(bool, u8, Pending)> = None;
        for w in 0..WORDS {
            let deliverable = self.pending_word(w) & self.enable[w] & self.group_enabled_word(w);
            let candidates = (deliverable | self.active[w]) & !self.in_lr[w];
            for bit in 0..32 {
                if candidates & (1 << bit) == 0 {
                    continue;
                }
                let intid = (w * 32 + bit) as u32;
                let active = self.active[w] & (1 << bit) != 0;
                let pending = deliverable & (1 << bit) != 0;
                let state = match (pending, active) {
                    (true, true) => LrState::PendingActive,
                    (false, true) => LrState::Active,
                    _ => LrState::Pending,
                };
                let p = Pending { intid, priority: self.priority[intid as usize], group: ((self.group[w] >> bit) & 1) as u8, state };
                // Key: active first, then priority; ties keep the lower INTID.
                let better = match &best {
                    None => true,
                    Some((b_act, b_prio, _)) => (!active, p.priority) < (!*b_act, *b_prio),
                };
                if better {
                    best = Some((active, p.priority, p));
                }
            }
        }
        best.map(|(_, _, p)| p)
    }

    /// `intid` was written into list register `lr`: the LR now carries its
    /// pending state (the latch is consumed) and active state.
    pub fn mark_in_lr(&mut self, lr: usize, intid: u32) {
        let Some((w, b)) = word_bit(intid) else { return };
        if lr >= MAX_LRS {
            return;
        }
        self.lr_emptied(lr);
        self.lrs[lr] = intid;
        self.in_lr[w] |= b;
        self.pending[w] &= !b;
        self.active[w] &= !b;
    }

    /// List register `lr` went invalid (its ICH_ELRSR_EL2 bit is set): the
    /// guest has finished with the interrupt in it. A level-sensitive line
    /// that is still high makes it pending again.
    pub fn lr_emptied(&mut self, lr: usize) {
        self.lr_taken_back(lr, LrState::Invalid);
    }

    /// The hypervisor takes the interrupt in list register `lr` back with
    /// the state it read from the LR (before clearing the LR itself), e.g.
    /// to save the vGIC or to make room. Pending and active state return to
    /// the model and will be offered again by `next_to_inject`.
    pub fn lr_taken_back(&mut self, lr: usize, state: LrState) {
        let Some(&intid) = self.lrs.get(lr) else { return };
        self.lrs[lr] = NO_INTID;
        let Some((w, b)) = word_bit(intid) else { return };
        self.in_lr[w] &= !b;
        if matches!(state, LrState::Pending | LrState::PendingActive) {
            self.pending[w] |= b;
        }
        if matches!(state, LrState::Active | LrState::PendingActive) {
            self.active[w] |= b;
        }
    }

    /// The INTID the model put in list register `lr`, if any.
    pub fn lr_occupant(&self, lr: usize) -> Option<u32> {
        self.lrs.get(lr).copied().filter(|&i| i != NO_INTID)
    }

    // ---- distributor -------------------------------------------------

    pub fn gicd_read(&mut self, offset: usize, size: usize) -> u64 {
        self.gicd_access(offset, size, None)
    }

    pub fn gicd_write(&mut self, offset: usize, size: usize, value: u64) {
        self.gicd_access(offset, size, Some(value));
    }

    fn gicd_access(&mut self, off: usize, size: usize, write: Option<u64>) -> u64 {
        let r = match off {
            0x0000 if size == 4 => {
                if let Some(v) = write {
                    self.ctlr = v as u32 & (CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1);
                }
                return (self.ctlr | CTLR_ARE | CTLR_DS) as u64;
            }
            0x0004 if size == 4 => return GICD_TYPER as u64,
            0x0008 if size == 4 => return IIDR as u64,
            // TYPER2, STATUSR.
            0x000c | 0x0010 if size == 4 => Access::RazWi,
            0x0080..=0x03ff if size == 4 => match (BitReg::at(off), (off & 0x7f) / 4) {
                // Word 0 (SGIs, PPIs) lives in the redistributor under ARE.
                (Some(reg), n) if (1..WORDS).contains(&n) => return self.bit_access(reg, n, write) as u64,
                _ => Access::RazWi,
            },
            0x0400..=0x07ff => return self.priority_access(off - 0x400, 32..NR_INTIDS, size, write),
            // ITARGETSR: RAZ/WI with affinity routing; byte-accessible.
            0x0800..=0x0bff if size == 4 || size == 1 => Access::RazWi,
            0x0c00..=0x0cff if size == 4 => {
                let n = (off - 0xc00) / 4;
                if (2..2 * WORDS).contains(&n) {
                    return self.icfgr_access(n, write) as u64;
                }
                Access::RazWi
            }
            // IGRPMODR and NSACR are RAZ/WI with DS=1; SGIR, CPENDSGIR and
            // SPENDSGIR with ARE.
            0x0d00..=0x0d7f | 0x0e00..=0x0eff | 0x0f00 | 0x0f10..=0x0f2f if size == 4 => Access::RazWi,
            0x6000..=0x7fff => {
                let n = (off - 0x6000) / 8;
                match part64(off, 0x6000 + n * 8, size) {
                    Some((shift, mask)) if (32..NR_INTIDS).contains(&n) => {
                        let reg = &mut self.irouter[n - 32];
                        if let Some(v) = write {
                            *reg = (*reg & !(mask << shift) | (v & mask) << shift) & IROUTER_MASK;
                        }
                        return (*reg >> shift) & mask;
                    }
                    Some(_) => Access::RazWi,
                    None => Access::Unknown,
                }
            }
            ID_BASE..=0xfffc if size == 4 && off.is_multiple_of(4) => return ID_REGS[(off - ID_BASE) / 4] as u64,
            _ => Access::Unknown,
        };
        self.finish(r)
    }

    // ---- redistributor -----------------------------------------------

    /// `offset` within the 128 KiB redistributor: RD frame at 0, SGI frame
    /// at `SGI_FRAME`.
    pub fn gicr_read(&mut self, offset: usize, size: usize) -> u64 {
        self.gicr_access(offset, size, None)
    }

    pub fn gicr_write(&mut self, offset: usize, size: usize, value: u64) {
        self.gicr_access(offset, size, Some(value));
    }

    fn gicr_access(&mut self, off: usize, size: usize, write: Option<u64>) -> u64 {
        if off >= SGI_FRAME {
            return self.sgi_frame_access(off - SGI_FRAME, size, write);
        }
        let r = match off {
            // CTLR (no LPIs to enable, RWP always 0), STATUSR.
            0x0000 | 0x0010 if size == 4 => Access::RazWi,
            0x0004 if size == 4 => return IIDR as u64,
            0x0008..=0x000f => match part64(off, 0x8, size) {
                Some((shift, mask)) => return (GICR_TYPER >> shift) & mask,
                None => Access::Unknown,
            },
            0x0014 if size == 4 => {
                if let Some(v) = write {
                    self.processor_sleep = v as u32 & WAKER_PROCESSOR_SLEEP != 0;
                }
                // ChildrenAsleep follows ProcessorSleep at once: there is no
                // interface to quiesce.
                return if self.processor_sleep { (WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP) as u64 } else { 0 };
            }
            // SETLPIR, CLRLPIR, PROPBASER, PENDBASER, INVLPIR, INVALLR,
            // SYNCR (never busy): no LPIs.
            0x0040..=0x004f | 0x0070..=0x007f | 0x00a0..=0x00a7 | 0x00b0..=0x00b7 => {
                let base = off & !7;
                match part64(off, base, size) {
                    Some(_) => Access::RazWi,
                    None => Access::Unknown,
                }
            }
            0x00c0 if size == 4 => Access::RazWi,
            ID_BASE..=0xfffc if size == 4 && off.is_multiple_of(4) => return ID_REGS[(off - ID_BASE) / 4] as u64,
            _ => Access::Unknown,
        };
        self.finish(r)
    }

    fn sgi_frame_access(&mut self, off: usize, size: usize, write: Option<u64>) -> u64 {
        let r = match off {
            0x0080 | 0x0100 | 0x0180 | 0x0200 | 0x0280 | 0x0300 | 0x0380 if size == 4 => match BitReg::at(off) {
                Some(reg) => return self.bit_access(reg, 0, write) as u64,
                None => Access::Unknown,
            },
            0x0400..=0x041f => return self.priority_access(off - 0x400, 0..32, size, write),
            0x0c00 | 0x0c04 if size == 4 => return self.icfgr_access((off - 0xc00) / 4, write) as u64,
            // IGRPMODR0, NSACR: RAZ/WI with DS=1.
            0x0d00 | 0x0e00 if size == 4 => Access::RazWi,
            _ => Access::Unknown,
        };
        self.finish(r)
    }

    // ---- shared register kinds ---------------------------------------

    fn finish(&mut self, r: Access) -> u64 {
        if let Access::Unknown = r {
            self.unknown_accesses += 1;
        }
        0
    }

    fn bit_access(&mut self, reg: BitReg, w: usize, write: Option<u64>) -> u32 {
        if let Some(v) = write {
            let v = v as u32;
            match reg {
                BitReg::Group => self.group[w] = v,
                BitReg::SetEnable => self.enable[w] |= v,
                BitReg::ClearEnable => self.enable[w] &= !v,
                BitReg::SetPending => self.pending[w] |= v,
                // A level-sensitive line that is still high keeps it pending.
                BitReg::ClearPending => self.pending[w] &= !v,
                BitReg::SetActive => self.active[w] |= v,
                BitReg::ClearActive => self.active[w] &= !v,
            }
        }
        match reg {
            BitReg::Group => self.group[w],
            BitReg::SetEnable | BitReg::ClearEnable => self.enable[w],
            BitReg::SetPending | BitReg::ClearPending => self.pending_word(w),
            BitReg::SetActive | BitReg::ClearActive => self.active[w],
        }
    }

    /// IPRIORITYR: one byte per INTID (byte `n` of the array is INTID n),
    /// byte- or word-accessible; INTIDs outside `live` are RAZ/WI.
    fn priority_access(&mut self, byte: usize, live: core::ops::Range<usize>, size: usize, write: Option<u64>) -> u64 {
        if !(size == 1 || (size == 4 && byte.is_multiple_of(4))) {
            return self.finish(Access::Unknown);
        }
        let mut out = 0u64;
        for i in 0..size {
            let intid = byte + i;
            if !live.contains(&intid) {
                continue;
            }
            if let Some(v) = write {
                self.priority[intid] = (v >> (8 * i)) as u8 & PRIO_MASK;
            }
            out |= (self.priority[intid] as u64) << (8 * i);
        }
        out
    }

    /// ICFGR<n>: two bits per INTID, bit 1 of each pair = edge. SGIs are
    /// always edge (read-only); PPIs and SPIs are configurable (Linux
    /// writes the PPIs' and checks they stick).
    fn icfgr_access(&mut self, n: usize, write: Option<u64>) -> u32 {
        let w = n / 2;
        let half = (n % 2) * 16;
        if let Some(v) = write {
            if n != 0 {
                let mut edges = 0u32;
                for i in 0..16 {
                    if v & (2 << (2 * i)) != 0 {
                        edges |= 1 << i;
                    }
                }
                self.edge[w] = (self.edge[w] & !(0xffff << half)) | edges << half;
            }
        }
        let edges = (self.edge[w] >> half) & 0xffff;
        (0..16).filter(|i| edges & (1 << i) != 0).fold(0, |acc, i| acc | 2 << (2 * i))
    }
}

// ---- snapshot ---------------------------------------------------------

impl Vgic {
    /// The vGIC section of a device snapshot (`arm/mod.rs`), in this
    /// order: NR_INTIDS (u16); GICD_CTLR enables (u32); group, enable,
    /// pending latch, active, line level, edge config (each WORDS x u32);
    /// priorities (NR_INTIDS x u8); SPI IROUTERs (NR_INTIDS-32 x u64);
    /// GICR_WAKER.ProcessorSleep (u8); unknown_accesses (u64); in_lr
    /// (WORDS x u32); then the occupied list registers: a count (u8) and
    /// per LR its number (u8, increasing) and INTID (u32).
    pub(crate) fn save_into(&self, w: &mut Writer) {
        w.u16(NR_INTIDS as u16);
        w.u32(self.ctlr);
        for words in [&self.group, &self.enable, &self.pending, &self.active, &self.level, &self.edge] {
            words.iter().for_each(|&v| w.u32(v));
        }
        w.bytes(&self.priority);
        self.irouter.iter().for_each(|&v| w.u64(v));
        w.bool(self.processor_sleep);
        w.u64(self.unknown_accesses);
        self.in_lr.iter().for_each(|&v| w.u32(v));
        // At most MAX_LRS (16) entries: the count fits a u8.
        w.u8(self.lrs.iter().filter(|&&i| i != NO_INTID).count() as u8);
        for (lr, &intid) in self.lrs.iter().enumerate().filter(|(_, &i)| i != NO_INTID) {
            w.u8(lr as u8);
            w.u32(intid);
        }
    }

    /// The vGIC `save_into` wrote. Rejects values the model cannot hold:
    /// register bits it does not implement, SGIs configured level, an LR
    /// number past MAX_LRS, an INTID past the last SPI or in two LRs, and
    /// `in_lr` disagreeing with the LRs' occupants.
    pub(crate) fn restore_from(r: &mut Reader) -> Result<Vgic, SnapshotError> {
        let nr = r.u16()?;
        if nr as usize != NR_INTIDS {
            return Err(SnapshotError::BadValue { field: "vgic.nr_intids", value: nr as u64 });
        }
        let mut g = Vgic::new();
        g.ctlr = only_bits("vgic.ctlr", r.u32()?, CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1)?;
        for words in [&mut g.group, &mut g.enable, &mut g.pending, &mut g.active, &mut g.level, &mut g.edge] {
            for v in words.iter_mut() {
                *v = r.u32()?;
            }
        }
        // ICFGR0 is read-only: SGIs are edge-triggered, always.
        if g.edge[0] & 0xffff != 0xffff {
            return Err(SnapshotError::BadValue { field: "vgic.edge", value: g.edge[0] as u64 });
        }
        for p in g.priority.iter_mut() {
            *p = only_bits("vgic.priority", r.u8()?, PRIO_MASK)?;
        }
        for v in g.irouter.iter_mut() {
            *v = only_bits("vgic.irouter", r.u64()?, IROUTER_MASK)?;
        }
        g.processor_sleep = r.bool("vgic.processor_sleep")?;
        g.unknown_accesses = r.u64()?;
        let mut in_lr = [0; WORDS];
        for v in in_lr.iter_mut() {
            *v = r.u32()?;
        }
        let count = r.u8()?;
        if count as usize > MAX_LRS {
            return Err(SnapshotError::BadValue { field: "vgic.lr_count", value: count as u64 });
        }
        let mut next_lr = 0;
        for _ in 0..count {
            let lr = r.u8()? as usize;
            // Increasing LR numbers: no LR twice, and one encoding per state.
            if !(next_lr..MAX_LRS).contains(&lr) {
                return Err(SnapshotError::BadValue { field: "vgic.lr", value: lr as u64 });
            }
            next_lr = lr + 1;
            let intid = r.u32()?;
            // One INTID in two LRs is UNPREDICTABLE for the GIC, and
            // `lr_emptied` on one of them would lose track of the other.
            let Some((w, b)) = word_bit(intid).filter(|&(w, b)| g.in_lr[w] & b == 0) else {
                return Err(SnapshotError::BadValue { field: "vgic.lr_intid", value: intid as u64 });
            };
            g.lrs[lr] = intid;
            g.in_lr[w] |= b;
        }
        if let Some(w) = (0..WORDS).find(|&w| in_lr[w] != g.in_lr[w]) {
            return Err(SnapshotError::BadValue { field: "vgic.in_lr", value: in_lr[w] as u64 });
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTLR: usize = 0x0000;
    const ISENABLER: usize = 0x0100;
    const IPRIORITYR: usize = 0x0400;
    const SGI: usize = SGI_FRAME;

    /// What Linux 6.1's irq-gic-v3 does at boot (gic_init_bases,
    /// gic_dist_init, gic_cpu_init), then a PPI and an SPI enabled as the
    /// timer and the PL011 drivers do.
    fn linux_probe() -> Vgic {
        let mut g = Vgic::new();
        assert_eq!(g.gicd_read(0xffe8, 4) & 0xf0, 0x30, "GICD_PIDR2.ArchRev");
        let typer = g.gicd_read(0x0004, 4);
        assert_eq!(((typer & 0x1f) + 1) * 32, 96, "ITLinesNumber");
        assert_eq!(((typer >> 19) & 0x1f) + 1, 10, "IDbits");
        assert_eq!(typer & (1 << 17 | 1 << 16), 0, "no LPIs, no MBIS");
        assert_eq!(g.gicd_read(0x000c, 4), 0, "TYPER2");
        g.gicd_write(CTLR, 4, 0);
        assert_eq!(g.gicd_read(CTLR, 4) & (1 << 31), 0, "RWP");
        assert_ne!(g.gicd_read(CTLR, 4) & CTLR_DS as u64, 0, "DS");
        // gic_dist_config for the SPIs.
        for i in (32..96).step_by(16) {
            g.gicd_write(0x0c00 + i / 4, 4, 0);
        }
        for i in (32..96).step_by(4) {
            g.gicd_write(IPRIORITYR + i, 4, 0xa0a0_a0a0);
        }
        for i in (32..96).step_by(32) {
            g.gicd_write(0x0380 + i / 8, 4, 0xffff_ffff);
            g.gicd_write(0x0180 + i / 8, 4, 0xffff_ffff);
            g.gicd_write(0x0080 + i / 8, 4, 0xffff_ffff);
        }
        g.gicd_write(CTLR, 4, (CTLR_ARE | CTLR_ENABLE_GRP1 | CTLR_ENABLE_GRP0) as u64);
        assert_eq!(g.gicd_read(CTLR, 4), 0x53);
        for i in 32..96 {
            g.gicd_write(0x6000 + i * 8, 8, 0);
        }
        // Redistributor: find it, wake it.
        assert_eq!(g.gicr_read(0xffe8, 4) & 0xf0, 0x30, "GICR_PIDR2");
        let rtyper = g.gicr_read(0x0008, 8);
        assert_ne!(rtyper & 1 << 4, 0, "Last");
        assert_eq!(rtyper >> 32, 0, "affinity 0.0.0.0");
        assert_eq!(rtyper & 1, 0, "no physical LPIs");
        assert_eq!(g.gicr_read(0x0014, 4), 0b110, "asleep at reset");
        g.gicr_write(0x0014, 4, 0);
        assert_eq!(g.gicr_read(0x0014, 4) & WAKER_CHILDREN_ASLEEP as u64, 0, "awake");
        // gic_cpu_config on the SGI frame.
        g.gicr_write(SGI + 0x0380, 4, 0xffff_ffff);
        g.gicr_write(SGI + 0x0180, 4, 0xffff_0000);
        g.gicr_write(SGI + 0x0100, 4, 0x0000_ffff);
        g.gicr_write(SGI + 0x0080, 4, 0xffff_ffff);
        for i in (0..32).step_by(4) {
            g.gicr_write(SGI + IPRIORITYR + i, 4, 0xa0a0_a0a0);
        }
        assert_eq!(g.gicr_read(0x0000, 4), 0, "GICR_CTLR.RWP");
        // The timer driver: PPI 27 level-triggered, enabled, priority 0x80.
        let cfg = g.gicr_read(SGI + 0x0c04, 4);
        g.gicr_write(SGI + 0x0c04, 4, cfg & !(2 << ((27 - 16) * 2)));
        g.gicr_write(SGI + IPRIORITYR + 27, 1, 0x80);
        g.gicr_write(SGI + ISENABLER, 4, 1 << 27);
        // The PL011: SPI 1 = INTID 33, level, enabled.
        g.gicd_write(ISENABLER + 4, 4, 1 << 1);
        assert_eq!(g.unknown_accesses(), 0);
        g
    }

    #[test]
    fn linux_probe_sequence() {
        let g = linux_probe();
        assert!(g.is_enabled(27) && g.is_enabled(33) && g.is_enabled(0) && !g.is_enabled(16));
        assert_eq!(g.priority(27), 0x80);
        assert_eq!(g.priority(33), 0xa0);
        assert_eq!(g.next_to_inject(), None, "nothing pending yet");
    }

    #[test]
    fn injects_pending_enabled_interrupts_by_priority() {
        let mut g = linux_probe();
        g.set_level(33, true); // UART, priority 0xa0
        g.set_pending(27); // timer, priority 0x80
        g.set_pending(1); // SGI 1, priority 0xa0
        let p = g.next_to_inject().unwrap();
        assert_eq!(p, Pending { intid: 27, priority: 0x80, group: 1, state: LrState::Pending });
        g.mark_in_lr(0, 27);
        assert_eq!(g.next_to_inject().unwrap().intid, 1, "same priority: lower INTID first");
        g.mark_in_lr(1, 1);
        assert_eq!(g.next_to_inject().unwrap().intid, 33);
        g.mark_in_lr(2, 33);
        assert_eq!(g.next_to_inject(), None);
        assert_eq!(g.lr_occupant(2), Some(33));
        // The guest EOIs all three. The UART line is still high: again.
        for lr in 0..4 {
            g.lr_emptied(lr);
        }
        assert_eq!(g.next_to_inject().unwrap().intid, 33);
        g.set_level(33, false);
        assert_eq!(g.next_to_inject(), None, "edges were consumed, the line is low");
    }

    #[test]
    fn disabled_or_group_disabled_interrupts_wait() {
        let mut g = linux_probe();
        g.set_pending(40); // SPI 8: configured, not enabled
        g.set_pending(20); // PPI 4: disabled by gic_cpu_config
        g.set_pending(200); // out of range: ignored
        assert_eq!(g.next_to_inject(), None);
        assert!(g.is_pending(40));
        g.gicd_write(ISENABLER + 4, 4, 1 << 8);
        assert_eq!(g.next_to_inject().unwrap().intid, 40);
        g.gicd_write(0x0180 + 4, 4, 1 << 8);
        assert_eq!(g.next_to_inject(), None, "ICENABLER");
        g.gicd_write(ISENABLER + 4, 4, 1 << 8);
        // Group 1 off in GICD_CTLR holds back every group-1 interrupt.
        g.gicd_write(CTLR, 4, CTLR_ENABLE_GRP0 as u64);
        assert_eq!(g.next_to_inject(), None);
        g.gicd_write(CTLR, 4, CTLR_ENABLE_GRP1 as u64);
        assert_eq!(g.next_to_inject().unwrap().intid, 40);
        // ICPENDR clears the latch.
        g.gicd_write(0x0280 + 4, 4, 1 << 8);
        assert_eq!(g.next_to_inject(), None);
        assert!(!g.is_pending(40));
    }

    #[test]
    fn byte_accesses_to_ipriorityr() {
        let mut g = Vgic::new();
        g.gicd_write(IPRIORITYR + 33, 1, 0x40);
        g.gicd_write(IPRIORITYR + 34, 1, 0xff);
        assert_eq!(g.gicd_read(IPRIORITYR + 32, 4), 0x00f8_4000, "5 priority bits kept");
        assert_eq!(g.gicd_read(IPRIORITYR + 34, 1), 0xf8);
        g.gicd_write(IPRIORITYR + 92, 4, 0x1020_3040);
        assert_eq!(g.priority(95), 0x10);
        assert_eq!(g.priority(92), 0x40);
        // SGI/PPI priorities live in the redistributor; the distributor's
        // copy and the bytes past INTID 95 are RAZ/WI.
        g.gicd_write(IPRIORITYR + 27, 1, 0x80);
        g.gicd_write(IPRIORITYR + 96, 4, 0x8080_8080);
        assert_eq!(g.priority(27), 0);
        assert_eq!(g.gicd_read(IPRIORITYR + 96, 4), 0);
        g.gicr_write(SGI + IPRIORITYR + 27, 1, 0x88);
        assert_eq!(g.gicr_read(SGI + IPRIORITYR + 24, 4), 0x8800_0000);
        assert_eq!(g.unknown_accesses(), 0);
        // Halfword or misaligned word: not allowed by the GIC.
        g.gicd_write(IPRIORITYR + 40, 2, 0xffff);
        assert_eq!(g.gicd_read(IPRIORITYR + 41, 4), 0);
        assert_eq!(g.priority(40), 0);
        assert_eq!(g.unknown_accesses(), 2);
    }

    #[test]
    fn trigger_configuration() {
        let mut g = linux_probe();
        assert_eq!(g.gicr_read(SGI + 0x0c00, 4), 0xaaaa_aaaa, "SGIs are edge");
        g.gicr_write(SGI + 0x0c00, 4, 0);
        assert_eq!(g.gicr_read(SGI + 0x0c00, 4), 0xaaaa_aaaa, "and stay so");
        // SPI 34 edge: a rising line latches one interrupt.
        g.gicd_write(0x0c00 + 8, 4, 2 << 4);
        assert_eq!(g.gicd_read(0x0c00 + 8, 4), 2 << 4);
        g.gicd_write(ISENABLER + 4, 4, 1 << 2);
        g.set_level(34, true);
        assert_eq!(g.next_to_inject().unwrap().intid, 34);
        g.mark_in_lr(0, 34);
        g.lr_emptied(0);
        assert_eq!(g.next_to_inject(), None, "one edge, one interrupt");
        g.set_level(34, false);
        g.set_level(34, true);
        assert_eq!(g.next_to_inject().unwrap().intid, 34);
        // A PPI's configuration sticks (Linux checks).
        g.gicr_write(SGI + 0x0c04, 4, 0xffff_ffff);
        assert_eq!(g.gicr_read(SGI + 0x0c04, 4), 0xaaaa_aaaa);
    }

    #[test]
    fn list_register_values() {
        let p = Pending { intid: 27, priority: 0x80, group: 1, state: LrState::Pending };
        let v = lr_value(&p, Some(27));
        assert_eq!(v, 1 << 62 | 1 << 61 | 1 << 60 | 0x80 << 48 | 27 << 32 | 27);
        assert_eq!(lr_decode(v), LrFields { vintid: 27, pintid: Some(27), priority: 0x80, group: 1, state: LrState::Pending, eoi: false });
        let p = Pending { intid: 33, priority: 0xa0, group: 1, state: LrState::PendingActive };
        let v = lr_value(&p, None);
        assert_eq!(v, 3 << 62 | 1 << 60 | 0xa0 << 48 | 33);
        assert_eq!(lr_decode(v).pintid, None);
        assert_eq!(lr_decode(v).state, LrState::PendingActive);
        assert!(lr_decode(v | LR_EOI).eoi);
        // HW interrupts cannot be pending+active in an LR.
        assert_eq!(lr_decode(lr_value(&p, Some(33))).state, LrState::Active);
        let p0 = Pending { intid: 5, priority: 0, group: 0, state: LrState::Pending };
        assert_eq!(lr_value(&p0, None), 1 << 62 | 5);
    }

    #[test]
    fn state_taken_back_from_list_registers() {
        let mut g = linux_probe();
        g.set_pending(27);
        g.set_level(33, true);
        g.mark_in_lr(0, 27);
        g.mark_in_lr(1, 33);
        // A save: the timer was acked (active), the UART still pending.
        g.lr_taken_back(0, LrState::Active);
        g.lr_taken_back(1, LrState::Pending);
        assert_eq!(g.lr_occupant(0), None);
        let saved = g.clone();
        let mut g = saved;
        // Restored: the active one goes back first, as active.
        let p = g.next_to_inject().unwrap();
        assert_eq!((p.intid, p.state), (27, LrState::Active));
        g.mark_in_lr(0, 27);
        assert_eq!(g.next_to_inject().unwrap().intid, 33);
        // ISACTIVER shows what the model holds.
        g.lr_taken_back(0, LrState::Active);
        assert_eq!(g.gicr_read(SGI + 0x0300, 4), 1 << 27);
        // Emptying an LR the model never filled does nothing.
        g.lr_emptied(3);
        g.lr_emptied(99);
    }

    #[test]
    fn irouter_64_and_32_bit() {
        let mut g = Vgic::new();
        g.gicd_write(0x6000 + 40 * 8, 8, 0xff_ffff_ffff_ffff);
        assert_eq!(g.gicd_read(0x6000 + 40 * 8, 8), IROUTER_MASK, "IRM and reserved bits RAZ");
        g.gicd_write(0x6000 + 41 * 8 + 4, 4, 0x12);
        g.gicd_write(0x6000 + 41 * 8, 4, 0x0003_0201);
        assert_eq!(g.gicd_read(0x6000 + 41 * 8, 8), 0x12_0003_0201);
        assert_eq!(g.gicd_read(0x6000 + 41 * 8 + 4, 4), 0x12);
        // SGIs/PPIs have no IROUTER; nor INTIDs past 95.
        g.gicd_write(0x6000 + 27 * 8, 8, 1);
        assert_eq!(g.gicd_read(0x6000 + 27 * 8, 8), 0);
        assert_eq!(g.gicd_read(0x6000 + 200 * 8, 8), 0);
        assert_eq!(g.unknown_accesses(), 0);
        g.gicd_read(0x6000 + 40 * 8 + 2, 2);
        assert_eq!(g.unknown_accesses(), 1);
    }

    #[test]
    fn unknown_offsets_and_sizes_are_counted() {
        let mut g = Vgic::new();
        assert_eq!(g.gicd_read(0x0020, 4), 0);
        g.gicd_write(0x5000, 4, 1);
        assert_eq!(g.gicd_read(CTLR, 2), 0, "CTLR is word-only");
        g.gicd_write(CTLR, 8, 3);
        assert_eq!(g.gicr_read(0x0300, 4), 0);
        assert_eq!(g.gicr_read(SGI + 0x0104, 4), 0, "no extended PPIs");
        assert_eq!(g.gicr_read(0x0008, 2), 0);
        assert_eq!(g.unknown_accesses(), 7);
        assert_eq!(g.gicd_read(CTLR, 4), 0x50, "writes of the wrong size were ignored");
        // Known RAZ/WI registers are not counted.
        g.gicd_write(0x0d04, 4, 0xffff_ffff); // IGRPMODR1
        g.gicd_write(0x0804, 1, 1); // ITARGETSR
        g.gicd_write(0x0080, 4, 0xffff_ffff); // IGROUPR0 under ARE
        g.gicr_write(0x0070, 8, 0x1234_5000); // PROPBASER
        g.gicr_write(0x0078, 4, 0x1234_5000); // PENDBASER, low half
        assert_eq!(g.gicr_read(0x0070, 8), 0);
        assert_eq!(g.gicr_read(0x00c0, 4), 0, "SYNCR not busy");
        g.gicr_write(SGI + 0x0d00, 4, 1); // IGRPMODR0
        assert_eq!(g.gicr_read(0x0004, 4), IIDR as u64);
        assert_eq!(g.gicr_read(0x000c, 4), 0, "TYPER high half: affinity 0");
        assert_eq!(g.gicr_read(0x0008, 4), 1 << 4);
        assert_eq!(g.unknown_accesses(), 7);
        assert_eq!(g.group, [0; WORDS]);
    }

    #[test]
    fn sgi_from_icc_sgi1r() {
        // SGI 1 to affinity 0.0.0, target list {0}: Linux's self-IPI.
        assert_eq!(sgi1r_target_self(1 << 24 | 1), Some(1));
        assert_eq!(sgi1r_target_self(15 << 24 | 0b11), Some(15));
        assert_eq!(sgi1r_target_self(1 << 24 | 0b10), None, "CPU 1");
        assert_eq!(sgi1r_target_self(1 << 24 | 1 | 1 << 16), None, "cluster 1");
        assert_eq!(sgi1r_target_self(1 << 24 | 1 << 40), None, "all but self");
        assert_eq!(sgi1r_target_self(1 << 24 | 1 | 1 << 44), None, "range selector");
    }
}
