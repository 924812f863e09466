//! The ARM board's snapshot: every field survives a round trip, a restored
//! board behaves as the saved one, and hostile input is rejected.
use super::board::*;
use super::vgic::{LrState, MAX_LRS, SGI_FRAME};
use super::ArmPlatform;
use crate::vplatform::snapshot::SnapshotError;
use crate::vplatform::{MmioAccess, MmioOutcome};
use alloc::vec;
use alloc::vec::Vec;

fn rd(p: &mut ArmPlatform, ipa: u64, size: u8) -> u64 {
    match p.mmio(MmioAccess { ipa, size, write: None }) {
        Ok(MmioOutcome::Read(v)) => v,
        other => panic!("read {ipa:#x}: {other:?}"),
    }
}

fn wr(p: &mut ArmPlatform, ipa: u64, size: u8, v: u64) {
    assert!(p.mmio(MmioAccess { ipa, size, write: Some(v) }).is_ok(), "write {ipa:#x}");
}

const SGI: u64 = GICR_BASE + SGI_FRAME as u64;
const U_DR: u64 = UART_BASE;
const U_IBRD: u64 = UART_BASE + 0x24;
const U_FBRD: u64 = UART_BASE + 0x28;
const U_LCR_H: u64 = UART_BASE + 0x2c;
const U_CR: u64 = UART_BASE + 0x30;
const U_IFLS: u64 = UART_BASE + 0x34;
const U_IMSC: u64 = UART_BASE + 0x38;
const U_ICR: u64 = UART_BASE + 0x44;

/// A guest some way into its life: the GIC set up as Linux does,
/// interrupts pending, active and in list registers, the UART
/// configured with bytes waiting in a FIFO that has wrapped.
fn busy_platform() -> ArmPlatform {
    let mut p = ArmPlatform::new();
    // Distributor: off, SPIs group 1, priorities, some edge, routed.
    wr(&mut p, GICD_BASE, 4, 0);
    for i in (32..96u64).step_by(32) {
        wr(&mut p, GICD_BASE + 0x80 + i / 8, 4, 0xffff_fff0);
    }
    for i in (32..96u64).step_by(4) {
        wr(&mut p, GICD_BASE + 0x400 + i, 4, 0xa0a0_a0a0 ^ (i << 3));
    }
    wr(&mut p, GICD_BASE + 0xc00 + 8, 4, 0x0000_8020); // SPIs 34, 39 edge
    wr(&mut p, GICD_BASE + 0xc00 + 20, 4, 0xa000_0000); // SPIs 94, 95 edge
    wr(&mut p, GICD_BASE + 0x6000 + 40 * 8, 8, 0x01_0002_0304);
    wr(&mut p, GICD_BASE + 0x6000 + 95 * 8 + 4, 4, 0x7);
    wr(&mut p, GICD_BASE, 4, 0x13);
    // Redistributor: wake, SGI/PPI groups, priorities, timer level.
    wr(&mut p, GICR_BASE + 0x14, 4, 0);
    wr(&mut p, SGI + 0x80, 4, 0xffff_ff7f);
    wr(&mut p, SGI + 0x180, 4, 0xffff_0000);
    wr(&mut p, SGI + 0x100, 4, 0x0800_ffff);
    for i in (0..32u64).step_by(4) {
        wr(&mut p, SGI + 0x400 + i, 4, 0x9098_a0a8 ^ (i << 8));
    }
    wr(&mut p, SGI + 0x400 + 27, 1, 0x80);
    wr(&mut p, SGI + 0xc04, 4, 0xaaaa_aaaa & !(2 << ((27 - 16) * 2)));
    // SPIs: enable 33 (UART), 34, 40, 41, 94; pend 40, 41, 60 by ISPENDR.
    wr(&mut p, GICD_BASE + 0x104, 4, 1 << 1 | 1 << 2 | 1 << 8 | 1 << 9);
    wr(&mut p, GICD_BASE + 0x108, 4, 1 << 30);
    wr(&mut p, GICD_BASE + 0x204, 4, 1 << 8 | 1 << 9 | 1 << 28);
    wr(&mut p, GICD_BASE + 0x304, 4, 1 << 20); // SPI 52 active
    p.vgic.set_level(34, true); // edge: latches
    p.vgic.set_level(50, true); // level, disabled
    p.vgic.set_pending(27); // the timer
    p.vgic.set_pending(1);
    p.vgic.set_pending(3);
    // Two exits' worth of the list-register protocol, with gaps.
    for lr in [0, 2, 5] {
        let i = p.vgic.next_to_inject().expect("something to inject");
        p.vgic.mark_in_lr(lr, i.intid);
    }
    p.vgic.set_pending(27); // pending again while in an LR
                            // An unknown register access, counted.
    rd(&mut p, GICD_BASE + 0x20, 4);
    // UART: as Linux leaves it, then a FIFO that has wrapped.
    wr(&mut p, U_ICR, 2, 0x7ff);
    wr(&mut p, U_IBRD, 2, 13);
    wr(&mut p, U_FBRD, 2, 1);
    wr(&mut p, U_LCR_H, 2, 0x70);
    wr(&mut p, U_CR, 2, 0x301);
    wr(&mut p, U_IFLS, 2, 0x1a);
    wr(&mut p, UART_BASE + 0x20, 1, 0x5a); // ILPR
    wr(&mut p, UART_BASE + 0x48, 1, 0x5); // DMACR
    wr(&mut p, U_IMSC, 2, 0x50);
    for b in 0..20 {
        p.uart_input(b);
    }
    for _ in 0..12 {
        rd(&mut p, U_DR, 2);
    }
    for b in 100..122 {
        p.uart_input(b);
    }
    wr(&mut p, UART_BASE + 0x100, 4, 0); // unknown, counted
    assert!(p.uart.rx_pending() > 16 && p.vgic.unknown_accesses() == 1);
    p
}

fn saved(p: &ArmPlatform) -> Vec<u8> {
    let mut out = Vec::new();
    p.save(&mut out);
    out
}

/// Everything the guest or the hypervisor can see of the platform,
/// then some further life, as a log to compare.
fn observe(p: &mut ArmPlatform) -> Vec<u64> {
    let mut log = Vec::new();
    let inject = |p: &ArmPlatform, log: &mut Vec<u64>| match p.vgic.next_to_inject() {
        Some(i) => log.extend([i.intid as u64, i.priority as u64, i.group as u64, i.state as u64]),
        None => log.push(u64::MAX),
    };
    inject(p, &mut log);
    log.extend((0..MAX_LRS + 2).map(|n| p.vgic.lr_occupant(n).map_or(u64::MAX, u64::from)));
    log.extend((0..100).map(|i| p.vgic.is_pending(i) as u64 | (p.vgic.is_enabled(i) as u64) << 1 | (p.vgic.priority(i) as u64) << 8));
    // Every distributor and redistributor word, IROUTER as doublewords,
    // priorities as bytes.
    for off in (0..GICD_SIZE).step_by(4) {
        log.push(rd(p, GICD_BASE + off, 4));
    }
    for off in (0x6000..0x8000).step_by(8) {
        log.push(rd(p, GICD_BASE + off, 8));
    }
    for off in 0x400..0x460 {
        log.push(rd(p, GICD_BASE + off, 1));
    }
    for off in (0..GICR_SIZE).step_by(4) {
        log.push(rd(p, GICR_BASE + off, 4));
    }
    log.push(rd(p, GICR_BASE + 8, 8));
    log.push(p.vgic.unknown_accesses());
    // Every UART register but DR, then the FIFO drained half way.
    for off in (4..UART_SIZE).step_by(4) {
        log.push(rd(p, UART_BASE + off, 4));
    }
    for _ in 0..10 {
        log.push(rd(p, U_DR, 2));
    }
    log.push(p.uart.unknown_accesses() as u64);
    // Further life: LRs retire and refill, lines move, input arrives
    // until the FIFO overflows, the guest acks and reconfigures.
    p.vgic.lr_emptied(0);
    p.vgic.lr_taken_back(2, LrState::Active);
    p.vgic.set_level(34, false);
    p.vgic.set_level(34, true);
    p.vgic.set_level(50, false);
    for lr in 0..MAX_LRS {
        if p.vgic.lr_occupant(lr).is_none() {
            inject(p, &mut log);
            if let Some(i) = p.vgic.next_to_inject() {
                p.vgic.mark_in_lr(lr, i.intid);
            }
        }
    }
    for b in 0..40 {
        log.push(p.uart_input(b) as u64);
    }
    wr(p, U_ICR, 2, 0x40);
    wr(p, U_IFLS, 2, 0x00);
    wr(p, U_LCR_H, 2, 0x60);
    for off in (0..0x50).step_by(4) {
        log.push(rd(p, UART_BASE + off, 2));
    }
    for _ in 0..40 {
        log.push(rd(p, U_DR, 1));
    }
    log.push(p.vgic.is_pending(UART_INTID) as u64);
    for lr in 0..MAX_LRS {
        p.vgic.lr_emptied(lr);
    }
    while let Some(i) = p.vgic.next_to_inject() {
        log.push(i.intid as u64);
        p.vgic.mark_in_lr(0, i.intid);
        p.vgic.lr_emptied(0);
    }
    log
}

#[test]
fn round_trip_is_exact() {
    for p in [ArmPlatform::new(), busy_platform()] {
        let bytes = saved(&p);
        let q = ArmPlatform::restore(&bytes, None).expect("restores");
        assert_eq!(q.vgic, p.vgic, "the vGIC model comes back field for field");
        assert_eq!(saved(&q), bytes);
        assert_eq!(q.uart.rx_pending(), p.uart.rx_pending());
    }
}

#[test]
fn restored_platform_behaves_the_same() {
    let mut p = busy_platform();
    let mut q = ArmPlatform::restore(&saved(&p), None).expect("restores");
    let (a, b) = (observe(&mut p), observe(&mut q));
    assert_eq!(a.len(), b.len());
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!("diverges at observation {i}: {:#x} vs {:#x}", a[i], b[i]);
    }
    // And they end in the same state.
    assert_eq!(saved(&p), saved(&q));
}

#[test]
fn fifo_order_survives_a_wrapped_ring() {
    let mut p = busy_platform();
    let mut q = ArmPlatform::restore(&saved(&p), None).expect("restores");
    let n = p.uart.rx_pending();
    let drain = |p: &mut ArmPlatform| (0..n).map(|_| rd(p, U_DR, 1)).collect::<Vec<_>>();
    let expected: Vec<u64> = (12u8..20).chain(100..122).map(u64::from).collect();
    assert_eq!(drain(&mut p), expected);
    assert_eq!(drain(&mut q), expected);
}

// Offsets into a snapshot: header, then the vGIC section's payload.
const GIC_LEN_AT: usize = 10;
const GIC: usize = 14;
const GIC_CTLR: usize = GIC + 2;
const GIC_EDGE: usize = GIC_CTLR + 4 + 5 * 12;
const GIC_PRIO: usize = GIC_EDGE + 12;
const GIC_IROUTER: usize = GIC_PRIO + 96;
const GIC_SLEEP: usize = GIC_IROUTER + 64 * 8;
const GIC_IN_LR: usize = GIC_SLEEP + 1 + 8;
const GIC_NLR: usize = GIC_IN_LR + 12;

fn uart_at(bytes: &[u8]) -> usize {
    let gic_len = u32::from_le_bytes(bytes[GIC_LEN_AT..GIC_LEN_AT + 4].try_into().unwrap()) as usize;
    GIC + gic_len + 8
}

fn patched(bytes: &[u8], at: usize, with: &[u8]) -> Result<ArmPlatform, SnapshotError> {
    let mut b = bytes.to_vec();
    b[at..at + with.len()].copy_from_slice(with);
    ArmPlatform::restore(&b, None)
}

fn bad(field: &'static str) -> impl Fn(Result<ArmPlatform, SnapshotError>) -> bool {
    move |r| matches!(r, Err(SnapshotError::BadValue { field: f, .. }) if f == field)
}

#[test]
fn layout_offsets_hold() {
    let p = busy_platform();
    let b = saved(&p);
    assert_eq!(&b[GIC - 8..GIC - 4], b"GIC3");
    assert_eq!(u16::from_le_bytes([b[GIC], b[GIC + 1]]), 96);
    assert_eq!(b[GIC_CTLR], 0x3);
    assert_eq!(b[GIC_NLR], 3, "three LRs occupied");
    assert_eq!(&b[uart_at(&b) - 8..uart_at(&b) - 4], b"UART");
}

#[test]
fn rejects_out_of_range_values() {
    let b = saved(&busy_platform());
    let ok = |r: Result<ArmPlatform, SnapshotError>| r.is_ok();
    assert!(ok(patched(&b, 0, b"VSDV")));
    assert_eq!(patched(&b, 0, b"VSDW").err(), Some(SnapshotError::BadMagic));
    assert_eq!(patched(&b, 4, &[3, 0]).err(), Some(SnapshotError::BadVersion(3)));
    assert!(matches!(patched(&b, 6, b"GIC2"), Err(SnapshotError::BadSection { .. })));
    assert!(bad("vgic.nr_intids")(patched(&b, GIC, &[128, 0])));
    assert!(bad("vgic.ctlr")(patched(&b, GIC_CTLR, &[0x13])));
    assert!(bad("vgic.edge")(patched(&b, GIC_EDGE, &[0xfe])), "SGIs are always edge");
    assert!(bad("vgic.priority")(patched(&b, GIC_PRIO + 40, &[0x81])), "5 priority bits");
    assert!(bad("vgic.irouter")(patched(&b, GIC_IROUTER + 7, &[1])), "IRM is RAZ");
    assert!(bad("vgic.processor_sleep")(patched(&b, GIC_SLEEP, &[2])));
    // List registers: index past MAX_LRS, INTID past the last SPI,
    // the same LR or INTID twice, in_lr disagreeing with the LRs.
    let e0 = GIC_NLR + 1;
    assert!(bad("vgic.lr_count")(patched(&b, GIC_NLR, &[MAX_LRS as u8 + 1])));
    assert!(bad("vgic.lr")(patched(&b, e0, &[MAX_LRS as u8])));
    assert!(bad("vgic.lr")(patched(&b, e0 + 5, &[0])), "LR numbers strictly increase");
    assert!(bad("vgic.lr_intid")(patched(&b, e0 + 1, &96u32.to_le_bytes())));
    assert!(bad("vgic.lr_intid")(patched(&b, e0 + 1, &1023u32.to_le_bytes())));
    let second = u32::from_le_bytes(b[e0 + 6..e0 + 10].try_into().unwrap());
    assert!(bad("vgic.lr_intid")(patched(&b, e0 + 1, &second.to_le_bytes())), "one INTID in two LRs");
    assert!(bad("vgic.in_lr")(patched(&b, GIC_IN_LR + 11, &[0x80])));
    // UART: FIFO count over capacity, masked bits, RT with nothing
    // waiting.
    let u = uart_at(&b);
    assert!(bad("pl011.fbrd")(patched(&b, u + 5, &[0x40])));
    assert!(bad("pl011.ifls")(patched(&b, u + 7, &[0x40])));
    assert!(bad("pl011.imsc")(patched(&b, u + 9, &[0x08])));
    assert!(bad("pl011.ris")(patched(&b, u + 11, &[0x08])));
    assert!(bad("pl011.dmacr")(patched(&b, u + 12, &[0x08])));
    assert!(bad("pl011.rsr")(patched(&b, u + 13, &[0x01])));
    assert!(bad("pl011.rx_len")(patched(&b, u + 18, &[33])));
    // An emptied FIFO cannot have RT set.
    let mut p = ArmPlatform::new();
    p.uart_input(1);
    let mut e = saved(&p);
    let u = uart_at(&e);
    assert!(ArmPlatform::restore(&e, None).is_ok());
    e.truncate(u + 19);
    e[u - 4..u].copy_from_slice(&19u32.to_le_bytes());
    e[u + 18] = 0;
    assert!(bad("pl011.ris")(ArmPlatform::restore(&e, None)));
}

#[test]
fn rejects_wrong_lengths() {
    let b = saved(&busy_platform());
    let mut long = b.clone();
    long.push(0);
    assert_eq!(ArmPlatform::restore(&long, None).err(), Some(SnapshotError::TrailingBytes));
    // A section one byte longer than its fields (the byte inside it).
    let u = uart_at(&b);
    let mut inner = b.clone();
    let len = u32::from_le_bytes(inner[u - 4..u].try_into().unwrap());
    inner[u - 4..u].copy_from_slice(&(len + 1).to_le_bytes());
    inner.push(0);
    assert_eq!(ArmPlatform::restore(&inner, None).err(), Some(SnapshotError::SectionLength { section: *b"UART" }));
    // One byte shorter: the section's fields run past it.
    let mut short = b.clone();
    short[u - 4..u].copy_from_slice(&(len - 1).to_le_bytes());
    short.pop();
    assert_eq!(ArmPlatform::restore(&short, None).err(), Some(SnapshotError::SectionLength { section: *b"UART" }));
    // A length running past the input.
    assert_eq!(patched(&b, GIC_LEN_AT, &u32::MAX.to_le_bytes()).err(), Some(SnapshotError::Truncated));
    for n in 0..b.len() {
        assert!(ArmPlatform::restore(&b[..n], None).is_err(), "prefix of {n} bytes");
    }
    assert_eq!(ArmPlatform::restore(&[], None).err(), Some(SnapshotError::Truncated));
}

/// xorshift64: deterministic, so a failure reproduces. Shared with the
/// other device models' hostile-input tests (`virtio/blk_hostile_tests.rs`).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Restoring must not panic; what it accepts must re-save to the same
/// bytes (the encoding is canonical) and behave like a platform.
fn check_hostile(input: &[u8]) -> bool {
    let Ok(mut p) = ArmPlatform::restore(input, None) else { return false };
    assert_eq!(saved(&p), input, "accepted input is canonical");
    live(&mut p);
    true
}

/// A little life for a restored platform: fill and retire every LR,
/// drain and overfill the FIFO, read the UART's registers.
fn live(p: &mut ArmPlatform) {
    for lr in 0..MAX_LRS {
        if let Some(i) = p.vgic.next_to_inject() {
            p.vgic.mark_in_lr(lr, i.intid);
        }
    }
    for lr in 0..MAX_LRS {
        p.vgic.lr_taken_back(lr, LrState::PendingActive);
        p.vgic.lr_emptied(lr);
    }
    for off in (0..0x50).step_by(4) {
        rd(p, UART_BASE + off, 4);
    }
    for b in 0..40 {
        p.uart_input(b);
    }
    for _ in 0..40 {
        rd(p, U_DR, 1);
    }
    rd(p, GICD_BASE + 0x204, 4);
}

#[test]
fn hostile_input_never_panics() {
    let b = saved(&busy_platform());
    let mut accepted = 0;
    for bit in 0..b.len() * 8 {
        let mut f = b.clone();
        f[bit / 8] ^= 1 << (bit % 8);
        accepted += check_hostile(&f) as usize;
    }
    // Most fields take any value (pending bits, counters, FIFO bytes),
    // others none but a few: both paths must have run.
    assert!(accepted > b.len() && accepted < b.len() * 8, "{accepted} of {} flips accepted", b.len() * 8);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        // Random bytes, random lengths, and the same behind a valid
        // header and section tags so the parsers get deep.
        let n = (rng.next() % (b.len() as u64 + 64)) as usize;
        let mut f: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        check_hostile(&f);
        if f.len() >= GIC {
            f[..GIC].copy_from_slice(&b[..GIC]);
            check_hostile(&f);
        }
        // A valid snapshot with a few bytes changed.
        let mut g = b.clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() % b.len() as u64) as usize;
            g[at] = rng.next() as u8;
        }
        check_hostile(&g);
    }
    check_hostile(&vec![0xff; 4096]);
}

const DISK_CAP: u64 = 64 << 20;

/// Where the DISK section's payload starts.
fn disk_at(bytes: &[u8]) -> usize {
    let u = uart_at(bytes);
    let uart_len = u32::from_le_bytes(bytes[u - 4..u].try_into().unwrap()) as usize;
    u + uart_len + 8
}

#[test]
fn no_disk_is_one_zero_byte() {
    let b = saved(&ArmPlatform::new());
    let d = disk_at(&b);
    assert_eq!(&b[d - 8..d - 4], b"DISK");
    assert_eq!(&b[d - 4..], &[1, 0, 0, 0, 0], "length 1, present = 0, and nothing after");
    assert!(bad("disk.present")(patched(&b, d, &[2])));
}

#[test]
fn a_disk_round_trips_and_restores_only_where_the_disk_is_the_same() {
    let mut p = busy_platform();
    p.disk = Some(crate::vplatform::virtio::blk::VirtioBlk::new(DISK_CAP));
    // The guest reads the disk's identity: the same before and after.
    let magic = rd(&mut p, DISK_BASE, 4);
    assert_eq!(magic, 0x7472_6976);
    assert_eq!(rd(&mut p, DISK_BASE + 8, 4), 2, "a block device");
    let b = saved(&p);
    assert_eq!(b[disk_at(&b)], 1);
    let mut q = ArmPlatform::restore(&b, Some(DISK_CAP)).expect("restores on a device with the same disk");
    assert_eq!(saved(&q), b, "canonical");
    assert_eq!(q.disk.as_ref().map(|d| d.capacity()), Some(DISK_CAP));
    assert_eq!(rd(&mut q, DISK_BASE + 8, 4), 2);
    assert_eq!(ArmPlatform::restore(&b, Some(DISK_CAP * 2)).err(), Some(SnapshotError::DiskMismatch { saved: Some(DISK_CAP), here: Some(DISK_CAP * 2) }));
    assert_eq!(ArmPlatform::restore(&b, None).err(), Some(SnapshotError::DiskMismatch { saved: Some(DISK_CAP), here: None }));
    let none = saved(&ArmPlatform::new());
    assert_eq!(ArmPlatform::restore(&none, Some(DISK_CAP)).err(), Some(SnapshotError::DiskMismatch { saved: None, here: Some(DISK_CAP) }));
    let msg = alloc::format!("{}", SnapshotError::DiskMismatch { saved: Some(DISK_CAP), here: None });
    assert!(msg.contains("64 MiB") && msg.contains("no disk"), "{msg}");
    for n in 0..b.len() {
        assert!(ArmPlatform::restore(&b[..n], Some(DISK_CAP)).is_err(), "prefix of {n} bytes");
    }
}

#[test]
fn the_disk_answers_only_where_the_board_has_one() {
    let mut p = ArmPlatform::new();
    assert!(p.mmio(MmioAccess { ipa: DISK_BASE, size: 4, write: None }).is_err(), "no disk: nothing at its address");
    let mut p = <ArmPlatform as crate::vplatform::Platform>::fresh(Some(DISK_CAP));
    assert_eq!(rd(&mut p, DISK_BASE, 4), 0x7472_6976);
    assert!(p.mmio(MmioAccess { ipa: DISK_BASE + DISK_SIZE, size: 4, write: None }).is_err(), "past its registers");
}
