//! Dirty tracking on aarch64: stage-2 write protection, the write-fault
//! path, and epoch cuts on the hypervisor's tick.
use aarch64_cpu::registers::*;
use alloc::vec::Vec;
use log::{info, warn};
use sync_core::policy::PolicySpec;
use sync_core::wire::RamLayout;

use super::boot::{fatal, STAGE2};
use super::esr::DataAbort;
use super::stage2_mem::GuestStage2;
use super::timer;
use crate::memory::{guest::GuestMemory, phys::PhysAllocator};
use crate::sync::engine::{Engine, Verdict};
use crate::sync::raw_pages::RawPages;
use crate::vm::Vm;
use crate::vplatform::board as vboard;

/// How often the policy is asked whether to cut (the hypervisor's tick).
pub const TICK_NS: u64 = 5_000_000;
/// Heap on top of guest RAM's size for the shadow store's bookkeeping.
const SYNC_HEAP_EXTRA: u64 = 32 << 20;

/// Turns tracking on before the guest's first instruction: every page
/// read-only, every later write seen. Epoch 1 sends the whole guest.
pub fn start(spec: PolicySpec, verify: bool, alloc: &mut PhysAllocator, mem: &mut GuestMemory, s2: &mut GuestStage2) -> Engine {
    let size = mem.size();
    // Shadows take up to guest RAM; with verify, the local standby stages a
    // whole epoch before it commits (up to guest RAM again, at epoch 1).
    let heap_size = size * if verify { 2 } else { 1 } + SYNC_HEAP_EXTRA;
    let heap = alloc.alloc(heap_size, 4096).unwrap_or_else(|e| fatal(format_args!("no room for the sync heap ({} MiB): {e:?}", heap_size >> 20)));
    crate::heap::add_region(heap as usize, heap_size as usize);
    let image = verify.then(|| {
        let at = alloc.alloc(size, 4096).unwrap_or_else(|e| fatal(format_args!("no room for the verify image ({} MiB): {e:?}", size >> 20)));
        // SAFETY: just allocated for the image alone; zeroed below (a
        // standby starts from the all-zero image of epoch 0).
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, size as usize) };
        // SAFETY: as above; page aligned, `size / 4096` pages.
        unsafe { RawPages::new(at as *mut u8, size / 4096) }
    });
    let ram = RamLayout { base: mem.ipa_base(), size };
    let engine = Engine::new(spec, ram, image, timer::ticks_to_ns(timer::now_ticks())).unwrap_or_else(|e| fatal(format_args!("starting sync: {e:?}")));
    if let Err(e) = mem.start_tracking() {
        fatal(format_args!("starting dirty tracking: {e:?}"));
    }
    let n = s2.write_protect_range(mem.ipa_base(), size);
    info!("sync: policy {spec}, verify {}, {} pages write-protected", if verify { "on" } else { "off" }, n);
    engine
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
    vm.mem.mark_dirty(ipa);
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
            e.pump(n, now_ms);
            n.poll(now_ms);
        }
    });
}

/// The hypervisor's tick: ask the policy, cut when it says so, re-arm.
pub fn tick(vm: &mut Vm) {
    let now = timer::ticks_to_ns(timer::now_ticks());
    pump(vm, now / 1_000_000);
    let dirty = vm.mem.dirty_now();
    let cut = vm.sync.as_mut().map(|e| e.should_cut(now, dirty)).unwrap_or(false);
    if cut {
        cut_epoch(vm);
    }
    timer::arm_in(TICK_NS);
}

/// A byte the guest wrote to its console: when it ends the workload's
/// start line or its first progress line, cut an epoch there (see
/// `sync::workload_start`).
pub fn console_byte(vm: &mut Vm, b: u8) {
    let Some(engine) = vm.sync.as_mut() else { return };
    let Some(mark) = engine.workload_start.feed(b) else { return };
    cut_epoch(vm);
    if mark == crate::sync::workload_start::Mark::Steady {
        info!("{}", sync_core::stats::STEADY_STATE_LOG);
    }
}

/// Cuts the open epoch with the guest paused (we are in its trap): encode,
/// compress, seal; re-protect the pages written in it; then, with verify,
/// check the local standby against guest RAM (not counted in the pause: a
/// real standby checks on its own device).
pub fn cut_epoch(vm: &mut Vm) {
    let start = timer::now_ticks();
    let Some(set) = vm.mem.cut() else { return };
    let dirty: Vec<u64> = set.iter().collect();
    let sync_start = vm.sync_start_ticks;
    let Some(engine) = vm.sync.as_mut() else { return };
    let mut st = match engine.cut(&vm.mem, &dirty) {
        Ok(st) => st,
        Err(e) => {
            warn!("sync: epoch cut failed: {e:?}; tracking continues");
            engine.finish(&sync_core::stats::EpochStats::default(), timer::ticks_to_ns(timer::now_ticks()));
            return;
        }
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
    cut_epoch(vm);
    flush(vm);
    if let Some(e) = vm.sync.as_ref() {
        info!("sync totals {}", e.totals);
        if e.verifying() {
            info!("verify checks={} mismatches={}", e.checks, e.mismatches);
        }
        if let Some(p) = e.peers() {
            for s in &p.list {
                info!(
                    "peer standby={} addr={}:{} acked={} reconnects={} full_resyncs={} bytes_sent={}",
                    s.id, s.addr.ip, s.addr.port, s.acked, s.reconnects, s.full_resyncs, s.bytes_sent
                );
            }
        }
    }
}

/// Before power-off: give the standbys the last epoch (up to a bound, so a
/// dead link cannot hold the device up).
fn flush(vm: &mut Vm) {
    const FLUSH_MS: u64 = 15_000;
    let Some(e) = vm.sync.as_ref() else { return };
    if e.peers().is_none() {
        return;
    }
    let start = timer::ticks_to_ns(timer::now_ticks()) / 1_000_000;
    loop {
        let now = timer::ticks_to_ns(timer::now_ticks()) / 1_000_000;
        pump(vm, now);
        let done = vm.sync.as_ref().map(|e| e.all_acked()).unwrap_or(true);
        if done || now - start > FLUSH_MS {
            info!("sync: flush at power-off {} after {} ms", if done { "complete" } else { "gave up" }, now - start);
            return;
        }
        // About a millisecond between polls.
        let until = timer::now_ticks() + timer::ns_to_ticks(1_000_000);
        while timer::now_ticks() < until {
            core::hint::spin_loop();
        }
    }
}
