//! The active device gives the guest to a standby that asked for it: with
//! the guest paused it cuts a final epoch (with the vCPU and device state),
//! waits until the standby has committed it, sends SwitchDone, and waits
//! for the answer: the target's sealed SwitchTaken, or its new term proven
//! on the sync port. Only then does it become a standby of the same image.
//! If the standby does not commit, or does not answer, in time the switch
//! is called off and the guest runs on here: never are both devices
//! standbys.
use alloc::boxed::Box;
use core::fmt;
use log::{info, warn};
use sync_core::applier::Applier;
use sync_core::crypto::PairingSecret;
use sync_core::wire::{Epoch, Message};

use super::epochs::{self, cut_epoch, pump_until};
use super::standby::Standby;
use super::vm::Vm;
use super::{hex, Parts};
use crate::arch::seam::Arch;
use crate::net::stack::NetDevice;
use crate::sync::peers::Peers;
use crate::sync::standby_node::StandbyNode;

/// How long the paused guest waits for the target to commit the final
/// epoch before the switch is called off (and the guest resumes here).
const COMMIT_WAIT_MS: u64 = 3_000;
/// How long the paused guest waits for the target's answer to SwitchDone
/// (its SwitchTaken, or its new term proven here) before it resumes here.
/// TCP retransmits a SwitchDone (or an answer) lost meanwhile.
pub const ANSWER_WAIT_MS: u64 = 3_000;
/// A target that goes behind its link budget at the final cut (a burst
/// just before the switch) gets this long, the guest paused, to stream
/// what it owes and commit a later (empty) cut; past it the switch is
/// called off and the guest resumes here (the standby catches up and may
/// ask again).
const CATCHUP_WAIT_MS: u64 = 5_000;
/// Between two cuts that try to end the target's catch-up.
const CATCHUP_CUT_MS: u64 = 20;
/// The other standbys get this long to commit the final epoch too, so they
/// are in step with the new active device (deltas, not a full resync).
const OTHERS_WAIT_MS: u64 = 1_000;

pub enum Outcome<P> {
    /// The switch was called off: the guest runs on here.
    Stayed(Box<Vm<P>>),
    /// The guest belongs to the target now; this device is its standby.
    Gone(Box<Standby>),
    /// The guest left, but this device cannot serve as a standby (logged).
    Failed,
}

/// Why a switch was called off before the guest left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalledOff {
    /// No such standby, or this device does not sync.
    NoTarget,
    FinalCut,
    CatchingUp {
        to: core::net::Ipv4Addr,
    },
    NotCommitted {
        to: core::net::Ipv4Addr,
        epoch: Epoch,
    },
    /// SwitchDone went out but neither SwitchTaken nor the target's new
    /// term came back (it could not take the guest over, or the link failed).
    Unanswered {
        to: core::net::Ipv4Addr,
        epoch: Epoch,
    },
}

impl fmt::Display for CalledOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalledOff::NoTarget => write!(f, "no such standby"),
            CalledOff::FinalCut => write!(f, "the final epoch could not be cut"),
            CalledOff::CatchingUp { to } => write!(f, "{to} is still catching up after {CATCHUP_WAIT_MS} ms"),
            CalledOff::NotCommitted { to, epoch } => write!(f, "{to} did not commit the final epoch {epoch} within {COMMIT_WAIT_MS} ms"),
            CalledOff::Unanswered { to, epoch } => {
                write!(f, "{to} did not answer SwitchDone {{ {epoch} }} within {ANSWER_WAIT_MS} ms (it did not take the guest over, or the link failed)")
            }
        }
    }
}

/// How the target answered SwitchDone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Its sealed SwitchTaken, naming its term.
    Taken(sync_core::fence::Term),
    /// A higher term than `ours` proven here (the target connected to our
    /// sync port, or a standby that follows it told us): the guest runs
    /// under it elsewhere.
    Term(sync_core::fence::Term),
}

/// The answer to SwitchDone { `epoch` } from `target`, if it came.
fn answer<P>(vm: &Vm<P>, target: usize, epoch: Epoch, ours: sync_core::fence::Term) -> Option<Answer> {
    let peers = peers_of(vm)?;
    match peers.list.get(target)?.taken {
        Some((e, term)) if e == epoch && term > ours => Some(Answer::Taken(term)),
        _ => peers.fenced().filter(|&t| t > ours).map(Answer::Term),
    }
}

fn peers_of<P>(vm: &Vm<P>) -> Option<&Peers> {
    vm.sync.as_ref().and_then(|e| e.peers())
}

/// Called at the end of an exit, the guest paused, when standby `target`
/// asked for the guest.
pub fn hand_over<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, mut vm: Box<Vm<A::Platform>>, target: usize) -> Outcome<A::Platform> {
    let start = p.arch.now_ns();
    let Some(sent_before) = peers_of(&vm).and_then(|peers| peers.list.get(target)).map(|s| s.bytes_sent) else {
        return Outcome::Stayed(vm);
    };
    // The standby this device becomes needs fresh nonces: drawn before the
    // guest is given away, so a failing source leaves it here.
    let rng = match p.rng.drbg() {
        Ok(r) => r,
        Err(e) => {
            warn!("switch: failed: no randomness for the standby's sessions ({e:?}); the guest stays here");
            return Outcome::Stayed(vm);
        }
    };
    p.arch.stop_tick();
    match final_epoch(p, &mut vm, target) {
        Ok(epoch) => become_standby(p, vm, target, epoch, start, sent_before, rng),
        Err(why) => {
            warn!("switch: failed: {why}; the guest stays here");
            p.arch.arm_tick(epochs::TICK_NS);
            Outcome::Stayed(vm)
        }
    }
}

/// Cuts the final epoch and waits until the target commits it; sends
/// SwitchDone and waits for the answer. From `Ok` on the guest belongs to
/// the target.
fn final_epoch<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>, target: usize) -> Result<Epoch, CalledOff> {
    let to = peers_of(vm).and_then(|peers| peers.list.get(target)).map(|s| s.addr.ip).ok_or(CalledOff::NoTarget)?;
    let mut epoch = cut_epoch(p, vm, true).ok_or(CalledOff::FinalCut)?;
    // The final epoch did not fit the target's link budget: it catches up.
    // The guest stays paused, so nothing new is owed; its pages stream, and
    // a cut that finds the rest fits the budget ends the catch-up.
    let catching_up = |vm: &Vm<A::Platform>| peers_of(vm).is_some_and(|p| p.is_established(target) && p.list[target].is_catching_up());
    let catchup_start = p.now_ms();
    while catching_up(vm) {
        if p.now_ms() - catchup_start > CATCHUP_WAIT_MS {
            return Err(CalledOff::CatchingUp { to });
        }
        pump_until(p, vm, CATCHUP_CUT_MS, |_, _| false);
        epoch = cut_epoch(p, vm, true).ok_or(CalledOff::FinalCut)?;
    }
    let acked = |vm: &Vm<A::Platform>| peers_of(vm).is_some_and(|p| p.list[target].acked >= epoch);
    pump_until(p, vm, COMMIT_WAIT_MS, |_, vm| acked(vm) || !peers_of(vm).is_some_and(|p| p.is_established(target)));
    if !acked(vm) {
        return Err(CalledOff::NotCommitted { to, epoch });
    }
    // SwitchDone goes out; the guest stays paused here, ready to resume,
    // until the target answers. The sync port stays ours meanwhile: the
    // target, running the guest, connects there and proves its term.
    let ours = vm.sync.as_ref().map_or(0, |e| e.standing.term);
    let sent = vm.sync.as_mut().and_then(|e| e.peers_mut()).and_then(|p| p.send_to(target, &Message::SwitchDone { epoch }));
    info!("switch: SwitchDone epoch={epoch} sent to {to}; the guest stays paused here until it answers");
    let answer = match sent {
        Some(_) => {
            pump_until(p, vm, ANSWER_WAIT_MS, |_, vm| answer(vm, target, epoch, ours).is_some());
            answer(vm, target, epoch, ours)
        }
        None => None,
    };
    let Some(answer) = answer else {
        // Nothing of this hand-over may reach the target later: its
        // connection, and the request that came on it, end here.
        let now = p.now_ms();
        if let (Some(n), Some(e)) = (p.net.as_mut(), vm.sync.as_mut()) {
            e.drop_peer(target, n, now, "it did not answer SwitchDone");
        }
        return Err(CalledOff::Unanswered { to, epoch });
    };
    // From here the guest belongs to the target.
    match answer {
        Answer::Taken(term) => info!("switch: {to} answered: it runs the guest from epoch {epoch} under term {}", sync_core::fence::term_count(term)),
        Answer::Term(term) => info!(
            "switch: term {} of this guest proven here (by {to} on the sync port, or by a standby that follows it): the guest runs there",
            sync_core::fence::term_count(term)
        ),
    }
    pump_until(p, vm, OTHERS_WAIT_MS, |_, vm| {
        let Some(peers) = peers_of(vm) else { return true };
        peers.list.iter().enumerate().all(|(i, s)| i == target || s.acked >= epoch || !peers.is_established(i))
    });
    Ok(epoch)
}

/// The guest is gone: this device keeps the final epoch's image (guest RAM
/// as it is) and serves as a standby.
fn become_standby<A: Arch, D: NetDevice>(
    p: &mut Parts<A, D>,
    mut vm: Box<Vm<A::Platform>>,
    target: usize,
    epoch: Epoch,
    start_ns: u64,
    sent_before: u64,
    rng: sync_core::crypto::Drbg,
) -> Outcome<A::Platform> {
    let Some(mut engine) = vm.sync.take() else { return Outcome::Failed };
    let (to, bytes) =
        engine.peers().map(|peers| (peers.list[target].addr.ip, peers.list[target].bytes_sent - sent_before)).unwrap_or((core::net::Ipv4Addr::UNSPECIFIED, 0));
    info!(
        "switch: out epoch={epoch} to={to} pause_ms={} final_epoch_bytes={bytes} digest={}",
        p.arch.now_ns().saturating_sub(start_ns) / 1_000_000,
        hex(&engine.digest())
    );
    if let (Some(n), Some(peers)) = (p.net.as_mut(), engine.peers_mut()) {
        peers.shutdown(n);
    }
    let hashes = engine.hashes().clone();
    let standing = engine.standing;
    // The shadows go; the heap they used holds the standby's staging.
    drop(engine);
    p.arch.quiesce();
    let m = &p.machine;
    let Some(secret) = m.config.sync.secret else {
        log::error!("switch: no pairing secret: this device cannot serve as a standby");
        return Outcome::Failed;
    };
    let state = vm.last_state.take().filter(|s| s.epoch == epoch);
    drop(vm);
    // SAFETY: the guest no longer runs here (it was paused for good and
    // its `Vm` is gone): from now on the standby image alone uses the backing.
    let image = unsafe { m.image() };
    let mut applier = Applier::with_hashes(image, epoch, hashes);
    // The final epoch is of our term; the target's starts above it.
    applier.set_lineage(standing.lineage, standing.term);
    let mut node = StandbyNode::with_applier(m.config.sync.listen, applier, state, PairingSecret::new(secret), m.handshake(A::RAM_BASE), rng);
    node.term_seen = standing.term;
    node.adopt_unrelated = m.config.sync.adopt_unrelated;
    info!("standby: holding epoch {epoch}, listening on port {}", m.config.sync.listen);
    Outcome::Gone(Box::new(Standby::new(node)))
}

/// A standby proved that term `term` of this guest runs elsewhere (a
/// failover while this device was cut off): the guest stops here at once,
/// without another epoch, and this device becomes a standby. Its image
/// (guest RAM as the guest left it, past the last cut) is no committed
/// epoch's: it is resynced whole by the device of the higher term, and
/// this device cannot run the guest again before it commits one of that
/// term's epochs and a new take-over asks (`sync_core::fence`).
pub fn step_down<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, mut vm: Box<Vm<A::Platform>>, term: sync_core::fence::Term) -> Outcome<A::Platform> {
    p.arch.stop_tick();
    p.arch.quiesce();
    let Some(mut engine) = vm.sync.take() else { return Outcome::Failed };
    let standing = engine.standing;
    warn!(
        "fence: term {} of this guest runs on another device (ours is {}): the guest stopped here at epoch {} (not committed past the other term's take-over); this device is a standby now",
        sync_core::fence::term_count(term),
        sync_core::fence::term_count(standing.term),
        engine.last_cut()
    );
    if let (Some(n), Some(peers)) = (p.net.as_mut(), engine.peers_mut()) {
        peers.shutdown(n);
    }
    let hashes = engine.hashes().clone();
    drop(engine);
    let rng = match p.rng.drbg() {
        Ok(r) => r,
        Err(e) => {
            log::error!("fence: no randomness for the standby's sessions ({e:?}): this device stops");
            return Outcome::Failed;
        }
    };
    let m = &p.machine;
    let Some(secret) = m.config.sync.secret else { return Outcome::Failed };
    drop(vm);
    // SAFETY: the guest stopped for good (quiesced, its `Vm` gone): from
    // now on the standby image alone uses the backing.
    let image = unsafe { m.image() };
    let mut applier = Applier::with_hashes(image, 0, hashes);
    applier.forget();
    let mut node = StandbyNode::with_applier(m.config.sync.listen, applier, None, PairingSecret::new(secret), m.handshake(A::RAM_BASE), rng);
    node.term_seen = term;
    node.adopt_unrelated = m.config.sync.adopt_unrelated;
    info!("standby: holding no committed epoch, listening on port {}", m.config.sync.listen);
    Outcome::Gone(Box::new(Standby::new(node)))
}
