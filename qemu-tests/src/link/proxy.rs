//! The byte-stream mode: a TCP proxy on 127.0.0.1 that carries a stream
//! (QEMU's own live migration) through the same link model as the frame
//! switch. The stream is cut into MSS-sized segments, each charged its
//! payload plus TCP/IP/Ethernet headers on the link, delivered after its
//! serialisation and propagation delay. Nothing is dropped: when more than
//! the queue limit is waiting, the proxy stops reading and TCP's own flow
//! control slows the sender, as a full modem buffer would.
use super::engine::lock;
use super::profile::{Profile, TCP_FRAME_OVERHEAD, TCP_MSS};
use super::rng::Rng;
use super::shaper::Shaper;
use super::stats::add_to_series;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One direction of the proxied stream(s).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// Stream bytes delivered.
    pub bytes: u64,
    /// The Ethernet bytes the same stream would take as full-size TCP
    /// segments (payload plus 66 bytes a segment), comparable with the
    /// frame switch's counts.
    pub frame_bytes: u64,
    /// Stream bytes delivered per 100 ms ([`super::BUCKET`]) from the
    /// proxy's start.
    pub series: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySnapshot {
    pub elapsed: Duration,
    /// Connections accepted so far.
    pub connections: u64,
    /// From the connecting side to the target.
    pub up: StreamStats,
    /// From the target back.
    pub down: StreamStats,
}

impl ProxySnapshot {
    pub fn bytes(&self) -> u64 {
        self.up.bytes + self.down.bytes
    }

    pub fn frame_bytes(&self) -> u64 {
        self.up.frame_bytes + self.down.frame_bytes
    }
}

struct Shared {
    profile: Profile,
    /// One link model per direction, shared by all connections.
    shapers: [Shaper; 2],
    stats: [StreamStats; 2],
    connections: u64,
    /// Open connections' sockets, to shut them at stop.
    open: Vec<(u64, TcpStream)>,
    threads: Vec<JoinHandle<()>>,
}

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    start: Instant,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// Listens on a free 127.0.0.1 port and forwards each connection to
/// `target` through `profile` (loss ignored: TCP would retransmit).
pub fn tcp_proxy(target: SocketAddr, profile: Profile) -> io::Result<TcpProxy> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    limit_buffers(&listener)?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let shared = Arc::new(Mutex::new(Shared {
        profile,
        shapers: [Shaper::new(start), Shaper::new(start)],
        stats: Default::default(),
        connections: 0,
        open: Vec::new(),
        threads: Vec::new(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let (sh, st) = (shared.clone(), stop.clone());
    let accept = std::thread::Builder::new().name("proxy-accept".into()).spawn(move || accept_loop(listener, target, start, sh, st))?;
    Ok(TcpProxy { addr, start, shared, stop, accept: Some(accept) })
}

/// The receive buffer each accepted connection asks for (Linux doubles it).
const RECEIVE_BUFFER: libc::c_int = 64 * 1024;

/// Loopback TCP between the sender and the proxy would otherwise hide
/// megabytes the link model never sees: with 64 KiB loopback segments the
/// sender's autotuned send buffer reaches its 4 MiB limit, and the proxy's
/// receive buffer grows toward `tcp_rmem`'s maximum (32 MiB here). A
/// migration's last bytes then wait behind seconds of earlier ones that
/// QEMU counts as sent. Full-size Ethernet segments and a fixed receive
/// buffer (both inherited by accepted sockets) bring what the sender gets
/// ahead of the link down to about 1.7 MB on this host (its own send
/// buffer, sized by the kernel from its congestion window: about a quarter
/// second at 50 Mbit/s, the order of a real sender's over Wi-Fi).
fn limit_buffers(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: a valid socket and a c_int option value of the size given.
        let r = unsafe {
            libc::setsockopt(listener.as_raw_fd(), level, name, (&value as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::IPPROTO_TCP, libc::TCP_MAXSEG, TCP_MSS as libc::c_int)?;
    set(libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER)
}

impl TcpProxy {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Segments read from now on use `profile`.
    pub fn set_profile(&self, profile: Profile) {
        lock(&self.shared).profile = profile;
    }

    pub fn snapshot(&self) -> ProxySnapshot {
        let sh = lock(&self.shared);
        ProxySnapshot { elapsed: self.start.elapsed(), connections: sh.connections, up: sh.stats[0].clone(), down: sh.stats[1].clone() }
    }

    /// Closes every connection and returns the final counts.
    pub fn stop(mut self) -> ProxySnapshot {
        self.shutdown();
        self.snapshot()
    }

    fn shutdown(&mut self) {
        if self.stop.swap(true, Ordering::Relaxed) {
            return;
        }
        // Wakes the accept loop, which sees the flag and ends.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads = {
            let mut sh = lock(&self.shared);
            for (_, s) in sh.open.drain(..) {
                // Already closed by its peer is fine.
                let _ = s.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut sh.threads)
        };
        for t in threads {
            // A panicked pump has nothing more to give back.
            let _ = t.join();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, start: Instant, shared: Arc<Mutex<Shared>>, stop: Arc<AtomicBool>) {
    for (id, conn) in (0u64..).zip(listener.incoming()) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // A failed accept or an unreachable target ends this connection only.
        let Ok(client) = conn else { continue };
        let Ok(server) = TcpStream::connect(target) else { continue };
        if let Err(e) = connect_pumps(id, client, server, start, &shared) {
            eprintln!("link proxy: connection {id}: {e}");
        }
    }
}

fn connect_pumps(id: u64, client: TcpStream, server: TcpStream, start: Instant, shared: &Arc<Mutex<Shared>>) -> io::Result<()> {
    // Segments are already delayed by the model; Nagle would add its own.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let mut sh = lock(shared);
    sh.connections += 1;
    sh.open.push((id, client.try_clone()?));
    sh.open.push((id, server.try_clone()?));
    // The last of the two writers to finish forgets the connection.
    let live = Arc::new(AtomicUsize::new(2));
    for (dir, src, dst) in [(0, &client, &server), (1, &server, &client)] {
        let (tx, rx) = mpsc::channel();
        let (src, dst, src_w) = (src.try_clone()?, dst.try_clone()?, src.try_clone()?);
        let (s1, s2, live) = (shared.clone(), shared.clone(), live.clone());
        let seed = id * 2 + dir as u64 + 1;
        sh.threads.push(std::thread::Builder::new().name(format!("proxy{id}-in{dir}")).spawn(move || read_side(src, tx, dir, seed, &s1))?);
        sh.threads.push(std::thread::Builder::new().name(format!("proxy{id}-out{dir}")).spawn(move || {
            write_side(dst, src_w, rx, dir, start, &s2);
            if live.fetch_sub(1, Ordering::AcqRel) == 1 {
                lock(&s2).open.retain(|(i, _)| *i != id);
            }
        })?);
    }
    Ok(())
}

enum Chunk {
    /// One segment's payload and when it arrives at the far end.
    Segment(Instant, Vec<u8>),
    End,
}

fn read_side(mut src: TcpStream, tx: Sender<Chunk>, dir: usize, seed: u64, shared: &Mutex<Shared>) {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(len) => len,
        };
        for seg in buf[..len].chunks(TCP_MSS) {
            let now = Instant::now();
            let (at, pause) = {
                let mut sh = lock(shared);
                let Shared { shapers, profile, .. } = &mut *sh;
                let at = shapers[dir].admit_reliable(profile, now, seg.len() + TCP_FRAME_OVERHEAD, &mut rng);
                // Hold reading while more than a full queue is waiting.
                let full = profile.serialisation(profile.queue_limit());
                (at, shapers[dir].backlog(now).saturating_sub(full))
            };
            if tx.send(Chunk::Segment(at, seg.to_vec())).is_err() {
                return;
            }
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
    }
    // The writer has gone if this fails; nothing is left to tell.
    let _ = tx.send(Chunk::End);
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn write_side(mut dst: TcpStream, src: TcpStream, rx: Receiver<Chunk>, dir: usize, start: Instant, shared: &Mutex<Shared>) {
    let mut held: Option<Chunk> = None;
    loop {
        let chunk = match held.take() {
            Some(c) => c,
            None => match rx.recv() {
                Ok(c) => c,
                Err(_) => break,
            },
        };
        let Chunk::Segment(at, mut out) = chunk else {
            // The source closed its sending side: pass that on.
            let _ = dst.shutdown(Shutdown::Write);
            return;
        };
        sleep_until(at);
        // Everything else already due goes out in the same write.
        let mut segments = 1u64;
        let mut last = at;
        loop {
            match rx.try_recv() {
                Ok(Chunk::Segment(t, more)) if t <= Instant::now() => {
                    out.extend_from_slice(&more);
                    segments += 1;
                    last = t;
                }
                Ok(c) => {
                    held = Some(c);
                    break;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        if dst.write_all(&out).is_err() {
            break;
        }
        let mut sh = lock(shared);
        let st = &mut sh.stats[dir];
        st.bytes += out.len() as u64;
        st.frame_bytes += out.len() as u64 + segments * TCP_FRAME_OVERHEAD as u64;
        add_to_series(&mut st.series, last.saturating_duration_since(start), out.len() as u64);
    }
    // The far side failed: close both ends so the reader and the other
    // direction end too.
    let _ = dst.shutdown(Shutdown::Both);
    let _ = src.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender facing a slow link gets only so far ahead of it: the
    /// modelled queue plus socket buffers of a sender on a real link, not
    /// the 4 MB and growing that plain loopback TCP lets it (measured
    /// here: about 1.7 MB with [`limit_buffers`], 4.2 MB without).
    #[test]
    fn little_hides_in_socket_buffers() {
        // 2 Mbit/s: 250 kB/s, a 25 kB queue.
        let p = Profile::wifi().with_rate(Some(2_000_000)).with_jitter(Duration::ZERO);
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let proxy = tcp_proxy(server.local_addr().unwrap(), p).unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let r = received.clone();
        let sink = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = vec![0u8; 65536];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                r.fetch_add(n, Ordering::Relaxed);
            }
        });
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_nonblocking(true).unwrap();
        let chunk = vec![0x5au8; 65536];
        let mut written = 0usize;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(1000) {
            match c.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("write: {e}"),
            }
        }
        let ahead = written - received.load(Ordering::Relaxed);
        eprintln!("written {written}, received {}, ahead {ahead}", received.load(Ordering::Relaxed));
        assert!(ahead < 2_500_000, "{ahead} bytes accepted by the sender but not yet across the link");
        drop(c);
        drop(proxy);
        sink.join().unwrap();
    }
}
