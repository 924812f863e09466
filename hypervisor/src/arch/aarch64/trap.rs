//! What happens when the guest leaves EL1: stage-2 aborts (device
//! emulation, or an external abort reflected to the guest), PSCI calls,
//! trapped system registers, and physical interrupts. Before returning, the
//! list registers are refilled from the virtual GIC.
use aarch64_cpu::registers::*;
use log::{error, info, warn};

use super::boot::{fatal, GIC, LOGGER, START_COUNT, VM};
use super::esr::{self, DataAbort, Exit, FaultKind};
use super::vectors::{TrapFrame, VectorKind};
use super::{power, sysreg, timer, tracking};
use crate::console_cmd::{Command, Input};
use crate::vm::{Vm, UNMAPPED_REPORTS};
use crate::vplatform::arm::{board as vboard, psci, vgic};
use crate::vplatform::{MmioAccess, MmioOutcome};

#[no_mangle]
extern "C" fn vmsync_trap(kind: u64, frame: &mut TrapFrame) {
    let kind = VectorKind::from_index(kind);
    if let VectorKind::CurrentSync | VectorKind::CurrentOther(_) = kind {
        hypervisor_fault(kind);
    }
    let mut guard = VM.lock();
    let Some(vm) = guard.as_mut() else { fatal(format_args!("guest trap before the VM exists")) };
    match kind {
        VectorKind::LowerSync => lower_sync(vm, frame),
        VectorKind::LowerIrq | VectorKind::LowerFiq => irq(vm),
        VectorKind::LowerSError => {
            vm.stats.other += 1;
            warn!("SError from the guest (ESR_EL2 {:#x}); ignored", ESR_EL2.get());
        }
        _ => {
            vm.stats.other += 1;
            warn!("unexpected exception {kind:?} from the guest");
        }
    }
    refill_list_registers(vm);
    tracking::at_trap_exit(vm, frame);
    if let Some(target) = vm.switch_to.take() {
        // Returns only if the switch failed and the guest stays here.
        super::switch::hand_over(guard, frame, target);
    }
}

fn hypervisor_fault(kind: VectorKind) -> ! {
    error!("hypervisor exception {:?}: ESR_EL2 {:#x} ELR_EL2 {:#x} FAR_EL2 {:#x}", kind, ESR_EL2.get(), ELR_EL2.get(), FAR_EL2.get());
    power::system_off()
}

fn skip_instruction() {
    ELR_EL2.set(ELR_EL2.get() + 4);
}

fn lower_sync(vm: &mut Vm, frame: &mut TrapFrame) {
    match esr::decode(ESR_EL2.get()) {
        Exit::DataAbort(da) => data_abort(vm, frame, &da),
        Exit::InstrAbort(_) => {
            vm.stats.stage2_fault += 1;
            let ipa = fault_ipa();
            report_unmapped(vm, ipa, "instruction fetch");
            inject_abort(false, false);
        }
        Exit::Hvc { .. } => {
            vm.stats.hvc += 1;
            psci_call(vm, frame);
        }
        Exit::Smc { .. } => {
            vm.stats.smc += 1;
            // A trapped SMC returns to itself; step over it.
            skip_instruction();
            psci_call(vm, frame);
        }
        Exit::SysReg(acc) => {
            vm.stats.sysreg += 1;
            sysreg_access(vm, frame, &acc);
            skip_instruction();
        }
        Exit::Wfx { .. } => {
            vm.stats.other += 1;
            skip_instruction();
        }
        other => {
            vm.stats.other += 1;
            warn!("guest exception {other:?} at pc {:#x}: reflected as undefined instruction", ELR_EL2.get());
            inject_undef();
        }
    }
}

/// The faulting IPA: HPFAR_EL2 is valid for the translation faults that
/// reach here (nothing is mapped read-only yet; see the dirty-tracking work
/// for permission faults, where it is not always valid).
fn fault_ipa() -> u64 {
    ((HPFAR_EL2.get() & 0x0000_0fff_ffff_fff0) << 8) | (FAR_EL2.get() & 0xfff)
}

fn data_abort(vm: &mut Vm, frame: &mut TrapFrame, da: &DataAbort) {
    // Writes to write-protected guest RAM: dirty tracking. Cache
    // maintenance reports WnR=1 too (an invalidate can change memory), and
    // a stage-1 walk faults here when it updates access/dirty bits.
    if matches!(da.kind, FaultKind::Permission(_)) && (da.wnr || da.s1ptw) && tracking::write_fault(vm, da) {
        return;
    }
    let ipa = fault_ipa();
    if !matches!(da.kind, FaultKind::Translation(_)) || da.s1ptw {
        vm.stats.stage2_fault += 1;
        warn!("guest data abort {:?} at IPA {ipa:#x} (pc {:#x}): reflected", da.kind, ELR_EL2.get());
        inject_abort(true, da.wnr);
        return;
    }
    if !da.isv {
        // Without a valid syndrome (load/store pair, writeback, ...) the
        // access cannot be emulated from ESR alone.
        vm.stats.stage2_fault += 1;
        report_unmapped(vm, ipa, "access without syndrome (ISV=0)");
        inject_abort(true, da.wnr);
        return;
    }
    let size = da.sas_bytes;
    let mask = if size >= 8 { u64::MAX } else { (1u64 << (size as u32 * 8)) - 1 };
    let access = MmioAccess { ipa, size, write: da.wnr.then(|| frame.reg(da.srt) & mask) };
    match vm.platform.mmio(access) {
        Ok(out) => {
            vm.stats.mmio += 1;
            match out {
                MmioOutcome::Read(v) => {
                    let mut v = v & mask;
                    if da.sse && size < 8 {
                        let shift = 64 - size as u32 * 8;
                        v = (((v << shift) as i64) >> shift) as u64;
                    }
                    if !da.sf {
                        v &= 0xffff_ffff;
                    }
                    frame.set_reg(da.srt, v);
                }
                MmioOutcome::Console(b) => {
                    LOGGER.guest_bytes(&[b]);
                    tracking::console_byte(vm, b);
                }
                MmioOutcome::Written => {}
            }
            skip_instruction();
        }
        Err(_) => {
            vm.stats.stage2_fault += 1;
            report_unmapped(vm, ipa, if da.wnr { "write" } else { "read" });
            inject_abort(true, da.wnr);
        }
    }
}

fn report_unmapped(vm: &mut Vm, ipa: u64, what: &str) {
    vm.unmapped_accesses += 1;
    if vm.unmapped_accesses <= UNMAPPED_REPORTS {
        let el = if SPSR_EL2.get() & 0xf == 0 { 0 } else { 1 };
        warn!("guest {what} at unmapped IPA {ipa:#x} (pc {:#x}, EL{el}): reflected as a synchronous external abort", ELR_EL2.get());
    }
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

fn inject_abort(data: bool, wnr: bool) {
    let from_el0 = SPSR_EL2.get() & 0xf == 0;
    inject_sync(esr::external_abort_esr(data, from_el0, wnr), Some(FAR_EL2.get()));
}

fn inject_undef() {
    // EC 0 (unknown reason), IL set.
    inject_sync(1 << 25, None);
}

fn psci_call(vm: &mut Vm, frame: &mut TrapFrame) {
    match psci::handle(frame.x[0], frame.x[1], frame.x[2], frame.x[3], 1) {
        psci::PsciOutcome::Return(v) => frame.x[0] = v,
        psci::PsciOutcome::CpuOnRefused { target, code } => {
            info!("guest asked to start CPU {target:#x}; this board has one CPU");
            frame.x[0] = code;
        }
        psci::PsciOutcome::SystemOff => {
            info!("guest powered off (PSCI SYSTEM_OFF)");
            tracking::finish(vm);
            report(vm);
            power::system_off();
        }
        psci::PsciOutcome::SystemReset => {
            info!("guest asked for a reset (PSCI SYSTEM_RESET): resetting the board");
            tracking::finish(vm);
            report(vm);
            power::system_reset();
        }
    }
}

/// ICC_SGI1R_EL1: with HCR_EL2.IMO set the guest's SGI writes trap here.
const SGI1R: (u8, u8, u8, u8, u8) = (3, 0, 12, 11, 5);

fn sysreg_access(vm: &mut Vm, frame: &mut TrapFrame, acc: &esr::SysRegAccess) {
    let key = (acc.op0, acc.op1, acc.crn, acc.crm, acc.op2);
    if key == SGI1R && !acc.is_read {
        let v = frame.reg(acc.rt);
        let intid = ((v >> 24) & 0xf) as u32;
        let irm = v & (1 << 40) != 0;
        let aff = (v >> 16) & 0xff | ((v >> 32) & 0xff) << 8 | ((v >> 48) & 0xff) << 16;
        // The one vCPU is affinity 0.0.0, target-list bit 0; IRM means "all but self".
        if !irm && aff == 0 && v & 1 != 0 {
            vm.platform.vgic.set_pending(intid);
        }
        return;
    }
    if acc.is_read {
        frame.set_reg(acc.rt, 0);
    }
    let code = (acc.op0 as u32) << 16 | (acc.op1 as u32) << 12 | (acc.crn as u32) << 8 | (acc.crm as u32) << 4 | acc.op2 as u32;
    if !vm.sysregs_reported.contains(&code) && vm.sysregs_reported.push(code).is_ok() {
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
}

fn irq(vm: &mut Vm) {
    loop {
        let intid = GIC.ack();
        if intid >= 1020 {
            break;
        }
        vm.stats.irq += 1;
        GIC.eoi(intid);
        match intid {
            // Stays active physically until the guest deactivates it
            // through the HW list register.
            vboard::VTIMER_INTID => vm.platform.vgic.set_pending(intid),
            timer::INTID => {
                GIC.deactivate(intid);
                tracking::tick(vm);
            }
            // Underflow: the refill below does the work.
            vboard::MAINTENANCE_INTID => GIC.deactivate(intid),
            id if id == super::board::UART_INTID => {
                while let Some(b) = LOGGER.read_byte() {
                    match vm.console.feed(b) {
                        Input::Guest(b) => {
                            vm.platform.uart_input(b);
                        }
                        Input::Held => {}
                        Input::Command(c) => console_command(&c),
                    }
                }
                GIC.deactivate(intid);
            }
            _ => {
                warn!("unexpected physical interrupt {intid}");
                GIC.deactivate(intid);
            }
        }
    }
}

/// A hypervisor command typed on the console of the device running the guest.
fn console_command(c: &Command) {
    match c {
        Command::Switch | Command::Failover => info!("console: {c:?} is for a standby; this device runs the guest"),
        Command::Unknown(w) => info!("console: unknown command '{w}' (commands: switch, failover)"),
    }
}

/// After each exit: retire list registers the guest has finished with and
/// put the highest-priority deliverable interrupts into the free ones.
fn refill_list_registers(vm: &mut Vm) {
    let nlr = GIC.list_registers().min(vgic::MAX_LRS);
    let empty = sysreg::ich_elrsr_el2();
    for n in 0..nlr {
        if empty & (1 << n) != 0 {
            vm.platform.vgic.lr_emptied(n);
        }
    }
    for n in 0..nlr {
        if empty & (1 << n) == 0 {
            continue;
        }
        let Some(p) = vm.platform.vgic.next_to_inject() else { break };
        let hw = (p.intid == vboard::VTIMER_INTID).then_some(p.intid);
        vm.platform.vgic.mark_in_lr(n, p.intid);
        sysreg::set_ich_lr(n, vgic::lr_value(&p, hw));
    }
    // More waiting than list registers: ask for the underflow maintenance
    // interrupt, which brings us back as soon as an LR frees up.
    let hcr = ICH_HCR_EL2.get();
    let want = if vm.platform.vgic.next_to_inject().is_some() { hcr | ICH_HCR_UIE } else { hcr & !ICH_HCR_UIE };
    if want != hcr {
        ICH_HCR_EL2.set(want);
    }
}

const ICH_HCR_UIE: u64 = 1 << 1;

/// Time since the guest started, in microseconds.
pub fn elapsed_us() -> u64 {
    let start = START_COUNT.get().copied().unwrap_or(0);
    let ticks = CNTPCT_EL0.get().saturating_sub(start);
    let freq = CNTFRQ_EL0.get().max(1);
    (ticks as u128 * 1_000_000 / freq as u128) as u64
}

fn report(vm: &Vm) {
    let us = elapsed_us();
    let mut line = heapless::String::<256>::new();
    for (name, n, rate) in vm.stats.rates(us) {
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!(" {name}={n}({rate}/s)"));
    }
    info!("traps: total={} elapsed_ms={}{}", vm.stats.total(), us / 1000, line);
    info!("unmapped guest accesses: {}; vgic unknown register accesses: {}", vm.unmapped_accesses, vm.platform.vgic.unknown_accesses());
}
