//! Dirty tracking as the node runs it: the write-fault path, the tick that
//! asks the policy whether to cut, epoch cuts with the guest paused, the
//! network pump, and the last epoch at power-off.
use alloc::vec::Vec;
use log::{info, warn};
use sync_core::policy::PolicySpec;
use sync_core::shadow::Budget;
use sync_core::wire::{Message, RamLayout};

use super::vm::Vm;
use super::Parts;
use crate::arch::seam::{Arch, Stage2Table};
use crate::memory::guest::GuestMemory;
use crate::net::stack::NetDevice;
use crate::sync::engine::{Engine, SyncError, Verdict};
use crate::sync::raw_pages::RawPages;
use crate::sync::standby_node::{hex, GuestState};
use crate::vplatform::Platform;
use sync_core::digest::PageMemory;

/// How often the policy is asked whether to cut (the hypervisor's tick).
pub const TICK_NS: u64 = 5_000_000;

/// Why tracking could not start.
#[derive(Debug)]
pub enum StartError {
    /// The config names no policy: nothing to sync with.
    NoPolicy,
    Sync(SyncError),
    Dirty(sync_core::dirty::DirtyError),
    /// `start` before guest RAM was cleared and tracked (a caller's bug:
    /// the first epoch would miss what the loader wrote).
    NotTracking,
}

/// Turns tracking on before the guest's first instruction: every page
/// read-only, every later write seen. Guest RAM was cleared and then
/// tracked before the loader wrote into it (`GuestMemory::start_tracking`),
/// so epoch 1 holds what the loader and the guest wrote, and every standby
/// still gets the whole guest from epoch 0. With
/// `verify_image` (zeroed, as large as guest RAM) every epoch is also
/// applied to a local standby and checked.
pub fn start(
    spec: PolicySpec,
    shadows: Budget,
    verify_image: Option<RawPages>,
    mem: &mut GuestMemory,
    s2: &mut impl Stage2Table,
    now_ns: u64,
) -> Result<Engine, StartError> {
    let verify = verify_image.is_some();
    let ram = RamLayout { base: mem.ipa_base(), size: mem.size() };
    let engine = Engine::new(spec, ram, shadows, verify_image, now_ns).map_err(StartError::Sync)?;
    // Tracking began before the loader wrote (see `node::boot`): its pages
    // are in the first epoch's dirty set, and the rest of RAM is zero.
    if !mem.tracking() {
        return Err(StartError::NotTracking);
    }
    s2.protect_all();
    info!("sync: policy {spec}, verify {}, {} pages write-protected", if verify { "on" } else { "off" }, mem.size() / 4096);
    Ok(engine)
}

/// Tracking on a device that has just taken the guest over at epoch
/// `committed`: guest RAM is the committed image (with `hashes`); epochs
/// continue from there, deltas only.
pub fn start_after_switch(
    spec: PolicySpec,
    shadows: Budget,
    hashes: sync_core::digest::PageHashes,
    committed: u64,
    mem: &mut GuestMemory,
    s2: &mut impl Stage2Table,
    now_ns: u64,
) -> Result<Engine, StartError> {
    let ram = RamLayout { base: mem.ipa_base(), size: mem.size() };
    let engine = Engine::after_switch(spec, ram, shadows, hashes, committed, now_ns).map_err(StartError::Sync)?;
    protect_all(mem, s2)?;
    Ok(engine)
}

fn protect_all(mem: &mut GuestMemory, s2: &mut impl Stage2Table) -> Result<(), StartError> {
    mem.start_tracking().map_err(StartError::Dirty)?;
    s2.protect_all();
    Ok(())
}

/// A write hit a write-protected page: mark it dirty and give the page,
/// and only it, write access for the rest of the epoch (the guest retries
/// the instruction). False if this is no write to tracked guest RAM.
pub fn write_fault<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>, ipa: u64) -> bool {
    let Some(engine) = vm.sync.as_mut() else { return false };
    let base = vm.mem.ipa_base();
    if !(base..base + vm.mem.size()).contains(&ipa) {
        return false;
    }
    vm.stats.write_fault += 1;
    engine.note_write_fault();
    if vm.mem.mark_dirty(ipa) {
        // First write of the page since the cut: after a switch, its shadow
        // is made now, from the content the standbys hold.
        let page = (ipa - base) / 4096;
        if let Some(content) = vm.mem.page(page) {
            engine.seed_before_write(page, content);
        }
    }
    p.s2.make_writable(ipa);
    true
}

/// Network work: frames both ways, sealed epochs out to the standbys as
/// their sockets take them, their replies in. Never waits.
pub fn pump<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>, now_ms: u64) {
    let Some(n) = p.net.as_mut() else { return };
    n.poll(now_ms);
    if let Some(e) = vm.sync.as_mut() {
        let mem = &vm.mem;
        e.pump(n, mem, &|page| mem.is_dirty_now(page), now_ms);
        n.poll(now_ms);
    }
}

/// The hypervisor's tick: ask the policy whether to cut (the cut itself
/// happens at the end of the exit, see `cut_if_due`), note a standby's
/// switch request, re-arm.
pub fn tick<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>) {
    let now = p.arch.now_ns();
    pump(p, vm, now / 1_000_000);
    let dirty = vm.mem.dirty_now();
    if let Some(e) = vm.sync.as_mut() {
        if e.should_cut(now, dirty) {
            vm.cut_due = true;
        }
        let last_cut = e.last_cut();
        if let Some(i) = e.peers_mut().and_then(|p| p.take_switch_request(last_cut)) {
            vm.switch_to = Some(i);
        }
    }
    p.arch.arm_tick(TICK_NS);
}

/// A byte the guest wrote to its console: when it ends the workload's
/// start line or its first progress line, cut an epoch there (see
/// `sync::workload_start`).
pub fn console_byte<P>(vm: &mut Vm<P>, b: u8) {
    let Some(engine) = vm.sync.as_mut() else { return };
    let Some(mark) = engine.workload_start.feed(b) else { return };
    vm.cut_due = true;
    vm.steady_mark |= mark == crate::sync::workload_start::Mark::Steady;
}

/// Cuts asked for during this exit happen at its end, after `inject`: the
/// vCPU is then exactly what a standby resumes from (a console write
/// already stepped over, an interrupt already injected).
pub fn cut_if_due<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>) {
    if core::mem::take(&mut vm.cut_due) {
        cut_epoch(p, vm, true);
        if core::mem::take(&mut vm.steady_mark) {
            info!("{}", sync_core::stats::STEADY_STATE_LOG);
        }
    }
}

/// Cuts the open epoch with the guest paused: encode, compress, seal, with
/// the guest's vCPU and device state at the cut when `with_state`;
/// re-protect the pages written in it; then, with verify, check the local
/// standby against guest RAM (not counted in the pause: a real standby
/// checks on its own device). Returns the epoch cut.
pub fn cut_epoch<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>, with_state: bool) -> Option<u64> {
    let start = p.arch.now_ns();
    let dirty: Vec<u64> = vm.mem.cut()?.iter().collect();
    let msgs: Vec<Message> = if with_state {
        let mut cpu = Vec::new();
        p.arch.capture(&mut cpu);
        let mut devices = Vec::new();
        vm.platform.save(&mut devices);
        super::state_messages(cpu, devices)
    } else {
        Vec::new()
    };
    let engine = vm.sync.as_mut()?;
    let mut st = match engine.cut(&vm.mem, &dirty, &msgs) {
        Ok(st) => st,
        Err(e) => {
            warn!("sync: epoch cut failed: {e:?}; its {} pages go with the next epoch", dirty.len());
            // The pages were taken from the dirty set and are writable:
            // they stay dirty, and are protected again so that their later
            // writes are seen too. Otherwise a standby silently diverges.
            let base = vm.mem.ipa_base();
            for &page in &dirty {
                vm.mem.mark_dirty(base + page * 4096);
            }
            p.s2.write_protect(&mut dirty.iter().copied());
            engine.finish(&sync_core::stats::EpochStats::default(), p.arch.now_ns());
            return None;
        }
    };
    p.s2.write_protect(&mut reprotect_set(&dirty));
    // The disk's writes in the epoch: counts taken and the bitmap cleared
    // over the words written (the disk itself is not read). After a failed
    // cut they stay, for the next epoch, like the pages.
    if let Some(w) = vm.disk_writes.as_mut() {
        (st.disk_dirty_blocks, st.disk_guest_bytes) = w.cut();
    }
    st.pause_us = p.arch.now_ns().saturating_sub(start) / 1000;
    if engine.peers().is_some() {
        info!("digest epoch={} d={}", st.epoch, hex(&engine.digest()));
    }
    st.at_ms = start.saturating_sub(vm.sync_start_ns) / 1_000_000;
    info!("epoch {st}");
    // Shadow probes count the cut again at other budgets, after its pause
    // was measured (they add nothing to it) and with the guest still paused
    // (memory as at the cut).
    engine.probe(&vm.mem, &dirty, &msgs, &st, |label, r| match r {
        Ok(ps) => info!("shadow probe {label} {ps}"),
        Err(e) => warn!("shadow probe {label} failed at epoch {}: {e:?}; dropped", st.epoch),
    });
    // The state sent with the epoch is kept (moved, not copied) for a
    // hand-over, where it becomes this device's standby state.
    vm.last_state = match <[Message; 2]>::try_from(msgs) {
        Ok([Message::CpuState(cpu), Message::DeviceState(devices)]) => Some(GuestState { epoch: st.epoch, cpu, devices }),
        _ => None,
    };
    let base = vm.mem.ipa_base();
    match engine.verify(&vm.mem, st.epoch) {
        Ok(None) => {}
        Ok(Some(Verdict::Match)) => info!("verify epoch={} result=match", st.epoch),
        Ok(Some(Verdict::Mismatch { first_page, pages })) => {
            warn!("verify epoch={} result=mismatch pages={pages} first_ipa={:#x}", st.epoch, base + first_page * 4096)
        }
        Ok(Some(Verdict::NotCommitted)) => warn!("verify epoch={} result=not-committed", st.epoch),
        Err(e) => warn!("verify epoch={} failed: {e:?}", st.epoch),
    }
    engine.finish(&st, p.arch.now_ns());
    // Start sending at once rather than at the next tick.
    let now = p.now_ms();
    pump(p, vm, now);
    Some(st.epoch)
}

/// The pages to write-protect again after a cut: all that were written.
#[cfg(not(feature = "negative-control"))]
fn reprotect_set(dirty: &[u64]) -> impl Iterator<Item = u64> + '_ {
    dirty.iter().copied()
}

/// Negative control (a test-only build): leave the first page written in
/// each epoch writable, so its later writes escape tracking. `--verify`
/// must catch it.
#[cfg(feature = "negative-control")]
fn reprotect_set(dirty: &[u64]) -> impl Iterator<Item = u64> + '_ {
    dirty.iter().copied().skip(1)
}

/// At power-off: the last epoch (all of a `switch-only` run), then totals.
pub fn finish<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>) {
    if vm.sync.is_none() {
        return;
    }
    p.arch.stop_tick();
    cut_epoch(p, vm, false);
    flush(p, vm);
    let Some(e) = vm.sync.as_ref() else { return };
    info!("sync totals {}", e.totals);
    // The active device's memory figure: the heap's high-water mark.
    #[cfg(target_os = "none")]
    info!("{}", crate::heap::usage());
    if e.verifying() {
        info!("verify checks={} mismatches={}", e.checks, e.mismatches);
    }
    if let Some(peers) = e.peers() {
        for s in &peers.list {
            let c = s.catchup();
            info!(
                "peer standby={} addr={}:{} acked={} reconnects={} full_resyncs={} bytes_sent={} peak_queued={} catchups_finished={} catchups_started={} owed_pages={} streamed_pages={} final_pages={} catchup_bytes={}",
                s.id,
                s.addr.ip,
                s.addr.port,
                s.acked,
                s.reconnects,
                s.full_resyncs,
                s.bytes_sent,
                s.peak_queued,
                c.finished,
                c.started,
                c.owed_at_start,
                c.streamed_pages,
                c.final_pages,
                c.sealed_bytes
            );
        }
    }
}

/// Before power-off: give the standbys the last epoch. A dead link cannot
/// hold the device up (it gives up after `STALL_MS` without a byte taken);
/// a slow one that keeps taking bytes (a standby catching up over
/// Bluetooth) is waited for, up to `FLUSH_MAX_MS`.
fn flush<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, vm: &mut Vm<A::Platform>) {
    const STALL_MS: u64 = 15_000;
    const FLUSH_MAX_MS: u64 = 300_000;
    const FLUSH_CUT_MS: u64 = 200;
    if vm.sync.as_ref().and_then(|e| e.peers()).is_none() {
        return;
    }
    let sent = |vm: &Vm<A::Platform>| vm.sync.as_ref().and_then(|e| e.peers()).map_or(0, |p| p.list.iter().map(|s| s.bytes_sent).sum::<u64>());
    let start = p.now_ms();
    let (mut last_cut, mut last_sent, mut progress_at) = (start, sent(vm), start);
    let done = pump_until(p, vm, FLUSH_MAX_MS, |p, vm| {
        let now = p.now_ms();
        // A standby still catching up commits only at a cut: cut (empty
        // epochs) now and then until one finds that the rest fits its budget.
        let behind = vm.sync.as_ref().and_then(|e| e.peers()).is_some_and(|p| p.list.iter().any(|s| s.is_catching_up()));
        if behind && now - last_cut >= FLUSH_CUT_MS {
            last_cut = now;
            cut_epoch(p, vm, false);
        }
        if sent(vm) != last_sent {
            (last_sent, progress_at) = (sent(vm), now);
        }
        let all = vm.sync.as_ref().map(|e| e.all_acked()).unwrap_or(true);
        all || now - progress_at > STALL_MS
    }) && vm.sync.as_ref().map(|e| e.all_acked()).unwrap_or(true);
    info!("sync: flush at power-off {} after {} ms", if done { "complete" } else { "gave up" }, p.now_ms() - start);
}

/// With the guest paused: moves network traffic (about every millisecond)
/// until `done` holds or `limit_ms` pass; true if it held.
pub fn pump_until<A: Arch, D: NetDevice>(
    p: &mut Parts<A, D>,
    vm: &mut Vm<A::Platform>,
    limit_ms: u64,
    mut done: impl FnMut(&mut Parts<A, D>, &mut Vm<A::Platform>) -> bool,
) -> bool {
    let start = p.now_ms();
    loop {
        let now = p.now_ms();
        pump(p, vm, now);
        if done(p, vm) {
            return true;
        }
        if now - start > limit_ms {
            return false;
        }
        p.arch.spin(1_000_000);
    }
}
