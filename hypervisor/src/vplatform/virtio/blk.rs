//! The guest's disk: a virtio-blk device (virtio 1.2 §5.2) behind the
//! virtio-mmio transport, one request queue.
//!
//! Requests run synchronously when the guest notifies: `process` takes
//! every available chain, does it against the [`BlockBackend`] and only
//! then writes its status byte and used entry. So a request the guest sees
//! completed is in the backend (a FLUSH after the backend's flush), and
//! none is ever in flight when the device state is saved: the snapshot is
//! registers and ring positions only.
//!
//! Offered: VERSION_1, FLUSH, BLK_SIZE (4096, so Linux does 4 KiB-aligned
//! I/O), SEG_MAX (126), DISCARD and WRITE_ZEROES (both become
//! `BlockBackend::discard`, which reads back as zeros). Not offered: RO,
//! SIZE_MAX, GEOMETRY, TOPOLOGY, CONFIG_WCE, MQ, INDIRECT_DESC, EVENT_IDX.
//!
//! Data moves through one bounce buffer of [`BOUNCE_LEN`] bytes, allocated
//! once: nothing the guest writes sizes an allocation. A request the guest
//! got wrong (short header, data not whole sectors, past the end, a buffer
//! outside RAM) gets VIRTIO_BLK_S_IOERR; an unknown type UNSUPP; a broken
//! ring (see `queue.rs`) sets DEVICE_NEEDS_RESET and the device stops until
//! the driver resets it.

use alloc::vec;
use alloc::vec::Vec;

use super::mmio::{MmioTransport, WriteOutcome, VIRTIO_F_VERSION_1};
use super::queue::{ChainHead, Desc, QueueError, QUEUE_SIZE_MAX};
use super::{check_range, BlockBackend, DmaError, GuestDma, SECTOR};
use crate::vplatform::snapshot::{Reader, SnapshotError, Writer};

/// Bytes of the device's MMIO window: registers and configuration space.
pub const MMIO_SIZE: u64 = 0x200;
/// virtio device ID of a block device.
pub const DEVICE_ID: u32 = 2;

pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// What the device offers.
pub const FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;

/// The block size the guest is told to use (bytes).
pub const BLK_SIZE: u32 = 4096;
/// Data segments per request.
pub const SEG_MAX: u32 = 126;
/// Discard and write-zeroes: granularity (sectors), largest request
/// (sectors; bounds the backend's work per request), segments per request.
pub const DISCARD_ALIGNMENT: u32 = 8;
pub const MAX_DISCARD_SECTORS: u32 = 8192;
pub const MAX_DISCARD_SEG: u32 = 1;
/// What GET_ID returns (zero-padded to 20 bytes).
pub const SERIAL: &[u8] = b"vmsync-disk";
const ID_LEN: usize = 20;
/// The bounce buffer: a multiple of SECTOR, so every backend call is too.
pub const BOUNCE_LEN: usize = 64 * 1024;

// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Status byte values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// The one flag of a discard / write-zeroes segment.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// The request header: type, reserved, sector.
const HEADER_LEN: u64 = 16;
/// A discard / write-zeroes segment: sector, sectors, flags.
const SEGMENT_LEN: u64 = 16;
/// struct virtio_blk_config up to write_zeroes_may_unmap and its padding.
const CONFIG_LEN: usize = 0x3c;

/// Requests by kind, bytes moved, failures, since the device was made
/// (observability; not device state, not saved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlkStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub get_ids: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    /// Requests of a type the device does not do (UNSUPP).
    pub unsupported: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests completed with IOERR, or without a status byte to say so.
    pub errors: u64,
    /// Rings found broken (the device then needs a reset).
    pub broken_rings: u64,
}

/// What one `process` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkReport {
    /// Requests returned to the driver (used entries added).
    pub completed: u32,
    /// Of those, the ones that failed (IOERR, UNSUPP, no status byte).
    pub failed: u32,
    /// InterruptStatus gained the used-buffer bit.
    pub interrupt: bool,
    /// The ring was broken: the device now needs a reset.
    pub broken: Option<QueueError>,
}

/// How a request ended: its status and the bytes written into its
/// device-writable buffers before the status byte.
struct Outcome {
    status: u8,
    written: u64,
}

impl Outcome {
    const fn ok(written: u64) -> Self {
        Outcome { status: VIRTIO_BLK_S_OK, written }
    }
    const IOERR: Outcome = Outcome { status: VIRTIO_BLK_S_IOERR, written: 0 };
    const UNSUPP: Outcome = Outcome { status: VIRTIO_BLK_S_UNSUPP, written: 0 };
}

pub struct VirtioBlk {
    transport: MmioTransport,
    /// Bytes, a multiple of SECTOR.
    capacity: u64,
    config: [u8; CONFIG_LEN],
    stats: BlkStats,
    /// The chain being served (capacity QUEUE_SIZE_MAX, never grows).
    chain: Vec<Desc>,
    bounce: Vec<u8>,
}

impl core::fmt::Debug for VirtioBlk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioBlk").field("transport", &self.transport).field("capacity", &self.capacity).field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl VirtioBlk {
    /// A disk of `capacity` bytes (rounded down to whole sectors), in reset.
    pub fn new(capacity: u64) -> Self {
        Self::with_transport(capacity, MmioTransport::new(DEVICE_ID, FEATURES))
    }

    fn with_transport(capacity: u64, transport: MmioTransport) -> Self {
        let capacity = capacity - capacity % SECTOR;
        let mut config = [0u8; CONFIG_LEN];
        let mut put = |at: usize, bytes: &[u8]| config[at..at + bytes.len()].copy_from_slice(bytes);
        put(0x00, &(capacity / SECTOR).to_le_bytes());
        put(0x0c, &SEG_MAX.to_le_bytes());
        put(0x14, &BLK_SIZE.to_le_bytes());
        put(0x24, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(0x28, &MAX_DISCARD_SEG.to_le_bytes());
        put(0x2c, &DISCARD_ALIGNMENT.to_le_bytes());
        put(0x30, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(0x34, &MAX_DISCARD_SEG.to_le_bytes());
        // write_zeroes_may_unmap: zeroing is a discard.
        put(0x38, &[1]);
        VirtioBlk { transport, capacity, config, stats: BlkStats::default(), chain: Vec::with_capacity(QUEUE_SIZE_MAX as usize), bounce: vec![0; BOUNCE_LEN] }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// A guest load in the device's window.
    pub fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        self.transport.read(offset, size, &self.config)
    }

    /// A guest store. Some(queue index) when the guest wrote QueueNotify:
    /// the caller runs `process` next.
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u64) -> Option<u16> {
        match self.transport.write(offset, size, value) {
            WriteOutcome::Notify(q) => Some(q),
            // The transport holds all the device's state; configuration
            // space is read-only (CONFIG_WCE is not offered).
            WriteOutcome::Done | WriteOutcome::Reset | WriteOutcome::Config { .. } => None,
        }
    }

    /// The device's interrupt line: InterruptStatus != 0.
    pub fn irq_level(&self) -> bool {
        self.transport.irq_level()
    }

    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// The transport, for status and diagnostics.
    pub fn transport(&self) -> &MmioTransport {
        &self.transport
    }

    /// Runs every available request to completion. Nothing happens unless
    /// the driver finished initialisation and the queue is ready. At most
    /// one queue's worth of chains per call: more cannot be available.
    pub fn process(&mut self, mem: &mut (impl GuestDma + ?Sized), disk: &mut (impl BlockBackend + ?Sized)) -> BlkReport {
        let mut report = BlkReport::default();
        if !self.transport.running() {
            return report;
        }
        for _ in 0..self.transport.queue().size {
            let head = match self.transport.queue_mut().pop(mem, &mut self.chain) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(e) => {
                    report.broken = Some(e);
                    break;
                }
            };
            let (ok, written) = self.serve(mem, disk, head);
            if let Err(e) = self.transport.queue_mut().push_used(mem, head.head, written) {
                report.broken = Some(e);
                break;
            }
            report.completed += 1;
            report.failed += !ok as u32;
        }
        if report.broken.is_some() {
            self.stats.broken_rings += 1;
            self.transport.set_needs_reset();
        }
        if report.completed > 0 && self.transport.queue().wants_interrupt(mem) {
            self.transport.signal_used();
            report.interrupt = true;
        }
        report
    }

    /// One request: runs it and writes its status byte. Whether it
    /// succeeded and the used length (bytes written, status included).
    fn serve(&mut self, mem: &mut (impl GuestDma + ?Sized), disk: &mut (impl BlockBackend + ?Sized), head: ChainHead) -> (bool, u32) {
        // The status byte is the last byte of the device-writable part.
        let Some(status_desc) = self.chain[head.readable..].iter().rev().find(|d| d.len > 0).copied() else {
            self.stats.errors += 1;
            return (false, 0);
        };
        let out = self.execute(mem, disk, head.readable);
        match out.status {
            VIRTIO_BLK_S_OK => {}
            VIRTIO_BLK_S_UNSUPP => self.stats.unsupported += 1,
            _ => self.stats.errors += 1,
        }
        // `pop` checked that addr + len does not wrap and len > 0 here.
        if mem.write(status_desc.addr + status_desc.len as u64 - 1, &[out.status]).is_err() {
            self.stats.errors += (out.status == VIRTIO_BLK_S_OK) as u64;
            return (false, u32::try_from(out.written).unwrap_or(u32::MAX));
        }
        (out.status == VIRTIO_BLK_S_OK, u32::try_from(out.written + 1).unwrap_or(u32::MAX))
    }

    fn execute(&mut self, mem: &mut (impl GuestDma + ?Sized), disk: &mut (impl BlockBackend + ?Sized), readable: usize) -> Outcome {
        let (rd, wr) = self.chain.split_at(readable);
        let rd_len: u64 = rd.iter().map(|d| d.len as u64).sum();
        // At least the status byte, as `serve` checked.
        let wr_data: u64 = wr.iter().map(|d| d.len as u64).sum::<u64>() - 1;
        let mut header = [0u8; HEADER_LEN as usize];
        if rd_len < HEADER_LEN || gather(mem, rd, 0, &mut header).is_err() {
            return Outcome::IOERR;
        }
        let ty = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match ty {
            VIRTIO_BLK_T_IN => {
                self.stats.reads += 1;
                let Some(offset) = self.range(sector, wr_data) else { return Outcome::IOERR };
                let mut done = 0;
                while done < wr_data {
                    let n = (wr_data - done).min(BOUNCE_LEN as u64) as usize;
                    let buf = &mut self.bounce[..n];
                    if disk.read(offset + done, buf).is_err() || scatter(mem, wr, done, buf).is_err() {
                        return Outcome { status: VIRTIO_BLK_S_IOERR, written: done };
                    }
                    done += n as u64;
                }
                self.stats.bytes_read += wr_data;
                Outcome::ok(wr_data)
            }
            VIRTIO_BLK_T_OUT => {
                self.stats.writes += 1;
                let len = rd_len - HEADER_LEN;
                let Some(offset) = self.range(sector, len) else { return Outcome::IOERR };
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(BOUNCE_LEN as u64) as usize;
                    let buf = &mut self.bounce[..n];
                    if gather(mem, rd, HEADER_LEN + done, buf).is_err() || disk.write(offset + done, buf).is_err() {
                        return Outcome::IOERR;
                    }
                    done += n as u64;
                }
                self.stats.bytes_written += len;
                Outcome::ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.stats.flushes += 1;
                match disk.flush() {
                    Ok(()) => Outcome::ok(0),
                    Err(_) => Outcome::IOERR,
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                self.stats.get_ids += 1;
                let mut id = [0u8; ID_LEN];
                id[..SERIAL.len()].copy_from_slice(SERIAL);
                let n = wr_data.min(ID_LEN as u64) as usize;
                match scatter(mem, wr, 0, &id[..n]) {
                    Ok(()) => Outcome::ok(n as u64),
                    Err(_) => Outcome::IOERR,
                }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let zeroes = ty == VIRTIO_BLK_T_WRITE_ZEROES;
                if zeroes {
                    self.stats.write_zeroes += 1;
                } else {
                    self.stats.discards += 1;
                }
                self.discard(mem, disk, rd, rd_len - HEADER_LEN, zeroes)
            }
            _ => Outcome::UNSUPP,
        }
    }

    /// A discard or write-zeroes request whose segments are the `len`
    /// readable bytes after the header.
    fn discard(&self, mem: &(impl GuestDma + ?Sized), disk: &mut (impl BlockBackend + ?Sized), rd: &[Desc], len: u64, zeroes: bool) -> Outcome {
        if len == 0 || !len.is_multiple_of(SEGMENT_LEN) || len / SEGMENT_LEN > MAX_DISCARD_SEG as u64 {
            return Outcome::IOERR;
        }
        let mut seg = [0u8; SEGMENT_LEN as usize];
        if gather(mem, rd, HEADER_LEN, &mut seg).is_err() {
            return Outcome::IOERR;
        }
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&seg[0..8]);
        let sector = u64::from_le_bytes(sector);
        let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        // §5.2.6.2: UNMAP is only for write-zeroes; unknown flags are UNSUPP.
        let allowed = if zeroes { VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP } else { 0 };
        if flags & !allowed != 0 {
            return Outcome::UNSUPP;
        }
        if sectors > MAX_DISCARD_SECTORS {
            return Outcome::IOERR;
        }
        let bytes = sectors as u64 * SECTOR;
        let Some(offset) = self.range(sector, bytes) else { return Outcome::IOERR };
        if bytes > 0 && disk.discard(offset, bytes).is_err() {
            return Outcome::IOERR;
        }
        Outcome::ok(0)
    }

    /// The byte offset of `len` bytes at `sector` if they are whole
    /// sectors inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR)?;
        check_range(self.capacity, offset, len).ok().map(|()| offset)
    }
}

/// Calls `f(gpa, at, n)` for the pieces of the `len` bytes that start
/// `skip` bytes into the descriptors' concatenation (`at` counts from the
/// first of them). The caller keeps `skip + len` inside the descriptors.
fn pieces(descs: &[Desc], mut skip: u64, mut len: u64, mut f: impl FnMut(u64, usize, usize) -> Result<(), DmaError>) -> Result<(), DmaError> {
    let mut at = 0usize;
    for d in descs {
        if len == 0 {
            break;
        }
        let dl = d.len as u64;
        if skip >= dl {
            skip -= dl;
            continue;
        }
        let n = (dl - skip).min(len);
        // `pop` checked that addr + len does not wrap.
        f(d.addr + skip, at, n as usize)?;
        at += n as usize;
        len -= n;
        skip = 0;
    }
    Ok(())
}

/// Reads `out.len()` bytes from `skip` bytes into the descriptors.
fn gather(mem: &(impl GuestDma + ?Sized), descs: &[Desc], skip: u64, out: &mut [u8]) -> Result<(), DmaError> {
    pieces(descs, skip, out.len() as u64, |gpa, at, n| mem.read(gpa, &mut out[at..at + n]))
}

/// Writes `bytes` from `skip` bytes into the descriptors.
fn scatter(mem: &mut (impl GuestDma + ?Sized), descs: &[Desc], skip: u64, bytes: &[u8]) -> Result<(), DmaError> {
    pieces(descs, skip, bytes.len() as u64, |gpa, at, n| mem.write(gpa, &bytes[at..at + n]))
}

// ---- snapshot ---------------------------------------------------------

impl VirtioBlk {
    /// The disk's device state: its capacity (u64, bytes), then the
    /// transport's registers and queue (`MmioTransport::save_into`).
    /// Requests run to completion at the notify, so none is in flight.
    pub(crate) fn save_into(&self, w: &mut Writer) {
        w.u64(self.capacity);
        self.transport.save_into(w);
    }

    /// What `save_into` wrote. The capacity must be whole sectors; the
    /// caller checks it against its backend's.
    pub(crate) fn restore_from(r: &mut Reader) -> Result<Self, SnapshotError> {
        let capacity = r.u64()?;
        if !capacity.is_multiple_of(SECTOR) {
            return Err(SnapshotError::BadValue { field: "virtio_blk.capacity", value: capacity });
        }
        let transport = MmioTransport::restore_from(r, DEVICE_ID, FEATURES)?;
        Ok(Self::with_transport(capacity, transport))
    }
}
