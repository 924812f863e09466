//! When to cut an epoch. Each policy is a small type behind `EpochPolicy`;
//! `PolicySpec` is the parsed form of a spec string (`interval:50ms`,
//! `threshold:4MiB`, `adaptive`, `switch-only`) and builds the policy.
//!
//! A switch always cuts, whatever the policy: the caller does that without
//! asking (the final epoch of a switch is not a policy decision). No policy
//! cuts an epoch with no dirty page: it would send nothing.

use alloc::boxed::Box;
use core::fmt;
use core::str::FromStr;

const NS_PER_US: u64 = 1_000;
const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

/// What the hypervisor knows about the open epoch when it asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirtyEstimate {
    pub pages: u64,
    /// Bytes the epoch would put on the wire if it were cut now, as far as
    /// the caller can tell before encoding (at worst pages × 4096).
    pub bytes: u64,
}

/// What happened to an epoch after it was cut: the adaptive policy learns
/// the link's bandwidth and the codec's ratio from these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendSample {
    /// The estimate the epoch was cut at (`DirtyEstimate::bytes`).
    pub estimated_bytes: u64,
    /// Sealed bytes it took on the wire.
    pub wire_bytes: u64,
    /// From the first byte sent to the standby's Ack.
    pub elapsed_ns: u64,
}

pub trait EpochPolicy {
    /// Whether to cut the open epoch now.
    fn should_cut(&mut self, now_ns: u64, dirty: DirtyEstimate) -> bool;
    /// An epoch was cut at `now_ns` (by this policy, by a switch or by the
    /// caller): the next one starts.
    fn on_cut(&mut self, now_ns: u64);
    /// An epoch was sent and acknowledged.
    fn on_sent(&mut self, _sample: SendSample) {}
    /// The spec this policy was built from (prints as the spec string).
    fn describe(&self) -> PolicySpec;
}

/// Cut every `period_ns`.
#[derive(Clone, Debug)]
pub struct Interval {
    period_ns: u64,
    epoch_start_ns: u64,
}

impl Interval {
    pub fn new(period_ns: u64, now_ns: u64) -> Self {
        Self { period_ns, epoch_start_ns: now_ns }
    }
}

impl EpochPolicy for Interval {
    fn should_cut(&mut self, now_ns: u64, dirty: DirtyEstimate) -> bool {
        dirty.pages > 0 && now_ns.saturating_sub(self.epoch_start_ns) >= self.period_ns
    }
    fn on_cut(&mut self, now_ns: u64) {
        self.epoch_start_ns = now_ns;
    }
    fn describe(&self) -> PolicySpec {
        PolicySpec::Interval { period_ns: self.period_ns }
    }
}

/// Cut when the open epoch holds `bytes` of dirty data.
#[derive(Clone, Debug)]
pub struct Threshold {
    bytes: u64,
}

impl Threshold {
    pub fn new(bytes: u64) -> Self {
        Self { bytes }
    }
}

impl EpochPolicy for Threshold {
    fn should_cut(&mut self, _now_ns: u64, dirty: DirtyEstimate) -> bool {
        dirty.pages > 0 && dirty.bytes >= self.bytes
    }
    fn on_cut(&mut self, _now_ns: u64) {}
    fn describe(&self) -> PolicySpec {
        PolicySpec::Threshold { bytes: self.bytes }
    }
}

/// Never cut on its own: epochs are cut only when a switch is requested.
#[derive(Clone, Debug, Default)]
pub struct SwitchOnly;

impl EpochPolicy for SwitchOnly {
    fn should_cut(&mut self, _now_ns: u64, _dirty: DirtyEstimate) -> bool {
        false
    }
    fn on_cut(&mut self, _now_ns: u64) {}
    fn describe(&self) -> PolicySpec {
        PolicySpec::SwitchOnly
    }
}

/// Adapts to the link: the unsent backlog must stay small enough that a
/// switch could flush it within `target_ns` at the measured bandwidth.
/// So it cuts when the open epoch's expected wire bytes (dirty bytes ×
/// measured wire/dirty ratio) reach bandwidth × target, but not more often
/// than `MIN_EPOCH_NS` (each epoch costs a pause and a protect pass) and at
/// least every `MAX_EPOCH_NS` while anything is dirty (a standby must not go
/// stale on a quiet guest). Fast links thus get long epochs that merge
/// rewrites of the same page; slow links get short epochs that keep the
/// final switch delta small.
#[derive(Clone, Debug)]
pub struct Adaptive {
    target_ns: u64,
    epoch_start_ns: u64,
    /// Measured bandwidth, bytes per second (EWMA).
    bandwidth_bps: u64,
    /// Wire bytes per estimated byte, in 1/1024 (EWMA).
    ratio_q10: u64,
}

impl Adaptive {
    /// Default switch latency budget for the final epoch's transfer.
    pub const DEFAULT_TARGET_NS: u64 = 50 * NS_PER_MS;
    /// Assumed until measured: 10 Mbit/s (the `lte` profile), a safe low guess.
    pub const INITIAL_BANDWIDTH_BPS: u64 = 10_000_000 / 8;
    /// Assumed until measured: deltas + zstd send a third of dirty bytes.
    pub const INITIAL_RATIO_Q10: u64 = 1024 / 3;
    pub const MIN_EPOCH_NS: u64 = 10 * NS_PER_MS;
    pub const MAX_EPOCH_NS: u64 = NS_PER_S;
    /// Samples shorter than this say more about latency than bandwidth.
    const MIN_SAMPLE_BYTES: u64 = 16 << 10;

    pub fn new(target_ns: u64, now_ns: u64) -> Self {
        Self { target_ns, epoch_start_ns: now_ns, bandwidth_bps: Self::INITIAL_BANDWIDTH_BPS, ratio_q10: Self::INITIAL_RATIO_Q10 }
    }

    pub fn bandwidth_bps(&self) -> u64 {
        self.bandwidth_bps
    }

    /// Wire bytes the backlog may hold: bandwidth × target.
    pub fn budget_bytes(&self) -> u64 {
        mul_div(self.bandwidth_bps, self.target_ns, NS_PER_S)
    }

    fn expected_wire_bytes(&self, dirty: DirtyEstimate) -> u64 {
        mul_div(dirty.bytes, self.ratio_q10, 1024)
    }
}

/// a × b / c without overflow (saturating); c > 0.
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    let r = (a as u128) * (b as u128) / (c.max(1) as u128);
    u64::try_from(r).unwrap_or(u64::MAX)
}

/// EWMA with weight 1/4 on the new sample.
fn ewma(old: u64, new: u64) -> u64 {
    old - old / 4 + new / 4
}

impl EpochPolicy for Adaptive {
    fn should_cut(&mut self, now_ns: u64, dirty: DirtyEstimate) -> bool {
        if dirty.pages == 0 {
            return false;
        }
        let age = now_ns.saturating_sub(self.epoch_start_ns);
        if age >= Self::MAX_EPOCH_NS {
            return true;
        }
        age >= Self::MIN_EPOCH_NS && self.expected_wire_bytes(dirty) >= self.budget_bytes()
    }

    fn on_cut(&mut self, now_ns: u64) {
        self.epoch_start_ns = now_ns;
    }

    fn on_sent(&mut self, s: SendSample) {
        if s.wire_bytes >= Self::MIN_SAMPLE_BYTES && s.elapsed_ns > 0 {
            let bps = mul_div(s.wire_bytes, NS_PER_S, s.elapsed_ns).max(1);
            self.bandwidth_bps = ewma(self.bandwidth_bps, bps).max(1);
        }
        if s.estimated_bytes > 0 {
            // Capped at 2x: zstd never expands by more, and one odd sample
            // must not make the policy cut at every tick.
            let r = mul_div(s.wire_bytes, 1024, s.estimated_bytes).min(2048);
            self.ratio_q10 = ewma(self.ratio_q10, r).max(1);
        }
    }

    fn describe(&self) -> PolicySpec {
        PolicySpec::Adaptive { target_ns: self.target_ns }
    }
}

/// A parsed policy spec string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicySpec {
    Interval { period_ns: u64 },
    Threshold { bytes: u64 },
    Adaptive { target_ns: u64 },
    SwitchOnly,
}

impl PolicySpec {
    /// Builds the policy; `now_ns` starts its first epoch.
    pub fn build(self, now_ns: u64) -> Box<dyn EpochPolicy + Send> {
        match self {
            PolicySpec::Interval { period_ns } => Box::new(Interval::new(period_ns, now_ns)),
            PolicySpec::Threshold { bytes } => Box::new(Threshold::new(bytes)),
            PolicySpec::Adaptive { target_ns } => Box::new(Adaptive::new(target_ns, now_ns)),
            PolicySpec::SwitchOnly => Box::new(SwitchOnly),
        }
    }

    /// Parses `interval:<duration>`, `threshold:<size>`, `adaptive`,
    /// `adaptive:<duration>` (the switch latency target) or `switch-only`.
    /// Durations: `ns`, `us`, `ms`, `s`. Sizes: `B`, `KiB`, `MiB`, `GiB`
    /// (and `K`/`M`/`G` as the same binary units), or a bare byte count.
    pub fn parse(s: &str) -> Result<PolicySpec, PolicyParseError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PolicyParseError::Empty);
        }
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        match (name, arg) {
            ("interval", Some(a)) => Ok(PolicySpec::Interval { period_ns: parse_duration(a)? }),
            ("threshold", Some(a)) => Ok(PolicySpec::Threshold { bytes: parse_size(a)? }),
            ("adaptive", None) => Ok(PolicySpec::Adaptive { target_ns: Adaptive::DEFAULT_TARGET_NS }),
            ("adaptive", Some(a)) => Ok(PolicySpec::Adaptive { target_ns: parse_duration(a)? }),
            ("switch-only", None) => Ok(PolicySpec::SwitchOnly),
            ("interval" | "threshold", None) => Err(PolicyParseError::MissingValue),
            ("switch-only", Some(_)) => Err(PolicyParseError::UnexpectedValue),
            _ => Err(PolicyParseError::UnknownPolicy),
        }
    }
}

impl FromStr for PolicySpec {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicySpec::parse(s)
    }
}

impl fmt::Display for PolicySpec {
    /// The canonical spec string; parsing it gives the same spec back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PolicySpec::Interval { period_ns } => write!(f, "interval:{}", Duration(period_ns)),
            PolicySpec::Threshold { bytes } => write!(f, "threshold:{}", Size(bytes)),
            PolicySpec::Adaptive { target_ns } if target_ns == Adaptive::DEFAULT_TARGET_NS => f.write_str("adaptive"),
            PolicySpec::Adaptive { target_ns } => write!(f, "adaptive:{}", Duration(target_ns)),
            PolicySpec::SwitchOnly => f.write_str("switch-only"),
        }
    }
}

struct Duration(u64);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        for (unit, name) in [(NS_PER_S, "s"), (NS_PER_MS, "ms"), (NS_PER_US, "us")] {
            if ns.is_multiple_of(unit) {
                return write!(f, "{}{}", ns / unit, name);
            }
        }
        write!(f, "{ns}ns")
    }
}

struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, name) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if b.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{}", b >> shift, name);
            }
        }
        write!(f, "{b}B")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyParseError {
    Empty,
    UnknownPolicy,
    /// `interval` and `threshold` need a value after `:`.
    MissingValue,
    /// `switch-only` takes no value.
    UnexpectedValue,
    /// The value does not start with decimal digits.
    BadNumber,
    /// The unit after the number is not one we know (durations need one).
    BadUnit,
    /// Zero would cut at every tick (or never mean anything).
    Zero,
    Overflow,
}

impl fmt::Display for PolicyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FORMS: &str = "interval:<duration>, threshold:<size>, adaptive[:<duration>] or switch-only";
        match self {
            PolicyParseError::Empty => write!(f, "empty policy (one of {FORMS})"),
            PolicyParseError::UnknownPolicy => write!(f, "unknown policy (one of {FORMS})"),
            PolicyParseError::MissingValue => f.write_str("interval and threshold need a value, as in interval:200ms or threshold:4MiB"),
            PolicyParseError::UnexpectedValue => f.write_str("switch-only takes no value"),
            PolicyParseError::BadNumber => f.write_str("the value must start with a decimal number"),
            PolicyParseError::BadUnit => f.write_str("unknown unit (durations: ns, us, ms, s; sizes: B, KiB, MiB, GiB)"),
            PolicyParseError::Zero => f.write_str("the value must be above zero"),
            PolicyParseError::Overflow => f.write_str("the value is too large"),
        }
    }
}

impl core::error::Error for PolicyParseError {}

/// Splits "50ms" into (50, "ms").
fn split_number(s: &str) -> Result<(u64, &str), PolicyParseError> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(PolicyParseError::BadNumber);
    }
    let (num, unit) = s.split_at(digits);
    let mut n: u64 = 0;
    for d in num.bytes() {
        n = n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d - b'0'))).ok_or(PolicyParseError::Overflow)?;
    }
    Ok((n, unit))
}

fn parse_duration(s: &str) -> Result<u64, PolicyParseError> {
    let (n, unit) = split_number(s)?;
    let scale = match unit {
        "ns" => 1,
        "us" => NS_PER_US,
        "ms" => NS_PER_MS,
        "s" => NS_PER_S,
        _ => return Err(PolicyParseError::BadUnit),
    };
    nonzero(n.checked_mul(scale).ok_or(PolicyParseError::Overflow)?)
}

fn parse_size(s: &str) -> Result<u64, PolicyParseError> {
    let (n, unit) = split_number(s)?;
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(PolicyParseError::BadUnit),
    };
    let v = n.checked_shl(shift).filter(|v| v >> shift == n).ok_or(PolicyParseError::Overflow)?;
    nonzero(v)
}

fn nonzero(v: u64) -> Result<u64, PolicyParseError> {
    if v == 0 {
        Err(PolicyParseError::Zero)
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const MS: u64 = NS_PER_MS;

    fn d(pages: u64) -> DirtyEstimate {
        DirtyEstimate { pages, bytes: pages * 4096 }
    }

    #[test]
    fn parses_the_documented_specs() {
        use PolicySpec::*;
        let cases = [
            ("interval:50ms", Interval { period_ns: 50 * MS }),
            ("interval:1s", Interval { period_ns: NS_PER_S }),
            ("interval:200ms", Interval { period_ns: 200 * MS }),
            ("threshold:4MiB", Threshold { bytes: 4 << 20 }),
            ("adaptive", Adaptive { target_ns: super::Adaptive::DEFAULT_TARGET_NS }),
            ("switch-only", SwitchOnly),
            ("adaptive:20ms", Adaptive { target_ns: 20 * MS }),
            ("threshold:512KiB", Threshold { bytes: 512 << 10 }),
            ("threshold:1G", Threshold { bytes: 1 << 30 }),
            ("threshold:1000", Threshold { bytes: 1000 }),
            (" interval:250us ", Interval { period_ns: 250_000 }),
        ];
        for (s, want) in cases {
            assert_eq!(PolicySpec::parse(s), Ok(want), "{s}");
            // Display is canonical and parses back to the same spec.
            assert_eq!(PolicySpec::parse(&want.to_string()), Ok(want), "{s}");
        }
        assert_eq!(PolicySpec::parse("interval:1s").unwrap().to_string(), "interval:1s");
        assert_eq!(PolicySpec::parse("interval:1000ms").unwrap().to_string(), "interval:1s");
        assert_eq!(PolicySpec::parse("threshold:4MiB").unwrap().to_string(), "threshold:4MiB");
        assert_eq!("switch-only".parse::<PolicySpec>(), Ok(SwitchOnly));
    }

    #[test]
    fn rejects_bad_specs() {
        use PolicyParseError::*;
        let cases = [
            ("", Empty),
            ("  ", Empty),
            ("periodic:5ms", UnknownPolicy),
            ("Interval:5ms", UnknownPolicy),
            ("interval", MissingValue),
            ("threshold", MissingValue),
            ("switch-only:1s", UnexpectedValue),
            ("interval:", BadNumber),
            ("interval:ms", BadNumber),
            ("interval:-5ms", BadNumber),
            ("interval:50", BadUnit),
            ("interval:50 ms", BadUnit),
            ("interval:5m", BadUnit),
            ("threshold:4MB", BadUnit),
            ("interval:0ms", Zero),
            ("threshold:0", Zero),
            ("interval:99999999999999999999s", Overflow),
            ("interval:99999999999s", Overflow),
            ("threshold:17179869184GiB", Overflow),
        ];
        for (s, want) in cases {
            assert_eq!(PolicySpec::parse(s), Err(want), "{s:?}");
        }
    }

    #[test]
    fn interval_cuts_on_time_with_dirt() {
        let mut p = PolicySpec::parse("interval:50ms").unwrap().build(1000);
        assert!(!p.should_cut(1000 + 49 * MS, d(5)));
        assert!(p.should_cut(1000 + 50 * MS, d(5)));
        assert!(!p.should_cut(1000 + 500 * MS, d(0)), "nothing dirty: nothing to cut");
        p.on_cut(1000 + 60 * MS);
        assert!(!p.should_cut(1000 + 100 * MS, d(5)));
        assert!(p.should_cut(1000 + 110 * MS, d(5)));
        assert_eq!(p.describe().to_string(), "interval:50ms");
    }

    #[test]
    fn threshold_cuts_on_bytes() {
        let mut p = PolicySpec::parse("threshold:4MiB").unwrap().build(0);
        assert!(!p.should_cut(u64::MAX, d(1023)));
        assert!(p.should_cut(0, d(1024)));
        assert!(p.should_cut(0, DirtyEstimate { pages: 1, bytes: 5 << 20 }));
    }

    #[test]
    fn switch_only_never_cuts() {
        let mut p = PolicySpec::SwitchOnly.build(0);
        assert!(!p.should_cut(u64::MAX, d(1 << 30)));
        assert_eq!(p.describe(), PolicySpec::SwitchOnly);
    }

    #[test]
    fn adaptive_follows_the_link() {
        let mut slow = Adaptive::new(50 * MS, 0);
        let mut fast = Adaptive::new(50 * MS, 0);
        // Teach them: slow link 2 Mbit/s, fast link 400 Mbit/s, ratio 1/4.
        for _ in 0..40 {
            slow.on_sent(SendSample { estimated_bytes: 1 << 20, wire_bytes: 256 << 10, elapsed_ns: 1_048_576_000 });
            fast.on_sent(SendSample { estimated_bytes: 1 << 20, wire_bytes: 256 << 10, elapsed_ns: 5_242_880 });
        }
        assert!((240_000..=270_000).contains(&slow.bandwidth_bps()), "{}", slow.bandwidth_bps());
        assert!((45_000_000..=55_000_000).contains(&fast.bandwidth_bps()), "{}", fast.bandwidth_bps());
        // 64 KiB dirty ~ 16 KiB on the wire: more than the slow link's
        // 50 ms budget (~12.5 KiB), far less than the fast link's (~2.5 MB).
        let dirt = d(16);
        assert!(!slow.should_cut(5 * MS, dirt), "never before MIN_EPOCH_NS");
        assert!(slow.should_cut(20 * MS, dirt));
        assert!(!fast.should_cut(20 * MS, dirt));
        // A quiet guest is still synced at least every MAX_EPOCH_NS.
        assert!(fast.should_cut(Adaptive::MAX_EPOCH_NS, d(1)));
        assert!(!fast.should_cut(Adaptive::MAX_EPOCH_NS, d(0)));
        // Enough dirt for the fast link too.
        assert!(fast.should_cut(20 * MS, d(4096)));
        fast.on_cut(20 * MS);
        assert!(!fast.should_cut(25 * MS, d(4096)));
    }

    #[test]
    fn adaptive_ignores_degenerate_samples() {
        let mut a = Adaptive::new(50 * MS, 0);
        let bw = a.bandwidth_bps();
        a.on_sent(SendSample { estimated_bytes: 0, wire_bytes: 100, elapsed_ns: 0 });
        a.on_sent(SendSample { estimated_bytes: 10, wire_bytes: 1 << 30, elapsed_ns: 0 });
        assert_eq!(a.bandwidth_bps(), bw);
        a.on_sent(SendSample { estimated_bytes: u64::MAX, wire_bytes: u64::MAX, elapsed_ns: 1 });
        assert!(a.bandwidth_bps() > 0);
        assert_eq!(a.describe().to_string(), "adaptive");
    }
}
