//! `net_test`: a TCP throughput check between two devices, run by the
//! hypervisor instead of the guest (config `net_test=server` on one device,
//! `net_test=client:<server ip>` on the other, `net_test_mib=N`). The client
//! sends N MiB of a position-dependent pattern; the server counts and
//! checks it until the client's FIN. Both log their figures and the boot
//! code powers off:
//!
//! ```text
//! vmsync: net-test received 8388608 bytes in 1234 ms (54.3 Mbit/s), pattern ok
//! vmsync: net-test sent 8388608 bytes in 1230 ms (54.5 Mbit/s)
//! ```
//!
//! The state machine is plain (`step` with a time in, no waiting), so it
//! runs on the host over an in-memory link too.
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use super::stack::{Handle, NetDevice, Stack, TcpState};
use crate::config::NetTestRole;

/// The server's port (iperf's, for familiarity).
pub const PORT: u16 = 5201;
/// How long the client keeps retrying while the server is not up yet.
const CONNECT_DEADLINE_MS: u64 = 60_000;
const RETRY_MS: u64 = 200;
/// Longest wait for the client's connection on the server.
const ACCEPT_DEADLINE_MS: u64 = 120_000;
/// A transfer that makes no progress this long has failed.
const STALL_MS: u64 = 30_000;
/// Time for FIN and its ACK to cross before powering off.
const LINGER_MS: u64 = 3_000;
const CHUNK: usize = 64 << 10;

/// The pattern: 8-byte little-endian words, word `w` = `w * K`, so any lost,
/// repeated or reordered byte range shows.
const K: u64 = 0x9e37_79b9_7f4a_7c15;

fn word(w: u64) -> u64 {
    w.wrapping_mul(K)
}

pub fn pattern_byte(offset: u64) -> u8 {
    (word(offset / 8) >> (8 * (offset % 8))) as u8
}

/// Fills `buf` with the pattern from stream offset `offset`.
pub fn fill(offset: u64, buf: &mut [u8]) {
    let head = ((8 - offset % 8) % 8).min(buf.len() as u64) as usize;
    let (h, rest) = buf.split_at_mut(head);
    for (i, b) in h.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
    let mut w = (offset + head as u64) / 8;
    let mut words = rest.chunks_exact_mut(8);
    for c in &mut words {
        c.copy_from_slice(&word(w).to_le_bytes());
        w += 1;
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b = (word(w) >> (8 * i)) as u8;
    }
}

/// The index of the first byte of `buf` that differs from the pattern at
/// stream offset `offset`.
pub fn check(offset: u64, buf: &[u8]) -> Option<usize> {
    let head = ((8 - offset % 8) % 8).min(buf.len() as u64) as usize;
    if let Some(i) = (0..head).find(|&i| buf[i] != pattern_byte(offset + i as u64)) {
        return Some(i);
    }
    let words = buf[head..].chunks_exact(8);
    let tail_at = buf.len() - words.remainder().len();
    for (w, (n, c)) in ((offset + head as u64) / 8..).zip(words.enumerate()) {
        // `chunks_exact(8)` yields 8-byte slices: the conversion cannot fail.
        if u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) != word(w) {
            let at = head + n * 8;
            return (at..at + 8).find(|&i| buf[i] != pattern_byte(offset + i as u64));
        }
    }
    (tail_at..buf.len()).find(|&i| buf[i] != pattern_byte(offset + i as u64))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub bytes: u64,
    pub ms: u64,
    /// Stream offset of the first byte that broke the pattern (server).
    pub first_bad: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetTestError {
    /// The client found no server within the deadline.
    NoServer,
    /// No client connected to the server within the deadline.
    NoClient,
    /// The connection was reset or closed before the transfer ended.
    Lost { bytes: u64 },
    /// No progress for `STALL_MS`.
    Stalled { bytes: u64 },
    /// The stack refused to open a socket.
    Socket,
}

enum Phase {
    Connecting { h: Handle, retry_at: u64 },
    Listening { h: Handle },
    Sending { h: Handle, t0: u64 },
    Receiving { h: Handle, t0: u64 },
    Closing { h: Handle, until: u64, done: Outcome },
}

pub struct NetTest {
    role: NetTestRole,
    total: u64,
    phase: Option<Phase>,
    /// Start of the phase (deadlines), last progress (stalls).
    since: u64,
    progress_at: u64,
    /// Bytes queued (client) or received (server).
    moved: u64,
    first_bad: Option<u64>,
    /// The client's staged pattern and its stream offset; the server's
    /// receive buffer.
    buf: Vec<u8>,
    buf_at: u64,
}

impl NetTest {
    pub fn new(role: NetTestRole, total: u64, now_ms: u64) -> Self {
        NetTest { role, total, phase: None, since: now_ms, progress_at: now_ms, moved: 0, first_bad: None, buf: vec![0; CHUNK], buf_at: u64::MAX }
    }

    /// Advances the test after a poll of `net`; Some when it has ended.
    pub fn step<D: NetDevice>(&mut self, net: &mut Stack<D>, now: u64) -> Option<Result<Outcome, NetTestError>> {
        let phase = match self.phase.take() {
            Some(p) => p,
            None => {
                self.since = now;
                match self.open(net, now) {
                    Ok(p) => p,
                    Err(e) => return Some(Err(e)),
                }
            }
        };
        match self.advance(net, now, phase) {
            Ok(next) => {
                self.phase = Some(next);
                None
            }
            Err(end) => Some(end),
        }
    }

    fn open<D: NetDevice>(&mut self, net: &mut Stack<D>, now: u64) -> Result<Phase, NetTestError> {
        match self.role {
            NetTestRole::Server => Ok(Phase::Listening { h: net.tcp_listen(PORT).map_err(|_| NetTestError::Socket)? }),
            NetTestRole::Client { server } => Ok(Phase::Connecting { h: connect(net, server)?, retry_at: now + RETRY_MS }),
        }
    }

    /// Ok(phase): go on; Err(result): finished.
    #[allow(clippy::type_complexity)]
    fn advance<D: NetDevice>(&mut self, net: &mut Stack<D>, now: u64, phase: Phase) -> Result<Phase, Result<Outcome, NetTestError>> {
        let lost = |moved| Err(Err(NetTestError::Lost { bytes: moved }));
        let stalled = |t: &Self| now.saturating_sub(t.progress_at) > STALL_MS;
        match phase {
            Phase::Connecting { h, retry_at } => {
                let server = match self.role {
                    NetTestRole::Client { server } => server,
                    NetTestRole::Server => return Err(Err(NetTestError::Socket)),
                };
                match net.state(h) {
                    TcpState::Established => {
                        self.progress_at = now;
                        Ok(Phase::Sending { h, t0: now })
                    }
                    _ if now.saturating_sub(self.since) > CONNECT_DEADLINE_MS => Err(Err(NetTestError::NoServer)),
                    // Refused (server not listening yet): try again shortly.
                    TcpState::Closed if now >= retry_at => {
                        net.release(h);
                        Ok(Phase::Connecting { h: connect(net, server).map_err(Err)?, retry_at: now + RETRY_MS })
                    }
                    _ => Ok(Phase::Connecting { h, retry_at }),
                }
            }
            Phase::Listening { h } => match net.state(h) {
                TcpState::Listen | TcpState::SynReceived if now.saturating_sub(self.since) > ACCEPT_DEADLINE_MS => Err(Err(NetTestError::NoClient)),
                TcpState::Listen | TcpState::SynReceived => Ok(Phase::Listening { h }),
                TcpState::Closed => lost(0),
                _ => {
                    self.progress_at = now;
                    Ok(Phase::Receiving { h, t0: now })
                }
            },
            Phase::Sending { h, t0 } => {
                if !matches!(net.state(h), TcpState::Established | TcpState::CloseWait) {
                    return lost(self.moved);
                }
                while self.moved < self.total {
                    let at = self.moved;
                    if at < self.buf_at || at >= self.buf_at.saturating_add(CHUNK as u64) {
                        self.buf_at = at;
                        fill(at, &mut self.buf);
                    }
                    let from = (at - self.buf_at) as usize;
                    let to = CHUNK.min(from + (self.total - at) as usize);
                    let n = net.send(h, &self.buf[from..to]);
                    if n == 0 {
                        break;
                    }
                    self.moved += n as u64;
                    self.progress_at = now;
                }
                if self.moved == self.total && net.send_queue(h) == 0 {
                    net.close(h);
                    let done = Outcome { bytes: self.total, ms: now.saturating_sub(t0), first_bad: None };
                    return Ok(Phase::Closing { h, until: now + LINGER_MS, done });
                }
                if stalled(self) {
                    return Err(Err(NetTestError::Stalled { bytes: self.moved }));
                }
                Ok(Phase::Sending { h, t0 })
            }
            Phase::Receiving { h, t0 } => {
                loop {
                    self.buf.clear();
                    let n = net.recv(h, &mut self.buf, CHUNK);
                    if n == 0 {
                        break;
                    }
                    if self.first_bad.is_none() {
                        self.first_bad = check(self.moved, &self.buf).map(|i| self.moved + i as u64);
                    }
                    self.moved += n as u64;
                    self.progress_at = now;
                }
                if net.state(h) == TcpState::Closed {
                    return lost(self.moved);
                }
                if !net.may_recv(h) {
                    // The client's FIN: everything has arrived.
                    net.close(h);
                    let done = Outcome { bytes: self.moved, ms: now.saturating_sub(t0), first_bad: self.first_bad };
                    return Ok(Phase::Closing { h, until: now + LINGER_MS, done });
                }
                if stalled(self) {
                    return Err(Err(NetTestError::Stalled { bytes: self.moved }));
                }
                Ok(Phase::Receiving { h, t0 })
            }
            Phase::Closing { h, until, done } => {
                // The client waits for its FIN to be acknowledged, the server
                // for the last ACK of its own FIN, or the linger time.
                let settled = matches!(net.state(h), TcpState::FinWait2 | TcpState::TimeWait | TcpState::Closed);
                if settled || now >= until {
                    net.release(h);
                    return Err(Ok(done));
                }
                Ok(Phase::Closing { h, until, done })
            }
        }
    }
}

fn connect<D: NetDevice>(net: &mut Stack<D>, server: Ipv4Addr) -> Result<Handle, NetTestError> {
    net.tcp_connect(server, PORT).map_err(|_| NetTestError::Socket)
}

/// Runs the test to its end: poll, step, repeat (no guest runs meanwhile).
pub fn run<D: NetDevice>(net: &mut Stack<D>, role: NetTestRole, total: u64, mut clock_ms: impl FnMut() -> u64) -> Result<Outcome, NetTestError> {
    let mut t = NetTest::new(role, total, clock_ms());
    loop {
        let now = clock_ms();
        net.poll(now);
        if let Some(r) = t.step(net, now) {
            return r;
        }
    }
}

/// Throughput as "12.3" (Mbit/s, one decimal) without floating point.
pub fn mbit_per_s(bytes: u64, ms: u64) -> (u64, u64) {
    // bits per ms are kbit/s; tenths of Mbit/s = bits * 10 / (ms * 1000).
    let tenths = (bytes as u128 * 8 * 10 / (ms.max(1) as u128 * 1000)) as u64;
    (tenths / 10, tenths % 10)
}

/// The log line of a finished test.
pub fn log_outcome(role: NetTestRole, r: &Result<Outcome, NetTestError>) {
    match (role, r) {
        (NetTestRole::Server, Ok(o)) => {
            let (m, t) = mbit_per_s(o.bytes, o.ms);
            match o.first_bad {
                None => log::info!("net-test received {} bytes in {} ms ({m}.{t} Mbit/s), pattern ok", o.bytes, o.ms),
                Some(at) => log::info!("net-test received {} bytes in {} ms ({m}.{t} Mbit/s), pattern mismatch at offset {at}", o.bytes, o.ms),
            }
        }
        (NetTestRole::Client { .. }, Ok(o)) => {
            let (m, t) = mbit_per_s(o.bytes, o.ms);
            log::info!("net-test sent {} bytes in {} ms ({m}.{t} Mbit/s)", o.bytes, o.ms);
        }
        (_, Err(e)) => log::error!("net-test failed: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_link::pair;
    use super::*;

    #[test]
    fn pattern_fill_and_check_agree_at_any_offset() {
        for off in [0u64, 1, 7, 8, 9, 4095, 1 << 33] {
            for len in [0usize, 1, 5, 8, 13, 100] {
                let mut b = vec![0u8; len];
                fill(off, &mut b);
                assert!(b.iter().enumerate().all(|(i, &x)| x == pattern_byte(off + i as u64)));
                assert_eq!(check(off, &b), None);
                if len > 0 {
                    b[len - 1] ^= 0x40;
                    assert_eq!(check(off, &b), Some(len - 1));
                }
            }
        }
    }

    #[test]
    fn pattern_catches_shifts() {
        let mut b = vec![0u8; 64];
        fill(1001, &mut b);
        assert!(check(1000, &b).is_some());
        assert!(check(1002, &b).is_some());
        assert_eq!(check(1001, &b), None);
    }

    #[test]
    fn mbit_figure() {
        assert_eq!(mbit_per_s(8 << 20, 1000), (67, 1));
        assert_eq!(mbit_per_s(1000, 0), (8, 0), "under a millisecond counts as one");
    }

    #[test]
    fn client_and_server_move_and_check_the_bytes() {
        let (la, lb) = pair();
        let server_ip = Ipv4Addr::new(169, 254, 0, 1);
        let mut s = Stack::new(la, server_ip, 16, 1, 0).unwrap();
        let mut c = Stack::new(lb, Ipv4Addr::new(169, 254, 0, 2), 16, 2, 0).unwrap();
        let total = 3 << 20;
        // The client starts first: refused connections are retried.
        let mut tc = NetTest::new(NetTestRole::Client { server: server_ip }, total, 0);
        let mut ts = NetTest::new(NetTestRole::Server, total, 0);
        let (mut rc, mut rs) = (None, None);
        let mut now = 0;
        for _ in 0..20 {
            c.poll(now);
            s.poll(now);
            tc.step(&mut c, now);
            now += 1;
        }
        while (rc.is_none() || rs.is_none()) && now < 200_000 {
            c.poll(now);
            s.poll(now);
            if rc.is_none() {
                rc = tc.step(&mut c, now);
            }
            if rs.is_none() {
                rs = ts.step(&mut s, now);
            }
            now += 1;
        }
        let rs = rs.expect("server finished").expect("server ok");
        let rc = rc.expect("client finished").expect("client ok");
        assert_eq!(rs.bytes, total);
        assert_eq!(rs.first_bad, None);
        assert_eq!(rc.bytes, total);
    }

    #[test]
    fn client_without_server_gives_up() {
        let (la, _lb) = pair();
        let mut c = Stack::new(la, Ipv4Addr::new(169, 254, 0, 2), 16, 2, 0).unwrap();
        let mut t = NetTest::new(NetTestRole::Client { server: Ipv4Addr::new(169, 254, 0, 1) }, 1 << 20, 0);
        let mut now = 0;
        let r = loop {
            c.poll(now);
            if let Some(r) = t.step(&mut c, now) {
                break r;
            }
            now += 10;
        };
        assert_eq!(r, Err(NetTestError::NoServer));
    }
}
