//! A standby device: no guest runs; it listens for the active device,
//! applies each epoch into staging and commits it atomically into its
//! image, and acknowledges. One active device at a time: a new connection
//! (the active device reconnecting) replaces the old one.
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

pub struct StandbyNode {
    port: u16,
    listener: Option<Handle>,
    conn: Option<(Handle, StandbyPeer)>,
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
            listener: None,
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
            term_seen: 0,
            adopt_unrelated: false,
            adopt_once: false,
            refusals: 0,
        }
    }

    /// Asks the active device on the current connection for the guest.
    pub fn request_switch<D: NetDevice>(&mut self, net: &mut Stack<D>) -> Result<(), SwitchError> {
        let Some((_, peer)) = self.conn.as_mut() else { return Err(SwitchError::NotConnected) };
        if !peer.is_established() {
            return Err(SwitchError::NotConnected);
        }
        peer.request_switch().map_err(|_| SwitchError::Session)?;
        self.flush(net);
        Ok(())
    }

    /// The epoch at which the active device handed the guest over, once.
    pub fn take_switch_done(&mut self) -> Option<Epoch> {
        self.switch_done.take()
    }

    /// The active device's address on the current connection.
    pub fn active_addr<D: NetDevice>(&self, net: &Stack<D>) -> Option<core::net::Ipv4Addr> {
        self.conn.as_ref().and_then(|(h, _)| net.remote(*h)).map(|(ip, _)| ip)
    }

    /// Drops the current connection (a switch request that went
    /// unanswered: nothing stale may arrive on it later).
    pub fn drop_connection<D: NetDevice>(&mut self, net: &mut Stack<D>, why: &str) {
        self.close(net, why);
    }

    /// Stops serving: the connection and the listener go (this device
    /// becomes the active one). The connection ends with a FIN, sent before
    /// the socket is released: it tells the old active device that its
    /// handover arrived (a refusal would be a reset).
    pub fn shutdown<D: NetDevice>(&mut self, net: &mut Stack<D>, now_ms: u64) {
        if let Some((h, _)) = self.conn.take() {
            net.close(h);
            net.poll(now_ms);
            net.release(h);
        }
        if let Some(l) = self.listener.take() {
            net.abort(l);
            net.release(l);
        }
    }

    fn flush<D: NetDevice>(&mut self, net: &mut Stack<D>) {
        let Some((h, peer)) = self.conn.as_mut() else { return };
        while !peer.outbox.is_empty() {
            let sent = net.send(*h, &peer.outbox);
            if sent == 0 {
                break;
            }
            peer.outbox.drain(..sent);
        }
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
        if let Some((h, _)) = self.conn.take() {
            net.abort(h);
            net.release(h);
            // Whatever was staged is dropped; the committed image stays.
            self.applier.abort();
            self.staged = (None, None);
            warn!("standby: connection closed: {why}; committed epoch stays {}", self.applier.committed_epoch());
        }
    }

    /// Says on the console what the handshake decided (`fence`).
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

    /// Accepts, reads, applies, replies. Never waits.
    pub fn pump<D: NetDevice>(&mut self, net: &mut Stack<D>) {
        if self.listener.is_none() {
            match net.tcp_listen(self.port) {
                Ok(h) => self.listener = Some(h),
                Err(e) => {
                    warn!("standby: listen on port {}: {e:?}", self.port);
                    return;
                }
            }
        }
        // A listener that got a connection becomes it.
        if let Some(l) = self.listener {
            if net.is_established(l) {
                self.close(net, "the active device connected again");
                self.listener = None;
                self.connections += 1;
                let ours = self.ours.clone();
                let from = net.remote(l);
                info!("standby: connection {} from {:?}, holding epoch {}", self.connections, from, self.applier.committed_epoch());
                let mut peer = StandbyPeer::accept(ours, &mut self.rng);
                peer.adopt_unrelated = self.adopt_unrelated || self.adopt_once;
                self.conn = Some((l, peer));
            }
        }
        let Some((h, _)) = self.conn.as_ref() else { return };
        let h = *h;
        if matches!(net.state(h), TcpState::Closed | TcpState::CloseWait | TcpState::TimeWait | TcpState::Closing | TcpState::LastAck) {
            self.close(net, "closed by the peer or the network");
            return;
        }
        loop {
            self.scratch.clear();
            let n = net.recv(h, &mut self.scratch, READ_CHUNK);
            if n == 0 {
                break;
            }
            self.bytes_received += n as u64;
            let Some((_, peer)) = self.conn.as_mut() else { return };
            let r = peer.on_bytes(&self.scratch, &self.secret, &mut self.applier);
            if let Some((verdict, theirs, last)) = peer.verdict.take() {
                self.on_verdict(verdict, &theirs, last, r.is_ok());
            }
            let Some((_, peer)) = self.conn.as_mut() else { return };
            match r {
                Ok(events) => {
                    if !events.is_empty() {
                        // A frame opened: the Hello's term is proven.
                        self.term_seen = self.term_seen.max(peer.peer_term);
                    }
                    for (e, d) in peer.commits.drain(..) {
                        info!("standby committed epoch={e} digest={}", hex(&d));
                    }
                    for ev in events {
                        self.on_event(ev);
                    }
                    self.note_torn();
                }
                Err(SessionError::Unrelated(_)) => {
                    self.flush(net);
                    self.close(net, "the active device's guest is not ours");
                    return;
                }
                Err(e) => {
                    self.close(net, "bad or tampered input");
                    warn!("standby: {e:?}");
                    return;
                }
            }
        }
        self.flush(net);
    }
}
