//! The `log` facade on the physical console, every line prefixed `vmsync:`
//! so the guest's own console output (which passes through unprefixed) can
//! be told apart.
use core::fmt::Write;

use crate::drivers::pl011::Pl011;

struct Console {
    uart: Pl011,
    /// Whether the last byte out ended a line: a log line that interrupts a
    /// half-printed guest line starts on a fresh line instead.
    at_line_start: bool,
}

pub struct ConsoleLogger {
    console: spin::Mutex<Console>,
}

impl ConsoleLogger {
    pub const fn new(uart: Pl011) -> Self {
        ConsoleLogger { console: spin::Mutex::new(Console { uart, at_line_start: true }) }
    }

    /// Guest console bytes, passed through as they come.
    pub fn guest_bytes(&self, bytes: &[u8]) {
        let mut c = self.console.lock();
        for &b in bytes {
            c.uart.put(b);
        }
        if let Some(&last) = bytes.last() {
            c.at_line_start = last == b'\n';
        }
    }

    /// One received console byte, if any.
    pub fn read_byte(&self) -> Option<u8> {
        self.console.lock().uart.get()
    }

    pub fn enable_rx_irq(&self) {
        self.console.lock().uart.enable_rx_irq();
    }
}

impl log::Log for ConsoleLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let mut c = self.console.lock();
        if !c.at_line_start {
            c.uart.write_bytes(b"\n");
        }
        let _ = match record.level() {
            log::Level::Error => writeln!(c.uart, "vmsync: error: {}", record.args()),
            log::Level::Warn => writeln!(c.uart, "vmsync: warning: {}", record.args()),
            _ => writeln!(c.uart, "vmsync: {}", record.args()),
        };
        c.at_line_start = true;
    }

    fn flush(&self) {}
}
