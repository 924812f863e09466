//! The physical PL011 console: the hypervisor's log and the guest's console
//! output both end here. Polled transmit; receive is read on its interrupt.
use core::ptr::{read_volatile, write_volatile};

const DR: usize = 0x000;
const FR: usize = 0x018;
const IMSC: usize = 0x038;
const ICR: usize = 0x044;
const FR_TXFF: u32 = 1 << 5;
const FR_RXFE: u32 = 1 << 4;
const INT_RX: u32 = 1 << 4;
const INT_RT: u32 = 1 << 6;

pub struct Pl011 {
    base: usize,
}

impl Pl011 {
    /// # Safety
    /// `base` must be the MMIO base of a PL011, mapped as Device memory, and
    /// no other code may drive the same device.
    pub const unsafe fn new(base: usize) -> Self {
        Pl011 { base }
    }

    fn reg(&self, off: usize) -> *mut u32 {
        (self.base + off) as *mut u32
    }

    pub fn put(&self, byte: u8) {
        // SAFETY: `new`'s contract makes these addresses a PL011's registers.
        unsafe {
            while read_volatile(self.reg(FR)) & FR_TXFF != 0 {
                core::hint::spin_loop();
            }
            write_volatile(self.reg(DR), byte as u32);
        }
    }

    pub fn write_bytes(&self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
    }

    /// The next received byte, if any.
    pub fn get(&self) -> Option<u8> {
        // SAFETY: as in `put`.
        unsafe {
            if read_volatile(self.reg(FR)) & FR_RXFE != 0 {
                None
            } else {
                Some(read_volatile(self.reg(DR)) as u8)
            }
        }
    }

    /// Raise the receive interrupts so console input reaches the hypervisor.
    pub fn enable_rx_irq(&self) {
        // SAFETY: as in `put`.
        unsafe {
            write_volatile(self.reg(ICR), 0x7ff);
            write_volatile(self.reg(IMSC), INT_RX | INT_RT);
        }
    }
}

impl core::fmt::Write for Pl011 {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}
