//! The sync NIC: finds the virtio-net device among the board's virtio-mmio
//! slots and drives it as a smoltcp `phy::Device`.
//!
//! Built on `VirtIONetRaw` rather than `VirtIONet`, whose `send` spins until
//! the device has taken the frame: here transmit only queues, completions
//! are reaped on the next poll, so polling never waits on the device. No
//! method panics on what the device or the network hands back: a frame
//! that does not fit is dropped and counted, a device that breaks the
//! virtqueue contract is logged once and then left alone.
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use super::hal::DmaHal;

/// Descriptors per virtqueue (each frame takes one): enough frames in
/// flight for a 256 KiB TCP window to move in a few polls.
pub const QUEUE_SIZE: usize = 64;
/// One buffer per descriptor: the virtio-net header (10 or 12 bytes) and a
/// 1514-byte Ethernet frame, rounded up.
const BUF_LEN: usize = 2048;
/// Ethernet payload of 1500 plus the 14-byte header (no FCS, no VLAN).
pub const MTU: usize = 1514;

/// virtio-mmio register offsets and values (virtio 1.2, 4.2.2).
const MMIO_MAGIC: u32 = 0x7472_6976;
const REG_MAGIC: u64 = 0x000;
const REG_DEVICE_ID: u64 = 0x008;
pub const DEVICE_ID_NET: u32 = 1;
/// The registers and config space a slot must span to be usable.
const MIN_SLOT_SIZE: u64 = 0x100 + 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicError {
    /// The transport refused the slot (bad magic, version, or device ID).
    Transport,
    /// The device is not a network device.
    NotNet,
    /// virtio-drivers failed to set the device up (queues, DMA, features).
    Init(virtio_drivers::Error),
}

/// Picks the first virtio-mmio slot whose device is a network card.
pub fn find_net_slot(slots: impl IntoIterator<Item = (u64, u64)>, mapped: core::ops::Range<u64>, read32: impl FnMut(u64) -> u32) -> Option<(u64, u64)> {
    find_slot(DEVICE_ID_NET, slots, mapped, read32)
}

/// Picks the first virtio-mmio slot whose device has `device_id`.
/// `slots` are the `reg` ranges of the board's `virtio,mmio` nodes, `mapped`
/// the physical range EL2 maps as Device memory (slots outside it are never
/// touched), and `read32` reads one register. QEMU `virt` has 32 slots;
/// those without a backend report device ID 0.
pub fn find_slot(
    device_id: u32,
    slots: impl IntoIterator<Item = (u64, u64)>,
    mapped: core::ops::Range<u64>,
    mut read32: impl FnMut(u64) -> u32,
) -> Option<(u64, u64)> {
    slots.into_iter().find(|&(base, size)| {
        let inside = size >= MIN_SLOT_SIZE && base % 4 == 0 && base >= mapped.start && base.checked_add(size).is_some_and(|end| end <= mapped.end);
        inside && read32(base + REG_MAGIC) == MMIO_MAGIC && read32(base + REG_DEVICE_ID) == device_id
    })
}

/// Counters for the log and the lead's reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NicStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames dropped: malformed lengths, no buffer, or the device refused.
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// Transmit buffers: free ones, and those the device holds, by token.
struct TxSide {
    free: Vec<Vec<u8>>,
    /// (buffer, length handed to the device), indexed by the token
    /// `transmit_begin` returned.
    inflight: Vec<Option<(Vec<u8>, usize)>>,
    /// Where a frame goes when no buffer is free after all (never expected:
    /// a token is only handed out with one free).
    scratch: Vec<u8>,
}

pub struct Nic {
    raw: VirtIONetRaw<DmaHal, MmioTransport<'static>, QUEUE_SIZE>,
    /// Receive buffers the device holds, by token.
    rx_posted: Vec<Option<Vec<u8>>>,
    /// Receive buffers smoltcp has consumed, to give back to the device.
    rx_done: Vec<Vec<u8>>,
    tx: TxSide,
    mac: [u8; 6],
    /// Receive frames left in this poll (see `start_poll`).
    rx_budget: usize,
    /// The device broke the virtqueue contract: stop using it.
    failed: bool,
    pub stats: NicStats,
}

impl Nic {
    /// Sets the device at `base` up and posts every receive buffer.
    ///
    /// # Safety
    /// `[base, base + size)` is a virtio-mmio slot mapped as Device memory
    /// at EL2, and nothing else drives it for the rest of the run.
    pub unsafe fn open(base: u64, size: u64) -> Result<Nic, NicError> {
        let header = NonNull::new(base as *mut VirtIOHeader).ok_or(NicError::Transport)?;
        // SAFETY: the caller's contract: a mapped virtio-mmio register block
        // of `size` bytes that only this driver uses, for 'static.
        let transport = unsafe { MmioTransport::new(header, size as usize) }.map_err(|_| NicError::Transport)?;
        if transport.device_type() != DeviceType::Network {
            return Err(NicError::NotNet);
        }
        let mut raw = VirtIONetRaw::<DmaHal, _, QUEUE_SIZE>::new(transport).map_err(NicError::Init)?;
        let mac = raw.mac_address();
        // Polled, not interrupt-driven: spare the device the notifications.
        raw.disable_interrupts();
        let mut nic = Nic {
            raw,
            rx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
            rx_done: (0..QUEUE_SIZE).map(|_| vec![0u8; BUF_LEN]).collect(),
            tx: TxSide {
                free: (0..QUEUE_SIZE).map(|_| vec![0u8; BUF_LEN]).collect(),
                inflight: (0..QUEUE_SIZE).map(|_| None).collect(),
                scratch: vec![0u8; BUF_LEN],
            },
            mac,
            rx_budget: QUEUE_SIZE,
            failed: false,
            stats: NicStats::default(),
        };
        nic.repost_rx();
        if nic.failed {
            return Err(NicError::Init(virtio_drivers::Error::QueueFull));
        }
        Ok(nic)
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    fn fail(&mut self, what: &str) {
        if !self.failed {
            log::error!("net: virtio-net {what}; the NIC is off from here on");
            self.failed = true;
        }
    }

    /// Called once per stack poll: bounds how many frames one poll takes in
    /// (smoltcp's ingress loop runs while frames keep coming), and gives
    /// the device back what it finished with.
    pub fn start_poll(&mut self) {
        self.rx_budget = QUEUE_SIZE;
        self.reap_tx();
        self.repost_rx();
    }

    /// Hands consumed receive buffers back to the device.
    fn repost_rx(&mut self) {
        while let Some(mut buf) = self.rx_done.pop() {
            // SAFETY: the buffer's heap block is kept, untouched, in
            // `rx_posted[token]` until `receive_complete` hands it back.
            match unsafe { self.raw.receive_begin(&mut buf) } {
                Ok(token) => match self.rx_posted.get_mut(token as usize) {
                    Some(slot @ None) => *slot = Some(buf),
                    // The device now holds a buffer we cannot track; keep
                    // it alive (leaked) rather than free memory in use.
                    _ => {
                        core::mem::forget(buf);
                        return self.fail("returned an unknown receive token");
                    }
                },
                Err(_) => {
                    self.rx_done.push(buf);
                    return;
                }
            }
        }
    }

    /// Takes back transmit buffers the device has sent.
    fn reap_tx(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some((buf, len)) = self.tx.inflight.get_mut(token as usize).and_then(Option::take) else {
                return self.fail("completed an unknown transmit token");
            };
            // SAFETY: the same buffer and length as `transmit_begin` got for
            // this token.
            match unsafe { self.raw.transmit_complete(token, &buf[..len]) } {
                Ok(_) => self.tx.free.push(buf),
                Err(_) => {
                    core::mem::forget(buf);
                    return self.fail("refused a transmit completion");
                }
            }
        }
    }

    /// The next received frame: (buffer, frame start, frame length).
    fn next_rx(&mut self) -> Option<(Vec<u8>, usize, usize)> {
        loop {
            if self.failed || self.rx_budget == 0 {
                return None;
            }
            let token = self.raw.poll_receive()?;
            let Some(mut buf) = self.rx_posted.get_mut(token as usize).and_then(Option::take) else {
                self.fail("completed an unknown receive token");
                return None;
            };
            // SAFETY: the buffer posted under this token.
            match unsafe { self.raw.receive_complete(token, &mut buf) } {
                Ok((hdr, len)) if len > 0 && hdr.checked_add(len).is_some_and(|end| end <= buf.len()) => {
                    self.rx_budget -= 1;
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += len as u64;
                    return Some((buf, hdr, len));
                }
                Ok(_) | Err(virtio_drivers::Error::IoError) => {
                    // A length the buffer cannot hold (or shorter than the
                    // header): drop the frame, keep the buffer.
                    self.stats.rx_dropped += 1;
                    self.rx_done.push(buf);
                }
                Err(_) => {
                    core::mem::forget(buf);
                    self.fail("refused a receive completion");
                    return None;
                }
            }
        }
    }

    fn tx_ready(&mut self) -> bool {
        self.reap_tx();
        !self.failed && !self.tx.free.is_empty() && self.raw.can_send()
    }
}

/// A received frame; its buffer goes back to the device on the next poll.
pub struct NicRx<'a> {
    buf: Option<Vec<u8>>,
    start: usize,
    len: usize,
    done: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for NicRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(mut self, f: F) -> R {
        let buf = self.buf.take().unwrap_or_default();
        let r = f(buf.get(self.start..self.start + self.len).unwrap_or(&[]));
        self.done.push(buf);
        r
    }
}

impl Drop for NicRx<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.done.push(buf);
        }
    }
}

/// Room for one frame to send.
pub struct NicTx<'a> {
    raw: &'a mut VirtIONetRaw<DmaHal, MmioTransport<'static>, QUEUE_SIZE>,
    tx: &'a mut TxSide,
    stats: &'a mut NicStats,
}

impl phy::TxToken for NicTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let Some(mut buf) = self.tx.free.pop() else {
            self.stats.tx_dropped += 1;
            let n = len.min(self.tx.scratch.len());
            return f(&mut self.tx.scratch[..n]);
        };
        let hdr = self.raw.fill_buffer_header(&mut buf).unwrap_or(0);
        let end = hdr + len;
        if hdr == 0 || end > buf.len() {
            // smoltcp never asks for more than the MTU; never send garbage.
            self.stats.tx_dropped += 1;
            let n = len.min(self.tx.scratch.len());
            let r = f(&mut self.tx.scratch[..n]);
            self.tx.free.push(buf);
            return r;
        }
        let r = f(&mut buf[hdr..end]);
        // SAFETY: the buffer stays, untouched, in `inflight[token]` until
        // `reap_tx` sees the device finish with it.
        match unsafe { self.raw.transmit_begin(&buf[..end]) } {
            Ok(token) => match self.tx.inflight.get_mut(token as usize) {
                Some(slot @ None) => {
                    *slot = Some((buf, end));
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += len as u64;
                }
                // Untrackable: keep the memory the device may read alive.
                _ => core::mem::forget(buf),
            },
            Err(_) => {
                self.stats.tx_dropped += 1;
                self.tx.free.push(buf);
            }
        }
        r
    }
}

impl phy::Device for Nic {
    type RxToken<'a> = NicRx<'a>;
    type TxToken<'a> = NicTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(NicRx<'_>, NicTx<'_>)> {
        // A reply may be due for every frame taken in: only take one when
        // a transmit buffer is free for it.
        if !self.tx_ready() {
            return None;
        }
        let (buf, start, len) = self.next_rx()?;
        let Nic { raw, rx_done, tx, stats, .. } = self;
        Some((NicRx { buf: Some(buf), start, len, done: rx_done }, NicTx { raw, tx, stats }))
    }

    fn transmit(&mut self, _: Instant) -> Option<NicTx<'_>> {
        if !self.tx_ready() {
            return None;
        }
        let Nic { raw, tx, stats, .. } = self;
        Some(NicTx { raw, tx, stats })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        // No checksum offload is negotiated: smoltcp computes and checks all.
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    extern crate std;

    fn board(devs: &[(u64, u32)]) -> HashMap<u64, u32> {
        let mut m = HashMap::new();
        for &(base, id) in devs {
            m.insert(base + REG_MAGIC, MMIO_MAGIC);
            m.insert(base + REG_DEVICE_ID, id);
        }
        m
    }

    fn qemu_slots() -> Vec<(u64, u64)> {
        (0..32).map(|i| (0x0a00_0000 + 0x200 * i, 0x200)).collect()
    }

    #[test]
    fn finds_the_net_slot_among_empty_and_other_devices() {
        let regs = board(&[(0x0a00_0000, 0), (0x0a00_0200, 2), (0x0a00_3e00, 1)]);
        let read = |a: u64| regs.get(&a).copied().unwrap_or(0);
        assert_eq!(find_net_slot(qemu_slots(), 0..1 << 30, read), Some((0x0a00_3e00, 0x200)));
    }

    #[test]
    fn finds_the_rng_slot_beside_the_nic() {
        let regs = board(&[(0x0a00_3c00, 4), (0x0a00_3e00, 1)]);
        let read = |a: u64| regs.get(&a).copied().unwrap_or(0);
        assert_eq!(find_slot(4, qemu_slots(), 0..1 << 30, read), Some((0x0a00_3c00, 0x200)));
        assert_eq!(find_net_slot(qemu_slots(), 0..1 << 30, read), Some((0x0a00_3e00, 0x200)));
    }

    #[test]
    fn none_without_a_backend() {
        let regs = board(&[(0x0a00_0000, 0), (0x0a00_0200, 0)]);
        assert_eq!(find_net_slot(qemu_slots(), 0..1 << 30, |a| regs.get(&a).copied().unwrap_or(0)), None);
    }

    #[test]
    fn never_touches_slots_outside_the_mapped_window_or_too_small() {
        let mut touched = Vec::new();
        let slots = [(0x4000_0000, 0x200), (0x0a00_0000, 0x10), (u64::MAX - 0x100, 0x200), (0x0a00_0202, 0x200)];
        let got = find_net_slot(slots, 0..1 << 30, |a| {
            touched.push(a);
            1
        });
        assert_eq!(got, None);
        assert!(touched.is_empty(), "read {touched:x?}");
    }

    #[test]
    fn wrong_magic_is_not_a_device() {
        let mut regs = board(&[(0x0a00_0000, 1)]);
        regs.insert(0x0a00_0000, 0x1234);
        assert_eq!(find_net_slot(qemu_slots(), 0..1 << 30, |a| regs.get(&a).copied().unwrap_or(0)), None);
    }
}
