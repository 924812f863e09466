//! A standby device: no guest runs; it listens for the active device,
//! applies each epoch into staging and commits it atomically into its
//! image, and acknowledges. One active device at a time: a new connection
//! (the active device reconnecting) replaces the served one, but only once
//! it proved the key (its Confirm opened). Several sockets listen, each
//! with a handshake deadline, and the served connection has an idle
//! deadline, so a host that connects and stays silent, or goes slowly,
//! holds a socket for a few seconds and never the served connection.
use alloc::vec::Vec;
use log::{info, warn};
use sync_core::applier::Applier;
use sync_core::crypto::{Drbg, PairingSecret};
use sync_core::digest::PageHashes;
use sync_core::standby::Event;
use sync_core::wire::{Epoch, Handshake};

use super::raw_pages::RawPages;
use super::session::{SessionError, StandbyPeer};
use crate::net::stack::{Handle, NetDevice, Stack, TcpState};
use sync_core::fence::{term_count, Standing, Unrelated, Verdict};

const READ_CHUNK: usize = 512 << 10;
/// Sockets listening or in a handshake at once (beside the served one):
/// silent hosts take these, never the session, and only for a while.
const BACKLOG: usize = 3;
/// A connection that has not proved the key this long after it opened is
/// dropped (the active side's own limit is the same).
pub const HANDSHAKE_MS: u64 = 5_000;
/// The served connection is dropped after this long without a byte: a
/// running guest's epochs come many times a second, and an active device
/// that was only quiet reconnects and resumes from the committed epoch.
pub const IDLE_MS: u64 = 30_000;
/// Heap a standby keeps beyond staging for the rest of its receive path:
/// the read buffer, frames being decoded and opened (each up to a batch of
/// 1 MiB), the decompressed batch, the zstd context and its window, state
/// frames, replies.
const STAGING_RESERVE: usize = 16 << 20;

/// The staging budget (bytes) of a standby whose heap has `free` bytes when
/// it starts serving an image of `pages` pages: all of it but the reserve
/// and the applier's page index (4 bytes a page, made at the first epoch).
/// An epoch larger than that is applied in place (`sync_core::applier`):
/// the heap never runs out for it.
pub fn staging_budget(free: usize, pages: u64) -> usize {
    free.saturating_sub(STAGING_RESERVE + pages as usize * 4)
}

/// Heap bytes free now.
#[cfg(target_os = "none")]
fn free_heap() -> Option<usize> {
    let u = crate::heap::usage();
    Some(u.size.saturating_sub(u.used))
}

/// None on the host: its tests set their own budgets.
#[cfg(not(target_os = "none"))]
fn free_heap() -> Option<usize> {
    None
}

/// The guest's vCPU and device state at a committed epoch (the CpuState and
/// DeviceState sent with it): with the image, what a switch or a failover
/// resumes from. Opaque here; `arch` decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestState {
    pub epoch: Epoch,
    pub cpu: Vec<u8>,
    pub devices: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchError {
    /// No session with an active device to ask.
    NotConnected,
    /// The request could not be sealed (the session is dead).
    Session,
}

/// A socket listening, or a connection that has not proved the key yet.
struct Slot {
    h: Handle,
    /// When it left the listening state.
    since_ms: Option<u64>,
    peer: Option<StandbyPeer>,
    /// The peer's address, for logs (a closed socket no longer knows it).
    from: Option<(core::net::Ipv4Addr, u16)>,
    /// Its Hello offers another guest or history that this standby may
    /// take (`adopt_unrelated`, `adopt_once`): acted on (and said) only
    /// once the connection proves the key.
    adopting: Option<(Verdict, Standing, Epoch)>,
}

/// The connection served: its peer proved the key.
struct Conn {
    h: Handle,
    peer: StandbyPeer,
    /// When its last byte arrived.
    heard_ms: u64,
}

pub struct StandbyNode {
    port: u16,
    slots: Vec<Slot>,
    conn: Option<Conn>,
    pub applier: Applier<RawPages>,
    secret: PairingSecret,
    ours: Handshake,
    /// Handshake nonces (and ephemeral keys), seeded from the board's randomness.
    rng: Drbg,
    pub connections: u32,
    pub bytes_received: u64,
    scratch: Vec<u8>,
    /// State frames of the epoch being received, until its commit.
    staged: (Option<Vec<u8>>, Option<Vec<u8>>),
    /// State of the committed epoch, when it came with one.
    pub committed_state: Option<GuestState>,
    /// The active device handed the guest over at this epoch.
    switch_done: Option<Epoch>,
    /// The image was seen torn (an epoch past the staging budget in place).
    torn: bool,
    /// The time of the last pump (for the resets `close` sends).
    now_ms: u64,
    /// The highest term of this guest seen in a session that proved its
    /// key (`fence`): a take-over starts a term above it.
    pub term_seen: sync_core::fence::Term,
    /// Another guest, or a history that does not include the committed
    /// epoch, may replace the image (config `unrelated=resync`).
    pub adopt_unrelated: bool,
    /// The same, once (console `resync`).
    pub adopt_once: bool,
    /// Refusals of an unrelated active device in a row (logged sparsely).
    refusals: u32,
}

/// Hex of a digest, for the log line the tools compare.
pub fn hex(d: &[u8]) -> heapless::String<64> {
    let mut s = heapless::String::new();
    for b in d.iter().take(32) {
        let _ = core::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
    }
    s
}

impl StandbyNode {
    /// `image` must be zeroed: a standby starts from the all-zero image of
    /// epoch 0.
    pub fn new(port: u16, image: RawPages, secret: PairingSecret, ours: Handshake, rng: Drbg) -> Self {
        let pages = sync_core::digest::PageMemory::page_count(&image);
        Self::with_applier(port, Applier::with_hashes(image, 0, PageHashes::zeroed(pages)), None, secret, ours, rng)
    }

    /// A standby holding `applier`'s committed image already (a device that
    /// just handed its guest over keeps it as the image of the final epoch).
    pub fn with_applier(
        port: u16,
        mut applier: Applier<RawPages>,
        committed_state: Option<GuestState>,
        secret: PairingSecret,
        ours: Handshake,
        rng: Drbg,
    ) -> Self {
        if let Some(free) = free_heap() {
            let pages = sync_core::digest::PageMemory::page_count(applier.image());
            applier.set_staging_budget(staging_budget(free, pages));
            info!(
                "standby: staging budget {} MiB ({} of {} pages; a larger epoch is applied in place)",
                (applier.staging_budget_pages() * 4096) >> 20,
                applier.staging_budget_pages(),
                pages
            );
        }
        StandbyNode {
            port,
            slots: Vec::new(),
            conn: None,
            applier,
            secret,
            ours,
            rng,
            connections: 0,
            bytes_received: 0,
            scratch: Vec::new(),
            staged: (None, None),
            committed_state,
            switch_done: None,
            torn: false,
            now_ms: 0,
            term_seen: 0,
            adopt_unrelated: false,
            adopt_once: false,
            refusals: 0,
        }
    }

    /// Asks the active device on the current connection for the guest.
    pub fn request_switch<D: NetDevice>(&mut self, net: &mut Stack<D>) -> Result<(), SwitchError> {
        let Some(c) = self.conn.as_mut() else { return Err(SwitchError::NotConnected) };
        c.peer.request_switch().map_err(|_| SwitchError::Session)?;
        self.flush(net);
        Ok(())
    }

    /// The epoch at which the active device handed the guest over, once.
    pub fn take_switch_done(&mut self) -> Option<Epoch> {
        self.switch_done.take()
    }

    /// The active device's address on the current connection.
    pub fn active_addr<D: NetDevice>(&self, net: &Stack<D>) -> Option<core::net::Ipv4Addr> {
        self.conn.as_ref().and_then(|c| net.remote(c.h)).map(|(ip, _)| ip)
    }

    /// Drops the current connection (a switch request that went
    /// unanswered: nothing stale may arrive on it later).
    pub fn drop_connection<D: NetDevice>(&mut self, net: &mut Stack<D>, why: &str) {
        self.close(net, why);
    }

    /// Stops serving (this device becomes the active one): the listening
    /// sockets go at once; the served connection is handed back, to be
    /// ended by `Served::close` once the guest runs here (with the answer
    /// to SwitchDone).
    pub fn detach<D: NetDevice>(&mut self, net: &mut Stack<D>) -> Option<Served> {
        for s in self.slots.drain(..) {
            net.abort(s.h);
            net.release(s.h);
        }
        self.conn.take().map(|c| Served { h: c.h, peer: c.peer })
    }

    /// The number of the connection served now (each new one counts up),
    /// if one is: a switch request lives as long as the connection it was
    /// sent on.
    pub fn served(&self) -> Option<u32> {
        self.conn.as_ref().map(|_| self.connections)
    }

    fn flush<D: NetDevice>(&mut self, net: &mut Stack<D>) {
        let Some(c) = self.conn.as_mut() else { return };
        send_out(net, c.h, &mut c.peer.outbox);
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::CpuState(b) => self.staged.0 = Some(b),
            Event::DeviceState(b) => self.staged.1 = Some(b),
            Event::Committed(epoch) => {
                self.committed_state = match core::mem::take(&mut self.staged) {
                    (Some(cpu), Some(devices)) => Some(GuestState { epoch, cpu, devices }),
                    // An epoch without state (the last one before a power-off):
                    // nothing to resume from at this epoch.
                    _ => None,
                };
            }
            Event::Resyncing(f) => {
                self.staged = (None, None);
                warn!("standby: epoch dropped ({f:?}); asked to resync from {}", self.applier.committed_epoch());
            }
            Event::SwitchDone(e) => self.switch_done = Some(e),
            Event::None => {}
        }
    }

    /// Logs when the image stops or starts again being a committed epoch's;
    /// a torn image has no state to resume from.
    fn note_torn(&mut self) {
        let torn = !self.applier.holds_committed_image();
        if torn && self.committed_state.take().is_some() {
            warn!("standby: no committed state to fail over to until the epoch in place commits");
        }
        if torn != self.torn {
            self.torn = torn;
            match torn {
                true => warn!(
                    "standby: an epoch needs more than the staging budget ({} pages): applied in place, no committed epoch until it commits",
                    self.applier.staging_budget_pages()
                ),
                false => info!("standby: the epoch applied in place committed: holding epoch {}", self.applier.committed_epoch()),
            }
        }
    }

    fn close<D: NetDevice>(&mut self, net: &mut Stack<D>, why: &str) {
        if let Some(c) = self.conn.take() {
            reset(net, c.h, self.now_ms);
            // Whatever was staged is dropped; the committed image stays.
            self.applier.abort();
            self.staged = (None, None);
            warn!("standby: connection closed: {why}; committed epoch stays {}", self.applier.committed_epoch());
        }
    }

    /// Says on the console what a handshake decided (`fence`); `went_on`:
    /// the connection continued.
    fn on_verdict(&mut self, verdict: Verdict, theirs: &Standing, last: Epoch, went_on: bool) {
        let (lineage, term) = self.applier.lineage();
        let held = self.applier.committed_epoch();
        match verdict {
            Verdict::Follow { .. } => self.refusals = 0,
            Verdict::Rewind => warn!(
                "fence: the active device's term {} took over at epoch {} of term {}; our epochs up to {held} of term {} are not on its history (lost by that take-over): resyncing whole",
                term_count(theirs.term),
                theirs.took_over_at,
                term_count(theirs.prior_term),
                term_count(term)
            ),
            Verdict::Fence { .. } => warn!(
                "fence: an active device of term {} connected, but this standby holds term {}: told it its term is over",
                term_count(theirs.term),
                term_count(term)
            ),
            Verdict::Unrelated(why) if went_on => {
                self.adopt_once = false;
                self.refusals = 0;
                warn!(
                    "standby: replacing the image of epoch {held} (guest {}) with guest {} (term {}, epoch {last}), as allowed: {why:?}; resyncing whole",
                    hex(&lineage),
                    hex(&theirs.lineage),
                    term_count(theirs.term)
                );
            }
            Verdict::Unrelated(why) => {
                if self.refusals.is_multiple_of(20) {
                    warn!(
                        "standby: keeping the image of epoch {held} (guest {}, term {}): the active device offers {} (guest {}, term {}, epoch {last}); to replace this image with it, type Ctrl-] resync here or set unrelated=resync in the config",
                        hex(&lineage),
                        term_count(term),
                        match why {
                            Unrelated::OtherLineage => "another guest",
                            Unrelated::Diverged => "a history of this guest that does not include our epoch",
                        },
                        hex(&theirs.lineage),
                        term_count(theirs.term)
                    );
                }
                self.refusals += 1;
            }
        }
    }

    /// Accepts, handshakes, reads, applies, replies. Never waits.
    pub fn pump<D: NetDevice>(&mut self, net: &mut Stack<D>, now_ms: u64) {
        self.now_ms = now_ms;
        self.listen(net);
        self.handshakes(net, now_ms);
        let Some(c) = self.conn.as_ref() else { return };
        let h = c.h;
        if matches!(net.state(h), TcpState::Closed | TcpState::CloseWait | TcpState::TimeWait | TcpState::Closing | TcpState::LastAck) {
            self.close(net, "closed by the peer or the network");
            return;
        }
        let mut first = true;
        loop {
            self.scratch.clear();
            let n = net.recv(h, &mut self.scratch, READ_CHUNK);
            let Some(c) = self.conn.as_mut() else { return };
            // Bytes held from the read that proved the key go first.
            if n == 0 && !(first && c.peer.has_backlog()) {
                break;
            }
            first = false;
            if n > 0 {
                c.heard_ms = now_ms;
            }
            self.bytes_received += n as u64;
            // What committed before a bad frame of the same read stays
            // committed, with its state (a failover resumes from it).
            let (events, failed) = match c.peer.on_bytes(&self.scratch, &self.secret, &mut self.applier) {
                Ok(events) => (events, None),
                Err(e) => (core::mem::take(&mut c.peer.before_error), Some(e)),
            };
            for (e, d) in c.peer.commits.drain(..) {
                info!("standby committed epoch={e} digest={}", hex(&d));
            }
            for ev in events {
                self.on_event(ev);
            }
            self.note_torn();
            if let Some(e) = failed {
                self.close(net, "bad or tampered input");
                warn!("standby: {e:?}");
                return;
            }
        }
        if self.conn.as_ref().is_some_and(|c| now_ms.saturating_sub(c.heard_ms) > IDLE_MS) {
            self.close(net, "nothing received for 30000 ms");
            return;
        }
        self.flush(net);
    }

    /// Keeps `BACKLOG` sockets listening or in a handshake.
    fn listen<D: NetDevice>(&mut self, net: &mut Stack<D>) {
        while self.slots.len() < BACKLOG {
            match net.tcp_listen(self.port) {
                Ok(h) => self.slots.push(Slot { h, since_ms: None, peer: None, from: None, adopting: None }),
                Err(e) => {
                    warn!("standby: listen on port {}: {e:?}", self.port);
                    return;
                }
            }
        }
    }

    /// Runs the handshakes of new connections; the first to prove the key
    /// becomes the served connection (the one before it is closed then,
    /// not earlier: a stranger cannot cut the active device off).
    fn handshakes<D: NetDevice>(&mut self, net: &mut Stack<D>, now_ms: u64) {
        let mut i = 0;
        while i < self.slots.len() {
            match self.handshake(net, i, now_ms) {
                Ok(false) => i += 1,
                Ok(true) => {
                    let s = self.slots.swap_remove(i);
                    let Some(peer) = s.peer else { continue };
                    // Its Confirm opened: the term its Hello named is proven,
                    // and the user's choice to take another guest is spent.
                    self.term_seen = self.term_seen.max(peer.peer_term);
                    if let Some((verdict, theirs, last)) = s.adopting {
                        self.on_verdict(verdict, &theirs, last, true);
                    }
                    self.close(net, "the active device connected again");
                    self.connections += 1;
                    info!("standby: connection {} from {:?}, holding epoch {}", self.connections, s.from, self.applier.committed_epoch());
                    self.conn = Some(Conn { h: s.h, peer, heard_ms: now_ms });
                }
                Err(why) => {
                    let s = self.slots.swap_remove(i);
                    // A refused guest was said once already (`on_verdict`, sparsely).
                    if let (Some((ip, port)), false) = (s.from, why == NOT_OURS) {
                        warn!("standby: handshake from {ip}:{port} failed: {why}");
                    }
                    if why == NOT_OURS {
                        // The HelloAck says why (the active device logs it
                        // and waits before it asks again): it goes out with
                        // a FIN. A reset would discard it unsent.
                        net.close(s.h);
                        net.poll(now_ms);
                        net.release(s.h);
                    } else {
                        reset(net, s.h, now_ms);
                    }
                }
            }
        }
    }

    /// One slot's turn: Ok(true) when its peer just proved the key,
    /// Err(why) when the slot must go.
    fn handshake<D: NetDevice>(&mut self, net: &mut Stack<D>, i: usize, now_ms: u64) -> Result<bool, &'static str> {
        let s = &mut self.slots[i];
        let state = net.state(s.h);
        if state == TcpState::Listen {
            return Ok(false);
        }
        let since = *s.since_ms.get_or_insert(now_ms);
        // Known from the SYN on: a half-open connection's refusal names it too.
        if s.from.is_none() {
            s.from = net.remote(s.h);
        }
        if !matches!(state, TcpState::SynReceived | TcpState::Established) {
            return Err("closed before it proved the key");
        }
        if now_ms.saturating_sub(since) > HANDSHAKE_MS {
            return Err("the key not proved within 5000 ms");
        }
        if state != TcpState::Established {
            return Ok(false);
        }
        let adopt = self.adopt_unrelated || self.adopt_once;
        let peer = s.peer.get_or_insert_with(|| {
            let mut p = StandbyPeer::accept(self.ours.clone(), &mut self.rng);
            p.adopt_unrelated = adopt;
            p
        });
        self.scratch.clear();
        let n = net.recv(s.h, &mut self.scratch, READ_CHUNK);
        let r = if n > 0 { peer.on_bytes(&self.scratch, &self.secret, &mut self.applier).map(|_| ()) } else { Ok(()) };
        // The HelloAck (and a Fenced) go out whatever the verdict: the
        // active device learns why.
        send_out(net, s.h, &mut peer.outbox);
        let established = peer.is_established();
        match peer.verdict.take() {
            // Taking another guest waits for the key (a stranger's Hello
            // must not spend the user's choice).
            Some((verdict @ Verdict::Unrelated(_), theirs, last)) if r.is_ok() => self.slots[i].adopting = Some((verdict, theirs, last)),
            Some((verdict, theirs, last)) => self.on_verdict(verdict, &theirs, last, r.is_ok()),
            None => {}
        }
        match r {
            Ok(()) => Ok(established),
            Err(SessionError::Unrelated(_)) => Err(NOT_OURS),
            Err(e) => {
                warn!("standby: {e:?}");
                Err("bad input in the handshake")
            }
        }
    }
}

/// The connection a standby served, after it took the guest over.
pub struct Served {
    h: Handle,
    peer: StandbyPeer,
}

impl Served {
    /// Ends the connection with a FIN, sent before the socket is released;
    /// with `taken` (epoch, term), a sealed SwitchTaken goes first: the old
    /// active device keeps the guest until it reads it (or meets our term).
    /// False if the answer could not be sealed or queued.
    pub fn close<D: NetDevice>(mut self, net: &mut Stack<D>, now_ms: u64, taken: Option<(Epoch, sync_core::fence::Term)>) -> bool {
        let mut answered = true;
        if let Some((epoch, term)) = taken {
            answered = self.peer.send(&sync_core::wire::Message::SwitchTaken { epoch, term }).is_ok();
            send_out(net, self.h, &mut self.peer.outbox);
            answered &= self.peer.outbox.is_empty();
        }
        net.close(self.h);
        net.poll(now_ms);
        net.release(self.h);
        answered
    }
}

/// Why a handshake ended when the active device runs another guest or an
/// unrelated history (`fence`).
const NOT_OURS: &str = "the active device's guest is not ours";

/// Ends a connection with a reset the peer gets now (a released socket
/// sends none, and a quiet peer would learn it only when it next sends).
fn reset<D: NetDevice>(net: &mut Stack<D>, h: Handle, now_ms: u64) {
    net.abort(h);
    net.poll(now_ms);
    net.release(h);
}

/// Queues as much of `outbox` as the socket takes.
fn send_out<D: NetDevice>(net: &mut Stack<D>, h: Handle, outbox: &mut Vec<u8>) {
    while !outbox.is_empty() {
        let sent = net.send(h, outbox);
        if sent == 0 {
            break;
        }
        outbox.drain(..sent);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::net::test_link::{pair, Link as Cable};
    use crate::sync::loopback::handshake;
    use crate::sync::peers::{PeerAddr, Peers};
    use crate::sync::session::ActivePeer;
    use core::net::Ipv4Addr;
    use sync_core::digest::{PageMemory, VecMemory};
    use sync_core::epoch::{ActiveSync, Link};
    use sync_core::shadow::Budget;
    use sync_core::wire::RamLayout;

    const PAGES: u64 = 16;
    const B_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

    /// The active device's Hello: a guest of one lineage and term, so a
    /// reconnect after commits is the same history (`fence`).
    fn active_hello() -> Handshake {
        let mut h = handshake(ram(), [0; 32]);
        h.standing.lineage = [7; 16];
        h.standing.term = 1 << 16;
        h
    }
    const SECRET: [u8; 32] = [3; 32];

    /// An active device (its `Peers`) and a standby over an in-memory
    /// cable; other hosts' sockets are opened on the active device's stack
    /// (the same address, other ports: to the standby they are other hosts).
    struct World {
        na: Stack<Cable>,
        nb: Stack<Cable>,
        active: ActiveSync,
        peers: Peers,
        node: StandbyNode,
        guest: VecMemory,
        now: u64,
        epoch: u8,
    }

    fn ram() -> RamLayout {
        RamLayout { base: 0x4000_0000, size: PAGES * 4096 }
    }

    impl World {
        fn new() -> Self {
            let (la, lb) = pair();
            let mut na = Stack::new(la, Ipv4Addr::new(169, 254, 0, 1), 16, 1, 0).unwrap();
            let nb = Stack::new(lb, B_IP, 16, 2, 0).unwrap();
            let mut active = ActiveSync::new(PAGES, Budget::Full).unwrap();
            let peers =
                Peers::new(&[PeerAddr { ip: B_IP, port: 7000 }], &mut active, PairingSecret::new(SECRET), active_hello(), Drbg::new([5; 32]), usize::MAX, None);
            let backing: &'static mut [u8] = std::vec![0u8; (PAGES * 4096) as usize].leak();
            // SAFETY: a leaked, page-sized-multiple buffer used by this image alone.
            let image = unsafe { RawPages::new(backing.as_mut_ptr(), PAGES) };
            let node = StandbyNode::new(7000, image, PairingSecret::new(SECRET), handshake(ram(), [0; 32]), Drbg::new([9; 32]));
            na.poll(0);
            World { na, nb, active, peers, node, guest: VecMemory::zeroed(PAGES as usize), now: 0, epoch: 0 }
        }

        /// `ms` milliseconds of both devices (the active one's pump too,
        /// unless `active_quiet`), in steps of `step` ms.
        fn run(&mut self, ms: u64, step: u64, active_quiet: bool) {
            let end = self.now + ms;
            while self.now < end {
                self.na.poll(self.now);
                if !active_quiet {
                    self.peers.pump(&mut self.na, &mut self.active, &VecMemory::zeroed(0), &|_| false, self.now);
                }
                self.na.poll(self.now);
                self.nb.poll(self.now);
                self.node.pump(&mut self.nb, self.now);
                self.nb.poll(self.now);
                self.now += step;
            }
        }

        /// Cuts an epoch and runs until the standby commits it.
        fn epoch_commits(&mut self) -> bool {
            self.epoch += 1;
            self.guest.pages_mut()[(self.epoch as usize) % PAGES as usize][7] = self.epoch;
            let mut links: Vec<&mut Link> = self.peers.links().collect();
            let (e, _) = self.active.cut(0..PAGES, &self.guest, &mut links).unwrap();
            for _ in 0..500 {
                self.run(1, 1, false);
                if self.node.applier.committed_epoch() == e && self.peers.list[0].acked == e {
                    return self.node.applier.image().page(3) == self.guest.page(3);
                }
            }
            false
        }

        fn connected(&mut self) {
            for _ in 0..300 {
                self.run(1, 1, false);
                if self.peers.links().count() == 1 && self.node.active_addr(&self.nb).is_some() {
                    return;
                }
            }
            panic!("no session after 300 ms");
        }
    }

    /// Another host's connection to the standby: raw socket on `na`, with
    /// a session state machine of its own (or none: it says nothing).
    struct Stranger {
        h: Handle,
        peer: Option<(ActivePeer, ActiveSync, PairingSecret)>,
    }

    impl Stranger {
        fn connect(w: &mut World, secret: Option<[u8; 32]>) -> Self {
            Self::connect_as(w, secret, active_hello().standing.lineage)
        }

        /// `connect`, its Hello naming the guest `lineage`.
        fn connect_as(w: &mut World, secret: Option<[u8; 32]>, lineage: [u8; 16]) -> Self {
            let h = w.na.tcp_connect(B_IP, 7000).unwrap();
            let peer = secret.map(|s| {
                let mut a = ActiveSync::new(PAGES, Budget::Full).unwrap();
                // As far as the real active device (its epochs are cut
                // from the same guest: a reconnect of it).
                for _ in 0..w.active.tracker().last_cut() {
                    a.cut([0u64], &w.guest, &mut []).unwrap();
                }
                let id = a.add_standby();
                // Its Hello names a cut past the standby's commits, as the
                // active device's next one would (the same history: `fence`).
                let mut hello = active_hello();
                hello.standing.lineage = lineage;
                hello.last_committed = a.tracker().last_cut() + 1;
                (ActivePeer::connect(id, hello, &mut Drbg::new([s[0] ^ 0x77; 32])).unwrap(), a, PairingSecret::new(s))
            });
            Stranger { h, peer }
        }

        /// Sends what its session has and reads what came; Err once its
        /// session failed (a Confirm that did not open).
        fn talk(&mut self, w: &mut World) -> Result<(), crate::sync::session::SessionError> {
            let Some((p, a, s)) = self.peer.as_mut() else { return Ok(()) };
            // After the standby's FIN what it sent is still to be read.
            if !matches!(w.na.state(self.h), TcpState::Established | TcpState::CloseWait) {
                return Ok(());
            }
            let mut out = Vec::new();
            p.take_output(&mut out);
            w.na.send(self.h, &out);
            let mut got = Vec::new();
            w.na.recv(self.h, &mut got, usize::MAX);
            p.on_bytes(&got, s, a).map(|_| ())
        }
    }

    /// Hosts that connect and never speak hold a listening socket each for
    /// the handshake deadline, then are reset; the active device is never
    /// cut off, and a host that arrives after them still gets a socket.
    /// (Before: the first connection to the listener replaced the session.)
    #[test]
    fn silent_hosts_cut_nobody_off_and_are_reset_at_the_deadline() {
        let mut w = World::new();
        w.connected();
        assert!(w.epoch_commits());
        let silent: Vec<Stranger> = (0..BACKLOG).map(|_| Stranger::connect(&mut w, None)).collect();
        w.run(50, 1, false);
        assert!(silent.iter().all(|s| w.na.is_established(s.h)), "every backlog socket took one");
        for _ in 0..3 {
            assert!(w.epoch_commits(), "the active device was cut off");
        }
        w.run(HANDSHAKE_MS + 200, 10, false);
        assert!(silent.iter().all(|s| w.na.state(s.h) == TcpState::Closed), "a silent host outlived the handshake deadline");
        assert!(w.epoch_commits());
        assert_eq!(w.peers.list[0].reconnects, 0);
        assert_eq!(w.node.connections, 1);
        // The sockets listen again: a new host is taken (and dropped).
        let late = Stranger::connect(&mut w, None);
        w.run(50, 1, false);
        assert!(w.na.is_established(late.h));
    }

    /// A SYN from an address nobody answers ARP for (a SYN flood's): the
    /// socket it takes stays half-open until the handshake deadline, then
    /// is reset, and its refusal is logged with the address like any
    /// other. (Before: reset without a word; the address was read only
    /// once TCP was established.)
    #[test]
    fn a_half_open_connection_is_refused_at_the_deadline_and_logged() {
        crate::node::fake::init_log();
        let mut w = World::new();
        w.connected();
        assert!(w.epoch_commits());
        w.nb.device_mut().inject(syn_from_nowhere(Ipv4Addr::new(169, 254, 200, 1), 20_000));
        w.run(50, 1, false);
        assert!(w.node.slots.iter().any(|s| w.nb.state(s.h) == TcpState::SynReceived), "the SYN took a listening socket");
        assert!(w.epoch_commits(), "the active device was cut off");
        w.run(HANDSHAKE_MS + 200, 10, false);
        assert!(w.node.slots.iter().all(|s| w.nb.state(s.h) == TcpState::Listen), "a half-open socket outlived the deadline");
        assert_eq!(crate::node::fake::logged("standby: handshake from 169.254.200.1:20000 failed: the key not proved within 5000 ms"), 1);
        assert!(w.epoch_commits());
        assert_eq!((w.peers.list[0].reconnects, w.node.connections), (0, 1));
    }

    /// A bare SYN to the standby's port 7000 from `ip:port`, as a frame
    /// on the standby's wire.
    fn syn_from_nowhere(ip: Ipv4Addr, port: u16) -> Vec<u8> {
        use smoltcp::wire::{EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket, TcpSeqNumber};
        let mut f = std::vec![0u8; 14 + 20 + 20];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(EthernetAddress([0x52, 0x54, 0, 0, 0, 2]));
        eth.set_src_addr(EthernetAddress([0x02, 0x5e, 0x10, 0, 0, 1]));
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let mut ip4 = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip4.set_version(4);
        ip4.set_header_len(20);
        ip4.set_total_len(40);
        ip4.set_hop_limit(64);
        ip4.set_next_header(IpProtocol::Tcp);
        ip4.set_src_addr(ip);
        ip4.set_dst_addr(B_IP);
        ip4.fill_checksum();
        let mut tcp = TcpPacket::new_unchecked(&mut f[34..]);
        tcp.set_src_port(port);
        tcp.set_dst_port(7000);
        tcp.set_seq_number(TcpSeqNumber(1000));
        tcp.set_header_len(20);
        tcp.clear_flags();
        tcp.set_syn(true);
        tcp.set_window_len(64240);
        tcp.fill_checksum(&IpAddress::Ipv4(ip), &IpAddress::Ipv4(B_IP));
        f
    }

    /// A host with a Hello but not the key: it gets HelloAck and the
    /// standby's Confirm, cannot answer with its own, and replaces nothing.
    #[test]
    fn a_hello_without_the_key_replaces_nothing() {
        let mut w = World::new();
        w.connected();
        assert!(w.epoch_commits());
        let mut s = Stranger::connect(&mut w, Some([4; 32]));
        let mut failed = false;
        for _ in 0..200 {
            w.run(1, 1, false);
            failed |= s.talk(&mut w).is_err();
        }
        assert!(failed, "the stranger opened the standby's Confirm without the key");
        // It keeps the socket open and silent: the deadline ends it.
        w.run(HANDSHAKE_MS + 200, 10, false);
        assert_eq!(w.na.state(s.h), TcpState::Closed);
        assert!(w.epoch_commits());
        assert_eq!((w.peers.list[0].reconnects, w.node.connections), (0, 1));
    }

    /// The user's one-time choice to take another guest (console
    /// `resync`) is spent only by a connection that proves the key: a
    /// Hello of another guest from a host without the key neither spends
    /// it nor is said to replace the image. (Before: its clear-text Hello
    /// spent it and logged "replacing the image", so the device the user
    /// meant was refused afterwards.)
    #[test]
    fn a_strangers_hello_does_not_spend_the_users_choice() {
        crate::node::fake::init_log();
        let mut w = World::new();
        w.connected();
        assert!(w.epoch_commits());
        w.node.adopt_once = true;
        let mut s = Stranger::connect_as(&mut w, Some([4; 32]), [9; 16]);
        let mut failed = false;
        for _ in 0..200 {
            w.run(1, 1, false);
            failed |= s.talk(&mut w).is_err();
        }
        assert!(failed, "the stranger opened the standby's Confirm without the key");
        w.run(HANDSHAKE_MS + 200, 10, false);
        assert!(w.node.adopt_once, "a Hello without the key spent the user's choice");
        assert_eq!(crate::node::fake::logged("as allowed"), 0, "an image replaced by nobody was said to be");
        assert!(w.epoch_commits());
        assert_eq!((w.peers.list[0].reconnects, w.node.connections), (0, 1));
    }

    /// A device offering another guest is refused, and hears why: the
    /// HelloAck reaches it before the connection ends. (Before: the reset
    /// that ended the connection discarded the HelloAck unsent, so the
    /// active device never learnt why and asked again at once.)
    #[test]
    fn a_refused_guest_hears_why() {
        let mut w = World::new();
        w.connected();
        assert!(w.epoch_commits());
        let mut s = Stranger::connect_as(&mut w, Some(SECRET), [9; 16]);
        let mut heard = None;
        for _ in 0..300 {
            w.run(1, 1, false);
            if let Err(e) = s.talk(&mut w) {
                heard = Some(e);
                break;
            }
        }
        assert_eq!(heard, Some(SessionError::Unrelated(Unrelated::OtherLineage)));
        assert!(w.epoch_commits());
        assert_eq!((w.peers.list[0].reconnects, w.node.connections), (0, 1));
    }

    /// A connection that proves the key (the active device reconnecting
    /// while its old connection still looks open) replaces the served one.
    #[test]
    fn a_connection_that_proves_the_key_replaces_the_served_one() {
        let mut w = World::new();
        w.connected();
        assert!(w.epoch_commits());
        let mut s = Stranger::connect(&mut w, Some(SECRET));
        for _ in 0..200 {
            w.run(1, 1, false);
            s.talk(&mut w).unwrap();
        }
        assert!(s.peer.as_ref().unwrap().0.is_established());
        assert_eq!(w.node.connections, 2, "the standby serves the new connection");
        // The old one was reset: the active device's pump notices.
        assert!(w.peers.list[0].bytes_sent > 0);
        w.run(100, 1, false);
        assert!(w.peers.list[0].reconnects >= 1 || w.peers.links().count() == 0);
    }

    /// An active device that cuts no epoch for twice the idle deadline (a
    /// quiet guest, the switch-only policy) keeps its connection: its
    /// KeepAlives reach the standby. (Before: dropped every 30 s.)
    #[test]
    fn a_live_active_device_with_nothing_to_send_keeps_its_connection() {
        let mut w = World::new();
        w.connected();
        assert!(w.epoch_commits());
        w.run(2 * IDLE_MS + 1_000, 50, false);
        assert!(w.node.active_addr(&w.nb).is_some(), "the connection was dropped");
        assert_eq!((w.peers.list[0].reconnects, w.node.connections), (0, 1));
        assert!(w.epoch_commits());
    }

    /// A served connection that goes quiet (an active device that died
    /// without a FIN) is dropped at the idle deadline; until then it stays.
    /// (Before: it held the standby for ever.)
    #[test]
    fn a_quiet_served_connection_ends_at_the_idle_deadline() {
        let mut w = World::new();
        w.connected();
        assert!(w.epoch_commits());
        w.run(IDLE_MS - 1_000, 50, true);
        assert!(w.node.active_addr(&w.nb).is_some(), "dropped before the deadline");
        w.run(2_000, 50, true);
        assert!(w.node.active_addr(&w.nb).is_none(), "a quiet connection outlived the idle deadline");
        // The active device reconnects and resumes.
        w.run(1_000, 1, false);
        assert!(w.epoch_commits());
    }
}
