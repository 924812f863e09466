//! The guest's UART: an Arm PL011 (r1p5) register model. Bytes the guest
//! writes go straight to the physical console (the transmitter is never
//! busy, its FIFO never fills); bytes from the console wait in a 32-byte
//! receive FIFO. Plain data, so its state can be saved and moved.
//!
//! Interrupts, as Linux's amba-pl011 driver uses them:
//! - TX: the transmit FIFO drains at once, so it is always at or below its
//!   trigger level. TXRIS is set whenever a byte leaves (every DR write)
//!   and when the transmitter is enabled, and stays set until ICR clears
//!   it, so the driver can never wait for a TX interrupt that does not
//!   come. (Linux 6.1 sends by PIO while FR.TXFF is clear, which is always,
//!   and only unmasks TXIM when bytes remain.)
//! - RX: RXRIS while the FIFO holds at least the IFLS trigger level.
//! - RT (receive timeout): set when a byte arrives and by `rx_timeout`
//!   while bytes wait, cleared by ICR or by emptying the FIFO. Real hardware
//!   raises it after 32 idle bit periods; here the byte's arrival stands
//!   for that, and `rx_timeout` re-arms it after the guest cleared it
//!   without draining.

use crate::vplatform::snapshot::{only_bits, Reader, SnapshotError, Writer};

/// Receive FIFO depth of the r1p5 PL011.
pub const FIFO_DEPTH: usize = 32;

// Register offsets.
const DR: usize = 0x000;
const RSR_ECR: usize = 0x004;
const FR: usize = 0x018;
const ILPR: usize = 0x020;
const IBRD: usize = 0x024;
const FBRD: usize = 0x028;
const LCR_H: usize = 0x02c;
const CR: usize = 0x030;
const IFLS: usize = 0x034;
const IMSC: usize = 0x038;
const RIS: usize = 0x03c;
const MIS: usize = 0x040;
const ICR: usize = 0x044;
const DMACR: usize = 0x048;
const ID_BASE: usize = 0xfe0;

/// PeriphID0-3 and CellID0-3: part 0x011 (PL011), designer 0x41 (Arm),
/// revision 3 (r1p5, the one with 32-entry FIFOs). The AMBA bus matches
/// "arm,pl011" on part and designer (id 0x00041011, mask 0x000fffff).
const ID: [u8; 8] = [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

// FR bits.
const FR_BUSY: u32 = 1 << 3;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;
const FR_RXFF: u32 = 1 << 6;
const FR_TXFE: u32 = 1 << 7;

// Interrupt bits (IMSC, RIS, MIS, ICR).
pub const INT_RX: u16 = 1 << 4;
pub const INT_TX: u16 = 1 << 5;
pub const INT_RT: u16 = 1 << 6;
pub const INT_OE: u16 = 1 << 10;
const INT_ALL: u16 = 0x7ff;

const CR_UARTEN: u16 = 1 << 0;
const CR_TXE: u16 = 1 << 8;
const LCR_H_FEN: u8 = 1 << 4;
/// RSR overrun error.
const RSR_OE: u8 = 1 << 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pl011 {
    rx: [u8; FIFO_DEPTH],
    rx_head: u8,
    rx_len: u8,
    rsr: u8,
    ilpr: u8,
    ibrd: u16,
    fbrd: u8,
    lcr_h: u8,
    cr: u16,
    ifls: u8,
    imsc: u16,
    ris: u16,
    dmacr: u8,
    unknown_accesses: u32,
}

impl Default for Pl011 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pl011 {
    /// The reset state: TXE and RXE set, UARTEN clear, interrupts masked.
    pub fn new() -> Self {
        Pl011 {
            rx: [0; FIFO_DEPTH],
            rx_head: 0,
            rx_len: 0,
            rsr: 0,
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: 0x300,
            ifls: 0x12,
            imsc: 0,
            ris: 0,
            dmacr: 0,
            unknown_accesses: 0,
        }
    }

    /// A guest load of `size` bytes (1, 2 or 4; Linux uses 16-bit accesses
    /// for this UART, earlycon 32-bit) at `offset` in the 4 KiB page.
    pub fn read(&mut self, offset: usize, size: usize) -> u32 {
        let v = self.read_reg(offset & !3) >> ((offset & 3) * 8);
        if size >= 4 {
            v
        } else {
            v & ((1 << (size * 8)) - 1)
        }
    }

    /// A guest store. Returns the byte to send to the console for a write
    /// to DR. The transmitter is not gated on CR.UARTEN/TXE: early console
    /// code writes DR before anything enables the UART (QEMU does the same).
    pub fn write(&mut self, offset: usize, size: usize, value: u32) -> Option<u8> {
        if offset & 3 != 0 {
            // Only DR and the ID registers tolerate odd offsets on hardware;
            // nothing writes there.
            self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
            return None;
        }
        let value = if size >= 4 { value } else { value & ((1 << (size * 8)) - 1) };
        match offset {
            DR => {
                self.ris |= INT_TX;
                return Some(value as u8);
            }
            RSR_ECR => self.rsr = 0,
            FR | RIS | MIS => {}
            ILPR => self.ilpr = value as u8,
            IBRD => self.ibrd = value as u16,
            FBRD => self.fbrd = value as u8 & 0x3f,
            LCR_H => {
                self.lcr_h = value as u8;
                self.update_rx_ris();
            }
            CR => {
                let tx_on = |cr: u16| cr & (CR_UARTEN | CR_TXE) == CR_UARTEN | CR_TXE;
                let was = tx_on(self.cr);
                self.cr = value as u16;
                if !was && tx_on(self.cr) {
                    // An enabled transmitter with an empty FIFO is below its
                    // trigger level.
                    self.ris |= INT_TX;
                }
            }
            IFLS => {
                self.ifls = value as u8 & 0x3f;
                self.update_rx_ris();
            }
            IMSC => self.imsc = value as u16 & INT_ALL,
            ICR => self.ris &= !(value as u16),
            DMACR => self.dmacr = value as u8 & 0x7,
            o if o >= ID_BASE => {}
            _ => self.unknown_accesses = self.unknown_accesses.wrapping_add(1),
        }
        None
    }

    /// A byte from the console for the guest. False if the FIFO is full
    /// (the byte is lost, as on hardware, and an overrun is flagged).
    pub fn push_rx(&mut self, byte: u8) -> bool {
        if self.rx_len as usize == FIFO_DEPTH {
            self.rsr |= RSR_OE;
            self.ris |= INT_OE;
            return false;
        }
        let tail = (self.rx_head as usize + self.rx_len as usize) % FIFO_DEPTH;
        self.rx[tail] = byte;
        self.rx_len += 1;
        self.ris |= INT_RT;
        self.update_rx_ris();
        true
    }

    /// The receive timeout elapsed: raise RT again if bytes still wait
    /// (call from a periodic tick; optional while input keeps arriving).
    pub fn rx_timeout(&mut self) {
        if self.rx_len > 0 {
            self.ris |= INT_RT;
        }
    }

    /// The UART's combined interrupt line (UARTINTR): MIS != 0.
    pub fn irq_level(&self) -> bool {
        self.ris & self.imsc != 0
    }

    /// Bytes waiting in the receive FIFO.
    pub fn rx_pending(&self) -> usize {
        self.rx_len as usize
    }

    /// Accesses to offsets that are no register (RAZ/WI).
    pub fn unknown_accesses(&self) -> u32 {
        self.unknown_accesses
    }

    fn read_reg(&mut self, offset: usize) -> u32 {
        match offset {
            DR => self.pop_rx() as u32,
            RSR_ECR => self.rsr as u32,
            FR => self.fr(),
            ILPR => self.ilpr as u32,
            IBRD => self.ibrd as u32,
            FBRD => self.fbrd as u32,
            LCR_H => self.lcr_h as u32,
            CR => self.cr as u32,
            IFLS => self.ifls as u32,
            IMSC => self.imsc as u32,
            RIS => self.ris as u32,
            MIS => (self.ris & self.imsc) as u32,
            ICR => 0,
            DMACR => self.dmacr as u32,
            o if (ID_BASE..ID_BASE + 32).contains(&o) => ID[(o - ID_BASE) / 4] as u32,
            _ => {
                self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
                0
            }
        }
    }

    fn fr(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx_len == 0 {
            fr |= FR_RXFE;
        }
        if self.rx_len as usize == FIFO_DEPTH {
            fr |= FR_RXFF;
        }
        // Never busy, never full: every byte is out as soon as it is written.
        debug_assert!(fr & (FR_BUSY | FR_TXFF) == 0);
        fr
    }

    fn pop_rx(&mut self) -> u8 {
        if self.rx_len == 0 {
            return 0;
        }
        let b = self.rx[self.rx_head as usize];
        self.rx_head = ((self.rx_head as usize + 1) % FIFO_DEPTH) as u8;
        self.rx_len -= 1;
        if self.rx_len == 0 {
            self.ris &= !INT_RT;
        }
        self.update_rx_ris();
        b
    }

    /// RX trigger level from IFLS.RXIFLSEL (1/8 .. 7/8 of the FIFO); one
    /// byte in character mode (FIFO disabled).
    fn rx_trigger(&self) -> usize {
        if self.lcr_h & LCR_H_FEN == 0 {
            return 1;
        }
        match (self.ifls >> 3) & 7 {
            0 => FIFO_DEPTH / 8,
            1 => FIFO_DEPTH / 4,
            2 => FIFO_DEPTH / 2,
            3 => FIFO_DEPTH * 3 / 4,
            _ => FIFO_DEPTH * 7 / 8,
        }
    }

    fn update_rx_ris(&mut self) {
        if self.rx_len as usize >= self.rx_trigger() {
            self.ris |= INT_RX;
        } else {
            self.ris &= !INT_RX;
        }
    }
}

// ---- snapshot ---------------------------------------------------------

impl Pl011 {
    /// The UART section of a device snapshot (`arm/mod.rs`), in this
    /// order: CR (u16), LCR_H (u8), IBRD (u16), FBRD, ILPR, IFLS (u8),
    /// IMSC, RIS (u16), DMACR, RSR (u8), unknown_accesses (u32), then the
    /// receive FIFO oldest byte first: a count (u8) and the bytes. The
    /// ring's position is not kept: only the order is observable.
    pub(crate) fn save_into(&self, w: &mut Writer) {
        w.u16(self.cr);
        w.u8(self.lcr_h);
        w.u16(self.ibrd);
        w.u8(self.fbrd);
        w.u8(self.ilpr);
        w.u8(self.ifls);
        w.u16(self.imsc);
        w.u16(self.ris);
        w.u8(self.dmacr);
        w.u8(self.rsr);
        w.u32(self.unknown_accesses);
        w.u8(self.rx_len);
        for i in 0..self.rx_len as usize {
            w.u8(self.rx[(self.rx_head as usize + i) % FIFO_DEPTH]);
        }
    }

    /// The UART `save_into` wrote. Rejects bits the registers do not
    /// hold, more bytes than the FIFO takes, and interrupt status the FIFO
    /// contradicts (RT with nothing waiting, RX below the trigger level),
    /// which no sequence of accesses can produce.
    pub(crate) fn restore_from(r: &mut Reader) -> Result<Pl011, SnapshotError> {
        let mut u = Pl011::new();
        u.cr = r.u16()?;
        u.lcr_h = r.u8()?;
        u.ibrd = r.u16()?;
        u.fbrd = only_bits("pl011.fbrd", r.u8()?, 0x3f)?;
        u.ilpr = r.u8()?;
        u.ifls = only_bits("pl011.ifls", r.u8()?, 0x3f)?;
        u.imsc = only_bits("pl011.imsc", r.u16()?, INT_ALL)?;
        u.ris = only_bits("pl011.ris", r.u16()?, INT_RX | INT_TX | INT_RT | INT_OE)?;
        u.dmacr = only_bits("pl011.dmacr", r.u8()?, 0x7)?;
        u.rsr = only_bits("pl011.rsr", r.u8()?, RSR_OE)?;
        u.unknown_accesses = r.u32()?;
        let len = r.u8()?;
        if len as usize > FIFO_DEPTH {
            return Err(SnapshotError::BadValue { field: "pl011.rx_len", value: len as u64 });
        }
        u.rx[..len as usize].copy_from_slice(r.take(len as usize)?);
        u.rx_len = len;
        let rt_without_data = u.ris & INT_RT != 0 && len == 0;
        let rx_below_trigger = u.ris & INT_RX != 0 && (len as usize) < u.rx_trigger();
        if rt_without_data || rx_below_trigger {
            return Err(SnapshotError::BadValue { field: "pl011.ris", value: u.ris as u64 });
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Linux's pl011_startup + set_termios leave: FIFO on, RX trigger
    /// at 1/2, UART enabled, RX/RT interrupts unmasked.
    fn linux_configured() -> Pl011 {
        let mut u = Pl011::new();
        u.write(ICR, 2, 0x7ff);
        u.write(IFLS, 2, 0x12);
        u.write(IBRD, 2, 13);
        u.write(FBRD, 2, 1);
        u.write(LCR_H, 2, 0x70); // 8 bits, FIFO enabled
        u.write(CR, 2, 0x301);
        u.write(ICR, 2, (INT_RX | INT_RT) as u32);
        u.write(IMSC, 2, (INT_RX | INT_RT) as u32);
        u
    }

    #[test]
    fn identifies_as_a_pl011() {
        let mut u = Pl011::new();
        let id: [u32; 8] = core::array::from_fn(|i| u.read(0xfe0 + 4 * i, 4));
        assert_eq!(id, [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        let periph = id[0] | id[1] << 8 | id[2] << 16 | id[3] << 24;
        assert_eq!(periph & 0x000f_ffff, 0x0004_1011, "amba id table entry for arm,pl011");
        assert_eq!(u.read(CR, 2), 0x300);
        assert_eq!(u.read(IFLS, 4), 0x12);
        assert_eq!(u.read(FR, 2), 0x90, "TXFE | RXFE");
    }

    #[test]
    fn transmit_goes_out_at_once() {
        let mut u = Pl011::new();
        assert_eq!(u.write(DR, 1, b'V' as u32), Some(b'V'));
        assert_eq!(u.write(DR, 4, 0x1234_5641), Some(0x41));
        assert_eq!(u.write(CR, 2, 0x301), None);
        assert_eq!(u.read(FR, 2) & (FR_TXFF | FR_BUSY), 0);
        assert_ne!(u.read(FR, 2) & FR_TXFE, 0);
    }

    #[test]
    fn tx_interrupt_cannot_be_missed() {
        let mut u = linux_configured();
        assert!(!u.irq_level());
        // Set by the enable, cleared by ICR as in pl011_shutdown.
        assert_ne!(u.read(RIS, 2) as u16 & INT_TX, 0);
        u.write(ICR, 2, 0xffff);
        assert_eq!(u.read(RIS, 2) as u16 & INT_TX, 0);
        // Bytes written by PIO leave TXRIS set; unmasking TXIM then fires.
        u.write(DR, 2, b'a' as u32);
        u.write(IMSC, 2, (INT_RX | INT_RT | INT_TX) as u32);
        assert!(u.irq_level());
        assert_ne!(u.read(MIS, 2) as u16 & INT_TX, 0);
        // The driver's stop_tx masks it again.
        u.write(IMSC, 2, (INT_RX | INT_RT) as u32);
        assert!(!u.irq_level());
        // Re-enabling the UART after a disable re-raises it too.
        u.write(ICR, 2, 0xffff);
        u.write(CR, 2, 0);
        u.write(CR, 2, 0x301);
        assert_ne!(u.read(RIS, 2) as u16 & INT_TX, 0);
    }

    #[test]
    fn receive_with_timeout_and_trigger() {
        let mut u = linux_configured();
        assert!(u.push_rx(b'h'));
        assert!(u.irq_level(), "RT for a lone byte");
        assert_eq!(u.read(MIS, 2) as u16, INT_RT);
        assert_eq!(u.read(FR, 2) & FR_RXFE, 0);
        // The driver's interrupt handler: clear, then drain until RXFE.
        u.write(ICR, 2, (INT_RX | INT_RT) as u32);
        assert_eq!(u.read(DR, 2), b'h' as u32);
        assert_ne!(u.read(FR, 2) & FR_RXFE, 0);
        assert!(!u.irq_level());
        assert_eq!(u.read(DR, 2), 0, "empty FIFO reads zero");
        // 16 bytes reach the 1/2 trigger level.
        for i in 0..16 {
            u.push_rx(b'0' + i);
        }
        assert_eq!(u.read(RIS, 2) as u16 & (INT_RX | INT_RT), INT_RX | INT_RT);
        u.write(ICR, 2, INT_RT as u32);
        for i in 0..16 {
            assert_eq!(u.read(DR, 1), (b'0' + i) as u32);
        }
        assert!(!u.irq_level());
    }

    #[test]
    fn timeout_re_arms_when_bytes_are_left() {
        let mut u = linux_configured();
        u.push_rx(b'x');
        u.write(ICR, 2, INT_RT as u32);
        assert!(!u.irq_level());
        u.rx_timeout();
        assert!(u.irq_level());
        u.read(DR, 2);
        u.rx_timeout();
        assert!(!u.irq_level());
    }

    #[test]
    fn fifo_is_bounded_and_wraps() {
        let mut u = linux_configured();
        for round in 0..3u8 {
            for i in 0..FIFO_DEPTH as u8 {
                assert!(u.push_rx(round.wrapping_mul(50).wrapping_add(i)));
            }
            assert_ne!(u.read(FR, 2) & FR_RXFF, 0);
            assert!(!u.push_rx(0xff), "full");
            assert_ne!(u.read(RSR_ECR, 1) & RSR_OE as u32, 0);
            u.write(RSR_ECR, 4, 0);
            for i in 0..FIFO_DEPTH as u8 {
                assert_eq!(u.read(DR, 4), round.wrapping_mul(50).wrapping_add(i) as u32);
            }
            u.write(ICR, 2, 0x7ff);
        }
        assert_eq!(u.rx_pending(), 0);
    }

    #[test]
    fn character_mode_triggers_on_one_byte() {
        let mut u = Pl011::new();
        u.write(IMSC, 2, INT_RX as u32);
        u.push_rx(b'q');
        assert!(u.irq_level());
    }

    #[test]
    fn registers_hold_their_bits_and_unknown_offsets_are_counted() {
        let mut u = Pl011::new();
        u.write(IBRD, 4, 0xffff_ffff);
        u.write(FBRD, 4, 0xff);
        u.write(ILPR, 4, 0x5a);
        u.write(DMACR, 4, 0xff);
        assert_eq!((u.read(IBRD, 4), u.read(FBRD, 4), u.read(ILPR, 4), u.read(DMACR, 4)), (0xffff, 0x3f, 0x5a, 7));
        // Byte reads of a wider register.
        assert_eq!(u.read(IBRD + 1, 1), 0xff);
        assert_eq!(u.read(0x100, 4), 0);
        u.write(0x100, 4, 1);
        u.write(CR + 1, 1, 1);
        assert_eq!(u.unknown_accesses(), 3);
    }
}
