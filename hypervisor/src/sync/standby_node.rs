//! A standby device: no guest runs; it listens for the active device,
//! applies each epoch into staging and commits it atomically into its
//! image, and acknowledges. One active device at a time: a new connection
//! (the active device reconnecting) replaces the old one.
use alloc::vec::Vec;
use log::{info, warn};
use sync_core::applier::Applier;
use sync_core::crypto::PairingSecret;
use sync_core::digest::PageHashes;
use sync_core::standby::Event;
use sync_core::wire::Handshake;

use super::raw_pages::RawPages;
use super::session::StandbyPeer;
use crate::net::stack::{Handle, NetDevice, Stack, TcpState};

const READ_CHUNK: usize = 512 << 10;

pub struct StandbyNode {
    port: u16,
    listener: Option<Handle>,
    conn: Option<(Handle, StandbyPeer)>,
    pub applier: Applier<RawPages>,
    secret: PairingSecret,
    ours: Handshake,
    nonce_seed: u64,
    pub connections: u32,
    pub bytes_received: u64,
    scratch: Vec<u8>,
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
    pub fn new(port: u16, image: RawPages, secret: PairingSecret, ours: Handshake, nonce_seed: u64) -> Self {
        let pages = sync_core::digest::PageMemory::page_count(&image);
        StandbyNode {
            port,
            listener: None,
            conn: None,
            applier: Applier::with_hashes(image, 0, PageHashes::zeroed(pages)),
            secret,
            ours,
            nonce_seed,
            connections: 0,
            bytes_received: 0,
            scratch: Vec::new(),
        }
    }

    fn close<D: NetDevice>(&mut self, net: &mut Stack<D>, why: &str) {
        if let Some((h, _)) = self.conn.take() {
            net.abort(h);
            net.release(h);
            // Whatever was staged is dropped; the committed image stays.
            self.applier.abort();
            warn!("standby: connection closed: {why}; committed epoch stays {}", self.applier.committed_epoch());
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
                self.nonce_seed = self.nonce_seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let mut ours = self.ours.clone();
                ours.nonce[..8].copy_from_slice(&self.nonce_seed.to_le_bytes());
                ours.nonce[8..12].copy_from_slice(&self.connections.to_le_bytes());
                let from = net.remote(l);
                info!("standby: connection {} from {:?}, holding epoch {}", self.connections, from, self.applier.committed_epoch());
                self.conn = Some((l, StandbyPeer::accept(ours)));
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
            match peer.on_bytes(&self.scratch, &self.secret, &mut self.applier) {
                Ok(events) => {
                    for (e, d) in peer.commits.drain(..) {
                        info!("standby committed epoch={e} digest={}", hex(&d));
                    }
                    for ev in events {
                        if let Event::Resyncing(f) = ev {
                            warn!("standby: epoch dropped ({f:?}); asked to resync from {}", self.applier.committed_epoch());
                        }
                    }
                }
                Err(e) => {
                    self.close(net, "bad or tampered input");
                    warn!("standby: {e:?}");
                    return;
                }
            }
        }
        let Some((_, peer)) = self.conn.as_mut() else { return };
        while !peer.outbox.is_empty() {
            let sent = net.send(h, &peer.outbox);
            if sent == 0 {
                break;
            }
            peer.outbox.drain(..sent);
        }
    }
}
