//! From the loader's hand-off to the guest's first instruction: console,
//! EL2 MMU, the payload, memory, stage 2, the virtual board, the guest's
//! device tree, and the EL1 entry state of the boot protocol.
use aarch64_cpu::registers::*;
use alloc::vec::Vec;
use log::{error, info};
use vmsync_boot::{container, image};

use super::{
    board,
    gic::Gic,
    mmu, power,
    stage2_mem::{GuestStage2, PoolTables},
    sysreg, timer, tracking, vectors,
};
use crate::config::GuestConfig;
use crate::memory::stage2::{
    self,
    vmsav8::{self, Vmsav8},
};
use crate::memory::{guest::GuestMemory, layout, phys};
use crate::vm::Vm;
use crate::vplatform::arm::{board as vboard, fdt as vfdt};

pub static LOGGER: crate::logger::ConsoleLogger =
    // SAFETY: the board's console UART is mapped (Device memory, first GiB)
    // and only this logger drives it.
    crate::logger::ConsoleLogger::new(unsafe { crate::drivers::pl011::Pl011::new(board::UART_BASE) });

// SAFETY: the board's GIC addresses; only the hypervisor drives the GIC.
pub static GIC: Gic = unsafe { Gic::new(board::GICD_BASE, board::GICR_BASE) };

pub static VM: spin::Mutex<Option<Vm>> = spin::Mutex::new(None);

/// The guest's stage-2 tables, for dirty tracking's permission changes.
pub static STAGE2: spin::Mutex<Option<GuestStage2>> = spin::Mutex::new(None);

/// Counter value when the guest started, for elapsed times in reports.
pub static START_COUNT: spin::Once<u64> = spin::Once::new();

/// What every role of this device shares: its config and the memory that
/// holds guest RAM when it runs the guest and the standby image when it
/// does not (a switch changes the role, never the memory).
pub struct Machine {
    pub config: GuestConfig,
    pub backing: u64,
}

pub static MACHINE: spin::Once<Machine> = spin::Once::new();

/// Heap for the hypervisor's own needs; sync adds the shadow pages (as
/// many as `shadow=` allows) on top.
const HEAP_BASE_SIZE: u64 = 48 << 20;
/// Sync heap beyond the shadows (active) or a whole epoch's staging
/// (standby) for the bookkeeping.
const SYNC_HEAP_EXTRA: u64 = 32 << 20;
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

#[no_mangle]
pub extern "C" fn vmsync_main(dtb: usize) -> ! {
    // `set_logger` only fails if called twice; this is the only call.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    info!("VMsync {} hypervisor at EL2", env!("CARGO_PKG_VERSION"));

    // SAFETY: the loader hands the device tree's physical address in x0;
    // the MMU is off, so that address is directly usable. `from_ptr` checks
    // the magic and bounds its reads by the header's total size.
    let host_fdt = match unsafe { fdt::Fdt::from_ptr(dtb as *const u8) } {
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

    let pack = match container::Container::parse(at(total)) {
        Ok(c) => c,
        Err(container::ContainerError::EntryCorrupt { name }) => {
            fatal!("boot image payload corrupt: entry '{}' does not match its hash (truncated or damaged image)", container::name_str(&name))
        }
        Err(e) => fatal!("boot image payload corrupt: {e:?}"),
    };
    info!("payload: {} entries, {} bytes, hashes verified", pack.entries().len(), total);

    let config = match pack.get("config").map(GuestConfig::parse) {
        Some(Ok(c)) => c,
        Some(Err(e)) => fatal!("guest config: {e:?}"),
        None => fatal!("boot image has no 'config' entry"),
    };

    // The sync NIC (net/), if the board has one and the config an address.
    // `net_test` runs the TCP throughput test instead of the guest.
    let clock_ms = || timer::ticks_to_ns(timer::now_ticks()) / 1_000_000;
    let device_window = board::DEVICE_GIB.start << 30..board::DEVICE_GIB.end << 30;
    crate::net::start(&config.net, &host_fdt, &mut alloc, device_window, timer::now_ticks(), clock_ms());
    if let Some(role) = config.net.test {
        crate::net::run_test(role, config.net.test_mib, clock_ms);
        power::system_off();
    }
    let size = config.mem_bytes;
    let backing = alloc.alloc(size, 2 << 20).unwrap_or_else(|e| fatal!("no room for {} MiB of guest RAM: {e:?}", size >> 20));
    if config.policy.is_some() || config.sync.standby {
        let heap_size = sync_heap_size(&config);
        let heap = alloc.alloc(heap_size, 4096).unwrap_or_else(|e| fatal!("no room for the sync heap ({} MiB): {e:?}", heap_size >> 20));
        crate::heap::add_region(heap as usize, heap_size as usize);
        info!(
            "sync: shadow budget {} ({} MiB of {} MiB guest RAM), sync heap {} MiB",
            config.shadow,
            (config.shadow.pages(size) * 4096) >> 20,
            size >> 20,
            heap_size >> 20
        );
    }
    let verify_image = config.verify.then(|| {
        let at = alloc.alloc(size, 4096).unwrap_or_else(|e| fatal!("no room for the verify image ({} MiB): {e:?}", size >> 20));
        // SAFETY: just allocated for the image alone; zeroed (a standby
        // starts from the all-zero image of epoch 0).
        unsafe {
            core::ptr::write_bytes(at as *mut u8, 0, size as usize);
            crate::sync::raw_pages::RawPages::new(at as *mut u8, size / 4096)
        }
    });

    // Stage 2: guest RAM at its fixed IPA, backed elsewhere; nothing else
    // mapped. Built in either role: a standby that takes the guest over
    // runs it in the same memory.
    // Sized from the guest: 2 GiB of guest needs just over 1024 tables.
    let pool_size = (stage2::tables_for::<Vmsav8>(size) + STAGE2_SPARE_TABLES) * 4096;
    let pool = alloc.alloc(pool_size, 0x2000).unwrap_or_else(|e| fatal!("no room for stage-2 tables: {e:?}"));
    // SAFETY: the pool was just allocated for the tables alone.
    let mut tables = unsafe { PoolTables::new(pool, pool_size) };
    let mut s2 = stage2::Stage2::new(&mut tables).unwrap_or_else(|e| fatal!("stage-2 root: {e:?}"));
    if let Err(e) = s2.map(&mut tables, vboard::RAM_BASE, backing, size, stage2::S2Attrs { writable: true, memory: stage2::MemType::Normal }) {
        fatal!("mapping guest RAM: {e:?}");
    }
    VTCR_EL2.set(vmsav8::VTCR);
    VTTBR_EL2.set(s2.vttbr(VMID));
    invalidate_guest_tlbs();
    *STAGE2.lock() = Some(GuestStage2 { s2, tables });
    MACHINE.call_once(|| Machine { config: config.clone(), backing });

    if config.sync.standby {
        super::standby::run_fresh();
    }
    let Some(kernel) = pack.get("kernel") else { fatal!("boot image has no 'kernel' entry") };
    let kernel_header = image::parse(kernel).unwrap_or_else(|e| fatal!("guest kernel is not an arm64 Image: {e:?}"));
    let initrd = pack.get("initrd").unwrap_or(&[]);

    // SAFETY: `backing` was just carved out for the guest alone, inside RAM.
    let mut mem = unsafe { GuestMemory::new(vboard::RAM_BASE, config.mem_bytes, backing as *mut u8) };
    let place = layout::place(vboard::RAM_BASE, config.mem_bytes, &kernel_header, kernel.len() as u64, initrd.len() as u64)
        .unwrap_or_else(|e| fatal!("guest does not fit: {e:?}"));

    let mut gb = vfdt::GuestBoard::qemu_virt_like(vboard::RAM_BASE, config.mem_bytes);
    gb.cmdline = config.cmdline.clone();
    if !initrd.is_empty() {
        gb.initrd = Some((place.initrd, place.initrd + initrd.len() as u64));
    }
    let dtb_blob: Vec<u8> = vfdt::build(&gb).unwrap_or_else(|e| fatal!("writing the guest device tree: {e:?}"));
    // Fresh guest RAM holds nothing of whoever used this memory before.
    let loaded = mem
        .fill(vboard::RAM_BASE, config.mem_bytes, 0)
        .and_then(|_| mem.write(place.kernel, kernel))
        .and_then(|_| mem.write(place.initrd, initrd))
        .and_then(|_| mem.write(place.dtb, &dtb_blob));
    if let Err(e) = loaded {
        fatal!("loading the guest: {e:?}");
    }
    // The guest starts with its MMU off (non-cacheable): push it all to memory.
    mmu::clean_dcache_range(backing, config.mem_bytes);

    let mut engine = {
        let mut s2 = STAGE2.lock();
        let Some(guest_s2) = s2.as_mut() else { fatal!("stage 2 missing") };
        config.policy.map(|spec| tracking::start(spec, config.shadow.budget(config.mem_bytes), verify_image, &mut mem, guest_s2))
    };
    if let Some(e) = engine.as_mut() {
        add_peers(e, &config);
    }

    GIC.init();
    enable_guest_interfaces();
    // The virtual counter starts at zero when the guest does.
    let now = CNTPCT_EL0.get();
    CNTVOFF_EL2.set(now);
    START_COUNT.call_once(|| now);
    // EL1 starts with MMU and caches off, little-endian: RES1 bits only.
    SCTLR_EL1.set(0x30D0_0800);

    info!(
        "guest: kernel {} bytes at {:#x}, initrd {} bytes at {:#x}, device tree at {:#x}; {} MiB RAM at IPA {:#x} backed by PA {:#x}",
        kernel.len(),
        place.kernel,
        initrd.len(),
        place.initrd,
        place.dtb,
        config.mem_bytes >> 20,
        vboard::RAM_BASE,
        backing
    );
    info!("guest command line: {}", config.cmdline);
    let mut vm = Vm::new(mem);
    vm.sync = engine;
    vm.sync_start_ticks = timer::now_ticks();
    if vm.sync.is_some() {
        GIC.enable(timer::INTID);
        timer::arm_in(tracking::TICK_NS);
    }
    *VM.lock() = Some(vm);

    let mut frame = vectors::TrapFrame::zeroed();
    frame.x[0] = place.dtb;
    ELR_EL2.set(place.kernel);
    // EL1h with D, A, I, F masked, as the boot protocol asks.
    SPSR_EL2.set(0x3c5);
    // SAFETY: ELR/SPSR/HCR/stage 2 describe a complete EL1 guest; the frame
    // holds the boot protocol's x0..x3.
    unsafe { vectors::vmsync_enter_guest(&frame) }
}

/// The sync heap: the shadow pages the budget allows when this device
/// starts active (so memory follows `shadow=`), a whole guest RAM of staging
/// when it starts standby (a fresh standby stages the first epoch, the whole
/// guest), plus a second guest RAM for verify's local standby, plus the
/// bookkeeping. A device that became standby by a switch holds the image
/// already and stages one epoch's changes at a time.
fn sync_heap_size(config: &GuestConfig) -> u64 {
    let size = config.mem_bytes;
    let pages = size / 4096;
    let own = if config.sync.standby {
        size
    } else {
        // Shadow content in 128 KiB chunks, and each shadow's slot (16 bytes).
        config.shadow.pages(size).div_ceil(32) * 32 * (4096 + 16)
    };
    // The shadow store's page index (4 bytes a page) is there in every role.
    own + pages * 4 + if config.verify { size } else { 0 } + SYNC_HEAP_EXTRA
}

/// Invalidates stage-1+2 TLB entries of the guest's VMID (before its first
/// use, and when a guest arrives whose translations this CPU may still hold
/// from an earlier turn).
pub fn invalidate_guest_tlbs() {
    // SAFETY: TLB maintenance for the guest's VMID only (VTTBR_EL2 holds it);
    // the hypervisor's own EL2 translations are untouched.
    unsafe { core::arch::asm!("dsb ishst", "tlbi vmalls12e1is", "dsb ish", "isb", options(nostack)) };
}

/// The standbys named in the config, connected by the engine.
pub fn add_peers(e: &mut crate::sync::engine::Engine, config: &GuestConfig) {
    let Some(secret) = config.sync.secret else { return };
    let peers: alloc::vec::Vec<_> = config.sync.peers.iter().map(|&(ip, port)| crate::sync::peers::PeerAddr { ip, port }).collect();
    let hello = crate::sync::loopback::handshake(sync_core::wire::RamLayout { base: vboard::RAM_BASE, size: config.mem_bytes }, [0; 32]);
    let budget = config.sync.link_budget.unwrap_or_else(|| crate::config::default_link_budget(HEAP_BASE_SIZE + SYNC_HEAP_EXTRA, peers.len()));
    e.add_peers(&peers, sync_core::crypto::PairingSecret::new(secret), hello, timer::now_ticks(), budget as usize);
    info!("sync: {} standby peer(s) configured, link budget {} KiB", peers.len(), budget >> 10);
}

/// EL2 set up to run the guest (first boot, or after taking it over): its
/// interrupts, the timers' traps, the IDs it sees, and HCR_EL2.
pub fn enable_guest_interfaces() {
    GIC.enable(vboard::VTIMER_INTID);
    GIC.enable(vboard::MAINTENANCE_INTID);
    GIC.enable(timer::INTID);
    GIC.init_virtual();
    LOGGER.enable_rx_irq();
    GIC.enable(board::UART_INTID);
    // The guest uses the virtual timer; its physical timer traps (EL1PCEN=0)
    // while the physical counter stays readable.
    CNTHCTL_EL2.set(1);
    sysreg::set_vpidr_el2(vboard::GUEST_MIDR);
    VMPIDR_EL2.set(vboard::GUEST_MPIDR);
    // Stage 2 on; IRQ/FIQ/SError to EL2 so the hypervisor keeps its own
    // interrupts; SMC traps (the guest's PSCI may use it); EL1 is AArch64.
    HCR_EL2.write(
        HCR_EL2::VM::Enable
            + HCR_EL2::SWIO::SET
            + HCR_EL2::FMO::EnableVirtualFIQ
            + HCR_EL2::IMO::EnableVirtualIRQ
            + HCR_EL2::AMO::SET
            + HCR_EL2::TSC::EnableTrapEl1SmcToEl2
            + HCR_EL2::RW::EL1IsAarch64,
    );
}
