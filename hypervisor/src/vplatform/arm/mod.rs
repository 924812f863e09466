//! The ARM virtual board: a PL011, a GICv3, the generic timer and PSCI,
//! described by a device tree the hypervisor writes. Addresses follow QEMU
//! `virt` (`board.rs`). This module routes the guest's MMIO accesses to the
//! device models and saves and restores their state.
//!
//! Its snapshot (in the container of `vplatform/snapshot.rs`) holds two
//! sections, in this order, each exactly once:
//!
//! ```text
//! section b"GIC3"   the vGIC: distributor, redistributor, LR bookkeeping
//! section b"UART"   the PL011: registers and receive FIFO
//! ```
//!
//! The field lists are in `Vgic::save_into` and `Pl011::save_into`; they
//! check every value against what the models can hold (masked register
//! bits, INTIDs, list register numbers, FIFO counts).
//!
//! PSCI (`psci.rs`) holds no state: `psci::handle` is a pure function of
//! the call and the CPU count (from the guest config), so nothing of it is
//! saved. The physical list registers (ICH_LR<n>_EL2) and the rest of the
//! GIC's virtual CPU interface are vCPU state, saved by the arch code; the
//! vGIC section holds the model's belief of which INTID sits in which LR,
//! which must be restored together with those registers.
pub mod board;
pub mod fdt;
pub mod pl011;
pub mod psci;
pub mod vgic;

#[cfg(test)]
pub(crate) mod snapshot_tests;

use alloc::vec::Vec;

use super::snapshot::{self, SnapshotError};
use super::{HypercallOutcome, MmioAccess, MmioError, MmioOutcome, Platform};
use board::*;

const TAG_VGIC: [u8; 4] = *b"GIC3";
const TAG_UART: [u8; 4] = *b"UART";

impl Platform for ArmPlatform {
    fn fresh() -> Self {
        ArmPlatform::new()
    }
    fn mmio(&mut self, a: MmioAccess) -> Result<MmioOutcome, MmioError> {
        ArmPlatform::mmio(self, a)
    }
    fn console_input(&mut self, byte: u8) -> bool {
        self.uart_input(byte)
    }
    fn hypercall(&mut self, args: [u64; 4]) -> HypercallOutcome {
        match psci::handle(args[0], args[1], args[2], args[3], 1) {
            psci::PsciOutcome::Return(v) => HypercallOutcome::Return(v),
            psci::PsciOutcome::CpuOnRefused { target, code } => HypercallOutcome::CpuOnRefused { target, code },
            psci::PsciOutcome::SystemOff => HypercallOutcome::PowerOff("PSCI SYSTEM_OFF"),
            psci::PsciOutcome::SystemReset => HypercallOutcome::Reset("PSCI SYSTEM_RESET"),
        }
    }
    fn save(&self, out: &mut Vec<u8>) {
        ArmPlatform::save(self, out)
    }
    fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        ArmPlatform::restore(bytes)
    }
    fn unknown_accesses(&self) -> u64 {
        self.vgic.unknown_accesses()
    }
}

/// The ARM virtual board: vGIC and PL011 (PSCI is stateless).
pub struct ArmPlatform {
    pub vgic: vgic::Vgic,
    pub uart: pl011::Pl011,
}

impl Default for ArmPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl ArmPlatform {
    pub fn new() -> Self {
        ArmPlatform { vgic: vgic::Vgic::new(), uart: pl011::Pl011::new() }
    }

    pub fn mmio(&mut self, a: MmioAccess) -> Result<MmioOutcome, MmioError> {
        let size = a.size as usize;
        if let Some(off) = offset_in(a.ipa, GICD_BASE, GICD_SIZE) {
            return Ok(match a.write {
                None => MmioOutcome::Read(self.vgic.gicd_read(off, size)),
                Some(v) => {
                    self.vgic.gicd_write(off, size, v);
                    MmioOutcome::Written
                }
            });
        }
        if let Some(off) = offset_in(a.ipa, GICR_BASE, GICR_SIZE) {
            return Ok(match a.write {
                None => MmioOutcome::Read(self.vgic.gicr_read(off, size)),
                Some(v) => {
                    self.vgic.gicr_write(off, size, v);
                    MmioOutcome::Written
                }
            });
        }
        if let Some(off) = offset_in(a.ipa, UART_BASE, UART_SIZE) {
            let out = match a.write {
                None => MmioOutcome::Read(self.uart.read(off, size) as u64),
                Some(v) => match self.uart.write(off, size, v as u32) {
                    Some(byte) => MmioOutcome::Console(byte),
                    None => MmioOutcome::Written,
                },
            };
            self.sync_uart_irq();
            return Ok(out);
        }
        Err(MmioError::Unmapped)
    }

    /// Appends the state of every emulated device to `out`.
    pub fn save(&self, out: &mut Vec<u8>) {
        snapshot::write(out, |w| {
            w.section(TAG_VGIC, |w| self.vgic.save_into(w));
            w.section(TAG_UART, |w| self.uart.save_into(w));
        });
    }

    /// The platform `bytes` (from `save`) describes. Rejects anything
    /// malformed, truncated, over-long or out of range; never panics.
    pub fn restore(bytes: &[u8]) -> Result<ArmPlatform, SnapshotError> {
        snapshot::read(bytes, |r| {
            let vgic = r.section(TAG_VGIC, vgic::Vgic::restore_from)?;
            let uart = r.section(TAG_UART, pl011::Pl011::restore_from)?;
            Ok(ArmPlatform { vgic, uart })
        })
    }

    /// Console input for the guest.
    pub fn uart_input(&mut self, byte: u8) -> bool {
        let taken = self.uart.push_rx(byte);
        self.sync_uart_irq();
        taken
    }

    fn sync_uart_irq(&mut self) {
        self.vgic.set_level(UART_INTID, self.uart.irq_level());
    }
}

fn offset_in(ipa: u64, base: u64, size: u64) -> Option<usize> {
    ipa.checked_sub(base).filter(|&o| o < size).map(|o| o as usize)
}
