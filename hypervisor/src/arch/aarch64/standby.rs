//! A standby device runs no guest: the hypervisor keeps the committed copy
//! of the active device's guest in the memory a guest would use, serves
//! the sync connection, sleeps between polls, and takes the guest over when
//! its console asks (`switch`: from the active device; `failover`: from its
//! own last committed epoch).
use log::{info, warn};
use sync_core::crypto::PairingSecret;
use sync_core::wire::RamLayout;

use super::boot::{fatal, Machine, GIC, LOGGER, MACHINE};
use super::switch::{self, Takeover};
use super::timer;
use crate::console_cmd::{Command, ConsoleCommands, Input};
use crate::sync::loopback;
use crate::sync::raw_pages::RawPages;
use crate::sync::standby_node::StandbyNode;
use crate::vplatform::arm::board as vboard;

/// How long the standby sleeps between polls when nothing arrives.
const POLL_MS: u64 = 1;
/// A switch request with no handover by then has failed: the guest stays
/// on the active device. Longer than the active side's own wait for the
/// final epoch's ack, so the two never disagree on a slow link.
const REQUEST_TIMEOUT_MS: u64 = 6_000;

fn now_ms() -> u64 {
    timer::ticks_to_ns(timer::now_ticks()) / 1_000_000
}

fn machine() -> &'static Machine {
    MACHINE.get().unwrap_or_else(|| fatal(format_args!("standby before the machine is set up")))
}

/// A new standby from boot: it holds the all-zero image of epoch 0.
pub fn run_fresh() -> ! {
    let m = machine();
    let size = m.config.mem_bytes;
    // SAFETY: the backing was carved out at boot for guest RAM alone, page
    // aligned, `size` bytes; zeroed because a standby starts from the
    // all-zero image of epoch 0.
    let image = unsafe {
        core::ptr::write_bytes(m.backing as *mut u8, 0, size as usize);
        RawPages::new(m.backing as *mut u8, size / 4096)
    };
    let Some(secret) = m.config.sync.secret else { fatal(format_args!("standby without a pairing secret")) };
    let node = StandbyNode::new(m.config.sync.listen, image, PairingSecret::new(secret), handshake(m), timer::now_ticks());
    info!("standby: no guest here; keeping a {} MiB image, listening on port {}", size >> 20, m.config.sync.listen);
    GIC.init();
    GIC.enable(timer::INTID);
    LOGGER.enable_rx_irq();
    GIC.enable(super::board::UART_INTID);
    serve(node)
}

pub fn handshake(m: &Machine) -> sync_core::wire::Handshake {
    loopback::handshake(RamLayout { base: vboard::RAM_BASE, size: m.config.mem_bytes }, [0; 32])
}

/// The standby loop: network, console commands, sleep. Leaves only by
/// taking the guest over (into the guest, never back here by return).
pub fn serve(mut node: StandbyNode) -> ! {
    let mut console = ConsoleCommands::default();
    // A switch asked for and not yet handed over: when, and the bytes
    // received until then.
    let mut pending: Option<(u64, u64)> = None;
    loop {
        let t = now_ms();
        crate::net::with(|n| {
            n.poll(t);
            node.pump(n);
            n.poll(t);
        });
        while let Some(b) = LOGGER.read_byte() {
            // No guest runs here: only commands matter.
            let Input::Command(c) = console.feed(b) else { continue };
            match c {
                Command::Switch if pending.is_some() => info!("console: a switch is already asked for"),
                Command::Switch => {
                    info!("console: switch requested");
                    match crate::net::with(|n| node.request_switch(n)) {
                        Some(Ok(())) => {
                            let at = now_ms();
                            info!("switch: request sent at_ms={at}");
                            pending = Some((at, node.bytes_received));
                        }
                        Some(Err(e)) => warn!("switch: failed: no session with an active device ({e:?}); the guest stays where it is"),
                        None => warn!("switch: failed: this device has no network"),
                    }
                }
                Command::Failover => {
                    info!("console: failover requested");
                    node = switch::take_over(node, Takeover::Failover { asked_ms: now_ms() });
                    pending = None;
                }
                Command::Unknown(w) => info!("console: unknown command '{w}' (commands: switch, failover)"),
            }
        }
        // A handover, asked for or not (the active device gave the guest
        // up: it must run somewhere).
        if let Some(epoch) = node.take_switch_done() {
            let (asked_ms, bytes_before) = pending.take().unwrap_or((now_ms(), node.bytes_received));
            node = switch::take_over(node, Takeover::Switch { asked_ms, bytes_before, epoch });
        } else if let Some((at, _)) = pending {
            if now_ms() - at > REQUEST_TIMEOUT_MS {
                warn!("switch: failed: no handover from the active device within {REQUEST_TIMEOUT_MS} ms; the guest stays there");
                // Nothing of this request may arrive later and move the guest.
                crate::net::with(|n| node.drop_connection(n, "switch request unanswered"));
                pending = None;
            }
        }
        sleep();
    }
}

/// Sleep to the next poll: WFI wakes on the pending timer interrupt (or
/// console input) even with interrupts masked at EL2; then retire them.
fn sleep() {
    timer::arm_in(POLL_MS * 1_000_000);
    aarch64_cpu::asm::wfi();
    // The timer's line stays high until it is stopped or re-armed: stop it
    // before retiring the interrupt, or it is pending again.
    timer::stop();
    // Bounded: the console's line stays high until its bytes are read
    // (by the loop, after this returns), so it would be acked forever.
    for _ in 0..8 {
        let id = GIC.ack();
        if id >= 1020 {
            break;
        }
        GIC.eoi(id);
        GIC.deactivate(id);
    }
}
