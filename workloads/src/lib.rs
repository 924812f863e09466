//! Guest workloads for VMsync: Android-like stand-ins that run in the Linux
//! guest and print one machine-readable line per second:
//!
//! ```text
//! vmsync-workload: counter=<n> checksum=<16 hex> uptime=<seconds> [key=value ...]
//! ```
//!
//! Every workload mutates its memory deterministically, so the checksum is a
//! function of its progress (`counter`, `frames`, `periods`, ...) alone. A
//! host test can rebuild the same state with this library and check that a
//! guest that moved between devices kept exactly the memory it should have.

pub mod browse;
pub mod burst;
pub mod counter;
pub mod cpuprobe;
pub mod memtouch;
pub mod player;
pub mod sqlstore;
pub mod storage;
pub mod video;

/// Prefix of every line a workload prints.
pub const LINE_PREFIX: &str = "vmsync-workload:";

/// A fast 64-bit running checksum over words (FxHash-like mixing with a final
/// avalanche). Not cryptographic: it detects lost or stray writes.
#[derive(Clone, Copy, Debug)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(0x6a09_e667_f3bc_c908)
    }
}

impl Checksum {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    pub fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(Self::K);
    }

    pub fn words(&mut self, ws: &[u64]) {
        for &w in ws {
            self.word(w);
        }
    }

    pub fn words32(&mut self, ws: &[u32]) {
        let mut pairs = ws.chunks_exact(2);
        for p in &mut pairs {
            self.word(u64::from(p[0]) | (u64::from(p[1]) << 32));
        }
        for &w in pairs.remainder() {
            self.word(u64::from(w));
        }
    }

    pub fn bytes(&mut self, bs: &[u8]) {
        let mut chunks = bs.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        for &b in chunks.remainder() {
            self.word(u64::from(b));
        }
    }

    pub fn finish(self) -> u64 {
        mix64(self.0)
    }
}

/// splitmix64's finaliser: a bijective avalanche of one word.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic pseudo-random word for (`a`, `b`): the workloads use it
/// instead of a seeded generator so that step `n` never depends on timing.
pub const fn rand2(a: u64, b: u64) -> u64 {
    mix64(mix64(a ^ 0x9e37_79b9_7f4a_7c15).wrapping_add(b))
}

/// The per-second line. `extra` is appended as-is (e.g. `frames=90`).
pub fn format_line(counter: u64, checksum: u64, uptime: &str, extra: &str) -> String {
    let mut s = format!("{LINE_PREFIX} counter={counter} checksum={checksum:016x} uptime={uptime}");
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(extra);
    }
    s
}

/// The field of a workload's per-second line that counts its work done (a
/// running total, so rates compare across runs), or `None` for `counter`
/// and `idle`, whose `counter` (seconds) is all they do.
pub fn progress_field(workload: &str) -> Option<&'static str> {
    Some(match workload {
        "video" | "dav1d" => "frames",
        "memtouch" => "periods",
        "storage" | "browse" => "ticks",
        "sqlite" => "transactions",
        "python" => "objects",
        _ => return None,
    })
}

/// One parsed per-second line: the fields tests and reports read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub counter: u64,
    pub checksum: u64,
    /// Uptime in milliseconds, if the guest had `/proc/uptime`.
    pub uptime_ms: Option<u64>,
    /// Every `key=value` field, including the three above, in order.
    pub fields: Vec<(String, String)>,
}

impl Line {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Parses a console line (anything before the prefix is ignored, since
/// another console's output may share the line).
pub fn parse_line(line: &str) -> Option<Line> {
    let rest = &line[line.find(LINE_PREFIX)? + LINE_PREFIX.len()..];
    let fields: Vec<(String, String)> = rest.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let get = |k: &str| fields.iter().find(|(fk, _)| fk == k).map(|(_, v)| v.as_str());
    let counter = get("counter")?.parse().ok()?;
    let checksum = u64::from_str_radix(get("checksum")?, 16).ok()?;
    let uptime_ms = get("uptime").and_then(parse_uptime_ms);
    Some(Line { counter, checksum, uptime_ms, fields })
}

fn parse_uptime_ms(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let frac_ms: u64 = format!("{frac:0<3}")[..3].parse().ok()?;
    Some(secs.parse::<u64>().ok()? * 1000 + frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trips() {
        let s = format_line(7, 0xdead_beef, "12.34", "frames=210");
        assert_eq!(s, "vmsync-workload: counter=7 checksum=00000000deadbeef uptime=12.34 frames=210");
        let l = parse_line(&format!("junk{s}")).unwrap();
        assert_eq!((l.counter, l.checksum, l.uptime_ms), (7, 0xdead_beef, Some(12_340)));
        assert_eq!(l.field("frames"), Some("210"));
        assert!(parse_line("vmsync-guest: init").is_none());
        // The real-program workloads print the same form.
        let l = parse_line("vmsync-workload: counter=3 checksum=19bc9e5e8956fad5 uptime=5.57 transactions=75 dropped=0").unwrap();
        assert_eq!(l.field(progress_field("sqlite").unwrap()), Some("75"));
        assert_eq!(progress_field("idle"), None);
    }

    #[test]
    fn checksum_sees_every_word_and_order() {
        let a = [1u64, 2, 3];
        let mut c1 = Checksum::default();
        c1.words(&a);
        let mut c2 = Checksum::default();
        c2.words(&[1, 3, 2]);
        assert_ne!(c1.finish(), c2.finish());
        let mut c3 = Checksum::default();
        c3.bytes(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c1.finish(), c3.finish());
        let mut c4 = Checksum::default();
        c4.words32(&[1, 0, 2, 0, 3, 0]);
        assert_eq!(c1.finish(), c4.finish());
    }

    /// Values printed by the aarch64 musl build in a plain-QEMU guest: the
    /// host recomputes the same memory, so tests can check a guest's
    /// checksums after it moved between devices.
    #[test]
    fn host_recomputes_what_the_aarch64_guest_printed() {
        assert_eq!(counter::WorkingSet::checksum_after(counter::DEFAULT_MIB, 2), 0xb591145f8634fce4);
        assert_eq!(counter::WorkingSet::checksum_after(1, 0), 0x79d17c31f2d2f39e); // idle
        assert_eq!(video::Video::checksum_after(31), 0xde9278955cd2b351);
        assert_eq!(memtouch::MemTouch::checksum_after(memtouch::DEFAULT_MIB, 15), 0xda0e7695adc88185);
        let mut b = browse::Browse::new();
        for _ in 0..200 {
            b.tick();
        }
        assert_eq!(b.checksum(), 0x0bd644f1a241d3a6);
        let dir = std::env::temp_dir().join(format!("vmsync-golden-{}", std::process::id()));
        let mut st = storage::Storage::create(&dir).unwrap();
        for _ in 0..20 {
            st.tick().unwrap();
        }
        assert_eq!(st.checksum().unwrap(), 0x0c670fa9942c4975);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
