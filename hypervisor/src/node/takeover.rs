//! A standby resumes the guest from its committed epoch (on SwitchDone, or
//! on a failover) and runs it, syncing the other devices with deltas.
use alloc::boxed::Box;
use log::{info, warn};
use sync_core::wire::Epoch;

use super::epochs::{self, StartError};
use super::standby::Standby;
use super::vm::Vm;
use super::{format_ip, hex, Parts};
use crate::arch::seam::{Arch, Stage2Table};
use crate::memory::guest::GuestMemory;
use crate::net::stack::NetDevice;
use crate::vplatform::{snapshot::SnapshotError, Platform};

pub enum Takeover {
    /// The active device handed the guest over at `epoch`.
    Switch { asked_ms: u64, bytes_before: u64, epoch: Epoch },
    /// The active device is gone: resume from the last committed epoch.
    Failover { asked_ms: u64 },
}

/// Why a standby could not take the guest over (it stays a standby).
#[derive(Debug)]
pub enum TakeoverError<E> {
    /// No `policy` in this device's config: it could not sync the others.
    NoPolicy,
    /// No randomness for the new term and its sessions: the guest could
    /// not be synced, nor its term told to the old active device.
    NoRandomness,
    /// No vCPU/device state came with the committed epoch.
    NoState {
        committed: Epoch,
    },
    /// The handover names another epoch than the one committed here.
    WrongEpoch {
        handed: Epoch,
        committed: Epoch,
    },
    Cpu(E),
    Devices(SnapshotError),
}

pub enum Outcome<P> {
    Running(Box<Vm<P>>),
    /// Still a standby (the take-over was impossible; logged).
    Stayed(Box<Standby>),
    /// The standby image was given up but tracking could not start (logged):
    /// the device stops.
    Failed,
}

/// Runs the guest from the standby's committed epoch.
pub fn take_over<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, mut s: Box<Standby>, how: Takeover) -> Outcome<A::Platform> {
    let platform = match prepare(p, &s, &how) {
        Ok(platform) => platform,
        Err(e) => {
            warn!("switch: failed: cannot take the guest over here: {e:?}; this device stays a standby");
            // No SwitchTaken comes: the old active device resumes the
            // guest. Its SwitchDone ends with the connection it came on.
            if let (Takeover::Switch { .. }, Some(n)) = (&how, p.net.as_mut()) {
                s.node.drop_connection(n, "the guest cannot be taken over here");
            }
            return Outcome::Stayed(s);
        }
    };
    match run(p, s, how, platform) {
        Ok(vm) => Outcome::Running(Box::new(vm)),
        Err(e) => {
            log::error!("taking the guest over: {e:?}");
            Outcome::Failed
        }
    }
}

/// Checks and loads everything the guest resumes with, changing nothing
/// of the standby: the board's state, then the vCPU's (which leaves this
/// CPU ready to run it).
fn prepare<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, s: &Standby, how: &Takeover) -> Result<A::Platform, TakeoverError<A::StateError>> {
    if p.machine.config.policy.is_none() {
        return Err(TakeoverError::NoPolicy);
    }
    if !p.rng.is_available() {
        return Err(TakeoverError::NoRandomness);
    }
    let committed = s.node.applier.committed_epoch();
    if let Takeover::Switch { epoch, .. } = how {
        if *epoch != committed {
            return Err(TakeoverError::WrongEpoch { handed: *epoch, committed });
        }
    }
    let state = s.node.committed_state.as_ref().filter(|st| st.epoch == committed).ok_or(TakeoverError::NoState { committed })?;
    let platform = A::Platform::restore(&state.devices, p.machine.guest_disk()).map_err(TakeoverError::Devices)?;
    p.arch.restore(&state.cpu).map_err(TakeoverError::Cpu)?;
    Ok(platform)
}

fn run<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, mut s: Box<Standby>, how: Takeover, platform: A::Platform) -> Result<Vm<A::Platform>, StartError> {
    let config = &p.machine.config;
    let (spec, shadows, size) = (config.policy, config.shadow.budget(config.mem_bytes), config.mem_bytes);
    let from = p.net.as_ref().and_then(|n| s.node.active_addr(n));
    let bytes_received = s.node.bytes_received;
    // The listening sockets go now; the connection that brought the
    // handover stays until the guest runs here (it carries the answer).
    let served = p.net.as_mut().and_then(|n| s.node.detach(n));
    let (lineage, prior) = s.node.applier.lineage();
    let seen = s.node.term_seen;
    let (_image, hashes, committed) = s.node.applier.into_parts();
    let digest = hashes.digest();
    // SAFETY: the backing that held the standby image is guest RAM again;
    // the image (`_image`) is no longer used.
    let mut mem = unsafe { GuestMemory::new(A::RAM_BASE, size, p.machine.backing) };
    // `prepare` checked the policy.
    let spec = spec.ok_or(StartError::NoPolicy)?;
    let now_ns = p.arch.now_ns();
    let engine = epochs::start_after_switch(spec, shadows, hashes, committed, &mut mem, &mut p.s2, now_ns);
    let mut engine = match engine {
        Ok(e) => e,
        Err(e) => {
            let now = p.now_ms();
            if let (Some(n), Some(c)) = (p.net.as_mut(), served) {
                c.close(n, now, None);
            }
            return Err(e);
        }
    };
    // A new term, above every one this device has seen.
    super::add_peers(p, &mut engine, super::Reign::TakeOver { lineage, prior, from: committed, seen });
    // The engine runs (before the guest's first instruction): the old
    // active device learns it may stop waiting, on the same connection,
    // which then ends with a FIN. Without peers (no randomness) there is
    // no term to tell.
    let term = engine.standing.term;
    let answer = matches!(how, Takeover::Switch { .. }).then_some((committed, term)).filter(|_| engine.peers().is_some());
    let now = p.now_ms();
    if let (Some(n), Some(c)) = (p.net.as_mut(), served) {
        if !c.close(n, now, answer) {
            warn!("switch: the answer to SwitchDone could not be sent; the old active device learns our term when we connect to it");
        }
    }
    // The image was written as data: no stale translation or instruction
    // may survive.
    p.s2.flush();
    let mut vm = Vm::new(mem, platform);
    vm.sync = Some(engine);
    vm.track_disk(p.machine.guest_disk());
    vm.sync_start_ns = p.arch.now_ns();
    p.started_ns.get_or_insert(vm.sync_start_ns);
    p.arch.arm_tick(epochs::TICK_NS);
    let now = p.now_ms();
    match how {
        Takeover::Switch { asked_ms, bytes_before, .. } => {
            let from = from.map(format_ip).unwrap_or_default();
            info!(
                "switch: in epoch={committed} from={from} latency_ms={} final_epoch_bytes={} digest={}",
                now.saturating_sub(asked_ms),
                bytes_received.saturating_sub(bytes_before),
                hex(&digest)
            );
        }
        Takeover::Failover { asked_ms } => {
            info!("switch: failover epoch={committed} latency_ms={} digest={}", now.saturating_sub(asked_ms), hex(&digest));
        }
    }
    Ok(vm)
}
