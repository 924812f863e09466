//! From the architecture's set-up to the node's first role: the payload's
//! config, the network, the memory every role shares (guest RAM or the
//! standby image, the sync heap, the verify image), stage 2, and then
//! either a fresh standby or a fresh guest with tracking on.
use log::{error, info};
use vmsync_boot::container;

use super::vm::Vm;
use super::{epochs, Machine, Node, Parts, Stop};
use crate::arch::seam::{ArchBoot, BootInfo};
use crate::config::GuestConfig;
use crate::memory::guest::GuestMemory;
use crate::net::Nic;
use crate::vplatform::Platform;

/// Sync heap beyond the shadows for the bookkeeping: link queues, the
/// standby's staging reserve, page hashes and indexes.
const SYNC_HEAP_EXTRA: u64 = 32 << 20;
/// Per shadow probe (`shadow_probes=`) beyond its shadows: a zstd context
/// and a batch's records and compressed bytes.
const PROBE_HEAP_EXTRA: u64 = 8 << 20;

macro_rules! fail {
    ($($t:tt)*) => {{
        error!("fatal: {}", format_args!($($t)*));
        return Stop::PowerOff;
    }};
}

/// Boots the device's role from the payload and runs it until the guest
/// stops (or a fatal boot error, logged).
pub fn start<A: ArchBoot>(mut arch: A, boot: BootInfo<'_>) -> Stop {
    let BootInfo { host_fdt, mut alloc, payload, device_window, heap_base } = boot;
    let pack = match container::Container::parse(payload) {
        Ok(c) => c,
        Err(container::ContainerError::EntryCorrupt { name }) => {
            fail!("boot image payload corrupt: entry '{}' does not match its hash (truncated or damaged image)", container::name_str(&name))
        }
        Err(e) => fail!("boot image payload corrupt: {e:?}"),
    };
    info!("payload: {} entries, {} bytes, hashes verified", pack.entries().len(), payload.len());
    let config = match pack.get("config").map(GuestConfig::parse) {
        Some(Ok(c)) => c,
        Some(Err(e)) => fail!("guest config: {e:?}"),
        None => fail!("boot image has no 'config' entry"),
    };

    // Randomness: the CPU's and firmware's own, and a virtio-rng device;
    // the DMA pool first, which the virtio devices share.
    let dma = crate::net::init_dma(&mut alloc);
    let mut rng = crate::rng::board(&mut arch, host_fdt, device_window.clone(), dma);
    // The sync NIC (net/), if the board has one and the config an address.
    // `net_test` runs the TCP throughput test instead of the guest.
    let now = arch.now_ns();
    // Without randomness the stack's choices (sequence numbers, ports)
    // come from the counter: guessable, but sync, which needs secrets, is
    // off then anyway.
    let tcp_seed = rng.u64().unwrap_or(now);
    let mut net = if dma { crate::net::start(&config.net, host_fdt, device_window.clone(), tcp_seed, now / 1_000_000) } else { None };
    // The device's storage (storage/), if the board has a block device.
    let disk = crate::storage::board(host_fdt, device_window, dma);
    if let Some(role) = config.net.test {
        let clock = || arch.now_ns() / 1_000_000;
        crate::net::run_test(net.as_mut(), role, config.net.test_mib, clock);
        return Stop::PowerOff;
    }
    let size = config.mem_bytes;
    let backing = match alloc.alloc(size, 2 << 20) {
        Ok(b) => b,
        Err(e) => fail!("no room for {} MiB of guest RAM: {e:?}", size >> 20),
    };
    if config.policy.is_some() || config.sync.standby {
        let heap_size = sync_heap_size(&config);
        let heap = match alloc.alloc(heap_size, 4096) {
            Ok(h) => h,
            Err(e) => fail!("no room for the sync heap ({} MiB): {e:?}", heap_size >> 20),
        };
        crate::heap::add_region(heap as usize, heap_size as usize);
        info!(
            "sync: shadow budget {} ({} MiB of {} MiB guest RAM), sync heap {} MiB",
            config.shadow,
            (config.shadow.pages(size) * 4096) >> 20,
            size >> 20,
            heap_size >> 20
        );
    }
    let verify_image = if config.verify {
        let at = match alloc.alloc(size, 4096) {
            Ok(a) => a,
            Err(e) => fail!("no room for the verify image ({} MiB): {e:?}", size >> 20),
        };
        // SAFETY: just allocated for the image alone; zeroed (a standby
        // starts from the all-zero image of epoch 0).
        Some(unsafe {
            core::ptr::write_bytes(at as *mut u8, 0, size as usize);
            crate::sync::raw_pages::RawPages::new(at as *mut u8, size / 4096)
        })
    } else {
        None
    };
    let s2 = match arch.stage2(&mut alloc, backing, size) {
        Ok(s2) => s2,
        Err(e) => fail!("stage 2: {e:?}"),
    };
    let machine = Machine { config, backing: backing as *mut u8, spare_heap: heap_base + SYNC_HEAP_EXTRA, disk };
    if let Some(refusal) = machine.disk_refusal() {
        fail!("{refusal}");
    }
    if machine.disk.is_some() && machine.guest_disk().is_none() {
        info!("disk: hidden from the guest (disk=off)");
    }
    let mut parts: Parts<A, Nic> = Parts { arch, s2, net: net.take(), rng, machine, started_ns: None };

    if parts.machine.config.sync.standby {
        return match Node::fresh_standby(parts) {
            Ok(mut node) => node.run(),
            Err(e) => fail!("standby: {e:?}"),
        };
    }
    let Some(kernel) = pack.get("kernel") else { fail!("boot image has no 'kernel' entry") };
    let initrd = pack.get("initrd").unwrap_or(&[]);
    // SAFETY: `backing` was carved out at boot for guest RAM alone, inside
    // RAM, and no standby image uses it (this device starts active).
    let mut mem = unsafe { GuestMemory::new(A::RAM_BASE, size, backing as *mut u8) };
    // Fresh guest RAM holds nothing of whoever used this memory before.
    if let Err(e) = mem.fill(A::RAM_BASE, size, 0) {
        fail!("clearing guest RAM: {e:?}");
    }
    // With sync, what the loader writes next is the first epoch's (the rest
    // of RAM is zero, which every standby gets from epoch 0 anyway).
    if parts.machine.config.policy.is_some() {
        if let Err(e) = mem.start_tracking() {
            fail!("tracking guest RAM: {e:?}");
        }
    }
    let cmdline = parts.machine.config.cmdline.clone();
    let guest_disk = parts.machine.guest_disk();
    if let Err(e) = parts.arch.load_guest(&mut mem, kernel, initrd, &cmdline, guest_disk.is_some()) {
        fail!("loading the guest: {e:?}");
    }
    info!("guest command line: {cmdline}");
    let config = &parts.machine.config;
    let engine = match config.policy {
        Some(_) if config.sync.secret.is_some() && !config.sync.peers.is_empty() && !parts.rng.is_available() => {
            error!("sync: refused to start: no source of randomness (no RNDR, no SMCCC TRNG, no virtio-rng) for session keys; the guest runs without sync");
            None
        }
        Some(spec) => {
            let now = parts.arch.now_ns();
            match epochs::start(spec, config.shadow.budget(size), verify_image, &mut mem, &mut parts.s2, now) {
                Ok(mut e) => {
                    for &share in &config.shadow_probes {
                        match e.add_probe(alloc::format!("{share}"), share.budget(size)) {
                            Ok(()) => info!("sync: shadow probe {share}: each cut also counted at a {share} shadow budget (not sent)"),
                            Err(err) => error!("sync: shadow probe {share} not started: {err:?}"),
                        }
                    }
                    super::add_peers(&mut parts, &mut e, super::Reign::FirstBoot);
                    Some(e)
                }
                Err(e) => fail!("starting sync: {e:?}"),
            }
        }
        None => None,
    };
    let mut vm = Vm::new(mem, A::Platform::fresh(guest_disk));
    vm.sync = engine;
    vm.track_disk(guest_disk);
    vm.sync_start_ns = parts.arch.now_ns();
    Node::active(parts, vm).run()
}

/// The sync heap: the shadow pages the budget allows (so memory follows
/// `shadow=`), plus a guest RAM for verify's local standby, plus the
/// bookkeeping. A standby gets the same: it becomes active at a take-over
/// and then keeps shadows, and until then its staging lives in that room;
/// an epoch larger than its staging (the first, a whole guest, on a fresh
/// standby) is applied in place (`sync_core::applier`), so staging never
/// needs a guest RAM of its own.
fn sync_heap_size(config: &GuestConfig) -> u64 {
    let size = config.mem_bytes;
    let pages = size / 4096;
    // Shadow content in 128 KiB chunks, and each shadow's slot (16 bytes).
    let store = |share: crate::config::ShadowShare| share.pages(size).div_ceil(32) * 32 * (4096 + 16);
    // Each shadow probe: its own store with its page index, its zstd
    // stream and batch buffers.
    let probes: u64 = config.shadow_probes.iter().map(|&p| store(p) + pages * 4 + PROBE_HEAP_EXTRA).sum();
    // The shadow store's page index (4 bytes a page) is there in every role.
    store(config.shadow) + pages * 4 + if config.verify { size } else { 0 } + SYNC_HEAP_EXTRA + probes
}
