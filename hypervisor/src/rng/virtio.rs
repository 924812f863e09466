//! virtio-rng: an entropy device the hypervisor drives on boards that have
//! one (QEMU: `-object rng-random,id=rng0,filename=/dev/urandom -device
//! virtio-rng-device,rng=rng0`). Like the NIC it is found among the host
//! device tree's virtio-mmio slots and never shown to the guest: the
//! guest's device tree has no virtio node and stage 2 maps no device.
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use super::{Entropy, RngError};
use crate::net::hal::DmaHal;

/// virtio device ID of an entropy source (virtio 1.2, 5).
pub const DEVICE_ID_RNG: u32 = 4;
/// Bytes asked of the device at once (a heap buffer: DMA-able, unlike
/// whatever the caller's buffer is).
const CHUNK: usize = 64;
/// Requests that come back empty before the device counts as failed.
const EMPTY_TRIES: u32 = 16;

pub struct VirtioRng {
    dev: VirtIORng<DmaHal, MmioTransport<'static>>,
    buf: Vec<u8>,
}

impl VirtioRng {
    /// Sets the device at `base` up.
    ///
    /// # Safety
    /// `[base, base + size)` is a virtio-mmio slot mapped as Device memory
    /// at EL2, nothing else drives it for the rest of the run, and the DMA
    /// pool (`net::hal::init_pool`) is set.
    pub unsafe fn open(base: u64, size: u64) -> Result<Self, RngError> {
        let header = NonNull::new(base as *mut VirtIOHeader).ok_or(RngError::Device)?;
        // SAFETY: the caller's contract: a mapped virtio-mmio register block
        // of `size` bytes that only this driver uses, for 'static.
        let transport = unsafe { MmioTransport::new(header, size as usize) }.map_err(|_| RngError::Device)?;
        if transport.device_type() != DeviceType::EntropySource {
            return Err(RngError::Device);
        }
        let dev = VirtIORng::new(transport).map_err(|_| RngError::Device)?;
        Ok(VirtioRng { dev, buf: vec![0u8; CHUNK] })
    }
}

impl Entropy for VirtioRng {
    fn name(&self) -> &'static str {
        "virtio-rng"
    }

    fn fill(&mut self, out: &mut [u8]) -> Result<(), RngError> {
        let mut done = 0;
        let mut empty = 0;
        while done < out.len() {
            let want = (out.len() - done).min(CHUNK);
            let got = self.dev.request_entropy(&mut self.buf[..want]).map_err(|_| RngError::Device)?.min(want);
            if got == 0 {
                empty += 1;
                if empty >= EMPTY_TRIES {
                    return Err(RngError::Device);
                }
                continue;
            }
            out[done..done + got].copy_from_slice(&self.buf[..got]);
            done += got;
        }
        // The bytes were handed on: keep no copy.
        self.buf.fill(0);
        Ok(())
    }
}
