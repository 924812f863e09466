//! A standby device runs no guest: the hypervisor keeps the committed copy
//! of the active device's guest in the memory a guest would use, serves
//! the sync connection, and sleeps between polls.
use log::info;
use sync_core::crypto::PairingSecret;
use sync_core::wire::RamLayout;

use super::boot::{fatal, GIC};
use super::timer;
use crate::config::GuestConfig;
use crate::memory::phys::PhysAllocator;
use crate::sync::loopback;
use crate::sync::raw_pages::RawPages;
use crate::sync::standby_node::StandbyNode;
use crate::vplatform::board as vboard;

/// How long the standby sleeps between polls when nothing arrives.
const POLL_MS: u64 = 1;
/// Heap beyond one guest RAM of staging for the bookkeeping.
const HEAP_EXTRA: u64 = 32 << 20;

fn now_ms() -> u64 {
    timer::ticks_to_ns(timer::now_ticks()) / 1_000_000
}

pub fn run(config: &GuestConfig, alloc: &mut PhysAllocator) -> ! {
    let size = config.mem_bytes;
    let Some(secret) = config.sync.secret else { fatal(format_args!("standby without a pairing secret")) };
    // Staging of a whole epoch (all of guest RAM at epoch 1) lives on the heap.
    let heap = alloc.alloc(size + HEAP_EXTRA, 4096).unwrap_or_else(|e| fatal(format_args!("no room for the standby heap: {e:?}")));
    crate::heap::add_region(heap as usize, (size + HEAP_EXTRA) as usize);
    let at = alloc.alloc(size, 2 << 20).unwrap_or_else(|e| fatal(format_args!("no room for the standby image ({} MiB): {e:?}", size >> 20)));
    // SAFETY: just carved out for the image alone, inside RAM; zeroed
    // because a standby starts from the all-zero image of epoch 0.
    let image = unsafe {
        core::ptr::write_bytes(at as *mut u8, 0, size as usize);
        RawPages::new(at as *mut u8, size / 4096)
    };
    let ours = loopback::handshake(RamLayout { base: vboard::RAM_BASE, size }, [0; 32]);
    let mut node = StandbyNode::new(config.sync.listen, image, PairingSecret::new(secret), ours, timer::now_ticks());
    info!("standby: no guest here; keeping a {} MiB image, listening on port {}", size >> 20, config.sync.listen);
    GIC.init();
    GIC.enable(timer::INTID);
    loop {
        let t = now_ms();
        crate::net::with(|n| {
            n.poll(t);
            node.pump(n);
            n.poll(t);
        });
        // Sleep to the next poll: WFI wakes on the pending timer interrupt
        // even with interrupts masked at EL2; then retire it by hand.
        timer::arm_in(POLL_MS * 1_000_000);
        aarch64_cpu::asm::wfi();
        // The timer's line stays high until it is stopped or re-armed:
        // stop it before retiring the interrupt, or it is pending again.
        timer::stop();
        loop {
            let id = GIC.ack();
            if id >= 1020 {
                break;
            }
            GIC.eoi(id);
            GIC.deactivate(id);
        }
    }
}
