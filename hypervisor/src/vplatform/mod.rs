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

pub struct Platform {
    pub vgic: vgic::Vgic,
    pub uart: pl011::Pl011,
}

impl Default for Platform {
    fn default() -> Self {
        Self::new()
    }
}

impl Platform {
    pub fn new() -> Self {
        Platform { vgic: vgic::Vgic::new(), uart: pl011::Pl011::new() }
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
