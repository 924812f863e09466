//! The handover's promises on the fake architecture: the source keeps the
//! guest (paused) until the target answers SwitchDone, so a lost message
//! leaves the guest running on one device (or, in the one window the
//! protocol cannot close, on two until they meet, when fencing leaves the
//! target alone), never on none; a switch waits for a target that is
//! behind, and for an active device that has not connected yet.
extern crate std;

use alloc::rc::Rc;
use core::cell::Cell;
use sync_core::fence::term_count;

use super::fake::{self, active_vm, expected_ram, logged, World};
use super::handover::ANSWER_WAIT_MS;
use super::tests::{actives, pair_with_cable, ram_of, trio, PAGES};
use super::Node;
use crate::net::test_link::{self, Link};

/// The source's log line as SwitchDone goes out.
const SWITCH_DONE_SENT: &str = "switch: SwitchDone epoch=";
/// The source's log line when the target did not answer.
const UNANSWERED: &str = "did not answer SwitchDone";

/// Active node 0 and standby node 1 over a cable; a handle on each end.
fn pair_ends(end: u64) -> (Rc<World>, Link, Link) {
    let w = World::new();
    let (la, lb) = test_link::pair();
    let (a, b) = (la.clone_end(), lb.clone_end());
    let mut pa = w.parts(fake::config(0, false, Some(1), false), Some(la), end);
    let vm = active_vm(&mut pa, false);
    w.add(Node::active(pa, vm));
    let pb = w.parts(fake::config(1, true, Some(0), false), Some(lb), end);
    w.add(Node::fresh_standby(pb).expect("standby starts"));
    (w, a, b)
}

/// Runs for `ms` of simulated time, checking `each` every round.
fn run_for(w: &World, ms: u64, mut each: impl FnMut(&World)) {
    let t0 = w.clock.get();
    w.run_until(5_000_000, "time passes", |w| {
        each(w);
        w.clock.get() - t0 >= ms * 1_000_000
    });
}

/// The clock (ns) when SwitchDone first went out, once it did.
fn when_switch_done(w: &World, at: &Cell<Option<u64>>) -> Option<u64> {
    if at.get().is_none() && logged(SWITCH_DONE_SENT) >= 1 {
        at.set(Some(w.clock.get()));
    }
    at.get()
}

/// SwitchDone is lost and the link from source to target stays down past
/// the source's wait: the source resumes the guest (it never received an
/// answer) and the target, which never received SwitchDone, stays a
/// standby; its request ends with the connection it came on. Before, the
/// source became a standby after 3 s unconfirmed: no device ran the guest.
#[test]
fn a_lost_switch_done_leaves_the_guest_running_on_the_source_alone() {
    let (w, a, _b) = pair_ends(u64::MAX);
    w.run_until(200_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    let (cut, at) = (a.clone_end(), Rc::new(Cell::new(None)));
    let at2 = at.clone();
    w.set_watcher(move |w| {
        if at2.get().is_none() && when_switch_done(w, &at2).is_some() {
            cut.cut_outgoing(true);
            cut.lose_in_flight(1);
        }
    });
    w.type_on(1, b"\x1dswitch\r");
    w.run_until(2_000_000, "the source gives up", |_| logged(UNANSWERED) >= 1);
    let waited_ms = (w.clock.get() - at.get().unwrap()) / 1_000_000;
    assert!(waited_ms >= ANSWER_WAIT_MS, "the source resumed after {waited_ms} ms");
    assert!(w.is_active(0) && !w.is_active(1), "the guest runs on the source");
    a.cut_outgoing(false);
    let pc = w.pc(0);
    let committed = w.committed(1).unwrap();
    run_for(&w, 4_000, |w| assert_eq!(actives(w), 1, "two guests, or none"));
    assert!(w.is_active(0) && w.pc(0) > pc + 1000, "the guest ran on at the source");
    assert!(w.committed(1).unwrap() > committed, "the target follows the source again");
    assert!(logged("the connection the request was sent on ended") >= 1, "the target's request outlived its connection");
}

/// SwitchDone is lost for half a second: TCP sends it again (its
/// retransmission timer, 1 s at least) while the source waits, and the
/// switch completes with the source's guest paused throughout.
#[test]
fn a_switch_done_lost_for_half_a_second_is_retransmitted_and_the_switch_completes() {
    let (w, a, _b) = pair_ends(u64::MAX);
    w.run_until(200_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    let (cut, at) = (a.clone_end(), Rc::new(Cell::new(None)));
    let at2 = at.clone();
    w.set_watcher(move |w| {
        let first = at2.get().is_none();
        if let Some(t) = when_switch_done(w, &at2) {
            if first {
                cut.cut_outgoing(true);
                cut.lose_in_flight(1);
            } else if w.clock.get() - t >= 500_000_000 {
                cut.cut_outgoing(false);
            }
        }
    });
    w.type_on(1, b"\x1dswitch\r");
    w.run_until(2_000_000, "the switch", |w| w.is_active(1) && !w.is_active(0));
    let took_ms = (w.clock.get() - at.get().unwrap()) / 1_000_000;
    assert!((500..ANSWER_WAIT_MS).contains(&took_ms), "the switch completed {took_ms} ms after SwitchDone");
    assert_eq!(logged(UNANSWERED), 0);
    assert!(logged("answered: it runs the guest from epoch") >= 1, "the source left on the target's SwitchTaken");
    assert_eq!(ram_of(&w, 0), expected_ram(PAGES, w.pc(1)), "the guest resumed at the final epoch");
    run_for(&w, 2_000, |w| assert_eq!(actives(w), 1));
}

/// The target took the guest over but its SwitchTaken (and FIN) were lost:
/// its new term, proven when it connects to the source's sync port, ends
/// the source's wait; the source becomes its standby.
#[test]
fn a_lost_answer_is_made_good_by_the_targets_new_term() {
    let (w, _a, b) = pair_ends(u64::MAX);
    w.run_until(200_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    let first = w.runs(0).unwrap();
    let (cut, at) = (b.clone_end(), Rc::new(Cell::new(None)));
    let (at2, healed) = (at.clone(), Cell::new(false));
    w.set_watcher(move |w| {
        let first = at2.get().is_none();
        if when_switch_done(w, &at2).is_some() {
            if first {
                cut.cut_outgoing(true);
            } else if !healed.get() && logged("switch: in epoch=") >= 1 {
                // The target runs the guest; its answer is lost.
                healed.set(true);
                cut.cut_outgoing(false);
            }
        }
    });
    w.type_on(1, b"\x1dswitch\r");
    w.run_until(2_000_000, "the switch", |w| w.is_active(1) && !w.is_active(0));
    let took_ms = (w.clock.get() - at.get().unwrap()) / 1_000_000;
    assert!(took_ms < ANSWER_WAIT_MS, "the source waited {took_ms} ms");
    assert!(logged("proven here") >= 1, "the source left without the answer or the target's term");
    assert_eq!(logged("answered: it runs the guest"), 0, "the answer was to be lost");
    let b_term = w.runs(1).unwrap().3;
    assert_eq!(term_count(b_term), 2);
    run_for(&w, 2_000, |w| assert_eq!(actives(w), 1));
    // The source follows the target's term from the final epoch on.
    w.run_until(1_000_000, "the source follows", |w| w.held(0).is_some_and(|h| h.3 == b_term));
    assert_eq!(w.held(0).unwrap().2, first.2);
}

/// The one window the protocol cannot close: the target runs the guest,
/// and neither its answer nor its term reaches the source within the
/// wait, so the source resumes too. Two devices run the guest until they
/// meet; then fencing stops the lower term (the source's) and the target
/// runs it alone, the source its standby.
#[test]
fn a_lost_answer_leaves_two_guests_until_they_meet_and_then_the_target_alone() {
    let (w, _a, b) = pair_ends(u64::MAX);
    w.run_until(200_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    let cut = b.clone_end();
    let at = Rc::new(Cell::new(None));
    w.set_watcher(move |w| {
        if at.get().is_none() && when_switch_done(w, &at).is_some() {
            cut.cut_outgoing(true);
        }
    });
    w.type_on(1, b"\x1dswitch\r");
    w.run_until(2_000_000, "the source gives up", |_| logged(UNANSWERED) >= 1);
    assert!(w.is_active(1), "the target took the guest over");
    run_for(&w, 1_000, |w| assert_eq!(actives(w), 2));
    b.cut_outgoing(false);
    let t = w.clock.get();
    w.run_until(2_000_000, "one guest", |w| actives(w) == 1);
    let took_ms = (w.clock.get() - t) / 1_000_000;
    assert!(took_ms < 5_000, "two guests for {took_ms} ms after they could meet");
    assert!(w.is_active(1) && !w.is_active(0), "the target's (higher) term keeps the guest");
    let b_term = w.runs(1).unwrap().3;
    w.run_until(1_000_000, "the source follows the target", |w| w.held(0).is_some_and(|h| h.3 == b_term && h.0 > 0));
    let pc = w.pc(0);
    run_for(&w, 2_000, |w| assert_eq!(actives(w), 1));
    assert_eq!(w.pc(0), pc, "the source ran the guest again");
}

/// The target accepts the request (its committed state checks out) but
/// cannot load the state when SwitchDone comes: it stays a standby and
/// sends no answer, so the source resumes the guest. Before, the source
/// became a standby too: no device ran the guest.
#[test]
fn a_target_that_cannot_take_over_leaves_the_guest_on_the_source() {
    let (w, _a, _b) = pair_ends(u64::MAX);
    w.run_until(200_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    w.node(1).borrow_mut().parts.arch.refuse_restore = true;
    w.type_on(1, b"\x1dswitch\r");
    w.run_until(2_000_000, "the source gives up", |_| logged(UNANSWERED) >= 1);
    assert!(logged("cannot take the guest over here") >= 1);
    assert!(w.is_active(0) && !w.is_active(1), "the guest runs on the source");
    assert_eq!(w.stopped.borrow()[1], None, "the target serves on as a standby");
    let (pc, committed) = (w.pc(0), w.committed(1).unwrap());
    run_for(&w, 3_000, |w| assert_eq!(actives(w), 1));
    assert!(w.pc(0) > pc + 1000 && w.committed(1).unwrap() > committed, "the guest runs on and the target follows");
}

/// Three devices: the target's answer and its connections to the source
/// are lost (the link from target to source is down), but the third
/// device follows the target's term and, when the source reconnects,
/// tells it so with a sealed Fenced: the source leaves the guest to the
/// target well before its wait ends. Before, it waited 3 s unconfirmed.
#[test]
fn with_three_devices_a_lost_answer_is_made_good_by_the_third_devices_fenced() {
    let (w, ends) = trio(u64::MAX);
    w.run_until(300_000, "both standbys commit", |w| w.committed(1).is_some_and(|e| e >= 3) && w.committed(2).is_some_and(|e| e >= 3));
    let (cut, at) = (ends[1].clone_end(), Rc::new(Cell::new(None)));
    let at2 = at.clone();
    w.set_watcher(move |w| {
        if at2.get().is_none() && when_switch_done(w, &at2).is_some() {
            cut.cut_toward(0, true);
        }
    });
    w.type_on(1, b"\x1dswitch\r");
    w.run_until(2_000_000, "the switch", |w| w.is_active(1) && !w.is_active(0));
    let took_ms = (w.clock.get() - at.get().unwrap()) / 1_000_000;
    assert!(took_ms < ANSWER_WAIT_MS, "the source waited {took_ms} ms");
    assert!(logged("proven here") >= 1);
    assert_eq!(logged("answered: it runs the guest"), 0, "the answer was to be lost");
    let b_term = w.runs(1).unwrap().3;
    assert_eq!(w.held(2).map(|h| h.3), Some(b_term), "the third device follows the target");
    run_for(&w, 2_000, |w| assert_eq!(actives(w), 1));
    assert!(w.is_active(1));
}

/// Right after a switch the new active device has not connected to the old
/// one yet: a switch back asked for then waits for the connection and
/// completes. Before, it failed at once ("no session with an active
/// device", as `cargo xtask demo --devices 2 --link wifi --switch-at 10,20`
/// showed).
#[test]
fn a_switch_back_asked_for_before_the_new_active_device_connects_waits_for_it() {
    let (w, _a, _b) = pair_ends(u64::MAX);
    w.run_until(200_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    w.type_on(1, b"\x1dswitch\r");
    w.run_until(2_000_000, "the switch", |w| w.is_active(1) && !w.is_active(0));
    assert_eq!(w.node(0).borrow().standby().unwrap().node.served(), None, "the new active device is connected already");
    w.type_on(0, b"\x1dswitch\r");
    w.run_until(2_000_000, "the switch back", |w| w.is_active(0) && !w.is_active(1));
    assert!(logged("no active device connected yet; the request waits") >= 1);
    assert_eq!(logged("switch: failed"), 0);
    assert_eq!(term_count(w.runs(0).unwrap().3), 3);
    run_for(&w, 1_000, |w| assert_eq!(actives(w), 1));
}

/// A switch asked for while no active device can connect (the link from
/// it is down) waits its 6 s, then fails and says why; the guest stays
/// where it runs.
#[test]
fn a_switch_asked_for_with_no_active_device_reachable_fails_after_its_wait() {
    let (w, _a, b) = pair_ends(u64::MAX);
    w.run_until(200_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    w.type_on(1, b"\x1dswitch\r");
    w.run_until(2_000_000, "the switch", |w| w.is_active(1) && !w.is_active(0));
    // The new active device cannot reach the old one.
    b.cut_outgoing(true);
    w.type_on(0, b"\x1dswitch\r");
    const WHY: &str = "no active device connected within 6000 ms (the link is down)";
    run_for(&w, 5_000, |_| assert_eq!(logged(WHY), 0, "the request gave up before its wait"));
    assert_eq!(logged("switch: failed"), 0);
    run_for(&w, 1_500, |_| {});
    assert_eq!(logged(WHY), 1);
    assert!(w.is_active(1) && !w.is_active(0), "the guest stays where it runs");
    // The link comes back: the old active device follows again.
    b.cut_outgoing(false);
    let b_term = w.runs(1).unwrap().3;
    w.run_until(1_000_000, "the old active device follows", |w| w.held(0).is_some_and(|h| h.3 == b_term));
    assert!(w.is_active(1));
}
/// The target is behind (here: nothing reached it for a while, then its
/// device is busy) when it asks: the source holds the request and the
/// guest runs on there, longer than the handover's own waits, until the
/// target is in step; then the switch completes with a small final epoch.
#[test]
fn a_switch_asked_for_while_the_target_is_behind_waits_and_then_completes() {
    let (w, cable) = pair_with_cable(3_000_000);
    w.run_until(100_000, "the standby commits", |w| w.committed(1).is_some_and(|e| e >= 3));
    // The standby falls behind: nothing reaches it for a while (the active
    // device keeps cutting epochs); then it asks for the guest.
    cable.cut_outgoing(true);
    let t0 = w.clock.get();
    w.run_until(1_000_000, "0.5 s behind", |w| w.clock.get() - t0 >= 500_000_000);
    w.type_on(1, b"\x1dswitch\r");
    let held = |w: &World| w.node(0).borrow().vm().and_then(|vm| vm.sync.as_ref()?.peers().map(|p| p.switch_held())).unwrap_or(false);
    w.run_until(100_000, "the source holds the request", held);
    // The target stays behind for longer than the hand-over's 3 s wait for
    // a commit (its device is busy); the guest runs on at the source.
    w.frozen.borrow_mut()[1] = true;
    cable.cut_outgoing(false);
    let (pc, t1) = (w.pc(0), w.clock.get());
    w.run_until(1_000_000, "4 s", |w| w.clock.get() - t1 >= 4_000_000_000);
    assert!(w.is_active(0) && held(&w), "the request waits while the target is behind");
    assert!(w.pc(0) > pc + 1000, "the guest ran on while the request waited ({} writes)", w.pc(0) - pc);
    w.frozen.borrow_mut()[1] = false;
    w.run_until(1_000_000, "the switch", |w| w.is_active(1) && !w.is_active(0));
    // The guest resumed at the final epoch, which node 0 holds.
    assert_eq!(ram_of(&w, 0), expected_ram(PAGES, w.pc(1)));
}
