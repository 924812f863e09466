//! The guest's disk through the node: a request the guest queues and
//! notifies is served from the machine's storage at the notify, lands in
//! guest RAM as tracked writes, and raises the disk's interrupt; a device
//! that syncs with others refuses a guest disk.
extern crate std;

use alloc::boxed::Box;

use super::fake::{self, World, RAM_BASE};
use super::{exits, DiskRefusal};
use crate::arch::seam::Completion;
use crate::storage::MemDisk;
use crate::vplatform::arm::board::{DISK_BASE, DISK_INTID};
use crate::vplatform::virtio::BlockBackend;
use crate::vplatform::MmioAccess;

const CAP: u64 = 1 << 20;

/// Where the driver keeps its queue and buffers in guest RAM.
const DESC: u64 = RAM_BASE + 0x1_0000;
const AVAIL: u64 = RAM_BASE + 0x1_1000;
const USED: u64 = RAM_BASE + 0x1_2000;
const HEADER: u64 = RAM_BASE + 0x1_3000;
const DATA: u64 = RAM_BASE + 0x1_4000;
const STATUS: u64 = RAM_BASE + 0x1_5000;
const QUEUE: u64 = 8;

fn wr(parts: &mut super::Parts<fake::FakeArch, crate::net::test_link::Link>, vm: &mut super::vm::Vm<crate::vplatform::arm::ArmPlatform>, off: u64, v: u64) {
    exits::mmio(parts, vm, MmioAccess { ipa: DISK_BASE + off, size: 4, write: Some(v) });
    assert_eq!(parts.arch.last_mmio, Some(Completion::MmioWritten), "write at {off:#x}");
}

/// The driver's set-up (virtio 1.2, 3.1.1): status, features (VERSION_1
/// only), one queue of QUEUE entries, DRIVER_OK.
fn driver_ready(parts: &mut super::Parts<fake::FakeArch, crate::net::test_link::Link>, vm: &mut super::vm::Vm<crate::vplatform::arm::ArmPlatform>) {
    wr(parts, vm, 0x70, 1);
    wr(parts, vm, 0x70, 1 | 2);
    wr(parts, vm, 0x24, 1);
    wr(parts, vm, 0x20, 1);
    wr(parts, vm, 0x24, 0);
    wr(parts, vm, 0x20, 0);
    wr(parts, vm, 0x70, 1 | 2 | 8);
    wr(parts, vm, 0x30, 0);
    wr(parts, vm, 0x38, QUEUE);
    for (reg, at) in [(0x80, DESC), (0x90, AVAIL), (0xa0, USED)] {
        wr(parts, vm, reg, at & 0xffff_ffff);
        wr(parts, vm, reg + 4, at >> 32);
    }
    wr(parts, vm, 0x44, 1);
    wr(parts, vm, 0x70, 1 | 2 | 4 | 8);
}

/// A split-queue descriptor.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

#[test]
fn a_notified_read_is_served_from_the_storage_into_tracked_guest_ram() {
    let world = World::new();
    let mut parts = world.parts(fake::config(0, false, None, false), None, 0);
    let mut disk = MemDisk::new(CAP);
    let pattern: std::vec::Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    disk.write(8 * 512, &pattern).unwrap();
    parts.machine.disk = Some(Box::new(disk));
    assert_eq!(parts.machine.guest_disk(), Some(CAP));
    let mut vm = fake::active_vm(&mut parts, false);
    assert!(vm.platform.disk.is_some(), "the board has the disk the machine has");

    driver_ready(&mut parts, &mut vm);

    // One read of 8 sectors at sector 8: header, data (device-writable),
    // status (device-writable), chained.
    let mut header = [0u8; 16];
    header[8..16].copy_from_slice(&8u64.to_le_bytes());
    vm.mem.write(HEADER, &header).unwrap();
    vm.mem.write(DESC, &desc(HEADER, 16, 1, 1)).unwrap();
    vm.mem.write(DESC + 16, &desc(DATA, 4096, 1 | 2, 2)).unwrap();
    vm.mem.write(DESC + 32, &desc(STATUS, 1, 2, 0)).unwrap();
    vm.mem.write(STATUS, &[0xff]).unwrap();
    // avail: flags 0, idx 1, ring[0] = 0.
    vm.mem.write(AVAIL, &[0, 0, 1, 0, 0, 0]).unwrap();

    // The cut before the notify: what the device writes must be dirty after.
    vm.mem.cut();
    assert!(!vm.mem.is_dirty_now((DATA - RAM_BASE) / 4096));
    assert!(!vm.platform.vgic.is_pending(DISK_INTID));
    wr(&mut parts, &mut vm, 0x50, 0);

    let mut got = alloc::vec![0u8; 4096];
    vm.mem.read(DATA, &mut got).unwrap();
    assert_eq!(got, pattern, "the storage's bytes are in guest RAM");
    let mut status = [0xffu8];
    vm.mem.read(STATUS, &mut status).unwrap();
    assert_eq!(status, [0], "VIRTIO_BLK_S_OK");
    let mut used = [0u8; 4];
    vm.mem.read(USED + 2, &mut used[..2]).unwrap();
    assert_eq!(u16::from_le_bytes([used[0], used[1]]), 1, "one used entry");
    assert!(vm.mem.is_dirty_now((DATA - RAM_BASE) / 4096), "the device's writes are tracked");
    assert!(vm.mem.is_dirty_now((USED - RAM_BASE) / 4096));
    assert!(vm.platform.vgic.is_pending(DISK_INTID), "the disk's interrupt is raised");
    let stats = vm.platform.disk.as_ref().unwrap().stats().clone();
    assert_eq!((stats.reads, stats.bytes_read, stats.errors), (1, 4096, 0));
    let line = alloc::format!("{}", exits::DiskLine(&stats));
    assert_eq!(line, "disk: requests read=1 write=0 flush=0 discard=0 bytes_read=4096 bytes_written=0 errors=0");

    // The driver acknowledges: the line drops.
    wr(&mut parts, &mut vm, 0x64, 1);
    assert!(!vm.platform.vgic.is_pending(DISK_INTID));
}

#[test]
fn the_guests_disk_writes_join_the_epoch_line_and_start_afresh_after_the_cut() {
    let world = World::new();
    let mut parts = world.parts(fake::config(0, false, None, false), None, 0);
    parts.machine.disk = Some(Box::new(MemDisk::new(CAP)));
    let mut vm = fake::active_vm(&mut parts, false);
    assert_eq!(vm.disk_writes.as_ref().map(|w| w.blocks()), Some(CAP / 4096), "one bit per block of the disk");
    driver_ready(&mut parts, &mut vm);

    // One write of 6 KiB at sector 7: bytes 3584..9728, blocks 0 to 2.
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&1u32.to_le_bytes()); // VIRTIO_BLK_T_OUT
    header[8..16].copy_from_slice(&7u64.to_le_bytes());
    vm.mem.write(HEADER, &header).unwrap();
    vm.mem.write(DATA, &[0x5a; 6144]).unwrap();
    vm.mem.write(DESC, &desc(HEADER, 16, 1, 1)).unwrap();
    vm.mem.write(DESC + 16, &desc(DATA, 6144, 1, 2)).unwrap();
    vm.mem.write(DESC + 32, &desc(STATUS, 1, 2, 0)).unwrap();
    vm.mem.write(STATUS, &[0xff]).unwrap();
    vm.mem.write(AVAIL, &[0, 0, 1, 0, 0, 0]).unwrap();
    wr(&mut parts, &mut vm, 0x50, 0);
    let mut status = [0xffu8];
    vm.mem.read(STATUS, &mut status).unwrap();
    assert_eq!(status, [0], "VIRTIO_BLK_S_OK");
    let written = parts.machine.disk.as_mut().map(|d| {
        let mut b = [0u8; 512];
        d.read(9 * 512, &mut b).unwrap();
        b
    });
    assert_eq!(written, Some([0x5a; 512]), "the write reached the storage");

    // A shadow probe counts the same cut: the same disk figures.
    let budget = parts.machine.config.shadow.budget(parts.machine.config.mem_bytes);
    vm.sync.as_mut().unwrap().add_probe(alloc::string::String::from("probe"), budget).expect("a probe");
    let epoch = super::epochs::cut_epoch(&mut parts, &mut vm, true).expect("an epoch");
    assert_eq!(fake::logged(&alloc::format!("epoch epoch={epoch} ")), 1);
    assert_eq!(fake::logged("disk_dirty_blocks=3 disk_guest_bytes=6144"), 2, "the epoch's disk figures are on its line and its probe's");
    assert_eq!(fake::logged("shadow probe probe epoch="), 1);
    // The next epoch starts afresh.
    super::epochs::cut_epoch(&mut parts, &mut vm, true).expect("an epoch");
    assert_eq!(fake::logged("disk_dirty_blocks=0 disk_guest_bytes=0"), 2);
    let totals = vm.sync.as_ref().unwrap().totals;
    assert_eq!((totals.disk_dirty_blocks, totals.disk_guest_bytes), (3, 6144));
}

#[test]
fn disk_off_hides_the_storage_and_sync_refuses_a_guest_disk() {
    let world = World::new();
    let mut parts = world.parts(fake::config(0, false, None, false), None, 0);
    assert_eq!((parts.machine.guest_disk(), parts.machine.disk_refusal()), (None, None), "no storage, no disk");
    parts.machine.disk = Some(Box::new(MemDisk::new(CAP)));
    assert_eq!(parts.machine.disk_refusal(), None, "one device: the disk is fine");
    parts.machine.config.disk = false;
    assert_eq!(parts.machine.guest_disk(), None, "disk=off");
    let vm = fake::active_vm(&mut parts, false);
    assert!(vm.platform.disk.is_none());

    // With sync peers, or as a standby: refused while disk blocks are not synced.
    let mut peer = world.parts(fake::config(1, false, Some(2), false), None, 0);
    peer.machine.disk = Some(Box::new(MemDisk::new(CAP)));
    let r = peer.machine.disk_refusal().expect("refused");
    assert_eq!(r, DiskRefusal { capacity: CAP, standby: false });
    assert!(alloc::format!("{r}").contains("set disk=off"), "{r}");
    let mut standby = world.parts(fake::config(2, true, Some(0), false), None, 0);
    standby.machine.disk = Some(Box::new(MemDisk::new(CAP)));
    assert_eq!(standby.machine.disk_refusal().map(|r| r.standby), Some(true));
    standby.machine.config.disk = false;
    assert_eq!(standby.machine.disk_refusal(), None, "disk=off is the way out");
}
