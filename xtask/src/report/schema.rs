//! The JSON report's types: what `cargo xtask demo` writes (`--report`,
//! default `target/vmsync/report.json`) and what its readers parse back.
//! docs/report.md describes every field; a unit test below checks that it
//! names each one.
//!
//! Byte figures come in two kinds that are never mixed under one name:
//! `sealed_bytes` is what the active device's encoder produced for one
//! standby (sealed frames: headers and AEAD tags included, TCP/IP not);
//! `link_bytes` is what the link emulator delivered between devices
//! (Ethernet frames, every direction, acks and retransmissions included).
use serde::{Deserialize, Serialize};

/// The report's schema version. Bump it when a field is removed, renamed,
/// or changes its type, unit or meaning; adding a field does not bump it
/// (readers ignore fields they do not know). Reports without a `schema`
/// field are version 1, whose `totals.wire_bytes` meant the sealed bytes
/// with one device and the link's count with several.
pub const SCHEMA: u32 = 2;
const _: () = assert!(SCHEMA >= 2, "version 1 is the unversioned report");

/// One run's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`] of the writer.
    pub schema: u32,
    /// The guest's architecture.
    pub arch: String,
    /// The guest kernel's `uname -r` ("unknown" if it never printed it).
    pub kernel: String,
    /// The workload's name, or the `--workload-exec` program's.
    pub workload: String,
    /// The sync policy, as given (`interval:200ms`, `switch-only`, ...).
    pub policy: String,
    /// Seconds the workload was asked to run.
    pub seconds: u64,
    /// One entry per epoch cut on the device(s) that ran the guest.
    pub epochs: Vec<EpochEntry>,
    /// Sums over every epoch, epoch 1 (the initial image) included.
    pub totals: Totals,
    /// Sums over the epochs after epoch 1 (the steady state).
    pub steady: Steady,
    /// The guest's pause for each cut.
    pub pause_us: Pause,
    /// The `--verify` check's result (zeros without `--verify`).
    pub verify: Verify,
    pub guest: Guest,
    /// The hypervisor's trap counts by kind, as it printed them.
    pub traps: String,
    /// The link emulator's profile; absent with one device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The standbys of a run without switches (`--no-switch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standbys: Option<Vec<StandbyEntry>>,
    /// Switches and failovers that happened, in order (switching runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switches: Option<Vec<SwitchEntry>>,
    /// Switches a device reported as failed (switching runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_switches: Option<Vec<FailedSwitch>>,
    /// What did not add up in the devices' consoles (switching runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline_problems: Option<Vec<String>>,
    /// One entry per device (switching runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceEntry>>,
    /// The hypervisor heap of the device that ran the guest, as it printed
    /// it at power-off; absent if it never powered off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<Heap>,
}

/// A hypervisor's heap (bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heap {
    /// The most in use at once since boot.
    pub peak_bytes: u64,
    /// The heap's size: what the device set aside for the hypervisor's
    /// bookkeeping (shadows, link queues, staging).
    pub size_bytes: u64,
}

/// One epoch: what the hypervisor's `vmsync: epoch` line says. Its byte
/// figures describe one standby's stream of the epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEntry {
    pub epoch: u64,
    pub dirty_pages: u64,
    pub dirty_page_bytes: u64,
    pub changed_bytes: u64,
    pub delta_bytes: u64,
    pub compressed_bytes: u64,
    pub sealed_bytes: u64,
    pub write_faults: u64,
    pub pause_us: u64,
    pub sent_pages: u64,
    pub at_ms: u64,
    pub zero_pages: u64,
    pub same_pages: u64,
    pub full_pages: u64,
    pub delta_pages: u64,
}

/// Sums over every epoch, and the link's count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub dirty_pages: u64,
    pub dirty_page_bytes: u64,
    pub changed_bytes: u64,
    pub delta_bytes: u64,
    pub compressed_bytes: u64,
    pub sealed_bytes: u64,
    pub write_faults: u64,
    /// Bytes the link emulator delivered; absent with one device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_bytes: Option<u64>,
}

/// Sums over the epochs after epoch 1.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Steady {
    pub epochs: u64,
    /// From the cut of epoch 1 to the last cut.
    pub seconds: f64,
    pub dirty_page_bytes: u64,
    pub changed_bytes: u64,
    pub delta_bytes: u64,
    pub compressed_bytes: u64,
    pub sealed_bytes: u64,
    pub write_faults: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub median: u64,
    pub max: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verify {
    pub checks: u64,
    pub mismatches: u64,
}

/// What the guest did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// The workload's last progress counter (null: none printed).
    pub progress: Option<u64>,
    pub powered_off: bool,
    /// Null when the report was not written by `cargo xtask demo`.
    #[serde(default)]
    pub workload_started: Option<bool>,
    /// The workload's exit status (null: it never ended).
    #[serde(default)]
    pub workload_rc: Option<WorkloadRc>,
    /// The continuity checks of a switching run.
    #[serde(flatten)]
    pub continuity: Option<Continuity>,
}

/// An exit status: a number, or the text the init printed if it is not one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkloadRc {
    Code(i64),
    Text(String),
}

/// The guest's lines checked across devices (`qemu_tests::guest_check`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuity {
    pub rebooted: bool,
    pub counter_continuous: bool,
    pub time_monotonic: bool,
    /// Null: the workload's checksums cannot be recomputed here.
    pub checksums_verified: Option<bool>,
    pub boots: u64,
    pub lines: u64,
    pub first_counter: Option<u64>,
    pub last_counter: Option<u64>,
    pub problems: Vec<String>,
}

/// A standby of a run without switches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyEntry {
    pub name: String,
    pub committed_epoch: u64,
    pub commits: u64,
    pub digest_match: bool,
    pub all_commits_match: bool,
    pub reconnects: Option<u64>,
    pub full_resyncs: Option<u64>,
    pub bytes_received: u64,
    pub max_lag_bytes: u64,
    pub caught_up_at_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchKind {
    #[default]
    Switch,
    Failover,
}

/// A switch or failover that happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchEntry {
    pub kind: SwitchKind,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub latency_ms: u64,
    pub final_epoch_bytes: u64,
    pub pause_ms: Option<u64>,
    pub digest_match: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedSwitch {
    pub device: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Active,
    Standby,
    Killed,
}

/// A device of a switching run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub name: String,
    pub held_guest: u64,
    pub role_at_end: Role,
    pub committed_epoch: Option<u64>,
    /// Null for the device that ran the guest at the end.
    pub digest_match: Option<bool>,
    pub bytes_received: u64,
    pub powered_off: bool,
    pub max_lag_bytes: u64,
    pub caught_up_at_ms: Option<u64>,
}
