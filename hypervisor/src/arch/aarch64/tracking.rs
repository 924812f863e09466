//! Dirty tracking on aarch64: stage-2 write protection, the write-fault
//! path, and epoch cuts on the hypervisor's tick.
use aarch64_cpu::registers::*;
use alloc::vec::Vec;
use log::{info, warn};
use sync_core::policy::PolicySpec;
use sync_core::shadow::Budget;
use sync_core::wire::RamLayout;

use sync_core::digest::{PageHashes, PageMemory};
use sync_core::wire::Message;

use super::boot::{fatal, GIC, STAGE2};
use super::esr::DataAbort;
use super::stage2_mem::GuestStage2;
use super::timer;
use super::vectors::TrapFrame;
use crate::memory::guest::GuestMemory;
use crate::sync::engine::{Engine, SyncError, Verdict};
use crate::sync::raw_pages::RawPages;
use crate::sync::standby_node::GuestState;
use crate::vm::Vm;
use crate::vplatform::arm::board as vboard;

/// How often the policy is asked whether to cut (the hypervisor's tick).
pub const TICK_NS: u64 = 5_000_000;

/// Turns tracking on before the guest's first instruction: every page
/// read-only, every later write seen. Epoch 1 sends the whole guest. With
/// `verify_image` (zeroed, as large as guest RAM) every epoch is also
/// applied to a local standby and checked.
pub fn start(spec: PolicySpec, shadows: Budget, verify_image: Option<RawPages>, mem: &mut GuestMemory, s2: &mut GuestStage2) -> Engine {
    let verify = verify_image.is_some();
    let ram = RamLayout { base: mem.ipa_base(), size: mem.size() };
    let engine =
        Engine::new(spec, ram, shadows, verify_image, timer::ticks_to_ns(timer::now_ticks())).unwrap_or_else(|e| fatal(format_args!("starting sync: {e:?}")));
    protect_all(mem, s2);
    info!("sync: policy {spec}, verify {}, {} pages write-protected", if verify { "on" } else { "off" }, mem.size() / 4096);
    engine
}

/// Tracking on a device that has just taken the guest over at epoch
/// `committed`: guest RAM is the committed image (with `hashes`); epochs
/// continue from there, deltas only.
pub fn start_after_switch(
    spec: PolicySpec,
    shadows: Budget,
    hashes: PageHashes,
    committed: u64,
    mem: &mut GuestMemory,
    s2: &mut GuestStage2,
) -> Result<Engine, SyncError> {
    let ram = RamLayout { base: mem.ipa_base(), size: mem.size() };
    let engine = Engine::after_switch(spec, ram, shadows, hashes, committed, timer::ticks_to_ns(timer::now_ticks()))?;
    protect_all(mem, s2);
    Ok(engine)
}

fn protect_all(mem: &mut GuestMemory, s2: &mut GuestStage2) {
    if let Err(e) = mem.start_tracking() {
        fatal(format_args!("starting dirty tracking: {e:?}"));
    }
    s2.write_protect_range(mem.ipa_base(), mem.size());
}

/// The IPA of a stage-2 permission fault. HPFAR_EL2 is architecturally
/// valid for faults on a stage-1 walk, but not for every permission fault
/// (Linux KVM, `__get_fault_info`); there, translate FAR_EL2 through the
/// guest's stage 1 with `AT S1E1R` as KVM does. None: the guest's tables
/// changed under us; let it retry.
fn write_fault_ipa(da: &DataAbort) -> Option<u64> {
    let far = FAR_EL2.get();
    if da.s1ptw || da.fnv {
        return Some(((HPFAR_EL2.get() & 0x0000_0fff_ffff_fff0) << 8) | (far & 0xfff));
    }
    // The guest's PAR_EL1 is live state: keep it.
    let saved = PAR_EL1.get();
    // SAFETY: address translation of the guest's own virtual address
    // through its current stage-1 regime; only PAR_EL1 changes, restored below.
    unsafe { core::arch::asm!("at s1e1r, {}", "isb", in(reg) far, options(nostack)) };
    let par = PAR_EL1.get();
    PAR_EL1.set(saved);
    if par & 1 != 0 {
        return None;
    }
    Some((par & 0x0000_ffff_ffff_f000) | (far & 0xfff))
}

/// A write (or a cache maintenance that may change memory, or a stage-1
/// walk setting access/dirty bits) hit a write-protected page: mark it
/// dirty and give the page, and only it, write access for the rest of the
/// epoch. The guest retries the same instruction.
pub fn write_fault(vm: &mut Vm, da: &DataAbort) -> bool {
    let Some(engine) = vm.sync.as_mut() else { return false };
    let Some(ipa) = write_fault_ipa(da) else { return true };
    let ram = vboard::RAM_BASE..vboard::RAM_BASE + vm.mem.size();
    if !ram.contains(&ipa) {
        return false;
    }
    vm.stats.write_fault += 1;
    engine.note_write_fault();
    if vm.mem.mark_dirty(ipa) {
        // First write of the page since the cut: after a switch, its shadow
        // is made now, from the content the standbys hold.
        let page = (ipa - vboard::RAM_BASE) / 4096;
        if let Some(content) = vm.mem.page(page) {
            engine.seed_before_write(page, content);
        }
    }
    if let Some(s2) = STAGE2.lock().as_mut() {
        s2.make_writable(ipa);
    }
    true
}

/// Network work of the tick: frames both ways, sealed epochs out to the
/// standbys as their sockets take them, their replies in. Never waits.
fn pump(vm: &mut Vm, now_ms: u64) {
    crate::net::with(|n| {
        n.poll(now_ms);
        if let Some(e) = vm.sync.as_mut() {
            let mem = &vm.mem;
            e.pump(n, mem, &|p| mem.is_dirty_now(p), now_ms);
            n.poll(now_ms);
        }
    });
}

/// The hypervisor's tick: ask the policy whether to cut (the cut itself
/// happens as the trap returns, see `at_trap_exit`), note a standby's
/// switch request, re-arm.
pub fn tick(vm: &mut Vm) {
    let now = timer::ticks_to_ns(timer::now_ticks());
    pump(vm, now / 1_000_000);
    let dirty = vm.mem.dirty_now();
    if let Some(e) = vm.sync.as_mut() {
        if e.should_cut(now, dirty) {
            vm.cut_due = true;
        }
        if let Some(i) = e.peers_mut().and_then(|p| p.take_switch_request()) {
            vm.switch_to = Some(i);
        }
    }
    timer::arm_in(TICK_NS);
}

/// A byte the guest wrote to its console: when it ends the workload's
/// start line or its first progress line, cut an epoch there (see
/// `sync::workload_start`).
pub fn console_byte(vm: &mut Vm, b: u8) {
    let Some(engine) = vm.sync.as_mut() else { return };
    let Some(mark) = engine.workload_start.feed(b) else { return };
    vm.cut_due = true;
    vm.steady_mark |= mark == crate::sync::workload_start::Mark::Steady;
}

/// Cuts that were asked for during this trap happen here, as the guest is
/// about to resume: its registers in `frame` and the list registers are
/// then exactly what a standby resumes from (a console write already
/// stepped over, an interrupt already in a list register).
pub fn at_trap_exit(vm: &mut Vm, frame: &TrapFrame) {
    if core::mem::take(&mut vm.cut_due) {
        cut_epoch(vm, Some(frame));
        if core::mem::take(&mut vm.steady_mark) {
            info!("{}", sync_core::stats::STEADY_STATE_LOG);
        }
    }
}

/// Cuts the open epoch with the guest paused (we are in its trap): encode,
/// compress, seal, with the guest's vCPU and device state at the cut when
/// `frame` is given; re-protect the pages written in it; then, with verify,
/// check the local standby against guest RAM (not counted in the pause: a
/// real standby checks on its own device). Returns the epoch cut.
pub fn cut_epoch(vm: &mut Vm, frame: Option<&TrapFrame>) -> Option<u64> {
    let start = timer::now_ticks();
    let set = vm.mem.cut()?;
    let dirty: Vec<u64> = set.iter().collect();
    let sync_start = vm.sync_start_ticks;
    let msgs: Vec<Message> = frame
        .map(|f| {
            let mut cpu = Vec::new();
            super::vcpu::capture(f, &GIC).encode(&mut cpu);
            let mut devices = Vec::new();
            vm.platform.save(&mut devices);
            alloc::vec![Message::CpuState(cpu), Message::DeviceState(devices)]
        })
        .unwrap_or_default();
    let engine = vm.sync.as_mut()?;
    let mut st = match engine.cut(&vm.mem, &dirty, &msgs) {
        Ok(st) => st,
        Err(e) => {
            warn!("sync: epoch cut failed: {e:?}; tracking continues");
            engine.finish(&sync_core::stats::EpochStats::default(), timer::ticks_to_ns(timer::now_ticks()));
            return None;
        }
    };
    // The state sent with the epoch is kept (moved, not copied) for a
    // hand-over, where it becomes this device's standby state.
    vm.last_state = match <[Message; 2]>::try_from(msgs) {
        Ok([Message::CpuState(cpu), Message::DeviceState(devices)]) => Some(GuestState { epoch: st.epoch, cpu, devices }),
        _ => None,
    };
    if let Some(s2) = STAGE2.lock().as_mut() {
        s2.write_protect(vboard::RAM_BASE, reprotect_set(&dirty));
    }
    st.pause_us = timer::ticks_to_ns(timer::now_ticks() - start) / 1000;
    if engine.peers().is_some() {
        info!("digest epoch={} d={}", st.epoch, crate::sync::standby_node::hex(&engine.digest()));
    }
    st.at_ms = timer::ticks_to_ns(start.saturating_sub(sync_start)) / 1_000_000;
    info!("epoch {st}");
    match engine.verify(&vm.mem, st.epoch) {
        Ok(None) => {}
        Ok(Some(Verdict::Match)) => info!("verify epoch={} result=match", st.epoch),
        Ok(Some(Verdict::Mismatch { first_page, pages })) => {
            warn!("verify epoch={} result=mismatch pages={pages} first_ipa={:#x}", st.epoch, vboard::RAM_BASE + first_page * 4096)
        }
        Ok(Some(Verdict::NotCommitted)) => warn!("verify epoch={} result=not-committed", st.epoch),
        Err(e) => warn!("verify epoch={} failed: {e:?}", st.epoch),
    }
    engine.finish(&st, timer::ticks_to_ns(timer::now_ticks()));
    // Start sending at once rather than at the next tick.
    pump(vm, timer::ticks_to_ns(timer::now_ticks()) / 1_000_000);
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
pub fn finish(vm: &mut Vm) {
    if vm.sync.is_none() {
        return;
    }
    timer::stop();
    cut_epoch(vm, None);
    flush(vm);
    if let Some(e) = vm.sync.as_ref() {
        info!("sync totals {}", e.totals);
        // The active device's memory figure: the heap's high-water mark.
        info!("{}", crate::heap::usage());
        if e.verifying() {
            info!("verify checks={} mismatches={}", e.checks, e.mismatches);
        }
        if let Some(p) = e.peers() {
            for s in &p.list {
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
}

/// Before power-off: give the standbys the last epoch. A dead link cannot
/// hold the device up (it gives up after `STALL_MS` without a byte taken);
/// a slow one that keeps taking bytes (a standby catching up over
/// Bluetooth) is waited for, up to `FLUSH_MAX_MS`.
fn flush(vm: &mut Vm) {
    const STALL_MS: u64 = 15_000;
    const FLUSH_MAX_MS: u64 = 300_000;
    const FLUSH_CUT_MS: u64 = 200;
    let Some(e) = vm.sync.as_ref() else { return };
    if e.peers().is_none() {
        return;
    }
    let sent = |vm: &Vm| vm.sync.as_ref().and_then(|e| e.peers()).map_or(0, |p| p.list.iter().map(|s| s.bytes_sent).sum::<u64>());
    let start = now_ms();
    let (mut last_cut, mut last_sent, mut progress_at) = (start, sent(vm), start);
    let done = pump_until(vm, FLUSH_MAX_MS, |vm| {
        let now = now_ms();
        // A standby still catching up commits only at a cut: cut (empty
        // epochs) now and then until one finds that the rest fits its budget.
        let behind = vm.sync.as_ref().and_then(|e| e.peers()).is_some_and(|p| p.list.iter().any(|s| s.is_catching_up()));
        if behind && now - last_cut >= FLUSH_CUT_MS {
            last_cut = now;
            cut_epoch(vm, None);
        }
        if sent(vm) != last_sent {
            (last_sent, progress_at) = (sent(vm), now);
        }
        let all = vm.sync.as_ref().map(|e| e.all_acked()).unwrap_or(true);
        all || now - progress_at > STALL_MS
    }) && vm.sync.as_ref().map(|e| e.all_acked()).unwrap_or(true);
    info!("sync: flush at power-off {} after {} ms", if done { "complete" } else { "gave up" }, now_ms() - start);
}

fn now_ms() -> u64 {
    timer::ticks_to_ns(timer::now_ticks()) / 1_000_000
}

/// With the guest paused: moves network traffic (about every millisecond)
/// until `done` holds or `limit_ms` pass; true if it held.
pub fn pump_until(vm: &mut Vm, limit_ms: u64, mut done: impl FnMut(&mut Vm) -> bool) -> bool {
    let start = now_ms();
    loop {
        let now = now_ms();
        pump(vm, now);
        if done(vm) {
            return true;
        }
        if now - start > limit_ms {
            return false;
        }
        let until = timer::now_ticks() + timer::ns_to_ticks(1_000_000);
        while timer::now_ticks() < until {
            core::hint::spin_loop();
        }
    }
}
