//! One sync connection as a state machine over a byte stream (sans I/O):
//! bytes in from the transport, bytes out in `outbox`. The active side
//! opens with Hello; the standby answers HelloAck naming its committed
//! epoch; both derive the session keys from the pairing secret, an
//! ephemeral X25519 exchange and the transcript; everything after is
//! sealed. Key confirmation: the standby seals its Confirm right after the
//! HelloAck; the active side acts on the HelloAck (the standby's epoch)
//! only once that Confirm opened, then seals its own Confirm before any
//! epoch; the standby counts the connection as its active device's only
//! once that Confirm opened. The same code runs over smoltcp in the
//! hypervisor and over in-memory pipes in host tests.
use alloc::boxed::Box;
use alloc::vec::Vec;
use sync_core::applier::Applier;
use sync_core::compress::ZstdConfig;
use sync_core::crypto::{Drbg, EphemeralKey, PairingSecret, Role};
use sync_core::digest::PageMemoryMut;
use sync_core::epoch::{ActiveEvent, ActiveSync, EpochError, Link};
use sync_core::fence::{judge, Standing, Term, Unrelated, Verdict};
use sync_core::resume::StandbyId;
use sync_core::standby::{Event, StandbyError, StandbyReceiver};
use sync_core::wire::{decode_clear, encode_clear, Epoch, FrameDecoder, Handshake, Message, Session, WireError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// Malformed, tampered or unexpected input: drop the connection.
    Wire(WireError),
    Epoch(EpochError),
    Standby(StandbyError),
    /// The peer's first message was not the handshake it owed us.
    Protocol,
    /// The other side holds another guest or an unrelated history of this
    /// one (`fence`): a standby keeps its image until its user allows.
    Unrelated(Unrelated),
    /// A standby proved (in a sealed frame) that it holds `term` of this
    /// guest, above ours: this device's term is over.
    Fenced {
        term: Term,
    },
}

impl From<WireError> for SessionError {
    fn from(e: WireError) -> Self {
        SessionError::Wire(e)
    }
}
impl From<EpochError> for SessionError {
    fn from(e: EpochError) -> Self {
        SessionError::Epoch(e)
    }
}
impl From<StandbyError> for SessionError {
    fn from(e: StandbyError) -> Self {
        SessionError::Standby(e)
    }
}

enum ActiveState {
    // The key is taken (used up) when the HelloAck arrives. Boxed: the
    // handshake and key outweigh the established state's box.
    AwaitHelloAck {
        hello: Box<Handshake>,
        key: Option<EphemeralKey>,
    },
    // Keys derived; what the standby's HelloAck said in clear (its epoch
    // and standing, judged by `fence`) acts only once its Confirm opened.
    AwaitConfirm {
        session: Option<Box<Session>>,
        verdict: Verdict,
        ours: Term,
    },
    // Boxed: a link (session keys, zstd stream, queue, catch-up) is far
    // larger than a handshake.
    Established {
        link: Box<Link>,
    },
    /// The standby's HelloAck named a higher term; its sealed `Fenced`,
    /// which proves the key, ends our term.
    Fencing {
        session: Box<Session>,
        ours: Term,
    },
}

/// The active device's end of one standby connection.
pub struct ActivePeer {
    pub id: StandbyId,
    state: ActiveState,
    decoder: FrameDecoder,
    /// Bytes for the transport (the Hello until established; after that the
    /// sealed frames live in the link's own `out`).
    pub outbox: Vec<u8>,
    /// The link's budget once established (see `sync_core::catchup`).
    pub budget: usize,
}

impl ActivePeer {
    /// Starts a connection to standby `id` with our handshake `hello`,
    /// whose nonce and ephemeral key are drawn fresh from `rng`.
    pub fn connect(id: StandbyId, mut hello: Handshake, rng: &mut Drbg) -> Result<Self, SessionError> {
        let key = hello.refresh(rng);
        let mut outbox = Vec::new();
        encode_clear(&Message::Hello(hello.clone()), &mut outbox)?;
        Ok(ActivePeer {
            id,
            state: ActiveState::AwaitHelloAck { hello: Box::new(hello), key: Some(key) },
            decoder: FrameDecoder::new(),
            outbox,
            budget: usize::MAX,
        })
    }

    pub fn link_mut(&mut self) -> Option<&mut Link> {
        match &mut self.state {
            ActiveState::Established { link } => Some(link),
            _ => None,
        }
    }

    pub fn link(&self) -> Option<&Link> {
        match &self.state {
            ActiveState::Established { link } => Some(link),
            _ => None,
        }
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, ActiveState::Established { .. })
    }

    /// Bytes waiting for the transport.
    pub fn pending(&self) -> usize {
        self.outbox.len()
            + match &self.state {
                ActiveState::Established { link } => link.queued(),
                _ => 0,
            }
    }

    /// The next bytes for the transport (the handshake first, then sealed
    /// frames); call `consume` with what the transport took.
    pub fn output(&self) -> &[u8] {
        if !self.outbox.is_empty() {
            return &self.outbox;
        }
        match &self.state {
            ActiveState::Established { link } => link.out.front(),
            _ => &[],
        }
    }

    pub fn consume(&mut self, n: usize) {
        if !self.outbox.is_empty() {
            self.outbox.drain(..n.min(self.outbox.len()));
        } else if let ActiveState::Established { link } = &mut self.state {
            link.out.consume(n);
        }
    }

    /// Moves everything pending into `out` (for in-memory transports).
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        loop {
            let chunk = self.output();
            if chunk.is_empty() {
                return;
            }
            let n = chunk.len();
            out.extend_from_slice(chunk);
            self.consume(n);
        }
    }

    /// Bytes from the standby. On an error the connection must be dropped
    /// (and `ActiveSync::disconnect` called).
    pub fn on_bytes(&mut self, mut bytes: &[u8], secret: &PairingSecret, active: &mut ActiveSync) -> Result<Vec<ActiveEvent>, SessionError> {
        let mut events = Vec::new();
        while let Some(frame) = self.decoder.decode(&mut bytes)? {
            match &mut self.state {
                ActiveState::AwaitHelloAck { hello, key } => {
                    let Message::HelloAck(ack) = decode_clear(&frame)? else { return Err(SessionError::Protocol) };
                    hello.check_peer(&ack)?;
                    let key = key.take().ok_or(SessionError::Protocol)?;
                    let session = Session::establish(secret, Role::Initiator, hello, &ack, key)?;
                    // The standby judges the same pair (`fence`). An unrelated
                    // standby sends no Confirm: dropping the connection is all
                    // this acts on, which anyone on the path could do anyway.
                    let verdict = judge(&hello.standing, hello.last_committed, &ack.standing, ack.last_committed);
                    if let Verdict::Unrelated(why) = verdict {
                        return Err(SessionError::Unrelated(why));
                    }
                    let ours = hello.standing.term;
                    self.state = ActiveState::AwaitConfirm { session: Some(Box::new(session)), verdict, ours };
                }
                ActiveState::AwaitConfirm { session, verdict, ours } => {
                    let mut session = session.take().ok_or(SessionError::Protocol)?;
                    // The standby proves the key; only now does what it said count.
                    session.open_confirm(frame)?;
                    let base = match *verdict {
                        Verdict::Follow { base } => base,
                        Verdict::Rewind => 0,
                        Verdict::Fence { .. } => {
                            // Its sealed `Fenced` comes next and ends our term.
                            let ours = *ours;
                            self.state = ActiveState::Fencing { session, ours };
                            continue;
                        }
                        Verdict::Unrelated(why) => return Err(SessionError::Unrelated(why)),
                    };
                    session.seal_confirm(&mut self.outbox)?;
                    active.connect(self.id, base)?;
                    let mut link = Link::new(self.id, *session, ZstdConfig::default())?;
                    link.set_budget(self.budget);
                    self.state = ActiveState::Established { link: Box::new(link) };
                    events.push(ActiveEvent::Resync(base));
                }
                ActiveState::Established { link } => events.push(active.on_frame(link, frame)?),
                ActiveState::Fencing { session, ours } => {
                    return match session.open(frame)? {
                        Message::Fenced { term } if term > *ours => Err(SessionError::Fenced { term }),
                        _ => Err(SessionError::Protocol),
                    };
                }
            }
        }
        Ok(events)
    }
}

enum StandbyState {
    AwaitHello,
    // HelloAck and our Confirm sent; the active side's Confirm must open
    // before anything it sends reaches the applier (then `lineage` and
    // `forget` apply: see `StandbyReceiver::set_lineage`).
    AwaitConfirm {
        session: Option<Box<Session>>,
        lineage: Standing,
        forget: bool,
    },
    // Boxed: a receiver (session, zstd context) outweighs the others.
    Established {
        rx: Box<StandbyReceiver>,
    },
    /// We told a lower term it is over (`Fenced`); nothing more is read.
    Fenced,
}

/// The standby device's end of the connection from the active device.
pub struct StandbyPeer {
    state: StandbyState,
    decoder: FrameDecoder,
    pub outbox: Vec<u8>,
    ours: Handshake,
    /// Our ephemeral key, until the Hello arrives.
    key: Option<EphemeralKey>,
    /// Bytes that came after the active side's Confirm in the same read,
    /// held until the next `on_bytes` (see there).
    backlog: Vec<u8>,
    /// Each commit with the image's digest right after it (several epochs
    /// may commit in one `on_bytes`).
    pub commits: Vec<(Epoch, sync_core::wire::Digest)>,
    /// Events of the read that ended in an error, decoded before it (see
    /// `on_bytes`); the caller takes them.
    pub before_error: Vec<Event>,
    /// The image may be replaced by another guest or an unrelated history
    /// (the user's explicit choice; `fence`).
    pub adopt_unrelated: bool,
    /// What the handshake decided, and the active side's standing and last
    /// cut as its Hello said (for the standby's log).
    pub verdict: Option<(Verdict, Standing, Epoch)>,
    /// The active side's term, as its Hello said (proven once a frame opens).
    pub peer_term: Term,
}

impl StandbyPeer {
    /// `ours`: our handshake; its nonce and ephemeral key are drawn fresh
    /// from `rng` (the committed epoch is filled in when the Hello comes).
    pub fn accept(mut ours: Handshake, rng: &mut Drbg) -> Self {
        let key = Some(ours.refresh(rng));
        StandbyPeer {
            state: StandbyState::AwaitHello,
            decoder: FrameDecoder::new(),
            outbox: Vec::new(),
            ours,
            key,
            backlog: Vec::new(),
            commits: Vec::new(),
            before_error: Vec::new(),
            adopt_unrelated: false,
            verdict: None,
            peer_term: 0,
        }
    }

    /// The active side proved the key (its Confirm opened).
    pub fn is_established(&self) -> bool {
        matches!(self.state, StandbyState::Established { .. })
    }

    /// Bytes held after the Confirm, for the next `on_bytes`.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Bytes from the active device; epochs go into `applier`. On an error
    /// the connection must be dropped; the committed image is untouched.
    /// Until the connection is established only the handshake is read
    /// (`applier` is not changed); the call that establishes it returns
    /// right after the Confirm and keeps the bytes after it for the next
    /// call (with any input, even none), so the caller can first make this
    /// connection the one it serves (dropping another's staged epoch).
    /// Events decoded before an error in the same read are not lost: they
    /// wait in `before_error` (a commit stays a commit, with its state).
    pub fn on_bytes<M: PageMemoryMut>(&mut self, bytes: &[u8], secret: &PairingSecret, applier: &mut Applier<M>) -> Result<Vec<Event>, SessionError> {
        let mut events = Vec::new();
        match self.read(bytes, secret, applier, &mut events) {
            Ok(()) => Ok(events),
            Err(e) => {
                self.before_error = events;
                Err(e)
            }
        }
    }

    fn read<M: PageMemoryMut>(&mut self, bytes: &[u8], secret: &PairingSecret, applier: &mut Applier<M>, events: &mut Vec<Event>) -> Result<(), SessionError> {
        let held;
        let mut bytes = match self.backlog.is_empty() {
            true => bytes,
            false => {
                self.backlog.extend_from_slice(bytes);
                held = core::mem::take(&mut self.backlog);
                &held[..]
            }
        };
        while let Some(frame) = self.decoder.decode(&mut bytes)? {
            match &mut self.state {
                StandbyState::AwaitHello => {
                    let Message::Hello(hello) = decode_clear(&frame)? else { return Err(SessionError::Protocol) };
                    let mut ack = self.ours.clone();
                    ack.last_committed = applier.committed_epoch();
                    let (lineage, term) = applier.lineage();
                    ack.standing = Standing { lineage, term, digest: applier.digest(), ..Standing::default() };
                    ack.check_peer(&hello)?;
                    let verdict = judge(&hello.standing, hello.last_committed, &ack.standing, ack.last_committed);
                    self.verdict = Some((verdict, hello.standing, hello.last_committed));
                    self.peer_term = hello.standing.term;
                    let forget = match verdict {
                        Verdict::Follow { .. } => false,
                        Verdict::Rewind => true,
                        Verdict::Fence { .. } => false,
                        Verdict::Unrelated(_) if self.adopt_unrelated => {
                            // As a standby holding nothing: the active side
                            // sends the whole image.
                            ack.last_committed = 0;
                            ack.standing = Standing::default();
                            true
                        }
                        Verdict::Unrelated(why) => {
                            // The HelloAck goes out so the active side learns why.
                            encode_clear(&Message::HelloAck(ack), &mut self.outbox)?;
                            return Err(SessionError::Unrelated(why));
                        }
                    };
                    encode_clear(&Message::HelloAck(ack.clone()), &mut self.outbox)?;
                    let key = self.key.take().ok_or(SessionError::Protocol)?;
                    let mut session = Session::establish(secret, Role::Responder, &hello, &ack, key)?;
                    session.seal_confirm(&mut self.outbox)?;
                    if let Verdict::Fence { term } = verdict {
                        // Sealed, so the active side can trust it once it
                        // opens: its term is over.
                        session.seal(&Message::Fenced { term }, &mut self.outbox)?;
                        self.state = StandbyState::Fenced;
                        continue;
                    }
                    self.state = StandbyState::AwaitConfirm { session: Some(Box::new(session)), lineage: hello.standing, forget };
                }
                StandbyState::AwaitConfirm { session, lineage, forget } => {
                    let mut session = session.take().ok_or(SessionError::Protocol)?;
                    session.open_confirm(frame)?;
                    let mut rx = StandbyReceiver::new(*session, ZstdConfig::default())?;
                    rx.set_lineage(lineage.lineage, lineage.term, *forget);
                    self.state = StandbyState::Established { rx: Box::new(rx) };
                    self.backlog.extend_from_slice(bytes);
                    return Ok(());
                }
                StandbyState::Fenced => {}
                StandbyState::Established { rx } => {
                    let ev = rx.on_frame(frame, applier, &mut self.outbox);
                    if ev.is_err() {
                        applier.abort();
                    }
                    let ev = ev?;
                    if let Event::Committed(e) = ev {
                        self.commits.push((e, applier.digest()));
                    }
                    events.push(ev);
                }
            }
        }
        Ok(())
    }

    /// The standby asks for the guest (its user picked this device up).
    pub fn request_switch(&mut self) -> Result<(), SessionError> {
        self.send(&Message::SwitchRequest)
    }

    /// Seals `msg` (ours: SwitchRequest, SwitchTaken) onto `outbox`.
    pub fn send(&mut self, msg: &Message) -> Result<(), SessionError> {
        match &mut self.state {
            StandbyState::Established { rx } => {
                rx.send(msg, &mut self.outbox)?;
                Ok(())
            }
            _ => Err(SessionError::Protocol),
        }
    }
}

/// The epoch a standby holds, for logs.
pub fn committed<M: PageMemoryMut>(applier: &Applier<M>) -> Epoch {
    applier.committed_epoch()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use sync_core::digest::{content_digest, PageHashes, PageMemory, VecMemory};
    use sync_core::shadow::Budget;
    use sync_core::wire::{RamLayout, PROTOCOL_VERSION, WIRE_PAGE_SIZE};

    const PAGES: u64 = 8;

    fn hs(nonce: u8) -> Handshake {
        Handshake {
            version: PROTOCOL_VERSION,
            vm_id: [1; 16],
            platform_id: [2; 32],
            ram: RamLayout { base: 0x4000_0000, size: PAGES * WIRE_PAGE_SIZE as u64 },
            page_size: WIRE_PAGE_SIZE,
            last_committed: 0,
            nonce: [nonce; 32],
            ephemeral: [0; 32],
            standing: Default::default(),
        }
    }

    /// Moves everything each side has for the other until both are quiet.
    fn pump(
        a: &mut ActivePeer,
        s: &mut StandbyPeer,
        sa: &PairingSecret,
        ss: &PairingSecret,
        active: &mut ActiveSync,
        applier: &mut Applier<VecMemory>,
    ) -> Result<(), SessionError> {
        loop {
            let mut to_s = Vec::new();
            a.take_output(&mut to_s);
            let to_a = core::mem::take(&mut s.outbox);
            if to_s.is_empty() && to_a.is_empty() && !s.has_backlog() {
                return Ok(());
            }
            s.on_bytes(&to_s, ss, applier)?;
            a.on_bytes(&to_a, sa, active)?;
        }
    }

    /// A fresh active side with standby `id`, its peer's Hello queued, and
    /// a standby peer over an all-zero image of epoch 0.
    fn parties() -> (ActiveSync, StandbyId, ActivePeer, StandbyPeer, Applier<VecMemory>) {
        let mut active = ActiveSync::new(PAGES, Budget::Full).unwrap();
        let id = active.add_standby();
        let a = ActivePeer::connect(id, hs(1), &mut Drbg::new([1; 32])).unwrap();
        let s = StandbyPeer::accept(hs(2), &mut Drbg::new([2; 32]));
        let applier = Applier::with_hashes(VecMemory::zeroed(PAGES as usize), 0, PageHashes::zeroed(PAGES));
        (active, id, a, s, applier)
    }

    fn guest() -> VecMemory {
        let mut g = VecMemory::zeroed(PAGES as usize);
        for (i, p) in g.pages_mut().iter_mut().enumerate() {
            p[i * 7] = i as u8 + 1;
        }
        g
    }

    #[test]
    fn handshake_then_epochs_commit_on_the_standby() {
        let secret = PairingSecret::new([9; 32]);
        let mut g = guest();
        let (mut active, id, mut a, mut s, mut applier) = parties();
        pump(&mut a, &mut s, &secret, &secret, &mut active, &mut applier).unwrap();
        assert!(a.is_established() && s.is_established());
        for round in 0..3u8 {
            g.pages_mut()[3][100] = round;
            let link = a.link_mut().unwrap();
            active.cut([3u64], &g, &mut [link]).unwrap();
            pump(&mut a, &mut s, &secret, &secret, &mut active, &mut applier).unwrap();
            assert_eq!(applier.committed_epoch(), round as u64 + 1);
            assert_eq!(content_digest(applier.image()), content_digest(&g));
        }
        assert_eq!(active.tracker().standby(id).unwrap().acked, 3);
    }

    /// One read holds a whole epoch with its state, then a bad frame: the
    /// error ends the connection, but the commit and the state decoded
    /// before it are handed over (`before_error`), not dropped.
    #[test]
    fn events_before_a_bad_frame_in_the_same_read_are_kept() {
        let secret = PairingSecret::new([9; 32]);
        let g = guest();
        let (mut active, _, mut a, mut s, mut applier) = parties();
        pump(&mut a, &mut s, &secret, &secret, &mut active, &mut applier).unwrap();
        let state = [Message::CpuState(std::vec![1, 2, 3]), Message::DeviceState(std::vec![4])];
        active.cut_with_state(0..PAGES, &g, &mut [a.link_mut().unwrap()], &state).unwrap();
        let mut bytes = Vec::new();
        a.take_output(&mut bytes);
        // A frame whose tag fails: its length says 4 bytes, its content is junk.
        bytes.extend_from_slice(&[4, 0, 0, 0, 0xff, 1, 2, 3, 4]);
        assert!(s.on_bytes(&bytes, &secret, &mut applier).is_err());
        assert_eq!(applier.committed_epoch(), 1);
        assert_eq!(
            s.before_error,
            std::vec![Event::None, Event::None, Event::CpuState(std::vec![1, 2, 3]), Event::DeviceState(std::vec![4]), Event::Committed(1)],
            "the epoch's events were dropped with the bad frame"
        );
    }

    #[test]
    fn a_wrong_secret_is_refused_and_nothing_is_committed() {
        let (mut active, _, mut a, mut s, mut applier) = parties();
        let (right, wrong) = (PairingSecret::new([9; 32]), PairingSecret::new([8; 32]));
        // The handshake itself is in clear; the keys differ, so the first
        // sealed frame (the standby's Confirm) fails to open.
        let r = pump(&mut a, &mut s, &right, &wrong, &mut active, &mut applier);
        assert_eq!(r.err(), Some(SessionError::Wire(WireError::Crypto(sync_core::crypto::CryptoError::Authentication))));
        assert!(!a.is_established() && !s.is_established());
        assert_eq!(applier.committed_epoch(), 0);
        assert!(applier.image().page(0).unwrap().iter().all(|&b| b == 0));
    }

    /// Key confirmation: a HelloAck from a peer without the key (here one
    /// that claims epoch 40 of a guest whose active side cut 50) acts on
    /// nothing: the active side never takes the epoch as the standby's
    /// base, never counts the session, never seals an epoch for it.
    /// Before the Confirm existed the HelloAck alone set the base.
    #[test]
    fn a_helloack_without_the_key_acts_on_nothing() {
        let mut active = ActiveSync::new(PAGES, Budget::Full).unwrap();
        let g = guest();
        for _ in 0..50 {
            active.cut([0u64], &g, &mut []).unwrap();
        }
        let id = active.add_standby();
        // One guest and term on both sides: the standby's epoch 40 is on the
        // active device's history (`fence`).
        let (lineage, term) = ([7; 16], 1 << 16);
        let mut hello = hs(1);
        (hello.last_committed, hello.standing.lineage, hello.standing.term) = (50, lineage, term);
        let mut a = ActivePeer::connect(id, hello, &mut Drbg::new([1; 32])).unwrap();
        let mut s = StandbyPeer::accept(hs(2), &mut Drbg::new([2; 32]));
        let mut applier = Applier::with_hashes(VecMemory::zeroed(PAGES as usize), 40, PageHashes::zeroed(PAGES));
        applier.set_lineage(lineage, term);
        let mut to_s = Vec::new();
        a.take_output(&mut to_s);
        s.on_bytes(&to_s, &PairingSecret::new([8; 32]), &mut applier).unwrap();
        // The intruder's HelloAck alone, then with its Confirm.
        let reply = core::mem::take(&mut s.outbox);
        let ack_len = 5 + u32::from_le_bytes(reply[..4].try_into().unwrap()) as usize;
        let events = a.on_bytes(&reply[..ack_len], &PairingSecret::new([9; 32]), &mut active).unwrap();
        assert!(events.is_empty(), "{events:?}");
        assert!(!active.tracker().standby(id).unwrap().connected, "the clear HelloAck set the standby's base");
        assert!(a.on_bytes(&reply[ack_len..], &PairingSecret::new([9; 32]), &mut active).is_err());
        assert!(!active.tracker().standby(id).unwrap().connected);
        assert!(!a.is_established() && a.output().is_empty(), "nothing sealed for a peer without the key");
    }

    /// The standby's side: a peer that sends a Hello but no Confirm (or a
    /// forged one) is never established and its bytes never reach the
    /// applier; with the key, bytes after the Confirm wait for the caller.
    #[test]
    fn the_standby_waits_for_the_confirm_and_holds_what_follows() {
        let secret = PairingSecret::new([9; 32]);
        let mut g = guest();
        let (mut active, _, mut a, mut s, mut applier) = parties();
        let mut to_s = Vec::new();
        a.take_output(&mut to_s);
        s.on_bytes(&to_s, &secret, &mut applier).unwrap();
        assert!(!s.is_established(), "a Hello proves nothing");
        // A forged Confirm (a Hello's bytes where the sealed frame goes).
        let mut forged = StandbyPeer::accept(hs(2), &mut Drbg::new([2; 32]));
        forged.on_bytes(&to_s, &secret, &mut applier).unwrap();
        assert!(forged.on_bytes(&to_s, &secret, &mut applier).is_err());
        assert!(!forged.is_established());
        // The real one: its Confirm and an epoch in one read.
        a.on_bytes(&core::mem::take(&mut s.outbox), &secret, &mut active).unwrap();
        assert!(a.is_established());
        g.pages_mut()[3][100] = 7;
        active.cut([3u64], &g, &mut [a.link_mut().unwrap()]).unwrap();
        let mut to_s = Vec::new();
        a.take_output(&mut to_s);
        let events = s.on_bytes(&to_s, &secret, &mut applier).unwrap();
        assert!(s.is_established() && s.has_backlog() && events.is_empty());
        assert_eq!(applier.committed_epoch(), 0, "the epoch waited for the caller");
        s.on_bytes(&[], &secret, &mut applier).unwrap();
        assert_eq!(applier.committed_epoch(), 1);
        assert!(!s.has_backlog());
    }

    /// A recording of a whole session (Hello, Confirm, epochs) replayed to
    /// the standby after it rebooted (so a fresh ephemeral key, whatever
    /// its nonce generator did): the recorded Confirm does not open under
    /// the new keys, nothing commits, and the connection is dropped.
    #[test]
    fn a_replayed_session_commits_nothing_after_a_reboot() {
        let secret = PairingSecret::new([9; 32]);
        let mut g = guest();
        let (mut active, _, mut a, mut s, mut applier) = parties();
        let mut recording = Vec::new();
        let mut to_s = Vec::new();
        a.take_output(&mut to_s);
        recording.extend_from_slice(&to_s);
        s.on_bytes(&to_s, &secret, &mut applier).unwrap();
        a.on_bytes(&core::mem::take(&mut s.outbox), &secret, &mut active).unwrap();
        g.pages_mut()[3][100] = 7;
        active.cut([3u64], &g, &mut [a.link_mut().unwrap()]).unwrap();
        let mut to_s = Vec::new();
        a.take_output(&mut to_s);
        recording.extend_from_slice(&to_s);
        s.on_bytes(&to_s, &secret, &mut applier).unwrap();
        s.on_bytes(&[], &secret, &mut applier).unwrap();
        assert_eq!(applier.committed_epoch(), 1, "the recorded session worked");
        // Rebooted: a new image, a generator seeded anew from the board.
        let mut fresh = Applier::with_hashes(VecMemory::zeroed(PAGES as usize), 0, PageHashes::zeroed(PAGES));
        let mut again = StandbyPeer::accept(hs(2), &mut Drbg::new([3; 32]));
        assert!(again.on_bytes(&recording, &secret, &mut fresh).is_err());
        assert!(!again.is_established());
        assert_eq!(fresh.committed_epoch(), 0);
        // Even a generator that repeats its nonce (the same seed) draws the
        // same ephemeral key only with it: the control shows the replay
        // would pass then, so it is the fresh key that stops it.
        let mut same = StandbyPeer::accept(hs(2), &mut Drbg::new([2; 32]));
        let mut control = Applier::with_hashes(VecMemory::zeroed(PAGES as usize), 0, PageHashes::zeroed(PAGES));
        same.on_bytes(&recording, &secret, &mut control).unwrap();
        same.on_bytes(&[], &secret, &mut control).unwrap();
        assert_eq!(control.committed_epoch(), 1);
    }

    #[test]
    fn garbage_instead_of_a_hello_is_an_error_not_a_panic() {
        let mut s = StandbyPeer::accept(hs(2), &mut Drbg::new([2; 32]));
        let mut applier = Applier::with_hashes(VecMemory::zeroed(PAGES as usize), 0, PageHashes::zeroed(PAGES));
        let secret = PairingSecret::new([9; 32]);
        for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xff; 64], &[0u8; 5]] {
            let mut s2 = StandbyPeer::accept(hs(2), &mut Drbg::new([2; 32]));
            let _ = s2.on_bytes(junk, &secret, &mut applier);
        }
        assert!(s.on_bytes(&[0xff; 64], &secret, &mut applier).is_err());
        assert_eq!(applier.committed_epoch(), 0);
    }
}
