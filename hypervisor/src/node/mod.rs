//! The device's life, the same on every architecture: the guest running
//! here (the active role: exits, tick, policy, cuts, power-off), the
//! hand-over to a standby, the standby loop, and the take-over (on a
//! switch or a failover). The node owns the guest's `Vm`, its stage-2
//! tables, the network and the machine description; it reaches the CPU only
//! through `arch::seam::Arch`.
//!
//! - `vm`: the running guest's memory, board and counters
//! - `exits`: what each guest exit does
//! - `epochs`: the tick, epoch cuts, the network pump, power-off
//! - `handover`: the active device gives the guest to a standby
//! - `standby`: the standby loop and its console commands
//! - `takeover`: a standby resumes the guest from its committed epoch
//! - `boot` (bare metal): from the arch's set-up to the first role
use alloc::vec::Vec;
use log::info;
use sync_core::wire::RamLayout;

use crate::arch::seam::Arch;
use crate::config::GuestConfig;
use crate::net::stack::{NetDevice, Stack};
use crate::sync::raw_pages::RawPages;

#[cfg(target_os = "none")]
pub mod boot;
pub mod epochs;
pub mod exits;
pub mod handover;
pub mod standby;
pub mod takeover;
pub mod vm;

#[cfg(test)]
mod disk_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod handoff_tests;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use standby::Standby;
use vm::Vm;

/// How the node's loop ended: the arch's main powers the board off or
/// resets it (after the node logged why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    PowerOff,
    Reset,
}

/// What every role of this device shares: its config, the memory that
/// holds guest RAM when it runs the guest and the standby image when it
/// does not (a switch changes the role, never the memory), and its storage.
pub struct Machine {
    pub config: GuestConfig,
    /// Host address of `config.mem_bytes` bytes, page aligned, used by
    /// guest RAM or the standby image alone.
    pub backing: *mut u8,
    /// Heap left beyond the shadows, for the links' default budget.
    pub spare_heap: u64,
    /// The device's own storage (`storage::`), if the board has one: the
    /// guest's disk while it runs here (unless `disk=off`).
    pub disk: Option<crate::storage::Disk>,
}

impl Machine {
    /// The standby image over the backing.
    ///
    /// # Safety
    /// No guest runs in the backing (nor will while the image lives).
    pub unsafe fn image(&self) -> RawPages {
        // SAFETY: the backing is `mem_bytes` bytes used by this device's
        // guest RAM or its image alone; the caller says no guest runs.
        unsafe { RawPages::new(self.backing, self.config.mem_bytes / 4096) }
    }

    /// The capacity of the guest's disk on this device: the storage's,
    /// unless the config hides it (`disk=off`); None: no disk.
    pub fn guest_disk(&self) -> Option<u64> {
        self.disk.as_ref().filter(|_| self.config.disk).map(|d| d.capacity())
    }

    /// Why this device may not run its guest with a disk, if so: disk
    /// blocks are not synced yet, so a guest with a disk runs on one device.
    pub fn disk_refusal(&self) -> Option<DiskRefusal> {
        let capacity = self.guest_disk()?;
        let sync = &self.config.sync;
        (sync.standby || !sync.peers.is_empty()).then_some(DiskRefusal { capacity, standby: sync.standby })
    }

    pub fn handshake(&self, ram_base: u64) -> sync_core::wire::Handshake {
        crate::sync::loopback::handshake(RamLayout { base: ram_base, size: self.config.mem_bytes }, [0; 32])
    }
}

/// A guest disk on a device that syncs with others (see
/// `Machine::disk_refusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskRefusal {
    pub capacity: u64,
    pub standby: bool,
}

impl core::fmt::Display for DiskRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "disk: refused: the guest's {} MiB disk is not synced to other devices yet, and this device {}; set disk=off in its config to run without the disk",
            self.capacity >> 20,
            if self.standby { "is a standby" } else { "has sync peers" }
        )
    }
}

/// What every role reaches besides its own state.
pub struct Parts<A: Arch, D: NetDevice> {
    pub arch: A,
    pub s2: A::Stage2,
    /// The sync network, when the board has a NIC and the config an address.
    pub net: Option<Stack<D>>,
    /// The board's randomness: nonces and keys of sync sessions.
    pub rng: crate::rng::Randomness,
    pub machine: Machine,
    /// When the guest first ran on this device, for the report's times.
    pub started_ns: Option<u64>,
}

impl<A: Arch, D: NetDevice> Parts<A, D> {
    pub fn now_ms(&self) -> u64 {
        self.arch.now_ns() / 1_000_000
    }
}

/// Boxed: `step` moves the role out and back at every exit.
pub enum Role<P> {
    Active(Box<Vm<P>>),
    Standby(Box<Standby>),
    /// Only between two roles, inside `step`.
    Moving,
}

pub struct Node<A: Arch, D: NetDevice> {
    pub parts: Parts<A, D>,
    pub role: Role<A::Platform>,
}

impl<A: Arch, D: NetDevice> Node<A, D> {
    /// A node running `vm`, set up by the arch (its vCPU at the guest's
    /// entry, tracking on if `vm.sync` is).
    pub fn active(parts: Parts<A, D>, vm: Vm<A::Platform>) -> Self {
        let mut node = Node { parts, role: Role::Active(Box::new(vm)) };
        node.parts.started_ns = Some(node.parts.arch.now_ns());
        node.parts.arch.enable_guest();
        if node.vm().is_some_and(|vm| vm.sync.is_some()) {
            node.parts.arch.arm_tick(epochs::TICK_NS);
        }
        node
    }

    /// A new standby from boot: it holds the all-zero image of epoch 0.
    pub fn fresh_standby(mut parts: Parts<A, D>) -> Result<Self, standby::StandbyError> {
        let s = Standby::fresh(&mut parts, A::RAM_BASE)?;
        Ok(Node { parts, role: Role::Standby(Box::new(s)) })
    }

    pub fn vm(&self) -> Option<&Vm<A::Platform>> {
        match &self.role {
            Role::Active(vm) => Some(vm),
            _ => None,
        }
    }

    pub fn standby(&self) -> Option<&Standby> {
        match &self.role {
            Role::Standby(s) => Some(s),
            _ => None,
        }
    }

    /// Runs until the guest powers off or resets (or the node cannot go on).
    pub fn run(&mut self) -> Stop {
        loop {
            if let Some(stop) = self.step() {
                return stop;
            }
        }
    }

    /// One turn of the loop: one guest exit handled (active), or one poll
    /// of the network and the console (standby). Role changes happen here.
    pub fn step(&mut self) -> Option<Stop> {
        match core::mem::replace(&mut self.role, Role::Moving) {
            Role::Active(mut vm) => {
                let next = exits::step(&mut self.parts, &mut vm);
                match next {
                    exits::Next::Run => self.role = Role::Active(vm),
                    exits::Next::Stop(s) => {
                        self.role = Role::Active(vm);
                        return Some(s);
                    }
                    exits::Next::StepDown(term) => {
                        self.role = match handover::step_down(&mut self.parts, vm, term) {
                            handover::Outcome::Stayed(vm) => Role::Active(vm),
                            handover::Outcome::Gone(s) => Role::Standby(s),
                            handover::Outcome::Failed => return Some(Stop::PowerOff),
                        }
                    }
                    exits::Next::HandOver(target) => {
                        self.role = match handover::hand_over(&mut self.parts, vm, target) {
                            handover::Outcome::Stayed(vm) => Role::Active(vm),
                            handover::Outcome::Gone(s) => Role::Standby(s),
                            handover::Outcome::Failed => return Some(Stop::PowerOff),
                        }
                    }
                }
            }
            Role::Standby(mut s) => {
                self.role = match standby::step(&mut self.parts, &mut s) {
                    standby::Next::Stay => Role::Standby(s),
                    standby::Next::TakeOver(how) => match takeover::take_over(&mut self.parts, s, how) {
                        takeover::Outcome::Running(vm) => Role::Active(vm),
                        takeover::Outcome::Stayed(s) => Role::Standby(s),
                        takeover::Outcome::Failed => return Some(Stop::PowerOff),
                    },
                }
            }
            Role::Moving => return Some(Stop::PowerOff),
        }
        None
    }
}

/// Hex of a digest, for the log lines the tools compare.
pub use crate::sync::standby_node::hex;

/// A state message pair as sent with an epoch.
pub(crate) fn state_messages(cpu: Vec<u8>, devices: Vec<u8>) -> Vec<sync_core::wire::Message> {
    alloc::vec![sync_core::wire::Message::CpuState(cpu), sync_core::wire::Message::DeviceState(devices)]
}

/// `Ipv4Addr` as text without an allocation.
pub(crate) fn format_ip(ip: core::net::Ipv4Addr) -> heapless::String<16> {
    let mut s = heapless::String::new();
    let _ = core::fmt::Write::write_fmt(&mut s, format_args!("{ip}"));
    s
}

/// Which guest and term the guest runs under here (`sync_core::fence`).
pub enum Reign {
    /// A new guest: a new lineage, its first term.
    FirstBoot,
    /// A take-over at `from` (committed epoch of term `prior` of guest
    /// `lineage`); `seen` is the highest term this device knows of.
    TakeOver { lineage: sync_core::fence::LineageId, prior: sync_core::fence::Term, from: sync_core::wire::Epoch, seen: sync_core::fence::Term },
}

impl Reign {
    /// The standing of the term that starts now, random bits from `rng`.
    fn start(&self, rng: &mut sync_core::crypto::Drbg) -> sync_core::fence::Standing {
        use sync_core::fence::{next_term, Standing};
        let random = u16::from_le_bytes(rng.bytes());
        match *self {
            Reign::FirstBoot => Standing { lineage: rng.bytes(), term: next_term(0, random), ..Standing::default() },
            Reign::TakeOver { lineage, prior, from, seen } => {
                Standing { lineage, term: next_term(seen.max(prior), random), prior_term: prior, took_over_at: from, ..Standing::default() }
            }
        }
    }
}

/// The standbys named in the config, connected by the engine, under the
/// term `reign` starts. Without randomness for their sessions' nonces and
/// keys none are (logged).
pub fn add_peers<A: Arch, D: NetDevice>(p: &mut Parts<A, D>, e: &mut crate::sync::engine::Engine, reign: Reign) {
    let config = &p.machine.config;
    let Some(secret) = config.sync.secret else { return };
    let mut rng = match p.rng.drbg() {
        Ok(r) => r,
        Err(err) => {
            log::error!("sync: refused to start: no randomness for session keys ({err:?}); the standbys get nothing");
            return;
        }
    };
    let peers: Vec<_> = config.sync.peers.iter().map(|&(ip, port)| crate::sync::peers::PeerAddr { ip, port }).collect();
    let budget = config.sync.link_budget.unwrap_or_else(|| crate::config::default_link_budget(p.machine.spare_heap, peers.len()));
    let mut hello = p.machine.handshake(A::RAM_BASE);
    hello.standing = reign.start(&mut rng);
    info!(
        "fence: guest {} term {} (took over at epoch {} of term {})",
        hex(&hello.standing.lineage),
        sync_core::fence::term_count(hello.standing.term),
        hello.standing.took_over_at,
        sync_core::fence::term_count(hello.standing.prior_term)
    );
    // The sync port stays ours while the guest runs here: another device
    // running it (after a partition and a failover) meets us there.
    let listen = Some(config.sync.listen);
    e.add_peers(&peers, sync_core::crypto::PairingSecret::new(secret), hello, rng, budget as usize, listen);
    info!("sync: {} standby peer(s) configured, link budget {} KiB", peers.len(), budget >> 10);
}
