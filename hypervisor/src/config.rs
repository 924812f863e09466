//! The guest config carried in the boot image: `key=value` lines.
//!
//! ```text
//! cmdline=console=ttyAMA0 vmsync.workload=video
//! mem_mib=256
//! policy=interval:200ms
//! verify=on
//! ```
use alloc::string::String;
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
}

pub const DEFAULT_MEM_MIB: u64 = 256;
/// Linux needs some room; the stage-2 layout caps it (40-bit IPA space).
pub const MIN_MEM_MIB: u64 = 64;
pub const MAX_MEM_MIB: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    NotUtf8,
    /// Line number (1-based) without a `=`.
    Syntax { line: usize },
    UnknownKey { line: usize },
    BadNumber { line: usize },
    MemOutOfRange { mib: u64 },
    BadPolicy { line: usize },
    /// `verify` is `on` or `off`.
    BadSwitch { line: usize },
    /// `verify=on` without a policy: there would be no epochs to check.
    VerifyWithoutSync,
}

impl GuestConfig {
    pub fn parse(text: &[u8]) -> Result<Self, ConfigError> {
        let text = core::str::from_utf8(text).map_err(|_| ConfigError::NotUtf8)?;
        let mut cfg = GuestConfig { cmdline: String::new(), mem_bytes: DEFAULT_MEM_MIB << 20, policy: None, verify: false };
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
                _ => return Err(ConfigError::UnknownKey { line: line_no }),
            }
        }
        if cfg.verify && cfg.policy.is_none() {
            return Err(ConfigError::VerifyWithoutSync);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn defaults() {
        assert_eq!(GuestConfig::parse(b"").unwrap().mem_bytes, DEFAULT_MEM_MIB << 20);
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
