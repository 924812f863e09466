//! virtio devices the hypervisor emulates for the guest, the same on every
//! architecture: a virtio-mmio transport (`mmio`), split virtqueues walked
//! in guest memory (`queue`) and the block device (`blk`). The guest's disk
//! is `blk` behind `mmio`; what stores its blocks is a [`BlockBackend`]
//! (on the boards the device's own storage, driven by `storage::`).
//!
//! The models are plain data in, plain data out: guest memory is reached
//! through [`GuestDma`], the blocks through [`BlockBackend`], so the host
//! tests run them on vectors.

pub mod blk;
pub mod mmio;
pub mod queue;

#[cfg(test)]
mod blk_hostile_tests;
#[cfg(test)]
mod blk_tests;

/// Bytes of one virtio-blk sector, the unit of request addresses.
pub const SECTOR: u64 = 512;

/// Guest memory as a device sees it: the addresses the guest put in its
/// descriptors (guest-physical). Writes must go through tracking (the
/// hypervisor's `GuestMemory` marks the pages dirty).
pub trait GuestDma {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), DmaError>;
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), DmaError>;
}

/// A descriptor named memory outside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaError {
    pub gpa: u64,
    pub len: u64,
}

/// What stores the disk's blocks. Offsets and lengths are in bytes,
/// multiples of [`SECTOR`]; the model never asks beyond `capacity`.
pub trait BlockBackend {
    /// The disk's size in bytes (a multiple of [`SECTOR`]).
    fn capacity(&self) -> u64;
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError>;
    /// Completes once the bytes are in the backing store's hands (its
    /// write cache may hold them until `flush`).
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError>;
    /// Completes once every completed write is durable.
    fn flush(&mut self) -> Result<(), BackendError>;
    /// The range's contents are no longer wanted; it reads as zeros after.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BackendError>;
}

/// Whether `[offset, offset + len)` is whole sectors inside `capacity`:
/// what the model asks of a request and every store of its calls.
pub fn check_range(capacity: u64, offset: u64, len: u64) -> Result<(), BackendError> {
    if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
        return Err(BackendError::OutOfRange);
    }
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(BackendError::OutOfRange),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendError {
    /// The store failed the request (its driver's error, logged there).
    Io,
    /// Beyond the disk's end.
    OutOfRange,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_whole_sectors_inside_the_disk() {
        assert_eq!(check_range(4096, 0, 4096), Ok(()));
        assert_eq!(check_range(4096, 512, 512), Ok(()));
        assert_eq!(check_range(4096, 4096, 0), Ok(()));
        assert_eq!(check_range(4096, 3584, 1024), Err(BackendError::OutOfRange));
        assert_eq!(check_range(4096, 1, 512), Err(BackendError::OutOfRange));
        assert_eq!(check_range(4096, 0, 100), Err(BackendError::OutOfRange));
        assert_eq!(check_range(u64::MAX - 511, 1024, u64::MAX - 1023), Err(BackendError::OutOfRange), "no overflow");
    }
}
