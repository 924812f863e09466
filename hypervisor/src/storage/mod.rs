//! The device's own storage: what backs the guest's disk (and, later, a
//! standby's durable copy). On the boards it is a virtio-blk device the
//! hypervisor drives (`virtio_disk`), found among the host device tree's
//! virtio-mmio slots like the NIC and never shown to the guest: the
//! guest's disk is the hypervisor's model (`vplatform::virtio::blk`) over
//! it, at another address, with another interrupt.
//!
//! Both roles reach it through `node::Machine::disk` as a
//! [`BlockBackend`]; host tests use [`MemDisk`].
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use crate::vplatform::virtio::{check_range, BackendError, BlockBackend, SECTOR};

pub mod virtio_disk;
pub mod writes;

/// virtio device ID of a block device (virtio 1.2, 5).
pub const DEVICE_ID_BLK: u32 = 2;

/// The device's storage, as the node holds it.
pub type Disk = Box<dyn BlockBackend + Send>;

/// `[offset, offset + len)` as consecutive `(offset, len)` pieces of at
/// most `max` bytes (`max` > 0): how a store with a bounded buffer moves a
/// long request.
pub fn pieces(offset: u64, len: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    let max = max.max(1);
    (0..len.div_ceil(max)).map(move |i| (offset + i * max, (len - i * max).min(max)))
}

/// The board's disk when the host device tree has a virtio-blk device (the
/// DMA pool `dma` set): one boot line saying so, or None and one line
/// saying why not.
#[cfg(target_os = "none")]
pub fn board(host_fdt: &fdt::Fdt, device_window: core::ops::Range<u64>, dma: bool) -> Option<Disk> {
    let Some((base, size)) = crate::net::find_virtio(host_fdt, device_window, DEVICE_ID_BLK) else {
        log::info!("disk: no virtio-blk device: the guest has no disk");
        return None;
    };
    if !dma {
        log::error!("disk: virtio-blk at {base:#x} left unused: no DMA pool");
        return None;
    }
    // SAFETY: a virtio-mmio slot inside the Device-mapped window, found
    // once; nothing else drives it (the guest has no device mapped); the
    // DMA pool is set (`dma`).
    match unsafe { virtio_disk::VirtioDisk::open(base, size) } {
        Ok(d) => {
            log::info!("disk: {} MiB virtio-blk at {base:#x}{}", d.capacity() >> 20, if d.read_only() { " (read-only)" } else { "" });
            Some(Box::new(d))
        }
        Err(e) => {
            log::error!("disk: virtio-blk at {base:#x}: {e:?}; no disk");
            None
        }
    }
}

/// A disk in a vector: the host tests' storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDisk {
    pub bytes: Vec<u8>,
    /// Flushes asked for.
    pub flushes: u64,
    /// Every request fails (a broken store).
    pub broken: bool,
}

impl MemDisk {
    /// An all-zero disk of `capacity` bytes (whole sectors).
    pub fn new(capacity: u64) -> Self {
        MemDisk { bytes: vec![0; (capacity - capacity % SECTOR) as usize], flushes: 0, broken: false }
    }

    fn range(&self, offset: u64, len: usize) -> Result<core::ops::Range<usize>, BackendError> {
        if self.broken {
            return Err(BackendError::Io);
        }
        check_range(self.capacity(), offset, len as u64)?;
        Ok(offset as usize..offset as usize + len)
    }
}

impl BlockBackend for MemDisk {
    fn capacity(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        let r = self.range(offset, buf.len())?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BackendError> {
        if self.broken {
            return Err(BackendError::Io);
        }
        self.flushes += 1;
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BackendError> {
        let len = usize::try_from(len).map_err(|_| BackendError::OutOfRange)?;
        let r = self.range(offset, len)?;
        self.bytes[r].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_requests_go_in_bounded_pieces() {
        let p: Vec<_> = pieces(512, 2560, 1024).collect();
        assert_eq!(p, [(512, 1024), (1536, 1024), (2560, 512)]);
        assert_eq!(pieces(0, 0, 1024).count(), 0);
        assert_eq!(pieces(4096, 1024, 1024).collect::<Vec<_>>(), [(4096, 1024)]);
        assert_eq!(pieces(0, 3, 0).count(), 3, "a zero bound is taken as 1");
    }

    #[test]
    fn mem_disk_reads_what_was_written_and_discards_to_zero() {
        let mut d = MemDisk::new(8192);
        d.write(1024, &[7; 1024]).unwrap();
        let mut b = [0u8; 2048];
        d.read(512, &mut b).unwrap();
        assert_eq!(&b[..512], &[0; 512]);
        assert_eq!(&b[512..1536], &[7; 1024]);
        d.discard(1024, 512).unwrap();
        d.read(1024, &mut b[..1024]).unwrap();
        assert_eq!(&b[..512], &[0; 512]);
        assert_eq!(&b[512..1024], &[7; 512]);
        assert_eq!(d.read(8192, &mut b[..512]), Err(BackendError::OutOfRange));
        d.flush().unwrap();
        assert_eq!(d.flushes, 1);
        d.broken = true;
        assert_eq!(d.flush(), Err(BackendError::Io));
    }
}
