//! What the guest's exception to EL2 was, as the seam's `VmExit`: stage-2
//! aborts (dirty tracking, device accesses, or an abort reflected to the
//! guest), hypercalls, trapped system registers and physical interrupts.
//! What only ARM has (SGIs, the virtual timer's interrupt, list registers)
//! is done here and never reaches the node.
use aarch64_cpu::registers::*;
use log::{info, warn};

use super::boot::{GIC, LOGGER};
use super::cpu::{Aarch64, Pending};
use super::esr::{self, DataAbort, Exit, FaultKind};
use super::vcpu_state::ICH_HCR_UIE;
use super::vectors::VectorKind;
use super::{board, id_model, sysreg, sysreg_model, timer};
use crate::arch::seam::{Handled, HostIrqs, VmExit};
use crate::vplatform::arm::{board as vboard, vgic, ArmPlatform};
use crate::vplatform::MmioAccess;

pub(super) fn decode(cpu: &mut Aarch64, kind: VectorKind, platform: &mut ArmPlatform) -> VmExit {
    match kind {
        VectorKind::LowerSync => lower_sync(cpu, platform),
        VectorKind::LowerIrq | VectorKind::LowerFiq => VmExit::HostInterrupt(irq(cpu, platform)),
        VectorKind::LowerSError => {
            warn!("SError from the guest (ESR_EL2 {:#x}); ignored", ESR_EL2.get());
            VmExit::Handled(Handled::Other)
        }
        _ => {
            warn!("unexpected exception {kind:?} from the guest");
            VmExit::Handled(Handled::Other)
        }
    }
}

/// Past the trapped instruction (all are 4 bytes: the guest is AArch64).
pub(super) fn step_over() {
    ELR_EL2.set(ELR_EL2.get() + 4);
}

fn lower_sync(cpu: &mut Aarch64, platform: &mut ArmPlatform) -> VmExit {
    match esr::decode(ESR_EL2.get()) {
        Exit::DataAbort(da) => data_abort(cpu, &da),
        Exit::InstrAbort(_) => {
            let ipa = fault_ipa();
            inject_abort(false, false);
            VmExit::Unmapped { ipa, what: "instruction fetch" }
        }
        Exit::Hvc { .. } => hypercall(cpu, false),
        Exit::Smc { .. } => {
            // A trapped SMC returns to itself; step over it.
            step_over();
            hypercall(cpu, true)
        }
        Exit::SysReg(acc) => {
            if sysreg_access(cpu, platform, &acc) {
                step_over();
            } else {
                inject_undef();
            }
            VmExit::Handled(Handled::SysReg)
        }
        Exit::Wfx { .. } => {
            step_over();
            VmExit::Halt
        }
        other => {
            warn!("guest exception {other:?} at pc {:#x}: reflected as undefined instruction", ELR_EL2.get());
            inject_undef();
            VmExit::Handled(Handled::Other)
        }
    }
}

fn hypercall(cpu: &mut Aarch64, smc: bool) -> VmExit {
    cpu.pending = Pending::Hypercall;
    let x = &cpu.frame.x;
    VmExit::Hypercall { args: [x[0], x[1], x[2], x[3]], smc }
}

/// The faulting IPA: HPFAR_EL2 is valid for the translation faults that
/// reach here (for permission faults see `write_fault_ipa`).
fn fault_ipa() -> u64 {
    ((HPFAR_EL2.get() & 0x0000_0fff_ffff_fff0) << 8) | (FAR_EL2.get() & 0xfff)
}

/// The IPA of a stage-2 permission fault. HPFAR_EL2 is architecturally
/// valid for faults on a stage-1 walk, but not for every permission fault
/// (Linux KVM, `__get_fault_info`); there, translate FAR_EL2 through the
/// guest's stage 1 with `AT S1E1R` as KVM does. None: the guest's tables
/// changed under us; let it retry.
fn write_fault_ipa(da: &DataAbort) -> Option<u64> {
    let far = FAR_EL2.get();
    if da.s1ptw || da.fnv {
        return Some(fault_ipa());
    }
    // The guest's PAR_EL1 is live state: keep it.
    let saved = PAR_EL1.get();
    // SAFETY: address translation of the guest's own virtual address
    // through its current stage-1 regime; only PAR_EL1 changes, restored below.
    unsafe { core::arch::asm!("at s1e1r, {}", "isb", in(reg) far, options(nostack)) };
    let par = PAR_EL1.get();
    PAR_EL1.set(saved);
    if par & 1 != 0 {
        return None;
    }
    Some((par & 0x0000_ffff_ffff_f000) | (far & 0xfff))
}

fn data_abort(cpu: &mut Aarch64, da: &DataAbort) -> VmExit {
    // Writes to write-protected guest RAM: dirty tracking. Cache
    // maintenance reports WnR=1 too (an invalidate can change memory), and
    // a stage-1 walk faults here when it updates access/dirty bits.
    if matches!(da.kind, FaultKind::Permission(_)) && (da.wnr || da.s1ptw) {
        let Some(ipa) = write_fault_ipa(da) else { return VmExit::Retry };
        cpu.pending = Pending::WriteFault(*da);
        return VmExit::WriteFault { ipa };
    }
    let ipa = fault_ipa();
    if !matches!(da.kind, FaultKind::Translation(_)) || da.s1ptw {
        warn!("guest data abort {:?} at IPA {ipa:#x} (pc {:#x}): reflected", da.kind, ELR_EL2.get());
        inject_abort(true, da.wnr);
        return VmExit::Handled(Handled::Abort);
    }
    if !da.isv {
        // Without a valid syndrome (load/store pair, writeback, ...) the
        // access cannot be emulated from ESR alone.
        inject_abort(true, da.wnr);
        return VmExit::Unmapped { ipa, what: "access without syndrome (ISV=0)" };
    }
    let size = da.sas_bytes;
    let mask = access_mask(size);
    cpu.pending = Pending::Mmio(*da);
    VmExit::Mmio(MmioAccess { ipa, size, write: da.wnr.then(|| cpu.frame.reg(da.srt) & mask) })
}

/// Vector offset in the guest's table for an exception taken to EL1 from
/// the guest's current mode.
fn guest_vector_offset(spsr: u64) -> u64 {
    match spsr & 0xf {
        0 => 0x400, // from EL0 (AArch64)
        4 => 0x000, // EL1t
        _ => 0x200, // EL1h
    }
}

/// Makes the guest take a synchronous exception at EL1 with `esr_el1`, as
/// if its own access had faulted.
fn inject_sync(esr_el1: u64, far: Option<u64>) {
    let spsr = SPSR_EL2.get();
    ESR_EL1.set(esr_el1);
    if let Some(f) = far {
        FAR_EL1.set(f);
    }
    ELR_EL1.set(ELR_EL2.get());
    SPSR_EL1.set(spsr);
    ELR_EL2.set(VBAR_EL1.get() + guest_vector_offset(spsr));
    // EL1h with D, A, I, F masked: what the architecture sets on exception entry.
    SPSR_EL2.set(0x3c5);
}

pub(super) fn inject_abort(data: bool, wnr: bool) {
    let from_el0 = SPSR_EL2.get() & 0xf == 0;
    inject_sync(esr::external_abort_esr(data, from_el0, wnr), Some(FAR_EL2.get()));
}

fn inject_undef() {
    // EC 0 (unknown reason), IL set.
    inject_sync(1 << 25, None);
}

/// ICC_SGI1R_EL1: with HCR_EL2.IMO set the guest's SGI writes trap here.
const SGI1R: (u8, u8, u8, u8, u8) = (3, 0, 12, 11, 5);

/// Emulates a trapped system register access or system instruction;
/// false if the guest must take it as undefined instead.
fn sysreg_access(cpu: &mut Aarch64, platform: &mut ArmPlatform, acc: &esr::SysRegAccess) -> bool {
    let key = (acc.op0, acc.op1, acc.crn, acc.crm, acc.op2);
    if key == SGI1R && !acc.is_read {
        let v = cpu.frame.reg(acc.rt);
        let intid = ((v >> 24) & 0xf) as u32;
        let irm = v & (1 << 40) != 0;
        let aff = (v >> 16) & 0xff | ((v >> 32) & 0xff) << 8 | ((v >> 48) & 0xff) << 16;
        // The one vCPU is affinity 0.0.0, target-list bit 0; IRM means "all but self".
        if !irm && aff == 0 && v & 1 != 0 {
            platform.vgic.set_pending(intid);
        }
        return true;
    }
    let enc = id_model::Encoding { op0: acc.op0, op1: acc.op1, crn: acc.crn, crm: acc.crm, op2: acc.op2 };
    let write = (!acc.is_read).then(|| cpu.frame.reg(acc.rt));
    // TID1/2/3, TDZ and MDCR_EL2's traps: answered from the one CPU model
    // every device shows.
    if let Some((kind, outcome)) = sysreg_model::emulate(enc, write, &mut cpu.model) {
        let n = &mut cpu.model_traps[kind as usize];
        if *n == 0 {
            info!(
                "guest {} S{}_{}_C{}_C{}_{} trapped ({}): {} (CPU model); further traps of this kind are counted",
                if acc.is_read { "read of" } else { "write of" },
                acc.op0,
                acc.op1,
                acc.crn,
                acc.crm,
                acc.op2,
                kind.name(),
                outcome
            );
        }
        *n += 1;
        return match outcome {
            sysreg_model::Outcome::Read(v) => {
                cpu.frame.set_reg(acc.rt, v);
                true
            }
            sysreg_model::Outcome::Written => true,
            sysreg_model::Outcome::Undefined => false,
        };
    }
    if acc.is_read {
        cpu.frame.set_reg(acc.rt, 0);
    }
    let code = (acc.op0 as u32) << 16 | (acc.op1 as u32) << 12 | (acc.crn as u32) << 8 | (acc.crm as u32) << 4 | acc.op2 as u32;
    if !cpu.sysregs_reported.contains(&code) && cpu.sysregs_reported.push(code).is_ok() {
        info!(
            "guest {} of system register S{}_{}_C{}_C{}_{} trapped: treated as RAZ/WI",
            if acc.is_read { "read" } else { "write" },
            acc.op0,
            acc.op1,
            acc.crn,
            acc.crm,
            acc.op2
        );
    }
    true
}

/// Acknowledges every pending physical interrupt: the guest's virtual
/// timer goes to its vGIC, the rest are the node's to handle.
fn irq(cpu: &mut Aarch64, platform: &mut ArmPlatform) -> HostIrqs {
    let mut out = HostIrqs::default();
    loop {
        let intid = GIC.ack();
        if intid >= 1020 {
            break;
        }
        out.count += 1;
        GIC.eoi(intid);
        match intid {
            // Stays active physically until the guest deactivates it
            // through the HW list register.
            vboard::VTIMER_INTID => platform.vgic.set_pending(intid),
            timer::INTID => {
                // The line stays high until the timer is stopped or
                // re-armed, and the node re-arms it only after this loop:
                // stop it now, or the next acknowledge returns it again.
                timer::stop();
                GIC.deactivate(intid);
                out.tick = true;
            }
            // Underflow: the refill before the guest runs does the work.
            vboard::MAINTENANCE_INTID => GIC.deactivate(intid),
            id if id == board::UART_INTID => {
                // The line stays high until the FIFO is read: read it now,
                // or the interrupt comes straight back. The node takes the
                // bytes with `console_read`.
                while !cpu.console_rx.is_full() {
                    let Some(b) = LOGGER.read_byte() else { break };
                    let _ = cpu.console_rx.push_back(b);
                }
                out.console = true;
                GIC.deactivate(intid);
                if cpu.console_rx.is_full() {
                    // More typed than the node has read: it reads now, and
                    // the line brings us back for the rest.
                    break;
                }
            }
            _ => {
                warn!("unexpected physical interrupt {intid}");
                GIC.deactivate(intid);
            }
        }
    }
    out
}

/// Before the guest runs: retire list registers the guest has finished
/// with and put the highest-priority deliverable interrupts into the free
/// ones.
pub(super) fn refill_list_registers(platform: &mut ArmPlatform) {
    let nlr = GIC.list_registers().min(vgic::MAX_LRS);
    let empty = sysreg::ich_elrsr_el2();
    for n in 0..nlr {
        if empty & (1 << n) != 0 {
            platform.vgic.lr_emptied(n);
        }
    }
    for n in 0..nlr {
        if empty & (1 << n) == 0 {
            continue;
        }
        let Some(p) = platform.vgic.next_to_inject() else { break };
        let hw = (p.intid == vboard::VTIMER_INTID).then_some(p.intid);
        platform.vgic.mark_in_lr(n, p.intid);
        sysreg::set_ich_lr(n, vgic::lr_value(&p, hw));
    }
    // More waiting than list registers: ask for the underflow maintenance
    // interrupt, which brings us back as soon as an LR frees up.
    let hcr = ICH_HCR_EL2.get();
    let want = if platform.vgic.next_to_inject().is_some() { hcr | ICH_HCR_UIE } else { hcr & !ICH_HCR_UIE };
    if want != hcr {
        ICH_HCR_EL2.set(want);
    }
}

/// The bits an access of `size` bytes moves.
pub(super) fn access_mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size as u32 * 8)) - 1
    }
}
