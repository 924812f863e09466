//! Link profiles: what one direction of a link does to the frames on it.
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Per-frame header bytes a TCP segment costs on an Ethernet link beyond its
/// payload (Ethernet 14, IPv4 20, TCP 20 with timestamps 12). The byte-stream
/// mode charges it so both modes shape the same way.
pub const TCP_FRAME_OVERHEAD: usize = 66;

/// Payload of a full-size segment on a 1500-byte MTU with TCP timestamps.
pub const TCP_MSS: usize = 1448;

/// The largest Ethernet frame without FCS; queues always hold a few of them.
const MAX_FRAME: usize = 1514;

#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    /// Bits per second on the link; `None` is unlimited (no serialisation
    /// delay, no queue).
    pub rate_bps: Option<u64>,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each frame's delay is `delay` ± up to `jitter` (uniform), never less
    /// than zero and never earlier than the frame before it.
    pub jitter: Duration,
    /// Probability in [0, 1] that a frame is lost after crossing the link.
    pub loss: f64,
    /// Drop-tail limit of the transmit queue in bytes...
    pub queue_bytes: usize,
    /// ...and in time at the link rate; the smaller of the two applies, as
    /// in a Wi-Fi or LTE modem buffer.
    pub queue_time: Duration,
}

const QUEUE_BYTES: usize = 256 * 1024;
const QUEUE_TIME: Duration = Duration::from_millis(100);

impl Profile {
    fn shaped(name: &str, mbit: u64, delay_ms: u64, jitter_ms: u64) -> Profile {
        Profile {
            name: name.to_string(),
            rate_bps: Some(mbit * 1_000_000),
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss: 0.0,
            queue_bytes: QUEUE_BYTES,
            queue_time: QUEUE_TIME,
        }
    }

    /// No shaping at all: frames are forwarded as they come.
    pub fn loopback() -> Profile {
        Profile {
            name: "loopback".into(),
            rate_bps: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            queue_bytes: QUEUE_BYTES,
            queue_time: QUEUE_TIME,
        }
    }

    /// A direct Wi-Fi link between two phones: 50 Mbit/s, 5 ms, 1 ms jitter.
    pub fn wifi() -> Profile {
        Self::shaped("wifi", 50, 5, 1)
    }

    /// Two phones reaching each other over LTE: 10 Mbit/s, 40 ms, 5 ms jitter.
    pub fn lte() -> Profile {
        Self::shaped("lte", 10, 40, 5)
    }

    /// Bluetooth: 2 Mbit/s, 30 ms, 5 ms jitter.
    pub fn bt() -> Profile {
        Self::shaped("bt", 2, 30, 5)
    }

    pub fn named(name: &str) -> Option<Profile> {
        match name {
            "loopback" => Some(Self::loopback()),
            "wifi" => Some(Self::wifi()),
            "lte" => Some(Self::lte()),
            "bt" => Some(Self::bt()),
            _ => None,
        }
    }

    pub const NAMES: [&'static str; 4] = ["loopback", "wifi", "lte", "bt"];

    pub fn with_loss(mut self, loss: f64) -> Profile {
        self.loss = loss.clamp(0.0, 1.0);
        self
    }

    pub fn with_jitter(mut self, jitter: Duration) -> Profile {
        self.jitter = jitter;
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Profile {
        self.delay = delay;
        self
    }

    pub fn with_rate(mut self, rate_bps: Option<u64>) -> Profile {
        self.rate_bps = rate_bps;
        self
    }

    /// Time to put `bytes` on the link.
    pub fn serialisation(&self, bytes: usize) -> Duration {
        match self.rate_bps {
            Some(r) if r > 0 => Duration::from_secs_f64(bytes as f64 * 8.0 / r as f64),
            _ => Duration::ZERO,
        }
    }

    /// Bytes the link carries in `t`.
    pub fn bytes_in(&self, t: Duration) -> usize {
        match self.rate_bps {
            Some(r) => (t.as_secs_f64() * r as f64 / 8.0) as usize,
            None => usize::MAX,
        }
    }

    /// The transmit queue's drop-tail limit in bytes: the smaller of the two
    /// limits, but never below four full frames (a 2 Mbit/s link's 100 ms is
    /// only 25 kB).
    pub fn queue_limit(&self) -> usize {
        self.queue_bytes.min(self.bytes_in(self.queue_time)).max(4 * MAX_FRAME)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        match self.rate_bps {
            Some(r) => write!(f, " ({} Mbit/s, {} ms", r as f64 / 1e6, self.delay.as_secs_f64() * 1e3)?,
            None => return Ok(()),
        }
        write!(f, " ±{} ms", self.jitter.as_secs_f64() * 1e3)?;
        if self.loss > 0.0 {
            write!(f, ", {}% loss", self.loss * 100.0)?;
        }
        write!(f, ")")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParseProfileError(pub String);

impl fmt::Display for ParseProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseProfileError {}

/// `NAME[,loss=P%|P][,jitter=MS][,delay=MS][,rate=MBIT]`, for example
/// `wifi`, `lte,loss=1%`, `wifi,jitter=0,delay=20`.
impl FromStr for Profile {
    type Err = ParseProfileError;

    fn from_str(s: &str) -> Result<Profile, ParseProfileError> {
        let mut parts = s.split(',');
        let name = parts.next().unwrap_or_default().trim();
        let mut p = Profile::named(name).ok_or_else(|| ParseProfileError(format!("unknown link profile {name:?} (one of {})", Profile::NAMES.join(", "))))?;
        for part in parts {
            let (k, v) = part.split_once('=').ok_or_else(|| ParseProfileError(format!("expected key=value, got {part:?}")))?;
            let num = |v: &str| v.trim().parse::<f64>().map_err(|_| ParseProfileError(format!("bad number {v:?} for {k}")));
            let ms = |v: &str| num(v).map(|x| Duration::from_secs_f64(x.max(0.0) / 1e3));
            match k.trim() {
                "loss" => {
                    p.loss = match v.strip_suffix('%') {
                        Some(pct) => num(pct)? / 100.0,
                        None => num(v)?,
                    }
                    .clamp(0.0, 1.0)
                }
                "jitter" => p.jitter = ms(v)?,
                "delay" => p.delay = ms(v)?,
                "rate" => p.rate_bps = Some((num(v)? * 1e6) as u64),
                other => return Err(ParseProfileError(format!("unknown link parameter {other:?} (loss, jitter, delay, rate)"))),
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_parsing() {
        assert_eq!(Profile::named("wifi").map(|p| p.rate_bps), Some(Some(50_000_000)));
        let p: Profile = "lte,loss=1%,jitter=2".parse().expect("valid");
        assert_eq!(p.rate_bps, Some(10_000_000));
        assert!((p.loss - 0.01).abs() < 1e-9);
        assert_eq!(p.jitter, Duration::from_millis(2));
        assert!("warp".parse::<Profile>().is_err());
        assert!("wifi,speed=3".parse::<Profile>().is_err());
        // 50 Mbit/s: 100 ms is 625 kB, so 256 KiB applies; 2 Mbit/s: 25 kB.
        assert_eq!(Profile::wifi().queue_limit(), 256 * 1024);
        assert_eq!(Profile::bt().queue_limit(), 25_000);
        assert_eq!(Profile::wifi().serialisation(6250), Duration::from_millis(1));
    }
}
