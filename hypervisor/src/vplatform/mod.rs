//! The virtual board the guest sees, the same on every device of one
//! architecture: nothing is passed through. This module holds what every
//! architecture's board shares: the `Platform` trait the node drives, the
//! shapes of a trapped access and of a hypercall's outcome, and the
//! snapshot container that carries the board's state in a switch. Each
//! architecture's board lives in a submodule (`arm`: vGIC, PL011, PSCI and
//! the guest's device tree).
pub mod arm;
pub mod snapshot;
pub mod virtio;

/// One trapped MMIO access, already decoded from the syndrome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    pub ipa: u64,
    /// 1, 2, 4 or 8.
    pub size: u8,
    /// `Some(value)` for a store.
    pub write: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioOutcome {
    /// A load's value (zero-extended to 64 bits).
    Read(u64),
    /// A store that the device absorbed.
    Written,
    /// A store to the UART's data register: one byte for the console.
    Console(u8),
    /// A store that notified the disk's queue `0`: the node serves its
    /// requests (`Platform::disk_process`).
    Notify(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioError {
    /// No device of the virtual board decodes this address.
    Unmapped,
}

/// What a hypercall asks of the board (PSCI on ARM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypercallOutcome {
    /// Return this value to the guest (x0 on ARM).
    Return(u64),
    /// The guest asked to start CPU `target`, which the board cannot:
    /// return `code` (the node logs it once).
    CpuOnRefused { target: u64, code: u64 },
    /// The guest powered off through this call (named for the log).
    PowerOff(&'static str),
    /// The guest asked for a reset through this call.
    Reset(&'static str),
}

/// The virtual board as every architecture's node sees it: the guest's
/// device accesses, console input, its hypercalls, and its state as bytes
/// for a switch. Each architecture has one (`ArmPlatform` on aarch64).
pub trait Platform: Sized {
    /// A fresh board, as at the guest's first instruction; `disk`: the
    /// capacity in bytes of the guest's disk, if it has one.
    fn fresh(disk: Option<u64>) -> Self;
    fn mmio(&mut self, a: MmioAccess) -> Result<MmioOutcome, MmioError>;
    /// One byte typed for the guest's console; false if its FIFO is full.
    fn console_input(&mut self, byte: u8) -> bool;
    /// `args` are the call's first four argument registers.
    fn hypercall(&mut self, args: [u64; 4]) -> HypercallOutcome;
    /// Appends the state of every emulated device to `out`.
    fn save(&self, out: &mut alloc::vec::Vec<u8>);
    /// The board `bytes` (from `save`) describes, on a device whose guest
    /// disk has `disk` bytes (None: none); a snapshot of another disk is an
    /// error. Never panics on bad input.
    fn restore(bytes: &[u8], disk: Option<u64>) -> Result<Self, snapshot::SnapshotError>;
    /// Accesses the models did not understand, for the power-off report.
    fn unknown_accesses(&self) -> u64;
    /// Serves the disk's notified requests from `backend` (the device's
    /// storage), writing guest memory through `mem` (so it is tracked), and
    /// sets the disk's interrupt. Nothing happens on a board without a disk.
    fn disk_process(&mut self, mem: &mut crate::memory::guest::GuestMemory, backend: &mut dyn virtio::BlockBackend);
    /// The disk's request counters, if the board has a disk.
    fn disk_stats(&self) -> Option<virtio::blk::BlkStats>;
}
