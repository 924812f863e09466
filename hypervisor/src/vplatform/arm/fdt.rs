//! The device tree the guest boots with. It describes exactly the virtual
//! board and nothing of the physical one: memory, one CPU, the GICv3, the
//! generic timer, one PL011 and PSCI over HVC. Node names, addresses and
//! interrupt numbers follow QEMU `virt`, so a kernel known to boot there
//! finds what it expects.
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use vm_fdt::FdtWriter;

use super::board;

/// The board to describe. `qemu_virt_like` fills in everything but the
/// command line and the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBoard {
    pub ram_base: u64,
    pub ram_size: u64,
    pub cmdline: String,
    /// Guest-physical `(start, end)` of the initrd, `end` exclusive (what
    /// `linux,initrd-end` means).
    pub initrd: Option<(u64, u64)>,
    pub uart_base: u64,
    pub uart_size: u64,
    /// The UART's SPI number (INTID - 32).
    pub uart_spi: u32,
    pub gicd_base: u64,
    pub gicd_size: u64,
    pub gicr_base: u64,
    pub gicr_size: u64,
    /// MPIDR affinity of the one CPU (its `reg`).
    pub cpu_mpidr: u32,
    pub cpu_compatible: &'static str,
    /// The disk's virtio-mmio `(base, size, SPI number)`, if the guest has one.
    pub disk: Option<(u64, u64, u32)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FdtError {
    Writer(vm_fdt::Error),
    /// The initrd's end lies before its start.
    BadInitrd,
}

impl From<vm_fdt::Error> for FdtError {
    fn from(e: vm_fdt::Error) -> Self {
        FdtError::Writer(e)
    }
}

// Interrupt specifier cells (bindings/interrupt-controller/arm,gic-v3.yaml).
const SPI: u32 = 0;
const PPI: u32 = 1;
const LEVEL_HIGH: u32 = 4;

// PPI numbers (INTID - 16) of the generic timer and the GIC maintenance
// interrupt, as on QEMU virt.
const TIMER_SECURE_PHYS_PPI: u32 = 13;
const TIMER_PHYS_PPI: u32 = 14;
const TIMER_VIRT_PPI: u32 = 11;
const TIMER_HYP_PPI: u32 = 10;
const GIC_MAINTENANCE_PPI: u32 = 9;

const PHANDLE_GIC: u32 = 1;
const PHANDLE_CLOCK: u32 = 2;

impl GuestBoard {
    pub fn qemu_virt_like(ram_base: u64, ram_size: u64) -> Self {
        GuestBoard {
            ram_base,
            ram_size,
            cmdline: String::new(),
            initrd: None,
            uart_base: board::UART_BASE,
            uart_size: board::UART_SIZE,
            uart_spi: board::UART_INTID - 32,
            gicd_base: board::GICD_BASE,
            gicd_size: board::GICD_SIZE,
            gicr_base: board::GICR_BASE,
            gicr_size: board::GICR_SIZE,
            cpu_mpidr: 0,
            cpu_compatible: "arm,cortex-a57",
            disk: None,
        }
    }

    /// The UART node's path, for `stdout-path`.
    pub fn uart_path(&self) -> String {
        alloc::format!("/pl011@{:x}", self.uart_base)
    }

    /// This board with the virtual disk at its place on QEMU virt.
    pub fn with_disk(mut self) -> Self {
        self.disk = Some((board::DISK_BASE, board::DISK_SIZE, board::DISK_INTID - 32));
        self
    }
}

fn reg(pairs: &[(u64, u64)]) -> Vec<u64> {
    pairs.iter().flat_map(|&(base, size)| [base, size]).collect()
}

pub fn build(b: &GuestBoard) -> Result<Vec<u8>, FdtError> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_string("model", "vmsync-virt")?;
    w.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", &b.cmdline)?;
    w.property_string("stdout-path", &b.uart_path())?;
    if let Some((start, end)) = b.initrd {
        if end < start {
            return Err(FdtError::BadInitrd);
        }
        // Linux reads these at the width the property has; 64 bits hold
        // any guest-physical address.
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    w.end_node(chosen)?;

    let memory = w.begin_node(&alloc::format!("memory@{:x}", b.ram_base))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &reg(&[(b.ram_base, b.ram_size)]))?;
    w.end_node(memory)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    let cpu = w.begin_node(&alloc::format!("cpu@{:x}", b.cpu_mpidr))?;
    w.property_string("device_type", "cpu")?;
    w.property_string("compatible", b.cpu_compatible)?;
    w.property_u32("reg", b.cpu_mpidr)?;
    w.property_string("enable-method", "psci")?;
    w.end_node(cpu)?;
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list("compatible", vec!["arm,psci-1.0".into(), "arm,psci-0.2".into(), "arm,psci".into()])?;
    // The guest's SMC would go to the secure monitor: it traps too, but HVC
    // is the conduit meant for a hypervisor.
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let intc = w.begin_node(&alloc::format!("intc@{:x}", b.gicd_base))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_null("interrupt-controller")?;
    // No child nodes (no ITS); dtc wants the cell count of an interrupt
    // provider stated.
    w.property_u32("#address-cells", 0)?;
    w.property_u32("#redistributor-regions", 1)?;
    w.property_array_u64("reg", &reg(&[(b.gicd_base, b.gicd_size), (b.gicr_base, b.gicr_size)]))?;
    w.property_array_u32("interrupts", &[PPI, GIC_MAINTENANCE_PPI, LEVEL_HIGH])?;
    w.property_phandle(PHANDLE_GIC)?;
    w.end_node(intc)?;

    // Level-high, as QEMU virt (2.9 and later) describes them for GICv3.
    // The CPU-mask byte (0xf04 style) belongs to GICv2 bindings only.
    // `always-on`: the virtual timer keeps counting whatever the guest's
    // CPU does (QEMU says the same); without it Linux assumes the timer
    // stops in deep idle and leans on a broadcast timer.
    let timer = w.begin_node("timer")?;
    w.property_string_list("compatible", vec!["arm,armv8-timer".into(), "arm,armv7-timer".into()])?;
    w.property_null("always-on")?;
    w.property_array_u32(
        "interrupts",
        &[
            PPI,
            TIMER_SECURE_PHYS_PPI,
            LEVEL_HIGH, //
            PPI,
            TIMER_PHYS_PPI,
            LEVEL_HIGH, //
            PPI,
            TIMER_VIRT_PPI,
            LEVEL_HIGH, //
            PPI,
            TIMER_HYP_PPI,
            LEVEL_HIGH,
        ],
    )?;
    w.end_node(timer)?;

    let clk = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", 24_000_000)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_phandle(PHANDLE_CLOCK)?;
    w.end_node(clk)?;

    let uart = w.begin_node(&b.uart_path()[1..])?;
    w.property_string_list("compatible", vec!["arm,pl011".into(), "arm,primecell".into()])?;
    w.property_array_u64("reg", &reg(&[(b.uart_base, b.uart_size)]))?;
    w.property_array_u32("interrupts", &[SPI, b.uart_spi, LEVEL_HIGH])?;
    w.property_array_u32("clocks", &[PHANDLE_CLOCK, PHANDLE_CLOCK])?;
    w.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    w.end_node(uart)?;

    if let Some((base, size, spi)) = b.disk {
        // As QEMU virt describes its virtio-mmio slots (edge-triggered
        // there; the model's interrupt is a level, so level-high here), and
        // `dma-coherent`: the model reads and writes guest RAM through the
        // CPU's own caches.
        let disk = w.begin_node(&alloc::format!("virtio_mmio@{base:x}"))?;
        w.property_string("compatible", "virtio,mmio")?;
        w.property_array_u64("reg", &reg(&[(base, size)]))?;
        w.property_array_u32("interrupts", &[SPI, spi, LEVEL_HIGH])?;
        w.property_null("dma-coherent")?;
        w.end_node(disk)?;
    }

    w.end_node(root)?;
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use fdt::Fdt;
    use std::vec::Vec;

    fn board() -> GuestBoard {
        let mut b = GuestBoard::qemu_virt_like(0x4000_0000, 256 << 20);
        b.cmdline = "console=ttyAMA0 earlycon".into();
        b.initrd = Some((0x4f00_0000, 0x4f12_3456));
        b
    }

    fn cells(fdt: &Fdt, path: &str, prop: &str) -> Vec<u32> {
        let p = fdt.find_node(path).unwrap_or_else(|| panic!("{path}")).property(prop).unwrap_or_else(|| panic!("{path} {prop}"));
        p.value.chunks(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    fn strings<'a>(fdt: &'a Fdt, path: &str, prop: &str) -> Vec<&'a str> {
        let p = fdt.find_node(path).unwrap().property(prop).unwrap();
        p.value.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| core::str::from_utf8(s).unwrap()).collect()
    }

    #[test]
    fn describes_the_board() {
        let blob = build(&board()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let root = fdt.root();
        assert_eq!(root.model(), "vmsync-virt");
        assert_eq!(root.compatible().first(), "linux,dummy-virt");
        assert_eq!(cells(&fdt, "/", "#address-cells"), [2]);
        assert_eq!(cells(&fdt, "/", "interrupt-parent"), [PHANDLE_GIC]);

        let mem: Vec<_> = fdt.memory().regions().collect();
        assert_eq!(mem.len(), 1);
        assert_eq!(mem[0].starting_address as u64, 0x4000_0000);
        assert_eq!(mem[0].size, Some(256 << 20));

        let cpus: Vec<_> = fdt.cpus().collect();
        assert_eq!(cpus.len(), 1);
        assert_eq!(cpus[0].ids().first(), 0);
        assert_eq!(strings(&fdt, "/cpus/cpu@0", "enable-method"), ["psci"]);
        assert_eq!(strings(&fdt, "/cpus/cpu@0", "device_type"), ["cpu"]);

        let gic = fdt.find_node("/intc@8000000").unwrap();
        assert_eq!(gic.compatible().unwrap().first(), "arm,gic-v3");
        let regs: Vec<_> = gic.reg().unwrap().map(|r| (r.starting_address as u64, r.size.unwrap() as u64)).collect();
        assert_eq!(regs, [(0x0800_0000, 0x1_0000), (0x080A_0000, 0x2_0000)]);
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(cells(&fdt, "/intc@8000000", "#interrupt-cells"), [3]);
        assert_eq!(cells(&fdt, "/intc@8000000", "interrupts"), [1, 9, 4]);
        assert_eq!(cells(&fdt, "/intc@8000000", "#redistributor-regions"), [1]);
        assert_eq!(cells(&fdt, "/intc@8000000", "#address-cells"), [0]);
        assert_eq!(fdt.find_phandle(PHANDLE_GIC).unwrap().name, "intc@8000000");

        assert_eq!(strings(&fdt, "/timer", "compatible"), ["arm,armv8-timer", "arm,armv7-timer"]);
        assert_eq!(cells(&fdt, "/timer", "interrupts"), [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]);

        let uart = fdt.find_node("/pl011@9000000").unwrap();
        assert_eq!(strings(&fdt, "/pl011@9000000", "compatible"), ["arm,pl011", "arm,primecell"]);
        let r = uart.reg().unwrap().next().unwrap();
        assert_eq!((r.starting_address as u64, r.size), (0x0900_0000, Some(0x1000)));
        assert_eq!(cells(&fdt, "/pl011@9000000", "interrupts"), [0, 1, 4]);
        assert_eq!(cells(&fdt, "/pl011@9000000", "clocks"), [PHANDLE_CLOCK, PHANDLE_CLOCK]);
        assert_eq!(strings(&fdt, "/pl011@9000000", "clock-names"), ["uartclk", "apb_pclk"]);

        let clk = fdt.find_phandle(PHANDLE_CLOCK).unwrap();
        assert_eq!(clk.name, "apb-pclk");
        assert_eq!(cells(&fdt, "/apb-pclk", "clock-frequency"), [24_000_000]);
        assert_eq!(cells(&fdt, "/apb-pclk", "#clock-cells"), [0]);
        assert_eq!(strings(&fdt, "/apb-pclk", "clock-output-names"), ["clk24mhz"]);

        assert_eq!(strings(&fdt, "/psci", "compatible"), ["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]);
        assert_eq!(strings(&fdt, "/psci", "method"), ["hvc"]);

        let chosen = fdt.chosen();
        assert_eq!(chosen.bootargs(), Some("console=ttyAMA0 earlycon"));
        assert_eq!(chosen.stdout().unwrap().name, "pl011@9000000");
        assert_eq!(cells(&fdt, "/chosen", "linux,initrd-start"), [0, 0x4f00_0000]);
        assert_eq!(cells(&fdt, "/chosen", "linux,initrd-end"), [0, 0x4f12_3456]);
    }

    #[test]
    fn nothing_but_the_board() {
        let blob = build(&board()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let mut names: Vec<_> = fdt.find_node("/").unwrap().children().map(|n| n.name).collect();
        names.sort();
        assert_eq!(names, ["apb-pclk", "chosen", "cpus", "intc@8000000", "memory@40000000", "pl011@9000000", "psci", "timer"]);
        assert!(fdt.find_compatible(&["virtio,mmio"]).is_none());
        assert_eq!(fdt.all_nodes().filter(|n| n.name.starts_with("pl011")).count(), 1);
    }

    #[test]
    fn a_disk_is_one_virtio_node_at_the_first_slot() {
        let blob = build(&board().with_disk()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let disks: Vec<_> = fdt.all_nodes().filter(|n| n.compatible().is_some_and(|c| c.all().any(|s| s == "virtio,mmio"))).collect();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].name, "virtio_mmio@a000000");
        let r = disks[0].reg().unwrap().next().unwrap();
        assert_eq!((r.starting_address as u64, r.size), (0x0a00_0000, Some(0x200)));
        assert_eq!(cells(&fdt, "/virtio_mmio@a000000", "interrupts"), [0, 16, 4]);
        assert!(disks[0].property("dma-coherent").is_some());
        let mut names: Vec<_> = fdt.find_node("/").unwrap().children().map(|n| n.name).collect();
        names.sort();
        assert_eq!(names, ["apb-pclk", "chosen", "cpus", "intc@8000000", "memory@40000000", "pl011@9000000", "psci", "timer", "virtio_mmio@a000000"]);
    }

    #[test]
    fn without_initrd_and_with_a_bad_one() {
        let mut b = board();
        b.initrd = None;
        let blob = build(&b).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert!(fdt.find_node("/chosen").unwrap().property("linux,initrd-start").is_none());
        b.initrd = Some((0x5000_0000, 0x4000_0000));
        assert_eq!(build(&b), Err(FdtError::BadInitrd));
        b.initrd = None;
        b.cmdline = "nul\0inside".into();
        assert_eq!(build(&b), Err(FdtError::Writer(vm_fdt::Error::InvalidString)));
    }

    /// Writes the tree to the temp dir, where `dtc -I dtb -O dts` can show
    /// it to a person; nothing depends on dtc.
    #[test]
    fn dump_for_inspection() {
        let blob = build(&board()).unwrap();
        let path = std::env::temp_dir().join("vmsync-guest.dtb");
        std::fs::write(&path, &blob).unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
    }
}
