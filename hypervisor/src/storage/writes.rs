//! The guest's disk writes per epoch: which 4 KiB blocks its completed
//! write, discard and write-zeroes requests touched, and how many bytes
//! its write requests carried. Counted while guest RAM is tracked (a
//! policy is set), by wrapping the storage for each `disk_process`
//! ([`DiskWrites::over`]); the virtio model knows nothing of it. The
//! figures join the epoch line at each cut (`node::epochs::cut_epoch`),
//! then the bitmap starts afresh. Blocks are not sent yet: this is the
//! groundwork of syncing them, and what the study measures.
//!
//! `sync_core::dirty::DirtySet` would also keep a list of the marked
//! blocks (4 bytes each, grown while the guest runs); the cut needs only
//! their count, so this is a bare bitmap, allocated once (one bit per
//! block), cleared at the cut over the words written since the last one.
use alloc::vec;
use alloc::vec::Vec;

use crate::vplatform::virtio::{BackendError, BlockBackend};
use sync_core::stats::DISK_BLOCK_BYTES;

/// One bit per 4 KiB block of the disk, and the epoch's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskWrites {
    bits: Vec<u64>,
    blocks: u64,
    /// Blocks marked since the last cut.
    dirty: u64,
    /// Bytes the guest's write requests carried since the last cut.
    guest_bytes: u64,
    /// The words `[lo, hi)` hold every bit set since the last cut.
    lo: usize,
    hi: usize,
}

impl DiskWrites {
    /// A clean bitmap over a disk of `capacity` bytes (a last partial
    /// block counts as one).
    pub fn new(capacity: u64) -> Self {
        let blocks = capacity.div_ceil(DISK_BLOCK_BYTES);
        // A disk the board exposes fits in the host's memory map, so its
        // bitmap (capacity / 32 Ki words) fits a usize.
        let words = usize::try_from(blocks.div_ceil(64)).unwrap_or(usize::MAX);
        DiskWrites { bits: vec![0; words], blocks, dirty: 0, guest_bytes: 0, lo: usize::MAX, hi: 0 }
    }

    /// The disk's blocks (an epoch never marks more).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Blocks marked since the last cut.
    pub fn dirty_blocks(&self) -> u64 {
        self.dirty
    }

    pub fn guest_bytes(&self) -> u64 {
        self.guest_bytes
    }

    pub fn is_marked(&self, block: u64) -> bool {
        block < self.blocks && self.bits[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Marks every block that `[offset, offset + len)` touches (a range the
    /// store accepted, so inside the disk; anything beyond is ignored).
    fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / DISK_BLOCK_BYTES;
        let last = (offset.saturating_add(len - 1) / DISK_BLOCK_BYTES).min(self.blocks.saturating_sub(1));
        for b in first..=last {
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            let Some(word) = self.bits.get_mut(w) else { return };
            if *word & bit == 0 {
                *word |= bit;
                self.dirty += 1;
                self.lo = self.lo.min(w);
                self.hi = self.hi.max(w + 1);
            }
        }
    }

    /// Ends the epoch: its (dirty blocks, guest bytes), and a clean bitmap
    /// for the next (only the words written since the last cut are
    /// cleared: a few for a typical epoch, never the disk).
    pub fn cut(&mut self) -> (u64, u64) {
        if self.lo < self.hi {
            self.bits[self.lo..self.hi].fill(0);
        }
        (self.lo, self.hi) = (usize::MAX, 0);
        let out = (self.dirty, self.guest_bytes);
        (self.dirty, self.guest_bytes) = (0, 0);
        out
    }

    /// `store` as the guest's disk for one `disk_process`, counting into
    /// this.
    pub fn over<'a>(&'a mut self, store: &'a mut dyn BlockBackend) -> Counted<'a> {
        Counted { store, writes: self }
    }
}

/// The storage with the guest's completed writes counted (see
/// [`DiskWrites::over`]). A request the store failed is not counted.
pub struct Counted<'a> {
    store: &'a mut dyn BlockBackend,
    writes: &'a mut DiskWrites,
}

impl BlockBackend for Counted<'_> {
    fn capacity(&self) -> u64 {
        self.store.capacity()
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.store.read(offset, buf)
    }
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.store.write(offset, buf)?;
        self.writes.mark(offset, buf.len() as u64);
        self.writes.guest_bytes = self.writes.guest_bytes.saturating_add(buf.len() as u64);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BackendError> {
        self.store.flush()
    }
    /// Discard and write-zeroes (the model makes both a discard): the
    /// blocks change, but the guest carried no bytes.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.store.discard(offset, len)?;
        self.writes.mark(offset, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemDisk;

    #[test]
    fn completed_writes_mark_their_blocks_and_count_their_bytes() {
        let mut disk = MemDisk::new(64 * 4096 + 512);
        let mut w = DiskWrites::new(disk.capacity());
        assert_eq!(w.blocks(), 65, "a last partial block counts");
        {
            let mut c = w.over(&mut disk);
            // 1 KiB straddling blocks 0 and 1, then 512 bytes in block 1.
            c.write(3584, &[1; 1024]).unwrap();
            c.write(4096, &[2; 512]).unwrap();
            let mut b = [0u8; 512];
            c.read(0, &mut b).unwrap();
            c.flush().unwrap();
            // Discard/write-zeroes: blocks 10..=12, no guest bytes.
            c.discard(10 * 4096, 3 * 4096).unwrap();
            // The last, partial block.
            c.write(64 * 4096, &[3; 512]).unwrap();
            // Refused by the store: not counted.
            assert_eq!(c.write(65 * 4096, &[4; 512]), Err(BackendError::OutOfRange));
            assert_eq!(c.discard(0, 100), Err(BackendError::OutOfRange));
            assert_eq!(c.capacity(), 64 * 4096 + 512);
        }
        assert_eq!(disk.bytes[4096], 2, "writes reach the store");
        assert_eq!(disk.flushes, 1);
        assert_eq!((w.dirty_blocks(), w.guest_bytes()), (6, 2048));
        for b in [0, 1, 10, 11, 12, 64] {
            assert!(w.is_marked(b), "block {b}");
        }
        assert!(!w.is_marked(2) && !w.is_marked(9) && !w.is_marked(13) && !w.is_marked(65));
        assert_eq!(w.cut(), (6, 2048));
        assert_eq!(w.cut(), (0, 0), "afresh after a cut");
        assert!((0..65).all(|b| !w.is_marked(b)));
        w.over(&mut disk).write(0, &[5; 4096]).unwrap();
        assert_eq!(w.cut(), (1, 4096), "a block is dirty again in a new epoch");
    }

    #[test]
    fn a_broken_store_counts_nothing() {
        let mut disk = MemDisk::new(8192);
        disk.broken = true;
        let mut w = DiskWrites::new(8192);
        assert_eq!(w.over(&mut disk).write(0, &[1; 512]), Err(BackendError::Io));
        assert_eq!(w.over(&mut disk).discard(0, 512), Err(BackendError::Io));
        assert_eq!(w.cut(), (0, 0));
    }

    #[test]
    fn an_epoch_never_counts_more_than_the_disk() {
        let mut disk = MemDisk::new(16 * 4096);
        let mut w = DiskWrites::new(disk.capacity());
        for _ in 0..3 {
            w.over(&mut disk).write(0, &[7; 16 * 4096]).unwrap();
            w.over(&mut disk).discard(0, 16 * 4096).unwrap();
        }
        assert_eq!(w.cut(), (16, 3 * 16 * 4096));
        // Past the end (a caller's bug) is ignored, not a panic.
        w.mark(15 * 4096, 8 * 4096);
        w.mark(u64::MAX - 10, 100);
        assert_eq!(w.cut().0, 1);
    }
}
