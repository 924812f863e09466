//! The wire protocol between an active device and a standby: messages,
//! their byte encoding, framing over a TCP stream, and the sealed session.
//!
//! Frame = header (body length `u32` LE, frame kind `u8`) ‖ body.
//! - `Clear` frames carry only Hello and HelloAck (they carry the nonces the
//!   keys are derived from). Their exact encodings are hashed into the key
//!   derivation (`transcript_hash`), so tampering with them breaks the session.
//! - `Sealed` frames carry every other message: body = ChaCha20-Poly1305
//!   ciphertext of the message ‖ tag, with the 5-byte header as associated
//!   data and the per-direction frame counter as nonce (see `crypto`).
//! - Each side's first sealed frame is `Confirm` (key confirmation): a
//!   `Session` opens nothing else before the peer's Confirm and seals
//!   nothing else before its own, so nothing a peer said in clear acts
//!   before the peer proved it holds the session keys.
//!
//! Message encoding: a tag byte, then fixed-width little-endian fields;
//! byte strings are a `u32` length then the bytes. Decoding is strict (no
//! trailing bytes, every length bounded by a constant before anything is
//! allocated), so an encoding is canonical: a message has exactly one.
//! Every decode returns `Result<_, WireError>`; nothing here panics on input.

use alloc::vec::Vec;

use crate::crypto::{derive_session_keys, CryptoError, Drbg, EphemeralKey, Opener, PairingSecret, Role, Sealer, EPHEMERAL_LEN, HANDSHAKE_NONCE_LEN, TAG_LEN};
use crate::fence::{Standing, Term};

/// Version of this protocol. Hello and HelloAck carry it first (after the
/// magic) so a peer of another version is recognised before anything else
/// of its message is parsed.
///
/// v1 is not shipped yet and still changes in place. Changed so far: the
/// page records inside PageRecords (`delta`) start with a head `gap << 2 |
/// kind` (page numbers ascending within a batch, as gaps) instead of an
/// absolute page-number varint and a kind byte, and pages written with
/// unchanged content are not sent (EpochCommit's `page_count` counts the
/// records sent); Zero and Full records carry no page hash (the standby
/// computes it; Delta records keep theirs); an epoch's CpuState and
/// DeviceState (the guest's state at the cut) come before its EpochCommit.
///
/// v2: Hello and HelloAck carry an X25519 ephemeral public key after the
/// nonce; the session keys derive from the pairing secret, the ephemeral
/// Diffie-Hellman and the transcript (forward secrecy), under v2 contexts;
/// each side's first sealed frame is `Confirm` (key confirmation). Hello
/// and HelloAck end with the sender's `Standing` (lineage, term, digest of
/// `last_committed`, where the term began), and a standby ends a lower term
/// with the sealed `Fenced` (`fence`).
pub const PROTOCOL_VERSION: u16 = 2;
/// First bytes of Hello/HelloAck: recognises a stream that is not VMsync.
pub const MAGIC: [u8; 4] = *b"VMSY";
/// Page size the protocol speaks (the guest's 4 KiB pages).
pub const WIRE_PAGE_SIZE: u32 = 4096;

/// Bytes of one batch of page records after decompression.
pub const MAX_BATCH_RAW: usize = 1 << 20;
/// Bytes of one compressed batch: above zstd's compress bound for
/// `MAX_BATCH_RAW` (size + size/256 + a small constant), so any batch the
/// encoder makes fits.
pub const MAX_BATCH_COMPRESSED: usize = MAX_BATCH_RAW + (MAX_BATCH_RAW >> 7) + 4096;
/// Bytes of opaque CPU or device state in one message.
pub const MAX_STATE: usize = 256 << 10;
/// Largest encoded message (the largest is PageRecords: header fields + batch).
pub const MAX_MESSAGE: usize = MAX_BATCH_COMPRESSED + 64;
/// Largest frame body accepted or produced: bounds every allocation of the
/// frame decoder.
pub const MAX_FRAME: usize = MAX_MESSAGE + TAG_LEN;
/// Frame header: body length `u32` LE, then the frame kind.
pub const FRAME_HEADER_LEN: usize = 5;

const _: () = assert!(MAX_STATE + 8 <= MAX_MESSAGE);
const _: () = assert!(MAX_FRAME <= u32::MAX as usize);

/// Identity of the synced VM (same on every device that holds it).
pub type VmId = [u8; 16];
/// Identity of the virtual platform (a digest of the virtual board the guest
/// sees); devices only sync when theirs are equal.
pub type PlatformId = [u8; 32];
/// Digest of a whole guest image (BLAKE3).
pub type Digest = [u8; 32];
/// Epoch number. Epoch 0 is the all-zero image every standby starts from;
/// the first real epoch is 1.
pub type Epoch = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// A frame header announced more than `MAX_FRAME` bytes.
    FrameTooLarge(u32),
    /// A frame body is shorter than its kind allows.
    FrameTooShort,
    UnknownFrameKind(u8),
    UnknownMessage(u8),
    /// A message ended before its fields did (or the stream ended mid-frame).
    Truncated,
    /// Bytes left after the last field of a message.
    TrailingBytes,
    BadMagic,
    UnsupportedVersion(u16),
    /// A byte string longer than its bound.
    FieldTooLarge,
    /// A field holds a value the protocol forbids.
    InvalidField,
    /// A message that must be sealed came in clear, or a handshake came sealed.
    WrongFrameKind,
    /// Encoding: the message is larger than the protocol allows.
    MessageTooLarge,
    Crypto(CryptoError),
    /// An earlier error ended this decoder or session.
    Poisoned,
    // Handshake checks between the two sides' Hello/HelloAck.
    VmMismatch,
    PlatformMismatch,
    RamLayoutMismatch,
    PageSizeMismatch,
    /// The peer sent our own nonce back (a reflected handshake).
    ReflectedNonce,
    /// Encoding: no memory for the frame (the caller drops or delays the
    /// link; nothing was appended).
    OutOfMemory,
    /// Key confirmation: the peer's first sealed frame was not a Confirm of
    /// this session's transcript, or a frame was sealed or opened before
    /// the confirmations it must follow.
    Unconfirmed,
}

impl From<CryptoError> for WireError {
    fn from(e: CryptoError) -> Self {
        WireError::Crypto(e)
    }
}

/// Guest RAM as the virtual platform places it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    pub base: u64,
    pub size: u64,
}

/// Body of Hello (initiator) and HelloAck (responder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub version: u16,
    pub vm_id: VmId,
    pub platform_id: PlatformId,
    pub ram: RamLayout,
    pub page_size: u32,
    /// The sender's last committed epoch (a standby's image; for the active
    /// side, the last epoch it cut).
    pub last_committed: Epoch,
    pub nonce: [u8; HANDSHAKE_NONCE_LEN],
    /// The sender's X25519 ephemeral public key for this connection.
    pub ephemeral: [u8; EPHEMERAL_LEN],
    /// Which guest and term the sender holds (see `fence`); its `digest`
    /// is the image digest at `last_committed`.
    pub standing: Standing,
}

impl Handshake {
    /// Fresh nonce and ephemeral key for one connection, drawn from `rng`;
    /// the key's secret half is returned for `Session::establish`.
    pub fn refresh(&mut self, rng: &mut Drbg) -> EphemeralKey {
        self.nonce = rng.bytes();
        let key = EphemeralKey::generate(rng);
        self.ephemeral = key.public();
        key
    }

    /// Checks that the peer's handshake describes the same VM on the same
    /// virtual platform. (The version was checked when it was decoded.)
    pub fn check_peer(&self, peer: &Handshake) -> Result<(), WireError> {
        if peer.version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(peer.version));
        }
        if peer.vm_id != self.vm_id {
            return Err(WireError::VmMismatch);
        }
        if peer.platform_id != self.platform_id {
            return Err(WireError::PlatformMismatch);
        }
        if peer.ram != self.ram {
            return Err(WireError::RamLayoutMismatch);
        }
        if peer.page_size != self.page_size || peer.page_size != WIRE_PAGE_SIZE {
            return Err(WireError::PageSizeMismatch);
        }
        if peer.nonce == self.nonce || peer.ephemeral == self.ephemeral {
            return Err(WireError::ReflectedNonce);
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Handshake),
    HelloAck(Handshake),
    /// The active side starts sending epoch `epoch`, whose records apply to
    /// the image of epoch `base` (deltas are only valid against it): a
    /// standby that does not hold `base` refuses the epoch.
    EpochBegin {
        epoch: Epoch,
        base: Epoch,
    },
    /// One compressed batch of page records of `epoch`; `seq` counts batches
    /// from 0 within the epoch; `raw_len` is the decompressed size (bounded
    /// by `MAX_BATCH_RAW`) so the standby can decompress with an exact bound.
    PageRecords {
        epoch: Epoch,
        seq: u32,
        raw_len: u32,
        data: Vec<u8>,
    },
    /// End of `epoch`: the image after it has `digest`; `page_count` records
    /// were sent in it.
    EpochCommit {
        epoch: Epoch,
        digest: Digest,
        page_count: u64,
    },
    /// The standby committed `epoch`.
    Ack {
        epoch: Epoch,
    },
    /// A standby asks to become the active device.
    SwitchRequest,
    /// Opaque vCPU state (format owned by the hypervisor).
    CpuState(Vec<u8>),
    /// Opaque emulated-device state (format owned by the hypervisor).
    DeviceState(Vec<u8>),
    /// The switch is complete at `epoch`: the receiver is now active.
    SwitchDone {
        epoch: Epoch,
    },
    /// The standby asks for everything changed since `from_epoch`.
    Resync {
        from_epoch: Epoch,
    },
    /// Key confirmation: each side's first sealed frame, holding the hash
    /// of the handshake transcript. That it opens proves the sender holds
    /// this session's keys (so the pairing secret and its ephemeral key).
    Confirm {
        transcript: [u8; 32],
    },
    /// A standby holds `term` of the guest, above the active device's: the
    /// active device's term is over (it stops the guest; see `fence`).
    Fenced {
        term: Term,
    },
    /// The active device has sent nothing for a while (no epoch: a quiet
    /// guest, or the switch-only policy): this tells the standby the
    /// connection is alive, so its idle deadline does not end it.
    KeepAlive,
    /// The answer to `SwitchDone { epoch }`: the standby took the guest
    /// over at `epoch` and runs it under `term` (above the sender's of
    /// SwitchDone). Until it arrives, the old active device keeps the
    /// guest paused, ready to resume it.
    SwitchTaken {
        epoch: Epoch,
        term: Term,
    },
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const HELLO_ACK: u8 = 2;
    pub const EPOCH_BEGIN: u8 = 3;
    pub const PAGE_RECORDS: u8 = 4;
    pub const EPOCH_COMMIT: u8 = 5;
    pub const ACK: u8 = 6;
    pub const SWITCH_REQUEST: u8 = 7;
    pub const CPU_STATE: u8 = 8;
    pub const DEVICE_STATE: u8 = 9;
    pub const SWITCH_DONE: u8 = 10;
    pub const RESYNC: u8 = 11;
    pub const CONFIRM: u8 = 12;
    pub const FENCED: u8 = 13;
    pub const KEEP_ALIVE: u8 = 14;
    pub const SWITCH_TAKEN: u8 = 15;
}

impl Message {
    fn is_handshake(&self) -> bool {
        matches!(self, Message::Hello(_) | Message::HelloAck(_))
    }

    /// Bytes of the message's encoding (exact: `encode` appends this many).
    pub fn encoded_len(&self) -> usize {
        match self {
            // tag, magic, version, vm, platform, ram (2 × u64), page size,
            // last committed, nonce, ephemeral key, standing (lineage,
            // term, digest, prior term, took over at).
            Message::Hello(_) | Message::HelloAck(_) => 1 + 4 + 2 + 16 + 32 + 16 + 4 + 8 + HANDSHAKE_NONCE_LEN + EPHEMERAL_LEN + 16 + 8 + 32 + 8 + 8,
            Message::EpochBegin { .. } => 17,
            Message::PageRecords { data, .. } => 1 + 8 + 4 + 4 + 4 + data.len(),
            Message::EpochCommit { .. } => 1 + 8 + 32 + 8,
            Message::Ack { .. } | Message::SwitchDone { .. } | Message::Resync { .. } | Message::Fenced { .. } => 9,
            Message::SwitchRequest | Message::KeepAlive => 1,
            Message::CpuState(b) | Message::DeviceState(b) => 5 + b.len(),
            Message::Confirm { .. } => 1 + 32,
            Message::SwitchTaken { .. } => 17,
        }
    }

    /// Appends the message's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        match self {
            Message::Hello(h) => encode_handshake(tag::HELLO, h, out),
            Message::HelloAck(h) => encode_handshake(tag::HELLO_ACK, h, out),
            Message::EpochBegin { epoch, base } => {
                out.push(tag::EPOCH_BEGIN);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&base.to_le_bytes());
            }
            Message::PageRecords { epoch, seq, raw_len, data } => {
                if data.len() > MAX_BATCH_COMPRESSED || *raw_len as usize > MAX_BATCH_RAW {
                    return Err(WireError::MessageTooLarge);
                }
                out.push(tag::PAGE_RECORDS);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&raw_len.to_le_bytes());
                put_bytes(out, data);
            }
            Message::EpochCommit { epoch, digest, page_count } => {
                out.push(tag::EPOCH_COMMIT);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(digest);
                out.extend_from_slice(&page_count.to_le_bytes());
            }
            Message::Ack { epoch } => {
                out.push(tag::ACK);
                out.extend_from_slice(&epoch.to_le_bytes());
            }
            Message::SwitchRequest => out.push(tag::SWITCH_REQUEST),
            Message::KeepAlive => out.push(tag::KEEP_ALIVE),
            Message::CpuState(b) | Message::DeviceState(b) => {
                if b.len() > MAX_STATE {
                    return Err(WireError::MessageTooLarge);
                }
                let t = if matches!(self, Message::CpuState(_)) { tag::CPU_STATE } else { tag::DEVICE_STATE };
                out.push(t);
                put_bytes(out, b);
            }
            Message::SwitchDone { epoch } => {
                out.push(tag::SWITCH_DONE);
                out.extend_from_slice(&epoch.to_le_bytes());
            }
            Message::Resync { from_epoch } => {
                out.push(tag::RESYNC);
                out.extend_from_slice(&from_epoch.to_le_bytes());
            }
            Message::Confirm { transcript } => {
                out.push(tag::CONFIRM);
                out.extend_from_slice(transcript);
            }
            Message::Fenced { term } => {
                out.push(tag::FENCED);
                out.extend_from_slice(&term.to_le_bytes());
            }
            Message::SwitchTaken { epoch, term } => {
                out.push(tag::SWITCH_TAKEN);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&term.to_le_bytes());
            }
        }
        debug_assert!(out.len() - start <= MAX_MESSAGE);
        Ok(())
    }

    /// Decodes exactly one message from `input` (all of it).
    pub fn decode(input: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader { buf: input, pos: 0 };
        let msg = match r.u8()? {
            tag::HELLO => Message::Hello(decode_handshake(&mut r)?),
            tag::HELLO_ACK => Message::HelloAck(decode_handshake(&mut r)?),
            tag::EPOCH_BEGIN => Message::EpochBegin { epoch: r.u64()?, base: r.u64()? },
            tag::PAGE_RECORDS => {
                let epoch = r.u64()?;
                let seq = r.u32()?;
                let raw_len = r.u32()?;
                if raw_len as usize > MAX_BATCH_RAW {
                    return Err(WireError::FieldTooLarge);
                }
                let data = owned(r.bytes(MAX_BATCH_COMPRESSED)?)?;
                Message::PageRecords { epoch, seq, raw_len, data }
            }
            tag::EPOCH_COMMIT => Message::EpochCommit { epoch: r.u64()?, digest: r.array()?, page_count: r.u64()? },
            tag::ACK => Message::Ack { epoch: r.u64()? },
            tag::SWITCH_REQUEST => Message::SwitchRequest,
            tag::CPU_STATE => Message::CpuState(owned(r.bytes(MAX_STATE)?)?),
            tag::DEVICE_STATE => Message::DeviceState(owned(r.bytes(MAX_STATE)?)?),
            tag::SWITCH_DONE => Message::SwitchDone { epoch: r.u64()? },
            tag::RESYNC => Message::Resync { from_epoch: r.u64()? },
            tag::CONFIRM => Message::Confirm { transcript: r.array()? },
            tag::FENCED => Message::Fenced { term: r.u64()? },
            tag::KEEP_ALIVE => Message::KeepAlive,
            tag::SWITCH_TAKEN => Message::SwitchTaken { epoch: r.u64()?, term: r.u64()? },
            other => return Err(WireError::UnknownMessage(other)),
        };
        if r.pos != input.len() {
            return Err(WireError::TrailingBytes);
        }
        Ok(msg)
    }
}

/// A copy of `b` in memory allocated fallibly.
fn owned(b: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut v = Vec::new();
    v.try_reserve_exact(b.len()).map_err(|_| WireError::OutOfMemory)?;
    v.extend_from_slice(b);
    Ok(v)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Callers bound `b` by constants far below u32::MAX.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode_handshake(t: u8, h: &Handshake, out: &mut Vec<u8>) {
    out.push(t);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&h.version.to_le_bytes());
    out.extend_from_slice(&h.vm_id);
    out.extend_from_slice(&h.platform_id);
    out.extend_from_slice(&h.ram.base.to_le_bytes());
    out.extend_from_slice(&h.ram.size.to_le_bytes());
    out.extend_from_slice(&h.page_size.to_le_bytes());
    out.extend_from_slice(&h.last_committed.to_le_bytes());
    out.extend_from_slice(&h.nonce);
    out.extend_from_slice(&h.ephemeral);
    let st = &h.standing;
    out.extend_from_slice(&st.lineage);
    out.extend_from_slice(&st.term.to_le_bytes());
    out.extend_from_slice(&st.digest);
    out.extend_from_slice(&st.prior_term.to_le_bytes());
    out.extend_from_slice(&st.took_over_at.to_le_bytes());
}

fn decode_handshake(r: &mut Reader<'_>) -> Result<Handshake, WireError> {
    if r.array::<4>()? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = r.u16()?;
    // Everything after the version may differ in another version: stop here.
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    Ok(Handshake {
        version,
        vm_id: r.array()?,
        platform_id: r.array()?,
        ram: RamLayout { base: r.u64()?, size: r.u64()? },
        page_size: r.u32()?,
        last_committed: r.u64()?,
        nonce: r.array()?,
        ephemeral: r.array()?,
        standing: Standing { lineage: r.array()?, term: r.u64()?, digest: r.array()?, prior_term: r.u64()?, took_over_at: r.u64()? },
    })
}

/// Bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A length-prefixed byte string of at most `max` bytes; the bound is
    /// checked before the bytes are touched.
    fn bytes(&mut self, max: usize) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(WireError::FieldTooLarge);
        }
        self.take(len)
    }
}

/// Hash of the clear handshake, bound into the session keys.
pub fn transcript_hash(hello: &Handshake, ack: &Handshake) -> [u8; 32] {
    let mut buf = Vec::new();
    encode_handshake(tag::HELLO, hello, &mut buf);
    encode_handshake(tag::HELLO_ACK, ack, &mut buf);
    *blake3::hash(&buf).as_bytes()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Clear,
    Sealed,
}

impl FrameKind {
    fn byte(self) -> u8 {
        match self {
            FrameKind::Clear => 0x01,
            FrameKind::Sealed => 0x02,
        }
    }
    fn from_byte(b: u8) -> Result<Self, WireError> {
        match b {
            0x01 => Ok(FrameKind::Clear),
            0x02 => Ok(FrameKind::Sealed),
            other => Err(WireError::UnknownFrameKind(other)),
        }
    }
    fn min_body(self) -> usize {
        match self {
            FrameKind::Clear => 1,
            FrameKind::Sealed => TAG_LEN + 1,
        }
    }
}

fn frame_header(kind: FrameKind, body_len: usize) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    // Callers bound body_len by MAX_FRAME, which fits in u32 (checked above).
    h[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[4] = kind.byte();
    h
}

/// One complete frame off the stream (body not yet opened or parsed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub body: Vec<u8>,
}

impl Frame {
    /// Bytes this frame took on the wire.
    pub fn wire_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body.len()
    }
}

/// Cuts a byte stream into frames, whatever pieces the bytes arrive in.
/// Memory held is at most one frame (`MAX_FRAME`). After an error the
/// stream's framing is lost: every later call returns `Poisoned`.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Kind and body length once the header is complete.
    current: Option<(FrameKind, usize)>,
    body: Vec<u8>,
    failed: bool,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from the front of `input` and returns the next
    /// complete frame, if the bytes complete one. Call again while `input`
    /// is not empty: bytes after a frame are left in `input`.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, WireError> {
        if self.failed {
            return Err(WireError::Poisoned);
        }
        let r = self.decode_inner(input);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn decode_inner(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, WireError> {
        if self.current.is_none() {
            let n = (FRAME_HEADER_LEN - self.header_len).min(input.len());
            let (head, rest) = input.split_at(n);
            self.header[self.header_len..self.header_len + n].copy_from_slice(head);
            self.header_len += n;
            *input = rest;
            if self.header_len < FRAME_HEADER_LEN {
                return Ok(None);
            }
            let mut len_bytes = [0u8; 4];
            len_bytes.copy_from_slice(&self.header[..4]);
            let len32 = u32::from_le_bytes(len_bytes);
            let kind = FrameKind::from_byte(self.header[4])?;
            let len = len32 as usize;
            // The bound is checked before any allocation.
            if len > MAX_FRAME {
                return Err(WireError::FrameTooLarge(len32));
            }
            if len < kind.min_body() {
                return Err(WireError::FrameTooShort);
            }
            // Fallible: a frame that does not fit in memory ends this stream
            // (an error, like any other), never the device.
            let mut body = Vec::new();
            body.try_reserve_exact(len).map_err(|_| WireError::OutOfMemory)?;
            self.body = body;
            self.current = Some((kind, len));
        }
        let Some((kind, len)) = self.current else {
            return Ok(None); // unreachable: set just above
        };
        let n = (len - self.body.len()).min(input.len());
        let (head, rest) = input.split_at(n);
        self.body.extend_from_slice(head);
        *input = rest;
        if self.body.len() < len {
            return Ok(None);
        }
        self.current = None;
        self.header_len = 0;
        Ok(Some(Frame { kind, body: core::mem::take(&mut self.body) }))
    }

    /// True between frames: a stream that ends now ended cleanly.
    pub fn is_idle(&self) -> bool {
        !self.failed && self.header_len == 0 && self.current.is_none()
    }

    /// Call when the stream ends: a partial frame is `Truncated`.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.failed {
            Err(WireError::Poisoned)
        } else if self.is_idle() {
            Ok(())
        } else {
            Err(WireError::Truncated)
        }
    }
}

/// Appends a clear frame holding a Hello or HelloAck; returns the frame's
/// length on the wire.
/// Bytes on the wire of `msg` sealed (`Session::seal`): header, message
/// and tag. What a count of an epoch that is never sent adds
/// (`probe::ShadowProbe`).
pub fn sealed_len(msg: &Message) -> usize {
    FRAME_HEADER_LEN + msg.encoded_len() + TAG_LEN
}

pub fn encode_clear(msg: &Message, out: &mut Vec<u8>) -> Result<usize, WireError> {
    if !msg.is_handshake() {
        return Err(WireError::WrongFrameKind);
    }
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    msg.encode(out)?;
    let body_len = out.len() - start - FRAME_HEADER_LEN;
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&frame_header(FrameKind::Clear, body_len));
    Ok(out.len() - start)
}

/// Parses a clear frame: only Hello and HelloAck may come in clear.
pub fn decode_clear(frame: &Frame) -> Result<Message, WireError> {
    if frame.kind != FrameKind::Clear {
        return Err(WireError::WrongFrameKind);
    }
    let msg = Message::decode(&frame.body)?;
    if !msg.is_handshake() {
        return Err(WireError::WrongFrameKind);
    }
    Ok(msg)
}

/// An established session: seals what this side sends, opens what it
/// receives. Any error ends it (`Poisoned` afterwards): the caller
/// reconnects and resumes from the standby's last committed epoch.
pub struct Session {
    sealer: Sealer,
    opener: Opener,
    failed: bool,
    /// What both Confirms hold.
    transcript: [u8; 32],
    /// Our Confirm is sealed: other messages may follow it.
    sent_confirm: bool,
    /// The peer's Confirm opened: its frames may be opened.
    peer_confirmed: bool,
}

impl Session {
    /// Derives the session from the pairing secret, this side's ephemeral
    /// key `ours` (whose public half its handshake carried) and the two
    /// handshake messages as exchanged (`hello` from the initiator, `ack`
    /// from the responder). Call after `check_peer` passed. `ours` is used
    /// up: the next connection needs a new one.
    pub fn establish(secret: &PairingSecret, role: Role, hello: &Handshake, ack: &Handshake, ours: EphemeralKey) -> Result<Self, WireError> {
        let (mine, theirs) = match role {
            Role::Initiator => (hello, ack),
            Role::Responder => (ack, hello),
        };
        // The key must be the one our own handshake announced, or the two
        // sides would agree on nothing (a caller's mistake, not the peer's).
        if ours.public() != mine.ephemeral {
            return Err(WireError::InvalidField);
        }
        let shared = ours.agree(&theirs.ephemeral)?;
        let transcript = transcript_hash(hello, ack);
        let keys = derive_session_keys(secret, &shared, &transcript);
        let (sealer, opener) = keys.split(role);
        Ok(Self { sealer, opener, failed: false, transcript, sent_confirm: false, peer_confirmed: false })
    }

    /// Appends our Confirm, the first sealed frame of this side (call once,
    /// right after `establish`); returns its length on the wire.
    pub fn seal_confirm(&mut self, out: &mut Vec<u8>) -> Result<usize, WireError> {
        if self.sent_confirm {
            return Err(WireError::Unconfirmed);
        }
        let n = self.seal_any(&Message::Confirm { transcript: self.transcript }, out)?;
        self.sent_confirm = true;
        Ok(n)
    }

    /// Opens the peer's first sealed frame, which must be its Confirm of
    /// our transcript. Until this succeeds the peer has proved nothing:
    /// whatever it said in clear must not act yet.
    pub fn open_confirm(&mut self, frame: Frame) -> Result<(), WireError> {
        if self.failed {
            return Err(WireError::Poisoned);
        }
        let r = match self.peer_confirmed {
            true => Err(WireError::Unconfirmed),
            false => self.open_inner(frame).and_then(|m| match m {
                // Equal keys imply an equal transcript; checked anyway, it costs nothing.
                Message::Confirm { transcript } if transcript == self.transcript => Ok(()),
                _ => Err(WireError::Unconfirmed),
            }),
        };
        match r {
            Ok(()) => self.peer_confirmed = true,
            Err(_) => self.failed = true,
        }
        r
    }

    /// The peer's Confirm opened: it holds the keys.
    pub fn is_confirmed(&self) -> bool {
        self.peer_confirmed
    }

    /// Appends one sealed frame holding `msg`; returns its length on the
    /// wire. Only after our Confirm (`seal_confirm`).
    pub fn seal(&mut self, msg: &Message, out: &mut Vec<u8>) -> Result<usize, WireError> {
        if !self.sent_confirm || matches!(msg, Message::Confirm { .. }) {
            return Err(WireError::Unconfirmed);
        }
        self.seal_any(msg, out)
    }

    fn seal_any(&mut self, msg: &Message, out: &mut Vec<u8>) -> Result<usize, WireError> {
        if msg.is_handshake() {
            return Err(WireError::WrongFrameKind);
        }
        // The whole frame in one fallible reservation: a frame that does not
        // fit in memory is an error for this link, never an abort.
        out.try_reserve(FRAME_HEADER_LEN + msg.encoded_len() + TAG_LEN).map_err(|_| WireError::OutOfMemory)?;
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        let body_start = out.len();
        let r = msg.encode(out).and_then(|()| {
            let body_len = out.len() - body_start + TAG_LEN;
            if body_len > MAX_FRAME {
                return Err(WireError::MessageTooLarge);
            }
            let header = frame_header(FrameKind::Sealed, body_len);
            out[start..body_start].copy_from_slice(&header);
            let tag = self.sealer.seal(&header, &mut out[body_start..])?;
            out.extend_from_slice(&tag);
            Ok(out.len() - start)
        });
        if r.is_err() {
            // Leave `out` as it was: no half frame may reach the stream.
            out.truncate(start);
        }
        r
    }

    /// Opens and parses one sealed frame; only after the peer's Confirm
    /// (`open_confirm`), and never another Confirm.
    pub fn open(&mut self, frame: Frame) -> Result<Message, WireError> {
        if self.failed {
            return Err(WireError::Poisoned);
        }
        let r = match self.peer_confirmed {
            false => Err(WireError::Unconfirmed),
            true => self.open_inner(frame).and_then(|m| match m {
                Message::Confirm { .. } => Err(WireError::Unconfirmed),
                m => Ok(m),
            }),
        };
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn open_inner(&mut self, mut frame: Frame) -> Result<Message, WireError> {
        if frame.kind != FrameKind::Sealed {
            return Err(WireError::WrongFrameKind);
        }
        if frame.body.len() > MAX_FRAME {
            return Err(WireError::FrameTooLarge(u32::try_from(frame.body.len()).unwrap_or(u32::MAX)));
        }
        let header = frame_header(FrameKind::Sealed, frame.body.len());
        self.opener.open_in_place(&header, &mut frame.body)?;
        let msg = Message::decode(&frame.body)?;
        if msg.is_handshake() {
            return Err(WireError::WrongFrameKind);
        }
        Ok(msg)
    }

    /// Frames sealed and opened so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.sealer.counter(), self.opener.counter())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;
    use super::*;
    use alloc::vec;

    fn hs(nonce: u8, last: Epoch) -> Handshake {
        Handshake {
            version: PROTOCOL_VERSION,
            vm_id: [0xa5; 16],
            platform_id: [0x3c; 32],
            ram: RamLayout { base: 0x4000_0000, size: 64 << 20 },
            page_size: WIRE_PAGE_SIZE,
            last_committed: last,
            nonce: [nonce; 32],
            ephemeral: [nonce ^ 0x80; 32],
            standing: Standing { lineage: [nonce; 16], term: 3 << 16, digest: [last as u8; 32], prior_term: 2 << 16, took_over_at: 1 },
        }
    }

    /// `hs` with a real ephemeral key (deterministic per `nonce`), and its
    /// secret half.
    fn keyed(nonce: u8, last: Epoch) -> (Handshake, EphemeralKey) {
        let mut h = hs(nonce, last);
        let k = h.refresh(&mut Drbg::new([nonce; 32]));
        (h, k)
    }

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello(hs(1, 0)),
            Message::HelloAck(hs(2, 7)),
            Message::EpochBegin { epoch: 3, base: 2 },
            Message::PageRecords { epoch: 3, seq: 2, raw_len: 9000, data: vec![1, 2, 3, 4] },
            Message::PageRecords { epoch: 3, seq: 0, raw_len: 0, data: vec![] },
            Message::EpochCommit { epoch: 3, digest: [9; 32], page_count: 12 },
            Message::Ack { epoch: 3 },
            Message::SwitchRequest,
            Message::CpuState(vec![7; 300]),
            Message::DeviceState(vec![]),
            Message::SwitchDone { epoch: 4 },
            Message::Resync { from_epoch: 2 },
            Message::Confirm { transcript: [6; 32] },
            Message::Fenced { term: 5 << 16 | 9 },
            Message::KeepAlive,
            Message::SwitchTaken { epoch: 4, term: 2 << 16 | 7 },
        ]
    }

    /// Both ends of one session, keys derived, no Confirm exchanged yet.
    fn fresh() -> (Session, Session) {
        let secret = PairingSecret::new([0x11; 32]);
        let ((h, kh), (a, ka)) = (keyed(1, 0), keyed(2, 5));
        (Session::establish(&secret, Role::Initiator, &h, &a, kh).unwrap(), Session::establish(&secret, Role::Responder, &h, &a, ka).unwrap())
    }

    /// Each side's Confirm, sealed by it and opened by the other.
    fn confirm(i: &mut Session, r: &mut Session) -> Result<(), WireError> {
        let f = one_confirm(r);
        i.open_confirm(f)?;
        let f = one_confirm(i);
        r.open_confirm(f)
    }

    fn one_confirm(s: &mut Session) -> Frame {
        let mut out = Vec::new();
        s.seal_confirm(&mut out).unwrap();
        FrameDecoder::new().decode(&mut &out[..]).unwrap().unwrap()
    }

    /// Both ends of one session, confirmed: ready for any message.
    pub(crate) fn sessions() -> (Session, Session) {
        let (mut i, mut r) = fresh();
        confirm(&mut i, &mut r).unwrap();
        (i, r)
    }

    #[test]
    fn every_message_roundtrips_and_truncations_fail() {
        for m in all_messages() {
            let mut b = Vec::new();
            m.encode(&mut b).unwrap();
            assert_eq!(b.len(), m.encoded_len(), "{m:?}: seal reserves exactly this");
            assert_eq!(Message::decode(&b).unwrap(), m);
            for cut in 0..b.len() {
                assert!(Message::decode(&b[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            b.push(0);
            assert_eq!(Message::decode(&b), Err(WireError::TrailingBytes));
        }
    }

    #[test]
    fn oversize_fields_rejected_before_allocation() {
        // A PageRecords that claims a 4 GiB batch: rejected on the length alone.
        let mut b = vec![tag::PAGE_RECORDS];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&100u32.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Message::decode(&b), Err(WireError::FieldTooLarge));
        let mut b = vec![tag::CPU_STATE];
        b.extend_from_slice(&((MAX_STATE + 1) as u32).to_le_bytes());
        assert_eq!(Message::decode(&b), Err(WireError::FieldTooLarge));
        // raw_len beyond the batch bound.
        let mut b = vec![tag::PAGE_RECORDS];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&((MAX_BATCH_RAW + 1) as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(Message::decode(&b), Err(WireError::FieldTooLarge));
        // And the encoder refuses to make them.
        let big = Message::CpuState(vec![0; MAX_STATE + 1]);
        assert_eq!(big.encode(&mut Vec::new()), Err(WireError::MessageTooLarge));
    }

    #[test]
    fn version_and_magic_checked_first() {
        let mut b = Vec::new();
        Message::Hello(hs(1, 0)).encode(&mut b).unwrap();
        let mut other = b.clone();
        other[5..7].copy_from_slice(&1u16.to_le_bytes());
        // Only magic and version are needed to tell a peer of another version
        // (v1 had no ephemeral key).
        assert_eq!(Message::decode(&other[..7]), Err(WireError::UnsupportedVersion(1)));
        let mut bad = b.clone();
        bad[1] = b'X';
        assert_eq!(Message::decode(&bad), Err(WireError::BadMagic));
        assert_eq!(Message::decode(&[0xee]), Err(WireError::UnknownMessage(0xee)));
        assert_eq!(Message::decode(&[]), Err(WireError::Truncated));
    }

    #[test]
    fn check_peer_catches_mismatches() {
        let me = hs(1, 0);
        assert_eq!(me.check_peer(&hs(2, 9)), Ok(()));
        let mut p = hs(2, 0);
        p.vm_id[0] ^= 1;
        assert_eq!(me.check_peer(&p), Err(WireError::VmMismatch));
        let mut p = hs(2, 0);
        p.platform_id[31] ^= 1;
        assert_eq!(me.check_peer(&p), Err(WireError::PlatformMismatch));
        let mut p = hs(2, 0);
        p.ram.size += 4096;
        assert_eq!(me.check_peer(&p), Err(WireError::RamLayoutMismatch));
        let mut p = hs(2, 0);
        p.page_size = 16384;
        assert_eq!(me.check_peer(&p), Err(WireError::PageSizeMismatch));
        assert_eq!(me.check_peer(&hs(1, 0)), Err(WireError::ReflectedNonce));
    }

    #[test]
    fn decoder_handles_any_split() {
        let (mut a, _) = fresh();
        let mut stream = Vec::new();
        let msgs: Vec<Message> = all_messages().into_iter().filter(|m| !matches!(m, Message::Confirm { .. })).collect();
        encode_clear(&msgs[0], &mut stream).unwrap();
        encode_clear(&msgs[1], &mut stream).unwrap();
        a.seal_confirm(&mut stream).unwrap();
        for m in msgs.iter().filter(|m| !m.is_handshake()) {
            a.seal(m, &mut stream).unwrap();
        }
        for chunk in [1, 2, 3, 5, 7, 64, 4096] {
            let (_, mut b) = fresh();
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                let mut input = piece;
                while let Some(f) = dec.decode(&mut input).unwrap() {
                    match (f.kind, b.is_confirmed()) {
                        (FrameKind::Clear, _) => got.push(decode_clear(&f).unwrap()),
                        (FrameKind::Sealed, false) => b.open_confirm(f).unwrap(),
                        (FrameKind::Sealed, true) => got.push(b.open(f).unwrap()),
                    }
                }
                assert!(input.is_empty());
            }
            assert!(dec.finish().is_ok());
            assert_eq!(got, msgs, "chunk {chunk}");
        }
    }

    #[test]
    fn decoder_bounds_and_poisoning() {
        let mut dec = FrameDecoder::new();
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0x7f, 0x02];
        assert_eq!(dec.decode(&mut huge), Err(WireError::FrameTooLarge(0x7fff_ffff)));
        assert_eq!(dec.decode(&mut &[0u8][..]), Err(WireError::Poisoned));
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.decode(&mut &[1, 0, 0, 0, 9][..]), Err(WireError::UnknownFrameKind(9)));
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.decode(&mut &[4, 0, 0, 0, 2][..]), Err(WireError::FrameTooShort));
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.decode(&mut &[3, 0, 0, 0, 1, 6][..]), Ok(None));
        assert!(!dec.is_idle());
        assert_eq!(dec.finish(), Err(WireError::Truncated));
    }

    /// `sealed_len` is what `seal` appends, for every sealed message.
    #[test]
    fn sealed_len_is_the_sealed_frame() {
        let (mut a, _) = sessions();
        for m in all_messages().into_iter().filter(|m| !m.is_handshake() && !matches!(m, Message::Confirm { .. })) {
            let mut out = Vec::new();
            let n = a.seal(&m, &mut out).unwrap();
            assert_eq!((sealed_len(&m), sealed_len(&m)), (n, out.len()), "{m:?}");
        }
    }

    #[test]
    fn clear_and_sealed_are_not_interchangeable() {
        let (mut a, mut b) = sessions();
        let mut out = Vec::new();
        assert_eq!(a.seal(&Message::Hello(hs(1, 0)), &mut out), Err(WireError::WrongFrameKind));
        assert!(out.is_empty());
        assert_eq!(encode_clear(&Message::Ack { epoch: 1 }, &mut out), Err(WireError::WrongFrameKind));
        // A clear Ack (crafted) is refused by decode_clear and by the session.
        let mut body = Vec::new();
        Message::Ack { epoch: 1 }.encode(&mut body).unwrap();
        let f = Frame { kind: FrameKind::Clear, body };
        assert_eq!(decode_clear(&f), Err(WireError::WrongFrameKind));
        assert_eq!(b.open(f), Err(WireError::WrongFrameKind));
    }

    fn one_sealed(a: &mut Session, m: &Message) -> Frame {
        let mut out = Vec::new();
        a.seal(m, &mut out).unwrap();
        let mut dec = FrameDecoder::new();
        let mut input = &out[..];
        let f = dec.decode(&mut input).unwrap().unwrap();
        assert!(input.is_empty());
        f
    }

    /// `one_sealed` without the Confirm rules (to forge what they forbid).
    fn one_sealed_any(a: &mut Session, m: &Message) -> Frame {
        let mut out = Vec::new();
        a.seal_any(m, &mut out).unwrap();
        let mut dec = FrameDecoder::new();
        let mut input = &out[..];
        let f = dec.decode(&mut input).unwrap().unwrap();
        assert!(input.is_empty());
        f
    }

    #[test]
    fn sealed_frames_reject_tamper_replay_reorder() {
        let m1 = Message::Ack { epoch: 1 };
        let m2 = Message::Ack { epoch: 2 };
        // Tamper with every byte of the body in turn.
        let (mut a, _) = sessions();
        let f = one_sealed(&mut a, &m1);
        for i in 0..f.body.len() {
            let (_, mut b) = sessions();
            let mut t = f.clone();
            t.body[i] ^= 0x40;
            assert_eq!(b.open(t), Err(WireError::Crypto(CryptoError::Authentication)));
        }
        // Replay and reorder.
        let (mut a, mut b) = sessions();
        let f1 = one_sealed(&mut a, &m1);
        let _f2 = one_sealed(&mut a, &m2);
        assert_eq!(b.open(f1.clone()), Ok(m1.clone()));
        assert!(b.open(f1.clone()).is_err());
        let (mut a, mut b) = sessions();
        let f1 = one_sealed(&mut a, &m1);
        let f2b = one_sealed(&mut a, &m2);
        assert!(b.open(f2b).is_err());
        assert_eq!(b.open(f1), Err(WireError::Poisoned));
    }

    #[test]
    fn tampered_handshake_breaks_the_session() {
        let secret = PairingSecret::new([0x11; 32]);
        let ((h, kh), (a, ka)) = (keyed(1, 0), keyed(2, 5));
        let mut i = Session::establish(&secret, Role::Initiator, &h, &a, kh).unwrap();
        // A man in the middle rewrote the standby's last committed epoch.
        let mut a_seen = a.clone();
        a_seen.last_committed = 4;
        let mut r = Session::establish(&secret, Role::Responder, &h, &a_seen, ka).unwrap();
        // The first sealed frame, the Confirm, fails: nothing acts on 4.
        assert_eq!(confirm(&mut i, &mut r), Err(WireError::Crypto(CryptoError::Authentication)));
        assert!(!i.is_confirmed() && !r.is_confirmed());
        // A session without the pairing secret cannot talk either.
        let ((h, kh), (a, ka)) = (keyed(1, 0), keyed(2, 5));
        let mut i = Session::establish(&secret, Role::Initiator, &h, &a, kh).unwrap();
        let mut r = Session::establish(&PairingSecret::new([0x12; 32]), Role::Responder, &h, &a, ka).unwrap();
        assert!(confirm(&mut i, &mut r).is_err());
    }

    /// Key confirmation is enforced by the session: nothing is opened
    /// before the peer's Confirm, nothing sealed before ours, a Confirm
    /// comes once, and a Confirm of another transcript is refused.
    #[test]
    fn nothing_is_opened_or_sealed_before_the_confirms() {
        let ack = Message::Ack { epoch: 1 };
        let (mut i, mut r) = fresh();
        assert_eq!(i.seal(&ack, &mut Vec::new()), Err(WireError::Unconfirmed), "sealed before our Confirm");
        let f = one_confirm(&mut i);
        // A data frame where the Confirm must be: refused.
        let (_, mut r2) = fresh();
        let (mut i2, _) = fresh();
        let data = one_sealed_any(&mut i2, &ack);
        assert_eq!(r2.open_confirm(data), Err(WireError::Unconfirmed));
        assert_eq!(r2.open(f.clone()), Err(WireError::Poisoned));
        // `open` before the Confirm is refused even for the right frame.
        let (_, mut r3) = fresh();
        assert_eq!(r3.open(f.clone()), Err(WireError::Unconfirmed));
        // The right order works; a second Confirm does not.
        r.open_confirm(f).unwrap();
        assert!(r.is_confirmed());
        assert_eq!(i.seal_confirm(&mut Vec::new()), Err(WireError::Unconfirmed));
        let t = i.transcript;
        let f2 = one_sealed_any(&mut i, &Message::Confirm { transcript: t });
        assert_eq!(r.open(f2), Err(WireError::Unconfirmed));
        // A Confirm of another transcript under the right keys.
        let (mut i4, mut r4) = fresh();
        i4.sent_confirm = true;
        let bad = one_sealed_any(&mut i4, &Message::Confirm { transcript: [0; 32] });
        assert_eq!(r4.open_confirm(bad), Err(WireError::Unconfirmed));
        assert!(!r4.is_confirmed());
    }

    /// A man in the middle swaps both ephemeral keys for its own: it shares
    /// a Diffie-Hellman secret with each side, but without the pairing
    /// secret its keys open nothing; with it (the control) they would.
    #[test]
    fn swapped_ephemeral_keys_need_the_pairing_secret() {
        let secret = PairingSecret::new([0x11; 32]);
        let (hello, k_active) = keyed(1, 0);
        let (mut hello_to_standby, k_mitm) = (hello.clone(), EphemeralKey::generate(&mut Drbg::new([9; 32])));
        hello_to_standby.ephemeral = k_mitm.public();
        let (ack, k_standby) = keyed(2, 5);
        let mut ack_to_active = ack.clone();
        let k_mitm2 = EphemeralKey::generate(&mut Drbg::new([8; 32]));
        ack_to_active.ephemeral = k_mitm2.public();
        let mut active = Session::establish(&secret, Role::Initiator, &hello, &ack_to_active, k_active).unwrap();
        let f = one_confirm(&mut active);
        // The attacker plays responder to the active side with its second key.
        let guess = PairingSecret::new([0x12; 32]);
        let mut as_responder = Session::establish(&guess, Role::Responder, &hello, &ack_to_active, k_mitm2).unwrap();
        assert_eq!(as_responder.open_confirm(f.clone()), Err(WireError::Crypto(CryptoError::Authentication)));
        // Nor can it forge the Confirm the active side waits for.
        assert_eq!(active.open_confirm(one_confirm(&mut as_responder)), Err(WireError::Crypto(CryptoError::Authentication)));
        let k_mitm2 = EphemeralKey::generate(&mut Drbg::new([8; 32]));
        let mut with_secret = Session::establish(&secret, Role::Responder, &hello, &ack_to_active, k_mitm2).unwrap();
        assert_eq!(with_secret.open_confirm(f), Ok(()), "control: the secret is what stops it");
        // And the two real ends, each fed the swapped key, disagree.
        let mut standby = Session::establish(&secret, Role::Responder, &hello_to_standby, &ack, k_standby).unwrap();
        let mut active = Session::establish(&secret, Role::Initiator, &hello, &ack_to_active, keyed(1, 0).1).unwrap();
        assert!(confirm(&mut active, &mut standby).is_err());
        let _ = k_mitm;
    }

    /// Same pairing secret, same nonces, same everything but the ephemeral
    /// keys: the first sealed frames differ (fresh keys per session), over
    /// 1,000 handshakes, so no (key, nonce) pair repeats.
    #[test]
    fn every_handshake_has_fresh_keys() {
        let secret = PairingSecret::new([0x11; 32]);
        let mut rng = Drbg::new([0x33; 32]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (mut h, mut a) = (hs(1, 0), hs(2, 0));
            let kh = EphemeralKey::generate(&mut rng);
            let ka = EphemeralKey::generate(&mut rng);
            h.ephemeral = kh.public();
            a.ephemeral = ka.public();
            let mut i = Session::establish(&secret, Role::Initiator, &h, &a, kh).unwrap();
            let mut r = Session::establish(&secret, Role::Responder, &h, &a, ka).unwrap();
            confirm(&mut i, &mut r).unwrap();
            let f = one_sealed(&mut i, &Message::Ack { epoch: 1 });
            assert!(seen.insert(f.body.clone()), "a frame repeated: its key did");
            assert_eq!(r.open(f), Ok(Message::Ack { epoch: 1 }));
        }
    }

    #[test]
    fn a_low_order_ephemeral_or_a_foreign_own_key_is_refused() {
        let secret = PairingSecret::new([0x11; 32]);
        let (h, kh) = keyed(1, 0);
        let mut a = hs(2, 0);
        a.ephemeral = [0; 32];
        assert_eq!(Session::establish(&secret, Role::Initiator, &h, &a, kh).err(), Some(WireError::Crypto(CryptoError::WeakPeerKey)));
        // Our key must be the one our handshake carries.
        let (a, _) = keyed(2, 0);
        let other = keyed(3, 0).1;
        assert_eq!(Session::establish(&secret, Role::Initiator, &h, &a, other).err(), Some(WireError::InvalidField));
    }

    #[test]
    fn largest_batch_fits_a_frame() {
        let (mut a, mut b) = sessions();
        let m = Message::PageRecords { epoch: 1, seq: 0, raw_len: MAX_BATCH_RAW as u32, data: vec![0x5a; MAX_BATCH_COMPRESSED] };
        let f = one_sealed(&mut a, &m);
        assert!(f.body.len() <= MAX_FRAME);
        assert_eq!(b.open(f).unwrap(), m);
        let too_big = Message::PageRecords { epoch: 1, seq: 0, raw_len: 1, data: vec![0; MAX_BATCH_COMPRESSED + 1] };
        let mut out = vec![0xaa];
        assert_eq!(a.seal(&too_big, &mut out), Err(WireError::MessageTooLarge));
        assert_eq!(out, vec![0xaa], "a failed seal leaves the output as it was");
    }
}
