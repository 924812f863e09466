//! What the emulator counts: per direction, frames and bytes delivered (the
//! report's `totals.link_bytes`), drops by cause, flips, and delivered bytes per
//! 100 ms for rate figures.
use std::time::Duration;

/// Width of one time-series bucket.
pub const BUCKET: Duration = Duration::from_millis(100);

/// Frames dropped on one direction, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Drop-tail: the transmit queue was full.
    pub queue_full: u64,
    /// The profile's random loss.
    pub loss: u64,
    /// The link was cut when the frame was offered or when it arrived.
    pub cut: u64,
    /// A `DropNext` command took it.
    pub command: u64,
    /// Sending to the receiving QEMU failed.
    pub send_error: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.queue_full + self.loss + self.cut + self.command + self.send_error
    }

    fn add(&mut self, o: &Drops) {
        self.queue_full += o.queue_full;
        self.loss += o.loss;
        self.cut += o.cut;
        self.command += o.command;
        self.send_error += o.send_error;
    }
}

/// One direction of one device pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirStats {
    pub from: usize,
    pub to: usize,
    /// Frames handed to the receiving device.
    pub frames: u64,
    /// Their Ethernet bytes (destination MAC to end of payload, no FCS).
    pub bytes: u64,
    pub drops: Drops,
    /// Frames delivered with a flipped bit.
    pub flipped: u64,
    /// Frames queued or in flight now.
    pub in_flight: u64,
    /// The profile in force.
    pub profile: String,
}

/// What arrived from one device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceStats {
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Shorter than an Ethernet header.
    pub malformed: u64,
    /// Addressed to a station on the sender's own port.
    pub filtered: u64,
    /// Datagrams the host kernel dropped at the emulator's socket for this
    /// device because it was not read fast enough (from `/proc/net/udp`;
    /// `None` where that is unavailable). Frames lost before the emulator
    /// saw them, so not in any direction's counts.
    pub host_drops_in: Option<u64>,
    /// Datagrams the host kernel dropped at this device's QEMU socket (QEMU
    /// did not read them in time); counted as delivered above.
    pub host_drops_out: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Since the emulator started.
    pub elapsed: Duration,
    /// Every ordered pair `(from, to)`, `from != to`, in order of `from`
    /// then `to`.
    pub dirs: Vec<DirStats>,
    pub devices: Vec<DeviceStats>,
}

impl Snapshot {
    pub fn dir(&self, from: usize, to: usize) -> Option<&DirStats> {
        self.dirs.iter().find(|d| d.from == from && d.to == to)
    }

    /// Bytes delivered on every direction: a run's `link_bytes` (docs/report.md).
    pub fn delivered_bytes(&self) -> u64 {
        self.dirs.iter().map(|d| d.bytes).sum()
    }

    pub fn delivered_frames(&self) -> u64 {
        self.dirs.iter().map(|d| d.frames).sum()
    }

    pub fn drops(&self) -> Drops {
        let mut t = Drops::default();
        for d in &self.dirs {
            t.add(&d.drops);
        }
        t
    }

    pub fn flipped(&self) -> u64 {
        self.dirs.iter().map(|d| d.flipped).sum()
    }
}

/// Bytes delivered per [`BUCKET`] from the emulator's start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub bucket: Duration,
    /// `(from, to, bytes per bucket)` for every direction, as in [`Snapshot::dirs`].
    pub dirs: Vec<(usize, usize, Vec<u64>)>,
}

impl Series {
    /// All directions summed.
    pub fn total(&self) -> Vec<u64> {
        let len = self.dirs.iter().map(|d| d.2.len()).max().unwrap_or(0);
        let mut t = vec![0; len];
        for (_, _, s) in &self.dirs {
            for (i, b) in s.iter().enumerate() {
                t[i] += b;
            }
        }
        t
    }
}

/// Adds `bytes` to the bucket holding time `at` since the start.
pub(crate) fn add_to_series(series: &mut Vec<u64>, at: Duration, bytes: u64) {
    let i = (at.as_nanos() / BUCKET.as_nanos()) as usize;
    if series.len() <= i {
        series.resize(i + 1, 0);
    }
    series[i] += bytes;
}

/// The kernel's drop count of each 127.0.0.1 UDP socket bound to one of
/// `ports`, from `/proc/net/udp` (Linux). `None` for a port not found.
pub(crate) fn host_udp_drops(ports: &[u16]) -> Vec<Option<u64>> {
    let mut out = vec![None; ports.len()];
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else { return out };
    // "sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt
    // uid timeout inode ref pointer drops"; addresses are HEXIP:HEXPORT
    // with the IP in host byte order (0100007F is 127.0.0.1 here).
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(drops)) = (f.get(1), f.last()) else { continue };
        let Some((ip, port)) = local.split_once(':') else { continue };
        let (Ok(ip), Ok(port), Ok(drops)) = (u32::from_str_radix(ip, 16), u16::from_str_radix(port, 16), drops.parse::<u64>()) else { continue };
        if ip != u32::from_ne_bytes([127, 0, 0, 1]) {
            continue;
        }
        for (slot, p) in out.iter_mut().zip(ports) {
            if *p == port {
                *slot = Some(drops);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_buckets() {
        let mut s = Vec::new();
        add_to_series(&mut s, Duration::from_millis(50), 10);
        add_to_series(&mut s, Duration::from_millis(250), 5);
        add_to_series(&mut s, Duration::from_millis(99), 1);
        assert_eq!(s, vec![11, 0, 5]);
    }

    #[test]
    fn finds_our_socket_in_proc() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = s.local_addr().expect("bound").port();
        if std::path::Path::new("/proc/net/udp").exists() {
            assert_eq!(host_udp_drops(&[port]), vec![Some(0)]);
        }
    }
}
