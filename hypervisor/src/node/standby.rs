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
/// A switch request fails when nothing arrives from the active device for
/// this long (the link is down): the guest stays there. Longer than the
/// active side's own wait for the final epoch's ack, so the two never
/// disagree on a slow link. While bytes arrive (the active device holds the
/// request until this standby is in step) the request waits on.
const REQUEST_TIMEOUT_MS: u64 = 6_000;
/// A switch asked for while no active device is connected (right after a
/// switch, before the new active device connected here) waits this long
/// for one, then fails (the link is down).
const CONNECT_WAIT_MS: u64 = 6_000;
/// A request still waiting after this long has failed: the catch-up does
/// not converge (the guest writes faster than the link carries).
const REQUEST_CAP_MS: u64 = 300_000;
/// A progress line while a request waits, this often.
const PROGRESS_MS: u64 = 1_000;

/// Why this standby does not ask for the guest.
#[derive(Debug)]
pub enum Unable<E> {
    /// No `policy` in its config: it could not sync the others.
    NoPolicy,
    /// No randomness for the term and the sessions it would start.
    NoRandomness,
    /// The committed vCPU state is one this CPU cannot restore.
    Cpu(E),
    /// The committed board state does not decode.
    Devices(crate::vplatform::snapshot::SnapshotError),
}

/// Checks, changing nothing, that this device could run the guest from its
/// committed epoch. No state yet (the initial copy is still coming) is no
/// reason to refuse: the active device holds the request until this
/// standby is in step, and the take-over checks again.
fn able<A: Arch, D: NetDevice>(p: &Parts<A, D>, s: &Standby) -> Result<(), Unable<A::StateError>> {
    if p.machine.config.policy.is_none() {
        return Err(Unable::NoPolicy);
    }
    if !p.rng.is_available() {
        return Err(Unable::NoRandomness);
    }
    let committed = s.node.applier.committed_epoch();
    if let Some(state) = s.node.committed_state.as_ref().filter(|st| st.epoch == committed) {
        p.arch.check_state(&state.cpu).map_err(Unable::Cpu)?;
        <A::Platform as crate::vplatform::Platform>::restore(&state.devices, p.machine.guest_disk()).map_err(Unable::Devices)?;
    }
    Ok(())
}

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
    /// A switch asked for and not yet handed over.
    pending: Option<Request>,
}

/// A switch request this standby sent.
struct Request {
    asked_ms: u64,
    /// Bytes received until the request, for the final epoch's size.
    bytes_before: u64,
    /// What arrived last (bytes, committed epoch), and when it changed.
    seen: (u64, u64),
    progress_ms: u64,
    line_ms: u64,
    /// The connection it was sent on (`StandbyNode::served`); None while it
    /// waits for an active device to connect. It ends with that connection.
    sent_on: Option<u32>,
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
        let mut node = StandbyNode::new(m.config.sync.listen, image, PairingSecret::new(secret), m.handshake(ram_base), rng);
        node.adopt_unrelated = m.config.sync.adopt_unrelated;
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
        s.node.pump(n, t);
        n.poll(t);
    }
    while let Some(b) = p.arch.console_read() {
        // No guest runs here: only commands matter.
        let Input::Command(c) = s.console.feed(b) else { continue };
        match c {
            Command::Switch if s.pending.is_some() => info!("console: a switch is already asked for"),
            Command::Switch => {
                info!("console: switch requested");
                if let Err(e) = able(p, s) {
                    warn!("switch: failed: this device cannot run the guest ({e:?}); the guest stays where it is");
                    continue;
                }
                if p.net.is_none() {
                    warn!("switch: failed: this device has no network");
                    continue;
                }
                let at = p.now_ms();
                let seen = (s.node.bytes_received, s.node.applier.committed_epoch());
                s.pending = Some(Request { asked_ms: at, bytes_before: seen.0, seen, progress_ms: at, line_ms: at, sent_on: None });
                if s.node.served().is_none() {
                    info!("switch: no active device connected yet; the request waits up to {CONNECT_WAIT_MS} ms for one");
                }
            }
            Command::Failover => {
                info!("console: failover requested");
                s.pending = None;
                let asked_ms = p.now_ms();
                return Next::TakeOver(Takeover::Failover { asked_ms });
            }
            Command::Resync => {
                s.node.adopt_once = true;
                info!("console: resync: the next active device may replace this image even if its guest or history is not ours (a whole resync)");
            }
            Command::Unknown(w) => info!("console: unknown command '{w}' (commands: switch, failover, resync)"),
        }
    }
    // A handover, asked for or not (the active device gave the guest up:
    // it must run somewhere).
    if let Some(epoch) = s.node.take_switch_done() {
        let (asked_ms, bytes_before) = s.pending.take().map_or((p.now_ms(), s.node.bytes_received), |r| (r.asked_ms, r.bytes_before));
        return Next::TakeOver(Takeover::Switch { asked_ms, bytes_before, epoch });
    }
    send_request(p, s);
    if let Some(why) = s.pending.as_mut().and_then(|r| wait_on(r, &s.node, p.now_ms())) {
        warn!("switch: failed: no handover from the active device: {why}; the guest stays there");
        // Nothing of this request may arrive later and move the guest.
        if let Some(n) = p.net.as_mut() {
            s.node.drop_connection(n, "switch request unanswered");
        }
        s.pending = None;
    }
    p.arch.sleep(POLL_MS * 1_000_000);
    Next::Stay
}

/// Sends a request that waits for a connection once an active device is
/// connected; ends one whose connection ended (a SwitchDone can only come
/// on it), and one that waited for a connection too long.
fn send_request<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, s: &mut Standby) {
    let Some(r) = s.pending.as_mut() else { return };
    let now = p.now_ms();
    match (r.sent_on, s.node.served()) {
        (Some(on), served) if served != Some(on) => {
            warn!("switch: failed: the connection the request was sent on ended (the active device dropped it, or the link failed); the guest stays there");
            s.pending = None;
        }
        (Some(_), _) => {}
        (None, Some(conn)) => match p.net.as_mut().map(|n| s.node.request_switch(n)) {
            Some(Ok(())) => {
                info!("switch: request sent at_ms={now}");
                r.sent_on = Some(conn);
                // The wait for the handover starts now.
                let seen = (s.node.bytes_received, s.node.applier.committed_epoch());
                (r.bytes_before, r.seen, r.progress_ms, r.line_ms) = (seen.0, seen, now, now);
            }
            Some(Err(e)) => {
                warn!("switch: failed: the request could not be sent ({e:?}); the guest stays where it is");
                s.pending = None;
            }
            None => s.pending = None,
        },
        (None, None) if now - r.asked_ms > CONNECT_WAIT_MS => {
            warn!("switch: failed: no active device connected within {CONNECT_WAIT_MS} ms (the link is down); the guest stays where it is");
            s.pending = None;
        }
        (None, None) => {}
    }
}

/// A waiting request: progress noted (and shown once a second); why it
/// failed, if it did.
fn wait_on(r: &mut Request, node: &StandbyNode, now: u64) -> Option<heapless::String<96>> {
    // Not sent yet: `send_request` bounds that wait.
    r.sent_on?;
    let seen = (node.bytes_received, node.applier.committed_epoch());
    if seen != r.seen {
        (r.seen, r.progress_ms) = (seen, now);
    }
    let mut why = heapless::String::new();
    if now - r.progress_ms > REQUEST_TIMEOUT_MS {
        let _ = core::fmt::Write::write_fmt(&mut why, format_args!("nothing received for {REQUEST_TIMEOUT_MS} ms (the link is down)"));
        return Some(why);
    }
    if now - r.asked_ms > REQUEST_CAP_MS {
        let _ = core::fmt::Write::write_fmt(&mut why, format_args!("still not in step after {} s (the catch-up does not converge)", REQUEST_CAP_MS / 1000));
        return Some(why);
    }
    if now - r.line_ms >= PROGRESS_MS {
        r.line_ms = now;
        info!("switch: waiting for the guest: committed epoch {}, {} bytes received since the request", seen.1, seen.0 - r.bytes_before);
    }
    None
}
