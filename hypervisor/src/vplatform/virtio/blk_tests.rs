//! The block device driven the way Linux's virtio_mmio + virtio_blk drive
//! it, on a vector of guest RAM and a vector of disk: the driver harness
//! (shared with `blk_hostile_tests.rs`) and the requests a well-behaved
//! driver makes.
extern crate std;

use std::vec;
use std::vec::Vec;

use super::blk::*;
use super::mmio::*;
use super::queue::*;
use super::*;

pub(super) const RAM: u64 = 0x4000_0000;
pub(super) const RAM_LEN: u64 = 1 << 20;
/// The rings of a 128-entry queue: 2 KiB of descriptors, the available
/// ring, the used ring (4 + 8 * 128 bytes).
pub(super) const DESC: u64 = RAM;
pub(super) const AVAIL: u64 = RAM + 0x800;
pub(super) const USED: u64 = RAM + 0x1000;
/// Where requests' buffers go.
pub(super) const BUFS: u64 = RAM + 0x2000;
pub(super) const QSIZE: u16 = 128;
pub(super) const DISK_LEN: u64 = 1 << 20;

// Registers (virtio 1.2 §4.2.2).
pub(super) const R_MAGIC: u64 = 0x000;
pub(super) const R_VERSION: u64 = 0x004;
pub(super) const R_DEVICE_ID: u64 = 0x008;
pub(super) const R_DEVICE_FEATURES: u64 = 0x010;
pub(super) const R_DEVICE_FEATURES_SEL: u64 = 0x014;
pub(super) const R_DRIVER_FEATURES: u64 = 0x020;
pub(super) const R_DRIVER_FEATURES_SEL: u64 = 0x024;
pub(super) const R_QUEUE_SEL: u64 = 0x030;
pub(super) const R_QUEUE_NUM_MAX: u64 = 0x034;
pub(super) const R_QUEUE_NUM: u64 = 0x038;
pub(super) const R_QUEUE_READY: u64 = 0x044;
pub(super) const R_QUEUE_NOTIFY: u64 = 0x050;
pub(super) const R_INTERRUPT_STATUS: u64 = 0x060;
pub(super) const R_INTERRUPT_ACK: u64 = 0x064;
pub(super) const R_STATUS: u64 = 0x070;
pub(super) const R_QUEUE_DESC_LOW: u64 = 0x080;
pub(super) const R_QUEUE_DESC_HIGH: u64 = 0x084;
pub(super) const R_QUEUE_DRIVER_LOW: u64 = 0x090;
pub(super) const R_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub(super) const R_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub(super) const R_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub(super) const R_CONFIG_GENERATION: u64 = 0x0fc;

/// Guest RAM on a vector; records every device write.
pub(super) struct Mem {
    pub(super) bytes: Vec<u8>,
    pub(super) writes: Vec<(u64, u64)>,
}

impl Mem {
    pub(super) fn new() -> Self {
        Mem { bytes: vec![0; RAM_LEN as usize], writes: Vec::new() }
    }

    pub(super) fn at(&self, gpa: u64, len: u64) -> Option<usize> {
        let off = gpa.checked_sub(RAM)?;
        (off.checked_add(len)? <= RAM_LEN).then_some(off as usize)
    }

    /// The driver's own stores (not recorded).
    pub(super) fn put(&mut self, gpa: u64, b: &[u8]) {
        let at = self.at(gpa, b.len() as u64).expect("driver store inside RAM");
        self.bytes[at..at + b.len()].copy_from_slice(b);
    }

    pub(super) fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
        let at = self.at(gpa, len as u64).expect("driver load inside RAM");
        self.bytes[at..at + len].to_vec()
    }

    pub(super) fn u16(&self, gpa: u64) -> u16 {
        u16::from_le_bytes(self.get(gpa, 2).try_into().unwrap())
    }

    pub(super) fn u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.get(gpa, 4).try_into().unwrap())
    }
}

impl GuestDma for Mem {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), DmaError> {
        let at = self.at(gpa, out.len() as u64).ok_or(DmaError { gpa, len: out.len() as u64 })?;
        out.copy_from_slice(&self.bytes[at..at + out.len()]);
        Ok(())
    }

    fn write(&mut self, gpa: u64, b: &[u8]) -> Result<(), DmaError> {
        let at = self.at(gpa, b.len() as u64).ok_or(DmaError { gpa, len: b.len() as u64 })?;
        self.bytes[at..at + b.len()].copy_from_slice(b);
        self.writes.push((gpa, b.len() as u64));
        Ok(())
    }
}

/// The disk on a vector; counts what the model must never ask.
#[derive(Default)]
pub(super) struct Disk {
    pub(super) data: Vec<u8>,
    pub(super) flushes: u32,
    pub(super) discards: Vec<(u64, u64)>,
    /// Calls with an unaligned or out-of-range request (must stay 0).
    pub(super) bad_calls: u32,
    /// Fail every request (a broken store).
    pub(super) fail: bool,
    /// Largest buffer handed to read or write.
    pub(super) largest: usize,
}

impl Disk {
    pub(super) fn new() -> Self {
        let data = (0..DISK_LEN).map(|i| (i / SECTOR) as u8 ^ (i as u8)).collect();
        Disk { data, ..Disk::default() }
    }

    pub(super) fn check(&mut self, offset: u64, len: u64) -> Result<usize, BackendError> {
        if check_range(DISK_LEN, offset, len).is_err() {
            self.bad_calls += 1;
            return Err(BackendError::OutOfRange);
        }
        if self.fail {
            return Err(BackendError::Io);
        }
        Ok(offset as usize)
    }
}

impl BlockBackend for Disk {
    fn capacity(&self) -> u64 {
        DISK_LEN
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let at = self.check(offset, buf.len() as u64)?;
        self.largest = self.largest.max(buf.len());
        buf.copy_from_slice(&self.data[at..at + buf.len()]);
        Ok(())
    }

    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        let at = self.check(offset, buf.len() as u64)?;
        self.largest = self.largest.max(buf.len());
        self.data[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        if self.fail {
            return Err(BackendError::Io);
        }
        self.flushes += 1;
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BackendError> {
        let at = self.check(offset, len)?;
        self.data[at..at + len as usize].fill(0);
        self.discards.push((offset, len));
        Ok(())
    }
}

/// One buffer of a request: guest address, length, device-writable.
pub(super) type Buf = (u64, u32, bool);

/// A driver doing what Linux's virtio_mmio and virtio_blk do.
pub(super) struct Driver {
    pub(super) dev: VirtioBlk,
    pub(super) mem: Mem,
    pub(super) disk: Disk,
    pub(super) avail_idx: u16,
    pub(super) used_seen: u16,
    pub(super) next_desc: u16,
}

impl Driver {
    pub(super) fn new() -> Self {
        let mut d = Driver { dev: VirtioBlk::new(DISK_LEN), mem: Mem::new(), disk: Disk::new(), avail_idx: 0, used_seen: 0, next_desc: 0 };
        d.probe();
        d
    }

    pub(super) fn reg(&mut self, off: u64) -> u32 {
        self.dev.mmio_read(off, 4) as u32
    }

    pub(super) fn set(&mut self, off: u64, v: u32) -> Option<u16> {
        self.dev.mmio_write(off, 4, v as u64)
    }

    pub(super) fn status(&mut self) -> u8 {
        self.reg(R_STATUS) as u8
    }

    /// virtio_mmio_probe, virtio_dev_probe, virtblk_probe, init_vq.
    pub(super) fn probe(&mut self) {
        assert_eq!(self.reg(R_MAGIC), 0x7472_6976);
        assert_eq!(self.reg(R_VERSION), 2);
        assert_eq!(self.reg(R_DEVICE_ID), 2);
        self.set(R_STATUS, 0);
        self.set(R_STATUS, STATUS_ACKNOWLEDGE as u32);
        self.set(R_STATUS, (STATUS_ACKNOWLEDGE | STATUS_DRIVER) as u32);
        self.set(R_DEVICE_FEATURES_SEL, 1);
        let mut offered = (self.reg(R_DEVICE_FEATURES) as u64) << 32;
        self.set(R_DEVICE_FEATURES_SEL, 0);
        offered |= self.reg(R_DEVICE_FEATURES) as u64;
        self.set(R_DRIVER_FEATURES_SEL, 1);
        self.set(R_DRIVER_FEATURES, (offered >> 32) as u32);
        self.set(R_DRIVER_FEATURES_SEL, 0);
        self.set(R_DRIVER_FEATURES, offered as u32);
        self.set(R_STATUS, (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK) as u32);
        assert_ne!(self.status() & STATUS_FEATURES_OK, 0, "features accepted");
        self.set(R_QUEUE_SEL, 0);
        assert_eq!(self.reg(R_QUEUE_READY), 0);
        assert_eq!(self.reg(R_QUEUE_NUM_MAX), QSIZE as u32);
        self.mem.put(DESC, &[0; 0x2000]);
        self.set(R_QUEUE_NUM, QSIZE as u32);
        for (lo, hi, v) in
            [(R_QUEUE_DESC_LOW, R_QUEUE_DESC_HIGH, DESC), (R_QUEUE_DRIVER_LOW, R_QUEUE_DRIVER_HIGH, AVAIL), (R_QUEUE_DEVICE_LOW, R_QUEUE_DEVICE_HIGH, USED)]
        {
            self.set(lo, v as u32);
            self.set(hi, (v >> 32) as u32);
        }
        self.set(R_QUEUE_READY, 1);
        assert_eq!(self.reg(R_QUEUE_READY), 1);
        self.set(R_STATUS, (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK) as u32);
        self.avail_idx = 0;
        self.used_seen = 0;
        self.next_desc = 0;
    }

    /// Puts a chain of `bufs` into the descriptor table and makes it
    /// available. Returns its head.
    pub(super) fn submit(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = (head as usize + i) % QSIZE as usize;
            let next = ((idx + 1) % QSIZE as usize) as u16;
            let mut flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.put(DESC + 16 * idx as u64, &d);
        }
        self.next_desc = ((head as usize + bufs.len()) % QSIZE as usize) as u16;
        self.mem.put(AVAIL + 4 + 2 * (self.avail_idx % QSIZE) as u64, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.put(AVAIL + 2, &self.avail_idx.to_le_bytes());
        head
    }

    pub(super) fn notify(&mut self) -> BlkReport {
        assert_eq!(self.set(R_QUEUE_NOTIFY, 0), Some(0));
        self.dev.process(&mut self.mem, &mut self.disk)
    }

    /// The used entries added since the last call: (id, len).
    pub(super) fn used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.mem.u16(USED + 2);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = USED + 4 + 8 * (self.used_seen % QSIZE) as u64;
            out.push((self.mem.u32(slot), self.mem.u32(slot + 4)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// The interrupt handler: reads and acknowledges InterruptStatus.
    pub(super) fn ack(&mut self) -> u32 {
        let s = self.reg(R_INTERRUPT_STATUS);
        self.set(R_INTERRUPT_ACK, s);
        assert!(!self.dev.irq_level());
        s
    }

    /// One request as virtio_blk builds it: a header, `out` (readable) or
    /// `in_len` bytes (writable) of data cut into descriptors of at most
    /// `seg` bytes with gaps between them, and the status byte. Returns the
    /// status, the data read and the used entry's length.
    pub(super) fn request(&mut self, ty: u32, sector: u64, out: &[u8], in_len: usize, seg: usize) -> (u8, Vec<u8>, u32) {
        let mut bufs: Vec<Buf> = Vec::new();
        let mut at = BUFS;
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&ty.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.put(at, &header);
        bufs.push((at, 16, false));
        at += 16 + 48;
        for chunk in out.chunks(seg) {
            self.mem.put(at, chunk);
            bufs.push((at, chunk.len() as u32, false));
            at += chunk.len() as u64 + 64;
        }
        let mut pieces = Vec::new();
        let mut left = in_len;
        while left > 0 {
            let n = left.min(seg);
            self.mem.put(at, &vec![0xee; n]);
            bufs.push((at, n as u32, true));
            pieces.push((at, n));
            at += n as u64 + 64;
            left -= n;
        }
        let status_at = at;
        self.mem.put(status_at, &[0xff]);
        bufs.push((status_at, 1, true));
        let head = self.submit(&bufs);
        let report = self.notify();
        assert_eq!(report.completed, 1);
        assert_eq!(report.broken, None);
        assert!(report.interrupt && self.dev.irq_level());
        assert_eq!(self.ack(), 1, "used buffer interrupt");
        let used = self.used();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, head as u32);
        let data = pieces.iter().flat_map(|&(a, n)| self.mem.get(a, n)).collect();
        (self.mem.get(status_at, 1)[0], data, used[0].1)
    }

    pub(super) fn write(&mut self, sector: u64, data: &[u8], seg: usize) -> u8 {
        let (s, _, len) = self.request(VIRTIO_BLK_T_OUT, sector, data, 0, seg);
        assert_eq!(len, 1, "only the status byte written");
        s
    }

    pub(super) fn read(&mut self, sector: u64, len: usize, seg: usize) -> (u8, Vec<u8>) {
        let (s, data, used) = self.request(VIRTIO_BLK_T_IN, sector, &[], len, seg);
        if s == VIRTIO_BLK_S_OK {
            assert_eq!(used as usize, len + 1);
        }
        (s, data)
    }

    pub(super) fn discard_like(&mut self, ty: u32, segs: &[(u64, u32, u32)]) -> u8 {
        let bytes: Vec<u8> =
            segs.iter().flat_map(|&(s, n, f)| [s.to_le_bytes().to_vec(), n.to_le_bytes().to_vec(), f.to_le_bytes().to_vec()].concat()).collect();
        self.request(ty, 0, &bytes, 0, 4096).0
    }
}

pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 9) as u8).collect()
}

#[test]
fn probes_like_linux() {
    let mut d = Driver::new();
    assert_eq!(d.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert_eq!(d.dev.transport().negotiated(), FEATURES);
    assert_eq!(FEATURES, 1 << 32 | 1 << 2 | 1 << 6 | 1 << 9 | 1 << 13 | 1 << 14);
    // virtblk_probe's config reads, at their struct virtio_blk_config offsets.
    assert_eq!(d.dev.mmio_read(0x100, 8), DISK_LEN / 512, "capacity in sectors");
    assert_eq!(d.dev.mmio_read(0x104, 4), 0, "high half");
    assert_eq!(d.dev.mmio_read(0x10c, 4), 126, "seg_max");
    assert_eq!(d.dev.mmio_read(0x114, 4), 4096, "blk_size");
    assert_eq!(d.dev.mmio_read(0x124, 4), MAX_DISCARD_SECTORS as u64);
    assert_eq!(d.dev.mmio_read(0x128, 4), 1, "max_discard_seg");
    assert_eq!(d.dev.mmio_read(0x12c, 4), 8, "discard_sector_alignment");
    assert_eq!(d.dev.mmio_read(0x130, 4), MAX_DISCARD_SECTORS as u64);
    assert_eq!(d.dev.mmio_read(0x134, 4), 1, "max_write_zeroes_seg");
    assert_eq!(d.dev.mmio_read(0x138, 1), 1, "write_zeroes_may_unmap");
    assert_eq!(d.reg(R_CONFIG_GENERATION), 0);
    // Configuration space is read-only.
    assert_eq!(d.dev.mmio_write(0x100, 4, 7), None);
    assert_eq!(d.dev.mmio_read(0x100, 8), DISK_LEN / 512);
    assert_eq!(d.dev.capacity(), DISK_LEN);
    assert_eq!(VirtioBlk::new(4097).capacity(), 4096, "whole sectors");
    assert!(!d.dev.irq_level());
}

#[test]
fn reads_and_writes_multi_segment() {
    let mut d = Driver::new();
    let data = pattern(8192, 1);
    // Segments that are not whole sectors: only the total must be.
    assert_eq!(d.write(16, &data, 1000), VIRTIO_BLK_S_OK);
    assert_eq!(&d.disk.data[16 * 512..16 * 512 + 8192], &data[..]);
    let (s, back) = d.read(16, 8192, 3000);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(back, data);
    let (s, back) = d.read(0, 4096, 4096);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(back, &d.disk.data[..4096]);
    // The last sector of the disk.
    let last = DISK_LEN / 512 - 1;
    assert_eq!(d.write(last, &pattern(512, 9), 512), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(last, 512, 512), (VIRTIO_BLK_S_OK, pattern(512, 9)));
    let st = d.dev.stats().clone();
    assert_eq!((st.reads, st.writes, st.bytes_read, st.bytes_written, st.errors), (3, 2, 8192 + 4096 + 512, 8192 + 512, 0));
    assert_eq!(d.disk.bad_calls, 0);
}

#[test]
fn runs_on_trait_objects() {
    // The node holds the backend as Box<dyn BlockBackend + Send>.
    let mut d = Driver::new();
    let mut disk: std::boxed::Box<dyn BlockBackend + Send> = std::boxed::Box::new(Disk::new());
    let mem: &mut dyn GuestDma = &mut d.mem;
    mem.write(BUFS, &[0; 16]).unwrap();
    d.submit(&[(BUFS, 16, false), (BUFS + 512, 512, true), (BUFS + 64, 1, true)]);
    assert_eq!(d.set(R_QUEUE_NOTIFY, 0), Some(0));
    let mem: &mut dyn GuestDma = &mut d.mem;
    let r = d.dev.process(mem, disk.as_mut());
    assert_eq!((r.completed, r.failed), (1, 0));
    assert_eq!(d.mem.get(BUFS + 512, 512), &Disk::new().data[..512]);
}

#[test]
fn device_writes_into_guest_memory_are_dirty() {
    use crate::memory::guest::GuestMemory;
    // The driver's rings and request in a Mem, copied into real guest
    // memory before tracking starts; then only the device writes.
    let mut d = Driver::new();
    let mut h = [0u8; 16];
    h[8..16].copy_from_slice(&9u64.to_le_bytes());
    d.mem.put(BUFS, &h);
    let data_at = BUFS + 0x5000;
    d.submit(&[(BUFS, 16, false), (data_at, 4096, true), (BUFS + 0x40, 1, true)]);
    let mut backing = d.mem.bytes.clone();
    // SAFETY: the vector outlives `gm` and nothing else touches it meanwhile.
    let mut gm = unsafe { GuestMemory::new(RAM, RAM_LEN, backing.as_mut_ptr()) };
    gm.start_tracking().unwrap();
    assert_eq!(d.set(R_QUEUE_NOTIFY, 0), Some(0));
    let r = d.dev.process(&mut gm, &mut d.disk);
    assert_eq!((r.completed, r.failed), (1, 0));
    let mut dirty: Vec<u64> = gm.cut().unwrap().iter().collect();
    dirty.sort();
    let page = |gpa: u64| (gpa - RAM) / 4096;
    assert_eq!(dirty, [page(USED), page(BUFS), page(data_at)], "used ring, status byte, data");
    drop(gm);
    assert_eq!(&backing[(data_at - RAM) as usize..][..4096], &d.disk.data[9 * 512..9 * 512 + 4096]);
}

#[test]
fn large_requests_go_through_the_bounce_buffer() {
    let mut d = Driver::new();
    let len = 3 * BOUNCE_LEN + 4096;
    let data = pattern(len, 5);
    assert_eq!(d.write(8, &data, 126 * 1024), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(8, len, 40 * 1024), (VIRTIO_BLK_S_OK, data));
    assert_eq!(d.disk.largest, BOUNCE_LEN, "never more than the bounce buffer at once");
    assert_eq!(d.disk.bad_calls, 0);
}

#[test]
fn flush_and_get_id() {
    let mut d = Driver::new();
    assert_eq!(d.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0, 512).0, VIRTIO_BLK_S_OK);
    assert_eq!(d.disk.flushes, 1);
    let (s, id, used) = d.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20, 20);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(&id[..11], b"vmsync-disk");
    assert_eq!(&id[11..], &[0; 9]);
    assert_eq!(used, 21);
    let (s, id, used) = d.request(VIRTIO_BLK_T_GET_ID, 0, &[], 6, 6);
    assert_eq!((s, &id[..], used), (VIRTIO_BLK_S_OK, &b"vmsync"[..], 7), "cut to the buffer");
    d.disk.fail = true;
    assert_eq!(d.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0, 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!((d.dev.stats().flushes, d.dev.stats().get_ids, d.dev.stats().errors), (2, 2, 1));
}

#[test]
fn discard_and_write_zeroes() {
    let mut d = Driver::new();
    assert_eq!(d.discard_like(VIRTIO_BLK_T_DISCARD, &[(8, 16, 0)]), VIRTIO_BLK_S_OK);
    assert_eq!(d.disk.discards, [(8 * 512, 16 * 512)]);
    assert!(d.disk.data[8 * 512..24 * 512].iter().all(|&b| b == 0));
    assert_ne!(d.disk.data[24 * 512 + 1], 0);
    assert_eq!(d.discard_like(VIRTIO_BLK_T_WRITE_ZEROES, &[(40, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]), VIRTIO_BLK_S_OK);
    assert_eq!(d.discard_like(VIRTIO_BLK_T_WRITE_ZEROES, &[(48, 8, 0)]), VIRTIO_BLK_S_OK);
    assert_eq!(d.disk.discards.len(), 3);
    assert_eq!(d.read(40, 16 * 512, 4096), (VIRTIO_BLK_S_OK, vec![0; 16 * 512]));
    // UNMAP is for write-zeroes only; unknown flags are unsupported.
    assert_eq!(d.discard_like(VIRTIO_BLK_T_DISCARD, &[(8, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(d.discard_like(VIRTIO_BLK_T_WRITE_ZEROES, &[(8, 8, 2)]), VIRTIO_BLK_S_UNSUPP);
    // More segments than max_discard_seg, none, a partial one, past the end, too long.
    assert_eq!(d.discard_like(VIRTIO_BLK_T_DISCARD, &[(8, 8, 0), (32, 8, 0)]), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.discard_like(VIRTIO_BLK_T_DISCARD, &[]), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.request(VIRTIO_BLK_T_DISCARD, 0, &[0; 8], 0, 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(d.discard_like(VIRTIO_BLK_T_DISCARD, &[(DISK_LEN / 512 - 4, 8, 0)]), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.discard_like(VIRTIO_BLK_T_DISCARD, &[(u64::MAX, 8, 0)]), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.discard_like(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, MAX_DISCARD_SECTORS + 1, 0)]), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.disk.discards.len(), 3, "none of those reached the disk");
    assert_eq!(d.disk.bad_calls, 0);
}

#[test]
fn bad_requests_get_ioerr_or_unsupp() {
    let mut d = Driver::new();
    let sectors = DISK_LEN / 512;
    assert_eq!(d.read(sectors, 512, 512).0, VIRTIO_BLK_S_IOERR, "past the end");
    assert_eq!(d.read(sectors - 1, 1024, 512).0, VIRTIO_BLK_S_IOERR, "runs past the end");
    assert_eq!(d.read(u64::MAX / 256, 512, 512).0, VIRTIO_BLK_S_IOERR, "sector * 512 overflows");
    assert_eq!(d.write(sectors, &[1; 512], 512), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.read(0, 700, 700).0, VIRTIO_BLK_S_IOERR, "not whole sectors");
    assert_eq!(d.write(0, &[1; 100], 100), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.request(VIRTIO_BLK_T_GET_ID + 1, 0, &[], 0, 512).0, VIRTIO_BLK_S_UNSUPP);
    assert_eq!(d.request(0xdead_beef, 0, &[], 0, 512).0, VIRTIO_BLK_S_UNSUPP);
    d.disk.fail = true;
    assert_eq!(d.read(0, 512, 512).0, VIRTIO_BLK_S_IOERR, "the backend failed");
    assert_eq!(d.write(0, &[1; 512], 512), VIRTIO_BLK_S_IOERR);
    d.disk.fail = false;
    assert_eq!(d.dev.stats().errors, 8);
    assert_eq!(d.dev.stats().unsupported, 2);
    assert_eq!(d.disk.bad_calls, 0, "nothing bad reached the backend");

    // A short header: 8 readable bytes.
    d.mem.put(BUFS, &[0; 8]);
    d.mem.put(BUFS + 64, &[0xff]);
    d.submit(&[(BUFS, 8, false), (BUFS + 64, 1, true)]);
    assert_eq!(d.notify().failed, 1);
    assert_eq!(d.mem.get(BUFS + 64, 1), [VIRTIO_BLK_S_IOERR]);
    // No status byte: returned with nothing written.
    let head = d.submit(&[(BUFS, 16, false), (BUFS + 64, 0, true)]);
    let used_before = d.used();
    assert_eq!(used_before.len(), 1);
    let r = d.notify();
    assert_eq!((r.completed, r.failed, r.broken), (1, 1, None));
    assert_eq!(d.used(), [(head as u32, 0)]);
    // Data outside RAM: IOERR, the status still written.
    d.mem.put(BUFS, &[0; 16]); // IN, sector 0
    d.mem.put(BUFS + 64, &[0xff]);
    d.submit(&[(BUFS, 16, false), (RAM + RAM_LEN - 256, 512, true), (BUFS + 64, 1, true)]);
    assert_eq!(d.notify().failed, 1);
    assert_eq!(d.mem.get(BUFS + 64, 1), [VIRTIO_BLK_S_IOERR]);
    // The status byte outside RAM: completed with what was written.
    d.submit(&[(BUFS, 16, false), (BUFS + 128, 512, true), (RAM + RAM_LEN, 1, true)]);
    let r = d.notify();
    assert_eq!((r.completed, r.failed, r.broken), (1, 1, None));
    assert_eq!(d.used().last().unwrap().1, 512);
    assert_eq!(d.status() & STATUS_NEEDS_RESET, 0, "request errors do not break the device");
    // And it still works.
    assert_eq!(d.read(0, 512, 512).0, VIRTIO_BLK_S_OK);
}

#[test]
fn no_interrupt_flag_is_honoured() {
    let mut d = Driver::new();
    d.mem.put(AVAIL, &VIRTQ_AVAIL_F_NO_INTERRUPT.to_le_bytes());
    d.mem.put(BUFS, &[0; 16]);
    d.submit(&[(BUFS, 16, false), (BUFS + 512, 512, true), (BUFS + 64, 1, true)]);
    let r = d.notify();
    assert_eq!((r.completed, r.interrupt), (1, false));
    assert!(!d.dev.irq_level());
    assert_eq!(d.used().len(), 1);
    d.mem.put(AVAIL, &[0, 0]);
    assert_eq!(d.read(0, 512, 512).0, VIRTIO_BLK_S_OK, "interrupts again");
}

#[test]
fn many_requests_per_notify_and_wrapping_indices() {
    let mut d = Driver::new();
    // 22000 rounds of 3 requests: the ring and the 16-bit indices wrap.
    for round in 0..22_000u32 {
        let mut heads = Vec::new();
        for k in 0..3u64 {
            let buf = BUFS + k * 0x1000;
            let mut h = [0u8; 16];
            h[8..16].copy_from_slice(&(k + round as u64 % 100).to_le_bytes());
            d.mem.put(buf, &h);
            heads.push(d.submit(&[(buf, 16, false), (buf + 0x100, 512, true), (buf + 0x80, 1, true)]) as u32);
        }
        let r = d.notify();
        assert_eq!((r.completed, r.failed), (3, 0));
        let used = d.used();
        assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads);
        for k in 0..3u64 {
            let sector = (k + round as u64 % 100) as usize;
            assert_eq!(d.mem.get(BUFS + k * 0x1000 + 0x100, 512), &d.disk.data[sector * 512..sector * 512 + 512]);
        }
        d.ack();
    }
    assert_eq!(d.dev.transport().queue().used_idx, (66_000 % 65_536) as u16);
}
