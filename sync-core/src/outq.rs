//! A link's outgoing bytes: sealed frames queued one allocation each, so
//! the memory a link holds is what it has queued (a single growing `Vec`
//! doubles past it, and moves every byte left at each partial send).
//! A queue can also discard what it is given (`set_discard`): a link that
//! is encoded only for its figures then holds one frame at a time, not an
//! epoch.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::wire::WireError;

#[derive(Debug, Default)]
pub struct FrameQueue {
    frames: VecDeque<Vec<u8>>,
    /// Bytes of the front frame already taken by the transport.
    head: usize,
    /// Bytes queued and not yet taken.
    len: usize,
    /// Frames are dropped as they come (nobody reads this queue).
    discard: bool,
}

impl FrameQueue {
    pub const fn new() -> Self {
        Self { frames: VecDeque::new(), head: 0, len: 0, discard: false }
    }

    /// Drops every frame pushed from now on (and what is queued): for a
    /// link nobody reads, whose sealed bytes only count.
    pub fn set_discard(&mut self, discard: bool) {
        self.discard = discard;
        if discard {
            self.clear();
        }
    }

    /// Bytes waiting for the transport.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for one more frame, so the `push` after it cannot fail
    /// (call it before sealing: a sealed frame that is not queued would
    /// break the stream's frame counter).
    pub fn reserve_one(&mut self) -> Result<(), WireError> {
        self.frames.try_reserve(1).map_err(|_| WireError::OutOfMemory)
    }

    /// Queues one sealed frame (after `reserve_one`).
    pub fn push(&mut self, frame: Vec<u8>) {
        if frame.is_empty() || self.discard {
            return;
        }
        self.len += frame.len();
        self.frames.push_back(frame);
    }

    /// The next bytes for the transport (part of one frame).
    pub fn front(&self) -> &[u8] {
        self.frames.front().and_then(|f| f.get(self.head..)).unwrap_or(&[])
    }

    /// The transport took `n` bytes from the front.
    pub fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(f) = self.frames.front() else { break };
            let left = f.len() - self.head;
            if n < left {
                self.head += n;
                self.len -= n;
                return;
            }
            n -= left;
            self.len -= left;
            self.head = 0;
            self.frames.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.frames.clear();
        self.head = 0;
        self.len = 0;
    }

    /// Everything queued, as one byte string, and the queue emptied (for
    /// in-memory transports and tests).
    pub fn take_all(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        while !self.is_empty() {
            let f = self.front();
            let n = f.len();
            out.extend_from_slice(f);
            self.consume(n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn bytes_leave_in_order_whatever_the_pieces() {
        let mut q = FrameQueue::new();
        for f in [vec![1, 2, 3], vec![], vec![4], vec![5, 6]] {
            q.reserve_one().unwrap();
            q.push(f);
        }
        assert_eq!(q.len(), 6);
        assert_eq!(q.front(), &[1, 2, 3]);
        q.consume(2);
        assert_eq!((q.front(), q.len()), (&[3u8][..], 4));
        q.consume(2);
        assert_eq!((q.front(), q.len()), (&[5u8, 6][..], 2));
        assert_eq!(q.take_all(), vec![5, 6]);
        assert!(q.is_empty() && q.front().is_empty());
        q.consume(9);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_discarding_queue_holds_nothing() {
        let mut q = FrameQueue::new();
        q.push(vec![1, 2]);
        q.set_discard(true);
        assert!(q.is_empty(), "set_discard drops what was queued");
        for _ in 0..1000 {
            q.reserve_one().unwrap();
            q.push(vec![7; 4096]);
        }
        assert_eq!((q.len(), q.front()), (0, &[][..]));
        assert!(q.frames.capacity() <= 4, "no frame was kept");
        q.set_discard(false);
        q.push(vec![3]);
        assert_eq!(q.take_all(), vec![3]);
    }
}
