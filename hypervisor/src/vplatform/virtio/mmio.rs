//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): the register
//! file of one device with one queue. The device type supplies its ID, the
//! features it offers and its configuration space (read at 0x100 and up);
//! the transport does the rest: feature negotiation, the status handshake,
//! the queue's registers, the interrupt status.
//!
//! Registers are 32 bits wide and only 32-bit aligned accesses reach them;
//! configuration space takes 1, 2, 4 and 8 byte accesses. Anything else
//! reads as zero, writes are ignored, and both are counted.
//!
//! The driver cannot break the model's invariants: the status only gains
//! bits (writing 0 resets), FEATURES_OK only sticks if the driver took
//! VIRTIO_F_VERSION_1 and nothing that was not offered, the queue's
//! registers only change while it is not ready, and it only becomes ready
//! with a valid size and aligned rings.

use super::queue::{valid_size, SplitQueue, QUEUE_SIZE_MAX};
use crate::vplatform::snapshot::{only_bits, Reader, SnapshotError, Writer};

pub const MAGIC: u32 = 0x7472_6976; // "virt"
pub const VERSION: u32 = 2;
/// VendorID: "VMSY", the hypervisor's own.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"VMSY");
/// Where configuration space begins.
pub const CONFIG: u64 = 0x100;

/// Feature bit every modern device offers and the driver must take.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

// Device status bits (§2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;
/// The bits the driver sets; NEEDS_RESET is the device's.
const STATUS_DRIVER_BITS: u8 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK | STATUS_FEATURES_OK | STATUS_FAILED;

// InterruptStatus bits.
pub const INT_USED_BUFFER: u8 = 1;
pub const INT_CONFIG_CHANGE: u8 = 2;

// Register offsets.
const MAGIC_VALUE: u64 = 0x000;
const VERSION_REG: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID_REG: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;

/// What a store did, for the device behind the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Absorbed by the transport (or ignored).
    Done,
    /// QueueNotify for this queue (one that exists).
    Notify(u16),
    /// The driver wrote 0 to Status: the transport is reset; the device
    /// resets its own state.
    Reset,
    /// A store into configuration space (offset from its start), for the
    /// device to take or ignore.
    Config { offset: u64, size: u8, value: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioTransport {
    device_id: u32,
    device_features: u64,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u8,
    interrupt_status: u8,
    config_generation: u32,
    queue: SplitQueue,
    unknown_accesses: u32,
}

impl MmioTransport {
    /// A device of type `device_id` offering `device_features` (which must
    /// include VIRTIO_F_VERSION_1 for a driver to accept it), in reset.
    pub fn new(device_id: u32, device_features: u64) -> Self {
        MmioTransport {
            device_id,
            device_features,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            queue: SplitQueue::default(),
            unknown_accesses: 0,
        }
    }

    /// A guest load. `config` is the device's configuration space.
    pub fn read(&mut self, offset: u64, size: u8, config: &[u8]) -> u64 {
        if offset >= CONFIG {
            return self.read_config(offset - CONFIG, size, config);
        }
        if size != 4 || !offset.is_multiple_of(4) {
            self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
            return 0;
        }
        let q = self.queue_selected();
        let v: u32 = match offset {
            MAGIC_VALUE => MAGIC,
            VERSION_REG => VERSION,
            DEVICE_ID => self.device_id,
            VENDOR_ID_REG => VENDOR_ID,
            DEVICE_FEATURES => bank(self.device_features, self.device_features_sel),
            QUEUE_NUM_MAX => {
                if q {
                    QUEUE_SIZE_MAX as u32
                } else {
                    0
                }
            }
            QUEUE_READY => (q && self.queue.ready) as u32,
            INTERRUPT_STATUS => self.interrupt_status as u32,
            STATUS => self.status as u32,
            // No shared memory regions: their length reads as -1.
            o if (SHM_LEN_LOW..=SHM_BASE_HIGH).contains(&o) => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            // Write-only registers read as zero.
            DEVICE_FEATURES_SEL | DRIVER_FEATURES | DRIVER_FEATURES_SEL | QUEUE_SEL | QUEUE_NUM | QUEUE_NOTIFY | INTERRUPT_ACK | SHM_SEL => 0,
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => 0,
            _ => {
                self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
                0
            }
        };
        v as u64
    }

    fn read_config(&mut self, offset: u64, size: u8, config: &[u8]) -> u64 {
        if !matches!(size, 1 | 2 | 4 | 8) {
            self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
            return 0;
        }
        let mut bytes = [0u8; 8];
        for (i, b) in bytes.iter_mut().take(size as usize).enumerate() {
            // Past the end of the device's space reads as zero.
            *b = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)).and_then(|o| config.get(o)).copied().unwrap_or(0);
        }
        u64::from_le_bytes(bytes)
    }

    /// A guest store.
    pub fn write(&mut self, offset: u64, size: u8, value: u64) -> WriteOutcome {
        if offset >= CONFIG {
            return WriteOutcome::Config { offset: offset - CONFIG, size, value };
        }
        if size != 4 || !offset.is_multiple_of(4) {
            self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
            return WriteOutcome::Done;
        }
        let v = value as u32;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES => {
                // Features are fixed once FEATURES_OK is set.
                if self.status & STATUS_FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v as u64,
                        1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v as u64) << 32,
                        // Banks past 1 hold no features: nothing to take.
                        _ if v != 0 => self.unknown_accesses = self.unknown_accesses.wrapping_add(1),
                        _ => {}
                    }
                }
            }
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM => {
                if self.queue_writable() && valid_size(v.min(u16::MAX as u32) as u16) && v <= QUEUE_SIZE_MAX as u32 {
                    self.queue.size = v as u16;
                } else {
                    self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
                }
            }
            QUEUE_READY => self.write_queue_ready(v),
            QUEUE_NOTIFY => {
                // Only queue 0 exists; VIRTIO_F_NOTIFICATION_DATA is not
                // offered, so the value is the queue's index.
                if v == 0 {
                    return WriteOutcome::Notify(0);
                }
                self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
            }
            INTERRUPT_ACK => self.interrupt_status &= !(v as u8 & (INT_USED_BUFFER | INT_CONFIG_CHANGE)),
            STATUS => {
                if v == 0 {
                    self.reset();
                    return WriteOutcome::Reset;
                }
                self.write_status(v as u8);
            }
            QUEUE_DESC_LOW => self.set_queue_half(|q| &mut q.desc, false, v),
            QUEUE_DESC_HIGH => self.set_queue_half(|q| &mut q.desc, true, v),
            QUEUE_DRIVER_LOW => self.set_queue_half(|q| &mut q.driver, false, v),
            QUEUE_DRIVER_HIGH => self.set_queue_half(|q| &mut q.driver, true, v),
            QUEUE_DEVICE_LOW => self.set_queue_half(|q| &mut q.device, false, v),
            QUEUE_DEVICE_HIGH => self.set_queue_half(|q| &mut q.device, true, v),
            SHM_SEL => {}
            _ => self.unknown_accesses = self.unknown_accesses.wrapping_add(1),
        }
        WriteOutcome::Done
    }

    /// Back to the state after `new` (the device's own part is the
    /// device's). The configuration generation survives: it counts changes
    /// of the configuration, which a reset does not make.
    pub fn reset(&mut self) {
        *self = MmioTransport {
            config_generation: self.config_generation,
            unknown_accesses: self.unknown_accesses,
            ..MmioTransport::new(self.device_id, self.device_features)
        };
    }

    fn write_status(&mut self, v: u8) {
        // The driver never clears a bit (only a whole reset does) and
        // never sets the device's NEEDS_RESET.
        let mut new = self.status | (v & STATUS_DRIVER_BITS);
        if new & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 && !self.features_acceptable() {
            // The driver reads Status back and gives up (§3.1.1).
            new &= !STATUS_FEATURES_OK;
        }
        // Drivers write back what they read, NEEDS_RESET included: fine.
        if v & !(STATUS_DRIVER_BITS | STATUS_NEEDS_RESET) != 0 {
            self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
        }
        self.status = new;
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & VIRTIO_F_VERSION_1 != 0 && self.driver_features & !self.device_features == 0
    }

    fn write_queue_ready(&mut self, v: u32) {
        if !self.queue_selected() {
            self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
            return;
        }
        match (self.queue.ready, v) {
            (false, 1) => {
                if self.queue.layout_ok() {
                    // A fresh ring starts at index 0 on both sides.
                    self.queue.ready = true;
                    self.queue.last_avail = 0;
                    self.queue.used_idx = 0;
                } else {
                    self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
                }
            }
            (true, 0) => {
                self.queue.ready = false;
                self.queue.last_avail = 0;
                self.queue.used_idx = 0;
            }
            (_, 0 | 1) => {}
            _ => self.unknown_accesses = self.unknown_accesses.wrapping_add(1),
        }
    }

    fn queue_selected(&self) -> bool {
        self.queue_sel == 0
    }

    fn queue_writable(&self) -> bool {
        self.queue_selected() && !self.queue.ready
    }

    fn set_queue_half(&mut self, field: impl FnOnce(&mut SplitQueue) -> &mut u64, high: bool, v: u32) {
        if !self.queue_writable() {
            self.unknown_accesses = self.unknown_accesses.wrapping_add(1);
            return;
        }
        let f = field(&mut self.queue);
        *f = if high { (*f & 0xffff_ffff) | (v as u64) << 32 } else { (*f & !0xffff_ffff) | v as u64 };
    }

    /// Whether the device may process its queue: the driver finished
    /// initialisation (FEATURES_OK and DRIVER_OK), did not fail, the device
    /// does not need a reset, and the queue is ready.
    pub fn running(&self) -> bool {
        let s = self.status;
        s & (STATUS_FEATURES_OK | STATUS_DRIVER_OK) == STATUS_FEATURES_OK | STATUS_DRIVER_OK
            && s & (STATUS_FAILED | STATUS_NEEDS_RESET) == 0
            && self.queue.ready
    }

    pub fn queue_mut(&mut self) -> &mut SplitQueue {
        &mut self.queue
    }

    pub fn queue(&self) -> &SplitQueue {
        &self.queue
    }

    /// The features both sides agreed on (valid once FEATURES_OK is set).
    pub fn negotiated(&self) -> u64 {
        self.driver_features
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    /// Used buffers were added and the driver wants to hear of it.
    pub fn signal_used(&mut self) {
        self.interrupt_status |= INT_USED_BUFFER;
    }

    /// The device is broken until the driver resets it (a malformed
    /// queue); the driver learns it through a configuration interrupt.
    pub fn set_needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt_status |= INT_CONFIG_CHANGE;
        }
    }

    pub fn interrupt_status(&self) -> u8 {
        self.interrupt_status
    }

    /// The device's interrupt line: InterruptStatus != 0.
    pub fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }

    /// Accesses that are no register or that the model refused.
    pub fn unknown_accesses(&self) -> u32 {
        self.unknown_accesses
    }

    /// In this order: Status (u8), DeviceFeaturesSel (u32), DriverFeatures
    /// (u64), DriverFeaturesSel (u32), QueueSel (u32), InterruptStatus
    /// (u8), ConfigGeneration (u32), unknown_accesses (u32), then the
    /// queue: QueueNum (u16), QueueReady (bool), QueueDesc, QueueDriver,
    /// QueueDevice (u64), last avail index, used index (u16). The device ID
    /// and the offered features are the device type's, not state.
    pub(crate) fn save_into(&self, w: &mut Writer) {
        w.u8(self.status);
        w.u32(self.device_features_sel);
        w.u64(self.driver_features);
        w.u32(self.driver_features_sel);
        w.u32(self.queue_sel);
        w.u8(self.interrupt_status);
        w.u32(self.config_generation);
        w.u32(self.unknown_accesses);
        let q = &self.queue;
        w.u16(q.size);
        w.bool(q.ready);
        w.u64(q.desc);
        w.u64(q.driver);
        w.u64(q.device);
        w.u16(q.last_avail);
        w.u16(q.used_idx);
    }

    /// What `save_into` wrote, for a device of type `device_id` offering
    /// `device_features`. Rejects what no sequence of accesses produces:
    /// unknown status bits, FEATURES_OK with features the device refuses
    /// (before FEATURES_OK the driver may have written any), a queue size
    /// that is not a valid one, a ready queue with a bad layout, progress
    /// on a queue that is not ready.
    pub(crate) fn restore_from(r: &mut Reader, device_id: u32, device_features: u64) -> Result<Self, SnapshotError> {
        let mut t = MmioTransport::new(device_id, device_features);
        t.status = only_bits("virtio.status", r.u8()?, STATUS_DRIVER_BITS | STATUS_NEEDS_RESET)?;
        t.device_features_sel = r.u32()?;
        t.driver_features = r.u64()?;
        t.driver_features_sel = r.u32()?;
        t.queue_sel = r.u32()?;
        t.interrupt_status = only_bits("virtio.interrupt_status", r.u8()?, INT_USED_BUFFER | INT_CONFIG_CHANGE)?;
        t.config_generation = r.u32()?;
        t.unknown_accesses = r.u32()?;
        let size = r.u16()?;
        let ready = r.bool("virtio.queue_ready")?;
        let q = SplitQueue { size, ready, desc: r.u64()?, driver: r.u64()?, device: r.u64()?, last_avail: r.u16()?, used_idx: r.u16()? };
        if t.status & STATUS_FEATURES_OK != 0 && !t.features_acceptable() {
            return Err(SnapshotError::BadValue { field: "virtio.driver_features", value: t.driver_features });
        }
        if size != 0 && !valid_size(size) {
            return Err(SnapshotError::BadValue { field: "virtio.queue_num", value: size as u64 });
        }
        if ready && !q.layout_ok() {
            return Err(SnapshotError::BadValue { field: "virtio.queue_ready", value: 1 });
        }
        if !ready && (q.last_avail != 0 || q.used_idx != 0) {
            return Err(SnapshotError::BadValue { field: "virtio.queue_progress", value: q.last_avail as u64 | (q.used_idx as u64) << 16 });
        }
        t.queue = q;
        Ok(t)
    }
}

/// Bank `sel` (32 bits each) of a 64-bit feature set; banks past it are 0.
fn bank(features: u64, sel: u32) -> u32 {
    match sel {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEATURES: u64 = VIRTIO_F_VERSION_1 | 1 << 9;

    fn t() -> MmioTransport {
        MmioTransport::new(2, FEATURES)
    }

    fn negotiate(t: &mut MmioTransport, take: u64) -> u8 {
        t.write(STATUS, 4, 0);
        t.write(STATUS, 4, (STATUS_ACKNOWLEDGE | STATUS_DRIVER) as u64);
        t.write(DRIVER_FEATURES_SEL, 4, 0);
        t.write(DRIVER_FEATURES, 4, take & 0xffff_ffff);
        t.write(DRIVER_FEATURES_SEL, 4, 1);
        t.write(DRIVER_FEATURES, 4, take >> 32);
        t.write(STATUS, 4, (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK) as u64);
        t.read(STATUS, 4, &[]) as u8
    }

    #[test]
    fn identifies() {
        let mut t = t();
        assert_eq!(t.read(MAGIC_VALUE, 4, &[]), 0x7472_6976);
        assert_eq!(t.read(VERSION_REG, 4, &[]), 2);
        assert_eq!(t.read(DEVICE_ID, 4, &[]), 2);
        assert_eq!(t.read(VENDOR_ID_REG, 4, &[]), VENDOR_ID as u64);
        assert_eq!(t.read(DEVICE_FEATURES, 4, &[]), 1 << 9);
        t.write(DEVICE_FEATURES_SEL, 4, 1);
        assert_eq!(t.read(DEVICE_FEATURES, 4, &[]), 1);
        t.write(DEVICE_FEATURES_SEL, 4, 2);
        assert_eq!(t.read(DEVICE_FEATURES, 4, &[]), 0);
        assert_eq!(t.read(QUEUE_NUM_MAX, 4, &[]), 128);
        t.write(QUEUE_SEL, 4, 1);
        assert_eq!(t.read(QUEUE_NUM_MAX, 4, &[]), 0, "only queue 0 exists");
        assert_eq!(t.read(SHM_LEN_LOW, 4, &[]), 0xffff_ffff);
        assert_eq!(t.unknown_accesses(), 0);
    }

    #[test]
    fn features_ok_needs_version_1_and_only_offered_bits() {
        let mut t = t();
        assert_eq!(negotiate(&mut t, FEATURES) & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
        assert_eq!(t.negotiated(), FEATURES);
        assert_eq!(negotiate(&mut t, 1 << 9) & STATUS_FEATURES_OK, 0, "no VERSION_1");
        assert_eq!(negotiate(&mut t, FEATURES | 1 << 3) & STATUS_FEATURES_OK, 0, "bit not offered");
        assert_eq!(negotiate(&mut t, VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK, STATUS_FEATURES_OK, "a subset is fine");
        // Frozen once accepted.
        t.write(DRIVER_FEATURES_SEL, 4, 0);
        t.write(DRIVER_FEATURES, 4, 1 << 9);
        assert_eq!(t.negotiated(), VIRTIO_F_VERSION_1);
        // Banks past 1 hold nothing.
        t.write(STATUS, 4, 0);
        t.write(DRIVER_FEATURES_SEL, 4, 5);
        t.write(DRIVER_FEATURES, 4, 1);
        assert_eq!(t.negotiated(), 0);
    }

    #[test]
    fn status_only_gains_bits_and_zero_resets() {
        let mut t = t();
        negotiate(&mut t, FEATURES);
        t.write(STATUS, 4, STATUS_ACKNOWLEDGE as u64);
        assert_eq!(t.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        t.write(STATUS, 4, STATUS_NEEDS_RESET as u64);
        assert_eq!(t.status() & STATUS_NEEDS_RESET, 0, "the driver cannot set NEEDS_RESET");
        t.signal_used();
        assert_eq!(t.write(STATUS, 4, 0), WriteOutcome::Reset);
        assert_eq!(t.status(), 0);
        assert!(!t.irq_level());
        assert_eq!(t.negotiated(), 0);
    }

    #[test]
    fn queue_registers() {
        let mut t = t();
        t.write(QUEUE_NUM, 4, 100);
        assert_eq!(t.queue().size, 0, "not a power of two");
        t.write(QUEUE_NUM, 4, 256);
        assert_eq!(t.queue().size, 0, "above QueueNumMax");
        t.write(QUEUE_READY, 4, 1);
        assert!(!t.queue().ready, "no size yet");
        t.write(QUEUE_NUM, 4, 64);
        t.write(QUEUE_DESC_LOW, 4, 0x1000);
        t.write(QUEUE_DESC_HIGH, 4, 0x1);
        t.write(QUEUE_DRIVER_LOW, 4, 0x2001);
        t.write(QUEUE_DEVICE_LOW, 4, 0x3000);
        t.write(QUEUE_READY, 4, 1);
        assert!(!t.queue().ready, "misaligned available ring");
        t.write(QUEUE_DRIVER_LOW, 4, 0x2000);
        t.write(QUEUE_READY, 4, 1);
        assert_eq!(t.read(QUEUE_READY, 4, &[]), 1);
        assert_eq!(*t.queue(), SplitQueue { size: 64, ready: true, desc: 0x1_0000_1000, driver: 0x2000, device: 0x3000, last_avail: 0, used_idx: 0 });
        // Frozen while ready.
        t.write(QUEUE_DESC_LOW, 4, 0x5000);
        t.write(QUEUE_NUM, 4, 8);
        assert_eq!(t.queue().desc, 0x1_0000_1000);
        assert_eq!(t.queue().size, 64);
        assert_eq!(t.write(QUEUE_NOTIFY, 4, 0), WriteOutcome::Notify(0));
        assert_eq!(t.write(QUEUE_NOTIFY, 4, 3), WriteOutcome::Done);
        t.write(QUEUE_READY, 4, 0);
        assert!(!t.queue().ready);
    }

    #[test]
    fn interrupts_and_ack() {
        let mut t = t();
        t.signal_used();
        assert!(t.irq_level());
        assert_eq!(t.read(INTERRUPT_STATUS, 4, &[]), 1);
        t.write(INTERRUPT_ACK, 4, 2);
        assert!(t.irq_level());
        t.write(INTERRUPT_ACK, 4, 1);
        assert!(!t.irq_level());
        negotiate(&mut t, FEATURES);
        t.write(STATUS, 4, STATUS_DRIVER_OK as u64);
        t.set_needs_reset();
        assert_eq!(t.read(INTERRUPT_STATUS, 4, &[]), 2, "NEEDS_RESET comes with a configuration interrupt");
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn config_space_accesses() {
        let mut t = t();
        let cfg = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(t.read(CONFIG, 8, &cfg), 0x0807_0605_0403_0201);
        assert_eq!(t.read(CONFIG + 1, 2, &cfg), 0x0302);
        assert_eq!(t.read(CONFIG + 8, 4, &cfg), 9, "past the end reads zero");
        assert_eq!(t.read(u64::MAX, 8, &cfg), 0);
        assert_eq!(t.read(CONFIG, 3, &cfg), 0);
        assert_eq!(t.write(CONFIG + 4, 1, 7), WriteOutcome::Config { offset: 4, size: 1, value: 7 });
    }

    #[test]
    fn odd_accesses_are_counted_not_obeyed() {
        let mut t = t();
        assert_eq!(t.read(STATUS, 2, &[]), 0);
        assert_eq!(t.write(STATUS + 1, 4, 0), WriteOutcome::Done);
        assert_eq!(t.write(STATUS, 1, 0), WriteOutcome::Done);
        assert_eq!(t.read(0x0f0, 4, &[]), 0);
        t.write(0x0f0, 4, 1);
        assert_eq!(t.unknown_accesses(), 5);
    }
}
