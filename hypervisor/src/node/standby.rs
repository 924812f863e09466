//! A standby device runs no guest: the hypervisor keeps the committed copy
//! of the active device's guest in the memory a guest would use, serves
//! the sync connection, sleeps between polls, and takes the guest over when
//! its console asks (`switch`: from the active device; `failover`: from its
//! own last committed epoch) or when the active device hands it over.
use log::{info, warn};
use sync_core::crypto::PairingSecret;

use super::takeover::Takeover;
use super::Parts;
use crate::arch::seam::Arch;
use crate::console_cmd::{Command, ConsoleCommands, Input};
use crate::net::stack::NetDevice;
use crate::sync::standby_node::StandbyNode;

/// How long the standby sleeps between polls when nothing arrives.
const POLL_MS: u64 = 1;
/// A switch request with no handover by then has failed: the guest stays
/// on the active device. Longer than the active side's own wait for the
/// final epoch's ack, so the two never disagree on a slow link.
const REQUEST_TIMEOUT_MS: u64 = 6_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyError {
    /// A standby needs the pairing secret to accept the active device.
    NoSecret,
    /// No randomness for its sessions' nonces and keys: it refuses to serve.
    NoRandomness(crate::rng::RngError),
}

pub struct Standby {
    pub node: StandbyNode,
    console: ConsoleCommands,
    /// A switch asked for and not yet handed over: when, and the bytes
    /// received until then.
    pending: Option<(u64, u64)>,
}

pub enum Next {
    Stay,
    TakeOver(Takeover),
}

impl Standby {
    pub fn new(node: StandbyNode) -> Self {
        Standby { node, console: ConsoleCommands::default(), pending: None }
    }

    /// A new standby from boot: it holds the all-zero image of epoch 0.
    pub fn fresh<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, ram_base: u64) -> Result<Self, StandbyError> {
        let rng = p.rng.drbg().map_err(StandbyError::NoRandomness)?;
        let m = &p.machine;
        let size = m.config.mem_bytes;
        let secret = m.config.sync.secret.ok_or(StandbyError::NoSecret)?;
        // SAFETY: no guest runs here (a standby from boot); the backing is
        // `size` bytes for guest RAM or the image alone, zeroed because a
        // standby starts from the all-zero image of epoch 0.
        let image = unsafe {
            core::ptr::write_bytes(m.backing, 0, size as usize);
            m.image()
        };
        let node = StandbyNode::new(m.config.sync.listen, image, PairingSecret::new(secret), m.handshake(ram_base), rng);
        info!("standby: no guest here; keeping a {} MiB image, listening on port {}", size >> 20, m.config.sync.listen);
        Ok(Standby::new(node))
    }
}

/// One turn of the standby loop: network, console commands, then sleep
/// to the next poll.
pub fn step<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, s: &mut Standby) -> Next {
    let t = p.now_ms();
    if let Some(n) = p.net.as_mut() {
        n.poll(t);
        s.node.pump(n);
        n.poll(t);
    }
    while let Some(b) = p.arch.console_read() {
        // No guest runs here: only commands matter.
        let Input::Command(c) = s.console.feed(b) else { continue };
        match c {
            Command::Switch if s.pending.is_some() => info!("console: a switch is already asked for"),
            Command::Switch => {
                info!("console: switch requested");
                match p.net.as_mut().map(|n| s.node.request_switch(n)) {
                    Some(Ok(())) => {
                        let at = p.now_ms();
                        info!("switch: request sent at_ms={at}");
                        s.pending = Some((at, s.node.bytes_received));
                    }
                    Some(Err(e)) => warn!("switch: failed: no session with an active device ({e:?}); the guest stays where it is"),
                    None => warn!("switch: failed: this device has no network"),
                }
            }
            Command::Failover => {
                info!("console: failover requested");
                s.pending = None;
                let asked_ms = p.now_ms();
                return Next::TakeOver(Takeover::Failover { asked_ms });
            }
            Command::Unknown(w) => info!("console: unknown command '{w}' (commands: switch, failover)"),
        }
    }
    // A handover, asked for or not (the active device gave the guest up:
    // it must run somewhere).
    if let Some(epoch) = s.node.take_switch_done() {
        let (asked_ms, bytes_before) = s.pending.take().unwrap_or((p.now_ms(), s.node.bytes_received));
        return Next::TakeOver(Takeover::Switch { asked_ms, bytes_before, epoch });
    }
    if let Some((at, _)) = s.pending {
        if p.now_ms() - at > REQUEST_TIMEOUT_MS {
            warn!("switch: failed: no handover from the active device within {REQUEST_TIMEOUT_MS} ms; the guest stays there");
            // Nothing of this request may arrive later and move the guest.
            if let Some(n) = p.net.as_mut() {
                s.node.drop_connection(n, "switch request unanswered");
            }
            s.pending = None;
        }
    }
    p.arch.sleep(POLL_MS * 1_000_000);
    Next::Stay
}
