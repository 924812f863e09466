//! The one virtual machine: its memory, its board and its counters.
use crate::console_cmd::ConsoleCommands;
use crate::memory::guest::GuestMemory;
use crate::stats::TrapStats;
use crate::sync::engine::Engine;
use crate::sync::standby_node::GuestState;
use crate::vplatform::arm::ArmPlatform;

pub struct Vm {
    pub mem: GuestMemory,
    pub platform: ArmPlatform,
    pub stats: TrapStats,
    /// Guest accesses to addresses with no RAM or device behind them.
    pub unmapped_accesses: u64,
    /// System registers that trapped and were treated as RAZ/WI, reported
    /// once each.
    pub sysregs_reported: heapless::Vec<u32, 32>,
    /// Dirty tracking and epoch encoding, when a policy is configured.
    pub sync: Option<Engine>,
    /// Counter value when sync started (epoch times count from it).
    pub sync_start_ticks: u64,
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
}

impl Vm {
    pub fn new(mem: GuestMemory) -> Self {
        Vm {
            mem,
            platform: ArmPlatform::new(),
            stats: TrapStats::default(),
            unmapped_accesses: 0,
            sysregs_reported: heapless::Vec::new(),
            sync: None,
            sync_start_ticks: 0,
            cut_due: false,
            steady_mark: false,
            switch_to: None,
            last_state: None,
            console: ConsoleCommands::default(),
        }
    }
}

/// How many unmapped accesses get a log line each; the rest are counted.
pub const UNMAPPED_REPORTS: u64 = 16;
