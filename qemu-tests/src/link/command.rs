//! What the emulator can be told to do, at a scheduled time or live.
use super::frame;
use super::profile::Profile;

/// A set of link directions between devices (indices from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Every direction of every pair.
    All,
    /// Both directions between two devices.
    Pair(usize, usize),
    /// One direction only.
    Dir { from: usize, to: usize },
    /// Everything to and from one device (isolating it).
    Device(usize),
}

impl Links {
    pub fn contains(&self, from: usize, to: usize) -> bool {
        match *self {
            Links::All => true,
            Links::Pair(a, b) => (from, to) == (a, b) || (from, to) == (b, a),
            Links::Dir { from: f, to: t } => (from, to) == (f, t),
            Links::Device(d) => from == d || to == d,
        }
    }

    /// The highest device index named, to check against the device count.
    pub(crate) fn max_device(&self) -> Option<usize> {
        match *self {
            Links::All => None,
            Links::Pair(a, b) => Some(a.max(b)),
            Links::Dir { from, to } => Some(from.max(to)),
            Links::Device(d) => Some(d),
        }
    }
}

/// Which frames a one-shot fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    pub links: Links,
    /// Only IPv4/TCP frames that carry payload (not ARP, not bare ACKs):
    /// the frames that carry sync records.
    pub tcp_payload: bool,
}

impl Filter {
    /// Any frame on any link.
    pub fn any() -> Filter {
        Filter { links: Links::All, tcp_payload: false }
    }

    /// TCP segments with payload on `links`.
    pub fn tcp_payload(links: Links) -> Filter {
        Filter { links, tcp_payload: true }
    }

    pub fn matches(&self, from: usize, to: usize, frame: &[u8]) -> bool {
        self.links.contains(from, to) && (!self.tcp_payload || frame::tcp_view(frame).is_some_and(|v| !v.payload.is_empty()))
    }
}

/// Where a bit flip lands in the TCP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlipAt {
    /// This bit of the payload (byte `bit / 8`, most significant bit
    /// first), modulo the payload's length.
    Bit(usize),
    /// A bit chosen by the emulator's seeded generator.
    Random,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Drop every frame on these links until restored, including those
    /// queued or in flight when the cut comes.
    Cut(Links),
    /// Undo cuts on these links (`Restore(Links::All)` undoes every cut).
    Restore(Links),
    /// Drop the next `n` frames that match.
    DropNext { n: u64, filter: Filter },
    /// Flip one bit in the TCP payload of the next frame that matches and
    /// carries payload. With `fix_checksums` the IPv4 and TCP checksums are
    /// recomputed, so the receiver's TCP accepts the corrupted bytes and
    /// only the sync protocol's AEAD can catch them; without, the receiver's
    /// TCP drops the segment and retransmission hides the fault.
    FlipBit { filter: Filter, at: FlipAt, fix_checksums: bool },
    /// Change the profile of these links from now on (frames already queued
    /// keep their times).
    SetProfile(Links, Profile),
}

impl Command {
    pub(crate) fn max_device(&self) -> Option<usize> {
        match self {
            Command::Cut(l) | Command::Restore(l) | Command::SetProfile(l, _) => l.max_device(),
            Command::DropNext { filter, .. } | Command::FlipBit { filter, .. } => filter.links.max_device(),
        }
    }
}
