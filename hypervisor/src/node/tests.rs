//! The node's roles on the fake architecture: a failing cut, a switch
//! there and back, a switch whose target never commits, a failover.
extern crate std;

use super::fake::{self, active_vm, expected_ram, World};
use super::{Node, Stop};
use crate::net::test_link;

pub(super) const PAGES: u64 = 256;

/// Guest RAM of node `j` (its running guest's or its standby image).
pub(super) fn ram_of(w: &World, j: usize) -> std::vec::Vec<u8> {
    let n = w.node(j);
    let n = n.borrow();
    let m = &n.parts.machine;
    // SAFETY: the leaked backing, `mem_bytes` long; read while no step runs.
    unsafe { core::slice::from_raw_parts(m.backing, m.config.mem_bytes as usize) }.to_vec()
}

/// Active node 0 with standby node 1 over an in-memory cable; the guest
/// program powers off after `end` writes.
fn pair(end: u64) -> std::rc::Rc<World> {
    pair_with_cable(end).0
}

/// `pair`, and a handle on node 0's end of the cable.
pub(super) fn pair_with_cable(end: u64) -> (std::rc::Rc<World>, test_link::Link) {
    let w = World::new();
    let (la, lb) = test_link::pair();
    let cable = la.clone_end();
    let mut pa = w.parts(fake::config(0, false, Some(1), false), Some(la), end);
    let vm = active_vm(&mut pa, false);
    w.add(Node::active(pa, vm));
    let pb = w.parts(fake::config(1, true, Some(0), false), Some(lb), end);
    w.add(Node::fresh_standby(pb).expect("standby starts"));
    (w, cable)
}

#[test]
fn a_failed_cut_keeps_its_pages_dirty_and_protected_and_verify_finds_no_divergence() {
    let w = World::new();
    let mut parts = w.parts(fake::config(0, false, None, true), None, 40_000);
    let vm = active_vm(&mut parts, true);
    let a = w.add(Node::active(parts, vm));
    // Some epochs, then a cut that fails, then more writes to the same pages.
    w.run_until(100_000, "three epochs", |w| w.node(a).borrow().vm().unwrap().sync.as_ref().unwrap().checks >= 3);
    let failed_at = {
        let n = w.node(a);
        let mut n = n.borrow_mut();
        let super::Role::Active(vm) = &mut n.role else { unreachable!() };
        vm.sync.as_mut().unwrap().fail_next_cut = true;
        vm.sync.as_ref().unwrap().checks
    };
    // The failed cut: its pages were writable; they must be read-only again.
    w.run_until(100_000, "the failing cut", |w| !w.node(a).borrow().vm().unwrap().sync.as_ref().unwrap().fail_next_cut);
    let dirty_after_failure = w.node(a).borrow_mut().role_vm_dirty();
    assert!(dirty_after_failure > 0, "the failed epoch's pages are dirty again");
    let writable = w.stage2s.borrow()[a].borrow().iter().filter(|&&x| x).count();
    assert_eq!(writable, 0, "after a failed cut every page of the epoch is protected again");
    w.run_until(1_000_000, "power-off", |w| w.stopped.borrow()[a].is_some());
    assert_eq!(w.stopped.borrow()[a], Some(Stop::PowerOff));
    let n = w.node(a);
    let n = n.borrow();
    let e = n.vm().unwrap().sync.as_ref().unwrap();
    assert!(e.checks > failed_at + 3, "epochs went on after the failure ({} checks)", e.checks);
    assert_eq!(e.mismatches, 0, "the local standby diverged after a failed cut");
    assert_eq!(ram_of(&w, a), expected_ram(PAGES, 40_000));
}

impl super::fake::FakeNode {
    /// Pages dirty in the open epoch.
    fn role_vm_dirty(&mut self) -> u64 {
        let super::Role::Active(vm) = &mut self.role else { return 0 };
        vm.mem.dirty_now()
    }
}

#[test]
fn a_switch_hands_the_guest_over_and_back_and_it_runs_on_where_it_was() {
    let w = pair(150_000);
    w.run_until(100_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    let first = w.runs(0).unwrap();
    w.type_on(1, b"\x1dswitch\r");
    w.run_until(100_000, "switch to 1", |w| w.is_active(1) && !w.is_active(0));
    // A switch is a take-over: the same guest, the next term; the old
    // active device holds the final epoch of the term before.
    let second = w.runs(1).unwrap();
    assert_eq!((second.2, sync_core::fence::term_count(second.3)), (first.2, 2));
    assert_eq!(w.held(0).map(|h| (h.2, h.3)), Some((first.2, first.3)));
    // The guest resumed at the final epoch's position, and node 0 holds
    // that epoch's image.
    let (pc1, committed0) = (w.pc(1), w.committed(0).unwrap());
    assert!(pc1 > 0);
    assert_eq!(ram_of(&w, 0), expected_ram(PAGES, pc1), "the old active device's image is the final epoch");
    w.run_until(100_000, "node 0 in step again", |w| w.committed(0).is_some_and(|e| e >= committed0 + 2));
    assert_eq!(w.held(0).unwrap().3, second.3, "node 0 commits the new term's epochs (deltas from the final epoch)");
    assert!(w.pc(1) > pc1, "the guest runs on at node 1");
    w.type_on(0, b"\x1dswitch\r");
    w.run_until(100_000, "switch back to 0", |w| w.is_active(0) && !w.is_active(1));
    assert_eq!(sync_core::fence::term_count(w.runs(0).unwrap().3), 3);
    w.run_until(1_000_000, "power-off", |w| w.stopped.borrow()[0].is_some());
    assert_eq!(w.stopped.borrow()[0], Some(Stop::PowerOff));
    assert_eq!(ram_of(&w, 0), expected_ram(PAGES, 150_000), "the guest's writes, none lost or doubled across two switches");
    // Node 1's image is the last epoch flushed at power-off.
    let n1 = w.node(1);
    let n1 = n1.borrow();
    let s = n1.standby().unwrap();
    let n0 = w.node(0);
    let n0 = n0.borrow();
    assert_eq!(s.node.applier.digest(), n0.vm().unwrap().sync.as_ref().unwrap().digest());
    assert_eq!(sync_core::digest::content_digest(s.node.applier.image()), sync_core::digest::content_digest(&n0.vm().unwrap().mem));
}

#[test]
fn a_switch_whose_target_never_commits_leaves_the_guest_running_where_it_was() {
    let (w, cable) = pair_with_cable(2_000_000);
    w.run_until(100_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    // Nothing from the active device reaches the target any more (a
    // one-way partition): the request goes out, the final epoch never
    // arrives.
    cable.cut_outgoing(true);
    w.type_on(1, b"\x1dswitch\r");
    let before = w.node(1).borrow().standby().unwrap().node.bytes_received;
    w.run_until(10_000, "the request is read", |w| w.consoles.borrow()[1].borrow().is_empty());
    let pc = w.pc(0);
    let t0 = w.clock.get();
    w.run_until(1_000_000, "4 s pass", |w| w.clock.get() - t0 >= 4_000_000_000);
    assert!(w.is_active(0), "the guest stays on the device that had it");
    // The guest was paused while the hand-over waited 3 s for the commit:
    // it ran (16 writes a 50 us run at most) for at most the rest.
    let ran_ns = w.clock.get() - t0 - 3_000_000_000;
    assert!(w.pc(0) - pc <= ran_ns / 50_000 * 16, "the guest ran on while the hand-over waited");
    let pc = w.pc(0);
    w.run_until(1_000_000, "the guest runs on", |w| w.pc(0) > pc + 1000);
    cable.cut_outgoing(false);
    // The standby's request times out; it stays a standby and keeps up.
    let committed = w.committed(1).unwrap();
    w.run_until(1_000_000, "the standby in step again", |w| w.committed(1).is_some_and(|e| e > committed + 2));
    assert!(!w.is_active(1));
    assert!(w.node(1).borrow().standby().unwrap().node.bytes_received > before);
}

#[test]
fn a_failover_resumes_from_the_last_committed_epoch() {
    let w = pair(2_000_000);
    w.run_until(100_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 4));
    // The active device dies.
    w.frozen.borrow_mut()[0] = true;
    let committed = w.committed(1).unwrap();
    let image = ram_of(&w, 1);
    w.type_on(1, b"\x1dfailover\r");
    w.run_until(10_000, "failover", |w| w.is_active(1));
    let pc = w.pc(1);
    assert_eq!(image, expected_ram(PAGES, pc), "epoch {committed}'s image is the program's state at its cut");
    w.run_until(100_000, "the guest runs on", |w| w.pc(1) > pc + 1000);
}

#[test]
fn a_standby_refuses_a_take_over_without_state_and_stays_a_standby() {
    let w = pair(2_000_000);
    // Nothing committed yet: a failover has no vCPU state to resume.
    w.frozen.borrow_mut()[0] = true;
    w.type_on(1, b"\x1dfailover\r");
    w.run_until(1_000, "the command is read", |w| w.consoles.borrow()[1].borrow().is_empty());
    for _ in 0..10 {
        w.step_node(1);
    }
    assert!(!w.is_active(1), "a guest without its vCPU state must not run");
    assert_eq!(w.stopped.borrow()[1], None, "the standby keeps serving");
}

#[test]
fn without_randomness_sync_refuses_to_start_and_the_guest_still_runs() {
    let w = World::new();
    let (la, lb) = test_link::pair();
    let mut pa = w.parts(fake::config(0, false, Some(1), false), Some(la), 2_000_000);
    pa.rng = crate::rng::Randomness::none();
    let vm = active_vm(&mut pa, false);
    assert!(vm.sync.as_ref().is_some_and(|e| e.peers().is_none()), "no peers may be connected without randomness");
    w.add(Node::active(pa, vm));
    let mut pb = w.parts(fake::config(1, true, Some(0), false), Some(lb), 2_000_000);
    pb.rng = crate::rng::Randomness::none();
    let refused = Node::fresh_standby(pb).err();
    assert_eq!(refused, Some(super::standby::StandbyError::NoRandomness(crate::rng::RngError::NoSource)));
    w.run_until(100_000, "the guest runs on", |w| w.pc(0) > 5_000);
}

/// Three devices on one hub: node 0 runs the guest, nodes 1 and 2 are
/// standbys that can take it over; each names the other two as peers.
/// Returns a handle on each end of the hub.
pub(super) fn trio(end: u64) -> (std::rc::Rc<World>, std::vec::Vec<test_link::Link>) {
    let w = World::new();
    let ends = test_link::hub(3);
    let handles = ends.iter().map(|e| e.clone_end()).collect();
    for (me, link) in ends.into_iter().enumerate() {
        let peers: std::vec::Vec<usize> = (0..3).filter(|&j| j != me).collect();
        let mut parts = w.parts(fake::config_with(me, me != 0, &peers, false), Some(link), end);
        let node = if me == 0 {
            let vm = active_vm(&mut parts, false);
            Node::active(parts, vm)
        } else {
            Node::fresh_standby(parts).expect("standby starts")
        };
        w.add(node);
    }
    (w, handles)
}

pub(super) fn actives(w: &World) -> usize {
    (0..w.nodes.borrow().len()).filter(|&j| !w.frozen.borrow()[j] && w.is_active(j)).count()
}

/// Partition A (node 0) from B and C, fail over to B, heal: within
/// seconds exactly one device runs the guest, A (which ran on, unaware)
/// has stopped it and is a standby of B's term, and the committed images
/// agree.
#[test]
fn after_a_partition_and_a_failover_the_heal_leaves_one_guest_and_the_old_active_follows() {
    use sync_core::fence::term_count;
    let (w, ends) = trio(u64::MAX);
    w.run_until(200_000, "both standbys commit", |w| w.committed(1).is_some_and(|e| e >= 3) && w.committed(2).is_some_and(|e| e >= 3));
    let first = w.runs(0).unwrap();
    assert_eq!(term_count(first.3), 1, "a guest's first boot is its first term");
    ends[0].isolate(true);
    w.type_on(1, b"\x1dfailover\r");
    w.run_until(100_000, "the failover", |w| w.is_active(1));
    let b = w.runs(1).unwrap();
    assert_eq!((b.2, term_count(b.3)), (first.2, 2), "the same guest, a new term");
    // B syncs C under its term; A runs on, cut off (as a real one would).
    w.run_until(200_000, "C follows B's term", |w| w.held(2).is_some_and(|h| h.3 == b.3 && h.0 > b.0));
    let pc_a = w.pc(0);
    let t0 = w.clock.get();
    w.run_until(1_000_000, "1 s", |w| w.clock.get() - t0 >= 1_000_000_000);
    assert!(w.is_active(0) && w.pc(0) > pc_a, "A ran on while cut off");
    assert_eq!(actives(&w), 2);
    // Heal.
    ends[0].isolate(false);
    let t1 = w.clock.get();
    w.run_until(1_000_000, "one guest", |w| actives(w) == 1);
    let took_ms = (w.clock.get() - t1) / 1_000_000;
    assert!(took_ms < 5_000, "two guests for {took_ms} ms after the heal");
    assert!(w.is_active(1) && !w.is_active(0) && !w.is_active(2), "B keeps the guest");
    assert!(fake::logged("fence: term 2 of this guest runs on another device") >= 1);
    // A follows B's term, and never runs the guest again.
    let pc_a = w.pc(0);
    w.run_until(1_000_000, "A commits B's term", |w| w.held(0).is_some_and(|h| h.3 == b.3 && h.0 > 0));
    let t2 = w.clock.get();
    let mut agreed = false;
    w.run_until(2_000_000, "3 s more", |w| {
        assert_eq!(actives(w), 1, "a second guest after the heal");
        if let (Some(a), Some(c), Some(run)) = (w.held(0), w.held(2), w.runs(1)) {
            agreed |= a.0 == run.0 && c.0 == run.0 && a.1 == run.1 && c.1 == run.1;
        }
        w.clock.get() - t2 >= 3_000_000_000
    });
    assert_eq!(w.pc(0), pc_a, "A's guest ran again");
    assert!(agreed, "A's and C's committed images never agreed with B's");
    assert_eq!(w.stopped.borrow().iter().filter(|s| s.is_some()).count(), 0);
}

/// The active device reboots (a new guest from epoch 1) while its standby
/// holds epoch 5+ of the old one: the standby keeps its image and says
/// why; once its user allows it (console `resync`) it resyncs whole and
/// follows the new guest.
#[test]
fn a_standby_keeps_its_image_from_a_rebooted_active_device_until_its_user_allows() {
    let w = World::new();
    let (la, lb) = test_link::pair();
    let cable_a = la.clone_end();
    let mut pa = w.parts(fake::config(0, false, Some(1), false), Some(la), u64::MAX);
    let vm = active_vm(&mut pa, false);
    w.add(Node::active(pa, vm));
    let pb = w.parts(fake::config(1, true, Some(0), false), Some(lb), u64::MAX);
    w.add(Node::fresh_standby(pb).expect("standby starts"));
    w.run_until(200_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 5));
    let old = w.runs(0).unwrap();
    let kept = w.held(1).unwrap();
    // Device 0 reboots: a new guest on the same address and cable end.
    w.frozen.borrow_mut()[0] = true;
    let mut pa2 = w.parts(fake::config(0, false, Some(1), false), Some(cable_a.clone_end()), u64::MAX);
    let vm = active_vm(&mut pa2, false);
    let a2 = w.add(Node::active(pa2, vm));
    assert_ne!(w.runs(a2).unwrap().2, old.2, "a new boot, a new lineage");
    let t0 = w.clock.get();
    w.run_until(2_000_000, "3 s", |w| w.clock.get() - t0 >= 3_000_000_000);
    assert!(w.runs(a2).unwrap().0 > 10, "the new guest runs and cuts epochs");
    assert_eq!(w.held(1).unwrap(), kept, "the standby keeps its committed image");
    assert!(fake::logged("standby: keeping the image of epoch") >= 1, "and says why");
    // The user's explicit choice.
    w.type_on(1, b"\x1dresync\r");
    w.run_until(2_000_000, "the standby converges on the new guest", |w| {
        let (Some(h), Some(r)) = (w.held(1), w.runs(a2)) else { return false };
        h.2 == r.2 && h.0 == r.0 && h.1 == r.1
    });
    assert!(fake::logged("as allowed") >= 1);
    // And it follows on.
    let e = w.held(1).unwrap().0;
    w.run_until(1_000_000, "more epochs", |w| w.held(1).is_some_and(|h| h.0 > e + 3));
}

/// Two devices only: partition, fail over to B, heal. Neither is a
/// standby then; they meet on each other's sync port (the active device
/// listens too) and the lower term stops: A follows B's.
#[test]
fn two_devices_that_both_run_the_guest_after_a_partition_meet_and_the_lower_term_stops() {
    let (w, cable) = pair_with_cable(u64::MAX);
    w.run_until(200_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    cable.isolate(true);
    w.type_on(1, b"\x1dfailover\r");
    w.run_until(100_000, "the failover", |w| w.is_active(1));
    let b = w.runs(1).unwrap();
    let t0 = w.clock.get();
    w.run_until(1_000_000, "1 s", |w| w.clock.get() - t0 >= 1_000_000_000);
    assert_eq!(actives(&w), 2, "both run the guest while cut off");
    cable.isolate(false);
    let t1 = w.clock.get();
    w.run_until(1_000_000, "one guest", |w| actives(w) == 1);
    let took_ms = (w.clock.get() - t1) / 1_000_000;
    assert!(took_ms < 5_000, "two guests for {took_ms} ms after the heal");
    assert!(w.is_active(1), "the higher term keeps the guest");
    let pc_a = w.pc(0);
    w.run_until(1_000_000, "A commits B's term", |w| w.held(0).is_some_and(|h| h.3 == b.3 && h.0 > 0));
    let t2 = w.clock.get();
    let mut agreed = false;
    w.run_until(2_000_000, "3 s more", |w| {
        assert_eq!(actives(w), 1, "a second guest after the heal");
        if let (Some(a), Some(run)) = (w.held(0), w.runs(1)) {
            agreed |= a.0 == run.0 && a.1 == run.1;
        }
        w.clock.get() - t2 >= 3_000_000_000
    });
    assert_eq!(w.pc(0), pc_a, "A's guest ran again");
    assert!(agreed, "A's committed image never agreed with B's");
}
