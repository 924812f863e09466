//! The seam between the device's life (`node`) and an architecture: what
//! the node asks of the CPU, the stage-2 tables, the clock, the console and
//! the power switch. The node is generic over it; `aarch64` implements it
//! for EL2, a fake implements it for the node's host tests, and an x86_64
//! SVM implementation comes next.
//!
//! The shape is KVM's guest enter/exit: `run` enters the guest and returns
//! when it exits, with the exit as data; the node handles the exit and
//! calls `run` again. A role change (hand-over, take-over) is a plain
//! transition of that loop, never a call that does not return.
use alloc::vec::Vec;

use crate::vplatform::{MmioAccess, Platform};

/// Why the guest stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// A write hit a write-protected page (dirty tracking): `ipa` is the
    /// guest-physical address written. Nothing to complete: the guest
    /// retries the instruction once the page is writable; a write outside
    /// tracked RAM is completed with `Completion::Abort`.
    WriteFault { ipa: u64 },
    /// A load or store to an address with no RAM behind it: a device of the
    /// virtual board, or nothing. Completed with `MmioRead`, `MmioWritten`
    /// or `Abort`.
    Mmio(MmioAccess),
    /// A hypercall (PSCI on ARM); `args` are its first four argument
    /// registers. Completed with `Hypercall`. `smc` tells the conduit (for
    /// the trap counters).
    Hypercall { args: [u64; 4], smc: bool },
    /// Interrupts of the hypervisor's own came in while the guest ran (the
    /// guest's own were already forwarded to its interrupt model).
    HostInterrupt(HostIrqs),
    /// The guest waits for an interrupt (already stepped over).
    Halt,
    /// An access the architecture reflected to the guest as an abort on
    /// its own (an instruction fetch, or an access it cannot decode) at an
    /// address no RAM or device answers.
    Unmapped { ipa: u64, what: &'static str },
    /// Handled by the architecture (a trapped system register, an SGI, an
    /// SError): counted, nothing else to do.
    Handled(Handled),
    /// The exit needs nothing (e.g. the guest's page tables changed under
    /// a fault): the guest retries.
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    SysReg,
    /// A data abort reflected to the guest (not a write to tracked RAM).
    Abort,
    Other,
}

/// The hypervisor's own interrupts found at one exit. `count` is every
/// interrupt acknowledged (the guest's forwarded ones too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostIrqs {
    pub count: u32,
    /// The tick the node armed with `arm_tick` fired.
    pub tick: bool,
    /// Console input waits (read it with `console_read`).
    pub console: bool,
}

/// How the node finishes an exit before the guest runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The value a load reads (zero-extended; the architecture narrows or
    /// sign-extends as the instruction asks); steps over the instruction.
    MmioRead(u64),
    /// A store the device absorbed; steps over the instruction.
    MmioWritten,
    /// The hypercall's return value.
    Hypercall(u64),
    /// Reflect the access to the guest as a synchronous external abort.
    Abort,
}

/// Where the guest is, for log lines about its accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPc {
    pub pc: u64,
    /// The guest's exception level or privilege ring.
    pub level: u8,
}

/// The guest's stage-2 (nested) tables over guest RAM. Page numbers count
/// from the start of guest RAM.
pub trait Stage2Table {
    /// Every page of guest RAM read-only (tracking starts), one invalidate.
    fn protect_all(&mut self);
    /// These pages read-only again, then one invalidate for all of them:
    /// cheaper than one per page, and without it a stale writable TLB
    /// entry would hide writes.
    fn write_protect(&mut self, pages: &mut dyn Iterator<Item = u64>);
    /// The page holding `ipa` writable (after its first write of an
    /// epoch). False if `ipa` is not guest RAM.
    fn make_writable(&mut self, ipa: u64) -> bool;
    /// Forget every translation of the guest this CPU may cache (a guest
    /// arrives whose translations may linger from an earlier turn), and
    /// every stale instruction (its image was written as data).
    fn flush(&mut self);
}

/// What the node needs of an architecture.
pub trait Arch {
    /// The virtual board the guest sees on this architecture.
    type Platform: Platform;
    type Stage2: Stage2Table;
    /// Why a captured vCPU state could not be restored here.
    type StateError: core::fmt::Debug;

    /// Where guest RAM starts in the guest's physical address space.
    const RAM_BASE: u64;

    /// Runs the vCPU until it exits. `platform` receives the guest's own
    /// interrupts that arrive meanwhile.
    fn run(&mut self, platform: &mut Self::Platform) -> VmExit;
    /// Finishes the last exit (see `VmExit` for which need it).
    fn complete(&mut self, how: Completion);
    /// Moves interrupts the board has pending for the guest into the CPU's
    /// injection state (list registers on ARM). Called before every `run`
    /// and before a capture, so a capture holds what the guest resumes with.
    fn inject(&mut self, platform: &mut Self::Platform);
    /// Appends the vCPU's state (registers, timer, interrupt controller CPU
    /// interface) as bytes; the guest is paused.
    fn capture(&mut self, out: &mut Vec<u8>);
    /// Loads a state from `capture` (maybe another device's), so the next
    /// `run` resumes it. Bad bytes are an error, never a panic.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), Self::StateError>;
    /// Whether `restore` would accept `bytes`, changing nothing (a standby
    /// checks before it asks for the guest).
    fn check_state(&self, bytes: &[u8]) -> Result<(), Self::StateError>;
    /// Logs the arch's own trap counters (what `VmExit` does not tell
    /// apart, such as which system registers trapped) with the node's at
    /// power-off.
    fn report_traps(&self) {}
    /// Makes this CPU ready to run a guest: its traps, its interrupts, its
    /// view of the CPU (first boot, or a take-over).
    fn enable_guest(&mut self);
    /// The guest leaves this device: its timer must not fire into the
    /// standby loop and no injected interrupt stays live.
    fn quiesce(&mut self);
    fn guest_pc(&self) -> GuestPc;

    /// Monotonic time since boot.
    fn now_ns(&self) -> u64;
    /// The hypervisor's tick, once, `ns` from now (`HostIrqs::tick`).
    fn arm_tick(&mut self, ns: u64);
    fn stop_tick(&mut self);
    /// Busy-waits about `ns`, the guest paused (network waits of a switch).
    fn spin(&mut self, ns: u64);
    /// Sleeps until an interrupt or `ns` pass (a standby between polls);
    /// interrupts that woke it are retired (no guest runs here).
    fn sleep(&mut self, ns: u64);

    /// One byte typed on this device's console, if any.
    fn console_read(&mut self) -> Option<u8>;
    /// The guest's console output, passed through to this device's console.
    fn console_write(&mut self, byte: u8);
}

/// The boot-time part of the seam: what only the architecture knows how to
/// build before the node's first role.
pub trait ArchBoot: Arch {
    type BootError: core::fmt::Debug;
    /// Stage 2 over guest RAM: `size` bytes at `RAM_BASE`, backed by host
    /// memory at `backing`; nothing else mapped. Built in either role: a
    /// standby that takes the guest over runs it in the same memory.
    fn stage2(&mut self, alloc: &mut crate::memory::phys::PhysAllocator, backing: u64, size: u64) -> Result<Self::Stage2, Self::BootError>;
    /// Loads a fresh guest by the architecture's boot protocol (kernel,
    /// initrd, command line, the board's description, which names the
    /// disk if `disk`) into `mem`, whose RAM is all zero, and sets the vCPU
    /// at its entry.
    fn load_guest(
        &mut self,
        mem: &mut crate::memory::guest::GuestMemory,
        kernel: &[u8],
        initrd: &[u8],
        cmdline: &str,
        disk: bool,
    ) -> Result<(), Self::BootError>;
    /// The CPU's and the firmware's own sources of randomness (aarch64:
    /// RNDR, SMCCC TRNG); the board's devices add theirs in the node.
    fn entropy(&mut self) -> alloc::vec::Vec<alloc::boxed::Box<dyn crate::rng::Entropy>>;
}

/// What the architecture hands the node once it runs with its MMU on.
pub struct BootInfo<'a> {
    /// The loader's device tree (RAM, the NIC).
    pub host_fdt: &'a fdt::Fdt<'a>,
    /// Board RAM not yet used by the image, the device tree or the base heap.
    pub alloc: crate::memory::phys::PhysAllocator,
    /// The payload container, hashes not yet checked.
    pub payload: &'a [u8],
    /// The physical range mapped as Device memory (where the NIC may be).
    pub device_window: core::ops::Range<u64>,
    /// The hypervisor's own heap, already added.
    pub heap_base: u64,
}
