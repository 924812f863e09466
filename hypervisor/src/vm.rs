//! The one virtual machine: its memory, its board and its counters.
use crate::memory::guest::GuestMemory;
use crate::stats::TrapStats;
use crate::sync::engine::Engine;
use crate::vplatform::Platform;

pub struct Vm {
    pub mem: GuestMemory,
    pub platform: Platform,
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
}

impl Vm {
    pub fn new(mem: GuestMemory) -> Self {
        Vm {
            mem,
            platform: Platform::new(),
            stats: TrapStats::default(),
            unmapped_accesses: 0,
            sysregs_reported: heapless::Vec::new(),
            sync: None,
            sync_start_ticks: 0,
        }
    }
}

/// How many unmapped accesses get a log line each; the rest are counted.
pub const UNMAPPED_REPORTS: u64 = 16;
