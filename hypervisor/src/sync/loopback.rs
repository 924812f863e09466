//! A standby in the same hypervisor, reached through the real sealed wire
//! format: what `--verify` compares the guest against. The handshake is
//! the one two devices make (Hello, HelloAck, keys from the pairing secret,
//! an X25519 exchange and the transcript, both Confirms), run in memory.
use alloc::vec::Vec;
use sync_core::applier::Applier;
use sync_core::compress::ZstdConfig;
use sync_core::crypto::{Drbg, PairingSecret, Role};
use sync_core::digest::{PageHashes, PageMemoryMut};
use sync_core::standby::{Event, StandbyReceiver};
use sync_core::wire::{decode_clear, encode_clear, Frame, FrameDecoder, Handshake, Message, RamLayout, Session, WireError, PROTOCOL_VERSION, WIRE_PAGE_SIZE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopbackError {
    Wire(WireError),
    /// The standby side failed to start (zstd context).
    Standby,
    NotAHandshake,
}

impl From<WireError> for LoopbackError {
    fn from(e: WireError) -> Self {
        LoopbackError::Wire(e)
    }
}

/// The pairing secret of the in-process pair. Not a secret: nothing leaves
/// the machine on this path.
const LOCAL_SECRET: PairingSecret = PairingSecret::new([0x5a; 32]);

/// One side's handshake for the local pair (both start at epoch 0).
pub fn handshake(ram: RamLayout, nonce: [u8; 32]) -> Handshake {
    Handshake {
        version: PROTOCOL_VERSION,
        vm_id: *b"vmsync-guest-000",
        platform_id: *b"vmsync-virt-aarch64-gicv3-pl011\0",
        ram,
        page_size: WIRE_PAGE_SIZE,
        last_committed: 0,
        nonce,
        ephemeral: [0; 32],
        standing: Default::default(),
    }
}

fn one_frame(bytes: &[u8]) -> Result<Message, LoopbackError> {
    let mut dec = FrameDecoder::new();
    let mut input = bytes;
    let frame = dec.decode(&mut input)?.ok_or(LoopbackError::NotAHandshake)?;
    Ok(decode_clear(&frame)?)
}

/// The one sealed frame in `bytes`.
fn one_sealed(bytes: &[u8]) -> Result<Frame, LoopbackError> {
    FrameDecoder::new().decode(&mut &bytes[..])?.ok_or(LoopbackError::NotAHandshake)
}

/// Runs Hello/HelloAck and both Confirms in memory; returns (active session, standby session).
pub fn session_pair(ram: RamLayout, nonce_a: [u8; 32], nonce_b: [u8; 32]) -> Result<(Session, Session), LoopbackError> {
    // Fixed seeds: this pair never leaves the machine.
    let mut hello = handshake(ram, nonce_a);
    let k_active = hello.refresh(&mut Drbg::new(nonce_a));
    hello.nonce = nonce_a;
    let mut wire = Vec::new();
    encode_clear(&Message::Hello(hello.clone()), &mut wire)?;
    let Message::Hello(got_hello) = one_frame(&wire)? else { return Err(LoopbackError::NotAHandshake) };
    let mut ack = handshake(ram, nonce_b);
    let k_standby = ack.refresh(&mut Drbg::new(nonce_b));
    ack.nonce = nonce_b;
    ack.check_peer(&got_hello)?;
    let mut standby = Session::establish(&LOCAL_SECRET, Role::Responder, &got_hello, &ack, k_standby)?;
    wire.clear();
    encode_clear(&Message::HelloAck(ack), &mut wire)?;
    let Message::HelloAck(got_ack) = one_frame(&wire)? else { return Err(LoopbackError::NotAHandshake) };
    hello.check_peer(&got_ack)?;
    let mut active = Session::establish(&LOCAL_SECRET, Role::Initiator, &hello, &got_ack, k_active)?;
    // Key confirmation, as over a wire: each side's Confirm opened by the other.
    wire.clear();
    standby.seal_confirm(&mut wire)?;
    active.open_confirm(one_sealed(&wire)?)?;
    wire.clear();
    active.seal_confirm(&mut wire)?;
    standby.open_confirm(one_sealed(&wire)?)?;
    Ok((active, standby))
}

/// The standby half: receiver, applier and the committed image.
pub struct LocalStandby<M: PageMemoryMut> {
    pub rx: StandbyReceiver,
    pub applier: Applier<M>,
    decoder: FrameDecoder,
    /// Sealed replies (Acks, Resyncs) for the active side.
    pub replies: Vec<u8>,
}

impl<M: PageMemoryMut> LocalStandby<M> {
    /// A standby holding the all-zero image of epoch 0 in `image` (which the
    /// caller must have zeroed).
    pub fn new(session: Session, image: M) -> Result<Self, LoopbackError> {
        let n = image.page_count();
        Ok(LocalStandby {
            rx: StandbyReceiver::new(session, ZstdConfig::default()).map_err(|_| LoopbackError::Standby)?,
            applier: Applier::with_hashes(image, 0, PageHashes::zeroed(n)),
            decoder: FrameDecoder::new(),
            replies: Vec::new(),
        })
    }

    /// Feeds bytes from the active side; returns the events in order.
    pub fn receive(&mut self, mut bytes: &[u8]) -> Result<Vec<Event>, LoopbackError> {
        let mut events = Vec::new();
        while let Some(frame) = self.decoder.decode(&mut bytes)? {
            let ev = self.rx.on_frame(frame, &mut self.applier, &mut self.replies).map_err(|_| LoopbackError::Standby)?;
            events.push(ev);
        }
        Ok(events)
    }
}
