//! The ARM virtual board: a PL011, a GICv3, the generic timer and PSCI,
//! described by a device tree the hypervisor writes. Addresses follow QEMU
//! `virt` (`board.rs`). This module routes the guest's MMIO accesses to the
//! device models and saves and restores their state.
//!
//! Its snapshot (in the container of `vplatform/snapshot.rs`) holds three
//! sections, in this order, each exactly once:
//!
//! ```text
//! section b"GIC3"   the vGIC: distributor, redistributor, LR bookkeeping
//! section b"UART"   the PL011: registers and receive FIFO
//! section b"DISK"   u8 0: the board has no disk (nothing follows), or
//!                   u8 1, then the virtio-blk model (`VirtioBlk::save_into`:
//!                   its capacity, transport registers, queue, requests)
//! ```
//!
//! The field lists are in `Vgic::save_into`, `Pl011::save_into` and
//! `VirtioBlk::save_into`; they check every value against what the models
//! can hold (masked register bits, INTIDs, list register numbers, FIFO
//! counts). A board restores only on a device whose guest disk is the same:
//! none where the snapshot has none, the same capacity where it has one
//! (`SnapshotError::DiskMismatch` otherwise). The disk's blocks are not in
//! the snapshot: they are on the device's storage.
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
use super::virtio::blk::{BlkStats, VirtioBlk};
use super::virtio::BlockBackend;
use super::{HypercallOutcome, MmioAccess, MmioError, MmioOutcome, Platform};
use crate::memory::guest::GuestMemory;
use board::*;

const TAG_VGIC: [u8; 4] = *b"GIC3";
const TAG_UART: [u8; 4] = *b"UART";
const TAG_DISK: [u8; 4] = *b"DISK";

impl Platform for ArmPlatform {
    fn fresh(disk: Option<u64>) -> Self {
        match disk {
            Some(capacity) => ArmPlatform::with_disk(capacity),
            None => ArmPlatform::new(),
        }
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
    fn restore(bytes: &[u8], disk: Option<u64>) -> Result<Self, SnapshotError> {
        ArmPlatform::restore(bytes, disk)
    }
    fn unknown_accesses(&self) -> u64 {
        self.vgic.unknown_accesses()
    }
    fn disk_process(&mut self, mem: &mut GuestMemory, backend: &mut dyn BlockBackend) {
        ArmPlatform::disk_process(self, mem, backend)
    }
    fn disk_stats(&self) -> Option<BlkStats> {
        self.disk.as_ref().map(|d| d.stats().clone())
    }
}

/// The ARM virtual board: vGIC, PL011 and, if the guest has one, its disk
/// (PSCI is stateless).
pub struct ArmPlatform {
    pub vgic: vgic::Vgic,
    pub uart: pl011::Pl011,
    pub disk: Option<VirtioBlk>,
}

impl Default for ArmPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl ArmPlatform {
    /// The board without a disk.
    pub fn new() -> Self {
        ArmPlatform { vgic: vgic::Vgic::new(), uart: pl011::Pl011::new(), disk: None }
    }

    /// The board with a disk of `capacity` bytes at `DISK_BASE`.
    pub fn with_disk(capacity: u64) -> Self {
        ArmPlatform { disk: Some(VirtioBlk::new(capacity)), ..Self::new() }
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
        if let (Some(off), Some(disk)) = (offset_in(a.ipa, DISK_BASE, DISK_SIZE), self.disk.as_mut()) {
            let out = match a.write {
                None => MmioOutcome::Read(disk.mmio_read(off as u64, a.size)),
                Some(v) => match disk.mmio_write(off as u64, a.size, v) {
                    Some(queue) => MmioOutcome::Notify(queue),
                    None => MmioOutcome::Written,
                },
            };
            // A write may acknowledge the interrupt or reset the device.
            self.sync_disk_irq();
            return Ok(out);
        }
        Err(MmioError::Unmapped)
    }

    /// The disk's queue was notified: serve its requests from `backend`,
    /// then its interrupt follows its status.
    pub fn disk_process(&mut self, mem: &mut GuestMemory, backend: &mut dyn BlockBackend) {
        if let Some(disk) = self.disk.as_mut() {
            disk.process(mem, backend);
        }
        self.sync_disk_irq();
    }

    fn sync_disk_irq(&mut self) {
        if let Some(disk) = &self.disk {
            self.vgic.set_level(DISK_INTID, disk.irq_level());
        }
    }

    /// Appends the state of every emulated device to `out`.
    pub fn save(&self, out: &mut Vec<u8>) {
        snapshot::write(out, |w| {
            w.section(TAG_VGIC, |w| self.vgic.save_into(w));
            w.section(TAG_UART, |w| self.uart.save_into(w));
            w.section(TAG_DISK, |w| match &self.disk {
                None => w.bool(false),
                Some(d) => {
                    w.bool(true);
                    d.save_into(w);
                }
            });
        });
    }

    /// The platform `bytes` (from `save`) describes, on a device whose
    /// guest disk has `disk` bytes (None: no disk). Rejects anything
    /// malformed, truncated, over-long or out of range, and a disk other
    /// than this device's; never panics.
    pub fn restore(bytes: &[u8], disk: Option<u64>) -> Result<ArmPlatform, SnapshotError> {
        snapshot::read(bytes, |r| {
            let vgic = r.section(TAG_VGIC, vgic::Vgic::restore_from)?;
            let uart = r.section(TAG_UART, pl011::Pl011::restore_from)?;
            let saved = r.section(TAG_DISK, |r| if r.bool("disk.present")? { VirtioBlk::restore_from(r).map(Some) } else { Ok(None) })?;
            let saved_capacity = saved.as_ref().map(VirtioBlk::capacity);
            if saved_capacity != disk {
                return Err(SnapshotError::DiskMismatch { saved: saved_capacity, here: disk });
            }
            Ok(ArmPlatform { vgic, uart, disk: saved })
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
