//! The seam on aarch64 at EL2: the one vCPU (its register frame and what
//! its last exit left to complete), the EL2 physical timer as the tick,
//! the console, and the stage-2 tables.
use aarch64_cpu::registers::*;
use alloc::vec::Vec;

use super::boot::{GIC, LOGGER};
use super::esr::DataAbort;
use super::stage2_mem::GuestStage2;
use super::sysreg_model::{self, ModelRegs};
use super::vcpu_state::{CpuStateError, El1, GuestCpu};
use super::vectors::{self, TrapFrame, VectorKind};
use super::{board, id_model, power, sysreg, timer, vcpu};
use crate::arch::seam::{Arch, Completion, GuestPc, VmExit};
use crate::vplatform::arm::{board as vboard, ArmPlatform};

/// The exit `complete` finishes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pending {
    None,
    /// A decoded MMIO data abort: where its register goes, how it extends.
    Mmio(DataAbort),
    /// A write to write-protected RAM, in case it must be reflected.
    WriteFault(DataAbort),
    Hypercall,
}

pub struct Aarch64 {
    pub(super) frame: TrapFrame,
    pub(super) pending: Pending,
    /// System registers that trapped and were treated as RAZ/WI, reported
    /// once each.
    pub(super) sysregs_reported: heapless::Vec<u32, 32>,
    /// Console bytes read to lower the UART's interrupt line, not yet
    /// taken by the node.
    pub(super) console_rx: heapless::Deque<u8, 256>,
    /// The guest's registers of the CPU model that the CPU does not hold
    /// (its CSSELR_EL1): part of its CpuState.
    pub(super) model: ModelRegs,
    /// Traps answered from the CPU model, by `sysreg_model::Kind`.
    pub(super) model_traps: [u64; sysreg_model::KINDS],
}

/// A hypervisor exception (not the guest's): nothing sensible remains.
#[no_mangle]
extern "C" fn vmsync_hyp_fault(kind: u64) -> ! {
    log::error!(
        "hypervisor exception {:?}: ESR_EL2 {:#x} ELR_EL2 {:#x} FAR_EL2 {:#x}",
        VectorKind::from_index(kind),
        ESR_EL2.get(),
        ELR_EL2.get(),
        FAR_EL2.get()
    );
    power::system_off()
}

impl Aarch64 {
    /// The CPU as boot leaves it: the GIC's distributor, redistributor and
    /// EL2 interface on, the hypervisor's tick and console interrupts
    /// enabled (a standby sleeps on them too).
    pub fn new() -> Self {
        GIC.init();
        GIC.enable(timer::INTID);
        LOGGER.enable_rx_irq();
        GIC.enable(board::UART_INTID);
        check_id_model();
        Aarch64 {
            frame: TrapFrame::zeroed(),
            pending: Pending::None,
            sysregs_reported: heapless::Vec::new(),
            console_rx: heapless::Deque::new(),
            model: ModelRegs::default(),
            model_traps: [0; sysreg_model::KINDS],
        }
    }

    /// The vCPU at a fresh guest's entry: `pc` with `x0` (the boot
    /// protocol's device tree), EL1h with D, A, I, F masked, MMU and caches
    /// off, the virtual counter from zero.
    pub fn reset_vcpu(&mut self, pc: u64, x0: u64) {
        self.frame = TrapFrame::zeroed();
        self.frame.x[0] = x0;
        ELR_EL2.set(pc);
        SPSR_EL2.set(0x3c5);
        // EL1 starts with MMU and caches off, little-endian: RES1 bits only.
        SCTLR_EL1.set(0x30D0_0800);
        // The debug registers are RAZ/WI to the guest (`sysreg_model`):
        // the one it cannot reach starts, and stays, with debug off.
        MDSCR_EL1.set(0);
        self.model = ModelRegs::default();
        CNTVOFF_EL2.set(CNTPCT_EL0.get());
    }
}

/// Warns if this CPU lacks a feature of the guest's CPU model: the guest
/// would use it (its ID registers say so) and fault. The model's other
/// registers are 0 (see `id_model`), so these are the ones to compare.
fn check_id_model() {
    let real = [
        (id_model::ID_AA64PFR0, ID_AA64PFR0_EL1.get()),
        (id_model::ID_AA64DFR0, ID_AA64DFR0_EL1.get()),
        (id_model::ID_AA64ISAR0, ID_AA64ISAR0_EL1.get()),
        (id_model::ID_AA64MMFR0, ID_AA64MMFR0_EL1.get()),
    ];
    for (e, v) in real {
        if let Some(at) = id_model::exceeds(e, v) {
            let name = id_model::MODEL.iter().find(|(_, m, _)| *m == e).map_or("?", |(n, _, _)| *n);
            log::warn!(
                "this CPU's {name} is {v:#x}: it lacks bits {}..{} of the guest's CPU model ({:#x}); the guest may fault here",
                at,
                at + 3,
                id_model::value(e).unwrap_or(0)
            );
        }
    }
}

impl Default for Aarch64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Arch for Aarch64 {
    type Platform = ArmPlatform;
    type Stage2 = GuestStage2;
    type StateError = CpuStateError;
    const RAM_BASE: u64 = vboard::RAM_BASE;

    fn run(&mut self, platform: &mut ArmPlatform) -> VmExit {
        // SAFETY: ELR/SPSR/HCR/stage 2 describe a complete EL1 guest (set
        // by boot or a restore) and the frame holds its registers; the
        // guest's exit returns here with the hypervisor's registers restored.
        let kind = unsafe { vectors::vmsync_run_guest(&mut self.frame) };
        self.pending = Pending::None;
        super::exits::decode(self, VectorKind::from_index(kind), platform)
    }

    fn complete(&mut self, how: Completion) {
        match (core::mem::replace(&mut self.pending, Pending::None), how) {
            (Pending::Mmio(da), Completion::MmioRead(v)) => {
                let size = da.sas_bytes;
                let mask = super::exits::access_mask(size);
                let mut v = v & mask;
                if da.sse && size < 8 {
                    let shift = 64 - size as u32 * 8;
                    v = (((v << shift) as i64) >> shift) as u64;
                }
                if !da.sf {
                    v &= 0xffff_ffff;
                }
                self.frame.set_reg(da.srt, v);
                super::exits::step_over();
            }
            (Pending::Mmio(_), Completion::MmioWritten) => super::exits::step_over(),
            (Pending::Mmio(da) | Pending::WriteFault(da), Completion::Abort) => super::exits::inject_abort(true, da.wnr),
            (Pending::Hypercall, Completion::Hypercall(v)) => self.frame.x[0] = v,
            (p, c) => log::warn!("exit completion {c:?} does not fit the exit ({p:?}); ignored"),
        }
    }

    fn inject(&mut self, platform: &mut ArmPlatform) {
        super::exits::refill_list_registers(platform);
    }

    fn capture(&mut self, out: &mut Vec<u8>) {
        let mut c = vcpu::capture(&self.frame, &GIC);
        c.el1[El1::Csselr as usize] = self.model.csselr;
        c.encode(out);
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), CpuStateError> {
        let cpu = GuestCpu::decode(bytes, GIC.list_registers() as u8)?;
        self.enable_guest();
        vcpu::restore(&cpu, &mut self.frame, &GIC);
        // Decode kept only the bits the model has.
        self.model = ModelRegs { csselr: cpu.get(El1::Csselr) };
        self.pending = Pending::None;
        Ok(())
    }

    fn check_state(&self, bytes: &[u8]) -> Result<(), CpuStateError> {
        GuestCpu::decode(bytes, GIC.list_registers() as u8).map(|_| ())
    }

    fn report_traps(&self) {
        let mut line = heapless::String::<256>::new();
        for k in sysreg_model::Kind::ALL {
            let _ = core::fmt::Write::write_fmt(&mut line, format_args!(" {}={}", k.key(), self.model_traps[k as usize]));
        }
        log::info!("cpu model traps:{line}");
    }

    fn enable_guest(&mut self) {
        GIC.enable(vboard::VTIMER_INTID);
        GIC.enable(vboard::MAINTENANCE_INTID);
        GIC.enable(timer::INTID);
        GIC.init_virtual();
        LOGGER.enable_rx_irq();
        GIC.enable(board::UART_INTID);
        // The guest uses the virtual timer; its physical timer traps
        // (EL1PCEN=0) while the physical counter stays readable.
        CNTHCTL_EL2.set(1);
        sysreg::set_vpidr_el2(vboard::GUEST_MIDR);
        VMPIDR_EL2.set(vboard::GUEST_MPIDR);
        // Stage 2 on; IRQ/FIQ/SError to EL2 so the hypervisor keeps its own
        // interrupts; SMC traps (the guest's PSCI may use it); EL1 is AArch64;
        // ID register reads (TID3, TID1), cache geometry (TID2) and DC ZVA
        // (TDZ) trap and see the one CPU model (`id_model`,
        // `sysreg_model`), the same on every device the guest may move to.
        // TID2 rather than FEAT_EVT's TID4: TID4 leaves CTR_EL0 untrapped,
        // and its line sizes are what must not change under the guest
        // (docs/architecture.md, "One CPU model").
        HCR_EL2.write(
            HCR_EL2::VM::Enable
                + HCR_EL2::SWIO::SET
                + HCR_EL2::FMO::EnableVirtualFIQ
                + HCR_EL2::IMO::EnableVirtualIRQ
                + HCR_EL2::AMO::SET
                + HCR_EL2::TSC::EnableTrapEl1SmcToEl2
                + HCR_EL2::RW::EL1IsAarch64
                + HCR_EL2::TID3::SET
                + HCR_EL2::TID2::SET
                + HCR_EL2::TID1::SET
                + HCR_EL2::TDZ::SET,
        );
        // PMU and debug registers trap and read as zero (`sysreg_model`).
        // HPMN (the counters EL1 may use) is kept: 0 is UNPREDICTABLE
        // before FEAT_HPMN0, and with TPM set every counter traps anyway.
        // TDE stays 0: the guest's debug exceptions are its own.
        MDCR_EL2.modify(MDCR_EL2::TPM::SET + MDCR_EL2::TPMCR::SET + MDCR_EL2::TDA::SET + MDCR_EL2::TDOSA::SET + MDCR_EL2::TDRA::SET + MDCR_EL2::TDE::CLEAR);
    }

    fn quiesce(&mut self) {
        vcpu::quiesce(&GIC);
    }

    fn guest_pc(&self) -> GuestPc {
        GuestPc { pc: ELR_EL2.get(), level: if SPSR_EL2.get() & 0xf == 0 { 0 } else { 1 } }
    }

    fn now_ns(&self) -> u64 {
        timer::ticks_to_ns(timer::now_ticks())
    }

    fn arm_tick(&mut self, ns: u64) {
        timer::arm_in(ns);
    }

    fn stop_tick(&mut self) {
        timer::stop();
    }

    fn spin(&mut self, ns: u64) {
        let until = timer::now_ticks() + timer::ns_to_ticks(ns);
        while timer::now_ticks() < until {
            core::hint::spin_loop();
        }
    }

    /// WFI wakes on the pending timer interrupt (or console input) even
    /// with interrupts masked at EL2; then retire them.
    fn sleep(&mut self, ns: u64) {
        timer::arm_in(ns);
        aarch64_cpu::asm::wfi();
        // The timer's line stays high until it is stopped or re-armed: stop
        // it before retiring the interrupt, or it is pending again.
        timer::stop();
        // Bounded: the console's line stays high until its bytes are read
        // (by the node, after this returns), so it would be acked forever.
        for _ in 0..8 {
            let id = GIC.ack();
            if id >= 1020 {
                break;
            }
            GIC.eoi(id);
            GIC.deactivate(id);
        }
    }

    fn console_read(&mut self) -> Option<u8> {
        self.console_rx.pop_front().or_else(|| LOGGER.read_byte())
    }

    fn console_write(&mut self, byte: u8) {
        LOGGER.guest_bytes(&[byte]);
    }
}
