//! The link emulator: the network between VMsync devices under QEMU.
//!
//! Each device's QEMU has one virtio-net MMIO NIC whose backend is a UDP
//! socket on 127.0.0.1 (`-netdev dgram`, one datagram per Ethernet frame).
//! The emulator owns the other end of every device's socket pair, switches
//! frames between devices by MAC like a learning switch, and passes each
//! direction of each device pair through its own shaped link (rate, queue,
//! delay, jitter, loss), with faults (cut, drop, bit flip) on command or at
//! scheduled times. A tap ([`LinkHandle::tap`]) copies what chosen
//! directions deliver (a recording to replay). What it delivers is counted: that is the report's
//! `totals.link_bytes` (docs/report.md).
//!
//! [`tcp_proxy`] shapes a TCP byte stream (QEMU's own migration) the same
//! way.
//!
//! ## QEMU wiring
//!
//! [`Link::qemu_net_args`] gives, for QEMU 7.2:
//! `-netdev dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=P,
//! remote.type=inet,remote.host=127.0.0.1,remote.port=Q -device
//! virtio-net-device,netdev=n0,mac=52:54:00:..`. The older
//! `-netdev socket,id=n0,udp=127.0.0.1:Q,localaddr=127.0.0.1:P` works the
//! same (both carried a Linux guest's ping and TCP here); `dgram` is its
//! 7.2 successor. UDP rather than `-netdev stream` (TCP, 4-byte length
//! prefix): a datagram is a frame, a QEMU that stops reading cannot stall
//! the one forwarding thread, and what the host kernel drops is visible in
//! `/proc/net/udp` ([`DeviceStats::host_drops_in`]). The price: the
//! emulator picks the port each QEMU binds, free when picked but released
//! for QEMU to take.
//!
//! On the `virt` board the first `virtio-net-device` lands in the last
//! virtio-mmio slot: `reg` 0x0a003e00 size 0x200, SPI 47 (INTID 79), edge.
//! QEMU's device tree lists all 32 slots; the NIC's slot reads DeviceID 1.
//! QEMU 7.2 makes virtio-mmio legacy (Version 1) unless
//! `-global virtio-mmio.force-legacy=false`. The backend has no vnet
//! header, so no checksum offload is offered: frames carry full checksums.
mod command;
mod engine;
mod frame;
mod profile;
mod proxy;
mod rng;
mod shaper;
mod stats;
mod switch;

pub use command::{Command, Filter, FlipAt, Links};
pub use frame::{checksums_ok, fix_checksums, tcp_view, TcpView};
pub use profile::{ParseProfileError, Profile, TCP_FRAME_OVERHEAD, TCP_MSS};
pub use proxy::{tcp_proxy, ProxySnapshot, StreamStats, TcpProxy};
pub use stats::{DeviceStats, DirStats, Drops, Series, Snapshot, BUCKET};

pub use engine::Tapped;

use engine::{lock, Engine, Msg, Shared};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How often receive threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// How long a live command may take to come into force before the caller
/// is told the emulator is stuck.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub devices: usize,
    /// Every direction starts with this profile; `Command::SetProfile` at
    /// time zero gives pairs their own.
    pub profile: Profile,
    /// Seeds loss, jitter and random bit offsets, so runs repeat.
    pub seed: u64,
    /// Commands at times from the start.
    pub schedule: Vec<(Duration, Command)>,
}

impl LinkConfig {
    pub fn new(devices: usize, profile: Profile) -> LinkConfig {
        LinkConfig { devices, profile, seed: 1, schedule: Vec::new() }
    }
}

/// The MAC of device `i` (locally administered QEMU range `52:54:00`, then
/// "VS" and the index).
pub fn device_mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x56, 0x53, i as u8]
}

/// A running emulator; stops when dropped.
pub struct Link {
    handle: LinkHandle,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Commands and counters of a running emulator, for any thread.
#[derive(Clone)]
pub struct LinkHandle {
    tx: Sender<Msg>,
    shared: Arc<Mutex<Shared>>,
    start: Instant,
    /// Per device: the emulator's port (QEMU's `remote`) and the port
    /// reserved for its QEMU (`local`).
    ports: Vec<u16>,
    device_ports: Vec<u16>,
}

impl Link {
    /// Binds one socket per device on free ports and starts forwarding.
    pub fn start(cfg: LinkConfig) -> io::Result<Link> {
        let n = cfg.devices;
        if n == 0 || n > 255 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a link needs 1 to 255 devices"));
        }
        let socks = (0..n).map(|_| UdpSocket::bind((LOCALHOST, 0))).collect::<io::Result<Vec<_>>>()?;
        let ports = socks.iter().map(|s| s.local_addr().map(|a| a.port())).collect::<io::Result<Vec<_>>>()?;
        // Ports for the QEMUs to bind: taken from the kernel while all are
        // held, so they are distinct and free now, then released for QEMU.
        // Another process could take one in between; the kernel hands out
        // ephemeral ports at random, so that is rare, and QEMU would then
        // fail to start with "Address already in use".
        let device_ports = {
            let held = (0..n).map(|_| UdpSocket::bind((LOCALHOST, 0))).collect::<io::Result<Vec<_>>>()?;
            held.iter().map(|s| s.local_addr().map(|a| a.port())).collect::<io::Result<Vec<_>>>()?
        };
        let peers = device_ports.iter().map(|&p| SocketAddr::from((LOCALHOST, p))).collect();
        let start = Instant::now();
        let shared = Arc::new(Mutex::new(Shared::new(n, &cfg.profile)));
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (dev, s) in socks.iter().enumerate() {
            let s = s.try_clone()?;
            s.set_read_timeout(Some(POLL))?;
            let (tx, stop) = (tx.clone(), stop.clone());
            threads.push(std::thread::Builder::new().name(format!("link-rx{dev}")).spawn(move || receive(dev, s, tx, stop))?);
        }
        let engine = Engine::new(start, &cfg.profile, cfg.seed, socks, peers, shared.clone());
        threads.push(std::thread::Builder::new().name("link".into()).spawn(move || engine.run(rx))?);
        let handle = LinkHandle { tx, shared, start, ports, device_ports };
        let link = Link { handle, stop, threads };
        for (at, cmd) in cfg.schedule {
            link.handle.schedule(at, cmd)?;
        }
        Ok(link)
    }

    pub fn devices(&self) -> usize {
        self.handle.ports.len()
    }

    /// The emulator's port for `device`: where its QEMU sends.
    pub fn port(&self, device: usize) -> u16 {
        self.handle.ports[device]
    }

    /// The port `device`'s QEMU binds and receives on.
    pub fn device_port(&self, device: usize) -> u16 {
        self.handle.device_ports[device]
    }

    /// QEMU arguments attaching device `device`'s virtio-net MMIO NIC
    /// (`netdev` id `n0`) with this MAC to the emulator. Panics on a device
    /// index out of range.
    pub fn qemu_net_args(&self, device: usize, mac: [u8; 6]) -> Vec<String> {
        let m = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        vec![
            "-netdev".into(),
            format!(
                "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                self.device_port(device),
                self.port(device)
            ),
            "-device".into(),
            format!("virtio-net-device,netdev=n0,mac={m}"),
        ]
    }

    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }

    /// Stops forwarding (frames still in flight are not delivered) and
    /// returns the final counts.
    pub fn stop(mut self) -> Snapshot {
        self.shutdown();
        self.handle.snapshot()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The engine has gone already if this fails.
        let _ = self.handle.tx.send(Msg::Stop);
        for t in self.threads.drain(..) {
            // A panicked thread has nothing more to give back.
            let _ = t.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::ops::Deref for Link {
    type Target = LinkHandle;
    fn deref(&self) -> &LinkHandle {
        &self.handle
    }
}

fn receive(dev: usize, sock: UdpSocket, tx: Sender<Msg>, stop: Arc<AtomicBool>) {
    // The largest UDP payload: QEMU never sends more than one frame in one.
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((len, src)) => {
                let at = Instant::now();
                if tx.send(Msg::Frame { dev, at, data: buf[..len].to_vec(), src }).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
            // ECONNREFUSED from an earlier send's ICMP and the like: the
            // socket is still good.
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the link emulator has stopped")
}

impl LinkHandle {
    fn check(&self, cmd: &Command) -> io::Result<()> {
        match cmd.max_device() {
            Some(d) if d >= self.ports.len() => {
                Err(io::Error::new(io::ErrorKind::InvalidInput, format!("device {d} in {cmd:?}: the link has {} devices", self.ports.len())))
            }
            _ => Ok(()),
        }
    }

    /// Applies `cmd` now; returns once it is in force.
    pub fn command(&self, cmd: Command) -> io::Result<()> {
        self.check(&cmd)?;
        let (done, wait) = mpsc::channel();
        self.tx.send(Msg::Command { cmd, done: Some(done) }).map_err(|_| stopped())?;
        wait.recv_timeout(COMMAND_TIMEOUT).map_err(|_| stopped())
    }

    /// Applies `cmd` at `at` from the emulator's start (at once if that has
    /// passed).
    pub fn schedule(&self, at: Duration, cmd: Command) -> io::Result<()> {
        self.check(&cmd)?;
        self.tx.send(Msg::Schedule { at: self.start + at, cmd }).map_err(|_| stopped())
    }

    /// Copies of every frame delivered on `links` from now on, in delivery
    /// order (a recording of what the receivers got). Unbounded: the
    /// caller reads or drops the receiver.
    pub fn tap(&self, links: Links) -> io::Result<mpsc::Receiver<Tapped>> {
        if let Some(d) = links.max_device().filter(|&d| d >= self.ports.len()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("device {d} in {links:?}: the link has {} devices", self.ports.len())));
        }
        let (to, rx) = mpsc::channel();
        self.tx.send(Msg::Tap { links, to }).map_err(|_| stopped())?;
        Ok(rx)
    }

    /// The emulator's port for `device` (where a host on it sends) and the
    /// port the emulator sends that device's frames to.
    pub fn ports_of(&self, device: usize) -> Option<(u16, u16)> {
        Some((*self.ports.get(device)?, *self.device_ports.get(device)?))
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) -> io::Result<()> {
        self.command(Command::Cut(Links::Pair(a, b)))
    }

    pub fn restore(&self, a: usize, b: usize) -> io::Result<()> {
        self.command(Command::Restore(Links::Pair(a, b)))
    }

    /// Cuts every link of `device`.
    pub fn isolate(&self, device: usize) -> io::Result<()> {
        self.command(Command::Cut(Links::Device(device)))
    }

    /// Restores every link of `device`.
    pub fn rejoin(&self, device: usize) -> io::Result<()> {
        self.command(Command::Restore(Links::Device(device)))
    }

    pub fn restore_all(&self) -> io::Result<()> {
        self.command(Command::Restore(Links::All))
    }

    pub fn drop_next(&self, n: u64, filter: Filter) -> io::Result<()> {
        self.command(Command::DropNext { n, filter })
    }

    pub fn flip_bit(&self, filter: Filter, at: FlipAt, fix_checksums: bool) -> io::Result<()> {
        self.command(Command::FlipBit { filter, at, fix_checksums })
    }

    pub fn set_profile(&self, links: Links, profile: Profile) -> io::Result<()> {
        self.command(Command::SetProfile(links, profile))
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn snapshot(&self) -> Snapshot {
        let n = self.ports.len();
        let (dirs, mut devices) = {
            let sh = lock(&self.shared);
            (sh.dirs.iter().filter(|d| d.from != d.to).cloned().collect(), sh.devices.clone())
        };
        let host_in = stats::host_udp_drops(&self.ports);
        let host_out = stats::host_udp_drops(&self.device_ports);
        for (i, d) in devices.iter_mut().enumerate().take(n) {
            d.host_drops_in = host_in[i];
            d.host_drops_out = host_out[i];
        }
        Snapshot { elapsed: self.start.elapsed(), dirs, devices }
    }

    /// Whether the link `from` → `to` is cut now.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        let n = self.ports.len();
        from < n && to < n && lock(&self.shared).cut[from * n + to]
    }

    pub fn series(&self) -> Series {
        let sh = lock(&self.shared);
        let dirs = sh.dirs.iter().zip(&sh.series).filter(|(d, _)| d.from != d.to).map(|(d, s)| (d.from, d.to, s.clone())).collect();
        Series { bucket: BUCKET, dirs }
    }
}
