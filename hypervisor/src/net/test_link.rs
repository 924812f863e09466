//! Host tests only: an in-memory Ethernet medium with two ends (a cable,
//! `pair`) or more (a hub, `hub`), each a `NetDevice`, so the stack and the
//! test mode run without a NIC. A hub delivers every frame to every other
//! end (smoltcp drops what is not for its MAC); an end can be isolated, a
//! cable's direction cut.
extern crate std;

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::stack::NetDevice;

/// Per end: the frames on their way to it.
type Queues = Rc<RefCell<Vec<VecDeque<Vec<u8>>>>>;

/// What stops frames, shared by every end of one medium.
struct Gates {
    /// Per end (receiving): frames toward it are dropped.
    cut_to: Vec<Cell<bool>>,
    /// Per end: frames from or to it are dropped (a partition).
    isolated: Vec<Cell<bool>>,
    /// Per (from, to): frames from one end to the other are dropped.
    cut_pair: Vec<Vec<Cell<bool>>>,
}

pub struct Link {
    queues: Queues,
    gates: Rc<Gates>,
    side: usize,
    pub mac: [u8; 6],
}

/// `n` ends on one medium (MACs 52:54:00:00:00:01, :02, ...).
pub fn hub(n: usize) -> Vec<Link> {
    let q: Queues = Rc::new(RefCell::new((0..n).map(|_| VecDeque::new()).collect()));
    let cells = || (0..n).map(|_| Cell::new(false)).collect::<Vec<_>>();
    let g = Rc::new(Gates { cut_to: cells(), isolated: cells(), cut_pair: (0..n).map(|_| cells()).collect() });
    (0..n).map(|side| Link { queues: q.clone(), gates: g.clone(), side, mac: [0x52, 0x54, 0, 0, 0, 1 + side as u8] }).collect()
}

/// Two connected ends (MACs 52:54:00:00:00:01 and :02).
pub fn pair() -> (Link, Link) {
    let mut ends = hub(2);
    let b = ends.pop().expect("two ends");
    let a = ends.pop().expect("two ends");
    (a, b)
}

impl Link {
    /// A frame arriving at this end as if from the cable.
    pub fn inject(&mut self, frame: Vec<u8>) {
        self.queues.borrow_mut()[self.side].push_back(frame);
    }

    /// Drops (or lets through again) every frame this end sends to the
    /// other end of a cable: a one-way partition.
    pub fn cut_outgoing(&self, cut: bool) {
        for (j, c) in self.gates.cut_to.iter().enumerate() {
            if j != self.side {
                c.set(cut);
            }
        }
    }

    /// Drops (or lets through again) every frame this end sends to end
    /// `to` alone (the others still get them): a one-way cut on a hub.
    pub fn cut_toward(&self, to: usize, cut: bool) {
        self.gates.cut_pair[self.side][to].set(cut);
    }

    /// Loses the frames on their way to end `to` now (from any end).
    pub fn lose_in_flight(&self, to: usize) {
        self.queues.borrow_mut()[to].clear();
    }

    /// Cuts this end off the medium both ways (or joins it again).
    pub fn isolate(&self, isolated: bool) {
        self.gates.isolated[self.side].set(isolated);
    }

    /// The frames on their way to the other end of a cable.
    pub fn peer_queue_snapshot(&self) -> Vec<Vec<u8>> {
        self.queues.borrow()[1 - self.side].iter().cloned().collect()
    }

    /// Another handle on this end (to cut it while a stack owns it).
    pub fn clone_end(&self) -> Link {
        Link { queues: self.queues.clone(), gates: self.gates.clone(), side: self.side, mac: self.mac }
    }

    fn tx(&self) -> Tx {
        Tx { queues: self.queues.clone(), gates: self.gates.clone(), from: self.side }
    }
}

pub struct Rx(Vec<u8>);

pub struct Tx {
    queues: Queues,
    gates: Rc<Gates>,
    from: usize,
}

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = alloc::vec![0u8; len];
        let r = f(&mut frame);
        let g = &self.gates;
        if !g.isolated[self.from].get() {
            let mut q = self.queues.borrow_mut();
            for (to, queue) in q.iter_mut().enumerate() {
                if to != self.from && !g.cut_to[to].get() && !g.isolated[to].get() && !g.cut_pair[self.from][to].get() {
                    queue.push_back(frame.clone());
                }
            }
        }
        r
    }
}

impl phy::Device for Link {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx)> {
        let frame = self.queues.borrow_mut()[self.side].pop_front()?;
        Some((Rx(frame), self.tx()))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx> {
        Some(self.tx())
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = super::nic::MTU;
        caps
    }
}

impl NetDevice for Link {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}
