//! The board's virtio-blk device as the guest disk's backing store, driven
//! with `virtio-drivers`' block driver (QEMU: `-drive file=..,if=none,
//! format=raw,id=d -device virtio-blk-device,drive=d`).
//!
//! Requests go through a bounce buffer from the heap (identity-mapped RAM,
//! so DMA-able, unlike whatever the caller's buffer is), at most `BOUNCE`
//! bytes a request. The driver waits for each request: the guest's request
//! completes after the backing one, as the model's contract says.
//! `virtio-drivers` has no discard, so discard writes zeros.
//!
//! Nothing here panics on what the device answers: a request the device
//! fails is an I/O error for that request; a device that breaks the
//! virtqueue contract is logged once and every request fails from then on
//! (the guest sees I/O errors, the hypervisor runs on).
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use super::pieces;
use crate::net::hal::DmaHal;
use crate::vplatform::virtio::{check_range, BackendError, BlockBackend, SECTOR};

/// Bytes one backing request moves at most (the bounce buffer's size).
const BOUNCE: usize = 64 << 10;

// The model speaks in 512-byte sectors, as the driver does.
const _: () = assert!(SECTOR as usize == SECTOR_SIZE && BOUNCE.is_multiple_of(SECTOR_SIZE));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskError {
    /// The transport refused the slot (bad magic, version, or device ID).
    Transport,
    /// The device is not a block device.
    NotBlock,
    /// virtio-drivers failed to set the device up.
    Init(virtio_drivers::Error),
    /// A capacity no byte count holds.
    TooLarge,
}

pub struct VirtioDisk {
    dev: VirtIOBlk<DmaHal, MmioTransport<'static>>,
    bounce: Vec<u8>,
    capacity: u64,
    read_only: bool,
    /// The device broke the virtqueue contract: every request fails.
    broken: bool,
    /// Requests the device failed (logged: the first only).
    pub failed_requests: u64,
}

// SAFETY: the driver owns its register block and its DMA memory; nothing
// else touches them, and the hypervisor runs on one CPU. `Send` lets the
// disk be handed between the node's roles.
unsafe impl Send for VirtioDisk {}

impl VirtioDisk {
    /// Sets the device at `base` up.
    ///
    /// # Safety
    /// `[base, base + size)` is a virtio-mmio slot mapped as Device memory
    /// at EL2, nothing else drives it for the rest of the run, and the DMA
    /// pool (`net::hal::init_pool`) is set.
    pub unsafe fn open(base: u64, size: u64) -> Result<Self, DiskError> {
        let header = NonNull::new(base as *mut VirtIOHeader).ok_or(DiskError::Transport)?;
        // SAFETY: the caller's contract: a mapped virtio-mmio register block
        // of `size` bytes that only this driver uses, for 'static.
        let transport = unsafe { MmioTransport::new(header, size as usize) }.map_err(|_| DiskError::Transport)?;
        if transport.device_type() != DeviceType::Block {
            return Err(DiskError::NotBlock);
        }
        let mut dev = VirtIOBlk::new(transport).map_err(DiskError::Init)?;
        // Polled: each request waits for its answer.
        dev.disable_interrupts();
        let capacity = dev.capacity().checked_mul(SECTOR).ok_or(DiskError::TooLarge)?;
        let read_only = dev.readonly();
        Ok(VirtioDisk { dev, bounce: vec![0; BOUNCE], capacity, read_only, broken: false, failed_requests: 0 })
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// One driver call's outcome: the device's I/O error fails the request;
    /// anything else means the device cannot be trusted any more.
    fn outcome(&mut self, what: &str, r: virtio_drivers::Result) -> Result<(), BackendError> {
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                self.failed_requests += 1;
                if e != virtio_drivers::Error::IoError {
                    if !self.broken {
                        log::error!("disk: virtio-blk {what}: {e:?}; the disk is off from here on (the guest gets I/O errors)");
                    }
                    self.broken = true;
                } else if self.failed_requests == 1 {
                    log::error!("disk: virtio-blk {what} failed (the device's I/O error; later ones are counted, not logged)");
                }
                Err(BackendError::Io)
            }
        }
    }

    fn usable(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if self.broken {
            return Err(BackendError::Io);
        }
        check_range(self.capacity, offset, len)
    }

    /// Writes `buf` at `offset`, through the bounce buffer; `None` writes
    /// `len` zeros (a discard).
    fn write_from(&mut self, offset: u64, buf: Option<&[u8]>, len: u64) -> Result<(), BackendError> {
        self.usable(offset, len)?;
        if self.read_only {
            return Err(BackendError::Io);
        }
        for (at, n) in pieces(offset, len, BOUNCE as u64) {
            // `n` <= BOUNCE; `at - offset` + `n` <= `len` = `buf.len()`.
            let (n, from) = (n as usize, (at - offset) as usize);
            match buf {
                Some(b) => self.bounce[..n].copy_from_slice(&b[from..from + n]),
                None => self.bounce[..n].fill(0),
            }
            let r = self.dev.write_blocks((at / SECTOR) as usize, &self.bounce[..n]);
            self.outcome("write", r)?;
        }
        Ok(())
    }
}

impl BlockBackend for VirtioDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.usable(offset, buf.len() as u64)?;
        // `read_blocks` asserts a non-zero whole-sector length: `usable`
        // checked whole sectors, `pieces` yields no empty one, and BOUNCE
        // is whole sectors.
        for (at, n) in pieces(offset, buf.len() as u64, BOUNCE as u64) {
            let (n, to) = (n as usize, (at - offset) as usize);
            let r = self.dev.read_blocks((at / SECTOR) as usize, &mut self.bounce[..n]);
            self.outcome("read", r)?;
            buf[to..to + n].copy_from_slice(&self.bounce[..n]);
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.write_from(offset, Some(buf), buf.len() as u64)
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        if self.broken {
            return Err(BackendError::Io);
        }
        let r = self.dev.flush();
        self.outcome("flush", r)
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BackendError> {
        // virtio-drivers sends no DISCARD: zeros, a bounce buffer at a time.
        self.write_from(offset, None, len)
    }
}
