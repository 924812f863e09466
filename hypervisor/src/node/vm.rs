//! The one virtual machine: its memory, its board and its counters.
use crate::console_cmd::ConsoleCommands;
use crate::memory::guest::GuestMemory;
use crate::stats::TrapStats;
use crate::storage::writes::DiskWrites;
use crate::sync::engine::Engine;
use crate::sync::standby_node::GuestState;
use crate::vplatform::Platform;

pub struct Vm<P> {
    pub mem: GuestMemory,
    pub platform: P,
    pub stats: TrapStats,
    /// Guest accesses to addresses with no RAM or device behind them.
    pub unmapped_accesses: u64,
    /// Dirty tracking and epoch encoding, when a policy is configured.
    pub sync: Option<Engine>,
    /// When sync started here (epoch times count from it).
    pub sync_start_ns: u64,
    /// An epoch cut was asked for during this trap; it happens on the way
    /// back to the guest.
    pub cut_due: bool,
    /// That cut marks the workload's steady state (for the reports).
    pub steady_mark: bool,
    /// A standby asked for the guest (index into the engine's peers).
    pub switch_to: Option<usize>,
    /// The guest's state at the last cut (kept when this device hands the
    /// guest over: it is then the state of its standby image).
    pub last_state: Option<GuestState>,
    /// Hypervisor commands typed on the console among the guest's input.
    pub console: ConsoleCommands,
    /// The guest's disk writes in the open epoch, counted while guest RAM
    /// is tracked and the guest has a disk (`track_disk`).
    pub disk_writes: Option<DiskWrites>,
}

impl<P: Platform> Vm<P> {
    pub fn new(mem: GuestMemory, platform: P) -> Self {
        Vm {
            mem,
            platform,
            stats: TrapStats::default(),
            unmapped_accesses: 0,
            sync: None,
            sync_start_ns: 0,
            cut_due: false,
            steady_mark: false,
            switch_to: None,
            last_state: None,
            console: ConsoleCommands::default(),
            disk_writes: None,
        }
    }

    /// With sync on and a guest disk of `capacity` bytes: count its writes
    /// per epoch (one bitmap, allocated here, once).
    pub fn track_disk(&mut self, capacity: Option<u64>) {
        if let (Some(_), Some(capacity)) = (&self.sync, capacity) {
            self.disk_writes = Some(DiskWrites::new(capacity));
        }
    }
}

/// How many unmapped accesses get a log line each; the rest are counted.
pub const UNMAPPED_REPORTS: u64 = 16;
