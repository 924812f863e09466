//! A third host on the link emulator, played by the test process: neither
//! the active device nor a standby, a stranger on the same link. It runs
//! smoltcp's TCP (the hypervisor's own stack, on std) for connections that
//! go slowly or say the wrong things, writes raw frames for a SYN flood
//! from addresses nobody answers for, and reassembles a [`Recording`] of a
//! real session from a link tap to replay it.
//!
//! It takes a device index of the emulator that no QEMU has
//! (`multi::run_with_hosts`): it binds the port that device's QEMU would
//! and sends where that QEMU would.
use crate::link::{self, LinkHandle, Tapped};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

pub use smoltcp::socket::tcp::State as TcpState;

/// The hypervisor's MTU on the link (`hypervisor/src/net/nic.rs`).
const MTU: usize = 1514;
/// Each TCP socket's buffers: enough for a recording's replay to stream.
const TCP_BUFFER: usize = 64 << 10;
/// How often `run_for` polls the stack.
const POLL: Duration = Duration::from_millis(2);

/// The host's end of its emulator socket, as a smoltcp device: one
/// datagram a frame, like QEMU's `-netdev dgram`.
struct Wire {
    sock: UdpSocket,
    to: SocketAddr,
    buf: Vec<u8>,
}

struct Rx(Vec<u8>);

struct Tx<'a> {
    sock: &'a UdpSocket,
    to: SocketAddr,
}

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        // A frame the host socket refuses is lost, as on a real wire.
        let _ = self.sock.send_to(&frame, self.to);
        r
    }
}

impl phy::Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let n = self.sock.recv(&mut self.buf).ok()?;
        Some((Rx(self.buf[..n].to_vec()), Tx { sock: &self.sock, to: self.to }))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx { sock: &self.sock, to: self.to })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps
    }
}

pub struct ThirdHost {
    wire: Wire,
    iface: Interface,
    sockets: SocketSet<'static>,
    start: Instant,
    next_port: u16,
    /// Raw frames sent so far (`raw`).
    pub raw_frames: u64,
}

impl ThirdHost {
    /// Takes device `device` of the emulator with this MAC and address
    /// (/16, the devices' link-local net).
    pub fn join(link: &LinkHandle, device: usize, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<ThirdHost> {
        let (emulator, own) = link.ports_of(device).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such device on the link"))?;
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, own))?;
        sock.set_nonblocking(true)?;
        let mut wire = Wire { sock, to: SocketAddr::from((Ipv4Addr::LOCALHOST, emulator)), buf: vec![0u8; 65536] };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = u64::from(ip.to_bits()) ^ 0x7468_6972_6468_6f73;
        let start = Instant::now();
        let mut iface = Interface::new(config, &mut wire, smoltcp::time::Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            // An empty list with room for one address: cannot fail.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip), 16));
        });
        Ok(ThirdHost { wire, iface, sockets: SocketSet::new(Vec::new()), start, next_port: 40_000, raw_frames: 0 })
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_millis(self.start.elapsed().as_millis() as i64)
    }

    /// Moves frames both ways and runs TCP's timers once.
    pub fn poll(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
    }

    /// Keeps the stack running for `d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.poll();
            std::thread::sleep(POLL);
        }
    }

    /// Starts a TCP connection to `ip:port` from a fresh local port.
    pub fn connect(&mut self, ip: Ipv4Addr, port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]), tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]));
        s.set_nagle_enabled(false);
        let local = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(40_000);
        // A fresh socket, an unspecified-free remote and a nonzero port: cannot fail.
        s.connect(self.iface.context(), (IpAddress::Ipv4(ip), port), local).expect("connecting a fresh socket");
        self.sockets.add(s)
    }

    pub fn state(&self, h: SocketHandle) -> TcpState {
        self.sockets.get::<tcp::Socket>(h).state()
    }

    /// The connection's local port (what the standby logs it as).
    pub fn local_port(&self, h: SocketHandle) -> Option<u16> {
        self.sockets.get::<tcp::Socket>(h).local_endpoint().map(|e| e.port)
    }

    /// Queues what fits of `data`; how much.
    pub fn send(&mut self, h: SocketHandle, data: &[u8]) -> usize {
        self.sockets.get_mut::<tcp::Socket>(h).send_slice(data).unwrap_or(0)
    }

    /// Everything received so far.
    pub fn recv(&mut self, h: SocketHandle) -> Vec<u8> {
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
        while let Ok(n @ 1..) = s.recv_slice(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// Sends `data` whole on `h` as the window allows, for at most
    /// `limit`; how much went into the socket.
    pub fn send_all(&mut self, h: SocketHandle, data: &[u8], limit: Duration) -> usize {
        let end = Instant::now() + limit;
        let mut sent = 0;
        while sent < data.len() && Instant::now() < end && self.state(h) == TcpState::Established {
            sent += self.send(h, &data[sent..]);
            self.poll();
            std::thread::sleep(POLL);
        }
        sent
    }

    /// Runs the stack until `h` is established (true) or closed, or
    /// `limit` passes.
    pub fn wait_established(&mut self, h: SocketHandle, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            self.poll();
            match self.state(h) {
                TcpState::Established => return true,
                TcpState::Closed => return false,
                _ => std::thread::sleep(POLL),
            }
        }
        false
    }

    /// Puts one Ethernet frame on the wire as it is.
    pub fn raw(&mut self, frame: &[u8]) -> io::Result<()> {
        self.wire.sock.send_to(frame, self.wire.to)?;
        self.raw_frames += 1;
        Ok(())
    }
}

/// A TCP endpoint: MAC, IPv4 address, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// A bare TCP SYN from `src` to `dst` with initial sequence number `seq`,
/// checksums filled in.
pub fn syn_frame(src: Endpoint, dst: Endpoint, seq: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&dst.mac);
    f.extend_from_slice(&src.mac);
    f.extend_from_slice(&[0x08, 0x00]);
    // IPv4: version 4, IHL 5, total 40 bytes, DF, TTL 64, TCP.
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.ip.octets());
    f.extend_from_slice(&dst.ip.octets());
    f.extend_from_slice(&src.port.to_be_bytes());
    f.extend_from_slice(&dst.port.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    // No ACK number; data offset 5 words; SYN; window 64240; checksum;
    // urgent pointer.
    f.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    // A view of the frame just built: an unfragmented IPv4/TCP frame.
    let v = link::tcp_view(&f).expect("a SYN frame parses");
    link::fix_checksums(&mut f, &v);
    f
}

/// The byte stream one TCP connection carried in one direction, rebuilt
/// from a tap's frames: the first connection to port `to_port` that
/// carries payload, its bytes in sequence order up to `limit`.
pub struct Recording {
    tap: Option<Receiver<Tapped>>,
    to_port: u16,
    limit: usize,
    /// The connection recorded: its source port and initial sequence number.
    conn: Option<(u16, u32)>,
    stream: Vec<u8>,
    /// Segments that arrived ahead of a gap, by stream offset.
    ahead: BTreeMap<usize, Vec<u8>>,
    /// The connection ended (FIN or RST) or the limit was reached.
    pub done: bool,
}

const TCP_SYN: u8 = 0x02;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

impl Recording {
    pub fn new(tap: Receiver<Tapped>, to_port: u16, limit: usize) -> Recording {
        Recording { tap: Some(tap), to_port, limit, conn: None, stream: Vec::new(), ahead: BTreeMap::new(), done: false }
    }

    /// Takes what the tap delivered since the last call. Once done, the
    /// tap is dropped (the emulator stops copying).
    pub fn pump(&mut self) {
        let frames: Vec<Tapped> = match &self.tap {
            Some(t) => t.try_iter().collect(),
            None => return,
        };
        for f in frames {
            self.take(&f.data);
            if self.done {
                self.tap = None;
                return;
            }
        }
    }

    fn take(&mut self, frame: &[u8]) {
        let Some(v) = link::tcp_view(frame) else { return };
        let seg = &frame[v.segment.clone()];
        let (sport, dport) = (u16::from_be_bytes([seg[0], seg[1]]), u16::from_be_bytes([seg[2], seg[3]]));
        let seq = u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]]);
        let flags = seg[13];
        if dport != self.to_port {
            return;
        }
        if flags & TCP_SYN != 0 {
            // A new connection; the one before carried nothing.
            if self.stream.is_empty() && self.ahead.is_empty() {
                self.conn = Some((sport, seq));
            }
            return;
        }
        let Some((_, isn)) = self.conn.filter(|c| c.0 == sport) else { return };
        let at = seq.wrapping_sub(isn).wrapping_sub(1) as usize;
        let payload = &frame[v.payload.clone()];
        if !payload.is_empty() && at < self.limit {
            self.ahead.entry(at).or_insert_with(|| payload.to_vec());
            // Fill from what is in order now (retransmissions overlap).
            while let Some((&off, _)) = self.ahead.first_key_value() {
                if off > self.stream.len() {
                    break;
                }
                let (off, bytes) = self.ahead.pop_first().expect("a first entry exists");
                let skip = self.stream.len() - off;
                if skip < bytes.len() {
                    self.stream.extend_from_slice(&bytes[skip..]);
                }
            }
            self.stream.truncate(self.limit);
        }
        if flags & (TCP_FIN | TCP_RST) != 0 || self.stream.len() >= self.limit {
            self.done = true;
        }
    }

    /// Stops recording (the emulator stops copying).
    pub fn stop(&mut self) {
        self.tap = None;
    }

    /// The bytes recorded in order so far.
    pub fn stream(&self) -> &[u8] {
        &self.stream
    }
}

/// The first frame (length, kind, body) of a VMsync stream: the Hello of
/// an active device's session (`docs/protocol.md`, "Framing").
pub fn first_frame(stream: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(stream.get(..4)?.try_into().ok()?) as usize;
    stream.get(..5 + len)
}

/// Bytes from a seeded generator (splitmix64): garbage that repeats from
/// run to run.
pub fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_frame(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let src = Endpoint { mac: [2, 0, 0, 0, 0, 1], ip: Ipv4Addr::new(169, 254, 0, 1), port: sport };
        let dst = Endpoint { mac: [2, 0, 0, 0, 0, 2], ip: Ipv4Addr::new(169, 254, 0, 2), port: 7000 };
        let mut f = syn_frame(src, dst, seq);
        f[47] = flags;
        let total = (40 + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(payload);
        let v = link::tcp_view(&f).unwrap();
        link::fix_checksums(&mut f, &v);
        f
    }

    #[test]
    fn a_syn_frame_has_valid_checksums() {
        let src = Endpoint { mac: [2, 0, 0, 0, 0, 1], ip: Ipv4Addr::new(169, 254, 200, 1), port: 1234 };
        let dst = Endpoint { mac: [2, 0, 0, 0, 0, 2], ip: Ipv4Addr::new(169, 254, 0, 2), port: 7000 };
        let f = syn_frame(src, dst, 99);
        let v = link::tcp_view(&f).unwrap();
        assert!(link::checksums_ok(&f, &v));
        assert!(v.payload.is_empty());
        assert_eq!(f[47], TCP_SYN);
    }

    /// Out of order, retransmitted and other connections' segments: the
    /// stream comes out in order, of the first connection with payload.
    #[test]
    fn a_recording_rebuilds_the_first_connections_stream() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut r = Recording::new(rx, 7000, 10);
        let send = |f: Vec<u8>| tx.send(Tapped { from: 0, to: 1, data: f }).unwrap();
        send(data_frame(50_000, 7, TCP_SYN, b"")); // refused, carried nothing
        send(data_frame(50_001, 100, TCP_SYN, b""));
        send(data_frame(50_001, 101, 0x18, b"abc"));
        send(data_frame(50_001, 107, 0x18, b"ghi"));
        send(data_frame(50_002, 101, 0x18, b"zzz")); // another connection
        send(data_frame(50_001, 101, 0x18, b"abc")); // retransmitted
        send(data_frame(50_001, 104, 0x18, b"def"));
        r.pump();
        assert_eq!(r.stream(), b"abcdefghi");
        assert!(!r.done);
        send(data_frame(50_001, 110, 0x18, b"jkl"));
        r.pump();
        assert_eq!(r.stream(), b"abcdefghij", "cut at the limit");
        assert!(r.done);
    }

    #[test]
    fn the_first_frame_is_cut_at_its_length() {
        let s = [3u8, 0, 0, 0, 1, 9, 9, 9, 7, 7];
        assert_eq!(first_frame(&s), Some(&s[..8]));
        assert_eq!(first_frame(&s[..6]), None);
    }
}
