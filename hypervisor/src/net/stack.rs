//! The hypervisor's TCP/IP stack: one smoltcp interface on the sync NIC,
//! a static IPv4 address, and a small non-blocking socket API for sync
//! sessions. Nothing here waits: `poll` moves what can move and returns;
//! `send` and `recv` copy what fits.
//!
//! Generic over the device so the whole API runs on the host against an
//! in-memory link (see the tests); on the board the device is `Nic`.
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

pub use smoltcp::socket::tcp::State as TcpState;

/// Each TCP socket's receive and send buffers: a 256 KiB window keeps a
/// fast link busy across the 5 ms between polls of a running guest.
pub const TCP_BUFFER: usize = 256 << 10;
/// Local ports of outgoing connections (IANA's dynamic range).
const EPHEMERAL: core::ops::RangeInclusive<u16> = 49152..=65535;

/// A device the stack can drive: smoltcp's `phy::Device` plus a hook run
/// at the start of every poll.
pub trait NetDevice: phy::Device {
    fn mac(&self) -> [u8; 6];
    /// Bookkeeping before smoltcp polls (reap completions, bound the work).
    fn start_poll(&mut self) {}
}

impl NetDevice for super::nic::Nic {
    fn mac(&self) -> [u8; 6] {
        super::nic::Nic::mac(self)
    }

    fn start_poll(&mut self) {
        super::nic::Nic::start_poll(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    /// The NIC's MAC is multicast or broadcast (smoltcp needs unicast).
    BadMac,
    /// The prefix length is not 1..=32.
    BadPrefix,
    /// `listen` refused (port 0, or the socket is not closed).
    Listen,
    /// `connect` refused (unspecified address or port).
    Connect,
}

/// A socket of this stack. Stale handles (after `release`) are refused,
/// even when smoltcp reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    slot: SocketHandle,
    generation: u32,
}

pub struct Stack<D: NetDevice> {
    iface: Interface,
    dev: D,
    sockets: SocketSet<'static>,
    live: Vec<Handle>,
    next_generation: u32,
    next_port: u16,
    ip: Ipv4Addr,
}

fn instant(ms: u64) -> Instant {
    Instant::from_millis(ms.min(i64::MAX as u64) as i64)
}

impl<D: NetDevice> Stack<D> {
    /// The stack on `dev` with `ip/prefix`. `seed` varies per boot (initial
    /// sequence numbers, local ports).
    pub fn new(mut dev: D, ip: Ipv4Addr, prefix: u8, seed: u64, now_ms: u64) -> Result<Self, NetError> {
        let mac = EthernetAddress(dev.mac());
        if !mac.is_unicast() {
            return Err(NetError::BadMac);
        }
        if !(1..=32).contains(&prefix) {
            return Err(NetError::BadPrefix);
        }
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut dev, instant(now_ms));
        iface.update_ip_addrs(|addrs| {
            // The list is empty and holds at least one address: cannot fail.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), prefix));
        });
        let span = (*EPHEMERAL.end() - *EPHEMERAL.start()) as u64 + 1;
        Ok(Stack {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            live: Vec::new(),
            next_generation: 1,
            next_port: *EPHEMERAL.start() + (seed % span) as u16,
            ip,
        })
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn mac(&self) -> [u8; 6] {
        self.dev.mac()
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Moves frames both ways and runs TCP's timers; never waits. Returns
    /// whether any socket changed state or received data worth a look.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        self.dev.start_poll();
        let r = self.iface.poll(instant(now_ms), &mut self.dev, &mut self.sockets);
        r == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// How long until `poll` has timer work (retransmits, delayed ACKs):
    /// a caller that sleeps between polls wakes no later than this. None:
    /// only new frames or new data to send need a poll.
    pub fn poll_delay_ms(&mut self, now_ms: u64) -> Option<u64> {
        self.iface.poll_delay(instant(now_ms), &self.sockets).map(|d| d.total_millis())
    }

    fn new_socket(&mut self) -> Handle {
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]), tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]));
        // Sync records are written whole; no coalescing delay.
        s.set_nagle_enabled(false);
        // Without congestion control a full window goes out at once and
        // overflows a mobile link's queue; the retransmission timeouts that
        // follow collapse throughput (seen on the emulated wifi link).
        s.set_congestion_control(tcp::CongestionControl::Reno);
        let h = Handle { slot: self.sockets.add(s), generation: self.next_generation };
        self.next_generation = self.next_generation.wrapping_add(1);
        self.live.push(h);
        h
    }

    fn tcp(&mut self, h: Handle) -> Option<&mut tcp::Socket<'static>> {
        // `live` only holds handles still in the set: `get_mut` cannot panic.
        self.live.contains(&h).then(|| self.sockets.get_mut::<tcp::Socket>(h.slot))
    }

    fn tcp_ref(&self, h: Handle) -> Option<&tcp::Socket<'static>> {
        self.live.contains(&h).then(|| self.sockets.get::<tcp::Socket>(h.slot))
    }

    /// A socket waiting for one connection on `port`; it becomes that
    /// connection (listen again, on a new socket, for the next one).
    pub fn tcp_listen(&mut self, port: u16) -> Result<Handle, NetError> {
        let h = self.new_socket();
        let ok = self.tcp(h).is_some_and(|s| s.listen(port).is_ok());
        if !ok {
            self.release(h);
            return Err(NetError::Listen);
        }
        Ok(h)
    }

    /// Starts connecting to `remote:port` from a fresh local port; the
    /// handshake runs in later polls (`is_established`, or `state` going to
    /// `Closed` when refused).
    pub fn tcp_connect(&mut self, remote: Ipv4Addr, port: u16) -> Result<Handle, NetError> {
        let local = self.next_port;
        self.next_port = if local == *EPHEMERAL.end() { *EPHEMERAL.start() } else { local + 1 };
        let h = self.new_socket();
        let ok = match self.live.contains(&h) {
            true => self.sockets.get_mut::<tcp::Socket>(h.slot).connect(self.iface.context(), (IpAddress::Ipv4(remote), port), local).is_ok(),
            false => false,
        };
        if !ok {
            self.release(h);
            return Err(NetError::Connect);
        }
        Ok(h)
    }

    /// Queues what fits of `data` for sending; 0 when the buffer is full or
    /// the connection cannot send (see `state`).
    pub fn send(&mut self, h: Handle, data: &[u8]) -> usize {
        self.tcp(h).and_then(|s| s.send_slice(data).ok()).unwrap_or(0)
    }

    /// Appends up to `max` received bytes to `out`; returns how many (fewer
    /// when `out` cannot grow: allocation failure only delays the bytes).
    pub fn recv(&mut self, h: Handle, out: &mut Vec<u8>, max: usize) -> usize {
        let Some(s) = self.tcp(h) else { return 0 };
        let mut got = 0;
        // The receive buffer is a ring: at most two contiguous pieces.
        for _ in 0..2 {
            let want = max - got;
            if want == 0 {
                break;
            }
            let n = s
                .recv(|buf| {
                    let n = buf.len().min(want);
                    // No memory for the bytes: they stay in the socket (the
                    // peer is slowed down by its window), nothing is lost.
                    if out.try_reserve(n).is_err() {
                        return (0, 0);
                    }
                    out.extend_from_slice(&buf[..n]);
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    }

    pub fn state(&self, h: Handle) -> TcpState {
        self.tcp_ref(h).map(|s| s.state()).unwrap_or(TcpState::Closed)
    }

    pub fn is_established(&self, h: Handle) -> bool {
        self.state(h) == TcpState::Established
    }

    /// Whether the peer may still send (false once its FIN came and the
    /// received data has been read).
    pub fn may_recv(&self, h: Handle) -> bool {
        self.tcp_ref(h).is_some_and(|s| s.may_recv() || s.recv_queue() > 0)
    }

    /// Bytes queued but not yet acknowledged by the peer.
    pub fn send_queue(&self, h: Handle) -> usize {
        self.tcp_ref(h).map(|s| s.send_queue()).unwrap_or(0)
    }

    /// The peer's address and port, once connected.
    pub fn remote(&self, h: Handle) -> Option<(Ipv4Addr, u16)> {
        let ep = self.tcp_ref(h)?.remote_endpoint()?;
        match ep.addr {
            IpAddress::Ipv4(a) => Some((a, ep.port)),
        }
    }

    /// Graceful close: sends FIN after the queued data.
    pub fn close(&mut self, h: Handle) {
        if let Some(s) = self.tcp(h) {
            s.close();
        }
    }

    /// Immediate close: RST on the next poll, queued data dropped.
    pub fn abort(&mut self, h: Handle) {
        if let Some(s) = self.tcp(h) {
            s.abort();
        }
    }

    /// Frees the socket and its buffers; the handle is dead afterwards. An
    /// open connection is dropped silently (abort first to tell the peer).
    pub fn release(&mut self, h: Handle) {
        if let Some(i) = self.live.iter().position(|&l| l == h) {
            self.live.swap_remove(i);
            self.sockets.remove(h.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_link::{pair, Link};
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

    fn two() -> (Stack<Link>, Stack<Link>) {
        let (la, lb) = pair();
        (Stack::new(la, A, 16, 1, 0).unwrap(), Stack::new(lb, B, 16, 2, 0).unwrap())
    }

    /// Polls both sides with a clock advancing 1 ms per round until `done`.
    fn run(a: &mut Stack<Link>, b: &mut Stack<Link>, now: &mut u64, rounds: usize, mut done: impl FnMut(&mut Stack<Link>, &mut Stack<Link>) -> bool) -> bool {
        for _ in 0..rounds {
            a.poll(*now);
            b.poll(*now);
            if done(a, b) {
                return true;
            }
            *now += 1;
        }
        false
    }

    #[test]
    fn connect_send_recv_close() {
        let (mut a, mut b) = two();
        let mut now = 0;
        let srv = b.tcp_listen(7000).unwrap();
        let cli = a.tcp_connect(B, 7000).unwrap();
        assert_eq!(a.state(cli), TcpState::SynSent);
        assert!(run(&mut a, &mut b, &mut now, 100, |a, b| a.is_established(cli) && b.is_established(srv)));
        assert_eq!(b.remote(srv).map(|r| r.0), Some(A));

        // More than both buffers: partial writes, then the rest as room frees.
        let data: Vec<u8> = (0..3 * TCP_BUFFER).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut sent = a.send(cli, &data);
        assert!(sent > 0 && sent <= TCP_BUFFER, "partial write, got {sent}");
        let mut got = Vec::new();
        assert!(run(&mut a, &mut b, &mut now, 20_000, |a, b| {
            sent += a.send(cli, &data[sent..]);
            b.recv(srv, &mut got, 10_000);
            got.len() == data.len()
        }));
        assert!(got == data, "the bytes arrive in order and intact");

        a.close(cli);
        assert!(run(&mut a, &mut b, &mut now, 100, |_, b| !b.may_recv(srv)));
        assert_eq!(b.state(srv), TcpState::CloseWait);
        b.close(srv);
        assert!(run(&mut a, &mut b, &mut now, 100, |a, b| b.state(srv) == TcpState::Closed && a.state(cli) == TcpState::TimeWait));
    }

    #[test]
    fn recv_respects_max_and_wraps_the_ring() {
        let (mut a, mut b) = two();
        let mut now = 0;
        let srv = b.tcp_listen(7001).unwrap();
        let cli = a.tcp_connect(B, 7001).unwrap();
        assert!(run(&mut a, &mut b, &mut now, 100, |a, b| a.is_established(cli) && b.is_established(srv)));
        let mut expect = Vec::new();
        let mut got = Vec::new();
        for round in 0..6u8 {
            let chunk = vec![round; TCP_BUFFER / 2 + 1000];
            assert_eq!(a.send(cli, &chunk), chunk.len());
            expect.extend_from_slice(&chunk);
            assert!(run(&mut a, &mut b, &mut now, 5_000, |a, _| a.send_queue(cli) == 0));
            let n = b.recv(srv, &mut got, 100);
            assert_eq!(n, 100);
            b.recv(srv, &mut got, usize::MAX);
        }
        assert!(got == expect);
    }

    #[test]
    fn refused_connect_goes_closed() {
        let (mut a, mut b) = two();
        let mut now = 0;
        let cli = a.tcp_connect(B, 9).unwrap();
        assert!(run(&mut a, &mut b, &mut now, 3000, |a, _| a.state(cli) == TcpState::Closed));
        assert_eq!(a.send(cli, b"x"), 0);
    }

    #[test]
    fn stale_and_bad_handles_are_harmless() {
        let (mut a, _b) = two();
        let h = a.tcp_listen(7002).unwrap();
        a.release(h);
        let h2 = a.tcp_listen(7003).unwrap();
        assert_ne!(h, h2);
        assert_eq!(a.state(h), TcpState::Closed, "stale handle");
        assert_eq!(a.send(h, b"x"), 0);
        assert_eq!(a.recv(h, &mut Vec::new(), 10), 0);
        a.close(h);
        a.abort(h);
        a.release(h);
        assert_eq!(a.state(h2), TcpState::Listen, "the live socket is untouched");
        assert_eq!(a.tcp_listen(0), Err(NetError::Listen));
        assert_eq!(a.tcp_connect(Ipv4Addr::UNSPECIFIED, 1), Err(NetError::Connect));
    }

    #[test]
    fn bad_setup_is_an_error() {
        let (la, lb) = pair();
        let mut la = la;
        la.mac = [0x01, 0, 0x5e, 0, 0, 1];
        assert_eq!(Stack::new(la, A, 16, 1, 0).err(), Some(NetError::BadMac));
        assert_eq!(Stack::new(lb, A, 33, 1, 0).err(), Some(NetError::BadPrefix));
    }

    /// Input from the network never panics the stack: random frames,
    /// truncations and bit flips of real traffic, at every layer.
    #[test]
    fn garbage_frames_never_panic() {
        let (mut a, mut b) = two();
        let mut now = 0;
        let srv = b.tcp_listen(7004).unwrap();
        let cli = a.tcp_connect(B, 7004).unwrap();
        assert!(run(&mut a, &mut b, &mut now, 100, |a, b| a.is_established(cli) && b.is_established(srv)));
        // Capture real frames to mutate.
        a.send(cli, &[0x55; 4000]);
        a.poll(now);
        let real: Vec<Vec<u8>> = a.device().peer_queue_snapshot();
        assert!(!real.is_empty());
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for i in 0..20_000u64 {
            let mut f = match i % 4 {
                0 => (0..(next() % 1600) as usize).map(|_| next() as u8).collect(),
                1 => {
                    let r = &real[(next() as usize) % real.len()];
                    r[..(next() as usize) % (r.len() + 1)].to_vec()
                }
                _ => {
                    let mut r = real[(next() as usize) % real.len()].clone();
                    for _ in 0..1 + next() % 4 {
                        let at = (next() as usize) % r.len();
                        r[at] ^= 1 << (next() % 8);
                    }
                    r
                }
            };
            if i % 3 == 0 && f.len() >= 6 {
                // Aim at b's MAC so the frame goes past the Ethernet filter.
                f[..6].copy_from_slice(&b.mac());
            }
            b.device_mut().inject(f);
            if i % 16 == 0 {
                b.poll(now);
                now += 1;
            }
        }
        b.poll(now);
        // The connection survived or was reset cleanly; the stack still works.
        let srv2 = b.tcp_listen(7005).unwrap();
        let cli2 = a.tcp_connect(B, 7005).unwrap();
        assert!(run(&mut a, &mut b, &mut now, 3000, |a, b| a.is_established(cli2) && b.is_established(srv2)));
    }
}
