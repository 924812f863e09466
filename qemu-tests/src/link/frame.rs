//! Just enough Ethernet, IPv4 and TCP to route frames by MAC and to find,
//! corrupt and re-checksum a TCP payload.
use std::ops::Range;

pub const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_TCP: u8 = 6;

pub fn dst_mac(frame: &[u8]) -> Option<[u8; 6]> {
    frame.get(0..6)?.try_into().ok()
}

pub fn src_mac(frame: &[u8]) -> Option<[u8; 6]> {
    frame.get(6..12)?.try_into().ok()
}

/// Broadcast and multicast addresses have the group bit set.
pub fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Where the parts of an IPv4/TCP frame lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpView {
    /// The IPv4 header.
    pub ip: Range<usize>,
    /// The TCP header and payload (the span its checksum covers).
    pub segment: Range<usize>,
    /// The TCP payload; may be empty.
    pub payload: Range<usize>,
}

/// Parses an unfragmented IPv4/TCP frame; `None` for anything else
/// (ARP, IPv6, fragments, truncated frames). Ethernet padding after the IP
/// datagram is left out.
pub fn tcp_view(frame: &[u8]) -> Option<TcpView> {
    if u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip0 = ETH_HEADER;
    let vihl = *frame.get(ip0)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*frame.get(ip0 + 2)?, *frame.get(ip0 + 3)?]));
    let flags_frag = u16::from_be_bytes([*frame.get(ip0 + 6)?, *frame.get(ip0 + 7)?]);
    // More-fragments set or a fragment offset: the TCP checksum covers the
    // reassembled datagram, not this frame.
    if flags_frag & 0x3fff != 0 || *frame.get(ip0 + 9)? != PROTO_TCP || total < ihl + 20 || frame.len() < ip0 + total {
        return None;
    }
    let tcp0 = ip0 + ihl;
    let doff = usize::from(frame[tcp0 + 12] >> 4) * 4;
    if doff < 20 || ihl + doff > total {
        return None;
    }
    Some(TcpView { ip: ip0..tcp0, segment: tcp0..ip0 + total, payload: tcp0 + doff..ip0 + total })
}

/// The Internet checksum's one's-complement sum of `data`, folded on.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IPv4 header checksum as it should be (the field itself taken as 0).
pub fn ipv4_checksum(frame: &[u8], v: &TcpView) -> u16 {
    let h = &frame[v.ip.clone()];
    fold(sum(sum(0, &h[..10]), &h[12..]))
}

/// The TCP checksum as it should be, over the pseudo-header and the segment
/// (the field itself taken as 0).
pub fn tcp_checksum(frame: &[u8], v: &TcpView) -> u16 {
    let ip = &frame[v.ip.clone()];
    let seg = &frame[v.segment.clone()];
    let mut acc = sum(0, &ip[12..20]); // source and destination addresses
    acc += u32::from(PROTO_TCP);
    acc += seg.len() as u32;
    acc = sum(acc, &seg[..16]);
    acc = sum(acc, &seg[18..]);
    fold(acc)
}

/// Both checksums in the frame are right.
pub fn checksums_ok(frame: &[u8], v: &TcpView) -> bool {
    let stored = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    stored(v.ip.start + 10) == ipv4_checksum(frame, v) && stored(v.segment.start + 16) == tcp_checksum(frame, v)
}

/// Rewrites both checksums to match the frame's contents.
pub fn fix_checksums(frame: &mut [u8], v: &TcpView) {
    let ip = ipv4_checksum(frame, v).to_be_bytes();
    frame[v.ip.start + 10..v.ip.start + 12].copy_from_slice(&ip);
    let tcp = tcp_checksum(frame, v).to_be_bytes();
    frame[v.segment.start + 16..v.segment.start + 18].copy_from_slice(&tcp);
}

/// Flips bit `bit` of the TCP payload (counted from the payload's first
/// byte, most significant bit first; taken modulo the payload's bits).
/// Returns the bit flipped, or `None` when there is no payload.
pub fn flip_payload_bit(frame: &mut [u8], v: &TcpView, bit: usize) -> Option<usize> {
    let bits = v.payload.len() * 8;
    if bits == 0 {
        return None;
    }
    let bit = bit % bits;
    frame[v.payload.start + bit / 8] ^= 0x80 >> (bit % 8);
    Some(bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data segment 169.254.0.1:40000 -> 169.254.0.2:7000, payload
    /// "hello", with its checksums filled in.
    fn sample() -> Vec<u8> {
        let mut f = vec![0x52, 0x54, 0, 0x56, 0x53, 2, 0x52, 0x54, 0, 0x56, 0x53, 1, 0x08, 0x00];
        let payload = b"hello";
        let total = 20 + 20 + payload.len();
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 169, 254, 0, 1, 169, 254, 0, 2]);
        f.extend_from_slice(&[0x9c, 0x40, 0x1b, 0x58, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f.extend_from_slice(&[0; 5]); // Ethernet padding is not part of the datagram
        let v = tcp_view(&f).expect("a TCP frame");
        fix_checksums(&mut f, &v);
        f
    }

    #[test]
    fn finds_payload_and_checksums() {
        let mut f = sample();
        let v = tcp_view(&f).expect("a TCP frame");
        assert_eq!(&f[v.payload.clone()], b"hello");
        assert!(checksums_ok(&f, &v));
        assert_eq!(flip_payload_bit(&mut f, &v, 7), Some(7));
        assert_eq!(&f[v.payload.clone()], b"iello");
        assert!(!checksums_ok(&f, &v));
        fix_checksums(&mut f, &v);
        assert!(checksums_ok(&f, &v));
    }

    #[test]
    fn ipv4_checksum_known_vector() {
        // The worked example of RFC 1071-style summing on Wikipedia's
        // "IPv4 header checksum" page: the checksum is 0xb861.
        let mut f = vec![0u8; ETH_HEADER];
        f[12] = 0x08;
        f.extend_from_slice(&[0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7]);
        let v = TcpView { ip: ETH_HEADER..ETH_HEADER + 20, segment: 0..0, payload: 0..0 };
        assert_eq!(ipv4_checksum(&f, &v), 0xb861);
    }

    #[test]
    fn rejects_other_frames() {
        let mut arp = sample();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(tcp_view(&arp), None);
        let mut frag = sample();
        frag[ETH_HEADER + 6] = 0x20; // more fragments
        assert_eq!(tcp_view(&frag), None);
        assert_eq!(tcp_view(&sample()[..40]), None);
    }
}
