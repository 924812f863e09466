//! The active role's loop body: run the guest until it exits, do what the
//! exit asks (dirty tracking, a device access, a hypercall, the tick, the
//! console), inject what became pending, cut an epoch if one is due, and
//! say whether the guest runs on here.
use log::{info, warn};

use super::vm::{Vm, UNMAPPED_REPORTS};
use super::{epochs, Parts, Stop};
use crate::arch::seam::{Arch, Completion, Handled, VmExit};
use crate::console_cmd::{Command, Input};
use crate::net::stack::NetDevice;
use crate::vplatform::{HypercallOutcome, MmioAccess, MmioOutcome, Platform};

pub enum Next {
    Run,
    Stop(Stop),
    /// Standby `0` (an index into the engine's peers) asked for the guest.
    HandOver(usize),
    /// A standby proved a higher term of this guest: stop it here.
    StepDown(sync_core::fence::Term),
}

pub fn step<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>) -> Next {
    let exit = p.arch.run(&mut vm.platform);
    if let Some(stop) = handle(p, vm, exit) {
        return Next::Stop(stop);
    }
    p.arch.inject(&mut vm.platform);
    // Fenced: the guest runs elsewhere under a higher term. Checked before
    // a cut, so no epoch of the old term follows.
    if let Some(term) = vm.sync.as_ref().and_then(|e| e.peers()?.fenced()) {
        return Next::StepDown(term);
    }
    epochs::cut_if_due(p, vm);
    match vm.switch_to.take() {
        Some(target) => Next::HandOver(target),
        None => Next::Run,
    }
}

fn handle<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>, exit: VmExit) -> Option<Stop> {
    match exit {
        VmExit::WriteFault { ipa } => {
            if !epochs::write_fault(p, vm, ipa) {
                vm.stats.stage2_fault += 1;
                warn!("guest write to read-only IPA {ipa:#x} outside tracked RAM (pc {:#x}): reflected", p.arch.guest_pc().pc);
                p.arch.complete(Completion::Abort);
            }
        }
        VmExit::Mmio(access) => mmio(p, vm, access),
        VmExit::Hypercall { args, smc } => {
            if smc {
                vm.stats.smc += 1;
            } else {
                vm.stats.hvc += 1;
            }
            return hypercall(p, vm, args);
        }
        VmExit::HostInterrupt(irqs) => {
            vm.stats.irq += irqs.count as u64;
            if irqs.tick {
                epochs::tick(p, vm);
            }
            if irqs.console {
                console_input(p, vm);
            }
        }
        VmExit::Halt => vm.stats.other += 1,
        VmExit::Unmapped { ipa, what } => {
            vm.stats.stage2_fault += 1;
            report_unmapped(p, vm, ipa, what);
        }
        VmExit::Handled(Handled::SysReg) => vm.stats.sysreg += 1,
        VmExit::Handled(Handled::Abort) => vm.stats.stage2_fault += 1,
        VmExit::Handled(Handled::Other) => vm.stats.other += 1,
        VmExit::Retry => {}
    }
    None
}

pub(super) fn mmio<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>, access: MmioAccess) {
    match vm.platform.mmio(access) {
        Ok(out) => {
            vm.stats.mmio += 1;
            let done = match out {
                MmioOutcome::Read(v) => Completion::MmioRead(v),
                MmioOutcome::Console(b) => {
                    p.arch.console_write(b);
                    epochs::console_byte(vm, b);
                    Completion::MmioWritten
                }
                MmioOutcome::Written => Completion::MmioWritten,
                MmioOutcome::Notify(_) => {
                    // The board has a disk only when the machine has
                    // storage for it (`Machine::guest_disk`).
                    // While RAM is tracked, the disk's writes are counted
                    // for the epoch line (`storage::writes`).
                    if let Some(disk) = p.machine.disk.as_deref_mut() {
                        match vm.disk_writes.as_mut() {
                            Some(w) => vm.platform.disk_process(&mut vm.mem, &mut w.over(disk)),
                            None => vm.platform.disk_process(&mut vm.mem, disk),
                        }
                    }
                    Completion::MmioWritten
                }
            };
            p.arch.complete(done);
        }
        Err(_) => {
            vm.stats.stage2_fault += 1;
            report_unmapped(p, vm, access.ipa, if access.write.is_some() { "write" } else { "read" });
            p.arch.complete(Completion::Abort);
        }
    }
}

fn report_unmapped<A: Arch, D: NetDevice>(p: &Parts<A, D>, vm: &mut Vm<A::Platform>, ipa: u64, what: &str) {
    vm.unmapped_accesses += 1;
    if vm.unmapped_accesses <= UNMAPPED_REPORTS {
        let at = p.arch.guest_pc();
        warn!("guest {what} at unmapped IPA {ipa:#x} (pc {:#x}, EL{}): reflected as a synchronous external abort", at.pc, at.level);
    }
}

fn hypercall<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>, args: [u64; 4]) -> Option<Stop> {
    match vm.platform.hypercall(args) {
        HypercallOutcome::Return(v) => p.arch.complete(Completion::Hypercall(v)),
        HypercallOutcome::CpuOnRefused { target, code } => {
            info!("guest asked to start CPU {target:#x}; this board has one CPU");
            p.arch.complete(Completion::Hypercall(code));
        }
        HypercallOutcome::PowerOff(call) => {
            info!("guest powered off ({call})");
            epochs::finish(p, vm);
            report(p, vm);
            return Some(Stop::PowerOff);
        }
        HypercallOutcome::Reset(call) => {
            info!("guest asked for a reset ({call}): resetting the board");
            epochs::finish(p, vm);
            report(p, vm);
            return Some(Stop::Reset);
        }
    }
    None
}

/// Console bytes: the guest's input, or a hypervisor command after the
/// escape byte.
fn console_input<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>) {
    while let Some(b) = p.arch.console_read() {
        match vm.console.feed(b) {
            Input::Guest(b) => {
                vm.platform.console_input(b);
            }
            Input::Held => {}
            Input::Command(c) => match c {
                Command::Switch | Command::Failover | Command::Resync => info!("console: {c:?} is for a standby; this device runs the guest"),
                Command::Unknown(w) => info!("console: unknown command '{w}' (commands: switch, failover, resync)"),
            },
        }
    }
}

/// The trap counters at power-off.
fn report<A: Arch, D: NetDevice>(p: &Parts<A, D>, vm: &Vm<A::Platform>) {
    let us = p.started_ns.map_or(0, |s| p.arch.now_ns().saturating_sub(s) / 1000);
    let mut line = heapless::String::<256>::new();
    for (name, n, rate) in vm.stats.rates(us) {
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!(" {name}={n}({rate}/s)"));
    }
    info!("traps: total={} elapsed_ms={}{}", vm.stats.total(), us / 1000, line);
    p.arch.report_traps();
    info!("unmapped guest accesses: {}; vgic unknown register accesses: {}", vm.unmapped_accesses, vm.platform.unknown_accesses());
    if let Some(s) = vm.platform.disk_stats() {
        info!("{}", DiskLine(&s));
    }
}

/// The power-off line of the guest's disk.
pub struct DiskLine<'a>(pub &'a crate::vplatform::virtio::blk::BlkStats);

impl core::fmt::Display for DiskLine<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.0;
        write!(
            f,
            "disk: requests read={} write={} flush={} discard={} bytes_read={} bytes_written={} errors={}",
            s.reads, s.writes, s.flushes, s.discards, s.bytes_read, s.bytes_written, s.errors
        )
    }
}
