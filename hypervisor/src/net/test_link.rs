//! Host tests only: two ends of an in-memory Ethernet cable, each a
//! `NetDevice`, so the stack and the test mode run without a NIC.
extern crate std;

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::stack::NetDevice;

type Queues = Rc<RefCell<[VecDeque<Vec<u8>>; 2]>>;
/// Per direction (by receiving side): frames toward it are dropped.
type Cuts = Rc<[core::cell::Cell<bool>; 2]>;

pub struct Link {
    queues: Queues,
    cuts: Cuts,
    side: usize,
    pub mac: [u8; 6],
}

/// Two connected ends (MACs 52:54:00:00:00:01 and :02).
pub fn pair() -> (Link, Link) {
    let q: Queues = Rc::new(RefCell::new([VecDeque::new(), VecDeque::new()]));
    let c: Cuts = Rc::new(Default::default());
    (Link { queues: q.clone(), cuts: c.clone(), side: 0, mac: [0x52, 0x54, 0, 0, 0, 1] }, Link { queues: q, cuts: c, side: 1, mac: [0x52, 0x54, 0, 0, 0, 2] })
}

impl Link {
    /// A frame arriving at this end as if from the cable.
    pub fn inject(&mut self, frame: Vec<u8>) {
        self.queues.borrow_mut()[self.side].push_back(frame);
    }

    /// Drops (or lets through again) every frame this end sends: a
    /// one-way partition.
    pub fn cut_outgoing(&self, cut: bool) {
        self.cuts[1 - self.side].set(cut);
    }

    /// The frames on their way to the other end.
    pub fn peer_queue_snapshot(&self) -> Vec<Vec<u8>> {
        self.queues.borrow()[1 - self.side].iter().cloned().collect()
    }
}

pub struct Rx(Vec<u8>);

pub struct Tx {
    queues: Queues,
    cuts: Cuts,
    to: usize,
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
        if !self.cuts[self.to].get() {
            self.queues.borrow_mut()[self.to].push_back(frame);
        }
        r
    }
}

impl phy::Device for Link {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx)> {
        let frame = self.queues.borrow_mut()[self.side].pop_front()?;
        Some((Rx(frame), Tx { queues: self.queues.clone(), cuts: self.cuts.clone(), to: 1 - self.side }))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx> {
        Some(Tx { queues: self.queues.clone(), cuts: self.cuts.clone(), to: 1 - self.side })
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

impl Link {
    /// Another handle on this end (to cut it while a stack owns it).
    pub fn clone_end(&self) -> Link {
        Link { queues: self.queues.clone(), cuts: self.cuts.clone(), side: self.side, mac: self.mac }
    }
}
