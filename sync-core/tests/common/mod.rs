//! A simulated active device and standbys joined by in-memory streams,
//! through the real handshake, sealing, framing, zstd and applier.
#![allow(dead_code)] // each test binary uses a different part

use sync_core::applier::Applier;
use sync_core::compress::ZstdConfig;
use sync_core::crypto::{Drbg, PairingSecret, Role};
use sync_core::digest::{content_digest, PageHashes, PageMemory, VecMemory};
use sync_core::epoch::{ActiveEvent, ActiveSync, Link};
use sync_core::resume::StandbyId;
use sync_core::shadow::Budget;
use sync_core::standby::{Event, StandbyReceiver};
use sync_core::wire::{decode_clear, encode_clear, Digest, Epoch, FrameDecoder, Handshake, Message, RamLayout, Session, PROTOCOL_VERSION, WIRE_PAGE_SIZE};

pub const SECRET: PairingSecret = PairingSecret::new([0x42; 32]);

pub fn handshake_for(pages: u64, last_committed: Epoch, nonce: [u8; 32]) -> Handshake {
    Handshake {
        version: PROTOCOL_VERSION,
        vm_id: [7; 16],
        platform_id: [9; 32],
        ram: RamLayout { base: 0x4000_0000, size: pages * WIRE_PAGE_SIZE as u64 },
        page_size: WIRE_PAGE_SIZE,
        last_committed,
        nonce,
        ephemeral: [0; 32],
        standing: Default::default(),
    }
}

/// Runs Hello / HelloAck over bytes, as two devices would. Returns the
/// active side's and the standby's sessions.
pub fn handshake(pages: u64, active_last: Epoch, standby_committed: Epoch, nonce_seed: u64) -> (Session, Session) {
    let mut n1 = [0u8; 32];
    let mut n2 = [1u8; 32];
    n1[..8].copy_from_slice(&nonce_seed.to_le_bytes());
    n2[..8].copy_from_slice(&nonce_seed.to_le_bytes());
    let mut hello = handshake_for(pages, active_last, n1);
    let mut rng = Drbg::new(n1);
    let k_active = hello.refresh(&mut rng);
    hello.nonce = n1;
    let mut wire = Vec::new();
    encode_clear(&Message::Hello(hello.clone()), &mut wire).unwrap();
    // Standby side.
    let mut dec = FrameDecoder::new();
    let mut input = &wire[..];
    let f = dec.decode(&mut input).unwrap().unwrap();
    let Message::Hello(got_hello) = decode_clear(&f).unwrap() else { panic!("not a Hello") };
    let mut ack = handshake_for(pages, standby_committed, n2);
    let k_standby = ack.refresh(&mut rng);
    ack.nonce = n2;
    ack.check_peer(&got_hello).unwrap();
    let mut back = Vec::new();
    encode_clear(&Message::HelloAck(ack.clone()), &mut back).unwrap();
    let mut standby = Session::establish(&SECRET, Role::Responder, &got_hello, &ack, k_standby).unwrap();
    // Active side.
    let mut dec = FrameDecoder::new();
    let mut input = &back[..];
    let f = dec.decode(&mut input).unwrap().unwrap();
    let Message::HelloAck(got_ack) = decode_clear(&f).unwrap() else { panic!("not a HelloAck") };
    hello.check_peer(&got_ack).unwrap();
    let mut active = Session::establish(&SECRET, Role::Initiator, &hello, &got_ack, k_active).unwrap();
    confirm(&mut active, &mut standby);
    (active, standby)
}

/// Key confirmation: each side's first sealed frame opened by the other.
pub fn confirm(active: &mut Session, standby: &mut Session) {
    let one = |from: &mut Session| {
        let mut out = Vec::new();
        from.seal_confirm(&mut out).unwrap();
        FrameDecoder::new().decode(&mut &out[..]).unwrap().unwrap()
    };
    active.open_confirm(one(standby)).unwrap();
    standby.open_confirm(one(active)).unwrap();
}

/// One standby device and its connection (if up).
pub struct Standby {
    pub id: StandbyId,
    pub applier: Applier<VecMemory>,
    pub conn: Option<Conn>,
}

pub struct Conn {
    pub link: Link,
    pub rx: StandbyReceiver,
    pub rx_dec: FrameDecoder,
    pub tx_dec: FrameDecoder,
}

pub struct World {
    pub guest: VecMemory,
    pub active: ActiveSync,
    pub standbys: Vec<Standby>,
    /// content_digest of the guest at each cut epoch (index = epoch).
    pub history: Vec<Digest>,
    pub dirty: Vec<u64>,
    /// Check after every frame that each image is a committed epoch's
    /// (off only for a test that rots an image on purpose).
    pub check: bool,
    nonce: u64,
}

impl World {
    pub fn new(guest: VecMemory, standbys: usize, budget: Budget) -> Self {
        let n = guest.page_count();
        let mut active = ActiveSync::new(n, budget).unwrap();
        let zero = VecMemory::zeroed(n as usize);
        let history = vec![content_digest(&zero)];
        let standbys = (0..standbys)
            .map(|_| Standby { id: active.add_standby(), applier: Applier::with_hashes(zero.clone(), 0, PageHashes::zeroed(n)), conn: None })
            .collect();
        World { guest, active, standbys, history, dirty: Vec::new(), check: true, nonce: 0 }
    }

    pub fn connect(&mut self, i: usize) {
        self.nonce += 1;
        let n = self.guest.page_count();
        let s = &mut self.standbys[i];
        let committed = s.applier.committed_epoch();
        let (a, b) = handshake(n, self.active.tracker().last_cut(), committed, self.nonce);
        self.active.connect(s.id, committed).unwrap();
        s.conn = Some(Conn {
            link: Link::new(s.id, a, ZstdConfig::default()).unwrap(),
            rx: StandbyReceiver::new(b, ZstdConfig::default()).unwrap(),
            rx_dec: FrameDecoder::new(),
            tx_dec: FrameDecoder::new(),
        });
    }

    /// The connection of standby `i` breaks: both ends drop it.
    pub fn disconnect(&mut self, i: usize) {
        let s = &mut self.standbys[i];
        if s.conn.take().is_some() {
            s.applier.abort();
            self.active.disconnect(s.id).unwrap();
        }
    }

    pub fn write(&mut self, page: u64, offset: usize, bytes: &[u8]) {
        let p = &mut self.guest.pages_mut()[page as usize];
        let end = (offset + bytes.len()).min(p.len());
        p[offset..end].copy_from_slice(&bytes[..end - offset]);
        self.dirty.push(page);
    }

    /// Cuts an epoch and delivers each connected standby's stream; where
    /// `breaks[i]` is given, only that many thousandths of the stream
    /// arrive and the link breaks. Returns the epoch and the stats of each
    /// connected link, in standby order.
    pub fn cut(&mut self, breaks: &[Option<u32>]) -> (Epoch, Vec<sync_core::stats::EpochStats>) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut links: Vec<&mut Link> = self.standbys.iter_mut().filter_map(|s| s.conn.as_mut().map(|c| &mut c.link)).collect();
        let (m, stats) = self.active.cut(dirty, &self.guest, &mut links).unwrap();
        assert_eq!(self.history.len() as u64, m);
        self.history.push(content_digest(&self.guest));
        for i in 0..self.standbys.len() {
            let limit = breaks.get(i).copied().flatten();
            self.deliver(i, limit);
        }
        (m, stats)
    }

    /// Delivers what the active side queued for standby `i` (only
    /// `break_permille`/1000 of it, then the link breaks, if given), and
    /// the standby's replies.
    pub fn deliver(&mut self, i: usize, break_permille: Option<u32>) {
        let s = &mut self.standbys[i];
        let Some(c) = s.conn.as_mut() else { return };
        let bytes = c.link.out.take_all();
        let limit = break_permille.map(|k| bytes.len() * k.min(999) as usize / 1000);
        let n = limit.unwrap_or(bytes.len());
        let mut input = &bytes[..n];
        let mut replies = Vec::new();
        let mut dead = false;
        while !input.is_empty() {
            match c.rx_dec.decode(&mut input) {
                Ok(Some(f)) => match c.rx.on_frame(f, &mut s.applier, &mut replies) {
                    Ok(Event::Resyncing(e)) => panic!("honest stream failed to apply: {e:?}"),
                    Ok(_) => {}
                    Err(e) => panic!("honest stream failed: {e:?}"),
                },
                Ok(None) => {}
                Err(e) => panic!("honest stream failed to frame: {e:?}"),
            }
            if self.check {
                assert_image_is_a_committed_epoch(&s.applier, &self.history);
            }
        }
        if limit.is_some_and(|l| l < bytes.len()) {
            dead = true;
        }
        let mut input = &replies[..];
        while !input.is_empty() && !dead {
            if let Some(f) = c.tx_dec.decode(&mut input).unwrap() {
                match self.active.on_frame(&mut c.link, f).unwrap() {
                    ActiveEvent::Acked(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        if dead {
            self.disconnect(i);
        }
    }
}

/// The standby's committed image is the guest at its committed epoch.
pub fn assert_image_is_a_committed_epoch(a: &Applier<VecMemory>, history: &[Digest]) {
    let e = a.committed_epoch() as usize;
    assert!(e < history.len(), "standby claims epoch {e} never cut");
    assert_eq!(content_digest(a.image()), history[e], "standby image differs from the guest at epoch {e}");
    // The incremental digest agrees with the image.
    assert_eq!(a.digest(), PageHashes::of_memory(a.image()).digest());
}
