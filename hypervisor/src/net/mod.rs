//! The hypervisor's own network: the sync NIC (a virtio-net device the
//! guest never sees: its device tree has no virtio node and stage 2 maps no
//! device), smoltcp on it, and a small socket API for sync sessions.
//!
//! - `hal`: DMA pages and identity addresses for `virtio-drivers`
//! - `nic`: finds and drives the virtio-net device as a smoltcp device
//! - `stack`: the interface, its IPv4 address, TCP sockets by `Handle`
//! - `test_mode`: `net_test`, a TCP throughput check between two devices
//!
//! The node owns the stack and polls it, never waiting, from the
//! hypervisor's 5 ms tick and whenever it needs the network sooner. A
//! standby without a guest polls in a loop and sleeps between polls.
pub mod hal;
pub mod nic;
pub mod stack;
#[cfg(test)]
pub(crate) mod test_link;
pub mod test_mode;

use core::ops::Range;
use log::{error, info};

pub use nic::{Nic, NicStats};
pub use stack::{Handle, NetError, Stack, TcpState, TCP_BUFFER};

use crate::config::{NetConfig, NetTestRole};
use crate::memory::phys::PhysAllocator;

/// The stack on the board's NIC.
pub type Net = Stack<Nic>;

/// DMA memory for the virtqueues (a few pages at `QUEUE_SIZE` 64); frame
/// buffers come from the heap, which is identity-mapped RAM as well.
const DMA_POOL: u64 = 256 << 10;

/// The `reg` ranges of the host device tree's virtio-mmio slots.
pub fn virtio_slots(host_fdt: &fdt::Fdt) -> alloc::vec::Vec<(u64, u64)> {
    host_fdt
        .all_nodes()
        .filter(|n| n.compatible().is_some_and(|c| c.all().any(|s| s == "virtio,mmio")))
        .filter_map(|n| n.reg()?.next())
        .map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64))
        .collect()
}

/// The first virtio-mmio slot of the host device tree holding a device of
/// `device_id` inside `device_window`.
pub fn find_virtio(host_fdt: &fdt::Fdt, device_window: Range<u64>, device_id: u32) -> Option<(u64, u64)> {
    nic::find_slot(device_id, virtio_slots(host_fdt), device_window, |addr| {
        // SAFETY: `find_slot` only reads registers of slots inside the
        // Device-mapped window; reading a virtio-mmio ID register has no
        // side effect.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    })
}

/// Carves the DMA pool the hypervisor's virtio devices (NIC, rng) share.
/// Call once at boot, before opening any of them; false if there is no room.
pub fn init_dma(alloc: &mut PhysAllocator) -> bool {
    match alloc.alloc(DMA_POOL, 4096) {
        Ok(p) => {
            // SAFETY: the pool was just carved for DMA alone; RAM is
            // identity-mapped Normal memory at EL2; the caller calls this once.
            unsafe { hal::init_pool(p, DMA_POOL) };
            true
        }
        Err(e) => {
            error!("net: no room for the DMA pool: {e:?}; virtio devices off");
            false
        }
    }
}

/// Brings the network up at boot when the board has a virtio-net device
/// and the config gives an address; otherwise logs one line and leaves it
/// off (None). `device_window` is the physical range EL2 maps as Device
/// memory; the DMA pool must be set (`init_dma`). `seed` seeds the TCP
/// stack's choices (initial sequence numbers, ports): random when the
/// board has randomness.
pub fn start(cfg: &NetConfig, host_fdt: &fdt::Fdt, device_window: Range<u64>, seed: u64, now_ms: u64) -> Option<Net> {
    let found = find_virtio(host_fdt, device_window, nic::DEVICE_ID_NET);
    let Some((base, size)) = found else {
        info!("net: no virtio-net device: networking off");
        return None;
    };
    let Some(ip) = cfg.ip else {
        info!("net: virtio-net at {base:#x} left unused: no net_ip in the config");
        return None;
    };
    // SAFETY: a virtio-mmio slot inside the Device-mapped window, found
    // once; nothing else drives it (the guest has no device mapped).
    let nic = match unsafe { Nic::open(base, size) } {
        Ok(n) => n,
        Err(e) => {
            error!("net: virtio-net at {base:#x}: {e:?}; networking off");
            return None;
        }
    };
    let mac = nic.mac();
    match Stack::new(nic, ip, cfg.prefix, seed, now_ms) {
        Ok(net) => {
            info!(
                "net: virtio-net at {base:#x}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, {ip}/{}, TCP buffers {} KiB",
                mac[0],
                mac[1],
                mac[2],
                mac[3],
                mac[4],
                mac[5],
                cfg.prefix,
                TCP_BUFFER >> 10
            );
            Some(net)
        }
        Err(e) => {
            error!("net: {e:?}; networking off");
            None
        }
    }
}

/// `net_test`: runs the TCP throughput test on the network and logs the
/// outcome (the caller powers off after). `clock_ms` reads the time.
pub fn run_test(net: Option<&mut Net>, role: NetTestRole, mib: u32, clock_ms: impl FnMut() -> u64) {
    let Some(net) = net else {
        error!("net-test failed: the network is off (no virtio-net device or no net_ip)");
        return;
    };
    let r = test_mode::run(net, role, (mib as u64) << 20, clock_ms);
    test_mode::log_outcome(role, &r);
    info!("net: {:?}", net.device().stats);
}
