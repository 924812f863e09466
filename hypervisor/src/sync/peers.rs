//! The active device's connections to its standbys over the hypervisor's
//! TCP stack: connect (and reconnect with a back-off), handshake, push the
//! sealed epochs out as the socket takes them, read Acks and Resyncs. A
//! slow or absent standby never stalls the guest or the other standbys:
//! its queue is bounded by the link budget; a standby behind it catches up
//! (`sync_core::catchup`): the pump tops its queue up with the pages it
//! owes, read from guest memory, while the queue is low. Being behind never
//! drops a connection; a link whose stream broke (no memory for a frame)
//! is dropped and the standby resumes from its last committed epoch.
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use log::{info, warn};
use sync_core::catchup::CatchUpStats;
use sync_core::crypto::{Drbg, PairingSecret};
use sync_core::digest::PageMemory;
use sync_core::epoch::{ActiveEvent, ActiveSync, Link};
use sync_core::lag::{LagLog, LagNow};
use sync_core::resume::StandbyId;
use sync_core::wire::{Epoch, Handshake, Message};

use super::session::{ActivePeer, SessionError};
use crate::net::stack::{Handle, NetDevice, Stack, TcpState};

/// Wait this long before connecting again after a failure.
const RETRY_MS: u64 = 500;
/// Wait this long before asking a standby that keeps an unrelated image
/// again (its user may allow it meanwhile).
const REFUSED_RETRY_MS: u64 = 2_000;
/// A connection that has not finished its handshake by then is dropped.
const HANDSHAKE_MS: u64 = 5_000;
/// A connection that sent nothing for this long sends a KeepAlive: well
/// inside the standby's idle deadline (`standby_node::IDLE_MS`).
const KEEPALIVE_MS: u64 = 10_000;
/// Bytes read from one socket per pump (bounds the work per tick).
const READ_CHUNK: usize = 256 << 10;

#[derive(Debug, Clone, Copy)]
pub struct PeerAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
}

pub struct Peer {
    pub addr: PeerAddr,
    pub id: StandbyId,
    tcp: Option<Handle>,
    session: Option<ActivePeer>,
    since_ms: u64,
    next_try_ms: u64,
    connections: u32,
    /// Connections after the first.
    pub reconnects: u32,
    /// Connections where the standby held nothing (epoch 0) after we had
    /// already sent it something: it starts over with the whole guest.
    pub full_resyncs: u32,
    pub acked: Epoch,
    pub bytes_sent: u64,
    /// The standby ended the last connection with a FIN (not a reset).
    pub finished_by_peer: bool,
    /// Most bytes queued for it at once, over all connections.
    pub peak_queued: usize,
    /// Catch-up figures of ended connections (`catchup` adds the live one).
    catchup_past: CatchUpStats,
    /// Whether the live link was catching up at the last pump (for logs).
    catching_up: bool,
    /// When its lag is next worth a `lag` line.
    lag: LagLog,
    /// Its last handshake found an unrelated image (logged once).
    refused: bool,
    /// When bytes last went into its socket.
    sent_ms: u64,
    /// Its answer to SwitchDone on this connection: it took the guest over
    /// at this epoch, under this term.
    pub taken: Option<(Epoch, sync_core::fence::Term)>,
}

impl Peer {
    /// Catch-up figures over all connections.
    pub fn catchup(&self) -> CatchUpStats {
        let mut t = self.catchup_past;
        if let Some(l) = self.session.as_ref().and_then(|s| s.link()) {
            let c = l.catchup_stats;
            t.started += c.started;
            t.finished += c.finished;
            t.owed_at_start += c.owed_at_start;
            t.streamed_pages += c.streamed_pages;
            t.final_pages += c.final_pages;
            t.sealed_bytes += c.sealed_bytes;
        }
        t
    }

    /// Whether its link is catching up now.
    pub fn is_catching_up(&self) -> bool {
        self.session.as_ref().and_then(|s| s.link()).is_some_and(|l| l.catchup().is_some())
    }

    /// Bytes queued for it now.
    pub fn queued(&self) -> usize {
        self.session.as_ref().map_or(0, |s| s.pending())
    }
}

pub struct Peers {
    pub list: Vec<Peer>,
    secret: PairingSecret,
    hello: Handshake,
    /// Handshake nonces (and ephemeral keys), seeded from the board's randomness.
    rng: Drbg,
    scratch: Vec<u8>,
    /// A standby asked for the guest (the first to ask wins).
    switch_request: Option<usize>,
    /// The request is held (logged once).
    switch_held: bool,
    /// Each link's budget (bytes).
    budget: usize,
    /// A standby proved a higher term of this guest (`fence`): ours is over.
    fenced: Option<sync_core::fence::Term>,
    /// Where another device running this guest finds us (`fence_listener`).
    listener: Option<super::fence_listener::FenceListener>,
}

impl Peers {
    /// `hello` is our handshake template (its nonce and ephemeral key are
    /// drawn fresh from `rng` for each connection).
    /// With `listen`, another device running this guest may connect there
    /// and compare terms (`fence_listener`).
    pub fn new(addrs: &[PeerAddr], active: &mut ActiveSync, secret: PairingSecret, hello: Handshake, rng: Drbg, budget: usize, listen: Option<u16>) -> Self {
        let list = addrs
            .iter()
            .map(|&addr| Peer {
                addr,
                id: active.add_standby(),
                tcp: None,
                session: None,
                since_ms: 0,
                next_try_ms: 0,
                connections: 0,
                reconnects: 0,
                full_resyncs: 0,
                acked: 0,
                bytes_sent: 0,
                sent_ms: 0,
                finished_by_peer: false,
                peak_queued: 0,
                catchup_past: CatchUpStats::default(),
                catching_up: false,
                lag: LagLog::default(),
                refused: false,
                taken: None,
            })
            .collect();
        Peers {
            list,
            secret,
            hello,
            rng,
            scratch: Vec::new(),
            switch_request: None,
            switch_held: false,
            budget,
            fenced: None,
            listener: listen.map(super::fence_listener::FenceListener::new),
        }
    }

    /// The standby (index into `list`) that asked for the guest, once. A
    /// standby that is behind (catching up, or more than one epoch short of
    /// `last_cut`: still taking the initial copy, or a backlog on a slow
    /// link) waits, the request kept, until it is in step: the guest runs
    /// on here meanwhile (the lag lines show the progress), and the
    /// hand-over's final epoch is then a small one that commits at once.
    pub fn take_switch_request(&mut self, last_cut: sync_core::wire::Epoch) -> Option<usize> {
        let i = self.switch_request?;
        let p = self.list.get(i)?;
        if p.is_catching_up() || p.acked.saturating_add(1) < last_cut {
            if !self.switch_held {
                self.switch_held = true;
                log::info!(
                    "switch: {} asked for the guest; it runs on here until {} is in step (committed epoch {} of {last_cut})",
                    p.addr.ip,
                    p.addr.ip,
                    p.acked
                );
            }
            return None;
        }
        self.switch_held = false;
        self.switch_request.take()
    }

    /// The higher term a standby proved, if one did: this device's term
    /// is over and its guest must stop (`fence`).
    pub fn fenced(&self) -> Option<sync_core::fence::Term> {
        self.fenced
    }

    /// Our handshake's standing: which guest and term this device runs.
    pub fn standing(&self) -> sync_core::fence::Standing {
        self.hello.standing
    }

    /// A standby's switch request waits for it to be in step.
    pub fn switch_held(&self) -> bool {
        self.switch_held && self.switch_request.is_some()
    }

    /// Seals `msg` for standby `i`; None when it has no session.
    pub fn send_to(&mut self, i: usize, msg: &sync_core::wire::Message) -> Option<usize> {
        self.list.get_mut(i)?.session.as_mut()?.link_mut()?.send(msg).ok()
    }

    pub fn is_established(&self, i: usize) -> bool {
        self.list.get(i).is_some_and(|p| p.tcp.is_some() && p.session.as_ref().is_some_and(|s| s.is_established()))
    }

    /// Everything queued for standby `i` reached it (TCP acknowledged).
    pub fn delivered<D: NetDevice>(&self, i: usize, net: &Stack<D>) -> bool {
        let Some(p) = self.list.get(i) else { return false };
        match (p.tcp, p.session.as_ref()) {
            (Some(h), Some(s)) => s.pending() == 0 && net.send_queue(h) == 0,
            _ => false,
        }
    }

    /// Stops listening for other devices that run this guest (the guest is
    /// being handed over: the target connects to this port once it runs it).
    pub fn stop_listening<D: NetDevice>(&mut self, net: &mut Stack<D>) {
        if let Some(mut l) = self.listener.take() {
            l.shutdown(net);
        }
    }

    /// Ends every connection (this device stops being active).
    pub fn shutdown<D: NetDevice>(&mut self, net: &mut Stack<D>) {
        self.stop_listening(net);
        for p in self.list.iter_mut() {
            if let Some(h) = p.tcp.take() {
                net.abort(h);
                net.release(h);
            }
            p.session = None;
        }
    }

    /// The links of established sessions, for a cut.
    pub fn links(&mut self) -> impl Iterator<Item = &mut Link> {
        self.list.iter_mut().filter_map(|p| p.session.as_mut()?.link_mut())
    }

    /// Ends the connection to standby `i` (a hand-over it did not answer:
    /// nothing of it may arrive there later).
    pub fn drop_peer<D: NetDevice>(&mut self, i: usize, net: &mut Stack<D>, active: &mut ActiveSync, now_ms: u64, why: &str) {
        if self.list.get(i).is_some_and(|p| p.tcp.is_some()) {
            self.drop_conn(i, net, active, now_ms, why);
        }
    }

    fn drop_conn<D: NetDevice>(&mut self, i: usize, net: &mut Stack<D>, active: &mut ActiveSync, now_ms: u64, why: &str) {
        let p = &mut self.list[i];
        p.catchup_past = p.catchup();
        p.catching_up = false;
        if let Some(h) = p.tcp.take() {
            net.abort(h);
            net.release(h);
        }
        if p.session.take().is_some_and(|s| s.is_established()) {
            let _ = active.disconnect(p.id);
        }
        p.next_try_ms = now_ms + RETRY_MS;
        warn!("sync: standby {} ({}:{}) connection dropped: {why}", p.id, p.addr.ip, p.addr.port);
        // A switch request waiting for this standby to be in step goes with
        // its connection (the standby gave up on it, or will ask again).
        if self.switch_request == Some(i) {
            self.switch_request = None;
            self.switch_held = false;
            info!("switch: the request from {} is dropped with its connection", self.list[i].addr.ip);
        }
    }

    /// Reads what standby `i` sent on socket `h` and acts on it; false when
    /// the connection was dropped.
    fn read<D: NetDevice>(&mut self, i: usize, h: Handle, net: &mut Stack<D>, active: &mut ActiveSync, now_ms: u64) -> bool {
        self.scratch.clear();
        let n = net.recv(h, &mut self.scratch, READ_CHUNK);
        if n > 0 {
            let secret = self.secret.clone();
            let p = &mut self.list[i];
            let Some(s) = p.session.as_mut() else { return true };
            let was = s.is_established();
            match s.on_bytes(&self.scratch, &secret, active) {
                Ok(events) => {
                    for ev in events {
                        match ev {
                            ActiveEvent::Acked(e) => {
                                p.acked = e;
                                info!("ack standby={} epoch={e} at_ms={now_ms}", p.id);
                            }
                            ActiveEvent::Resync(e) if !was => {
                                p.refused = false;
                                p.connections += 1;
                                if p.connections > 1 {
                                    p.reconnects += 1;
                                    if e == 0 && active.tracker().last_cut() > 0 {
                                        p.full_resyncs += 1;
                                    }
                                }
                                info!("sync: standby {} at {}:{} connected holding epoch {e}", p.id, p.addr.ip, p.addr.port);
                            }
                            ActiveEvent::Resync(e) => info!("sync: standby {} asks to resync from epoch {e}", p.id),
                            ActiveEvent::SwitchRequested => {
                                info!("switch: request from {} at_ms={now_ms}", p.addr.ip);
                                if p.is_catching_up() {
                                    info!("switch: {} is catching up; the switch waits until it is in step", p.addr.ip);
                                }
                                self.switch_request.get_or_insert(i);
                            }
                            ActiveEvent::SwitchTaken { epoch, term } => {
                                info!("switch: {} took the guest over at epoch {epoch} (term {})", p.addr.ip, sync_core::fence::term_count(term));
                                p.taken = Some((epoch, term));
                            }
                        }
                    }
                }
                Err(SessionError::Fenced { term }) => {
                    self.fenced = Some(self.fenced.map_or(term, |t| t.max(term)));
                    self.drop_conn(i, net, active, now_ms, "it holds a higher term of this guest");
                    return false;
                }
                Err(SessionError::Unrelated(why)) => {
                    // Logged once per run of refusals: the standby keeps
                    // its image until its user chooses.
                    if !self.list[i].refused {
                        warn!(
                            "sync: standby {} keeps an image of {}: it is not sent this guest until its user allows it (console resync, or unrelated=resync)",
                            self.list[i].addr.ip,
                            match why {
                                sync_core::fence::Unrelated::OtherLineage => "another guest",
                                sync_core::fence::Unrelated::Diverged => "a history of this guest that ours does not include",
                            }
                        );
                    }
                    self.list[i].refused = true;
                    self.drop_conn(i, net, active, now_ms, "it holds an unrelated image");
                    self.list[i].next_try_ms = now_ms + REFUSED_RETRY_MS;
                    return false;
                }
                Err(e) => {
                    self.drop_conn(i, net, active, now_ms, "bad input from the standby");
                    warn!("sync: {e:?}");
                    return false;
                }
            }
        }
        true
    }

    /// Moves bytes both ways on every connection; (re)connects; tops up
    /// the queues of standbys that catch up with pages of `guest` (skipping
    /// those `dirty_now` says are written in the open epoch). Never waits.
    pub fn pump<D: NetDevice, G: PageMemory>(&mut self, net: &mut Stack<D>, active: &mut ActiveSync, guest: &G, dirty_now: &dyn Fn(u64) -> bool, now_ms: u64) {
        if let Some(l) = self.listener.as_mut() {
            let mut ours = self.hello.clone();
            ours.last_committed = active.tracker().last_cut();
            ours.standing.digest = active.digest();
            if let Some(term) = l.pump(net, &ours, &self.secret, &mut self.rng, now_ms) {
                self.fenced = Some(self.fenced.map_or(term, |t| t.max(term)));
            }
        }
        for i in 0..self.list.len() {
            if self.list[i].tcp.is_none() {
                if now_ms < self.list[i].next_try_ms {
                    continue;
                }
                let a = self.list[i].addr;
                match net.tcp_connect(a.ip, a.port) {
                    Ok(h) => {
                        let p = &mut self.list[i];
                        p.tcp = Some(h);
                        p.since_ms = now_ms;
                        p.finished_by_peer = false;
                    }
                    Err(e) => {
                        self.list[i].next_try_ms = now_ms + RETRY_MS;
                        warn!("sync: connect to {}:{}: {e:?}", a.ip, a.port);
                        continue;
                    }
                }
            }
            let Some(h) = self.list[i].tcp else { continue };
            match net.state(h) {
                TcpState::Closed => {
                    self.drop_conn(i, net, active, now_ms, "reset by the peer or the network");
                    continue;
                }
                TcpState::CloseWait | TcpState::TimeWait | TcpState::Closing | TcpState::LastAck => {
                    self.list[i].finished_by_peer = true;
                    // What it sent before its FIN counts (a target's
                    // SwitchTaken comes right before it).
                    if self.read(i, h, net, active, now_ms) {
                        self.drop_conn(i, net, active, now_ms, "closed by the peer");
                    }
                    continue;
                }
                _ => {}
            }
            if !net.is_established(h) {
                if now_ms - self.list[i].since_ms > HANDSHAKE_MS {
                    self.drop_conn(i, net, active, now_ms, "no connection");
                }
                continue;
            }
            if self.list[i].session.is_none() {
                let mut hello = self.hello.clone();
                hello.last_committed = active.tracker().last_cut();
                hello.standing.digest = active.digest();
                let id = self.list[i].id;
                match ActivePeer::connect(id, hello, &mut self.rng) {
                    Ok(mut s) => {
                        s.budget = self.budget;
                        let p = &mut self.list[i];
                        p.session = Some(s);
                        p.since_ms = now_ms;
                    }
                    Err(e) => {
                        self.drop_conn(i, net, active, now_ms, "handshake encoding failed");
                        warn!("sync: {e:?}");
                        continue;
                    }
                }
            }
            // Replies first: an Ack may be waiting.
            if !self.read(i, h, net, active, now_ms) {
                continue;
            }
            let p = &mut self.list[i];
            let Some(s) = p.session.as_mut() else { continue };
            if !s.is_established() && now_ms - p.since_ms > HANDSHAKE_MS {
                self.drop_conn(i, net, active, now_ms, "no HelloAck");
                continue;
            }
            if let Some(link) = s.link_mut() {
                if let Some(e) = link.broken() {
                    warn!("sync: standby {}: {e:?}", p.id);
                    self.drop_conn(i, net, active, now_ms, "its stream broke at a cut");
                    continue;
                }
                // A standby behind its budget: top its queue up.
                if link.wants_stream() {
                    if let Err(e) = link.stream(guest, dirty_now) {
                        warn!("sync: standby {}: catch-up: {e:?}", p.id);
                        self.drop_conn(i, net, active, now_ms, "its catch-up stream broke");
                        continue;
                    }
                }
                let now = link.catchup().map(|c| (c.epoch(), c.owed()));
                if now.is_some() != p.catching_up {
                    p.catching_up = now.is_some();
                    match now {
                        Some((e, owed)) => info!(
                            "sync: standby {} behind its budget ({} bytes): catching up as epoch {e}, {owed} pages owed at_ms={now_ms}",
                            p.id,
                            link.budget()
                        ),
                        None => info!("sync: standby {} caught up at_ms={now_ms}", p.id),
                    }
                }
                p.peak_queued = p.peak_queued.max(link.peak_queued());
                // At most a line a second while it lags, one when in step.
                let lag = link.catchup().map(|c| LagNow {
                    epochs: active.tracker().last_cut().saturating_sub(p.acked),
                    owed_pages: c.owed(),
                    queued_bytes: link.queued() as u64,
                });
                if let Some(line) = p.lag.tick(p.id as u64, p.addr.ip, now_ms, lag, p.bytes_sent) {
                    info!("{line}");
                }
            }
            // A quiet connection says it is alive (no epoch for a while).
            if let Some(link) = s.link_mut() {
                if link.queued() == 0 && now_ms.saturating_sub(p.sent_ms) >= KEEPALIVE_MS {
                    if let Err(e) = link.send(&Message::KeepAlive) {
                        warn!("sync: standby {}: keep-alive: {e:?}", p.id);
                    }
                }
            }
            // As much as the socket takes, without waiting.
            loop {
                let out = s.output();
                if out.is_empty() {
                    break;
                }
                let sent = net.send(h, out);
                s.consume(sent);
                p.bytes_sent += sent as u64;
                if sent > 0 {
                    p.sent_ms = now_ms;
                }
                if sent == 0 {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::net::test_link::pair;
    use crate::sync::loopback::handshake;
    use crate::sync::raw_pages::RawPages;
    use crate::sync::standby_node::StandbyNode;
    use sync_core::digest::{PageMemory, VecMemory};
    use sync_core::shadow::Budget;
    use sync_core::wire::RamLayout;

    const PAGES: u64 = 64;

    #[test]
    fn epochs_flow_to_a_standby_over_tcp_and_acks_come_back() {
        let (la, lb) = pair();
        let (a_ip, b_ip) = (Ipv4Addr::new(169, 254, 0, 1), Ipv4Addr::new(169, 254, 0, 2));
        let mut na = Stack::new(la, a_ip, 16, 1, 0).unwrap();
        let mut nb = Stack::new(lb, b_ip, 16, 2, 0).unwrap();
        let ram = RamLayout { base: 0x4000_0000, size: PAGES * 4096 };
        let secret = PairingSecret::new([3; 32]);
        let mut active = ActiveSync::new(PAGES, Budget::Full).unwrap();
        let mut peers =
            Peers::new(&[PeerAddr { ip: b_ip, port: 7000 }], &mut active, secret.clone(), handshake(ram, [0; 32]), Drbg::new([5; 32]), usize::MAX, None);
        let backing: &'static mut [u8] = std::vec![0u8; (PAGES * 4096) as usize].leak();
        // SAFETY: a leaked, page-sized-multiple buffer used by this image alone.
        let image = unsafe { RawPages::new(backing.as_mut_ptr(), PAGES) };
        let mut node = StandbyNode::new(7000, image, secret, handshake(ram, [0; 32]), Drbg::new([9; 32]));
        let mut guest = VecMemory::zeroed(PAGES as usize);
        let mut now = 0u64;
        let step = |na: &mut Stack<_>, nb: &mut Stack<_>, peers: &mut Peers, active: &mut ActiveSync, node: &mut StandbyNode, now: &mut u64| {
            na.poll(*now);
            peers.pump(na, active, &VecMemory::zeroed(0), &|_| false, *now);
            na.poll(*now);
            nb.poll(*now);
            node.pump(nb, *now);
            nb.poll(*now);
            *now += 1;
        };
        for _ in 0..200 {
            step(&mut na, &mut nb, &mut peers, &mut active, &mut node, &mut now);
        }
        assert!(peers.links().count() == 1, "no session after 200 ms");
        for epoch in 1..=5u64 {
            for p in 0..PAGES as usize {
                guest.pages_mut()[p][(epoch as usize * 13 + p) % 4096] = epoch as u8;
            }
            let mut links: Vec<&mut Link> = peers.links().collect();
            active.cut(0..PAGES, &guest, &mut links).unwrap();
            for _ in 0..500 {
                step(&mut na, &mut nb, &mut peers, &mut active, &mut node, &mut now);
                if peers.list[0].acked == epoch {
                    break;
                }
            }
            assert_eq!(node.applier.committed_epoch(), epoch);
            assert_eq!(peers.list[0].acked, epoch, "no ack for epoch {epoch}");
            assert_eq!(node.applier.image().page(7), guest.page(7));
        }
        assert_eq!(peers.list[0].reconnects, 0);
    }

    /// A guest far larger than a tiny link budget, written with random
    /// bytes much faster than the link drains: the active side never queues
    /// more than the budget, the link is never dropped, and once writes stop
    /// the standby commits the last cut with the guest's content.
    #[test]
    fn a_tiny_budget_holds_while_a_big_guest_writes_and_the_standby_catches_up() {
        // The peak queued stays within the budget whatever the backlog.
        for pages in [1024, 4096] {
            tiny_budget_run(pages, None);
        }
    }

    /// The same with a standby whose staging holds a sixteenth of the guest
    /// (a device that started active has a heap sized for its shadows): the
    /// catch-up, owing most of the guest, goes in place and still commits.
    #[test]
    fn a_standby_with_a_small_staging_budget_catches_up_in_place() {
        tiny_budget_run(4096, Some(4096 / 16 * 4096));
    }

    fn tiny_budget_run(pages: u64, staging: Option<usize>) {
        const BUDGET: usize = 256 << 10;
        let (la, lb) = pair();
        let (a_ip, b_ip) = (Ipv4Addr::new(169, 254, 0, 1), Ipv4Addr::new(169, 254, 0, 2));
        let mut na = Stack::new(la, a_ip, 16, 1, 0).unwrap();
        let mut nb = Stack::new(lb, b_ip, 16, 2, 0).unwrap();
        let ram = RamLayout { base: 0x4000_0000, size: pages * 4096 };
        let secret = PairingSecret::new([3; 32]);
        let mut active = ActiveSync::new(pages, Budget::Full).unwrap();
        let mut peers =
            Peers::new(&[PeerAddr { ip: b_ip, port: 7000 }], &mut active, secret.clone(), handshake(ram, [0; 32]), Drbg::new([5; 32]), BUDGET, None);
        let backing: &'static mut [u8] = std::vec![0u8; (pages * 4096) as usize].leak();
        // SAFETY: a leaked, page-sized-multiple buffer used by this image alone.
        let image = unsafe { RawPages::new(backing.as_mut_ptr(), pages) };
        let mut node = StandbyNode::new(7000, image, secret, handshake(ram, [0; 32]), Drbg::new([9; 32]));
        if let Some(b) = staging {
            node.applier.set_staging_budget(b);
        }
        let mut torn_seen = false;
        let mut guest = VecMemory::zeroed(pages as usize);
        let mut dirty: std::collections::BTreeSet<u64> = (0..pages).collect();
        let (mut now, mut x) = (0u64, 0x2545_f491_4f6c_dd1du64);
        let (mut peak, mut dirty_events) = (0, 0u64);
        for t in 0..6000u64 {
            let writing = t < 1500;
            if writing {
                // 32 pages of random bytes a millisecond: 128 MiB/s.
                for _ in 0..32 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = x % pages;
                    for (i, b) in guest.pages_mut()[p as usize].iter_mut().enumerate() {
                        *b = (x >> (i % 57)) as u8 ^ i as u8;
                    }
                    dirty.insert(p);
                }
            }
            if t % 20 == 19 {
                let d: Vec<u64> = core::mem::take(&mut dirty).into_iter().collect();
                dirty_events += d.len() as u64;
                let mut links: Vec<&mut Link> = peers.links().collect();
                active.cut(d, &guest, &mut links).unwrap();
            }
            na.poll(now);
            peers.pump(&mut na, &mut active, &guest, &|p| dirty.contains(&p), now);
            na.poll(now);
            nb.poll(now);
            node.pump(&mut nb, now);
            nb.poll(now);
            now += 1;
            torn_seen |= !node.applier.holds_committed_image();
            // A switch asked for while catching up waits until in step.
            if t == 50 {
                node.request_switch(&mut nb).unwrap();
            }
            if peers.list[0].is_catching_up() {
                assert_eq!(peers.take_switch_request(active.tracker().last_cut()), None, "a switch to a standby that is catching up");
            }
            peak = peak.max(peers.list[0].queued());
            assert!(peers.list[0].queued() <= BUDGET, "{} bytes queued at {t} ms", peers.list[0].queued());
            if !writing && peers.list[0].acked == active.tracker().last_cut() && node.applier.committed_epoch() == active.tracker().last_cut() {
                break;
            }
        }
        let last = active.tracker().last_cut();
        let c = peers.list[0].catchup();
        std::println!(
            "tiny budget, {pages} pages: last cut {last}, standby committed {}, peak queued {} of {BUDGET} (after each pump {peak}), catch-ups {}/{}, owed at start {} pages, pages dirtied at cuts {dirty_events}, streamed {} + final {} pages, {} bytes sent",
            node.applier.committed_epoch(),
            peers.list[0].peak_queued,
            c.finished,
            c.started,
            c.owed_at_start,
            c.streamed_pages,
            c.final_pages,
            peers.list[0].bytes_sent
        );
        assert_eq!(node.applier.committed_epoch(), last, "the standby did not catch up after writes stopped");
        assert_eq!(node.applier.digest(), active.digest());
        assert_eq!(sync_core::digest::content_digest(node.applier.image()), sync_core::digest::content_digest(&guest));
        assert_eq!(peers.list[0].reconnects, 0, "never dropped for being behind");
        assert!(c.started >= 1 && c.finished >= 1);
        assert_eq!(peers.take_switch_request(active.tracker().last_cut()), Some(0), "the switch goes ahead once the standby is in step");
        assert!(peers.list[0].peak_queued <= BUDGET);
        // Each page goes once for each time it was owed, at most.
        assert!(c.streamed_pages + c.final_pages <= c.owed_at_start + dirty_events);
        // With a small staging budget the catch-up went in place.
        assert_eq!(torn_seen, staging.is_some());
        assert!(node.applier.holds_committed_image());
    }
}
