//! The block device under a hostile driver: broken chains and rings,
//! requests at the wrong time, resets, register noise, random memory; and
//! its state in a snapshot. The driver harness is `blk_tests.rs`'s.
extern crate std;

use std::vec;
use std::vec::Vec;

use super::blk::*;
use super::blk_tests::*;
use super::mmio::*;
use super::queue::*;
use super::*;
use crate::vplatform::arm::snapshot_tests::Rng;
use crate::vplatform::snapshot::{self, Reader, SnapshotError};

/// One descriptor table entry as written: addr, len, flags, next.
type Entry = (u64, u32, u16, u16);

/// A chain the driver wrote by hand into the descriptor table, and the
/// head to make available.
fn broken(table: &[Entry], head: u16) -> (Driver, BlkReport) {
    let mut d = Driver::new();
    d.mem.put(BUFS, &[0; 16]);
    for (i, &(a, l, f, n)) in table.iter().enumerate() {
        let mut e = [0u8; 16];
        e[0..8].copy_from_slice(&a.to_le_bytes());
        e[8..12].copy_from_slice(&l.to_le_bytes());
        e[12..14].copy_from_slice(&f.to_le_bytes());
        e[14..16].copy_from_slice(&n.to_le_bytes());
        d.mem.put(DESC + 16 * i as u64, &e);
    }
    d.mem.put(AVAIL + 4, &head.to_le_bytes());
    d.mem.put(AVAIL + 2, &1u16.to_le_bytes());
    let r = d.notify();
    (d, r)
}

#[test]
fn broken_chains_need_a_reset() {
    const N: u16 = VIRTQ_DESC_F_NEXT;
    const W: u16 = VIRTQ_DESC_F_WRITE;
    let cases: [(&[Entry], u16, QueueError); 7] = [
        (&[(BUFS, 16, N, 1), (BUFS + 64, 1, N, 0)], 0, QueueError::ChainTooLong),
        (&[(BUFS, 16, N, 0)], 0, QueueError::ChainTooLong),
        (&[(BUFS, 16, 0, 0)], 200, QueueError::IndexOutOfRange(200)),
        (&[(BUFS, 16, N, 128)], 0, QueueError::IndexOutOfRange(128)),
        (&[(BUFS, 16, VIRTQ_DESC_F_INDIRECT, 0)], 0, QueueError::Indirect),
        (&[(BUFS + 64, 1, W | N, 1), (BUFS, 16, 0, 0)], 0, QueueError::ReadAfterWrite),
        (&[(u64::MAX - 4, 16, 0, 0)], 0, QueueError::AddressOverflow { addr: u64::MAX - 4, len: 16 }),
    ];
    for (table, head, want) in cases {
        let (mut d, r) = broken(table, head);
        assert_eq!(r.broken, Some(want));
        assert_eq!(r.completed, 0);
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0, "{want:?}");
        assert_eq!(d.reg(R_INTERRUPT_STATUS), INT_CONFIG_CHANGE as u32, "the driver hears of it");
        assert!(d.dev.irq_level());
        assert_eq!(d.dev.stats().broken_rings, 1);
        assert!(d.mem.writes.is_empty(), "{want:?}: nothing written");
        // Stopped until reset; after a reset it works again.
        assert_eq!(d.notify(), BlkReport::default());
        d.probe();
        assert_eq!(d.read(1, 512, 512).0, VIRTIO_BLK_S_OK);
    }
}

#[test]
fn broken_rings_need_a_reset() {
    // The driver claims more new entries than the queue holds.
    let mut d = Driver::new();
    d.mem.put(AVAIL + 2, &(QSIZE + 1).to_le_bytes());
    assert_eq!(d.notify().broken, Some(QueueError::AvailIdx { avail: QSIZE + 1, last_avail: 0 }));
    assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);

    // Each ring outside RAM (the driver's stores still go to the old ones).
    for reg in [R_QUEUE_DRIVER_LOW, R_QUEUE_DEVICE_LOW, R_QUEUE_DESC_LOW] {
        let mut d = Driver::new();
        d.set(R_QUEUE_READY, 0);
        d.set(reg, 0x1000);
        d.set(R_QUEUE_READY, 1);
        d.mem.put(BUFS, &[0; 16]);
        d.submit(&[(BUFS, 16, false), (BUFS + 512, 512, true), (BUFS + 64, 1, true)]);
        let r = d.notify();
        assert!(matches!(r.broken, Some(QueueError::Dma(DmaError { gpa: 0x1000..=0x1fff, .. }))), "{r:?}");
        assert_eq!(r.completed, 0);
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
    }
}

#[test]
fn nothing_runs_before_driver_ok_or_with_the_queue_down() {
    // Queue set up, FEATURES_OK but not DRIVER_OK.
    let mut d = Driver::new();
    d.set(R_STATUS, 0);
    d.set(R_STATUS, (STATUS_ACKNOWLEDGE | STATUS_DRIVER) as u32);
    d.set(R_DRIVER_FEATURES_SEL, 1);
    d.set(R_DRIVER_FEATURES, 1);
    d.set(R_STATUS, (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK) as u32);
    d.set(R_QUEUE_NUM, QSIZE as u32);
    d.set(R_QUEUE_DESC_LOW, DESC as u32);
    d.set(R_QUEUE_DRIVER_LOW, AVAIL as u32);
    d.set(R_QUEUE_DEVICE_LOW, USED as u32);
    d.set(R_QUEUE_READY, 1);
    d.avail_idx = 0;
    d.next_desc = 0;
    d.mem.put(BUFS, &[0; 16]);
    d.submit(&[(BUFS, 16, false), (BUFS + 512, 512, true), (BUFS + 64, 1, true)]);
    assert_eq!(d.notify(), BlkReport::default());
    // DRIVER_OK without FEATURES_OK: still nothing.
    let mut e = Driver::new();
    e.set(R_STATUS, 0);
    e.set(R_STATUS, (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK) as u32);
    assert_eq!(e.dev.process(&mut e.mem, &mut e.disk), BlkReport::default());
    // DRIVER_OK, queue not ready.
    let mut f = Driver::new();
    f.set(R_QUEUE_READY, 0);
    f.mem.put(BUFS, &[0; 16]);
    f.submit(&[(BUFS, 16, false), (BUFS + 512, 512, true), (BUFS + 64, 1, true)]);
    assert_eq!(f.notify(), BlkReport::default());
    // FAILED set by the driver.
    let mut g = Driver::new();
    let s = g.status();
    g.set(R_STATUS, (s | STATUS_FAILED) as u32);
    g.submit(&[(BUFS, 16, false), (BUFS + 512, 512, true), (BUFS + 64, 1, true)]);
    assert_eq!(g.notify(), BlkReport::default());
    for x in [&d, &e, &f, &g] {
        assert!(x.mem.writes.is_empty());
        assert!(!x.dev.irq_level());
    }
    // Now finish: the request made available before DRIVER_OK runs.
    let s = d.status();
    d.set(R_STATUS, (s | STATUS_DRIVER_OK) as u32);
    assert_eq!(d.notify().completed, 1);
}

#[test]
fn reset_midway() {
    let mut d = Driver::new();
    assert_eq!(d.write(3, &pattern(512, 3), 512), VIRTIO_BLK_S_OK);
    d.mem.put(BUFS, &[0; 16]);
    d.submit(&[(BUFS, 16, false), (BUFS + 512, 512, true), (BUFS + 64, 1, true)]);
    d.set(R_STATUS, 0);
    assert_eq!(d.status(), 0);
    assert_eq!(d.reg(R_QUEUE_READY), 0);
    assert_eq!(d.notify(), BlkReport::default(), "a reset device does nothing");
    // Linux re-probes with zeroed rings; indices start over.
    d.probe();
    assert_eq!(d.dev.transport().queue().last_avail, 0);
    assert_eq!(d.read(3, 512, 512), (VIRTIO_BLK_S_OK, pattern(512, 3)));
}

#[test]
fn register_noise_never_breaks_the_model() {
    let mut d = Driver::new();
    let mut rng = Rng(0x5eed_0000_0000_0001);
    for _ in 0..20_000 {
        let off = rng.next() % 0x220;
        let size = [1u8, 2, 4, 8, 3][(rng.next() % 5) as usize];
        if rng.next().is_multiple_of(2) {
            d.dev.mmio_read(off, size);
        } else if off != R_STATUS || rng.next().is_multiple_of(8) {
            d.dev.mmio_write(off, size, rng.next());
        }
        if rng.next().is_multiple_of(64) {
            d.dev.process(&mut d.mem, &mut d.disk);
        }
    }
    assert!(d.dev.transport().unknown_accesses() > 0);
    assert_eq!(d.disk.bad_calls, 0);
    // A driver can always start over.
    d.probe();
    assert_eq!(d.read(2, 1024, 512).0, VIRTIO_BLK_S_OK);
}

/// Random bytes in the rings and the buffers, random register stores: the
/// model never panics, its backend calls stay in range, and every byte it
/// writes is in the used ring or in a buffer a descriptor marked
/// device-writable.
#[test]
fn random_rings_stay_contained() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut completed = 0;
    for _ in 0..400 {
        let mut d = Driver::new();
        for _ in 0..8 {
            // Sometimes a plausible request with random parts.
            if rng.next().is_multiple_of(2) {
                let mut header = [0u8; 16];
                header[0] = [0, 1, 4, 8, 11, 13, rng.next() as u8][(rng.next() % 7) as usize];
                header[8..10].copy_from_slice(&((rng.next() % 2100) as u16).to_le_bytes());
                d.mem.put(BUFS, &header);
                let mut bufs: Vec<Buf> = vec![(BUFS, 16, false)];
                for _ in 0..rng.next() % 4 {
                    let len = [512, 1024, 16, 1, (rng.next() % 5000) as u32][(rng.next() % 5) as usize];
                    bufs.push((BUFS + 0x100 + rng.next() % 0x8000, len, !rng.next().is_multiple_of(3)));
                }
                bufs.push((BUFS + 0x40, 1, true));
                bufs.sort_by_key(|b| b.2);
                d.submit(&bufs);
            }
            // Garbage in the rings and near them, biased to small values
            // so that chains and indices are sometimes valid.
            for _ in 0..rng.next() % 8 {
                let at = RAM + rng.next() % 0x3000;
                let v = match rng.next() % 4 {
                    0 => rng.next() % 4,
                    1 => rng.next() % 256,
                    2 => BUFS + rng.next() % 0x8000,
                    _ => rng.next(),
                };
                let len = 1 + (rng.next() % 8) as usize;
                if d.mem.at(at, len as u64).is_some() {
                    d.mem.put(at, &v.to_le_bytes()[..len]);
                }
            }
            if rng.next().is_multiple_of(4) {
                d.dev.mmio_write(rng.next() % 0x100, 4, rng.next() % 300);
            }
            let q = *d.dev.transport().queue();
            let table: Vec<Desc> = (0..q.size as u64)
                .filter_map(|i| {
                    let e = d.mem.at(q.desc + 16 * i, 16).map(|_| d.mem.get(q.desc + 16 * i, 16))?;
                    let flags = u16::from_le_bytes([e[12], e[13]]);
                    Some(Desc {
                        addr: u64::from_le_bytes(e[0..8].try_into().unwrap()),
                        len: u32::from_le_bytes(e[8..12].try_into().unwrap()),
                        write: flags & VIRTQ_DESC_F_WRITE != 0,
                    })
                })
                .collect();
            d.mem.writes.clear();
            let r = d.dev.process(&mut d.mem, &mut d.disk);
            completed += r.completed;
            let used = (q.device, 4 + 8 * q.size as u64);
            for &(gpa, len) in &d.mem.writes {
                let inside = |(a, l): (u64, u64)| gpa >= a && gpa + len <= a.saturating_add(l);
                assert!(inside(used) || table.iter().any(|t| t.write && inside((t.addr, t.len as u64))), "stray write at {gpa:#x}+{len}");
            }
            assert_eq!(d.disk.bad_calls, 0);
            if d.status() & STATUS_NEEDS_RESET != 0 && rng.next().is_multiple_of(2) {
                d.probe();
            }
        }
    }
    assert!(completed > 100, "some random chains were valid requests");
}

// ---- snapshot ---------------------------------------------------------

fn saved(dev: &VirtioBlk) -> Vec<u8> {
    let mut out = Vec::new();
    snapshot::write(&mut out, |w| w.section(*b"VBLK", |w| dev.save_into(w)));
    out
}

fn restored(bytes: &[u8]) -> Result<VirtioBlk, SnapshotError> {
    snapshot::read(bytes, |r| r.section(*b"VBLK", VirtioBlk::restore_from))
}

/// Offsets in `saved`'s output: header 6, tag 4, length 4, capacity 8.
const AT_STATUS: usize = 22;
const AT_DRIVER_FEATURES: usize = 27;
const AT_INTERRUPT: usize = 43;
const AT_QUEUE_NUM: usize = 52;
const AT_QUEUE_READY: usize = 54;
const AT_QUEUE_DESC: usize = 55;
const AT_LAST_AVAIL: usize = 79;

#[test]
fn snapshot_round_trip_continues_on_another_device() {
    let mut d = Driver::new();
    assert_eq!(d.write(5, &pattern(1024, 7), 512), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(5, 1024, 1024).0, VIRTIO_BLK_S_OK);
    d.mem.put(BUFS, &[0; 16]);
    d.submit(&[(BUFS, 16, false), (BUFS + 512, 512, true), (BUFS + 64, 1, true)]);
    d.notify();
    let bytes = saved(&d.dev);
    assert_eq!(bytes.len(), AT_LAST_AVAIL + 4);
    let mut b = restored(&bytes).expect("restores");
    assert_eq!(saved(&b), bytes, "canonical");
    assert_eq!(b.capacity(), DISK_LEN);
    assert!(b.irq_level(), "the pending interrupt moved too");
    assert_eq!(b.transport(), d.dev.transport());
    // The new device carries on where the old one stopped.
    d.dev = b;
    assert_eq!(d.ack(), 1);
    d.used();
    assert_eq!(d.read(5, 1024, 512), (VIRTIO_BLK_S_OK, pattern(1024, 7)));
    b = VirtioBlk::new(DISK_LEN);
    assert_eq!(restored(&saved(&b)).map(|x| saved(&x)), Ok(saved(&b)), "a fresh device too");
}

#[test]
fn snapshot_rejects_bad_input() {
    let d = Driver::new();
    let b = saved(&d.dev);
    let with = |at: usize, v: &[u8]| {
        let mut c = b.clone();
        c[at..at + v.len()].copy_from_slice(v);
        restored(&c).err()
    };
    let bad = |field: &'static str, value: u64| Some(SnapshotError::BadValue { field, value });
    assert_eq!(with(14, &513u64.to_le_bytes()), bad("virtio_blk.capacity", 513));
    assert_eq!(with(AT_STATUS, &[0x10 | 0xf]), bad("virtio.status", 0x1f));
    assert_eq!(with(AT_DRIVER_FEATURES, &(FEATURES | 1 << 3).to_le_bytes()), bad("virtio.driver_features", FEATURES | 1 << 3));
    assert_eq!(with(AT_DRIVER_FEATURES, &(1u64 << 9).to_le_bytes()), bad("virtio.driver_features", 1 << 9), "no VERSION_1");
    assert_eq!(with(AT_INTERRUPT, &[4]), bad("virtio.interrupt_status", 4));
    assert_eq!(with(AT_QUEUE_NUM, &96u16.to_le_bytes()), bad("virtio.queue_num", 96));
    assert_eq!(with(AT_QUEUE_NUM, &256u16.to_le_bytes()), bad("virtio.queue_num", 256));
    assert_eq!(with(AT_QUEUE_NUM, &0u16.to_le_bytes()), bad("virtio.queue_ready", 1), "ready without a size");
    assert_eq!(with(AT_QUEUE_READY, &[2]), bad("virtio.queue_ready", 2));
    assert_eq!(with(AT_QUEUE_DESC, &[8]), bad("virtio.queue_ready", 1), "misaligned table");
    let mut idle = VirtioBlk::new(DISK_LEN);
    idle.mmio_write(R_QUEUE_NUM, 4, 8);
    let ib = saved(&idle);
    let mut c = ib.clone();
    c[AT_LAST_AVAIL] = 1;
    assert_eq!(restored(&c).err(), bad("virtio.queue_progress", 1), "progress on a queue that is not ready");
    for n in 0..b.len() {
        assert!(restored(&b[..n]).is_err(), "prefix of {n} bytes");
    }
    let mut long = b.clone();
    long.push(0);
    assert!(restored(&long).is_err());
    // A section that is one byte short of its fields.
    let mut r = Reader::new(&b[14..b.len() - 1]);
    assert_eq!(VirtioBlk::restore_from(&mut r).err(), Some(SnapshotError::Truncated));
    // Random corruption: whatever restores re-saves to the same bytes.
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut accepted = 0;
    for _ in 0..5000 {
        let mut c = b.clone();
        for _ in 0..1 + rng.next() % 3 {
            let i = 14 + (rng.next() as usize) % (b.len() - 14);
            c[i] = rng.next() as u8;
        }
        if let Ok(x) = restored(&c) {
            assert_eq!(saved(&x), c);
            accepted += 1;
        }
    }
    assert!(accepted > 0);
}
