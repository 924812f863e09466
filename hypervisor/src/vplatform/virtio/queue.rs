//! A split virtqueue (virtio 1.2 §2.7) walked in guest memory: the device's
//! side of it. `pop` takes the next available descriptor chain, `push_used`
//! returns one to the driver. Neither INDIRECT_DESC nor EVENT_IDX is
//! offered, so chains are direct and notifications follow the flags.
//!
//! Everything here is read from guest memory the guest can change at any
//! time, so every value is checked and every walk is bounded: a chain has
//! at most `size` descriptors (a longer one must loop), indices must be
//! below `size`, and address + length must not wrap. Each breach is a
//! [`QueueError`]; the device then wants a reset (`DEVICE_NEEDS_RESET`).
//! The chain goes into a caller's vector of fixed capacity, so no walk
//! allocates.

use alloc::vec::Vec;

use super::{DmaError, GuestDma};

/// The largest queue the devices offer (QueueNumMax).
pub const QUEUE_SIZE_MAX: u16 = 128;

/// Descriptor flags.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver does not want an interrupt.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One descriptor of a chain, as the guest wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub write: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The rings or the descriptor table lie outside guest RAM.
    Dma(DmaError),
    /// The driver claims more new entries than the queue holds.
    AvailIdx { avail: u16, last_avail: u16 },
    /// A chain's head or `next` names no descriptor.
    IndexOutOfRange(u16),
    /// A chain longer than the queue: it loops.
    ChainTooLong,
    /// An indirect descriptor, which was not offered.
    Indirect,
    /// A device-readable descriptor after a device-writable one.
    ReadAfterWrite,
    /// `addr + len` wraps around the address space.
    AddressOverflow { addr: u64, len: u32 },
    /// The queue is not set up (size 0).
    NotReady,
}

impl From<DmaError> for QueueError {
    fn from(e: DmaError) -> Self {
        QueueError::Dma(e)
    }
}

/// One available chain: its head (to hand back in `push_used`) and the
/// number of its descriptors that are device-readable (they come first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub head: u16,
    pub readable: usize,
}

/// The queue's configuration (set through the transport) and the device's
/// progress through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SplitQueue {
    /// QueueNum: 0 (unset) or a power of two up to [`QUEUE_SIZE_MAX`].
    pub size: u16,
    pub ready: bool,
    /// Descriptor table (QueueDesc).
    pub desc: u64,
    /// Available ring (QueueDriver).
    pub driver: u64,
    /// Used ring (QueueDevice).
    pub device: u64,
    /// The next available ring entry the device will take.
    pub last_avail: u16,
    /// The used ring's idx as the device last wrote it.
    pub used_idx: u16,
}

/// A queue size the split ring allows here: a power of two (so the free
/// running u16 indices wrap onto the ring) up to the offered maximum.
pub fn valid_size(size: u16) -> bool {
    size.is_power_of_two() && size <= QUEUE_SIZE_MAX
}

impl SplitQueue {
    /// Whether the layout can be used: a valid size and the alignments of
    /// §2.7 (descriptor table 16, available ring 2, used ring 4).
    pub fn layout_ok(&self) -> bool {
        valid_size(self.size) && self.desc.is_multiple_of(16) && self.driver.is_multiple_of(2) && self.device.is_multiple_of(4)
    }

    /// The next available chain, its descriptors into `out` (cleared
    /// first; it never grows past `size`), or `None` if the driver made
    /// nothing new available.
    pub fn pop(&mut self, mem: &(impl GuestDma + ?Sized), out: &mut Vec<Desc>) -> Result<Option<ChainHead>, QueueError> {
        out.clear();
        if !valid_size(self.size) {
            return Err(QueueError::NotReady);
        }
        let avail = read_u16(mem, self.driver.wrapping_add(2))?;
        let pending = avail.wrapping_sub(self.last_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailIdx { avail, last_avail: self.last_avail });
        }
        let slot = (self.last_avail % self.size) as u64;
        let head = read_u16(mem, self.driver.wrapping_add(4 + 2 * slot))?;
        let mut readable = 0;
        let mut index = head;
        loop {
            if index >= self.size {
                return Err(QueueError::IndexOutOfRange(index));
            }
            if out.len() == self.size as usize {
                return Err(QueueError::ChainTooLong);
            }
            let mut raw = [0u8; 16];
            mem.read(self.desc.wrapping_add(16 * index as u64), &mut raw)?;
            let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            let next = u16::from_le_bytes([raw[14], raw[15]]);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect);
            }
            if addr.checked_add(len as u64).is_none() {
                return Err(QueueError::AddressOverflow { addr, len });
            }
            let write = flags & VIRTQ_DESC_F_WRITE != 0;
            if !write {
                if readable != out.len() {
                    return Err(QueueError::ReadAfterWrite);
                }
                readable += 1;
            }
            out.push(Desc { addr, len, write });
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            index = next;
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(ChainHead { head, readable }))
    }

    /// Returns chain `head` to the driver with `written` bytes written into
    /// its device-writable buffers: the used element, then the used idx.
    pub fn push_used(&mut self, mem: &mut (impl GuestDma + ?Sized), head: u16, written: u32) -> Result<(), QueueError> {
        if !valid_size(self.size) {
            return Err(QueueError::NotReady);
        }
        let slot = (self.used_idx % self.size) as u64;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&(head as u32).to_le_bytes());
        elem[4..].copy_from_slice(&written.to_le_bytes());
        mem.write(self.device.wrapping_add(4 + 8 * slot), &elem)?;
        let idx = self.used_idx.wrapping_add(1);
        mem.write(self.device.wrapping_add(2), &idx.to_le_bytes())?;
        self.used_idx = idx;
        Ok(())
    }

    /// Whether the driver wants an interrupt for used buffers (no
    /// VIRTQ_AVAIL_F_NO_INTERRUPT). If the flags cannot be read, yes: a
    /// spurious interrupt is harmless, a lost one hangs the driver.
    pub fn wants_interrupt(&self, mem: &(impl GuestDma + ?Sized)) -> bool {
        read_u16(mem, self.driver).map_or(true, |flags| flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
    }

    /// The bytes of the rings (descriptor table, available and used ring,
    /// without the event fields, which are not offered), for tests.
    pub fn ring_ranges(&self) -> [(u64, u64); 3] {
        let n = self.size as u64;
        [(self.desc, 16 * n), (self.driver, 4 + 2 * n), (self.device, 4 + 8 * n)]
    }
}

fn read_u16(mem: &(impl GuestDma + ?Sized), gpa: u64) -> Result<u16, DmaError> {
    let mut b = [0u8; 2];
    mem.read(gpa, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// 64 KiB of guest RAM at 0 on a vector.
    struct Ram(Vec<u8>);

    impl GuestDma for Ram {
        fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), DmaError> {
            let err = DmaError { gpa, len: out.len() as u64 };
            let src = self.0.get(gpa as usize..).and_then(|s| s.get(..out.len())).ok_or(err)?;
            out.copy_from_slice(src);
            Ok(())
        }

        fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), DmaError> {
            let err = DmaError { gpa, len: bytes.len() as u64 };
            let dst = self.0.get_mut(gpa as usize..).and_then(|s| s.get_mut(..bytes.len())).ok_or(err)?;
            dst.copy_from_slice(bytes);
            Ok(())
        }
    }

    const Q: SplitQueue = SplitQueue { size: 4, ready: true, desc: 0x100, driver: 0x200, device: 0x300, last_avail: 0, used_idx: 0 };

    fn desc(ram: &mut Ram, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let at = (Q.desc + 16 * i) as usize;
        ram.0[at..at + 8].copy_from_slice(&addr.to_le_bytes());
        ram.0[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
        ram.0[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
        ram.0[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
    }

    fn avail(ram: &mut Ram, idx: u16, ring: &[u16]) {
        let at = Q.driver as usize;
        ram.0[at + 2..at + 4].copy_from_slice(&idx.to_le_bytes());
        for (i, h) in ring.iter().enumerate() {
            ram.0[at + 4 + 2 * i..at + 6 + 2 * i].copy_from_slice(&h.to_le_bytes());
        }
    }

    #[test]
    fn pops_chains_and_pushes_used_entries() {
        let mut ram = Ram(vec![0; 0x1_0000]);
        let mut q = Q;
        let mut out = Vec::with_capacity(4);
        assert_eq!(q.pop(&ram, &mut out), Ok(None));
        desc(&mut ram, 2, 0x1000, 16, VIRTQ_DESC_F_NEXT, 0);
        desc(&mut ram, 0, 0x2000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 3);
        desc(&mut ram, 3, 0x3000, 1, VIRTQ_DESC_F_WRITE, 0);
        desc(&mut ram, 1, 0x4000, 8, 0, 0);
        avail(&mut ram, 2, &[2, 1]);
        assert_eq!(q.pop(&ram, &mut out), Ok(Some(ChainHead { head: 2, readable: 1 })));
        assert_eq!(
            out,
            [Desc { addr: 0x1000, len: 16, write: false }, Desc { addr: 0x2000, len: 512, write: true }, Desc { addr: 0x3000, len: 1, write: true }]
        );
        assert_eq!(q.pop(&ram, &mut out), Ok(Some(ChainHead { head: 1, readable: 1 })));
        assert_eq!(out.len(), 1);
        assert_eq!(q.pop(&ram, &mut out), Ok(None));
        q.push_used(&mut ram, 2, 513).unwrap();
        q.push_used(&mut ram, 1, 0).unwrap();
        assert_eq!(&ram.0[0x302..0x304], &2u16.to_le_bytes());
        assert_eq!(&ram.0[0x304..0x30c], &[2, 0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(&ram.0[0x30c..0x314], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(out.capacity(), 4, "no allocation");
    }

    #[test]
    fn indices_wrap_onto_the_ring() {
        let mut ram = Ram(vec![0; 0x1_0000]);
        let mut q = SplitQueue { last_avail: u16::MAX, used_idx: u16::MAX, ..Q };
        desc(&mut ram, 1, 0x1000, 16, 0, 0);
        // Entry u16::MAX sits in slot 3, entry 0 in slot 0.
        avail(&mut ram, 1, &[1, 0, 0, 1]);
        let mut out = Vec::new();
        assert_eq!(q.pop(&ram, &mut out).unwrap().map(|c| c.head), Some(1));
        assert_eq!(q.pop(&ram, &mut out).unwrap().map(|c| c.head), Some(1));
        assert_eq!(q.last_avail, 1);
        q.push_used(&mut ram, 1, 0).unwrap();
        assert_eq!(&ram.0[0x304 + 8 * 3..0x304 + 8 * 3 + 4], &[1, 0, 0, 0]);
        assert_eq!(q.used_idx, 0);
    }

    #[test]
    fn interrupts_follow_the_avail_flags() {
        let mut ram = Ram(vec![0; 0x1_0000]);
        assert!(Q.wants_interrupt(&ram));
        ram.0[0x200] = VIRTQ_AVAIL_F_NO_INTERRUPT as u8;
        assert!(!Q.wants_interrupt(&ram));
        let outside = SplitQueue { driver: 0x2_0000, ..Q };
        assert!(outside.wants_interrupt(&ram), "unreadable flags: interrupt");
        assert_eq!(SplitQueue::default().pop(&ram, &mut Vec::new()), Err(QueueError::NotReady));
        assert!(!SplitQueue { desc: 0x108, ..Q }.layout_ok());
        assert!(Q.layout_ok());
        assert!(!valid_size(0) && !valid_size(3) && !valid_size(256) && valid_size(128) && valid_size(1));
    }
}
