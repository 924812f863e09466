//! The virtual board the guest sees, the same on every device: a PL011, a
//! GICv3, the generic timer and PSCI, described by a device tree the
//! hypervisor writes. Nothing is passed through. This module routes the
//! guest's MMIO accesses to the device models.
pub mod board;
pub mod fdt;
pub mod pl011;
pub mod psci;
pub mod snapshot;
pub mod vgic;

use board::*;

/// One trapped MMIO access, already decoded from the syndrome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    pub ipa: u64,
    /// 1, 2, 4 or 8.
    pub size: u8,
    /// `Some(value)` for a store.
    pub write: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioOutcome {
    /// A load's value (zero-extended to 64 bits).
    Read(u64),
    /// A store that the device absorbed.
    Written,
    /// A store to the UART's data register: one byte for the console.
    Console(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioError {
    /// No device of the virtual board decodes this address.
    Unmapped,
}

/// What a hypercall asks of the board (PSCI on ARM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypercallOutcome {
    /// Return this value to the guest (x0 on ARM).
    Return(u64),
    /// The guest asked to start CPU `target`, which the board cannot:
    /// return `code` (the node logs it once).
    CpuOnRefused { target: u64, code: u64 },
    /// The guest powered off through this call (named for the log).
    PowerOff(&'static str),
    /// The guest asked for a reset through this call.
    Reset(&'static str),
}

/// The virtual board as every architecture's node sees it: the guest's
/// device accesses, console input, its hypercalls, and its state as bytes
/// for a switch. Each architecture has one (`ArmPlatform` on aarch64).
pub trait Platform: Sized {
    /// A fresh board, as at the guest's first instruction.
    fn fresh() -> Self;
    fn mmio(&mut self, a: MmioAccess) -> Result<MmioOutcome, MmioError>;
    /// One byte typed for the guest's console; false if its FIFO is full.
    fn console_input(&mut self, byte: u8) -> bool;
    /// `args` are the call's first four argument registers.
    fn hypercall(&mut self, args: [u64; 4]) -> HypercallOutcome;
    /// Appends the state of every emulated device to `out`.
    fn save(&self, out: &mut alloc::vec::Vec<u8>);
    /// The board `bytes` (from `save`) describes; never panics on bad input.
    fn restore(bytes: &[u8]) -> Result<Self, snapshot::SnapshotError>;
    /// Accesses the models did not understand, for the power-off report.
    fn unknown_accesses(&self) -> u64;
}

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
    fn save(&self, out: &mut alloc::vec::Vec<u8>) {
        ArmPlatform::save(self, out)
    }
    fn restore(bytes: &[u8]) -> Result<Self, snapshot::SnapshotError> {
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
