//! The emulator's one scheduling thread: takes frames from the receive
//! threads and commands from handles, switches, shapes, injects faults, and
//! sends each frame on when its time comes.
use super::command::{Command, Filter, FlipAt, Links};
use super::frame;
use super::profile::Profile;
use super::rng::Rng;
use super::shaper::{Admit, Shaper};
use super::stats::{add_to_series, DeviceStats, DirStats};
use super::switch::{MacTable, Route};
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub(crate) enum Msg {
    /// A datagram from device `dev`'s QEMU, received at `at`.
    Frame {
        dev: usize,
        at: Instant,
        data: Vec<u8>,
        src: SocketAddr,
    },
    /// Apply now; `done` is told when it is in force.
    Command {
        cmd: Command,
        done: Option<Sender<()>>,
    },
    Schedule {
        at: Instant,
        cmd: Command,
    },
    /// Copy every frame delivered on `links` to `to` from now on, until
    /// its receiver hangs up.
    Tap {
        links: Links,
        to: Sender<Tapped>,
    },
    Stop,
}

/// A frame as delivered on the tapped direction `from` → `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tapped {
    pub from: usize,
    pub to: usize,
    pub data: Vec<u8>,
}

/// Counters the engine writes and handles read. Directions are indexed
/// `from * n + to`; the diagonal is unused.
pub(crate) struct Shared {
    pub dirs: Vec<DirStats>,
    pub cut: Vec<bool>,
    pub devices: Vec<DeviceStats>,
    pub series: Vec<Vec<u64>>,
}

impl Shared {
    pub fn new(n: usize, profile: &Profile) -> Shared {
        let dirs = (0..n * n).map(|i| DirStats { from: i / n, to: i % n, profile: profile.name.clone(), ..DirStats::default() }).collect();
        Shared { dirs, cut: vec![false; n * n], devices: vec![DeviceStats::default(); n], series: vec![Vec::new(); n * n] }
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain
/// counters; they are still worth reading.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Dir {
    profile: Profile,
    shaper: Shaper,
    cut: bool,
    /// Frames in flight with their arrival times, in arrival order.
    queue: VecDeque<(Instant, Vec<u8>, bool)>,
}

struct PendingFlip {
    filter: Filter,
    at: FlipAt,
    fix_checksums: bool,
}

pub(crate) struct Engine {
    start: Instant,
    n: usize,
    dirs: Vec<Dir>,
    macs: MacTable,
    drops: Vec<(u64, Filter)>,
    flips: Vec<PendingFlip>,
    /// Scheduled commands, sorted by time (ties in the order given).
    schedule: Vec<(Instant, Command)>,
    taps: Vec<(Links, Sender<Tapped>)>,
    rng: Rng,
    /// Each device's emulator-side socket (sends to that device come from
    /// the address its QEMU was told) and its QEMU's address.
    socks: Vec<UdpSocket>,
    peers: Vec<SocketAddr>,
    shared: Arc<Mutex<Shared>>,
}

impl Engine {
    pub fn new(start: Instant, profile: &Profile, seed: u64, socks: Vec<UdpSocket>, peers: Vec<SocketAddr>, shared: Arc<Mutex<Shared>>) -> Engine {
        let n = socks.len();
        let dirs = (0..n * n).map(|_| Dir { profile: profile.clone(), shaper: Shaper::new(start), cut: false, queue: VecDeque::new() }).collect();
        Engine {
            start,
            n,
            dirs,
            macs: MacTable::default(),
            drops: Vec::new(),
            flips: Vec::new(),
            schedule: Vec::new(),
            taps: Vec::new(),
            rng: Rng::new(seed),
            socks,
            peers,
            shared,
        }
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let now = Instant::now();
            self.run_schedule(now);
            self.deliver(now);
            let next = self.next_wake();
            let msg = match next {
                Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Frame { dev, at, data, src }) => {
                    // Commands due by now apply to this frame.
                    self.run_schedule(Instant::now());
                    self.on_frame(dev, at, data, src);
                }
                Ok(Msg::Command { cmd, done }) => {
                    self.apply(cmd);
                    if let Some(done) = done {
                        // The caller may have given up waiting; nothing to do then.
                        let _ = done.send(());
                    }
                }
                Ok(Msg::Schedule { at, cmd }) => {
                    let i = self.schedule.partition_point(|(t, _)| *t <= at);
                    self.schedule.insert(i, (at, cmd));
                }
                Ok(Msg::Tap { links, to }) => self.taps.push((links, to)),
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let frames = self.dirs.iter().filter_map(|d| d.queue.front().map(|f| f.0));
        frames.chain(self.schedule.first().map(|s| s.0)).min()
    }

    fn run_schedule(&mut self, now: Instant) {
        let due = self.schedule.partition_point(|(t, _)| *t <= now);
        let cmds: Vec<_> = self.schedule.drain(..due).collect();
        for (_, cmd) in cmds {
            self.apply(cmd);
        }
    }

    fn apply(&mut self, cmd: Command) {
        let n = self.n;
        let mut sh = lock(&self.shared);
        match cmd {
            Command::Cut(links) | Command::Restore(links) => {
                let cut = matches!(cmd, Command::Cut(_));
                let now = Instant::now();
                for (i, d) in self.dirs.iter_mut().enumerate() {
                    if links.contains(i / n, i % n) {
                        if cut && !d.cut {
                            // What is queued or in the air when the link
                            // goes is lost, and the transmitter starts idle
                            // when it comes back.
                            let lost = d.queue.len() as u64;
                            d.queue.clear();
                            d.shaper = Shaper::new(now);
                            sh.dirs[i].drops.cut += lost;
                            sh.dirs[i].in_flight -= lost;
                        }
                        d.cut = cut;
                        sh.cut[i] = cut;
                    }
                }
            }
            Command::SetProfile(links, p) => {
                for (i, d) in self.dirs.iter_mut().enumerate() {
                    if links.contains(i / n, i % n) {
                        sh.dirs[i].profile = p.name.clone();
                        d.profile = p.clone();
                    }
                }
            }
            Command::DropNext { n, filter } => {
                if n > 0 {
                    self.drops.push((n, filter));
                }
            }
            Command::FlipBit { filter, at, fix_checksums } => self.flips.push(PendingFlip { filter, at, fix_checksums }),
        }
    }

    fn on_frame(&mut self, dev: usize, at: Instant, data: Vec<u8>, src: SocketAddr) {
        {
            let mut sh = lock(&self.shared);
            let d = &mut sh.devices[dev];
            d.frames_in += 1;
            d.bytes_in += data.len() as u64;
            if data.len() < frame::ETH_HEADER {
                d.malformed += 1;
                return;
            }
        }
        // Whoever sends on a device's socket is that device: follows a QEMU
        // that bound another port than the one reserved for it.
        self.peers[dev] = src;
        match self.macs.route(dev, &data) {
            Route::One(to) => self.forward(dev, to, at, data),
            Route::Flood => {
                for to in (0..self.n).filter(|&t| t != dev) {
                    self.forward(dev, to, at, data.clone());
                }
            }
            Route::Filtered => lock(&self.shared).devices[dev].filtered += 1,
        }
    }

    fn forward(&mut self, from: usize, to: usize, at: Instant, mut data: Vec<u8>) {
        let i = from * self.n + to;
        let mut sh = lock(&self.shared);
        let drops = &mut sh.dirs[i].drops;
        let d = &mut self.dirs[i];
        if d.cut {
            drops.cut += 1;
            return;
        }
        if let Some(k) = self.drops.iter().position(|(_, f)| f.matches(from, to, &data)) {
            self.drops[k].0 -= 1;
            if self.drops[k].0 == 0 {
                self.drops.remove(k);
            }
            drops.command += 1;
            return;
        }
        let arrive = match d.shaper.admit(&d.profile, at, data.len(), &mut self.rng) {
            Admit::Deliver(t) => t,
            Admit::QueueFull => {
                drops.queue_full += 1;
                return;
            }
            Admit::Lost => {
                drops.loss += 1;
                return;
            }
        };
        let mut flipped = false;
        let view = frame::tcp_view(&data).filter(|v| !v.payload.is_empty());
        if let Some(v) = view {
            if let Some(k) = self.flips.iter().position(|f| f.filter.links.contains(from, to)) {
                let f = self.flips.remove(k);
                let bit = match f.at {
                    FlipAt::Bit(b) => b,
                    FlipAt::Random => self.rng.below(v.payload.len() * 8),
                };
                flipped = frame::flip_payload_bit(&mut data, &v, bit).is_some();
                if f.fix_checksums {
                    frame::fix_checksums(&mut data, &v);
                }
            }
        }
        d.queue.push_back((arrive, data, flipped));
        sh.dirs[i].in_flight += 1;
    }

    fn deliver(&mut self, now: Instant) {
        let mut sh = lock(&self.shared);
        for (i, d) in self.dirs.iter_mut().enumerate() {
            while d.queue.front().is_some_and(|f| f.0 <= now) {
                let Some((at, data, flipped)) = d.queue.pop_front() else { break };
                let st = &mut sh.dirs[i];
                st.in_flight -= 1;
                let to = i % self.n;
                if self.socks[to].send_to(&data, self.peers[to]).is_err() {
                    st.drops.send_error += 1;
                    continue;
                }
                st.frames += 1;
                st.bytes += data.len() as u64;
                st.flipped += u64::from(flipped);
                // The model's arrival time, not when this thread got to it.
                add_to_series(&mut sh.series[i], at.saturating_duration_since(self.start), data.len() as u64);
                let from = i / self.n;
                // A tap whose receiver hung up goes.
                self.taps.retain(|(links, tx)| !links.contains(from, to) || tx.send(Tapped { from, to, data: data.clone() }).is_ok());
            }
        }
    }
}
