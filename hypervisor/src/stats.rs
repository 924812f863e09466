//! Trap counters by kind, reported when the guest stops.

#[derive(Debug, Default, Clone, Copy)]
pub struct TrapStats {
    pub mmio: u64,
    pub sysreg: u64,
    pub hvc: u64,
    pub smc: u64,
    pub irq: u64,
    pub stage2_fault: u64,
    /// Stage-2 write-permission faults of dirty tracking.
    pub write_fault: u64,
    pub other: u64,
}

impl TrapStats {
    pub fn total(&self) -> u64 {
        self.mmio + self.sysreg + self.hvc + self.smc + self.irq + self.stage2_fault + self.write_fault + self.other
    }

    /// Per-second rates over `elapsed_us`, as a printable line.
    pub fn rates(&self, elapsed_us: u64) -> [(&'static str, u64, u64); 8] {
        let per_s = |n: u64| n.saturating_mul(1_000_000).checked_div(elapsed_us).unwrap_or(0);
        [
            ("mmio", self.mmio, per_s(self.mmio)),
            ("sysreg", self.sysreg, per_s(self.sysreg)),
            ("hvc", self.hvc, per_s(self.hvc)),
            ("smc", self.smc, per_s(self.smc)),
            ("irq", self.irq, per_s(self.irq)),
            ("abort", self.stage2_fault, per_s(self.stage2_fault)),
            ("write_fault", self.write_fault, per_s(self.write_fault)),
            ("other", self.other, per_s(self.other)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_per_second() {
        let s = TrapStats { mmio: 500, irq: 250, ..Default::default() };
        let r = s.rates(2_000_000);
        assert_eq!(r[0], ("mmio", 500, 250));
        assert_eq!(r[4], ("irq", 250, 125));
        assert_eq!(s.total(), 750);
        assert_eq!(s.rates(0)[0].2, 0);
    }
}
