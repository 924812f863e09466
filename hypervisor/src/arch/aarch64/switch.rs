//! Moving the guest between devices. `hand_over`: the active device, asked
//! by a standby, pauses the guest, cuts a final epoch (with the vCPU and
//! device state), waits until the standby has committed it, sends
//! SwitchDone and becomes a standby of the same image. `take_over`: a
//! standby restores the guest from its committed epoch (on SwitchDone, or
//! on a failover) and runs it, syncing the other devices with deltas.
use core::cell::UnsafeCell;
use log::{info, warn};
use sync_core::applier::Applier;
use sync_core::crypto::PairingSecret;
use sync_core::wire::{Epoch, Message};

use super::boot::{self, fatal, GIC, MACHINE, STAGE2, START_COUNT, VM};
use super::vcpu_state::{CpuStateError, GuestCpu};
use super::vectors::{self, TrapFrame};
use super::{standby, timer, tracking, vcpu};
use crate::memory::guest::GuestMemory;
use crate::sync::engine::SyncError;
use crate::sync::peers::Peers;
use crate::sync::raw_pages::RawPages;
use crate::sync::standby_node::{hex, StandbyNode};
use crate::vm::Vm;
use crate::vplatform::arm::{board as vboard, ArmPlatform};
use crate::vplatform::snapshot::SnapshotError;

/// How long the paused guest waits for the target to commit the final
/// epoch before the switch is called off (and the guest resumes here).
const COMMIT_WAIT_MS: u64 = 3_000;
/// How long SwitchDone may take to be acknowledged by the target's TCP.
const HANDOVER_WAIT_MS: u64 = 3_000;
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

fn now_ms() -> u64 {
    timer::ticks_to_ns(timer::now_ticks()) / 1_000_000
}

/// Called at the end of a trap with the guest paused, when standby
/// `target` asked for the guest. Returns only if the switch failed and
/// the guest keeps running here.
pub fn hand_over(mut guard: spin::MutexGuard<'_, Option<Vm>>, frame: &mut TrapFrame, target: usize) {
    let Some(vm) = guard.as_mut() else { return };
    let start = timer::now_ticks();
    let Some(peers) = peers_of(vm) else { return };
    let Some(p) = peers.list.get(target) else { return };
    let (to, sent_before) = (p.addr.ip, p.bytes_sent);
    timer::stop();
    let resume_here = |why: core::fmt::Arguments| {
        warn!("switch: failed: {why}; the guest stays here");
        timer::arm_in(tracking::TICK_NS);
    };
    let Some(mut epoch) = tracking::cut_epoch(vm, Some(frame)) else {
        return resume_here(format_args!("the final epoch could not be cut"));
    };
    // The final epoch did not fit the target's link budget: it catches up.
    // The guest stays paused, so nothing new is owed; its pages stream, and
    // a cut that finds the rest fits the budget ends the catch-up.
    let catching_up = |vm: &mut Vm| peers_of(vm).is_some_and(|p| p.is_established(target) && p.list[target].is_catching_up());
    let catchup_start = now_ms();
    while catching_up(vm) {
        if now_ms() - catchup_start > CATCHUP_WAIT_MS {
            return resume_here(format_args!("{to} is still catching up after {CATCHUP_WAIT_MS} ms"));
        }
        tracking::pump_until(vm, CATCHUP_CUT_MS, |_| false);
        let Some(e) = tracking::cut_epoch(vm, Some(frame)) else {
            return resume_here(format_args!("the final epoch could not be cut"));
        };
        epoch = e;
    }
    let acked = |vm: &mut Vm| peers_of(vm).is_some_and(|p| p.list[target].acked >= epoch);
    tracking::pump_until(vm, COMMIT_WAIT_MS, |vm| acked(vm) || !peers_of(vm).is_some_and(|p| p.is_established(target)));
    if !acked(vm) {
        return resume_here(format_args!("{to} did not commit the final epoch {epoch} within {COMMIT_WAIT_MS} ms"));
    }
    // From here the guest belongs to the target: SwitchDone goes out and
    // this device never resumes it on its own.
    let sent = vm.sync.as_mut().and_then(|e| e.peers_mut()).and_then(|p| p.send_to(target, &Message::SwitchDone { epoch }));
    // Confirmed when TCP acknowledged SwitchDone, or the target closed the
    // connection with a FIN (it does so only once it took the guest over).
    let confirmed = |vm: &mut Vm| {
        let Some(p) = peers_of(vm) else { return false };
        p.list[target].finished_by_peer || crate::net::with(|n| p.delivered(target, n)).unwrap_or(false)
    };
    let confirmed = sent.is_some()
        && tracking::pump_until(vm, HANDOVER_WAIT_MS, |vm| {
            let gone = !peers_of(vm).is_some_and(|p| p.is_established(target));
            confirmed(vm) || gone
        })
        && confirmed(vm);
    if !confirmed {
        warn!("switch: handover to {to} unconfirmed; this device becomes a standby (fail over to {to} if the guest does not resume there)");
    }
    tracking::pump_until(vm, OTHERS_WAIT_MS, |vm| {
        let Some(p) = peers_of(vm) else { return true };
        p.list.iter().enumerate().all(|(i, s)| i == target || s.acked >= epoch || !p.is_established(i))
    });
    let Some(mut vm) = guard.take() else { return };
    drop(guard);
    let Some(mut engine) = vm.sync.take() else { fatal(format_args!("switch without sync")) };
    let bytes = engine.peers().map(|p| p.list[target].bytes_sent - sent_before).unwrap_or(0);
    info!(
        "switch: out epoch={epoch} to={to} pause_ms={} final_epoch_bytes={bytes} digest={}",
        timer::ticks_to_ns(timer::now_ticks() - start) / 1_000_000,
        hex(&engine.digest())
    );
    crate::net::with(|n| engine.peers_mut().map(|p| p.shutdown(n)));
    let hashes = engine.hashes().clone();
    // The shadows go; the heap they used holds the standby's staging.
    drop(engine);
    vcpu::quiesce(&GIC);
    let Some(m) = MACHINE.get() else { fatal(format_args!("switch before the machine is set up")) };
    let Some(secret) = m.config.sync.secret else { fatal(format_args!("switch without a pairing secret")) };
    // SAFETY: guest RAM's backing, no longer run by a guest: from now on
    // the standby image alone uses it.
    let image = unsafe { RawPages::new(m.backing as *mut u8, m.config.mem_bytes / 4096) };
    let node = StandbyNode::with_applier(
        m.config.sync.listen,
        Applier::with_hashes(image, epoch, hashes),
        vm.last_state.take().filter(|s| s.epoch == epoch),
        PairingSecret::new(secret),
        standby::handshake(m),
        timer::now_ticks(),
    );
    info!("standby: holding epoch {epoch}, listening on port {}", m.config.sync.listen);
    standby::serve(node)
}

fn peers_of(vm: &Vm) -> Option<&Peers> {
    vm.sync.as_ref().and_then(|e| e.peers())
}

/// Why a standby could not take the guest over (it stays a standby).
#[derive(Debug)]
pub enum TakeoverError {
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
    Cpu(CpuStateError),
    Devices(SnapshotError),
    Sync(SyncError),
}

pub enum Takeover {
    /// The active device handed the guest over at `epoch`.
    Switch { asked_ms: u64, bytes_before: u64, epoch: Epoch },
    /// The active device is gone: resume from the last committed epoch.
    Failover { asked_ms: u64 },
}

/// Where the guest's registers wait for `vmsync_enter_guest`, which copies
/// them to the top of the EL2 stack (this call's own frame may lie there).
struct EntryFrame(UnsafeCell<TrapFrame>);
// SAFETY: one CPU; written only right before entering the guest, with no
// other reference alive.
unsafe impl Sync for EntryFrame {}
static ENTRY: EntryFrame = EntryFrame(UnsafeCell::new(TrapFrame::zeroed()));

/// Runs the guest from `node`'s committed epoch. Returns the node (still a
/// standby) only if that is impossible.
pub fn take_over(node: StandbyNode, how: Takeover) -> StandbyNode {
    match prepare(&node, &how) {
        Ok((cpu, platform)) => run(node, how, cpu, platform),
        Err(e) => {
            warn!("switch: failed: cannot take the guest over here: {e:?}; this device stays a standby");
            node
        }
    }
}

fn prepare(node: &StandbyNode, how: &Takeover) -> Result<(GuestCpu, ArmPlatform), TakeoverError> {
    let m = MACHINE.get().ok_or(TakeoverError::NoPolicy)?;
    if m.config.policy.is_none() {
        return Err(TakeoverError::NoPolicy);
    }
    let committed = node.applier.committed_epoch();
    if let Takeover::Switch { epoch, .. } = how {
        if *epoch != committed {
            return Err(TakeoverError::WrongEpoch { handed: *epoch, committed });
        }
    }
    let state = node.committed_state.as_ref().filter(|s| s.epoch == committed).ok_or(TakeoverError::NoState { committed })?;
    let cpu = GuestCpu::decode(&state.cpu, GIC.list_registers() as u8).map_err(TakeoverError::Cpu)?;
    let platform = ArmPlatform::restore(&state.devices).map_err(TakeoverError::Devices)?;
    Ok((cpu, platform))
}

fn run(mut node: StandbyNode, how: Takeover, cpu: GuestCpu, platform: ArmPlatform) -> StandbyNode {
    let Some(m) = MACHINE.get() else { return node };
    let Some(spec) = m.config.policy else { return node };
    let from = crate::net::with(|n| node.active_addr(n)).flatten();
    let bytes_received = node.bytes_received;
    crate::net::with(|n| node.shutdown(n, now_ms()));
    let (_image, hashes, committed) = node.applier.into_parts();
    let digest = hashes.digest();
    // SAFETY: the backing that held the standby image is guest RAM again;
    // the image (`_image`) is no longer used.
    let mut mem = unsafe { GuestMemory::new(vboard::RAM_BASE, m.config.mem_bytes, m.backing as *mut u8) };
    let engine = {
        let mut s2 = STAGE2.lock();
        let Some(guest_s2) = s2.as_mut() else { fatal(format_args!("stage 2 missing")) };
        tracking::start_after_switch(spec, m.config.shadow.budget(m.config.mem_bytes), hashes, committed, &mut mem, guest_s2)
    };
    let mut engine = match engine {
        Ok(e) => e,
        Err(e) => fatal(format_args!("taking the guest over at epoch {committed}: {e:?}")),
    };
    boot::add_peers(&mut engine, &m.config);
    boot::enable_guest_interfaces();
    boot::invalidate_guest_tlbs();
    // The image was written as data: no stale instructions may survive.
    // SAFETY: cache maintenance only.
    unsafe { core::arch::asm!("ic ialluis", "dsb ish", "isb", options(nostack)) };
    // SAFETY: see `EntryFrame`; nothing else references it now.
    let frame = unsafe { &mut *ENTRY.0.get() };
    vcpu::restore(&cpu, frame, &GIC);
    let mut vm = Vm::new(mem);
    vm.platform = platform;
    vm.sync = Some(engine);
    vm.sync_start_ticks = timer::now_ticks();
    START_COUNT.call_once(timer::now_ticks);
    *VM.lock() = Some(vm);
    timer::arm_in(tracking::TICK_NS);
    let now = now_ms();
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
    // SAFETY: stage 2, HCR, the vCPU and the virtual board describe the
    // restored guest; the frame holds its registers.
    unsafe { vectors::vmsync_enter_guest(frame) }
}

fn format_ip(ip: core::net::Ipv4Addr) -> heapless::String<16> {
    let mut s = heapless::String::new();
    let _ = core::fmt::Write::write_fmt(&mut s, format_args!("{ip}"));
    s
}
