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
pub fn take_over<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, s: Box<Standby>, how: Takeover) -> Outcome<A::Platform> {
    let platform = match prepare(p, &s, &how) {
        Ok(platform) => platform,
        Err(e) => {
            warn!("switch: failed: cannot take the guest over here: {e:?}; this device stays a standby");
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
    let committed = s.node.applier.committed_epoch();
    if let Takeover::Switch { epoch, .. } = how {
        if *epoch != committed {
            return Err(TakeoverError::WrongEpoch { handed: *epoch, committed });
        }
    }
    let state = s.node.committed_state.as_ref().filter(|st| st.epoch == committed).ok_or(TakeoverError::NoState { committed })?;
    let platform = A::Platform::restore(&state.devices).map_err(TakeoverError::Devices)?;
    p.arch.restore(&state.cpu).map_err(TakeoverError::Cpu)?;
    Ok(platform)
}

fn run<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, mut s: Box<Standby>, how: Takeover, platform: A::Platform) -> Result<Vm<A::Platform>, StartError> {
    let config = &p.machine.config;
    let (spec, shadows, size) = (config.policy, config.shadow.budget(config.mem_bytes), config.mem_bytes);
    let from = p.net.as_ref().and_then(|n| s.node.active_addr(n));
    let bytes_received = s.node.bytes_received;
    let now = p.now_ms();
    if let Some(n) = p.net.as_mut() {
        s.node.shutdown(n, now);
    }
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
    let mut engine = epochs::start_after_switch(spec, shadows, hashes, committed, &mut mem, &mut p.s2, now_ns)?;
    // A new term, above every one this device has seen.
    super::add_peers(p, &mut engine, super::Reign::TakeOver { lineage, prior, from: committed, seen });
    // The image was written as data: no stale translation or instruction
    // may survive.
    p.s2.flush();
    let mut vm = Vm::new(mem, platform);
    vm.sync = Some(engine);
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
