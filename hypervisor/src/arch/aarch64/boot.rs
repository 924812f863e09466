//! From the loader's hand-off to the node: console, EL2 MMU, where the
//! payload is, the base heap; then what only aarch64 knows how to build
//! for the node: stage 2, and a fresh guest by the arm64 Linux boot
//! protocol (Image, device tree in x0).
use aarch64_cpu::registers::*;
use alloc::vec::Vec;
use log::{error, info};
use vmsync_boot::{container, image};

use super::cpu::Aarch64;
use super::{
    board,
    gic::Gic,
    mmu, power,
    stage2_mem::{GuestStage2, PoolTables},
};
use crate::arch::seam::{ArchBoot, BootInfo};
use crate::memory::stage2::{
    self,
    vmsav8::{self, Vmsav8},
};
use crate::memory::{guest::GuestMemory, layout, phys};
use crate::vplatform::arm::{board as vboard, fdt as vfdt};

/// Global because there is one console per machine and the `log` facade,
/// panics included, reaches it from anywhere.
pub static LOGGER: crate::logger::ConsoleLogger =
    // SAFETY: the board's console UART is mapped (Device memory, first GiB)
    // and only this logger drives it.
    crate::logger::ConsoleLogger::new(unsafe { crate::drivers::pl011::Pl011::new(board::UART_BASE) });

/// Global because there is one interrupt controller per machine; the
/// driver holds only its addresses (no state to own).
// SAFETY: the board's GIC addresses; only the hypervisor drives the GIC.
pub static GIC: Gic = unsafe { Gic::new(board::GICD_BASE, board::GICR_BASE) };

/// Heap for the hypervisor's own needs; the node adds the sync heap (the
/// shadow pages `shadow=` allows) on top.
const HEAP_BASE_SIZE: u64 = 48 << 20;
/// Stage-2 tables beyond what guest RAM needs (`stage2::tables_for`).
const STAGE2_SPARE_TABLES: u64 = 16;
const VMID: u16 = 1;

extern "C" {
    static __image_start: u8;
    static __payload_start: u8;
}

/// Logs and stops the machine: a boot error leaves a message, not a hang.
pub fn fatal(args: core::fmt::Arguments) -> ! {
    error!("fatal: {}", args);
    power::system_off()
}

macro_rules! fatal {
    ($($t:tt)*) => { fatal(format_args!($($t)*)) };
}

/// The loader's hand-off (`dtb` from x0) up to what the node needs.
pub fn set_up(dtb: usize) -> (Aarch64, BootInfo<'static>) {
    // `set_logger` only fails if called twice; this is the only call.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    info!("VMsync {} hypervisor at EL2", env!("CARGO_PKG_VERSION"));

    // SAFETY: the loader hands the device tree's physical address in x0;
    // the MMU is off, so that address is directly usable. `from_ptr` checks
    // the magic and bounds its reads by the header's total size.
    let host_fdt: fdt::Fdt<'static> = match unsafe { fdt::Fdt::from_ptr(dtb as *const u8) } {
        Ok(f) => f,
        Err(e) => fatal!("no usable device tree from the loader at {dtb:#x}: {e:?}"),
    };
    let Some(region) = host_fdt.memory().regions().next() else { fatal!("the device tree names no memory") };
    let ram = phys::Range { start: region.starting_address as u64, end: region.starting_address as u64 + region.size.unwrap_or(0) as u64 };
    let dtb_range = phys::Range { start: dtb as u64, end: dtb as u64 + host_fdt.total_size() as u64 };
    info!("board RAM {:#x}..{:#x}, loader device tree at {:#x}", ram.start, ram.end, dtb);

    // SAFETY: early, once, MMU off; RAM covers this image (we run from it).
    unsafe { mmu::enable(board::DEVICE_GIB, (ram.start >> 30)..ram.end.div_ceil(1 << 30)) };

    // The payload container directly follows our BSS span.
    // SAFETY: linker-script symbols; only their addresses are used.
    let (image_start, payload) = (core::ptr::addr_of!(__image_start) as u64, core::ptr::addr_of!(__payload_start) as u64);
    let room = ram.end.saturating_sub(payload);
    let at = |len: u64| {
        // SAFETY: `len` never exceeds `room`, so the slice stays inside RAM,
        // which the loader gave us and the identity map covers.
        unsafe { core::slice::from_raw_parts(payload as *const u8, len.min(room) as usize) }
    };
    let total = match container::total_len(at(container::HEADER_LEN as u64)) {
        Ok(t) => t,
        Err(e) => fatal!("boot image payload missing or corrupt at {payload:#x}: {e:?} (was the image packed by `cargo xtask build`?)"),
    };
    if total > room {
        fatal!("boot image payload truncated: header says {total} bytes, only {room} fit in RAM");
    }
    let mut alloc = phys::PhysAllocator::new(ram);
    let reserved = alloc.reserve(phys::Range { start: image_start, end: payload + total }) && alloc.reserve(dtb_range);
    if !reserved {
        fatal!("reserved-range table full");
    }
    let heap = alloc.alloc(HEAP_BASE_SIZE, 4096).unwrap_or_else(|e| fatal!("no room for the heap: {e:?}"));
    crate::heap::add_region(heap as usize, HEAP_BASE_SIZE as usize);

    // The device tree stays where the loader put it (reserved above).
    let host_fdt: &'static fdt::Fdt<'static> = alloc::boxed::Box::leak(alloc::boxed::Box::new(host_fdt));
    let device_window = board::DEVICE_GIB.start << 30..board::DEVICE_GIB.end << 30;
    let boot = BootInfo { host_fdt, alloc, payload: at(total), device_window, heap_base: HEAP_BASE_SIZE };
    (Aarch64::new(), boot)
}

impl ArchBoot for Aarch64 {
    type BootError = BootError;

    fn stage2(&mut self, alloc: &mut phys::PhysAllocator, backing: u64, size: u64) -> Result<GuestStage2, BootError> {
        // Sized from the guest: 2 GiB of guest needs just over 1024 tables.
        let pool_size = (stage2::tables_for::<Vmsav8>(size) + STAGE2_SPARE_TABLES) * 4096;
        let pool = alloc.alloc(pool_size, 0x2000).map_err(BootError::NoRoomForTables)?;
        // SAFETY: the pool was just allocated for the tables alone.
        let mut tables = unsafe { PoolTables::new(pool, pool_size) };
        let mut s2 = stage2::Stage2::new(&mut tables).map_err(BootError::Stage2)?;
        s2.map(&mut tables, vboard::RAM_BASE, backing, size, stage2::S2Attrs { writable: true, memory: stage2::MemType::Normal }).map_err(BootError::Stage2)?;
        VTCR_EL2.set(vmsav8::VTCR);
        VTTBR_EL2.set(s2.vttbr(VMID));
        super::stage2_mem::invalidate_guest_tlbs();
        Ok(GuestStage2 { s2, tables, ram_base: vboard::RAM_BASE, ram_size: size })
    }

    fn entropy(&mut self) -> Vec<alloc::boxed::Box<dyn crate::rng::Entropy>> {
        super::entropy::sources()
    }

    fn load_guest(&mut self, mem: &mut GuestMemory, kernel: &[u8], initrd: &[u8], cmdline: &str, disk: bool) -> Result<(), BootError> {
        let kernel_header = image::parse(kernel).map_err(BootError::NotAnImage)?;
        let size = mem.size();
        let place = layout::place(vboard::RAM_BASE, size, &kernel_header, kernel.len() as u64, initrd.len() as u64).map_err(BootError::DoesNotFit)?;
        let mut gb = vfdt::GuestBoard::qemu_virt_like(vboard::RAM_BASE, size);
        if disk {
            gb = gb.with_disk();
        }
        gb.cmdline = cmdline.into();
        if !initrd.is_empty() {
            gb.initrd = Some((place.initrd, place.initrd + initrd.len() as u64));
        }
        let dtb_blob: Vec<u8> = vfdt::build(&gb).map_err(BootError::DeviceTree)?;
        mem.write(place.kernel, kernel).and_then(|_| mem.write(place.initrd, initrd)).and_then(|_| mem.write(place.dtb, &dtb_blob)).map_err(BootError::Load)?;
        // The guest starts with its MMU off (non-cacheable): push it all to memory.
        mmu::clean_dcache_range(mem.host_addr(), size);
        self.reset_vcpu(place.kernel, place.dtb);
        info!(
            "guest: kernel {} bytes at {:#x}, initrd {} bytes at {:#x}, device tree at {:#x}; {} MiB RAM at IPA {:#x} backed by PA {:#x}",
            kernel.len(),
            place.kernel,
            initrd.len(),
            place.initrd,
            place.dtb,
            size >> 20,
            vboard::RAM_BASE,
            mem.host_addr()
        );
        Ok(())
    }
}

/// Why a guest could not be set up on this CPU.
#[derive(Debug)]
pub enum BootError {
    NoRoomForTables(phys::PhysError),
    Stage2(stage2::Stage2Error),
    NotAnImage(image::ImageError),
    DoesNotFit(layout::LayoutError),
    DeviceTree(vfdt::FdtError),
    Load(crate::memory::guest::GuestMemError),
}
