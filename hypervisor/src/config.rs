//! The guest config carried in the boot image: `key=value` lines.
//!
//! ```text
//! cmdline=console=ttyAMA0 vmsync.workload=video
//! mem_mib=256
//! policy=interval:200ms
//! verify=on
//! shadow=25%
//! shadow_probes=full,50,10
//! net_ip=169.254.0.1/16
//! disk=off
//! ```
//!
//! `disk=on` (default) gives the guest a virtio-blk disk when the board has
//! a block device for it (`storage::`); `disk=off` hides it from the guest.
use alloc::string::String;
use core::net::Ipv4Addr;
use sync_core::policy::PolicySpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    pub cmdline: String,
    pub mem_bytes: u64,
    /// Epoch policy; `None` (or `policy=off`) runs the guest untracked.
    pub policy: Option<PolicySpec>,
    /// Keep a second image built only from the encoded epochs and compare
    /// it with guest RAM at every cut.
    pub verify: bool,
    /// How much of guest RAM the active device keeps as shadow pages.
    pub shadow: ShadowShare,
    /// `shadow_probes=full,50,10`: other budgets counted at every cut in
    /// the same run (`sync_core::probe`), for the study; a single device
    /// with a policy only.
    pub shadow_probes: heapless::Vec<ShadowShare, MAX_PROBES>,
    /// The sync NIC (`net_*` keys).
    pub net: NetConfig,
    /// Who this device is in sync (`role`, `peer`, `listen`, `secret`).
    pub sync: SyncRole,
    /// `disk=on|off`: whether the guest gets the board's disk (if any).
    pub disk: bool,
}

/// The device's part in sync.
///
/// ```text
/// role=active                  # runs the guest (default)
/// peer=169.254.0.2:7000        # another device, kept in sync while this one
///                              # runs the guest (repeat for more)
/// role=standby                 # runs no guest; keeps a committed copy, and
///                              # takes the guest over on a switch (then it
///                              # syncs its `peer`s with its `policy`)
/// listen=7000                  # the port this device serves as a standby
///                              # (default 7000; also after a switch away)
/// secret=<64 hex digits>       # the pairing secret both devices share
/// link_budget=16MiB            # most bytes queued for one standby (bytes, or
///                              # KiB/MiB suffixed; default `default_link_budget`)
/// unrelated=keep               # a standby keeps its committed image when an
///                              # active device offers another guest or a history
///                              # without its epoch (default); `resync` lets it
///                              # be replaced (also console `resync`, once)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRole {
    pub standby: bool,
    pub peers: heapless::Vec<(Ipv4Addr, u16), MAX_PEERS>,
    pub listen: u16,
    pub secret: Option<[u8; 32]>,
    /// Most bytes one standby link holds; None: `default_link_budget`.
    pub link_budget: Option<u64>,
    /// An unrelated active device may replace the standby's image
    /// (`unrelated=resync`; `sync_core::fence`).
    pub adopt_unrelated: bool,
}

pub const MAX_PEERS: usize = 4;
/// Most budgets `shadow_probes=` names (each costs its shadows in heap and
/// an encode of every cut).
pub const MAX_PROBES: usize = 4;
/// A link budget must hold an epoch's frames and a few whole pages.
pub const MIN_LINK_BUDGET: u64 = 256 << 10;
pub const MAX_LINK_BUDGET: u64 = 1 << 30;

/// The link budget when the config names none: 16 MiB (over a second of
/// wifi, and a busy 200 ms epoch whole), but no more than half of `spare`
/// (the heap beyond the shadows) shared by the `peers`, so the links
/// together leave room for the zstd contexts, the network buffers and the
/// hypervisor's own needs.
pub fn default_link_budget(spare: u64, peers: usize) -> u64 {
    (16 << 20u64).min(spare / 2 / peers.max(1) as u64).max(MIN_LINK_BUDGET)
}

/// `16MiB`, `512KiB`, `1048576`: a byte count.
fn parse_bytes(v: &str) -> Option<u64> {
    let (num, shift) = if let Some(n) = v.strip_suffix("GiB") {
        (n, 30)
    } else if let Some(n) = v.strip_suffix("MiB") {
        (n, 20)
    } else if let Some(n) = v.strip_suffix("KiB") {
        (n, 10)
    } else {
        (v, 0)
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(1 << shift)
}
pub const DEFAULT_SYNC_PORT: u16 = 7000;

impl SyncRole {
    const fn new() -> Self {
        SyncRole { standby: false, peers: heapless::Vec::new(), listen: DEFAULT_SYNC_PORT, secret: None, link_budget: None, adopt_unrelated: false }
    }

    /// Applies one key; false when the value is malformed.
    fn set(&mut self, key: &str, value: &str) -> bool {
        match key {
            "role" => match value {
                "active" => self.standby = false,
                "standby" => self.standby = true,
                _ => return false,
            },
            "peer" => {
                let Some((ip, port)) = value.split_once(':') else { return false };
                match (ip.parse(), port.parse()) {
                    (Ok(ip), Ok(port @ 1..)) => return self.peers.push((ip, port)).is_ok(),
                    _ => return false,
                }
            }
            "link_budget" => match parse_bytes(value) {
                Some(b @ MIN_LINK_BUDGET..=MAX_LINK_BUDGET) => self.link_budget = Some(b),
                _ => return false,
            },
            "unrelated" => match value {
                "keep" => self.adopt_unrelated = false,
                "resync" => self.adopt_unrelated = true,
                _ => return false,
            },
            "listen" => match value.parse() {
                Ok(p @ 1..) => self.listen = p,
                _ => return false,
            },
            "secret" => {
                if value.len() != 64 {
                    return false;
                }
                let mut out = [0u8; 32];
                for (i, o) in out.iter_mut().enumerate() {
                    match u8::from_str_radix(&value[2 * i..2 * i + 2], 16) {
                        Ok(b) => *o = b,
                        Err(_) => return false,
                    }
                }
                self.secret = Some(out);
            }
            _ => return false,
        }
        true
    }
}

/// The hypervisor's own network (see `net/`). Without `net_ip` the NIC, if
/// the board has one, stays unused.
///
/// ```text
/// net_ip=169.254.0.1/16        # address and prefix (default /16, link-local)
/// net_test=server              # temporary TCP throughput test instead of the guest:
/// net_test=client:169.254.0.1  #   the client sends net_test_mib MiB to the server
/// net_test_mib=8
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub ip: Option<Ipv4Addr>,
    pub prefix: u8,
    pub test: Option<NetTestRole>,
    pub test_mib: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetTestRole {
    Server,
    Client { server: Ipv4Addr },
}

impl NetConfig {
    pub const DEFAULT_PREFIX: u8 = 16;
    pub const DEFAULT_TEST_MIB: u32 = 8;
    pub const MAX_TEST_MIB: u32 = 1024;

    pub const fn new() -> Self {
        NetConfig { ip: None, prefix: Self::DEFAULT_PREFIX, test: None, test_mib: Self::DEFAULT_TEST_MIB }
    }

    /// Applies one `net_*` key; false when the value is malformed.
    fn set(&mut self, key: &str, value: &str) -> bool {
        match key {
            "net_ip" => {
                let (ip, prefix) = value.split_once('/').unwrap_or((value, ""));
                let prefix = if prefix.is_empty() { Some(Self::DEFAULT_PREFIX) } else { prefix.parse().ok() };
                match (ip.parse(), prefix) {
                    (Ok(ip), Some(p @ 1..=32)) => {
                        self.ip = Some(ip);
                        self.prefix = p;
                        true
                    }
                    _ => false,
                }
            }
            "net_test" => {
                self.test = match value {
                    "server" => Some(NetTestRole::Server),
                    _ => match value.strip_prefix("client:").map(str::parse) {
                        Some(Ok(server)) => Some(NetTestRole::Client { server }),
                        _ => return false,
                    },
                };
                true
            }
            "net_test_mib" => match value.parse() {
                Ok(m @ 1..=Self::MAX_TEST_MIB) => {
                    self.test_mib = m;
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// `shadow=25%` (default) or `shadow=full`: the share of guest RAM kept as
/// shadow pages on the active device. Pages beyond it lose their shadow by
/// CLOCK (the least recently sent first) and go whole when next sent; the
/// sync heap is sized from it, so the hypervisor's memory follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowShare {
    Full,
    /// 1..=100 percent of guest RAM.
    Percent(u8),
}

impl ShadowShare {
    pub const DEFAULT: ShadowShare = ShadowShare::Percent(25);

    /// `25%`, `25` or `full`.
    fn parse(v: &str) -> Option<Self> {
        if v == "full" {
            return Some(ShadowShare::Full);
        }
        match v.strip_suffix('%').unwrap_or(v).trim().parse() {
            Ok(p @ 1..=100) => Some(ShadowShare::Percent(p)),
            _ => None,
        }
    }

    /// `full,50,10`: 1 to `MAX_PROBES` budgets.
    fn parse_list(v: &str) -> Option<heapless::Vec<Self, MAX_PROBES>> {
        let mut list = heapless::Vec::new();
        for b in v.split(',') {
            list.push(Self::parse(b.trim())?).ok()?;
        }
        Some(list)
    }

    /// Pages that may have a shadow for a guest of `mem_bytes`.
    pub fn pages(self, mem_bytes: u64) -> u64 {
        let pages = mem_bytes / 4096;
        match self {
            ShadowShare::Full => pages,
            ShadowShare::Percent(p) => pages * p as u64 / 100,
        }
    }

    /// The shadow store's budget for a guest of `mem_bytes`.
    pub fn budget(self, mem_bytes: u64) -> sync_core::shadow::Budget {
        match self {
            ShadowShare::Full | ShadowShare::Percent(100) => sync_core::shadow::Budget::Full,
            // A guest's page count fits usize (RAM is mapped at EL2).
            ShadowShare::Percent(_) => sync_core::shadow::Budget::Pages(self.pages(mem_bytes) as usize),
        }
    }
}

impl core::fmt::Display for ShadowShare {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ShadowShare::Full => f.write_str("full"),
            ShadowShare::Percent(p) => write!(f, "{p}%"),
        }
    }
}

pub const DEFAULT_MEM_MIB: u64 = 256;
/// Linux needs some room; the stage-2 layout caps it (40-bit IPA space).
pub const MIN_MEM_MIB: u64 = 64;
pub const MAX_MEM_MIB: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    NotUtf8,
    /// Line number (1-based) without a `=`.
    Syntax {
        line: usize,
    },
    UnknownKey {
        line: usize,
    },
    BadNumber {
        line: usize,
    },
    MemOutOfRange {
        mib: u64,
    },
    BadPolicy {
        line: usize,
    },
    /// `verify` and `disk` are `on` or `off`.
    BadSwitch {
        line: usize,
    },
    /// `shadow` is a percent of guest RAM (1..=100, `%` optional) or `full`.
    BadShadow {
        line: usize,
    },
    /// `shadow_probes` is 1 to `MAX_PROBES` shadow budgets, comma-separated.
    BadShadowProbes {
        line: usize,
    },
    /// `shadow_probes` on a device with peers or a standby role, or without
    /// a policy: probes measure a single device's epochs (the link that
    /// measures them, `sync::engine`, runs there only).
    ShadowProbesNeedOneDevice,
    /// `verify=on` without a policy: there would be no epochs to check.
    VerifyWithoutSync,
    /// A malformed `net_*` value.
    BadNet {
        line: usize,
    },
    /// `net_test` without `net_ip`: the test needs an address.
    NetTestWithoutIp,
    /// A malformed `role`, `peer`, `listen`, `secret`, `link_budget` or `unrelated`.
    BadSync {
        line: usize,
    },
    /// Peers or a standby role need `net_ip` and `secret`.
    SyncWithoutNet,
    /// Peers need a policy (the epochs that keep them in sync).
    SyncPolicy,
    /// `verify=on` on a standby: verify checks the first active device's
    /// epochs against a local copy and is not carried across a switch.
    VerifyOnStandby,
}

impl GuestConfig {
    pub fn parse(text: &[u8]) -> Result<Self, ConfigError> {
        let text = core::str::from_utf8(text).map_err(|_| ConfigError::NotUtf8)?;
        let mut cfg = GuestConfig {
            cmdline: String::new(),
            mem_bytes: DEFAULT_MEM_MIB << 20,
            policy: None,
            verify: false,
            shadow: ShadowShare::DEFAULT,
            shadow_probes: heapless::Vec::new(),
            net: NetConfig::new(),
            sync: SyncRole::new(),
            disk: true,
        };
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or(ConfigError::Syntax { line: line_no })?;
            match key.trim() {
                "cmdline" => cfg.cmdline = String::from(value.trim()),
                "mem_mib" => {
                    let mib: u64 = value.trim().parse().map_err(|_| ConfigError::BadNumber { line: line_no })?;
                    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mib) {
                        return Err(ConfigError::MemOutOfRange { mib });
                    }
                    cfg.mem_bytes = mib << 20;
                }
                "policy" => {
                    cfg.policy = match value.trim() {
                        "off" => None,
                        spec => Some(PolicySpec::parse(spec).map_err(|_| ConfigError::BadPolicy { line: line_no })?),
                    }
                }
                "verify" => {
                    cfg.verify = match value.trim() {
                        "on" => true,
                        "off" => false,
                        _ => return Err(ConfigError::BadSwitch { line: line_no }),
                    }
                }
                "disk" => {
                    cfg.disk = match value.trim() {
                        "on" => true,
                        "off" => false,
                        _ => return Err(ConfigError::BadSwitch { line: line_no }),
                    }
                }
                "shadow" => cfg.shadow = ShadowShare::parse(value.trim()).ok_or(ConfigError::BadShadow { line: line_no })?,
                "shadow_probes" => cfg.shadow_probes = ShadowShare::parse_list(value).ok_or(ConfigError::BadShadowProbes { line: line_no })?,
                k @ ("net_ip" | "net_test" | "net_test_mib") => {
                    if !cfg.net.set(k, value.trim()) {
                        return Err(ConfigError::BadNet { line: line_no });
                    }
                }
                k @ ("role" | "peer" | "listen" | "secret" | "link_budget" | "unrelated") => {
                    if !cfg.sync.set(k, value.trim()) {
                        return Err(ConfigError::BadSync { line: line_no });
                    }
                }
                _ => return Err(ConfigError::UnknownKey { line: line_no }),
            }
        }
        let networked = cfg.sync.standby || !cfg.sync.peers.is_empty();
        if networked && (cfg.net.ip.is_none() || cfg.sync.secret.is_none()) {
            return Err(ConfigError::SyncWithoutNet);
        }
        if !cfg.sync.peers.is_empty() && cfg.policy.is_none() {
            return Err(ConfigError::SyncPolicy);
        }
        if cfg.sync.standby && cfg.verify {
            return Err(ConfigError::VerifyOnStandby);
        }
        if cfg.verify && cfg.policy.is_none() {
            return Err(ConfigError::VerifyWithoutSync);
        }
        if !cfg.shadow_probes.is_empty() && (networked || cfg.policy.is_none()) {
            return Err(ConfigError::ShadowProbesNeedOneDevice);
        }
        if cfg.net.test.is_some() && cfg.net.ip.is_none() {
            return Err(ConfigError::NetTestWithoutIp);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn parses_keys_and_keeps_equals_in_the_cmdline() {
        let c = GuestConfig::parse(b"# guest\ncmdline=console=ttyAMA0 a=b\nmem_mib = 128\n").unwrap();
        assert_eq!(c.cmdline, "console=ttyAMA0 a=b");
        assert_eq!(c.mem_bytes, 128 << 20);
    }

    #[test]
    fn sync_keys() {
        let c = GuestConfig::parse(b"policy=interval:50ms\nverify=on\n").unwrap();
        assert_eq!(c.policy, Some(PolicySpec::Interval { period_ns: 50_000_000 }));
        assert!(c.verify);
        assert_eq!(GuestConfig::parse(b"policy=off").unwrap().policy, None);
        assert_eq!(GuestConfig::parse(b"policy=sometimes"), Err(ConfigError::BadPolicy { line: 1 }));
        assert_eq!(GuestConfig::parse(b"policy=switch-only\nverify=yes"), Err(ConfigError::BadSwitch { line: 2 }));
        assert_eq!(GuestConfig::parse(b"verify=on"), Err(ConfigError::VerifyWithoutSync));
    }

    #[test]
    fn sync_roles() {
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let c = GuestConfig::parse(
            format!("policy=interval:200ms\nnet_ip=169.254.0.1\npeer=169.254.0.2:7000\npeer=169.254.0.3:7001\nsecret={secret}\n").as_bytes(),
        )
        .unwrap();
        assert!(!c.sync.standby);
        assert_eq!(c.sync.peers.as_slice(), &[(Ipv4Addr::new(169, 254, 0, 2), 7000), (Ipv4Addr::new(169, 254, 0, 3), 7001)]);
        assert_eq!(c.sync.secret.unwrap()[1], 0x11);
        let s = GuestConfig::parse(format!("role=standby\nlisten=7001\nnet_ip=169.254.0.2\nsecret={secret}").as_bytes()).unwrap();
        assert!(s.sync.standby);
        assert_eq!(s.sync.listen, 7001);
        assert_eq!(GuestConfig::parse(b"role=standby"), Err(ConfigError::SyncWithoutNet));
        // A standby that can take the guest over names its peers and policy.
        let t =
            GuestConfig::parse(format!("role=standby\nnet_ip=169.254.0.2\nsecret={secret}\npolicy=interval:200ms\npeer=169.254.0.1:7000").as_bytes()).unwrap();
        assert!(t.sync.standby && t.policy.is_some() && t.sync.peers.len() == 1);
        assert_eq!(
            GuestConfig::parse(format!("role=standby\nnet_ip=169.254.0.2\nsecret={secret}\npeer=169.254.0.1:7000").as_bytes()),
            Err(ConfigError::SyncPolicy)
        );
        assert_eq!(
            GuestConfig::parse(format!("role=standby\nnet_ip=169.254.0.2\nsecret={secret}\npolicy=interval:1s\nverify=on").as_bytes()),
            Err(ConfigError::VerifyOnStandby)
        );
        assert_eq!(GuestConfig::parse(format!("net_ip=169.254.0.1\npeer=169.254.0.2:7000\nsecret={secret}").as_bytes()), Err(ConfigError::SyncPolicy));
        assert_eq!(GuestConfig::parse(b"peer=nowhere"), Err(ConfigError::BadSync { line: 1 }));
        assert_eq!(GuestConfig::parse(b"secret=abc"), Err(ConfigError::BadSync { line: 1 }));
        assert_eq!(GuestConfig::parse(b"role=boss"), Err(ConfigError::BadSync { line: 1 }));
        assert!(!s.sync.adopt_unrelated, "a standby keeps its image by default");
        assert!(GuestConfig::parse(b"unrelated=resync").unwrap().sync.adopt_unrelated);
        assert_eq!(GuestConfig::parse(b"unrelated=maybe"), Err(ConfigError::BadSync { line: 1 }));
    }

    #[test]
    fn link_budget() {
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let with = |v: &str| {
            GuestConfig::parse(format!("policy=interval:200ms\nnet_ip=169.254.0.1\npeer=169.254.0.2:7000\nsecret={secret}\nlink_budget={v}").as_bytes())
        };
        assert_eq!(with("16MiB").unwrap().sync.link_budget, Some(16 << 20));
        assert_eq!(with("512KiB").unwrap().sync.link_budget, Some(512 << 10));
        assert_eq!(with("1GiB").unwrap().sync.link_budget, Some(1 << 30));
        assert_eq!(with("300000").unwrap().sync.link_budget, Some(300_000));
        for bad in ["", "MiB", "16 MB", "-1MiB", "100KiB", "2GiB", "99999999999999999999GiB"] {
            assert_eq!(with(bad), Err(ConfigError::BadSync { line: 5 }), "{bad}");
        }
        assert_eq!(GuestConfig::parse(b"").unwrap().sync.link_budget, None);
        // The default: 16 MiB, less when the spare heap is shared by many.
        assert_eq!(default_link_budget(80 << 20, 2), 16 << 20);
        assert_eq!(default_link_budget(80 << 20, 4), 10 << 20);
        assert_eq!(default_link_budget(1 << 20, 4), MIN_LINK_BUDGET);
        assert_eq!(default_link_budget(80 << 20, 0), 16 << 20);
    }

    #[test]
    fn shadow_share() {
        use sync_core::shadow::Budget;
        let c = GuestConfig::parse(b"").unwrap();
        assert_eq!(c.shadow, ShadowShare::Percent(25), "a quarter of RAM by default");
        assert_eq!(c.shadow.budget(256 << 20), Budget::Pages(16384));
        let with = |v: &str| GuestConfig::parse(format!("mem_mib=128\nshadow={v}").as_bytes()).map(|c| c.shadow);
        assert_eq!(with("full"), Ok(ShadowShare::Full));
        assert_eq!(with("10%"), Ok(ShadowShare::Percent(10)));
        assert_eq!(with(" 50 "), Ok(ShadowShare::Percent(50)));
        assert_eq!(with("100%").unwrap().budget(128 << 20), Budget::Full);
        assert_eq!(ShadowShare::Full.budget(128 << 20), Budget::Full);
        assert_eq!(ShadowShare::Percent(10).pages(128 << 20), 3276);
        for bad in ["", "0", "0%", "101%", "25 %%", "half", "-5", "full%"] {
            assert_eq!(with(bad), Err(ConfigError::BadShadow { line: 2 }), "{bad}");
        }
        assert_eq!(format!("{} {}", ShadowShare::Full, ShadowShare::Percent(25)), "full 25%");
    }

    /// `shadow_probes=`: up to four budgets, on a single device with a
    /// policy; anywhere else the config is refused.
    #[test]
    fn shadow_probes() {
        let with = |extra: &str| GuestConfig::parse(format!("policy=interval:200ms\n{extra}").as_bytes()).map(|c| c.shadow_probes);
        assert_eq!(with("").unwrap().as_slice(), &[]);
        let p = with("shadow_probes=full, 50%,10,25").unwrap();
        assert_eq!(p.as_slice(), &[ShadowShare::Full, ShadowShare::Percent(50), ShadowShare::Percent(10), ShadowShare::Percent(25)]);
        for bad in ["", "full,,10", "5,10,20,30,40", "0", "half"] {
            assert_eq!(with(&format!("shadow_probes={bad}")), Err(ConfigError::BadShadowProbes { line: 2 }), "{bad}");
        }
        assert_eq!(GuestConfig::parse(b"shadow_probes=full"), Err(ConfigError::ShadowProbesNeedOneDevice), "no policy");
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let peers = format!("net_ip=169.254.0.1\npeer=169.254.0.2:7000\nsecret={secret}\nshadow_probes=full");
        assert_eq!(with(&peers), Err(ConfigError::ShadowProbesNeedOneDevice), "with a standby");
        let standby = format!("role=standby\nnet_ip=169.254.0.2\nsecret={secret}\nshadow_probes=full");
        assert_eq!(with(&standby), Err(ConfigError::ShadowProbesNeedOneDevice), "on a standby");
    }

    #[test]
    fn defaults() {
        let c = GuestConfig::parse(b"").unwrap();
        assert_eq!(c.mem_bytes, DEFAULT_MEM_MIB << 20);
        assert_eq!(c.net, NetConfig::new());
        assert_eq!(c.net.ip, None, "networking is off unless configured");
        assert!(c.disk, "the guest gets the board's disk unless told not to");
    }

    #[test]
    fn disk_switch() {
        assert!(!GuestConfig::parse(b"disk=off").unwrap().disk);
        assert!(GuestConfig::parse(b"disk=on").unwrap().disk);
        assert_eq!(GuestConfig::parse(b"mem_mib=64\ndisk=yes"), Err(ConfigError::BadSwitch { line: 2 }));
    }

    #[test]
    fn net_keys() {
        let c = GuestConfig::parse(b"net_ip=169.254.0.2\nnet_test=client:169.254.0.1\nnet_test_mib=16").unwrap();
        assert_eq!(c.net.ip, Some(Ipv4Addr::new(169, 254, 0, 2)));
        assert_eq!(c.net.prefix, 16);
        assert_eq!(c.net.test, Some(NetTestRole::Client { server: Ipv4Addr::new(169, 254, 0, 1) }));
        assert_eq!(c.net.test_mib, 16);
        let c = GuestConfig::parse(b"net_ip = 10.0.0.1/24\nnet_test=server").unwrap();
        assert_eq!((c.net.ip, c.net.prefix, c.net.test), (Some(Ipv4Addr::new(10, 0, 0, 1)), 24, Some(NetTestRole::Server)));
        for bad in [
            "net_ip=169.254.0",
            "net_ip=169.254.0.1/33",
            "net_ip=169.254.0.1/0",
            "net_ip=1.2.3.4/x",
            "net_test=both",
            "net_test=client:",
            "net_test_mib=0",
            "net_test_mib=4096",
        ] {
            assert_eq!(GuestConfig::parse(bad.as_bytes()), Err(ConfigError::BadNet { line: 1 }), "{bad}");
        }
        assert_eq!(GuestConfig::parse(b"net_test=server"), Err(ConfigError::NetTestWithoutIp));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(GuestConfig::parse(b"x\n"), Err(ConfigError::Syntax { line: 1 }));
        assert_eq!(GuestConfig::parse(b"\nfoo=1"), Err(ConfigError::UnknownKey { line: 2 }));
        assert_eq!(GuestConfig::parse(b"mem_mib=lots"), Err(ConfigError::BadNumber { line: 1 }));
        assert_eq!(GuestConfig::parse(b"mem_mib=1"), Err(ConfigError::MemOutOfRange { mib: 1 }));
        assert_eq!(GuestConfig::parse(&[0xff]), Err(ConfigError::NotUtf8));
    }
}
